"""``build_model``: any open_clip model name (or ``uit-tiny``), at any image size, with weights
from an open_clip tag or a local file, position embeddings resized to the new grid."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict
from open_clip.model import CLIP

from uit.core.config import ModelConfig
from uit.core.errors import CheckpointError, ConfigError, UitError, WeightsError, bounded
from uit.model.encoder import DualEncoder
from uit.model.registry import register_configs

log = logging.getLogger(__name__)
IMAGE_POSITIONS = "visual.positional_embedding"


def _pretrained_tag(cfg: ModelConfig) -> dict[str, Any]:
    """open_clip's description of the tag in ``cfg.pretrained``, or {} for none / a file."""
    if not cfg.pretrained or Path(cfg.pretrained).suffix:
        return {}
    tag: dict[str, Any] = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained)
    if not tag:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.name)) or "none"
        raise ConfigError(
            f"model.pretrained: {cfg.pretrained!r} is neither a weights file nor a pretrained tag "
            f"of {cfg.name} (tags: {known})"
        )
    return tag


def _weights_file(cfg: ModelConfig, tag: dict[str, Any]) -> str | None:
    """A local path to the weights, downloading a tag's weights when the network allows."""
    if not cfg.pretrained:
        return None
    if not tag:
        if not Path(cfg.pretrained).is_file():
            raise ConfigError(f"model.pretrained: weights file {cfg.pretrained} not found")
        _check_loadable(cfg.pretrained)
        return cfg.pretrained
    try:
        path: str = open_clip.download_pretrained(tag, cache_dir=cfg.cache_dir or None)
    except Exception as error:  # network, hub or cache errors all mean the same to the user
        source = tag.get("hf_hub") or tag.get("url") or "the open_clip hub"
        activation = (" --set model.quick_gelu=true` (these weights need QuickGELU)"
                      if tag.get("quick_gelu") else "`")  # fmt: skip
        raise UitError(
            f"could not fetch the {cfg.pretrained!r} weights of {cfg.name} "
            f"({type(error).__name__}: {error}). Without network access, download them where there "
            f"is one ({source}), copy the file here and point model.pretrained at it, e.g. "
            f"`--set model.pretrained=/path/to/open_clip_model.safetensors{activation}, or copy "
            "a filled Hugging Face cache and set HF_HUB_OFFLINE=1."
        ) from None
    if not path:
        raise UitError(
            f"open_clip has no download for the {cfg.pretrained!r} weights of {cfg.name}"
        )
    return path


def _check_loadable(path: str) -> None:
    """Refuse, with the way forward, weights files that open_clip cannot load as they are."""
    from uit.model.weights import RELEASED, TORCHSCRIPT, detect_format

    found = detect_format(path)  # a pickle that asks for code is refused here, never run
    if found == TORCHSCRIPT:
        raise UitError(
            f"model.pretrained: {path} is OpenAI's TorchScript archive, which uit does not "
            f"execute. Convert it once: `uit weights convert {path} {Path(path).stem}"
            f".safetensors`, then point model.pretrained at the .safetensors file"
        )
    if found == RELEASED:
        raise UitError(
            f"model.pretrained: {path} is a released fine-tuned checkpoint (best.pth), not "
            f"pretrained weights. To score it: `uit weights convert {path} models/released`, "
            "then `uit evaluate models/released data/prepared/BENCHMARK --out evals/released`"
        )


def _check_vit(name: str, architecture: dict[str, Any]) -> None:
    if isinstance(architecture.get("vision_cfg", {}).get("layers"), list | tuple):
        raise ConfigError(
            f"model.name: {name} has a ResNet image tower; uit builds ViT models only "
            "(e.g. ViT-B-16, ViT-B-32, uit-tiny)"
        )


def _check_size(cfg: ModelConfig, patch: int) -> None:
    for key, value in (("image_height", cfg.image_height), ("image_width", cfg.image_width)):
        if value % patch:
            raise ConfigError(f"model.{key}: {value} is not divisible by the patch size {patch}")


@contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    root = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def build_model(cfg: ModelConfig) -> DualEncoder:
    """Build the dual encoder described by ``cfg`` (random weights when ``pretrained`` is empty)."""
    register_configs()
    architecture = open_clip.get_model_config(cfg.name)
    if architecture is None:
        raise ConfigError(
            f"model.name: unknown model {cfg.name!r}; use an open_clip name such as ViT-B-16 "
            "(see open_clip.list_models()) or uit-tiny"
        )
    _check_vit(cfg.name, architecture)
    _check_size(cfg, int(architecture["vision_cfg"].get("patch_size", 16)))
    tag = _pretrained_tag(cfg)
    weights = _weights_file(cfg, tag)  # before building: a bad file or tag fails fast
    quick_gelu = resolve_quick_gelu(cfg, architecture, tag, weights)
    with _quiet_random_init_warning():  # weights, if any, are loaded below
        clip = open_clip.create_model(
            cfg.name,
            pretrained=None,
            force_image_size=(cfg.image_height, cfg.image_width),
            force_context_length=cfg.context_length,
            force_quick_gelu=quick_gelu,
        )
    if not isinstance(clip, CLIP):
        raise ConfigError(
            f"model.name: {cfg.name} has a custom text tower; uit needs open_clip's CLIP"
        )
    if weights is not None:
        _load_weights(clip, weights, cfg.pos_embed_resize)
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    return DualEncoder(
        clip,
        name=cfg.name,
        image_mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        image_std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        quick_gelu=quick_gelu,
    )


def resolve_quick_gelu(
    cfg: ModelConfig,
    architecture: dict[str, Any],
    tag: dict[str, Any],
    weights: str | None,
) -> bool:
    """Whether the network uses QuickGELU (OpenAI's activation) rather than GELU.

    ``model.quick_gelu`` decides when it is true or false; ``auto`` follows the architecture's
    own config (``*-quickgelu`` names), then the pretrained tag (OpenAI's weights need QuickGELU),
    then the marker that ``uit weights convert`` writes into a weights file; otherwise GELU.
    """
    named = bool(architecture.get("quick_gelu", False))
    if cfg.quick_gelu is False and named:
        raise ConfigError(
            f"model.quick_gelu: false contradicts {cfg.name}, whose architecture uses QuickGELU; "
            "use the model name without -quickgelu or set model.quick_gelu: auto"
        )
    if isinstance(cfg.quick_gelu, bool):
        return cfg.quick_gelu or named
    if named or tag.get("quick_gelu", False):
        return True
    if weights is not None and not tag:
        from uit.model.weights import read_quick_gelu

        return bool(read_quick_gelu(weights))
    return False


def inference_config(state: dict[str, Any], source: str | Path) -> ModelConfig:
    """The architecture a checkpoint or export was trained as, ready to rebuild without fetching
    weights: ``pretrained`` empty and ``quick_gelu`` resolved to what training used.

    Checkpoints record the resolved activation (``state["architecture"]``); older ones are
    resolved from their saved config as training resolved it (tag, or the weights file's marker
    where the file is still there).
    """
    try:
        cfg = ModelConfig.model_validate(state["config"]["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise UitError(f"{source}: its state.json holds no valid model config ({error})") from None
    recorded = state.get("architecture", {}).get("quick_gelu")
    if isinstance(recorded, bool):
        quick_gelu = recorded
    elif isinstance(cfg.quick_gelu, bool):
        quick_gelu = cfg.quick_gelu
    else:
        register_configs()
        architecture = open_clip.get_model_config(cfg.name) or {}
        tag = _pretrained_tag(cfg)
        weights = cfg.pretrained if cfg.pretrained and not tag else None
        if weights is not None and not Path(weights).is_file():
            weights = None  # trained from a file that is gone: its marker cannot be read
        quick_gelu = resolve_quick_gelu(cfg, architecture, tag, weights)
    return cfg.model_copy(update={"pretrained": "", "quick_gelu": quick_gelu})


def _load_weights(clip: CLIP, path: str, resize: str = "bicubic") -> None:
    """Load a state dict (safetensors, or a torch file read with ``weights_only=True``); open_clip
    resizes the image (bicubic, antialiased) and text position embeddings to this model's grid
    and context. ``resize="bilinear"`` redoes the image ones as the released code does."""
    try:
        open_clip.load_checkpoint(clip, path, strict=True, weights_only=True)
    except (
        RuntimeError,
        OSError,
        ValueError,
        KeyError,
        torch.serialization.pickle.UnpicklingError,
    ) as error:
        raise UitError(f"could not load weights from {path}: {error}") from None
    if resize == "bilinear":
        _resize_image_positions_bilinear(clip, path)
    from uit.model.checkpoint import first_non_finite

    key = first_non_finite(clip.state_dict())
    if key is not None:
        raise WeightsError(
            f"model.pretrained: {path}: its tensor {key} holds NaN or Inf; training from it "
            "could only diverge. Use the original weights file."
        )
    log.info("loaded weights from %s", path)


def resize_positions(positions: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """Image position embeddings of a square grid, CLS row first, (1 + S * S, D), resized to
    ``grid`` (rows, cols): (1 + rows * cols, D), the CLS row kept. ``bicubic`` is antialiased, as
    open_clip's ``resize_pos_embed``; ``bilinear`` is not, as the released ``resize_pos_embed``
    (``F.interpolate``'s defaults). Both with ``align_corners=False``, computed in float32."""
    cls, patches = positions[:1], positions[1:]
    side = math.isqrt(patches.shape[0])
    if side * side != patches.shape[0]:
        raise WeightsError(
            f"{IMAGE_POSITIONS}: {patches.shape[0]} patch positions are not a square grid"
        )
    square = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, S, S)
    resized = F.interpolate(
        square, size=grid, mode=mode, align_corners=False, antialias=mode == "bicubic"
    )
    table = resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)  # (rows * cols, D)
    return torch.cat([cls, table.to(positions.dtype)])


def _resize_image_positions_bilinear(clip: CLIP, path: str) -> None:
    """Replace the image position embeddings that open_clip resized (bicubic) by the bilinear
    resize of the file's own; at the file's own grid nothing was resized. The file is read a
    second time, by open_clip's reader, as ``load_checkpoint`` read it."""
    stored = load_state_dict(path, weights_only=True).get(IMAGE_POSITIONS)
    if stored is None:
        raise WeightsError(
            f"model.pos_embed_resize: bilinear: {path} holds no {IMAGE_POSITIONS} (open_clip's "
            "name); convert it with `uit weights convert`, or use bicubic"
        )
    target = clip.visual.positional_embedding
    if stored.shape != target.shape:
        with torch.no_grad():
            target.copy_(resize_positions(stored, clip.visual.grid_size, "bilinear"))


def build_tokenizer(cfg: ModelConfig) -> Callable[[list[str]], torch.Tensor]:
    """The model's tokenizer: captions -> (N, context_length) token ids, truncated with EOT last."""
    register_configs()
    tokenizer: Callable[[list[str]], torch.Tensor] = open_clip.get_tokenizer(
        cfg.name, context_length=cfg.context_length
    )
    return tokenizer


def inference_precision(state: dict[str, Any]) -> str:
    """The precision a checkpoint was trained (and selected) in: ``train.precision`` of a
    training checkpoint, the recorded one of an export, ``auto`` where neither says."""
    config = state.get("config", {})
    precision = state.get("precision") or config.get("train", {}).get("precision") or "auto"
    if precision not in ("auto", "fp32", "bf16"):
        raise UitError(f"checkpoint precision {precision!r} is not one of auto, fp32, bf16")
    return str(precision)


def load_encoder(checkpoint_dir: str | Path) -> tuple[DualEncoder, ModelConfig]:
    """The dual encoder of a training checkpoint or an exported model, without training heads.

    The architecture comes from the checkpoint's own config; no pretrained weights are fetched.
    """
    from uit.model.checkpoint import WEIGHTS, check_finite, load_checkpoint

    checkpoint = load_checkpoint(checkpoint_dir)
    cfg = inference_config(checkpoint.state, checkpoint_dir)
    heads = ("id_head.", "tir_decoder.")  # training-only parts of a training checkpoint
    kept = {k: v for k, v in checkpoint.weights.items() if not k.startswith(heads)}
    check_finite(kept, Path(checkpoint_dir) / WEIGHTS)
    weights = {k.removeprefix("encoder."): v for k, v in kept.items()}
    check_weights_fit(weights, cfg, Path(checkpoint_dir))  # before building: ViT-L is slow
    encoder = build_model(cfg)
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            bounded(f"{checkpoint_dir}: weights do not fit {cfg.name}: {error}")
        ) from None
    return encoder, cfg


def check_weights_fit(weights: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> None:
    """Refuse a checkpoint whose ``state.json`` names an architecture (``model.name``) that its
    ``weights.safetensors`` (dual-encoder names, ``clip.*``) do not have."""
    from uit.model.checkpoint import STATE, WEIGHTS
    from uit.model.weights import check_architecture, describe_state_dict

    register_configs()
    architecture = open_clip.get_model_config(cfg.name)
    if architecture is None:
        return  # build_model names the unknown model
    clip = {k.removeprefix("clip."): v for k, v in weights.items() if k.startswith("clip.")}
    try:
        _check_vit(cfg.name, architecture)
        check_architecture(describe_state_dict(source / WEIGHTS, clip), cfg.name)
    except (ConfigError, WeightsError) as error:
        raise CheckpointError(
            f"{source}: its {STATE} says model.name {cfg.name}, but its weights do not fit: "
            f"{str(error).rstrip('.')}. Fix model.name in {source / STATE}, or use the "
            "checkpoint it came with."
        ) from None
