"""Top-10 search over a large cached gallery on the CPU, against a vectorised float32 baseline.

Random L2-normalised float16 embeddings stand in for a cached gallery (``--gallery`` images,
``--dim`` wide: 512 is ViT-B-16's); each query is ranked with ``uit.retrieval.search.top_k``
(a float16 scan, a float32 rescoring of a shortlist, ties to the lower index) and with the plain
float32 way (one matrix product over a float32 copy of the same embeddings, then
``torch.topk``). Prints the machine, milliseconds per query (min, median and max over
``--queries``) and how many
queries get the same top 10 from both.

Then the approximate index of ``uit serve`` (``uit.retrieval.index``: FAISS IVF lists of 8-bit
vectors, its shortlist rescored exactly) on clustered embeddings (``--index-sizes``, 512-d:
normalised points around ``--centres`` gaussian centres; uniform random vectors have no
neighbours worth the name and make recall meaningless): build time, the index's size, ms per
query against the exact scan, and recall@10 against the exact top 10. Last, the API end to end
(``POST /search`` on a real uvicorn server, text encoding by uit-tiny included) over an
``--api-gallery`` of clustered embeddings, with the index ``auto`` picks and with the flat scan.

Usage: ``python benchmarks/search.py [--gallery 100000] [--dim 512] [--queries 20]
[--index-sizes 100000,1000000] [--api-gallery 100000]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import torch
from _machine import machine  # benchmarks/ is on sys.path when a script runs

from uit.retrieval.index import AnnIndex, FlatIndex, build_index
from uit.retrieval.search import top_k

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
    return f"{name:<34}{low:>8.2f}{mid:>10.2f}{high:>8.2f}{len(times):>9}"


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


def index_row(n: int, args: argparse.Namespace) -> str:
    gallery = clustered(n, args.dim, args.centres, seed=1)
    queries = clustered(args.index_queries, args.dim, args.centres, seed=2).float()
    start = time.perf_counter()
    index = build_index(gallery, "ann")
    built = time.perf_counter() - start
    assert isinstance(index, AnnIndex)
    import faiss

    size = faiss.serialize_index(index.index).size / 2**20
    flat = FlatIndex(gallery)
    index.search(queries[:1], args.k), flat.search(queries[:1], args.k)  # warm-up
    ann_ms, flat_ms, found = [], [], 0
    for query in queries.unsqueeze(1):
        ms, (_, approximate) = timed(index.search, query, args.k)
        ann_ms.append(ms)
        ms, (_, exact) = timed(flat.search, query, args.k)
        flat_ms.append(ms)
        found += len(set(approximate[0].tolist()) & set(exact[0].tolist()))
    recall = found / (args.k * len(queries))
    return (f"{n:>10,}{index.settings.lists:>7}{built:>9.1f}{size:>10.0f}"
            f"{gallery.numel() * 2 / 2**20:>12.0f}{statistics.median(ann_ms):>9.2f}"
            f"{statistics.median(flat_ms):>9.2f}{recall:>11.3f}")  # fmt: skip


def api_rows(args: argparse.Namespace) -> list[str]:
    """Median and 90th percentile of ``POST /search`` over HTTP, per index kind."""
    from uit.core.config import ModelConfig, ParseConfig
    from uit.model.build import build_model, build_tokenizer
    from uit.parsing.pipeline import build_pipeline
    from uit.retrieval.evaluate import EvalOptions

    cfg = ModelConfig(name="uit-tiny", image_height=64, image_width=32, context_length=48)
    encoder, tokenizer = build_model(cfg).eval(), build_tokenizer(cfg)
    feats = clustered(args.api_gallery, encoder.embed_dim, args.centres, seed=3)
    nlp, _ = build_pipeline(ParseConfig())
    rows = []
    for kind in ("auto", "flat"):
        index = build_index(feats, kind)  # type: ignore[arg-type]
        times = serve_and_time(encoder, tokenizer, EvalOptions(), feats, index, nlp, args)
        times.sort()
        label, p90 = f"{kind} -> {index.kind}", times[int(0.9 * (len(times) - 1))]
        rows.append(f"{label:<14}{args.api_gallery:>10,}{statistics.median(times):>11.2f}"
                    f"{p90:>9.2f}{len(times):>9}")  # fmt: skip
    return rows


def serve_and_time(encoder, tokenizer, options, feats, index, nlp, args) -> list[float]:
    import uvicorn

    from uit.app.serve import Gallery, Searcher, build_app

    names = [f"{i:07d}.png" for i in range(len(feats))]  # never read: no image is requested
    gallery = Gallery("synthetic", Path("."), [Path(n) for n in names], names)
    searcher = Searcher(encoder, tokenizer, options, gallery, index, nlp, "uit-tiny (random)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(searcher), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    connection = http.client.HTTPConnection("127.0.0.1", port)  # one keep-alive connection
    times = []
    try:
        for i in range(args.api_queries + 3):
            body = json.dumps({"text": SENTENCES[i % len(SENTENCES)], "k": args.k})
            start = time.perf_counter()
            connection.request("POST", "/search", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200, response.read()
            response.read()
            if i >= 3:  # the first requests warm up the encoder and the parser
                times.append((time.perf_counter() - start) * 1000)
    finally:
        connection.close()
        server.should_exit = True
        thread.join()
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
    top_k(queries[:1], gallery, args.k), float32_top_k(queries[:1], gallery32, args.k)  # warm-up
    fast, plain, same = [], [], 0
    for query in queries.unsqueeze(1):  # one (1, D) query at a time, as `uit search` asks
        ms, expected = timed(float32_top_k, query, gallery32, args.k)
        plain.append(ms)
        ms, (_, indices) = timed(top_k, query, gallery, args.k)
        fast.append(ms)
        same += bool(torch.equal(indices, expected))
    print(
        f"top {args.k} of {args.gallery:,} embeddings ({args.dim}-d, cached as float16) per "
        f"query; {machine()}"
    )
    print(f"{'method':<34}{'min ms':>8}{'median ms':>10}{'max ms':>8}{'queries':>9}")
    print(row("float32 matmul + torch.topk", plain))
    print(row("uit.retrieval.search.top_k (float16 scan)", fast))
    speedup = statistics.median(plain) / statistics.median(fast)
    print(
        f"speed-up {speedup:.1f}x (median over median); same top {args.k} as float32: "
        f"{same}/{args.queries} queries"
    )


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
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--api-gallery", type=int, default=100_000, help="0: no API rows.")
    parser.add_argument("--api-queries", type=int, default=50)
    args = parser.parse_args()
    flat_table(args)
    sizes = [int(n) for n in args.index_sizes.split(",") if n]
    if sizes:
        print(
            f"\napproximate index (FAISS IVF, 8-bit, shortlist rescored exactly) on {args.dim}-d "
            f"embeddings around {args.centres:,} centres; {args.index_queries} queries"
        )
        print(f"{'gallery':>10}{'lists':>7}{'build s':>9}{'index MiB':>10}{'gallery MiB':>12}"
              f"{'ann ms':>9}{'flat ms':>9}{'recall@10':>11}")  # fmt: skip
        for n in sizes:
            print(index_row(n, args), flush=True)
    if args.api_gallery:
        print(
            f"\nPOST /search end to end (HTTP, uit-tiny encodes the text, top {args.k}); "
            "one client, one request at a time"
        )
        print(f"{'index':<14}{'gallery':>10}{'median ms':>11}{'p90 ms':>9}{'queries':>9}")
        for line in api_rows(args):
            print(line)


if __name__ == "__main__":
    main()
