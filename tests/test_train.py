"""The fit loop: schedule, sampler, data, NaN stop, checkpoints and exact resume, a CPU run."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uit.core.config import Config, TrainConfig, parse_config
from uit.core.errors import TrainingError
from uit.data.dataset import TrainDataset, hold_out_identities
from uit.data.prepared import read_manifests
from uit.data.transforms import build_train_transform
from uit.model import build_tokenizer
from uit.raw.prepare import prepare_benchmark
from uit.training.sampler import IdentityBatchSampler
from uit.training.train import choose_selection, clear_run, fit, is_interrupted, lr_factor


def tiny_config(**sections) -> Config:
    raw = {
        "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32, "context_length": 32},
        "train": {"epochs": 3, "batch_size": 16, "num_workers": 0, "warmup_epochs": 1.0,
                  "eval_batch_size": 64},
        "optim": {"lr": 1e-4},
        "tir": {"decoder_layers": 1},
    }  # fmt: skip
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw)


@pytest.fixture(scope="module")
def prepared(tiny_synth, tmp_path_factory) -> dict[str, Path]:
    root, _ = tiny_synth
    out = tmp_path_factory.mktemp("prepared")
    for name in ("cuhk-pedes", "icfg-pedes"):
        prepare_benchmark(name, root, out / name)
    return {name: out / name for name in ("cuhk-pedes", "icfg-pedes")}


def test_lr_schedule_is_warmup_then_cosine() -> None:
    cfg = TrainConfig(epochs=60, warmup_epochs=5, warmup_factor=0.1)
    assert lr_factor(0.0, cfg) == pytest.approx(0.1)
    assert lr_factor(2.5, cfg) == pytest.approx(0.55)
    assert lr_factor(5.0, cfg) == pytest.approx(1.0)
    assert lr_factor(5.0 + 55 / 2, cfg) == pytest.approx(0.5)
    assert lr_factor(60.0, cfg) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(e / 10, cfg) for e in range(601)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in itertools.pairwise(values[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(values[peak:]))
    no_warmup = TrainConfig(epochs=10, warmup_epochs=0)
    assert lr_factor(5.0, no_warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_identity_sampler_batches() -> None:
    labels = [i // 3 for i in range(60)]  # 20 identities, 3 samples each
    sampler = IdentityBatchSampler(labels, batch_size=8, instances=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 8
        ids = [labels[i] for i in batch]
        assert all(ids.count(label) == 2 for label in set(ids)) and len(set(ids)) == 4
    assert len({i for b in batches for i in b}) == sum(map(len, batches))  # no repeats
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == batches  # ...deterministic for (seed, epoch)


def test_identity_sampler_shares_batches_between_processes() -> None:
    labels = [i // 4 for i in range(64)]
    whole = list(IdentityBatchSampler(labels, 8, 2, seed=3))
    parts = [list(IdentityBatchSampler(labels, 8, 2, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*parts, strict=True)] == whole
    with pytest.raises(ValueError, match="multiple of"):
        IdentityBatchSampler(labels, 6, 2, world_size=2)
    with pytest.raises(ValueError, match="lower the batch size"):
        IdentityBatchSampler(labels, 128, 2)


def test_train_dataset_relabels_and_augments_deterministically(prepared) -> None:
    cfg = tiny_config()
    manifests = read_manifests(prepared["cuhk-pedes"])
    train = manifests.split("train")
    transform = build_train_transform((64, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    words = {cid: ["red", "coat"] for cid in train.captions["caption_id"].to_list()}
    dataset = TrainDataset(
        train, transform, build_tokenizer(cfg.model), seed=4,
        attribute_words=words, augment=lambda text, w, rng: " ".join(w),
    )  # fmt: skip
    assert len(dataset) == train.captions.height
    assert sorted(set(dataset.labels)) == list(range(dataset.num_classes))
    first = dataset[0]
    assert first["images"].shape == (3, 64, 32) and first["text"].shape == (32,)
    assert torch.equal(dataset[0]["images"], first["images"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["images"], first["images"])
    assert dataset.caption(0) == "red coat"


def test_selection_protocols(prepared) -> None:
    cuhk = read_manifests(prepared["cuhk-pedes"])
    icfg = read_manifests(prepared["icfg-pedes"])
    assert choose_selection(cuhk, TrainConfig())[1].protocol == "val"
    assert choose_selection(cuhk, TrainConfig(selection="test"))[1].optimistic
    train, selection = choose_selection(icfg, TrainConfig(holdout_fraction=0.25))
    assert selection.protocol == "heldout" and selection.split is not None
    held = set(selection.split.images["pid"].to_list())
    assert held and not held & set(train.images["pid"].to_list())
    again = hold_out_identities(icfg.split("train"), 0.25, 0)[1]
    assert set(again.images["pid"].to_list()) == held


def test_cpu_training_writes_checkpoints_curves_and_selection(prepared, tmp_path: Path) -> None:
    result = fit(tiny_config(train={"epochs": 2}), prepared["cuhk-pedes"], tmp_path)
    assert result.epochs_run == 2 and len(result.history) == 2
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0]
    for column in ("lr", "sdm", "id", "cmt", "tir", "loss", "R1", "mAP"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["protocol"] == "val" and not selection["optimistic"]
    scores = [(float(r["R1"]), float(r["mAP"])) for r in rows]
    best = scores.index(max(scores))  # the first epoch with the highest (R1, mAP)
    assert selection["best_epoch"] == best + 1
    assert (selection["R1"], selection["mAP"]) == pytest.approx(scores[best])
    best_state = json.loads((tmp_path / "checkpoints/best/state.json").read_text())
    assert best_state["epoch"] == best  # 0-based: best/ holds that epoch's weights
    for kind in ("last", "best"):
        state = json.loads((tmp_path / "checkpoints" / kind / "state.json").read_text())
        assert state["config"]["model"]["name"] == "uit-tiny"
        weights = load_file(str(tmp_path / "checkpoints" / kind / "weights.safetensors"))
        assert "encoder.clip.visual.conv1.weight" in weights
    assert (tmp_path / "checkpoints" / "last" / "optimizer.safetensors").is_file()


def test_resumed_run_ends_with_the_same_weights(prepared, tmp_path: Path) -> None:
    cfg = tiny_config()
    fit(cfg, prepared["cuhk-pedes"], tmp_path / "straight")
    fit(cfg, prepared["cuhk-pedes"], tmp_path / "resumed", stop_after_epochs=1)  # "killed"
    assert json.loads((tmp_path / "resumed/checkpoints/last/state.json").read_text())["epoch"] == 0
    assert is_interrupted(tmp_path / "resumed", cfg)  # what the train stage resumes
    assert not is_interrupted(tmp_path / "resumed", tiny_config(loss={"cmt": 0.0}))
    assert not is_interrupted(tmp_path / "straight", cfg)  # finished: the stage starts afresh
    result = fit(cfg, prepared["cuhk-pedes"], tmp_path / "resumed")
    assert result.epochs_run == 3
    straight = load_file(str(tmp_path / "straight/checkpoints/last/weights.safetensors"))
    resumed = load_file(str(tmp_path / "resumed/checkpoints/last/weights.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    curves = (tmp_path / "straight/curves.csv").read_text()
    assert curves == (tmp_path / "resumed/curves.csv").read_text()


def test_resume_refuses_a_run_with_another_config(prepared, tmp_path: Path) -> None:
    fit(tiny_config(train={"epochs": 1}), prepared["cuhk-pedes"], tmp_path)
    with pytest.raises(TrainingError, match=r"another configuration .*loss"):
        fit(tiny_config(train={"epochs": 1}, loss={"cmt": 0.0}), prepared["cuhk-pedes"], tmp_path)


def test_clear_run_removes_what_fit_wrote_and_nothing_else(prepared, tmp_path: Path) -> None:
    fit(tiny_config(train={"epochs": 1}), prepared["cuhk-pedes"], tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not is_interrupted(tmp_path, tiny_config(train={"epochs": 1}))


def test_a_nan_loss_stops_training_naming_the_term_and_step(prepared, tmp_path: Path) -> None:
    cfg = tiny_config(optim={"lr": 1e30})  # the first update sends the weights to infinity
    with pytest.raises(
        TrainingError, match=r"loss term '\w+' is (nan|inf|-inf) at step 1 \(epoch 1\)"
    ):
        fit(cfg, prepared["cuhk-pedes"], tmp_path)
