"""The paper path, end to end on a CPU: `uit profile paper` on data in the real benchmarks'
formats (the synthetic `tiny` benchmark under data/real), ViT-B-16 at 384x128 with random
weights, one epoch capped to two steps, through `dvc repro` to metrics and the report.

It takes several minutes on 2 cores (three ViT-B-16 trainings, nine evaluations), so it runs
with `make paper-path` (UIT_PAPER_PATH=1) rather than in `make test`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.pipeline_repo import BIN, ROOT, make_repo, sh

BENCHMARKS = ("cuhk-pedes", "icfg-pedes", "rstpreid")


def test_paper_then_demo_profile_round_trips_the_committed_params(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    for name in ("paper", "demo"):
        sh(str(BIN / "uit"), "profile", name, "--params", str(params), "--profiles",
           str(ROOT / "profiles"), cwd=tmp_path)  # fmt: skip
        if name == "paper":
            paper = yaml.safe_load(params.read_text())
            assert paper["augment"]["mask_tokens"] and paper["train"]["random_instances"]
    assert params.read_text() == (ROOT / "params.yaml").read_text()


@pytest.mark.skipif(
    os.environ.get("UIT_PAPER_PATH") != "1", reason="the paper path runs with `make paper-path`"
)
@pytest.mark.timeout(3600)
def test_paper_profile_runs_through_dvc_repro_to_metrics_and_report(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    uit = str(BIN / "uit")
    sh(uit, "synth", "--root", "data/real", "--size", "tiny", cwd=repo)
    sh(uit, "profile", "paper", "--data-root", "data/real", cwd=repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["augment"]["mask_tokens"] and params["train"]["random_instances"]
    assert (params["model"]["name"], params["model"]["image_height"]) == ("ViT-B-16", 384)
    # Only what this machine cannot do changes: no download (random weights), a batch the tiny
    # benchmark's 24 training identities can fill, one short epoch.
    params["model"]["pretrained"] = ""
    params["train"].update({"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2,
                            "num_workers": 0, "eval_batch_size": 32})  # fmt: skip
    params["data"]["check_images"] = "exists"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", cwd=repo, timeout=1800)

    for name in BENCHMARKS:
        state = json.loads((repo / f"runs/{name}/checkpoints/best/state.json").read_text())
        model = state["config"]["model"]
        assert (model["name"], model["image_height"], model["image_width"]) == ("ViT-B-16", 384,
                                                                                 128)  # fmt: skip
        assert state["architecture"] == {"quick_gelu": False}  # random init: open_clip's GELU
        assert state["step"] == 2
        metrics = json.loads((repo / f"metrics/{name}.json").read_text())
        assert set(metrics) == set(BENCHMARKS)
        assert 0 <= metrics[name]["t2i"]["R1"] <= 100
    assert (repo / "reports/pipeline/report.html").stat().st_size > 10_000
