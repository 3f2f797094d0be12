"""The DVC stage modules run as DVC runs them: `python -m stages.X` with a params file."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_stage

ROOT = Path(__file__).resolve().parents[1]


def test_synth_then_prepare_stages(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "synth:\n  size: tiny\n  seed: 5\n"
        "data:\n  root: raw\n  benchmarks: [rstpreid]\n  check_images: exists\n"
    )
    synth = run_stage("stages.synth", "--out", "raw", cwd=tmp_path)
    assert synth.returncode == 0, synth.stderr
    sidecar = json.loads((tmp_path / "raw" / "RSTPReid" / "attributes.json").read_text())
    assert sidecar["generator"] == {"seed": 5, "size": "tiny", "benchmark": "rstpreid"}
    prepare = run_stage(
        "stages.prepare", "--benchmark", "rstpreid", "--root", "raw", "--out", "out", cwd=tmp_path
    )
    assert prepare.returncode == 0, prepare.stderr
    assert (tmp_path / "out" / "images.parquet").is_file()


def test_stage_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("synth:\n  colour: blue\n")
    result = run_stage("stages.synth", "--out", "raw", cwd=tmp_path)
    assert result.returncode == 1
    assert "synth.colour: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "params.yaml").write_text("data: {}\n")
    result = run_stage(
        "stages.prepare",
        "--benchmark",
        "rstpreid",
        "--root",
        "nowhere",
        "--out",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "RSTPReid not found" in result.stderr
    assert not (tmp_path / "out").exists()
