"""Time and memory of ``uit.retrieval.metrics.retrieval_metrics`` against a full-argsort
evaluator, alone and beside a memory-bound load.

Both run on the same ICFG-PEDES-sized similarity matrix (19,848 queries x 4,855 gallery images,
with ties), each in its own process so that peak memory is measured cleanly. The baseline is the
usual evaluator (sort every row, read the metrics off the sorted match matrix) with float32
temporaries, as such evaluators keep them. Everything is measured twice: alone, then while a
background process copies a large array in a loop (it stops when the measurement ends, and by
itself after ``--load-seconds`` at the latest). The speed-up depends on the machine and on what
else runs on it, so the table names the machine and gives the spread over ``--repeats``.
Usage: ``python benchmarks/metrics.py [--queries N --gallery M --repeats R]``.
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
from _machine import machine  # benchmarks/ is on sys.path when a script runs

AGREE = 1e-4  # percent; the float32 baseline rounds each precision term


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
    order = torch.argsort(similarity, dim=1, descending=True, stable=True)  # ties: lower index
    matches = gallery_pids[order] == query_pids.unsqueeze(1)  # (Q, G)
    result = {f"R{k}": 100 * matches[:, :k].any(1).double().mean().item() for k in ks}
    hits_so_far = matches.cumsum(1, dtype=torch.float32)
    rank = torch.arange(1, matches.shape[1] + 1, dtype=torch.float32).unsqueeze(0)
    relevant = matches.sum(1)
    precision = (hits_so_far / rank) * matches
    result["mAP"] = 100 * (precision.sum(1) / relevant).double().mean().item()
    last = (matches * rank).max(1).values
    result["mINP"] = 100 * (relevant / last).double().mean().item()
    return result


def copy_loop(seconds: float, mib: int = 512) -> None:
    """The memory-bound load: copy a large array back and forth until the deadline."""
    source = np.ones(mib * 2**18, dtype=np.float32)
    target = np.empty_like(source)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        np.copyto(target, source)
        np.copyto(source, target)


def child(impl: str, queries: int, gallery: int, repeats: int) -> None:
    from uit.retrieval.metrics import retrieval_metrics

    evaluate = retrieval_metrics if impl == "uit" else full_argsort_metrics
    similarity, query_pids, gallery_pids = make_problem(queries, gallery)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, result = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        result = evaluate(similarity, query_pids, gallery_pids)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"seconds": times, "peak_extra_mib": peak / 1024,
                      "matrix_mib": similarity.numel() * 4 / 2**20, "result": result}))  # fmt: skip


def measure(args: argparse.Namespace, loaded: bool) -> dict[str, dict]:
    """Both evaluators, each in its own process; with ``loaded``, beside the copy loop."""
    load = None
    if loaded:
        command = [sys.executable, __file__, "--load", str(args.load_seconds),
                   "--load-mib", str(args.load_mib)]  # fmt: skip
        load = subprocess.Popen(command)
    try:
        runs = {}
        for impl in ("argsort", "uit"):
            command = [sys.executable, __file__, "--child", impl, "--queries", str(args.queries),
                       "--gallery", str(args.gallery), "--repeats", str(args.repeats)]  # fmt: skip
            run = subprocess.run(command, check=True, capture_output=True, text=True)
            runs[impl] = json.loads(run.stdout)
        return runs
    finally:
        if load is not None:
            load.terminate()
            load.wait()


def report(title: str, runs: dict[str, dict]) -> None:
    base, ours = runs["argsort"], runs["uit"]
    matrix = base["matrix_mib"]
    print(title)
    print(f"{'evaluator':<22}{'min s':>8}{'median s':>10}{'max s':>8}{'peak extra MiB':>16}"
          f"{'peak incl. matrix':>19}")  # fmt: skip
    for name, run in (("full argsort (float32)", base), ("uit.retrieval_metrics", ours)):
        times, extra = run["seconds"], run["peak_extra_mib"]
        print(f"{name:<22}{min(times):>8.2f}{statistics.median(times):>10.2f}{max(times):>8.2f}"
              f"{extra:>16.0f}{(extra + matrix) / matrix:>18.2f}x")  # fmt: skip
    median = statistics.median(base["seconds"]) / statistics.median(ours["seconds"])
    low = min(base["seconds"]) / max(ours["seconds"])
    high = max(base["seconds"]) / min(ours["seconds"])
    print(f"speed-up {median:.2f}x (median over median; {low:.2f}x to {high:.2f}x min to max)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=19_848)
    parser.add_argument("--gallery", type=int, default=4_855)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=600, help="the load's time limit")
    parser.add_argument("--load-mib", type=int, default=512, help="size of the load's arrays")
    parser.add_argument("--child", choices=("uit", "argsort"))
    parser.add_argument("--load", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load is not None:
        copy_loop(args.load, args.load_mib)
        return
    if args.child:
        child(args.child, args.queries, args.gallery, args.repeats)
        return
    alone, loaded = measure(args, loaded=False), measure(args, loaded=True)
    matrix = alone["argsort"]["matrix_mib"]
    print(f"similarity {args.queries} x {args.gallery} float32 = {matrix:.0f} MiB, "
          f"{args.repeats} repeats; {machine()}")  # fmt: skip
    report("alone:", alone)
    report(f"beside a memory-copy loop (one process copying {args.load_mib} MiB arrays):", loaded)
    base, ours = alone["argsort"]["result"], alone["uit"]["result"]
    gap = max(abs(base[k] - ours[k]) for k in base)
    print(f"results agree (every |difference| < {AGREE:g}): {gap < AGREE}; largest {gap:.1e}")
    for key in base:
        print(f"  {key:>5}: argsort {base[key]:.6f}  uit {ours[key]:.6f}")


if __name__ == "__main__":
    main()
