"""Time and memory of ``uit.metrics.retrieval_metrics`` against a full-argsort evaluator.

Both run on the same ICFG-PEDES-sized similarity matrix (19,848 queries x 4,855 gallery images,
with ties), each in its own process so that peak memory is measured cleanly, then the table says
whether their results agree. Usage: ``python benchmarks/metrics.py [--queries N --gallery M]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch


def make_problem(queries: int, gallery: int, seed: int = 0):
    """Scores with signal for same-pid pairs, rounded so that ties occur.

    Filled a block of rows at a time, so that building it leaves no large temporaries behind in
    the process's peak memory.
    """
    rng = np.random.default_rng(seed)
    gallery_pids = rng.integers(0, max(1, gallery // 5), gallery)
    query_pids = rng.choice(gallery_pids, queries)
    scores = np.empty((queries, gallery), dtype=np.float32)
    for start in range(0, queries, 512):
        block = rng.standard_normal((min(512, queries - start), gallery), dtype=np.float32)
        block += 2.0 * (query_pids[start : start + 512, None] == gallery_pids[None, :])
        scores[start : start + 512] = np.round(block, 2)
    return torch.from_numpy(scores), torch.from_numpy(query_pids), torch.from_numpy(gallery_pids)


def full_argsort_metrics(similarity, query_pids, gallery_pids, ks=(1, 5, 10)):
    """The usual evaluator: sort every row, then read everything off the sorted match matrix."""
    order = torch.argsort(
        similarity, dim=1, descending=True, stable=True
    )  # ties: lower index first
    matches = gallery_pids[order] == query_pids.unsqueeze(1)  # (Q, G)
    result = {f"R{k}": 100 * matches[:, :k].any(1).double().mean().item() for k in ks}
    hits_so_far = matches.cumsum(1).double()
    rank = torch.arange(1, matches.shape[1] + 1, dtype=torch.float64).unsqueeze(0)
    relevant = matches.sum(1)
    precision = (hits_so_far / rank) * matches
    result["mAP"] = 100 * (precision.sum(1) / relevant).mean().item()
    last = (matches * rank).max(1).values
    result["mINP"] = 100 * (relevant.double() / last).mean().item()
    return result


def child(impl: str, queries: int, gallery: int, repeats: int) -> None:
    from uit.metrics import retrieval_metrics

    evaluate = retrieval_metrics if impl == "uit" else full_argsort_metrics
    similarity, query_pids, gallery_pids = make_problem(queries, gallery)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = evaluate(similarity, query_pids, gallery_pids)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"seconds": statistics.median(times), "peak_extra_mib": peak / 1024,
                      "matrix_mib": similarity.numel() * 4 / 2**20, "result": result}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=19_848)
    parser.add_argument("--gallery", type=int, default=4_855)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("uit", "argsort"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.queries, args.gallery, args.repeats)
        return
    runs = {}
    for impl in ("argsort", "uit"):
        command = [sys.executable, __file__, "--child", impl, "--queries", str(args.queries),
                   "--gallery", str(args.gallery), "--repeats", str(args.repeats)]  # fmt: skip
        runs[impl] = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )
    base, ours = runs["argsort"], runs["uit"]
    agree = all(abs(base["result"][k] - ours["result"][k]) < 1e-9 for k in base["result"])
    matrix = base["matrix_mib"]
    print(
        f"similarity {args.queries} x {args.gallery} float32 = {matrix:.0f} MiB; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'evaluator':<22}{'seconds':>9}{'peak extra MiB':>16}{'peak incl. matrix':>19}")
    for name, run in (("full argsort", base), ("uit.retrieval_metrics", ours)):
        extra = run["peak_extra_mib"]
        print(f"{name:<22}{run['seconds']:>9.2f}{extra:>16.0f}{(extra + matrix) / matrix:>18.2f}x")
    print(
        f"speed-up {base['seconds'] / ours['seconds']:.2f}x; "
        f"results agree (every |difference| < 1e-9): {agree}"
    )
    for key in base["result"]:
        print(f"  {key:>5}: argsort {base['result'][key]:.6f}  uit {ours['result'][key]:.6f}")


if __name__ == "__main__":
    main()
