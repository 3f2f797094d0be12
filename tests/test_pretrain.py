"""Pretraining and what the evaluate stage measures of it: the corpus (new identities, generic
captions, a prepared folder), ``uit pretrain`` writing open_clip weights that fine-tuning loads
as they were trained, the zero-shot metrics of those weights, and TIR's colour error against
its two baselines. Real open_clip models (uit-tiny), real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from uit.app.cli import app
from uit.core.config import PretrainConfig, SynthConfig, parse_config
from uit.core.errors import ConfigError
from uit.data.prepared import read_manifests
from uit.model.build import build_model, build_tokenizer, load_encoder, register_configs
from uit.model.objective import Objective, restoration_errors
from uit.model.tir import GRAYSCALE_WEIGHTS, patchify
from uit.retrieval.evaluate import EvalOptions, evaluate, in_domain_extras
from uit.synth.corpus import benchmark_identities, draw_corpus
from uit.training.benchmark import train_benchmark

SYNTH = SynthConfig(size="tiny", seed=7)  # the conftest's tiny benchmarks
MODEL = {"name": "uit-tiny", "image_height": 64, "image_width": 32, "context_length": 32}
TINY = ["--set", "pretrain.identities=48", "--set", "pretrain.heldout=8", "--set",
        "pretrain.epochs=2", "--set", "pretrain.batch_size=16", "--set", "synth.size=tiny",
        "--set", "synth.seed=7", "--set", "train.precision=fp32",
        *(a for k, v in MODEL.items() for a in ("--set", f"model.{k}={v}"))]  # fmt: skip


def test_the_corpus_is_new_identities_in_generic_captions_as_a_prepared_folder(
    tmp_path: Path,
) -> None:
    cfg = PretrainConfig(identities=60, heldout=10, seed=1)
    counts = draw_corpus(tmp_path / "corpus", cfg, SYNTH)
    manifests = read_manifests(tmp_path / "corpus")  # what training reads
    assert counts["train"]["identities"] + counts["val"]["identities"] == 60
    assert counts["val"]["identities"] >= 10 and manifests.has_split("val")
    sidecars = json.loads((tmp_path / "corpus" / "stats.json").read_text())
    assert sidecars["benchmark"] == "pretrain-corpus"
    # every caption in the web alt-text style, none like a benchmark annotator's sentences
    texts = manifests.captions["text"].to_list()
    assert all(t == t.lower() and not t.endswith(".") and len(t.split()) < 40 for t in texts)
    assert len(texts) > 60  # two captions per image, unless both came out the same
    # no identity of any benchmark of this seed and size; the same draw for the same seed
    from uit.synth.corpus import plan_corpus

    keys = {image.identity.key() for image in plan_corpus(cfg, SYNTH)}
    assert not keys & benchmark_identities(SYNTH)
    draw_corpus(tmp_path / "again", cfg, SYNTH)
    again = read_manifests(tmp_path / "again")
    assert again.captions.equals(manifests.captions) and again.images.equals(manifests.images)
    draw_corpus(tmp_path / "again", cfg, SYNTH)  # an earlier corpus is replaced whole
    # a folder of anything else is refused and left as it was
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="did not write"):
        draw_corpus(tmp_path / "mine", cfg, SYNTH)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``uit pretrain`` on a tiny corpus, as a user runs it."""
    base = tmp_path_factory.mktemp("pretrain")
    params = base / "params.yaml"
    params.write_text("{}\n")
    out, corpus = base / "out", base / "corpus"
    result = CliRunner().invoke(app, ["pretrain", "--params", str(params), "--corpus",
                                      str(corpus), "--out", str(out), *TINY])  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"out": out, "corpus": corpus, "output": result.output, "params": params}


def test_uit_pretrain_writes_open_clip_weights_that_fine_tuning_loads_as_trained(
    pretrained: dict[str, Any],
) -> None:
    out = pretrained["out"]
    assert "held-out corpus pairs" in pretrained["output"]
    assert "model.pretrained=" in pretrained["output"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pretrained"] and set(metrics["heldout"]["t2i"]) >= {"R1", "mAP"}
    # open_clip itself builds the architecture of model.json and loads the weights strictly
    register_configs()
    architecture = json.loads((out / "model.json").read_text())
    assert architecture["vision_cfg"]["image_size"] == [64, 32]
    clip = open_clip.model.CLIP(**architecture)
    open_clip.load_checkpoint(clip, str(out / "model.safetensors"), strict=True)
    # model.pretrained = that file gives the very encoder of the pretraining's best checkpoint
    weights = str(out / "model.safetensors")
    from_file = build_model(parse_config({"model": {**MODEL, "pretrained": weights}}).model)
    trained, _ = load_encoder(out / "fit" / "checkpoints" / "best")
    tokens = build_tokenizer(parse_config({"model": MODEL}).model)(["a man in a red coat"])
    images = torch.randn(2, 3, 64, 32)
    for encoder in (from_file, trained):
        encoder.eval()
    with torch.no_grad():
        assert torch.equal(from_file.encode_text(tokens), trained.encode_text(tokens))
        assert torch.equal(from_file.encode_image(images), trained.encode_image(images))
    assert set(load_file(out / "model.safetensors")) == set(clip.state_dict())


def test_zero_shot_metrics_are_the_pretrained_weights_scored_on_the_same_split(
    pretrained: dict[str, Any], trained: dict[str, Path], tmp_path: Path
) -> None:
    """The evaluate stage's zero-shot numbers (the weights file, built as fine-tuning builds
    it) equal the pretraining's own best checkpoint scored by ``evaluate``: two paths."""
    weights = str(pretrained["out"] / "model.safetensors")
    cfg = parse_config({
        "model": {**MODEL, "pretrained": weights},
        "train": {"epochs": 1, "batch_size": 16, "num_workers": 0, "eval_batch_size": 64,
                  "precision": "fp32", "max_steps_per_epoch": 2},
        "tir": {"decoder_layers": 1}, "augment": {"keep_attributes_p": 0.0},
    })  # fmt: skip
    train_benchmark(cfg, trained["prepared"], tmp_path / "run")
    best = tmp_path / "run" / "checkpoints" / "best"
    extras = in_domain_extras(best, trained["prepared"], device="cpu")
    assert extras["zero_shot"]["from"] == weights
    encoder, model_cfg = load_encoder(pretrained["out"] / "fit" / "checkpoints" / "best")
    test = read_manifests(trained["prepared"]).split("test")
    direct = evaluate(encoder, test, build_tokenizer(model_cfg), EvalOptions())
    assert extras["zero_shot"]["t2i"] == pytest.approx(direct.metrics["t2i"], abs=1e-6)
    scores = extras["restoration"]
    assert scores["patches"] > 0 and all(scores[k] >= 0 for k in ("tir", "grayscale"))
    # a study of many runs from the same weights leaves the zero-shot scoring out, nothing else
    without = in_domain_extras(best, trained["prepared"], device="cpu", zero_shot=False)
    assert "zero_shot" not in without and without["restoration"] == scores
    # a model trained from random weights has nothing to compare before fine-tuning
    from_scratch = in_domain_extras(trained["best"], trained["prepared"], device="cpu")
    assert "zero_shot" not in from_scratch and "restoration" in from_scratch


def test_restoration_errors_score_the_truth_zero_and_the_baselines_as_defined() -> None:
    torch.manual_seed(0)
    cfg = parse_config({"model": MODEL, "tir": {"decoder_layers": 1}})
    encoder = build_model(cfg.model)
    objective = Objective(encoder, 4, cfg.loss, cfg.tir).eval()
    images = torch.randn(3, 3, 64, 32)
    text = build_tokenizer(cfg.model)(["a man", "a woman in red", "a girl"])

    def errors() -> dict[str, float]:
        generator = torch.Generator().manual_seed(5)
        sums = restoration_errors(objective, images, text, generator)
        return {k: float(v / sums["patches"]) for k, v in sums.items() if k != "patches"}

    found = errors()
    mean = torch.tensor(encoder.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.image_std).view(1, 3, 1, 1)
    truth = (images * std + mean).clamp(0, 1) * 255
    gray = (truth * torch.tensor(GRAYSCALE_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    generator = torch.Generator().manual_seed(5)
    noise = objective.draw_mask_noise(3, generator)
    assert noise is not None
    kept = max(1, int(noise.shape[1] * (1 - cfg.tir.mask_ratio)))  # as random_masking keeps
    masked = torch.zeros_like(noise)
    masked.scatter_(1, noise.argsort(dim=1)[:, kept:], 1.0)  # the largest noise is dropped
    per_patch = patchify((gray - truth).abs(), encoder.patch_size).mean(-1)
    assert found["grayscale"] == pytest.approx(float((per_patch * masked).sum() / masked.sum()),
                                               rel=1e-5)  # fmt: skip
    # a decoder that returns the true colours scores 0
    target = patchify(images, encoder.patch_size)
    assert objective.tir_decoder is not None
    objective.tir_decoder.forward = lambda *_: target  # type: ignore[method-assign]
    perfect = errors()
    assert perfect["tir"] == pytest.approx(0.0, abs=1e-3)
    assert perfect["grayscale"] == found["grayscale"] and perfect["mean_colour"] > 0
