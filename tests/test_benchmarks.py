"""The benchmark scripts run (on tiny sizes) and print their tables; timings are never asserted."""

from __future__ import annotations

import os
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
               "--queries", "3", "--index-sizes", "3000", "--index-queries", "50",
               "--centres", "30", "--api-gallery", "500", "--api-queries", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "cores, torch" in out and "threads" in out
    assert "float32 matmul + torch.topk" in out and "uit.retrieval.search.top_k" in out
    assert "same top 10 as float32: 3/3 queries" in out
    [index_row] = [line for line in out.splitlines() if line.startswith("     3,000")]
    # recall@10 of 50 queries (500 neighbours) on clustered points, where neighbours mean
    # something: the approximate index misses at most 5 of the exact scan's (1.000 measured)
    assert float(index_row.split()[-1]) >= 0.99
    assert "POST /search end to end" in out
    assert [line.split()[:4] for line in out.splitlines() if "->" in line] == [
        ["auto", "->", "flat", "500"],
        ["flat", "->", "flat", "500"],
    ]


# benchmarks/gpu_checks.sh, its shell logic on a CPU: `python3` and `nvidia-smi` on its PATH are
# small scripts that record how they were called and fail when asked to.

FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
if [ "$1" = - ]; then cat >> "$CALLS"; fi  # the script on stdin
if [ "$1" = benchmarks/paper_run.py ]; then mkdir -p "$3" && echo '{}' > "$3/paper_run.json"; fi
case "$*" in *"$FAIL_ON"*) exit 3;; esac
"""
FAKE_NVIDIA_SMI = "#!/bin/sh\necho 'name, memory.total [MiB], driver_version'\n"
GPU_STEPS = ["machine", "gpu tests", "data", "paper run", "train step", "loader"]


def run_gpu_checks(tmp_path: Path, fail_on: str) -> tuple[int, list[str], str]:
    """Run the script in ``tmp_path`` with a ``python3`` that exits 3 when its arguments hold
    ``fail_on``; its exit code, the lines of steps.txt and every call made."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, text in (("python3", FAKE_PYTHON), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"),
               "CALLS": str(calls), "FAIL_ON": fail_on}  # fmt: skip
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")], cwd=tmp_path,
                            env=environ, capture_output=True, text=True, timeout=60)  # fmt: skip
    steps = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    return result.returncode, steps, calls.read_text()


def test_gpu_checks_pass_when_every_step_passes_and_train_as_the_paper_does(
    tmp_path: Path,
) -> None:
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_checks.sh")], check=True)
    code, steps, calls = run_gpu_checks(tmp_path, fail_on="no call has this")
    assert code == 0
    assert steps == [f"{name}: exit 0" for name in GPU_STEPS] + ["all steps passed"]
    data = str(tmp_path / "data")
    [paper] = [line for line in calls.splitlines() if line.startswith("benchmarks/paper_run.py")]
    # the augmentation and the token masking, over captions the built-in parser parsed
    assert f"--parsed {data}/parsed-medium/cuhk-pedes" in paper
    for setting in ("augment.keep_attributes_p=0.2", "augment.mask_tokens=true",
                    "parse.backend=builtin"):  # fmt: skip
        assert f"--set {setting}" in paper
    assert f'parse_benchmark(f"{data}/prepared-medium/cuhk-pedes", f"{data}/parsed-medium' in calls
    assert 'ParseConfig(backend="builtin")' in calls
    assert (tmp_path / "out" / "paper_run.json").read_text() == "{}\n"


@pytest.mark.parametrize(
    ("fail_on", "step"),
    [("-m pytest -m gpu", "gpu tests"), ("benchmarks/paper_run.py", "paper run"),
     ("benchmarks/loader.py", "loader")],
)  # fmt: skip
def test_a_failing_gpu_check_fails_the_script_after_every_step_ran(
    tmp_path: Path, fail_on: str, step: str
) -> None:
    code, steps, calls = run_gpu_checks(tmp_path, fail_on=fail_on)
    assert code == 1
    assert steps[: len(GPU_STEPS)] == [
        f"{name}: exit {3 if name == step else 0}" for name in GPU_STEPS
    ]
    assert steps[len(GPU_STEPS) :] == [f"FAILED: {step} (exit 3)"]
    for script in ("benchmarks/paper_run.py", "benchmarks/train_step.py", "benchmarks/loader.py"):
        assert script in calls  # the steps after the failing one ran all the same
