"""The README's first steps, run as a new user runs them: the installed `uit` console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_repo import TINY, env, make_repo, sh

UIT = str(Path(sys.executable).with_name("uit"))  # installed beside the interpreter by pip


def test_synth_prepare_stats_from_the_readme(tmp_path: Path) -> None:
    def uit(*args: str) -> str:
        result = subprocess.run([UIT, *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    uit("synth", "--root", "data/raw", "--size", "tiny")
    for name in ("cuhk-pedes", "icfg-pedes", "rstpreid"):
        uit("data", "prepare", "-b", name, "--root", "data/raw", "--out", f"data/prepared/{name}")
    table = uit("data", "stats", "data/prepared/rstpreid")
    assert "RSTPReid" in table and "train" in table
    stats = json.loads(uit("data", "stats", "data/prepared/icfg-pedes", "--json"))
    assert set(stats["splits"]) == {"train", "test"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_uit_run_an_experiment_and_the_report_as_make_demo_runs_them(tmp_path: Path) -> None:
    """What `make demo` runs, to success: `uit run` on a one-benchmark tiny project, then an
    experiment from the command line, then `uit report` with the experiment in it; each command
    checked by the files it writes, and the experiment by the workspace it leaves alone."""
    model = {**TINY["model"], "pretrained": ""}  # pretraining is tested in test_pipeline.py
    repo = make_repo(tmp_path / "repo", params={"data": {"benchmarks": ["rstpreid"]},
                                                "model": model})  # fmt: skip
    environ = {**env(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "400",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}  # fmt: skip
    environ.pop("PREFECT_API_URL", None)

    def uit(*args: str) -> str:
        result = subprocess.run([UIT, *args], cwd=repo, env=environ, capture_output=True,
                                text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return result.stdout

    out = uit("run")
    assert "Pipeline done in" in out and "reports/pipeline/report.html" in out
    metrics = json.loads((repo / "metrics" / "rstpreid.json").read_text())
    assert 0 <= metrics["rstpreid"]["t2i"]["R1"] <= 100
    assert (repo / "runs/rstpreid/checkpoints/best/weights.safetensors").is_file()
    assert (repo / "dvc.lock").is_file()
    report = (repo / "reports/pipeline/report.md").read_text()
    assert "rstpreid" in report.lower()
    status = sh("dvc", "status", cwd=repo).stdout
    assert "changed" not in status, status  # the workspace is what dvc.lock records
    before = {p: (repo / p).read_bytes() for p in ("params.yaml", "dvc.lock",
                                                   "metrics/rstpreid.json")}  # fmt: skip

    out = uit("run", "--set", "loss.cmt=0", "--name", "no-cmt")
    assert "Experiment no-cmt ran in DVC's temporary workspace" in out
    assert (repo / "reports/experiments/no-cmt/report.html").is_file()
    assert {p: (repo / p).read_bytes() for p in before} == before
    assert "no-cmt" in sh("dvc", "exp", "list", cwd=repo).stdout

    out = uit("report")
    html = (repo / "reports/report.html").read_text()
    markdown = (repo / "reports/report.md").read_text()
    assert "wrote" in out and "no-cmt" in html and "no-cmt" in markdown
