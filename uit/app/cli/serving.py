"""``uit search`` and ``uit serve``: a sentence against a gallery, once or as a service."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from uit.core.config import BENCHMARKS, INFERENCE_BATCH_SIZE, SEARCH_CACHE_DIR, TOP_K
from uit.core.console import adder, console, err_console, progress_bars
from uit.core.errors import UitError

if TYPE_CHECKING:
    from rich.console import Console

    from uit.retrieval.search import Gallery, Hit
from uit.app.cli.base import (
    IMAGES,
    UitGroup,
    UitTyper,
    app,
    friendly_errors,
    image_bytes,
    index_choice,
)
from uit.app.serve_access import (
    RATE_LIMIT,
    create_token,
    read_tokens,
    revoke_token,
    tokens_path,
)
from uit.app.serve_audit import AuditPolicy


def _gallery_source(gallery: str) -> Path:
    """A benchmark name means its prepared folder; anything else is a path."""
    return Path("data/prepared") / gallery if gallery in BENCHMARKS else Path(gallery)


@app.command()
@friendly_errors
def search(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint or an exported model folder.")],
    query: Annotated[str, typer.Argument(help='The sentence, e.g. "a woman in a red coat".')],
    gallery: Annotated[
        str, typer.Option(help="A folder of images, a prepared benchmark folder or a name.")
    ],
    top_k: Annotated[int, typer.Option(min=1, help="How many results.")] = TOP_K,
    split: Annotated[str, typer.Option(help="The split of a prepared benchmark.")] = "test",
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sheet: Annotated[
        Path | None, typer.Option(help="Write a contact sheet here (.png, .jpg or .webp).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --sheet file.")] = False,
    cache_dir: Annotated[Path, typer.Option(help="Where gallery embeddings are cached.")] = Path(
        SEARCH_CACHE_DIR
    ),
    use_cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache", help="Reuse and keep gallery embeddings in --cache-dir."
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images or captions per batch.")
    ] = INFERENCE_BATCH_SIZE,
) -> None:
    """Rank the images of a gallery for a sentence (the gallery is encoded once, then cached)."""
    from uit.core.device import resolve_device
    from uit.raw.prepare import clean_caption

    query = clean_caption(query)  # as captions are: no zero-width characters, NUL or controls
    if not query:
        raise UitError('the query is empty: give a sentence, e.g. "a woman in a red coat"')
    resolve_device(device, "--device")  # a wrong --device fails before anything is loaded
    if sheet is not None:  # and an output that would replace a file, unasked
        from uit.core.io import check_new_file

        check_new_file(sheet, "--sheet", overwrite=overwrite, suffixes=IMAGES)
    from uit.retrieval.gallery import open_gallery

    with progress_bars() as progress:
        opened = open_gallery(checkpoint, _gallery_source(gallery), split=split, index_kind="flat",
                              cache_dir=cache_dir if use_cache else None, device=device,
                              batch_size=batch_size, progress=adder(progress))  # fmt: skip
    hits, found, encoded = opened.hits(query, top_k), opened.gallery, opened.encoded
    paths = found.paths
    if sheet:
        _search_sheet(query, hits, sheet)
    if json_:  # a file name that is not UTF-8 is kept as \udcXX escapes, as os.fsdecode reads it
        sys.stdout.write(json.dumps({"query": query, "gallery": str(gallery),
                                     "encoded_now": encoded, "cached": len(paths) - encoded,
                                     "results": [{"rank": h.rank, "path": str(h.path),
                                                  "score": h.score} for h in hits]},
                                    indent=2) + "\n")  # fmt: skip
        return
    err_console.print(f"{len(paths)} gallery images ({len(paths) - encoded} from the cache)")
    print_hits(query, *hit_rows(hits, found), console)


def hit_rows(hits: Sequence[Hit], gallery: Gallery) -> tuple[list[str], list[tuple[str, ...]]]:
    """The columns and a row per hit: rank, score, the identity where the gallery is a prepared
    benchmark, and the image named relative to the gallery, as ``uit serve`` names it."""
    from uit.retrieval.search import shown

    index = {path: i for i, path in enumerate(gallery.paths)}
    identities = gallery.pids is not None
    rows = []
    for hit in hits:
        i = index[hit.path]
        identity = (str(gallery.pids[i]),) if gallery.pids is not None else ()
        rows.append((str(hit.rank), f"{hit.score:.3f}", *identity, shown(gallery.names[i])))
    return ["rank", "score", *(["identity"] if identities else []), "image"], rows


def print_hits(
    query: str, columns: Sequence[str], rows: Sequence[tuple[str, ...]], out: Console
) -> None:
    """The hits (``print_table``): numbers to the right, never wrapped; names are never cut:
    on a terminal too narrow for a name, it folds onto the next line whole."""
    print_table(columns, rows, out, title=f"top {len(rows)}: {query}", folding=columns[-1])


class _ServeGroup(UitGroup):
    """``uit serve CHECKPOINT ...`` is ``uit serve start CHECKPOINT ...``: the server stays one
    word away, beside the ``token`` and ``audit`` commands (a checkpoint folder called
    ``token``, ``audit`` or ``start`` is written ``./token``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["start", *args]
        return super().parse_args(ctx, args)


serve_app = UitTyper(no_args_is_help=True, help="Search a gallery from a web page and a JSON "
                     "API: 'uit serve CHECKPOINT --gallery G' (that is, 'uit serve start'); "
                     "its access tokens and its audit log.")  # fmt: skip
serve_app.info.cls = _ServeGroup
app.add_typer(serve_app, name="serve")
token_app = UitTyper(no_args_is_help=True, help="The access tokens of uit serve.")
serve_app.add_typer(token_app, name="token")

TokensOption = Annotated[
    Path | None,
    typer.Option("--tokens", show_default="tokens.json in --cache-dir",
                 help="The token file (SHA-256 digests of the tokens, never the tokens)."),
]  # fmt: skip
CacheOption = Annotated[
    Path, typer.Option(help="Where gallery embeddings and the index are cached.")
]


@serve_app.command("start")
@friendly_errors
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint or an exported model folder.")],
    gallery: Annotated[
        str, typer.Option(help="A folder of images, a prepared benchmark folder or a name.")
    ],
    host: Annotated[
        str, typer.Option(help="The address to listen on (loopback only, unless --expose).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="The port to listen on (0: a free one, printed)."),
    ] = 8000,
    expose: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host (needs a token and --audit-log).")
    ] = False,
    index: Annotated[
        str,
        typer.Option(help="flat (exact scan), ann (FAISS IVF), auto (by gallery size), milvus "
                     "(Milvus Lite in --cache-dir), or milvus://HOST:PORT (a Milvus server).",
                     callback=index_choice),
    ] = "auto",
    split: Annotated[str, typer.Option(help="The split of a prepared benchmark.")] = "test",
    cache_dir: CacheOption = Path(SEARCH_CACHE_DIR),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per batch.")
    ] = INFERENCE_BATCH_SIZE,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client has to send a request's headers, and "
                                   "again its body."),
    ] = 10.0,
    batch_queries: Annotated[
        int, typer.Option(min=1, help="Encode up to this many concurrent queries in one pass "
                          "(1: each alone, scores exactly as uit search's).")
    ] = 1,
    tokens: TokensOption = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(show_default="none: nothing recorded", help="Append every search and "
                     "image served to this file, a JSON line each (required with --expose)."),
    ] = None,
    audit_max_bytes: Annotated[
        int, typer.Option(min=1, help="Rotate the audit log past this size.")
    ] = AuditPolicy.max_bytes,
    audit_keep: Annotated[
        int, typer.Option(min=0, help="Rotated audit logs kept (FILE.1 the newest).")
    ] = AuditPolicy.keep,
    audit_retention_days: Annotated[
        int, typer.Option(min=0, help="Drop audit lines older than this (0: keep all).")
    ] = AuditPolicy.retention_days,
    rate_limit: Annotated[
        int, typer.Option(min=0, help="Requests a minute per token, or per address without "
                          "tokens (0: no limit).")
    ] = RATE_LIMIT,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(show_default="none: other origins cannot read answers",
                     help="An origin allowed to call the API from its pages (repeatable)."),
    ] = None,
) -> None:  # fmt: skip
    """Search a gallery from a web page and a JSON API (model and embeddings loaded once)."""
    try:
        from uit.app.serve import (
            Policy,
            build_app,
            check_exposure,
            check_host,
            listen,
            load_searcher,  # fmt: skip
            reload_searcher,
            run_server,
        )
    except ImportError as error:
        raise UitError(f"uit serve needs the serve extra ({error.name} is missing): pip install "
                       "'uit[serve]' (make install does it)") from None  # fmt: skip
    from uit.app.serve_audit import AuditLog
    from uit.core.device import resolve_device

    check_host(host, expose)
    token_file = tokens_path(tokens, cache_dir)
    check_exposure(expose, token_file, audit_log)
    resolve_device(device, "--device")  # a wrong --device fails before anything is loaded
    audit = None if audit_log is None else AuditLog(
        AuditPolicy(audit_log, audit_max_bytes, audit_keep, audit_retention_days))  # fmt: skip
    source = _gallery_source(gallery)
    reload = functools.partial(reload_searcher, gallery_source=source, split=split,
                               index_kind=index, cache_dir=cache_dir)  # fmt: skip
    policy = Policy(token_file, audit, rate_limit, tuple(cors_origin or ()), reload)
    with listen(host, port) as sock:  # a port in use fails now, not after the gallery
        port = sock.getsockname()[1]  # the one the system chose for --port 0
        with progress_bars() as progress:
            searcher = load_searcher(checkpoint, source, split=split, index_kind=index,
                                     cache_dir=cache_dir, device=device, batch_size=batch_size,
                                     progress=adder(progress),
                                     batch_queries=batch_queries)  # fmt: skip
        address = f"[{host}]" if ":" in host else host
        count = len(read_tokens(token_file))
        access = f"{count} tokens in {token_file}" if count else "open (no tokens)"
        err_console.print(f"access: {access}; audit log: {audit_log or 'none'}", markup=False,
                          highlight=False, soft_wrap=True)  # fmt: skip
        err_console.print(f"serving {searcher.model} on {gallery} (shown as "
                          f"{searcher.gallery.source}: {len(searcher.gallery.paths)} images, "
                          f"{searcher.index.describe()}) at http://{address}:{port}/ (API: "
                          "/openapi.json); Ctrl-C stops", markup=False, highlight=False,
                          soft_wrap=True)  # fmt: skip
        run_server(build_app(searcher, expose=expose, timeout=timeout, policy=policy), sock,
                   timeout)  # fmt: skip


@token_app.command("create")
@friendly_errors
def token_create(
    name: Annotated[str, typer.Argument(help="Who the token is for, e.g. alice or ci.")],
    tokens: TokensOption = None,
    cache_dir: CacheOption = Path(SEARCH_CACHE_DIR),
) -> None:
    """Create a token and print it, once: only its SHA-256 digest is stored."""
    path = tokens_path(tokens, cache_dir)
    secret = create_token(path, name)
    err_console.print(f"token {name} added to {path}; it is shown this once, keep it:",
                      markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    sys.stdout.write(secret + "\n")


@token_app.command("revoke")
@friendly_errors
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    tokens: TokensOption = None,
    cache_dir: CacheOption = Path(SEARCH_CACHE_DIR),
) -> None:
    """Revoke a token: a running server refuses it from its next request on."""
    path = tokens_path(tokens, cache_dir)
    revoke_token(path, name)
    err_console.print(f"token {name} revoked in {path}", markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip


@token_app.command("list")
@friendly_errors
def token_list(
    tokens: TokensOption = None, cache_dir: CacheOption = Path(SEARCH_CACHE_DIR)
) -> None:
    """The tokens' names and when they were made (the tokens themselves are not kept)."""
    path = tokens_path(tokens, cache_dir)
    found = read_tokens(path)
    if not found:
        err_console.print(f"no tokens in {path}: uit serve is open on loopback", markup=False,
                          highlight=False, soft_wrap=True)  # fmt: skip
    for token in found.values():
        sys.stdout.write(f"{token.name}\t{token.created}\n")


@serve_app.command("audit")
@friendly_errors
def audit(
    file: Annotated[Path, typer.Argument(help="The --audit-log of a server.")],
    since: Annotated[
        str | None, typer.Option(help="Only records at or after this time (ISO 8601, UTC).")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Only this token's records.")] = None,
    query: Annotated[
        str | None, typer.Option(help="Only searches whose text holds this (any case).")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Read an audit log (and its rotated files) as a table, filtered."""
    from uit.app.serve_audit import parse_time, read_audit

    try:
        when = parse_time(since) if since else None
    except ValueError:
        raise UitError(f"--since {since!r} is not an ISO 8601 time (2026-12-04T18:00)") from None
    records = read_audit(file, since=when, token=token, query=query)
    if json_:
        for record in records:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    columns = ["time", "token", "client", "route", "query or image", "k", "offset", "top"]
    rows = [_audit_row(record) for record in records]
    print_table(columns, rows, console)


def _audit_row(record: dict[str, Any]) -> tuple[str, ...]:
    results = record.get("results") or []
    best = results[0] if isinstance(results, list) and results else {}
    best = best if isinstance(best, dict) else {}
    score = best.get("score")
    top = f"{best.get('name', '')} {score:.3f}" if isinstance(score, float | int) else ""
    what: Any = record.get("query") if record.get("route") == "/search" else record.get("image")
    if record.get("event"):  # an erasure: what was erased
        what = f"{record['event']}: {len(record.get('images') or [])} images"
    return (str(record.get("time", "")), str(record.get("token") or "-"),
            str(record.get("client", "")), str(record.get("route", "")), str(what or ""),
            str(record.get("k", "")), str(record.get("offset", "")), top)  # fmt: skip


def print_table(
    columns: Sequence[str],
    rows: Sequence[tuple[str, ...]],
    out: Console,
    *,
    title: str | None = None,
    folding: str | None = None,
) -> None:
    """A table on a terminal; tab-separated lines under a header elsewhere (a pipe, a file),
    for ``cut`` and ``awk``. ``folding`` names the one column that gives way on a narrow
    terminal (the others right-aligned, never wrapped); without it every column folds."""
    if not out.is_terminal:
        out.file.write("\n".join("\t".join(row) for row in [tuple(columns), *rows]) + "\n")
        return
    table = Table(title=title, title_justify="left", box=SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)  # fmt: skip
    for column in columns:
        if folding is None or column == folding:
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _search_sheet(query: str, hits: list[Any], out: Path) -> None:
    from uit.app.contact_sheet import Tile, build_contact_sheet
    from uit.core.io import atomic_write_bytes

    tiles = [Tile(hit.path, f"#{hit.rank} {hit.score:.3f} {hit.path.name}") for hit in hits]
    image = build_contact_sheet(tiles, columns=min(5, len(tiles)), text_lines=3,
                                title=f'"{query}"')  # fmt: skip
    atomic_write_bytes(out, image_bytes(image, out))
    err_console.print(f"wrote {out}")
