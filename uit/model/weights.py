"""Pretrained CLIP weights in every format a user is likely to hold, read without running code.

``detect_format`` names the format of a file:

- ``openai-torchscript``: OpenAI's own files (``ViT-B-16.pt`` as OpenAI distributes it, the file
  IRRA and SEN start from). These are TorchScript archives; uit reads their tensors with a
  restricted unpickler that knows only tensors and inert records of TorchScript modules, so
  neither the archive's pickle nor its code is ever executed.
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
anything is inflated or copied. Zip entries may unpack to at most twice the file's size (a zip
bomb inflates a few MB to GBs); every tensor must be a view whose elements are distinct and inside
its storage (an expanded, stride-0 tensor stands for GBs in a few bytes); and all tensors together
may hold at most twice the file's bytes. Such a file, a damaged one, or weights of impossible
shapes or holding NaN is a ``WeightsError`` naming the file and the entry.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import operator
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from uit.core.config import ModelConfig
from uit.core.errors import WeightsError
from uit.core.io import atomic_write_bytes, check_new_file
from uit.model.checkpoint import first_non_finite
from uit.model.registry import register_configs

log = logging.getLogger(__name__)

TORCHSCRIPT = "openai-torchscript"
STATE_DICT = "state-dict"
SAFETENSORS = "safetensors"
RELEASED = "released-checkpoint"
FORMATS = (TORCHSCRIPT, STATE_DICT, SAFETENSORS, RELEASED)

MAX_GROWTH = 2  # what a file may unpack to, or copy out as tensors, in multiples of its size
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
        fmt, state, dropped = TORCHSCRIPT, _read_torchscript(path), 0
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
    atomic_write_bytes(out, save(_independent(state), metadata=metadata))
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
        return "torchscript" if _torchscript_root(_zip_names(path)) else "torch"
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
    except _DAMAGED as error:  # zipfile raises many kinds of error for a damaged directory
        raise WeightsError(
            f"{path} starts like a zip archive (a torch or TorchScript file) but cannot be read "
            f"as one ({error}): it is probably truncated; download or copy it again."
        ) from None
    _check_unpacked_sizes(path, entries)
    return [entry.filename for entry in entries]


def _byte_budget(path: Path) -> int:
    """The most bytes that reading ``path`` may unpack or copy out: weights barely compress and
    torch stores them uncompressed, so a file never legitimately unpacks to much more than its
    own size; twice that leaves room for tied weights, which share their bytes."""
    return MAX_GROWTH * path.stat().st_size


def _check_unpacked_sizes(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse, before anything is read, an archive whose entries declare more bytes than the
    file could hold (a zip bomb: a few MB that inflate to GBs); readers then read no entry past
    its declared size (``_read_entry``)."""
    declared = sum(entry.file_size for entry in entries)
    if declared <= _byte_budget(path):
        return
    largest = max(entries, key=lambda entry: entry.file_size)
    raise WeightsError(
        f"{path}: its zip entry {largest.filename} unpacks to {largest.file_size:,} bytes from "
        f"{largest.compress_size:,} (all entries: {declared:,} bytes from a file of "
        f"{path.stat().st_size:,}), more than a weights file ever unpacks to; refused before "
        "reading it. Use the file as torch saved it (torch stores weights uncompressed)."
    )


def _torchscript_root(names: Iterable[str]) -> str | None:
    """The archive's top folder when it is TorchScript (``data.pkl`` beside ``code/`` or
    ``constants.pkl``); torch.save archives have neither."""
    names = list(names)
    roots = sorted(
        {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    )
    for root in roots:
        if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
            return root
    return None


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
        problem = _view_problem(tensor.shape, tensor.stride(), offset, storage)
        if problem:
            raise WeightsError(f"{path}: its tensor {name} {problem}; {UNSAFE_VIEW_FIX}")
        total += tensor.numel() * tensor.element_size()
        if total > _byte_budget(path):
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


# --- Sizes a file declares, checked before anything is copied -------------------------------

UNSAFE_VIEW_FIX = (
    "no saved weight is one. Re-save the weights from the model that uses them (its state_dict() "
    "with torch.save or safetensors), or use the original file"
)


def _view_problem(
    shape: Sequence[int], stride: Sequence[int], offset: int, storage: int
) -> str | None:
    """What keeps a view of a flat storage of ``storage`` elements from being a weight, or None.
    A weight's elements are distinct and inside its storage; an expanded tensor (stride 0)
    instead repeats a few stored bytes into as many GBs as its shape says, once copied."""
    described = f"is a {' x '.join(map(str, shape)) or 'scalar'} view with strides {tuple(stride)}"
    if len(shape) != len(stride) or offset < 0 or min((*shape, *stride, 0)) < 0:
        return f"{described} from offset {offset}, which no tensor has"
    if 0 in shape:
        return None  # nothing to read
    reach = 1  # a dimension must step over everything the dimensions of smaller strides span
    for step, size in sorted((st, n) for n, st in zip(shape, stride, strict=True) if n > 1):
        if step < reach:
            return (
                f"{described} whose elements overlap: {math.prod(shape):,} elements drawn from a "
                f"storage of {storage:,}"
            )
        reach = step * size
    last = offset + sum((n - 1) * st for n, st in zip(shape, stride, strict=True))
    if last >= storage:
        return f"{described} from offset {offset}, past the {storage:,} elements of its storage"
    return None


# --- TorchScript archives, read without running them -------------------------------------------

_STORAGE_DTYPES = {
    f"{name}Storage": dtype
    for name, dtype in (
        ("Float", torch.float32),
        ("Half", torch.float16),
        ("BFloat16", torch.bfloat16),
        ("Double", torch.float64),
        ("Long", torch.int64),
        ("Int", torch.int32),
        ("Short", torch.int16),
        ("Char", torch.int8),
        ("Byte", torch.uint8),
        ("Bool", torch.bool),
    )
}


class _Forbidden(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""


class _Unsafe(Exception):
    """The archive declares a tensor that reading would blow up (the message says which, how)."""


class _ScriptObject:
    """Stands in for an instance of a TorchScript class (``__torch__.*``): it records the state
    the pickle hands it and has no behaviour, so nothing in the archive runs."""

    qualified_name: ClassVar[str] = ""
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.state = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _same(value: Any, *_: Any) -> Any:
    return value


MAX_CODE_BYTES = 256 << 10  # a TorchScript class's code file: OpenAI's are a few kB each
_REBUILD_TENSOR = (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"))
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    # typed lists and dicts of module attributes: the value is kept, the type tag dropped
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors (storages from the archive), containers and
    inert ``_ScriptObject`` records; any other global is refused before anything is called."""

    def __init__(
        self,
        file: IO[bytes],
        read_storage: Callable[[str, torch.dtype, int], Tensor],
        root: str,
        budget: int,
    ) -> None:
        super().__init__(file)
        self._root = root
        self._read_storage = read_storage
        self._classes: dict[str, type[_ScriptObject]] = {}
        self._entries: dict[int, str] = {}  # id of a storage -> the archive entry it came from
        self._budget = budget  # bytes the tensors copied out of their storages may still take

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                attributes = {"qualified_name": qualified}
                self._classes[qualified] = type(name, (_ScriptObject,), attributes)
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _REBUILD_TENSOR:
            return self._rebuild_tensor
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Forbidden(f"{module}.{name}")
        return _ALLOWED_GLOBALS[module, name]

    def persistent_load(self, pid: Any) -> Tensor:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], torch.dtype)
        ):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid  # any device: read onto the CPU
        storage = self._read_storage(str(key), dtype, operator.index(numel))
        self._entries[id(storage)] = f"{self._root}/data/{key}"
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Tensor:
        """The view torch's ``_rebuild_tensor_v2`` makes, as a copy of its own, once it is known
        to be a weight (``_view_problem``) that fits what is left of the byte budget;
        requires_grad, hooks and metadata are ignored."""
        if not isinstance(storage, Tensor):
            raise pickle.UnpicklingError("a tensor whose storage is not in the archive")
        shape = tuple(map(operator.index, size))
        steps, start = tuple(map(operator.index, stride)), operator.index(offset)
        where = f"the tensor stored in {self._entries.get(id(storage), 'an unnamed entry')}"
        problem = _view_problem(shape, steps, start, storage.numel())
        if problem:
            raise _Unsafe(f"{where} {problem}; {UNSAFE_VIEW_FIX}")
        self._budget -= math.prod(shape) * storage.element_size()
        if self._budget < 0:
            raise _Unsafe(
                f"its tensors (up to {where}) add up to more than twice the file's size: they "
                f"share their bytes many times over, which copying them out would multiply; "
                f"{UNSAFE_VIEW_FIX}"
            )
        return storage.as_strided(shape, steps, start).clone(memory_format=torch.contiguous_format)


def _storage_reader(
    archive: zipfile.ZipFile, root: str
) -> Callable[[str, torch.dtype, int], Tensor]:
    """Reads ``root/data/<key>`` as a flat tensor of ``numel`` elements, once per key."""
    storages: dict[str, Tensor] = {}

    def read(key: str, dtype: torch.dtype, numel: int) -> Tensor:
        if key not in storages:
            name, itemsize = f"{root}/data/{key}", torch.empty((), dtype=dtype).element_size()
            declared = archive.getinfo(name).file_size  # checked before reading, as sizes are
            if numel < 0 or declared < numel * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {declared:,} bytes, fewer than its {numel:,} elements"
                )
            data = bytearray(_read_entry(archive, name, numel * itemsize))
            if len(data) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} is shorter than its {numel} elements")
            storages[key] = (
                torch.frombuffer(data, dtype=dtype, count=numel)
                if numel
                else torch.empty(0, dtype=dtype)
            )
        return storages[key]

    return read


@dataclass(frozen=True)
class _ScriptClass:
    """A TorchScript class as its archived source declares it."""

    is_module: bool
    tensors: tuple[str, ...]  # __parameters__ then __buffers__: what state_dict() holds


def _declared_names(node: ast.ClassDef, name: str) -> tuple[str, ...]:
    for statement in node.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in statement.targets
        ):
            return tuple(str(value) for value in ast.literal_eval(statement.value))
    return ()


def _script_classes(archive: zipfile.ZipFile, root: str) -> dict[str, _ScriptClass]:
    """Each class in the archive's ``code/`` folder, parsed (never run) for its parameters and
    buffers; a class that cannot be parsed is left out (all its tensors are then kept)."""
    classes: dict[str, _ScriptClass] = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix) : -len(".py")].replace("/", ".")
        if archive.getinfo(name).file_size > MAX_CODE_BYTES:  # its syntax tree would be GBs
            log.warning("%s: left out %s, larger than any class's code", archive.filename, name)
            continue
        try:
            tree = ast.parse(_read_entry(archive, name).decode("utf-8"))
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
                    tensors = _declared_names(node, "__parameters__")
                    tensors += _declared_names(node, "__buffers__")
                    classes[f"{module}.{node.name}"] = _ScriptClass("Module" in bases, tensors)
        except (SyntaxError, UnicodeDecodeError, ValueError, TypeError, RecursionError) as error:
            log.warning("%s: could not parse %s (%s)", archive.filename, name, error)
    return classes


def _flatten(
    obj: _ScriptObject, classes: dict[str, _ScriptClass], prefix: str, out: dict[str, Tensor]
) -> None:
    """Add a module's parameters and buffers, then its submodules', as ``state_dict()`` does."""
    state = obj.state if isinstance(obj.state, dict) else {}
    declared = classes.get(obj.qualified_name)
    names = declared.tensors if declared else [k for k, v in state.items() if isinstance(v, Tensor)]
    for name in names:
        if isinstance(state.get(name), Tensor):  # a parameter may be None (a Linear without bias)
            out[prefix + name] = state[name]
    for name, value in state.items():
        child = classes.get(value.qualified_name) if isinstance(value, _ScriptObject) else None
        if isinstance(value, _ScriptObject) and (child is None or child.is_module):
            _flatten(value, classes, f"{prefix}{name}.", out)


# What a cut or damaged archive raises on the way (a bad pickle, a missing storage, bad sizes)
_DAMAGED = (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, OSError, RuntimeError,
            ValueError, TypeError, IndexError, AttributeError, RecursionError, OverflowError,
            zlib.error, struct.error)  # fmt: skip


def _read_entry(archive: zipfile.ZipFile, name: str, size: int | None = None) -> bytes:
    """The first ``size`` bytes of an entry (all of it by default), never more than it declares:
    asked for a bounded size, zipfile inflates no more than that, whatever the entry's
    compressed stream holds (the declared sizes were checked against the file's by
    ``_check_unpacked_sizes``)."""
    info = archive.getinfo(name)
    with archive.open(info) as entry:
        return entry.read(info.file_size if size is None else min(size, info.file_size))


def _unpickle_archive(path: Path) -> tuple[Any, dict[str, _ScriptClass]]:
    """The object tree of a TorchScript archive's ``data.pkl`` and its declared classes."""
    with zipfile.ZipFile(path) as archive:
        _check_unpacked_sizes(path, archive.infolist())  # before anything is read
        names = archive.namelist()
        root = _torchscript_root(names)
        assert root is not None  # _container saw it
        if (
            f"{root}/byteorder" in names
            and _read_entry(archive, f"{root}/byteorder").strip() == b"big"
        ):
            raise pickle.UnpicklingError("tensors stored big-endian")
        classes = _script_classes(archive, root)
        data = io.BytesIO(_read_entry(archive, f"{root}/data.pkl"))  # pickle asks for any size
        read_storage = _storage_reader(archive, root)
        unpickler = _TorchScriptUnpickler(data, read_storage, root, _byte_budget(path))
        return unpickler.load(), classes


def _read_torchscript(path: Path) -> dict[str, Tensor]:
    """The state dict of a TorchScript archive, equal to ``torch.jit.load(path).state_dict()``,
    read without executing or unpickling anything but tensors and module records."""
    state: dict[str, Tensor] = {}
    try:
        top, classes = _unpickle_archive(path)
        if isinstance(top, _ScriptObject):
            _flatten(top, classes, "", state)  # a cyclic or absurdly deep tree: RecursionError
    except _Forbidden as error:
        raise WeightsError(
            f"{path}: refused to load it: its data.pkl asks for {error}, which is neither a tensor "
            "nor a TorchScript module, so the file is not an OpenAI CLIP archive and loading it "
            "could run code. Use OpenAI's original file, or a state dict saved as safetensors."
        ) from None
    except WeightsError:
        raise
    except _Unsafe as error:
        raise WeightsError(f"{path}: {error}") from None
    except _DAMAGED as error:
        raise WeightsError(
            f"{path} is a TorchScript archive whose weights cannot be read ({type(error).__name__}:"
            f" {error}): it is probably truncated or damaged; download or copy it again."
        ) from None
    if not isinstance(top, _ScriptObject):
        raise WeightsError(
            f"{path} is a TorchScript archive that holds a {type(top).__name__}, not a module; "
            "give OpenAI's CLIP file (ViT-B-16.pt) or a state dict."
        )
    return state
