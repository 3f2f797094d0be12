"""Pretrained CLIP weights in every format a user is likely to hold, read without running code.

``detect_format`` names the format of a file:

- ``openai-torchscript``: OpenAI's own files (``ViT-B-16.pt`` as OpenAI distributes it, the file
  IRRA and SEN start from). These are TorchScript archives; uit reads their tensors with a
  restricted unpickler (``uit.model.torchscript``) that knows only tensors and inert records of
  TorchScript modules, so neither the archive's pickle nor its code is ever executed.
- ``state-dict``: a torch file holding a plain state dict (open_clip's
  ``open_clip_pytorch_model.bin``, OpenAI-style state dicts), read with
  ``torch.load(weights_only=True)``.
- ``safetensors``: open_clip's ``open_clip_model.safetensors``, or a file written by
  ``convert_weights``.
- ``released-checkpoint``: the ``best.pth`` of the authors' fine-tuned models (IRRA, SEN): a
  torch file of a dict whose ``model`` entry holds the CLIP as ``base_model.*`` (OpenAI's names)
  beside the training heads, and maybe ``optimizer``, ``scheduler`` and ``epoch`` entries. Read
  with ``torch.load(weights_only=True)``; only ``base_model.*`` is kept.

``read_state_dict`` turns any of them into the state dict of open_clip's ``CLIP`` (the same names
as OpenAI's), and ``convert_weights`` writes that as one safetensors file that
``model.pretrained`` takes. ``read_released`` reads a released checkpoint with the model config it
fits, which ``uit.model.export.released_to_export`` writes as a uit export folder.

A hostile file cannot make reading it blow up memory: the sizes it declares are checked before
anything is inflated or copied (``uit.model.limits``). Zip entries may unpack to at most twice the
file's size (a zip bomb inflates a few MB to GBs); every tensor must be a view whose elements are
distinct and inside its storage (an expanded, stride-0 tensor stands for GBs in a few bytes); and
all tensors together may hold at most twice the file's bytes. Such a file, a damaged one, or
weights of impossible shapes or holding NaN is a ``WeightsError`` naming the file and the entry.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from uit.core.config import ModelConfig
from uit.core.errors import WeightsError
from uit.core.io import atomic_write_bytes, check_new_file, save_tensors
from uit.model.checkpoint import first_non_finite
from uit.model.limits import (
    DAMAGED_ARCHIVE,
    UNSAFE_VIEW_FIX,
    byte_budget,
    check_unpacked_sizes,
    view_problem,
)
from uit.model.registry import register_configs
from uit.model.torchscript import read_torchscript, torchscript_root

log = logging.getLogger(__name__)

TORCHSCRIPT = "openai-torchscript"
STATE_DICT = "state-dict"
SAFETENSORS = "safetensors"
RELEASED = "released-checkpoint"
FORMATS = (TORCHSCRIPT, STATE_DICT, SAFETENSORS, RELEASED)

NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's files only
RELEASED_PREFIX = "base_model."
# The released code keeps the logit scale fixed (1 / temperature 0.02) and does not store it;
# open_clip's CLIP needs one. uit never reads it (loss.logit_scale is its own setting).
RELEASED_LOGIT_SCALE = math.log(1 / 0.02)
REQUIRED = (
    "positional_embedding",
    "text_projection",
    "logit_scale",
    "token_embedding.weight",
    "ln_final.weight",
    "visual.conv1.weight",
    "visual.positional_embedding",
    "visual.proj",
)
# The entries whose shapes give the architecture: their dimensions, as a CLIP holds them
SHAPES = {
    "visual.conv1.weight": "(width, 3, patch, patch)",
    "visual.positional_embedding": "(1 + patch positions, width)",
    "visual.proj": "(width, embedding size)",
    "positional_embedding": "(context length, width)",
    "text_projection": "(width, embedding size)",
    "token_embedding.weight": "(vocabulary, width)",
    "ln_final.weight": "(width)",
}
KNOWN_FILES = (
    "OpenAI's ViT-B-16.pt, open_clip's open_clip_pytorch_model.bin or open_clip_model.safetensors, "
    "or a released best.pth"
)


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file holds, read from its tensors (and its marker, for safetensors)."""

    source: str  # the file read
    format: str  # one of FORMATS
    quick_gelu: bool | None  # the activation the weights were trained with; None: unknown
    embed_dim: int
    vision_width: int
    vision_layers: int
    patch_size: int
    num_patches: int  # positions in visual.positional_embedding, less the class token
    image_grid: tuple[int, int] | None  # (rows, columns); None when num_patches is not a square
    context_length: int  # text positions
    text_width: int
    text_layers: int
    vocab_size: int
    dropped: int = 0  # entries that are not CLIP weights: training heads, OpenAI's scalars
    filled: tuple[str, ...] = ()  # entries added because the file lacks them (logit_scale)


# --- Public API -----------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """The format of a weights file: ``openai-torchscript``, ``state-dict``, ``safetensors`` or
    ``released-checkpoint`` (see the module docstring).

    A torch file is opened with ``weights_only=True`` (memory-mapped, so this is cheap) to tell a
    state dict from a released checkpoint; a TorchScript archive is recognised from its listing
    alone (``read_state_dict`` checks its pickle). Raises ``WeightsError``, naming the file and
    what was found, for anything else: a missing, truncated or foreign file, a pickle that asks
    for code.
    """
    path = _existing(path)
    container = _container(path)
    if container == "torch":
        return _torch_weights(path, _torch_load(path))[0]
    return TORCHSCRIPT if container == "torchscript" else SAFETENSORS


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], WeightsInfo]:
    """The CLIP weights in a file of any supported format, named as open_clip's ``CLIP`` names
    them (``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``,
    ``ln_final.*``, ``text_projection``, ``logit_scale``), ready for ``load_state_dict``.

    Tensors keep the file's dtype (OpenAI's are mostly float16). Dropped on the way: OpenAI's
    ``input_resolution``, ``context_length`` and ``vocab_size`` entries, a ``module.`` prefix, and
    a released checkpoint's training heads; a released checkpoint's missing ``logit_scale`` is
    filled with its fixed value (counts in ``WeightsInfo.dropped`` and ``filled``).

    ``WeightsInfo.quick_gelu`` is True for OpenAI's files, OpenAI-style state dicts and released
    checkpoints (all OpenAI's QuickGELU CLIP), the recorded value for a file written by
    ``convert_weights``, and None (unknown) otherwise.
    """
    path = _existing(path)
    container = _container(path)
    if container == "torchscript":
        fmt, state, dropped = TORCHSCRIPT, read_torchscript(path), 0
    elif container == "safetensors":
        fmt, state, dropped = SAFETENSORS, _read_safetensors(path), 0
    else:
        fmt, state, dropped = _torch_weights(path, _torch_load(path))
    openai_style = any(key in state for key in NON_WEIGHTS)
    dropped += sum(key in state for key in NON_WEIGHTS)
    state = {k: v for k, v in state.items() if k not in NON_WEIGHTS}
    filled: tuple[str, ...] = ()
    if fmt == RELEASED and "logit_scale" not in state:
        state["logit_scale"] = torch.tensor(RELEASED_LOGIT_SCALE)
        filled = ("logit_scale",)
    _check_clip_keys(path, state)
    _check_finite(path, fmt, state)
    quick_gelu = _quick_gelu(path, fmt, openai_style)
    info = _describe(path, fmt, state, quick_gelu, dropped, filled)
    return state, info


def convert_weights(
    src: str | Path, out_file: str | Path, *, overwrite: bool = False
) -> WeightsInfo:
    """Write the CLIP weights of ``src`` (any supported format) as one safetensors file that
    open_clip and ``model.pretrained`` load directly, e.g. OpenAI's ``ViT-B-16.pt`` offline:

        uit weights convert ViT-B-16.pt vit-b-16-openai.safetensors
        uit train --set model.pretrained=vit-b-16-openai.safetensors

    The file records ``{"format": "open_clip", "source_format": ..., "quick_gelu": "true" |
    "false" | ""}`` in its metadata, so that ``model.quick_gelu: auto`` builds the activation the
    weights were trained with. The file appears whole or not at all; an existing ``out_file`` is
    refused unless ``overwrite`` is set. Returns what was read.
    """
    out = check_new_file(
        out_file, "OUT", overwrite=overwrite, error=WeightsError
    )  # every output's rule
    state, info = read_state_dict(src)
    marker = {True: "true", False: "false", None: ""}[info.quick_gelu]
    metadata = {"format": "open_clip", "source_format": info.format, "quick_gelu": marker}
    atomic_write_bytes(out, save_tensors(_independent(state), metadata))
    log.info("wrote %d tensors of %s (%s) to %s", len(state), src, info.format, out)
    return info


def read_quick_gelu(path: str | Path) -> bool | None:
    """The activation recorded in a file written by ``convert_weights``: True for QuickGELU,
    False for GELU, None when unknown or for any other file. Reads only the file's header."""
    path = Path(path)
    if not path.is_file() or not _looks_like_safetensors(path):
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError):
        return None
    if metadata.get("format") != "open_clip":
        return None
    return {"true": True, "false": False}.get(metadata.get("quick_gelu", ""))


def read_released(
    src: str | Path, model_name: str, image_size: tuple[int, int] | None = None
) -> tuple[dict[str, Tensor], WeightsInfo, ModelConfig]:
    """The CLIP weights of a released fine-tuned checkpoint (IRRA's or SEN's ``best.pth``), what
    the file holds, and the model config they fit: ``model_name`` with QuickGELU, at the image
    size read from the position embeddings (a square grid, else the 3:1 grid of
    re-identification images) or given as ``image_size`` (height, width), and the text context
    the weights were trained at. Any other format, or weights that do not have ``model_name``'s
    architecture, are a ``WeightsError`` (``uit.model.export.released_to_export`` writes them)."""
    state, info = read_state_dict(src)
    if info.format != RELEASED:
        raise WeightsError(
            f"{src} is a {info.format} file, not a released checkpoint (a dict whose 'model' entry "
            "holds base_model.* weights). Pretrained weights need no export: convert them with "
            f"`uit weights convert {src} OUT.safetensors` and set model.pretrained to that file."
        )
    check_architecture(info, model_name)
    height, width = _image_size(info, image_size)
    return state, info, _export_config(info, model_name, height, width)


def _export_config(info: WeightsInfo, model_name: str, height: int, width: int) -> ModelConfig:
    """The model config of a released checkpoint's export, or a ``WeightsError`` naming the file
    where its sizes are below what uit builds (a tiny image or text context)."""
    try:
        return ModelConfig(name=model_name, pretrained="", image_height=height, image_width=width,
                           context_length=info.context_length, quick_gelu=True)  # fmt: skip
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))} {e['input']}: {e['msg']}" for e in error.errors()
        )
        raise WeightsError(
            f"{info.source}: its weights give a model uit cannot build ({problems}): its image "
            "size comes from visual.positional_embedding and its text context from "
            "positional_embedding; give a checkpoint of a model trained at a usual size."
        ) from None


def describe_state_dict(source: str | Path, state: dict[str, Tensor]) -> WeightsInfo:
    """The sizes of CLIP weights named as open_clip names them (``visual.conv1.weight``, ...),
    e.g. a checkpoint's, for ``check_architecture``; a ``WeightsError`` where they are not a
    ViT CLIP's."""
    try:
        return _describe(Path(source), SAFETENSORS, state, None, 0, ())
    except (KeyError, IndexError) as error:
        raise WeightsError(
            f"{source} holds no ViT CLIP weights ({error} is missing or malformed)"
        ) from None


def check_architecture(info: WeightsInfo, model_name: str) -> None:
    """Raise ``WeightsError`` unless the weights described by ``info`` have the widths, depths,
    patch size, embedding size and vocabulary of open_clip's ``model_name``; the message names
    the models that do fit."""
    register_configs()
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise WeightsError(
            f"unknown model {model_name!r} for {info.source}; use an open_clip name such as "
            "ViT-B-16 (see open_clip.list_models()) or uit-tiny"
        )
    differences = [
        f"{label} {found} in the file, {expected} in {model_name}"
        for label, found, expected in _compare(info, config)
        if found != expected
    ]
    if not differences:
        return
    fitting = [name for name in open_clip.list_models() if _fits(info, name)]
    hint = (
        f"models of this architecture: {', '.join(fitting[:6])}; pass one of them as the model name"
        if fitting
        else "no registered open_clip model has this architecture"
    )
    raise WeightsError(
        f"{info.source} does not hold a {model_name} ({'; '.join(differences)}): {hint}."
    )


# --- Files and containers -------------------------------------------------------------------


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: no such file. Give the path of a weights file ({KNOWN_FILES}); without "
            "network access, download it where there is one and copy it here."
        )
    return path


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with the length of its JSON header (at most 100 MB), then the
    header; a file cut short still looks like one, and fails when read."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < 10**8


def _container(path: Path) -> str:
    """``torchscript``, ``torch`` (a torch.save file, zip or legacy) or ``safetensors``."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        return "torchscript" if torchscript_root(_zip_names(path)) else "torch"
    if _looks_like_safetensors(path):
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy (non-zip) format
        return "torch"
    raise WeightsError(
        f"{path} is not a weights file: it is neither a zip archive (torch or TorchScript), nor "
        f"safetensors, nor a torch pickle (it starts with {head!r}). Give {KNOWN_FILES}."
    )


def _zip_names(path: Path) -> list[str]:
    """The entries of a zip archive, once their declared sizes are known to fit the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except DAMAGED_ARCHIVE as error:  # zipfile raises many kinds of error for a damaged directory
        raise WeightsError(
            f"{path} starts like a zip archive (a torch or TorchScript file) but cannot be read "
            f"as one ({error}): it is probably truncated; download or copy it again."
        ) from None
    check_unpacked_sizes(path, entries)
    return [entry.filename for entry in entries]


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise WeightsError(
            f"{path} cannot be read as safetensors ({error}): it is probably truncated; "
            "download or copy it again."
        ) from None


def _torch_load(path: Path) -> Any:
    """A torch file read with ``weights_only=True``: tensors and plain containers, no code; every
    tensor checked to be a weight that can be copied out (``_check_torch_tensors``)."""
    try:
        with warnings.catch_warnings():  # a damaged pickle's odd protocol: the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except pickle.UnpicklingError as error:
        raise _refused(path, error) from None
    except Exception as error:  # a damaged file makes torch.load raise nearly any built-in error
        lines = str(error).strip().splitlines()
        raise WeightsError(
            f"{path} cannot be read as a torch file ({type(error).__name__}: "
            f"{lines[0][:200] if lines else 'no detail'}): it is probably truncated or damaged; "
            "download or copy it again."
        ) from None
    _check_torch_tensors(path, obj)
    return obj


def _refused(path: Path, error: pickle.UnpicklingError) -> WeightsError:
    """torch's weights-only unpickler refuses a pickle that asks for code and a damaged one
    with the same error; the global it names, if any, tells them apart."""
    fix = (
        "If the file comes from a source you trust, load it with its own code and save the "
        "model's state_dict() (torch.save or safetensors), then give that file."
    )
    asked = re.search(r"GLOBAL (\S+)", str(error))
    if asked:
        return WeightsError(
            f"{path}: refused to load it: its pickle asks for the Python object "
            f"{asked.group(1)}, not only tensors and plain containers, and loading it could run "
            f"code. {fix}"
        )
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    detail = found.group(1) if found else (str(error).strip().splitlines() or ["no detail"])[0]
    return WeightsError(
        f"{path}: refused to load it: its pickle is damaged, or holds more than tensors and "
        f"plain containers, which loading could run code with ({detail[:200]}). If it is "
        f"truncated, download or copy it again. {fix}"
    )


def _tensors_in(obj: Any) -> Iterator[tuple[str, Tensor]]:
    """Every tensor in the containers of a loaded torch file, with its path of keys
    (``model/base_model.visual.proj``); each container once, however often it is referenced."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, Tensor):
            yield name, value
        elif isinstance(value, dict | list | tuple) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((f"{name}/{key}" if name else str(key), item) for key, item in items)


def _check_torch_tensors(path: Path, obj: Any) -> None:
    """Refuse a torch file whose tensors cannot be copied out at their own size: a view whose
    elements overlap (an expanded, stride-0 tensor: a few bytes standing for GBs) or that
    reaches past its storage, a sparse tensor, or tensors that together repeat more bytes than
    the file holds. torch.load memory-maps the file, so nothing has been copied yet."""
    total = 0
    for name, tensor in _tensors_in(obj):
        if tensor.layout != torch.strided:
            raise WeightsError(
                f"{path}: its tensor {name} is a {tensor.layout} tensor, not a dense weight; "
                "give the model's state_dict() as torch.save or safetensors wrote it."
            )
        storage = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
        offset = int(tensor.storage_offset())
        problem = view_problem(tensor.shape, tensor.stride(), offset, storage)
        if problem:
            raise WeightsError(f"{path}: its tensor {name} {problem}; {UNSAFE_VIEW_FIX}")
        total += tensor.numel() * tensor.element_size()
        if total > byte_budget(path):
            raise WeightsError(
                f"{path}: its tensors (up to {name}) add up to {total:,} bytes, more than twice "
                f"the file's {path.stat().st_size:,}: they share their bytes many times over, "
                f"which copying them out would multiply; {UNSAFE_VIEW_FIX}"
            )


# --- State dicts and released checkpoints ----------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Drop ``prefix`` when every key has it (``module.``: saved from DistributedDataParallel)."""
    if all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return dict(state)


def _torch_weights(path: Path, obj: Any) -> tuple[str, dict[str, Tensor], int]:
    """The format of a torch file's object, its CLIP tensors, and how many entries were dropped."""
    if isinstance(obj, dict) and "model" in obj:
        state, dropped = _released(path, obj)
        return RELEASED, state, dropped
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # open_clip's own training checkpoints
    if _is_state_dict(obj):
        return STATE_DICT, _strip(obj, "module."), 0
    found = (
        f"a dict with the keys {_some(obj)} (no 'model' entry, and not only tensors)"
        if isinstance(obj, dict)
        else f"a {type(obj).__name__}"
    )
    raise WeightsError(
        f"{path} holds {found}: it is neither a state dict nor a released checkpoint (a dict "
        "whose 'model' entry holds base_model.* weights, as IRRA's and SEN's best.pth). Give the "
        "checkpoint as the training code saved it, or a state dict of the CLIP model."
    )


def _released(path: Path, checkpoint: dict[str, Any]) -> tuple[dict[str, Tensor], int]:
    """``base_model.*`` of a released checkpoint, prefix stripped; the rest is dropped."""
    model = checkpoint["model"]
    if not _is_state_dict(model):
        raise WeightsError(
            f"{path}: its 'model' entry is not a state dict (a {type(model).__name__}); a "
            "released checkpoint holds the model's state_dict() there. Re-save it that way."
        )
    model = _strip(model, "module.")
    state = {
        k.removeprefix(RELEASED_PREFIX): v
        for k, v in model.items()
        if k.startswith(RELEASED_PREFIX)
    }
    if not state:
        raise WeightsError(
            f"{path}: its 'model' entry holds no base_model.* weights (keys such as "
            f"{_some(model)}), so it is not a checkpoint of the released IRRA/SEN code; give a "
            "released best.pth or a state dict of the CLIP model."
        )
    dropped = len(model) - len(state)
    others = sorted(str(k) for k in checkpoint if k != "model")
    log.info(
        "%s: kept %d CLIP tensors, dropped %d of the training heads and the entries %s",
        path, len(state), dropped, others,
    )  # fmt: skip
    return state, dropped


def _some(keys: Iterable[Any], limit: int = 5) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _check_clip_keys(path: Path, state: dict[str, Tensor]) -> None:
    missing = [k for k in REQUIRED if k not in state]
    if not missing:
        return
    if any(k.startswith("visual.layer1.") for k in state):
        raise WeightsError(
            f"{path} holds a CLIP with a ResNet image tower; uit needs a ViT CLIP (ViT-B-16 in "
            "the paper). Give the weights of a ViT model."
        )
    raise WeightsError(
        f"{path} does not hold CLIP ViT weights under OpenAI's / open_clip's names: it lacks "
        f"{_some(missing)} (it holds {_some(state)}). Give {KNOWN_FILES}."
    )


def _quick_gelu(path: Path, fmt: str, openai_style: bool) -> bool | None:
    if fmt in (TORCHSCRIPT, RELEASED) or openai_style:
        return True
    return read_quick_gelu(path) if fmt == SAFETENSORS else None


def _count_layers(state: dict[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def _describe(
    path: Path,
    fmt: str,
    state: dict[str, Tensor],
    quick_gelu: bool | None,
    dropped: int,
    filled: tuple[str, ...],
) -> WeightsInfo:
    _check_shapes(path, fmt, state)
    conv = state["visual.conv1.weight"]  # (width, 3, patch, patch)
    patches = state["visual.positional_embedding"].shape[0] - 1
    side = math.isqrt(patches)
    return WeightsInfo(
        source=str(path),
        format=fmt,
        quick_gelu=quick_gelu,
        embed_dim=int(state["text_projection"].shape[1]),
        vision_width=int(conv.shape[0]),
        vision_layers=_count_layers(state, "visual.transformer.resblocks."),
        patch_size=int(conv.shape[-1]),
        num_patches=int(patches),
        image_grid=(side, side) if side * side == patches else None,
        context_length=int(state["positional_embedding"].shape[0]),
        text_width=int(state["ln_final.weight"].shape[0]),
        text_layers=_count_layers(state, "transformer.resblocks."),
        vocab_size=int(state["token_embedding.weight"].shape[0]),
        dropped=dropped,
        filled=filled,
    )


def _entry(fmt: str, key: str) -> str:
    """``key`` as the file names it (a released checkpoint's CLIP lies under base_model.)."""
    return RELEASED_PREFIX + key if fmt == RELEASED else key


def _check_finite(path: Path, fmt: str, state: dict[str, Tensor]) -> None:
    key = first_non_finite(state)
    if key is not None:
        raise WeightsError(
            f"{path}: its entry {_entry(fmt, key)} holds NaN or Inf: the weights are damaged (a "
            "training run that diverged saves such); use the original file or an earlier "
            "checkpoint."
        )


def _check_shapes(path: Path, fmt: str, state: dict[str, Tensor]) -> None:
    """Refuse entries that cannot be a ViT CLIP's (a 1-D projection, an empty position
    embedding, no patch positions), naming the entry as the file does."""
    for key, dims in SHAPES.items():
        shape, expected = tuple(state[key].shape), dims.count(",") + 1
        if len(shape) != expected or 0 in shape:
            raise WeightsError(
                f"{path}: its entry {_entry(fmt, key)} has shape {_shape(shape)}, not the "
                f"{expected}-D {dims} of a ViT CLIP's: the file is damaged or holds no ViT CLIP; "
                "give the original weights file."
            )
    positions = state["visual.positional_embedding"].shape  # (1 + patches, width)
    if positions[0] < 2:
        raise WeightsError(
            f"{path}: its entry {_entry(fmt, 'visual.positional_embedding')} has shape "
            f"{_shape(positions)}: only the class token, no patch positions, so no image size "
            "fits it: the file is damaged or holds no ViT CLIP; give the original weights file."
        )


def _shape(shape: Iterable[int]) -> str:
    return f"({', '.join(map(str, shape))})"


def _independent(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors sharing no memory (safetensors refuses tensors that share it)."""
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        value = value.detach().contiguous()
        pointer = value.untyped_storage().data_ptr()
        if value.numel() and pointer in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


# --- Architecture ----------------------------------------------------------------------------


def _compare(info: WeightsInfo, config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(what, in the weights, in the open_clip config) for each size the weights determine."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    return [
        ("embedding size", info.embed_dim, config.get("embed_dim")),
        ("image width", info.vision_width, vision.get("width", CLIPVisionCfg.width)),
        ("image layers", info.vision_layers, vision.get("layers", CLIPVisionCfg.layers)),
        ("patch size", info.patch_size, vision.get("patch_size", CLIPVisionCfg.patch_size)),
        ("text width", info.text_width, text.get("width", CLIPTextCfg.width)),
        ("text layers", info.text_layers, text.get("layers", CLIPTextCfg.layers)),
        ("vocabulary", info.vocab_size, text.get("vocab_size", CLIPTextCfg.vocab_size)),
    ]


def _fits(info: WeightsInfo, model_name: str) -> bool:
    config = open_clip.get_model_config(model_name) or {}
    return all(found == expected for _, found, expected in _compare(info, config))


def _image_size(info: WeightsInfo, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) in pixels that gives the weights' number of patch positions."""
    patch = info.patch_size
    if image_size is not None:
        height, width = image_size
        if (
            height % patch
            or width % patch
            or (height // patch) * (width // patch) != info.num_patches
        ):
            raise WeightsError(
                f"{info.source}: an image of {height}x{width} at patch {patch} does not give the "
                f"{info.num_patches} patch positions the weights hold; give the image size the "
                f"checkpoint was trained at (sizes that fit: {_sizes(info)}; overlapping "
                "patches, a stride below the patch size, are not supported)."
            )
        return height, width
    grid = info.image_grid or _reid_grid(info.num_patches)
    if grid is None:
        rows, columns = _grids(info.num_patches)[0]
        raise WeightsError(
            f"{info.source}: its {info.num_patches} patch positions (patch {patch}) form neither "
            "a square nor a 3:1 grid (as re-identification images do), so the image size cannot "
            f"be read from the weights. Sizes (height x width) that fit: {_sizes(info)}; give "
            "the one it was trained at (its training config's), e.g. `uit weights convert "
            f"{info.source} OUT --image-height {rows * patch} --image-width {columns * patch}` "
            "(image_size=(height, width) in released_to_export)."
        )
    return grid[0] * patch, grid[1] * patch


def _sizes(info: WeightsInfo) -> str:
    """The image sizes that give the weights' patch positions, as ``HxW, HxW, ...``."""
    patch = info.patch_size
    return ", ".join(f"{rows * patch}x{cols * patch}" for rows, cols in _grids(info.num_patches))


def _grids(patches: int, limit: int = 4) -> list[tuple[int, int]]:
    """(rows, columns) grids of ``patches`` positions, at least as tall as wide (person images
    are), the squarest first."""
    grids = [(patches // columns, columns) for columns in range(1, math.isqrt(patches) + 1)
             if patches % columns == 0]  # fmt: skip
    return sorted(grids, key=lambda grid: grid[0] / grid[1])[:limit]


def _reid_grid(patches: int) -> tuple[int, int] | None:
    """The 3:1 grid of re-identification images (384 x 128 at patch 16: 24 x 8), if it fits."""
    width = math.isqrt(patches // 3)
    return (3 * width, width) if width and 3 * width * width == patches else None
