"""Train/reload invariants: every path that rebuilds a trained model scores exactly what training
recorded, for GELU and for QuickGELU (OpenAI's activation, picked by a pretrained tag).

A model trained from a tag whose weights need QuickGELU must be rebuilt with QuickGELU by
`uit evaluate`, `uit export`, `uit search` and the report, or every number after training
describes another network.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import polars as pl
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from typer.testing import CliRunner

from uit.app.cli import app
from uit.core.config import parse_config
from uit.data.prepared import read_manifests
from uit.model.build import build_tokenizer
from uit.model.checkpoint import read_state
from uit.model.export import export_encoder
from uit.model.objective import load_objective
from uit.raw.prepare import prepare_benchmark
from uit.retrieval.evaluate import EvalOptions, evaluate
from uit.training.benchmark import train_benchmark

TAG = "openai_like"  # a pretrained tag of uit-tiny whose weights need QuickGELU


@pytest.fixture(scope="module")
def prepared(tiny_synth, tmp_path_factory) -> Path:
    root, _ = tiny_synth
    out = tmp_path_factory.mktemp("prepared") / "cuhk-pedes"
    prepare_benchmark("cuhk-pedes", root.resolve(), out)
    return out


@pytest.fixture
def quick_gelu_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register TAG for uit-tiny, as open_clip registers `openai` for ViT-B-16 (quick_gelu:
    true), with its weights already in the download cache (no network)."""
    from uit.model.build import register_configs

    register_configs()
    cache = tmp_path / "clip-cache"
    cache.mkdir()
    clip = open_clip.create_model("uit-tiny", force_quick_gelu=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(cache / "uit-tiny-openai-like.safetensors"))  # fmt: skip
    url = "https://weights.invalid/uit-tiny-openai-like.safetensors"
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    entry = {"url": url, "hf_hub": "", "quick_gelu": True, "mean": mean, "std": std}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "uit-tiny", {TAG: entry})
    return cache


def _config(tmp_path: Path, model: dict[str, object], precision: str = "fp32"):
    return parse_config({
        "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32,
                  "context_length": 32, **model},
        "train": {"epochs": 1, "batch_size": 16, "num_workers": 0, "warmup_epochs": 0.5,
                  "eval_batch_size": 64, "precision": precision},
        "optim": {"lr": 1e-4},
        "tir": {"decoder_layers": 1},
        "augment": {"keep_attributes_p": 0.0},
    })  # fmt: skip


def _uses_quick_gelu(encoder) -> bool:
    kinds = {type(block.mlp.gelu) for block in encoder.clip.transformer.resblocks}
    kinds |= {type(block.mlp.gelu) for block in encoder.clip.visual.transformer.resblocks}
    assert len(kinds) == 1, kinds
    return kinds == {QuickGELU}


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "precision"),
                         [("gelu", "fp32"), ("quick_gelu", "fp32"), ("gelu", "bf16")])  # fmt: skip
def test_every_reload_scores_what_training_recorded(
    activation: str, precision: str, prepared: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """bf16 (autocast on the CPU here, as on a GPU) checks that evaluation runs in the
    checkpoint's own precision, as its selection score was computed."""
    if activation == "quick_gelu":
        cache = request.getfixturevalue("quick_gelu_tag")
        model = {"pretrained": TAG, "cache_dir": str(cache)}
    else:
        model = {}
    cfg = _config(tmp_path, model, precision)
    run = tmp_path / "run"
    train_benchmark(cfg, prepared, run)
    best = run / "checkpoints" / "best"
    recorded = json.loads((run / "selection.json").read_text())
    assert recorded["protocol"] == "val" and recorded["best_epoch"] == 1
    assert read_state(best)["architecture"] == {"quick_gelu": activation == "quick_gelu"}

    def agrees(metrics: dict[str, float]) -> None:
        for key in ("R1", "mAP"):
            assert metrics[key] == pytest.approx(recorded[key], abs=1e-6), key

    # uit evaluate on the selection split, from the training checkpoint and from its export
    _cli("evaluate", str(best), str(prepared), "--out", str(tmp_path / "eval"), "--split", "val")
    agrees(json.loads((tmp_path / "eval" / "metrics.json").read_text())["t2i"])
    export = tmp_path / "export"
    _cli("export", str(best), str(export))
    _cli("evaluate", str(export), str(prepared), "--out", str(tmp_path / "eval-export"),
         "--split", "val")  # fmt: skip
    agrees(json.loads((tmp_path / "eval-export" / "metrics.json").read_text())["t2i"])

    # the report's model (encoder and TIR heads) is the trained one
    objective = load_objective(best)
    assert _uses_quick_gelu(objective.encoder) == (activation == "quick_gelu")
    split = read_manifests(prepared).split("val")
    tokenizer = build_tokenizer(cfg.model)
    dtype = torch.bfloat16 if precision == "bf16" else None
    agrees(evaluate(objective.encoder, split, tokenizer, EvalOptions(dtype=dtype)).metrics["t2i"])

    # uit search ranks the test gallery as uit evaluate does, for a test caption
    _cli("evaluate", str(export), str(prepared), "--out", str(tmp_path / "eval-test"))
    top = pl.read_parquet(tmp_path / "eval-test" / "top_k.parquet").row(0, named=True)
    found = json.loads(_cli("search", str(export), top["text"], "--gallery", str(prepared),
                            "--json", "--no-cache", "--top-k", "10"))  # fmt: skip
    test = read_manifests(prepared).split("test")
    ranked = [Path(r["path"]) for r in found["results"]]
    expected = [test.imgs_dir / p for p in top["paths"]]
    scores = [r["score"] for r in found["results"]]
    # bf16 matmuls round differently for a query alone than inside a batch of queries (the text
    # tower's length is the batch's), so images whose scores are that close may trade places
    tolerance = 1e-5 if precision == "fp32" else 2e-3
    assert scores == pytest.approx(top["scores"], abs=tolerance)
    evaluated = dict(zip(expected, top["scores"], strict=True))
    for rank, (path, score) in enumerate(zip(ranked, top["scores"], strict=True)):
        if precision == "fp32":
            assert path == expected[rank], rank
        elif path in evaluated:
            assert abs(evaluated[path] - score) <= tolerance, rank
        else:  # evaluation's 11th, tied within rounding with its 10th
            assert rank == len(ranked) - 1, rank


def test_old_checkpoints_without_the_architecture_record_rebuild_as_trained(
    quick_gelu_tag: Path, tmp_path: Path
) -> None:
    """A checkpoint written before the activation was recorded is resolved from its config as
    training resolved it: the tag's QuickGELU, with nothing fetched."""
    from uit.model.build import inference_config

    state = {"config": {"model": {"name": "uit-tiny", "pretrained": TAG,
                                  "cache_dir": str(tmp_path / "nowhere")}}}  # fmt: skip
    assert inference_config(state, "old").quick_gelu is True
    state["config"]["model"]["pretrained"] = ""
    assert inference_config(state, "old").quick_gelu is False
    state["config"]["model"]["pretrained"] = str(tmp_path / "gone.safetensors")
    assert inference_config(state, "old").quick_gelu is False  # the file's marker is gone too


def test_quick_gelu_false_contradicting_the_architecture_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from open_clip import factory

    from uit.core.config import ModelConfig
    from uit.core.errors import ConfigError
    from uit.model.build import build_model, register_configs

    register_configs()
    quick = {**open_clip.get_model_config("uit-tiny"), "quick_gelu": True}
    monkeypatch.setitem(factory._MODEL_CONFIGS, "uit-tiny-quickgelu", quick)
    with pytest.raises(ConfigError, match=r"model\.quick_gelu: false contradicts"):
        build_model(ModelConfig(name="uit-tiny-quickgelu", image_height=64, image_width=32,
                                context_length=32, quick_gelu=False))  # fmt: skip
    encoder = build_model(ModelConfig(name="uit-tiny-quickgelu", image_height=64, image_width=32,
                                      context_length=32))  # fmt: skip
    assert encoder.quick_gelu and _uses_quick_gelu(encoder)


def test_export_records_the_activation_and_precision(tmp_path: Path) -> None:
    from uit.core.config import training_config
    from uit.model.build import build_model
    from uit.model.checkpoint import save_checkpoint

    cfg = _config(tmp_path, {"quick_gelu": True}, precision="bf16")
    encoder = build_model(cfg.model)
    weights = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state = {"config": training_config(cfg), "architecture": {"quick_gelu": True}, "epoch": 0}
    save_checkpoint(tmp_path / "ckpt", weights, state)
    export_encoder(tmp_path / "ckpt", tmp_path / "export")
    exported = read_state(tmp_path / "export")
    assert exported["architecture"] == {"quick_gelu": True}
    assert exported["config"]["model"]["quick_gelu"] is True
    assert exported["config"]["model"]["pretrained"] == ""
    assert exported["precision"] == "bf16"
