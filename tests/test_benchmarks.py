"""The benchmark scripts run (on tiny sizes) and print their tables; timings are never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_metrics_benchmark_prints_both_tables_the_machine_and_agreement() -> None:
    command = [sys.executable, "benchmarks/metrics.py", "--queries", "300", "--gallery", "120",
               "--repeats", "2", "--load-mib", "8", "--load-seconds", "120"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "cores, torch" in out and "threads" in out
    assert "alone:" in out and "beside a memory-copy loop" in out
    assert out.count("full argsort (float32)") == 2 and out.count("uit.retrieval_metrics") == 2
    assert out.count("speed-up") == 2 and "min to max" in out
    assert "results agree (every |difference| < 0.0001): True" in out


def test_search_benchmark_prints_a_table_the_machine_and_agreement() -> None:
    command = [sys.executable, "benchmarks/search.py", "--gallery", "2000", "--dim", "64",
               "--queries", "3", "--index-sizes", "3000", "--index-queries", "4",
               "--api-gallery", "500", "--api-queries", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "cores, torch" in out and "threads" in out
    assert "float32 matmul + torch.topk" in out and "uit.retrieval.search.top_k" in out
    assert "same top 10 as float32: 3/3 queries" in out
    [index_row] = [line for line in out.splitlines() if line.startswith("     3,000")]
    assert float(index_row.split()[-1]) >= 0.5  # recall@10 of 4 queries
    assert "POST /search end to end" in out
    assert [line.split()[:4] for line in out.splitlines() if "->" in line] == [
        ["auto", "->", "flat", "500"],
        ["flat", "->", "flat", "500"],
    ]
