"""``uit search`` and ``uit serve``: a sentence against a gallery, once or as a service."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from uit.core.config import BENCHMARKS, INFERENCE_BATCH_SIZE, SEARCH_CACHE_DIR, TOP_K, IndexKind
from uit.core.console import adder, console, err_console, progress_bars
from uit.core.errors import UitError

if TYPE_CHECKING:
    from rich.console import Console

    from uit.retrieval.search import Gallery, Hit
from uit.app.cli.base import IMAGES, app, friendly_errors, image_bytes


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
    """The hits as a table on a terminal; as tab-separated lines with a header elsewhere (a pipe,
    a file), for ``cut`` and ``awk``. Names are never cut: on a terminal too narrow for a name,
    it folds onto the next line whole."""
    if not out.is_terminal:
        out.file.write("\n".join("\t".join(row) for row in [tuple(columns), *rows]) + "\n")
        return
    table = Table(title=f"top {len(rows)}: {query}", title_justify="left", box=SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)  # fmt: skip
    for column in columns[:-1]:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("image", overflow="fold")  # the only column that gives way
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command()
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
        bool, typer.Option(help="Allow a non-loopback --host: anyone who reaches it can search.")
    ] = False,
    index: Annotated[
        IndexKind,
        typer.Option(help="Exact scan, approximate FAISS index, or by gallery size (auto)."),
    ] = "auto",
    split: Annotated[str, typer.Option(help="The split of a prepared benchmark.")] = "test",
    cache_dir: Annotated[
        Path, typer.Option(help="Where gallery embeddings and the index are cached.")
    ] = Path(SEARCH_CACHE_DIR),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per batch.")
    ] = INFERENCE_BATCH_SIZE,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client has to send a request's headers, and "
                                   "again its body."),
    ] = 10.0,
) -> None:  # fmt: skip
    """Search a gallery from a web page and a JSON API (model and embeddings loaded once)."""
    try:
        from uit.app.serve import build_app, check_host, listen, load_searcher, run_server
    except ImportError as error:
        raise UitError(f"uit serve needs the serve extra ({error.name} is missing): pip install "
                       "'uit[serve]' (make install does it)") from None  # fmt: skip
    from uit.core.device import resolve_device

    check_host(host, expose)
    resolve_device(device, "--device")  # a wrong --device fails before anything is loaded
    with listen(host, port) as sock:  # a port in use fails now, not after the gallery
        port = sock.getsockname()[1]  # the one the system chose for --port 0
        with progress_bars() as progress:
            searcher = load_searcher(checkpoint, _gallery_source(gallery), split=split,
                                     index_kind=index, cache_dir=cache_dir, device=device,
                                     batch_size=batch_size, progress=adder(progress))  # fmt: skip
        address = f"[{host}]" if ":" in host else host
        err_console.print(f"serving {searcher.model} on {gallery} (shown as "
                          f"{searcher.gallery.source}: {len(searcher.gallery.paths)} images, "
                          f"{searcher.index.describe()}) at http://{address}:{port}/ (API: "
                          "/openapi.json); Ctrl-C stops", markup=False, highlight=False,
                          soft_wrap=True)  # fmt: skip
        run_server(build_app(searcher, expose=expose, timeout=timeout), sock, timeout)


def _search_sheet(query: str, hits: list[Any], out: Path) -> None:
    from uit.app.contact_sheet import Tile, build_contact_sheet
    from uit.core.io import atomic_write_bytes

    tiles = [Tile(hit.path, f"#{hit.rank} {hit.score:.3f} {hit.path.name}") for hit in hits]
    image = build_contact_sheet(tiles, columns=min(5, len(tiles)), text_lines=3,
                                title=f'"{query}"')  # fmt: skip
    atomic_write_bytes(out, image_bytes(image, out))
    err_console.print(f"wrote {out}")
