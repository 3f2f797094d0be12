"""Top-10 search over a large cached gallery on the CPU, against a vectorised float32 baseline.

Random L2-normalised float16 embeddings stand in for a cached gallery (``--gallery`` images,
``--dim`` wide: 512 is ViT-B-16's); each query is ranked with ``uit.retrieval.search.top_k``
(a coarse scan, a float32 rescoring of a shortlist, ties to the lower index) with each of the
scan's methods (``uit.retrieval.scan``: float16, or float16 converted to float32 in blocks), and
with the plain float32 way (one matrix product over a float32 copy of the same embeddings, then
``torch.topk``), side by side on the same queries. Prints the machine, the method uit picks on
it and why, milliseconds per query (min, median and max over ``--queries``) and how many queries
get the same top 10 as the baseline.

Then the indexes of ``uit serve`` (``--index-backends``: the flat scan, FAISS IVF lists of 8-bit
vectors in ``uit.retrieval.index`` and a Milvus Lite collection in ``uit.retrieval.milvus``,
each approximate one's shortlist rescored exactly) on clustered embeddings (``--index-sizes``,
512-d: normalised points around ``--centres`` gaussian centres; uniform random vectors have no
neighbours worth the name and make recall meaningless): build time, memory, ms per query, and
recall@10 against the exact top 10. Last, the API end to end
(``POST /search`` on a real uvicorn server, the query's text encoding included) over an
``--api-gallery`` of clustered embeddings, with the index ``auto`` picks and with the flat scan
(and, asked in turn with it, the flat scan behind a token and an fsynced audit log, as
``--expose`` requires),
through the searcher ``uit serve`` assembles: the model of ``--checkpoint`` loaded as ``uit serve``
loads it, or by default the architecture ``--params`` (``params.yaml``) names, with random
weights (the time does not depend on what the weights are).

Usage: ``python benchmarks/search.py [--gallery 100000] [--dim 512] [--queries 20]
[--index-sizes 100000,1000000] [--api-gallery 100000] [--params params.yaml | --checkpoint DIR]``
``UIT_SCAN=float32`` fixes the exact scan's method for the API rows (the first table runs both).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _machine import machine  # benchmarks/ is on sys.path when a script runs

from uit.app.serve import assemble_searcher, build_app, describe_model
from uit.retrieval.index import AnnIndex, AnnSettings, FlatIndex, build_index
from uit.retrieval.metrics import ranking_keys
from uit.retrieval.milvus import segment_rows
from uit.retrieval.scan import CALIBRATION_ROWS, ENV, METHODS, calibration, scan_method
from uit.retrieval.search import Gallery, top_indices, top_k

SENTENCES = ["a woman in a red coat carrying a black backpack", "a man in a blue shirt and jeans",
             "a young girl with long black hair wearing a white dress and pink shoes",
             "an old man with a grey beard, a brown jacket and a walking stick",
             "someone in a yellow raincoat holding an umbrella"]  # fmt: skip


def float32_top_k(query: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """The baseline: one float32 matrix product and ``torch.topk``."""
    return torch.topk(query @ gallery.T, k, dim=1).indices


def timed(function, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = function(*args)
    return (time.perf_counter() - start) * 1000, result


def row(name: str, times: list[float]) -> str:
    low, mid, high = min(times), statistics.median(times), max(times)
    return f"{name:<42}{low:>8.2f}{mid:>10.2f}{high:>8.2f}{len(times):>9}"


def clustered(n: int, dim: int, centres: int, seed: int) -> torch.Tensor:
    """(n, dim) normalised float16 points around ``centres`` gaussian centres (noise as strong
    as the centre), in chunks so that 1M x 512 needs no 2 GB float32 temporary at once."""
    generator = torch.Generator().manual_seed(seed)
    middle = torch.randn(centres, dim, generator=torch.Generator().manual_seed(0))
    chunks = []
    for start in range(0, n, 65_536):
        size = min(65_536, n - start)
        which = torch.randint(0, centres, (size,), generator=generator)
        points = middle[which] + torch.randn(size, dim, generator=generator)
        chunks.append(torch.nn.functional.normalize(points, dim=-1).half())
    return torch.cat(chunks)


def index_rows(n: int, args: argparse.Namespace) -> Iterator[str]:
    """One row per index of ``--index-backends`` over ``n`` clustered embeddings: build time,
    memory (the flat scan's embeddings; FAISS's serialised index; Milvus Lite's growth of this
    process's resident memory, its files on disk after the slash), ms per query, recall@10
    against the exact scan; each row as soon as it is measured (a 1M Milvus Lite build takes
    minutes)."""
    gallery = clustered(n, args.dim, args.centres, seed=1)
    queries = clustered(args.index_queries, args.dim, args.centres, seed=2).float()
    flat = FlatIndex(gallery)
    flat.search(queries[:1], args.k)  # warm-up
    exact, flat_ms = [], []
    for query in queries.unsqueeze(1):
        ms, (_, found) = timed(flat.search, query, args.k)
        flat_ms.append(ms)
        exact.append(set(found[0].tolist()))
    for backend in args.index_backends.split(","):
        if backend == "flat":
            memory, name = f"{gallery.numel() * 2 / 2**20:.0f}", "flat (exact scan)"
            yield index_line(n, name, 0.0, memory, flat_ms, 1.0)
            continue
        with tempfile.TemporaryDirectory() as cache:
            before, start = resident_mib(), time.perf_counter()
            index = build_index(gallery, backend, cache if backend != "ann" else None)
            built, grown = time.perf_counter() - start, resident_mib() - before
            memory = index_memory(index, grown, Path(cache))
            name = describe_backend(index, backend)
            index.search(queries[:1], args.k)  # warm-up
            times, found = [], 0
            for query, best in zip(queries.unsqueeze(1), exact, strict=True):
                ms, (_, approximate) = timed(index.search, query, args.k)
                times.append(ms)
                found += len(set(approximate[0].tolist()) & best)
            yield index_line(n, name, built, memory, times, found / (args.k * len(queries)))


def index_line(n: int, name: str, built: float, memory: str, times: list[float],
               recall: float) -> str:  # fmt: skip
    return (f"{n:>10,}  {name:<26}{built:>9.1f}{memory:>14}{statistics.median(times):>9.2f}"
            f"{recall:>11.3f}")  # fmt: skip


def describe_backend(index: Any, backend: str) -> str:
    if isinstance(index, AnnIndex):
        return f"FAISS IVF{index.settings.lists},SQ8"
    rows = segment_rows(backend, *index.feats.shape)  # Milvus trains an IVF per segment
    where = "Milvus Lite" if backend == "milvus" else "Milvus"
    return f"{where} IVF{AnnSettings.for_size(rows).lists},SQ8/seg"


def index_memory(index: Any, grown: float, cache: Path) -> str:
    if isinstance(index, AnnIndex):
        import faiss

        return f"{faiss.serialize_index(index.index).size / 2**20:.0f}"
    disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20
    return f"{grown:.0f} / {disk:.0f}"


def resident_mib() -> float:
    """This process's resident memory (Linux), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def api_rows(args: argparse.Namespace) -> list[str]:
    """Median and 90th percentile of ``POST /search`` over HTTP, per index kind, through the
    searcher ``uit serve`` assembles (``uit.app.serve.assemble_searcher``) with the model
    ``--checkpoint`` holds or, without one, ``--params``' model with random weights."""
    encoder, tokenizer, options, model = api_model(args)
    print(f"model: {model}; text encoded on {options.device} in "
          f"{str(options.dtype or torch.float32).removeprefix('torch.')}")  # fmt: skip
    print(f"{'index':<20}{'gallery':>10}{'median ms':>11}{'p90 ms':>9}{'queries':>9}  searcher")
    feats = clustered(args.api_gallery, encoder.embed_dim, args.centres, seed=3)
    names = [f"{i:07d}.png" for i in range(len(feats))]  # never read: no image is requested
    gallery = Gallery("synthetic", Path("."), [Path(n) for n in names], names)
    rows = []
    for kind in args.api_kinds.split(","):
        searcher = assemble_searcher((encoder, tokenizer, options), gallery, feats,
                                     index_kind=kind, model=model)  # fmt: skip
        labels = [f"{kind} -> {searcher.index.kind}"]
        with contextlib.ExitStack() as stack:
            servers = [(stack.enter_context(running(build_app(searcher))), {})]
            if kind == "flat":  # the same searcher behind a token and the audit log, asked in
                labels.append("flat + auth + audit")  # turn with the plain one: same load
                servers.append(stack.enter_context(guarded(searcher)))
            timed = time_searches(servers, args)
        for label, times in zip(labels, timed, strict=True):
            times = sorted(times)
            p90 = times[int(0.9 * (len(times) - 1))]
            rows.append(f"{label:<20}{args.api_gallery:>10,}{statistics.median(times):>11.2f}"
                        f"{p90:>9.2f}{len(times):>9}  {searcher.index.describe()}")  # fmt: skip
        if len(timed) == 2:  # each guarded search against the plain one just before it
            paired = statistics.median(g - f for f, g in zip(*timed, strict=True))
            rows.append(f"auth + audit: {paired:+.2f} ms a search (median of the paired "
                        "differences; budget 2 ms)")  # fmt: skip
    if args.api_clients > 1:
        rows += concurrent_rows((encoder, tokenizer, options), model, gallery, feats, args)
    return rows


def concurrent_rows(loaded, model: str, gallery, feats, args: argparse.Namespace) -> list[str]:
    """``--api-clients`` clients searching at once, each on its own connection, the flat index:
    each text encoded alone (``--batch-queries 1``) against concurrent texts sharing encoder
    passes (``--batch-queries``): median and p90 latency, and searches per second."""
    rows = [f"{args.api_clients} clients at once:"]
    for batch in sorted({1, args.batch_queries}):
        searcher = assemble_searcher(loaded, gallery, feats, index_kind="flat", model=model,
                                     batch_queries=batch)  # fmt: skip
        with running(build_app(searcher)) as port:
            times: list[float] = []
            each = max(1, args.api_queries // args.api_clients)

            def client(
                seed: int, port: int = port, each: int = each, times: list[float] = times
            ) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", port)
                try:
                    for i in range(each + 2):
                        body = json.dumps({"text": SENTENCES[(seed + i) % len(SENTENCES)],
                                           "k": args.k})  # fmt: skip
                        start = time.perf_counter()
                        connection.request("POST", "/search", body,
                                           {"Content-Type": "application/json"})  # fmt: skip
                        response = connection.getresponse()
                        assert response.status == 200, response.read()
                        response.read()
                        if i >= 2:
                            times.append((time.perf_counter() - start) * 1000)
                finally:
                    connection.close()

            threads = [threading.Thread(target=client, args=(n,)) for n in range(args.api_clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        times.sort()
        label = f"flat, batch {batch}"
        rows.append(f"{label:<20}{args.api_gallery:>10,}{statistics.median(times):>11.2f}"
                    f"{times[int(0.9 * (len(times) - 1))]:>9.2f}{len(times):>9}  "
                    f"{args.api_clients * (each + 2) / wall:.1f} searches/s")  # fmt: skip
    return rows


@contextlib.contextmanager
def guarded(searcher) -> Iterator[tuple[int, dict[str, str]]]:
    """A server of ``searcher`` that wants a token and writes every search to an audit log (one
    fsynced line each) in a temporary folder on the project's disk; its port and the header."""
    from uit.app.serve import Policy
    from uit.app.serve_access import create_token
    from uit.app.serve_audit import AuditLog, AuditPolicy

    with tempfile.TemporaryDirectory(dir=".") as folder:
        tokens = Path(folder) / "tokens.json"
        secret = create_token(tokens, "bench")
        policy = Policy(tokens, AuditLog(AuditPolicy(Path(folder) / "audit.jsonl")))
        with running(build_app(searcher, policy=policy)) as port:
            yield port, {"Authorization": f"Bearer {secret}"}


def api_model(args: argparse.Namespace):
    """The encoder, tokenizer and options ``uit serve`` would load, and a line naming them."""
    from uit.core.config import load_config
    from uit.core.device import autocast_dtype, resolve_device
    from uit.model.build import build_model, build_tokenizer
    from uit.retrieval.evaluate import EvalOptions, load_for_inference

    if args.checkpoint:
        encoder, tokenizer, options = load_for_inference(args.checkpoint, args.device)
        return encoder, tokenizer, options, describe_model(Path(args.checkpoint))
    cfg = load_config(args.params)
    model_cfg = cfg.model.model_copy(update={"pretrained": ""})  # timing only: no weights
    device = resolve_device(args.device, "--device")
    options = EvalOptions(device=device, dtype=autocast_dtype(device, cfg.train.precision))
    encoder = build_model(model_cfg).to(device).eval()
    m = model_cfg
    return (encoder, build_tokenizer(model_cfg), options,
            f"{m.name} at {m.image_height}x{m.image_width}, context {m.context_length}, random "
            f"weights (the architecture of {args.params}; --checkpoint: trained ones)")  # fmt: skip


@contextlib.contextmanager
def running(app) -> Iterator[int]:
    """``app`` on a uvicorn server in a thread, on a free port of 127.0.0.1 (yielded)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join()


def time_searches(servers: list[tuple[int, dict[str, str]]],
                  args: argparse.Namespace) -> list[list[float]]:  # fmt: skip
    """Milliseconds of each ``POST /search`` per server (its port and headers), the servers
    asked in turn, each on one keep-alive connection."""
    connections = [http.client.HTTPConnection("127.0.0.1", port) for port, _ in servers]
    times: list[list[float]] = [[] for _ in servers]
    try:
        for i in range(args.api_queries + 3):
            body = json.dumps({"text": SENTENCES[i % len(SENTENCES)], "k": args.k})
            for connection, (_, headers), spent in zip(connections, servers, times, strict=True):
                start = time.perf_counter()
                connection.request("POST", "/search", body,
                                   {"Content-Type": "application/json", **headers})  # fmt: skip
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()
                if i >= 3:  # the first requests warm up the encoder and the parser
                    spent.append((time.perf_counter() - start) * 1000)
    finally:
        for connection in connections:
            connection.close()
    return times


def flat_table(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(
        torch.randn(args.gallery, args.dim, generator=generator), dim=-1
    ).half()  # as uit.retrieval.search.EmbeddingCache stores them
    gallery32 = gallery.float()  # the baseline's gallery: the same embeddings, kept in float32
    queries = torch.nn.functional.normalize(
        torch.randn(args.queries, args.dim, generator=generator), dim=-1
    )
    picked = scan_method()  # times both methods once, as a server's first search does
    timings = calibration()
    print(
        f"top {args.k} of {args.gallery:,} embeddings ({args.dim}-d, cached as float16) per "
        f"query; {machine()}"
    )
    print(
        "uit's scan on this CPU: "
        + ", ".join(f"{m} {ms:.2f} ms" for m, ms in timings.items())
        + f" per {CALIBRATION_ROWS:,} rows -> {picked}"
        + (f" (fixed by {ENV})" if os.environ.get(ENV) else "")
    )
    methods = {f"top_k, {m} scan": functools.partial(scanned, method=m) for m in METHODS}
    times: dict[str, list[float]] = {"float32 matmul + torch.topk (baseline)": []}
    times |= {name: [] for name in methods}
    same = dict.fromkeys(methods, 0)
    float32_top_k(queries[:1], gallery32, args.k)  # warm-up
    for function in methods.values():
        function(queries[:1], gallery, args.k)
    for query in queries.unsqueeze(1):  # one (1, D) query at a time, as `uit search` asks
        ms, expected = timed(float32_top_k, query, gallery32, args.k)
        times["float32 matmul + torch.topk (baseline)"].append(ms)
        for name, function in methods.items():  # side by side: each query by every method
            ms, (_, indices) = timed(function, query, gallery, args.k)
            times[name].append(ms)
            same[name] += bool(torch.equal(indices, expected))
    print(f"{'method':<42}{'min ms':>8}{'median ms':>10}{'max ms':>8}{'queries':>9}{'same':>6}")
    baseline = statistics.median(times["float32 matmul + torch.topk (baseline)"])
    for name, values in times.items():
        mark = " <- uit" if name == f"top_k, {picked} scan" else ""
        agree = f"{same[name]:>6}" if name in same else f"{'-':>6}"
        speed = f"  {baseline / statistics.median(values):.1f}x"
        print(row(name, values) + agree + speed + mark)
    print(f"same: queries with the baseline's top {args.k} (of {args.queries}); Nx: the "
          "baseline's median over the method's")  # fmt: skip
    keys_table(gallery32, queries, args)


def scanned(query, gallery, k, method):
    """``top_k`` with the scan fixed to ``method``, as ``UIT_SCAN`` would fix it."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = method
    try:
        return top_k(query, gallery, k)
    finally:
        if previous is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = previous


def keys_table(gallery32: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace) -> None:
    """Why ``top_indices`` gives integer keys to the best items only: keys for a whole row."""
    scores = queries[:5] @ gallery32.T  # (5, N)
    whole, best = [], []
    for row_scores in scores.unsqueeze(1):
        whole.append(timed(lambda s: torch.topk(ranking_keys(s), args.k), row_scores)[0])
        best.append(timed(top_indices, row_scores, args.k)[0])
    print(f"\nties to the lower index over {args.gallery:,} scores (ms per query, median of 5): "
          f"int64 keys for the whole row {statistics.median(whole):.2f}, "
          f"top_indices {statistics.median(best):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--index-sizes",
        default="100000,1000000",
        help="Comma-separated gallery sizes for the index rows ('' for none).",
    )
    parser.add_argument("--index-queries", type=int, default=100)
    parser.add_argument(
        "--index-backends",
        default="flat,ann,milvus",
        help="Comma-separated indexes of the index rows (milvus: Milvus Lite in a temporary "
        "folder, or milvus://HOST:PORT).",
    )
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--api-gallery", type=int, default=100_000, help="0: no API rows.")
    parser.add_argument("--api-queries", type=int, default=50)
    parser.add_argument(
        "--api-clients",
        type=int,
        default=4,
        help="Clients at once for the concurrent rows (1: none).",
    )
    parser.add_argument(
        "--batch-queries",
        type=int,
        default=4,
        help="uit serve --batch-queries of the concurrent rows (against 1).",
    )
    parser.add_argument(
        "--api-kinds",
        default="auto,flat",
        help="Comma-separated index kinds of the API rows (flat needs no FAISS).",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="The API rows' model: this config's architecture, random weights.",
    )
    parser.add_argument(
        "--checkpoint",
        help="The API rows' model: a checkpoint or export, "
        "loaded as `uit serve` loads it (instead of --params).",
    )
    parser.add_argument("--device", default="auto", help="Where the API rows encode the text.")
    args = parser.parse_args()
    flat_table(args)
    sizes = [int(n) for n in args.index_sizes.split(",") if n]
    if sizes:
        print(
            f"\nindexes (approximate ones: 8-bit IVF, shortlist rescored exactly) on {args.dim}-d "
            f"embeddings around {args.centres:,} centres; {args.index_queries} queries, one at a "
            "time"
        )
        print(f"{'gallery':>10}  {'index':<26}{'build s':>9}{'memory MiB':>14}{'ms':>9}"
              f"{'recall@10':>11}")  # fmt: skip
        for n in sizes:
            for line in index_rows(n, args):
                print(line, flush=True)
    if args.api_gallery:
        print(
            f"\nPOST /search end to end (HTTP, the model encodes the text, top {args.k}); "
            "one client, one request at a time"
        )
        for line in api_rows(args):
            print(line)


if __name__ == "__main__":
    main()
