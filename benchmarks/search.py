"""Top-10 search over a large cached gallery on the CPU, side by side with a naive loop.

Random L2-normalised float16 embeddings stand in for a cached gallery (``--gallery`` images,
``--dim`` wide: 512 is ViT-B-16's); each query is ranked with ``uit.search.top_k`` (a float16
scan, a float32 rescoring of a shortlist, ties to the lower index) and with a naive loop (one
float32 dot product per gallery image in Python, then a sort). Prints milliseconds per query
(median over ``--queries``) and whether both give the same top 10.

Usage: ``python benchmarks/search.py [--gallery 100000] [--dim 512] [--queries 20]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from uit.search import top_k


def naive_top_k(query: np.ndarray, gallery: np.ndarray, k: int) -> list[int]:
    scores = [(float(np.dot(query, row)), -index) for index, row in enumerate(gallery)]
    scores.sort(reverse=True)
    return [-negative for _, negative in scores[:k]]


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return (time.perf_counter() - start) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--naive-queries", type=int, default=3, help="the naive loop is slow")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(
        torch.randn(args.gallery, args.dim, generator=generator), dim=-1
    ).half()  # as uit.search.EmbeddingCache stores them
    queries = torch.nn.functional.normalize(
        torch.randn(args.queries, args.dim, generator=generator), dim=-1
    )
    top_k(queries[:1], gallery, args.k)  # warm-up
    fast, answers = [], []
    for query in queries:
        ms, (_, indices) = timed(top_k, query.unsqueeze(0), gallery, args.k)
        fast.append(ms)
        answers.append(indices[0].tolist())
    gallery_np, slow, agree = gallery.float().numpy(), [], True
    for i in range(min(args.naive_queries, args.queries)):
        ms, naive = timed(naive_top_k, queries[i].numpy(), gallery_np, args.k)
        slow.append(ms)
        agree &= naive == answers[i]
    print(
        f"top {args.k} of {args.gallery:,} cached embeddings ({args.dim}-d float16) per query; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median"
    )
    print(f"{'method':<24}{'ms/query':>10}{'queries':>9}")
    print(f"{'naive loop':<24}{statistics.median(slow):>10.1f}{len(slow):>9}")
    print(f"{'uit.search.top_k':<24}{statistics.median(fast):>10.2f}{len(fast):>9}")
    speedup = statistics.median(slow) / statistics.median(fast)
    print(f"speed-up {speedup:.0f}x; same top {args.k}: {agree}")


if __name__ == "__main__":
    main()
