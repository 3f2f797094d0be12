"""Exports: both doors (``uit export``, ``uit weights convert best.pth``) write through
``uit.model.export.write_export``, so their ``state.json`` has one shape and ``uit serve`` names
what each came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import released_checkpoint, tiny_clip
from uit.app.serve import describe_model
from uit.core.config import ModelConfig
from uit.core.errors import CheckpointError
from uit.model.build import build_model
from uit.model.checkpoint import STATE, read_state, save_checkpoint
from uit.model.export import (
    CHECKPOINT_FORMAT,
    EXPORT_KIND,
    export_encoder,
    exported_from,
    released_to_export,
)
from uit.model.weights import RELEASED


@pytest.fixture
def released(tmp_path: Path) -> tuple[Path, Path]:
    """A released ``best.pth`` (uit-tiny at 96 x 32, QuickGELU) and its export."""
    best, out = tmp_path / "best.pth", tmp_path / "released"
    released_checkpoint(best, dict(tiny_clip(image_size=(96, 32), quick_gelu=True).state_dict()))
    released_to_export(best, out, model_name="uit-tiny")
    return best, out


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    """A training checkpoint (the encoder plus a head tensor, epoch 3, bf16) and its export."""
    cfg = ModelConfig(name="uit-tiny", image_height=64, image_width=32, context_length=32)
    encoder = build_model(cfg)
    weights = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    weights["id_head.classifier.weight"] = torch.zeros(5, encoder.embed_dim)
    state = {"config": {"model": cfg.model_dump(mode="json"), "train": {"precision": "bf16"}},
             "architecture": {"quick_gelu": encoder.quick_gelu}, "epoch": 3}  # fmt: skip
    checkpoint, out = tmp_path / "ckpt", tmp_path / "exported"
    save_checkpoint(checkpoint, weights, state)
    assert export_encoder(checkpoint, out) == (len(weights) - 1, 1)
    return checkpoint, out


def test_a_released_export_is_described_with_the_file_it_came_from(
    released: tuple[Path, Path],
) -> None:
    best, out = released
    assert describe_model(out) == f"{out} (export of {best}, uit-tiny)"
    assert describe_model(out, public=True) == "released (export of best.pth, uit-tiny)"


def test_a_released_export_written_before_exported_from_is_described_by_its_source(
    released: tuple[Path, Path],
) -> None:
    best, out = released
    state = json.loads((out / STATE).read_text())
    del state["exported_from"]  # what released_to_export wrote until it went through write_export
    (out / STATE).write_text(json.dumps(state))
    assert exported_from(read_state(out)) == str(best)
    assert describe_model(out) == f"{out} (export of {best}, uit-tiny)"


def test_both_writers_write_one_state_shape(
    released: tuple[Path, Path], trained: tuple[Path, Path]
) -> None:
    (best, from_best), (checkpoint, from_checkpoint) = released, trained
    a, b = read_state(from_best), read_state(from_checkpoint)
    assert set(a) == set(b) == {"kind", "config", "architecture", "precision", "exported_from",
                                "epoch", "source"}  # fmt: skip
    assert set(a["source"]) == set(b["source"]) == {"file", "format", "dropped", "filled"}
    assert a["kind"] == b["kind"] == EXPORT_KIND
    assert (a["exported_from"], b["exported_from"]) == (str(best), str(checkpoint))
    assert (a["source"]["format"], b["source"]["format"]) == (RELEASED, CHECKPOINT_FORMAT)
    assert (a["epoch"], a["precision"]) == (None, "auto")
    assert (b["epoch"], b["precision"], b["source"]["dropped"]) == (3, "bf16", 1)
    assert describe_model(from_checkpoint).endswith(f"(export of {checkpoint}, uit-tiny)")


def test_both_writers_replace_only_an_export(
    released: tuple[Path, Path], trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """One folder rule: a previous export (of either kind) is replaced, anything else refused."""
    (best, from_best), (checkpoint, from_checkpoint) = released, trained
    export_encoder(checkpoint, from_best)  # over the released export
    assert read_state(from_best)["exported_from"] == str(checkpoint)
    released_to_export(best, from_checkpoint, model_name="uit-tiny")  # and the other way
    assert read_state(from_checkpoint)["exported_from"] == str(best)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.md").write_text("keep me")
    for write in (lambda out: export_encoder(checkpoint, out),
                  lambda out: released_to_export(best, out, model_name="uit-tiny")):  # fmt: skip
        with pytest.raises(CheckpointError, match="not a previous export"):
            write(notes)
        with pytest.raises(CheckpointError, match="holds the checkpoint being exported"):
            write(tmp_path)
    with pytest.raises(CheckpointError, match="not a previous export"):
        released_to_export(best, checkpoint, model_name="uit-tiny")  # a training checkpoint
    assert (notes / "notes.md").read_text() == "keep me"
    assert read_state(checkpoint)["epoch"] == 3 and best.is_file()
