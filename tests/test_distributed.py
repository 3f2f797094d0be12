"""Training on two processes (torchrun, gloo on the CPU) is training on one, on the global batch.

Every run here trains uit-tiny at 64x32 for 3 epochs of one step each (so curves.csv holds the
losses step by step) from the same seed: the two-process runs must end with the weights of the
one-process run, whichever way they were started or resumed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from uit.core.config import load_config
from uit.core.errors import TrainingError
from uit.raw.prepare import prepare_benchmark
from uit.training.benchmark import train_benchmark
from uit.training.distributed import (
    World,
    launch,
    launched_world,
    should_launch,
    torchrun_command,
)
from uit.training.train import fit

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))  # installed beside the interpreter
TOLERANCE = 1e-5
PARAMS = {
    "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32, "context_length": 32},
    "tir": {"decoder_layers": 1},
    "augment": {"keep_attributes_p": 0.0},
    "optim": {"lr": 1e-3},  # Adam's steps far above the tolerance: a wrong gradient shows
    "train": {"epochs": 3, "max_steps_per_epoch": 1, "batch_size": 16, "num_workers": 0,
              "warmup_epochs": 1.0, "precision": "fp32", "device": "cpu", "selection": "last",
              "eval_every": 3, "eval_batch_size": 64},
}  # fmt: skip


def write_params(path: Path, nproc_per_node: int = 1) -> Path:
    params = json.loads(json.dumps(PARAMS))
    params["train"]["nproc_per_node"] = nproc_per_node
    path.write_text(yaml.safe_dump(params))
    return path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def setup(tiny_synth, tmp_path_factory) -> dict[str, Path]:
    """The prepared tiny CUHK-PEDES, params files for one and two processes, and the reference:
    the one-process run."""
    root, _ = tiny_synth
    base = tmp_path_factory.mktemp("ddp")
    prepare_benchmark("cuhk-pedes", root, base / "prepared")
    (base / "parsed").mkdir()  # unused: no augmentation, no token masking
    paths = {"base": base, "prepared": base / "prepared", "parsed": base / "parsed",
             "params": write_params(base / "params.yaml"),
             "params2": write_params(base / "params2.yaml", nproc_per_node=2),
             "single": base / "single"}  # fmt: skip
    train_benchmark(load_config(paths["params"]), paths["prepared"], paths["single"])
    return paths


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints/last/weights.safetensors"))


def losses(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "curves.csv").open() as file:
        rows = list(csv.DictReader(file))
    return [{k: float(v) for k, v in row.items() if k not in ("R1", "mAP", "lr")} for row in rows]


def state(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "checkpoints/last/state.json").read_text())


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same weights (to the tolerance) and the same losses at every step."""
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys()
    worst = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert worst < TOLERANCE, f"largest weight difference {worst:.2e}"
    for step, (mine, ref) in enumerate(zip(losses(run_dir), losses(reference), strict=True)):
        assert mine.keys() == ref.keys()
        for name in ref:
            assert mine[name] == pytest.approx(ref[name], rel=1e-5, abs=1e-6), (step, name)


def test_the_train_stage_on_two_processes_resumes_a_one_process_run_as_one_process(
    setup,
) -> None:
    """``train.nproc_per_node: 2``: the DVC stage starts torchrun itself (what ``dvc repro`` and
    ``uit run`` do) and resumes the one-process checkpoint of epoch 1; steps 2 and 3 split the
    global batch of 16 into two slices of 8 and gather the features; rank 0 evaluates."""
    out = setup["base"] / "one-then-two"
    fit(load_config(setup["params"]), setup["prepared"], out, stop_after_epochs=1)
    assert state(out)["world_size"] == 1
    after_one, final = weights(out), weights(setup["single"])
    moved = max((final[k] - after_one[k]).abs().max().item() for k in final)
    assert moved > 100 * TOLERANCE  # else the equivalence would hold for any gradient
    run([sys.executable, "-m", "stages.train", "--prepared", str(setup["prepared"]),
         "--parsed", str(setup["parsed"]), "--out", str(out),
         "--params", str(setup["params2"])], cwd=ROOT)  # fmt: skip
    assert state(out)["world_size"] == 2 and state(out)["epoch"] == 2
    assert json.loads((out / "selection.json").read_text())["best_epoch"] == 3
    assert_same_run(out, setup["single"])


def test_uit_train_with_nproc_per_node_2_trains_as_one_process(setup) -> None:
    """The README's front door: ``uit train --set train.nproc_per_node=2`` starts torchrun itself
    and, from scratch, ends with the one-process run's weights and losses."""
    out = setup["base"] / "cli-two"
    run([str(Path(sys.executable).with_name("uit")), "train", "--benchmark", "cuhk-pedes",
         "--params", str(setup["params"]), "--set", "train.nproc_per_node=2",
         "--prepared", str(setup["prepared"]), "--parsed", str(setup["parsed"]),
         "--out", str(out)], cwd=ROOT)  # fmt: skip
    assert state(out)["world_size"] == 2
    assert_same_run(out, setup["single"])


def test_two_processes_write_each_checkpoint_once_and_one_process_resumes_them(setup) -> None:
    """A fresh two-process run (killed after epoch 1) from the same seed: rank 1 writes
    nothing, and one process finishes the run as if it had trained alone."""
    out = setup["base"] / "two-then-one"
    run([TORCHRUN, "--standalone", "--nproc-per-node", "2", str(ROOT / "tests/_ddp_worker.py"),
         str(setup["prepared"]), str(out), str(setup["params"])], cwd=ROOT)  # fmt: skip
    written = {rank: (out / f"writes-{rank}.txt").read_text().split() for rank in (0, 1)}
    assert written[1] == []
    assert sorted(Path(p).name for p in written[0]) == ["best", "last"]  # epoch 1, once each
    assert state(out)["world_size"] == 2 and state(out)["epoch"] == 0
    fit(load_config(setup["params"]), setup["prepared"], out)
    assert state(out)["world_size"] == 1
    assert_same_run(out, setup["single"])


def test_a_failed_rank_ends_the_job_with_one_line_not_a_hang(setup, monkeypatch) -> None:
    """Rank 1 dies while rank 0 waits for it in DDP's first collective: torchrun stops rank 0,
    and the launch (what ``uit train`` and the train stage do) ends in one ``TrainingError``."""
    monkeypatch.chdir(ROOT)  # ``-m tests._ddp_worker``
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    out = setup["base"] / "crashed"
    started = time.monotonic()
    with pytest.raises(TrainingError, match=r"a training process of the 2 that torchrun started "
                       r"failed \(exit code 1\); torchrun stopped the others"):  # fmt: skip
        launch("tests._ddp_worker", [str(setup["prepared"]), str(out), str(setup["params"]),
                                     "crash"], 2)  # fmt: skip
    assert time.monotonic() - started < 120
    assert not (out / "checkpoints").exists()  # rank 0 was stopped before it finished an epoch


def test_a_run_is_launched_only_outside_torchrun() -> None:
    assert should_launch(2, env={}) and not should_launch(1, env={})
    assert not should_launch(2, env={"WORLD_SIZE": "2", "RANK": "1"})
    assert launched_world({}) == World()
    assert launched_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 1, 4)
    command = torchrun_command("stages.train", ["--out", "o"], 3)
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                           "-m", "stages.train", "--out", "o"]  # fmt: skip
