"""Top-10 search over a large cached gallery on the CPU, against a vectorised float32 baseline.

Random L2-normalised float16 embeddings stand in for a cached gallery (``--gallery`` images,
``--dim`` wide: 512 is ViT-B-16's); each query is ranked with ``uit.retrieval.search.top_k``
(a float16 scan, a float32 rescoring of a shortlist, ties to the lower index) and with the plain
float32 way (one matrix product over a float32 copy of the same embeddings, then
``torch.topk``). Prints the machine, milliseconds per query (min, median and max over
``--queries``) and how many
queries get the same top 10 from both.

Usage: ``python benchmarks/search.py [--gallery 100000] [--dim 512] [--queries 20]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import machine  # benchmarks/ is on sys.path when a script runs

from uit.retrieval.search import top_k


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
