"""Exported models: the dual encoder alone (no ID head, no TIR decoder) with its model config.

One writer, ``write_export``, owns the folder and its ``state.json``, whatever the weights came
from: a uit training checkpoint (``export_encoder``, behind ``uit export``) or the authors'
released ``best.pth`` (``released_to_export``, behind ``uit weights convert``). Every export's
``state.json`` has the same keys::

    kind            "dual-encoder" (EXPORT_KIND)
    config          {"model": the ModelConfig the weights fit}
    architecture    {"quick_gelu": the activation the encoder was built with}
    precision       the precision it was trained and selected in (auto, fp32, bf16)
    exported_from   the checkpoint folder or released file it was written from
    epoch           the checkpoint's epoch, null for a released file
    source          {"file", "format", "dropped", "filled"}: what was read and left out

An export goes into a new or empty folder, or replaces an earlier export; any other folder, and
any folder holding what is being exported, is refused: nothing is ever deleted that an export did
not write. The folder appears whole or not at all (``save_checkpoint``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uit.core.config import ModelConfig
from uit.core.errors import CheckpointError, WeightsError
from uit.model.build import build_model, load_encoder
from uit.model.checkpoint import STATE, WEIGHTS, load_checkpoint, save_checkpoint
from uit.model.encoder import DualEncoder
from uit.model.weights import WeightsInfo, read_released

log = logging.getLogger(__name__)

EXPORT_KIND = "dual-encoder"  # state.json "kind" of an exported model
CHECKPOINT_FORMAT = "uit-checkpoint"  # source "format" of an export of a training checkpoint


@dataclass(frozen=True)
class ExportSource:
    """What an export's weights were read from, as its ``state.json`` records it."""

    path: Path  # the checkpoint folder or released file
    format: str  # CHECKPOINT_FORMAT, or the weights format of a released file
    dropped: int  # training-only entries left out (heads, optimizer)
    filled: tuple[str, ...] = ()  # entries the source lacks, filled in (a released logit_scale)
    epoch: int | None = None
    precision: str = "auto"


def is_export(state: dict[str, Any]) -> bool:
    return isinstance(state, dict) and state.get("kind") == EXPORT_KIND


def exported_from(state: dict[str, Any]) -> str | None:
    """What an export was written from; exports of released files written before
    ``exported_from`` was recorded name it in ``source`` alone."""
    source = state.get("source")
    found = state.get("exported_from") or (source.get("file") if isinstance(source, dict) else None)
    return str(found) if found else None


def check_export_target(out_dir: Path, source: Path) -> None:
    """An export goes into a new or empty folder, or replaces a previous export (its
    ``state.json`` says ``kind: dual-encoder`` and it holds nothing else). A run folder, a
    training checkpoint or a folder holding ``source`` is refused: nothing is ever deleted."""
    if source.resolve().is_relative_to(out_dir.resolve()):
        raise CheckpointError(
            f"{out_dir} holds the checkpoint being exported ({source}): exporting there would "
            "replace it. Give a new folder, e.g. models/NAME"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} is a file; give a folder (new or empty) for the export")
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if entries and not (set(entries) <= {WEIGHTS, STATE} and _holds_export(out_dir)):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise CheckpointError(
            f"{out_dir} is not empty and not a previous export (it holds {shown}); an export is "
            "written into a new or empty folder, or replaces an earlier export, and nothing else "
            "is deleted. Give another folder, e.g. models/NAME"
        )


def _holds_export(directory: Path) -> bool:
    try:
        state = json.loads((directory / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return is_export(state)


def export_state(cfg: ModelConfig, quick_gelu: bool, source: ExportSource) -> dict[str, Any]:
    """The ``state.json`` of an export (the module docstring lists its keys)."""
    read = {"file": str(source.path), "format": source.format, "dropped": source.dropped,
            "filled": list(source.filled)}  # fmt: skip
    return {
        "kind": EXPORT_KIND,
        "config": {"model": cfg.model_dump(mode="json")},
        "architecture": {"quick_gelu": quick_gelu},
        "precision": source.precision,
        "exported_from": str(source.path),
        "epoch": source.epoch,
        "source": read,
    }


def write_export(
    out_dir: str | Path, encoder: DualEncoder, cfg: ModelConfig, source: ExportSource
) -> None:
    """Write ``encoder``'s weights and the export's ``state.json`` to ``out_dir``, whole or not
    at all; ``out_dir`` must be new, empty or a previous export (``check_export_target``)."""
    check_export_target(Path(out_dir), source.path)
    save_checkpoint(out_dir, encoder.state_dict(), export_state(cfg, encoder.quick_gelu, source))


def export_encoder(checkpoint_dir: str | Path, out_dir: str | Path) -> tuple[int, int]:
    """Write the dual encoder of a checkpoint (no training heads) with its model config to
    ``out_dir``; returns how many tensors were kept and how many training-only ones dropped.

    ``out_dir`` must be new, empty or a previous export; anything else is refused, not deleted."""
    check_export_target(Path(out_dir), Path(checkpoint_dir))  # before the slow part
    encoder, cfg = load_encoder(checkpoint_dir)  # checks that the weights fit the architecture
    checkpoint = load_checkpoint(checkpoint_dir)
    kept, total = len(encoder.state_dict()), len(checkpoint.weights)
    precision = checkpoint.state.get("config", {}).get("train", {}).get("precision", "auto")
    source = ExportSource(Path(checkpoint_dir), CHECKPOINT_FORMAT, total - kept,
                          epoch=checkpoint.state.get("epoch"), precision=precision)  # fmt: skip
    write_export(out_dir, encoder, cfg, source)
    return kept, total - kept


def released_to_export(
    src: str | Path,
    out_dir: str | Path,
    model_name: str = "ViT-B-16",
    *,
    image_size: tuple[int, int] | None = None,
) -> WeightsInfo:
    """Turn a released fine-tuned checkpoint (IRRA's or SEN's ``best.pth``) into a uit export
    folder that ``uit evaluate`` scores directly, e.g. written to ``exports/irra-cuhk``:

        uit evaluate exports/irra-cuhk data/prepared/cuhk-pedes --out runs/irra-cuhk

    The folder holds ``weights.safetensors`` (the dual encoder, no training heads) and
    ``state.json`` (the model config: ``model_name`` with QuickGELU, the image size and the text
    context the weights were trained at, and where they came from). The image size is read from
    the position embeddings: a square grid, else the 3:1 grid of re-identification images (384 x
    128 for ViT-B-16, as released); give ``image_size`` (height, width) for any other. Overlapping
    patches (the released code's ``stride_size`` below the patch size) are not supported.

    ``model_name`` must be the open_clip architecture the checkpoint was trained from; a
    mismatch is refused with the names that would fit. ``out_dir`` must be new, empty or a
    previous export.
    """
    check_export_target(Path(out_dir), Path(src))  # before the slow part
    state, info, cfg = read_released(src, model_name, image_size)
    encoder = build_model(cfg)
    try:
        encoder.clip.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"{src}: its weights do not fit {model_name} at {cfg.image_height}x{cfg.image_width}: "
            f"{error}. Pass the model name and image size the checkpoint was trained with."
        ) from None
    write_export(out_dir, encoder, cfg, ExportSource(Path(src), info.format, info.dropped,
                                                     info.filled))  # fmt: skip
    log.info("exported %s (%s, %dx%d) to %s", src, model_name, cfg.image_height, cfg.image_width,
             out_dir)  # fmt: skip
    return info
