"""The benchmark scripts run (on tiny sizes) and print their tables; timings are never asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_benchmark_prints_a_table_and_agreement() -> None:
    command = [
        sys.executable,
        "benchmarks/metrics.py",
        "--queries",
        "300",
        "--gallery",
        "120",
        "--repeats",
        "1",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "full argsort" in result.stdout
    assert "uit.retrieval_metrics" in result.stdout
    assert "results agree (every |difference| < 1e-9): True" in result.stdout


def test_search_benchmark_prints_a_table_and_agreement() -> None:
    command = [sys.executable, "benchmarks/search.py", "--gallery", "2000", "--dim", "64",
               "--queries", "3", "--naive-queries", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "naive loop" in result.stdout and "uit.search.top_k" in result.stdout
    assert "same top 10: True" in result.stdout
