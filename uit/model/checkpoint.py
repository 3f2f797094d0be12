"""Checkpoints: safetensors tensors plus a JSON state; nothing is ever unpickled (design §8).

A checkpoint folder holds ``weights.safetensors`` (the objective: encoder and training heads),
``state.json`` (the whole config, epoch, step, best metric, optimizer hyper-parameters, RNG
states) and, for ``last``, ``optimizer.safetensors`` (Adam's moments). Folders are written beside
their final place and renamed in, so a reader sees a whole checkpoint or the previous one. A
folder is only ever replaced when it holds nothing but a checkpoint's own files.

A missing, truncated or damaged file is a ``CheckpointError`` naming the file and the way out.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from uit.core.errors import CheckpointError
from uit.core.io import replaced_dir

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
OWNED = frozenset({WEIGHTS, OPTIMIZER, STATE})  # what save_checkpoint may replace
DAMAGED = (
    "it is truncated or damaged: copy it again, or use another checkpoint (checkpoints/last "
    "beside checkpoints/best), or retrain"
)


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    optimizer: dict[str, Any] | None = None  # a torch optimizer state_dict


def rng_state() -> dict[str, Any]:
    """Python's and torch's generator states, JSON-ready."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(
        torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [
                torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                for s in state["cuda"]
            ]
        )


def _flatten_optimizer(
    optimizer_state: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": optimizer_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint folder atomically, replacing any previous checkpoint there. A folder
    that holds anything else is refused, never deleted."""
    with replaced_dir(directory, OWNED, CheckpointError) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS)
        )
        full_state = dict(state)
        if optimizer_state is not None:
            tensors, meta = _flatten_optimizer(optimizer_state)
            save_file(tensors, str(tmp / OPTIMIZER))
            full_state["optimizer"] = meta
        (tmp / STATE).write_text(json.dumps(full_state, indent=2) + "\n", encoding="utf-8")


def _checkpoint_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(
            f"checkpoint {directory} not found: give a checkpoint folder (runs/BENCHMARK/"
            "checkpoints/best) or an exported model folder"
        )
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file, not a checkpoint: give the folder that holds {STATE} and "
            f"{WEIGHTS}"
        )
    return directory


def read_state(directory: str | Path) -> dict[str, Any]:
    path = _checkpoint_dir(directory) / STATE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a uit checkpoint: {STATE} is missing")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); {DAMAGED}") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: not a checkpoint state (no config section); {DAMAGED}")
    return state


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint, or a ``CheckpointError`` naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is not a uit checkpoint: {path.name} is missing")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own type, or OSError, for a bad file
        if type(error).__name__ != "SafetensorError" and not isinstance(error, OSError):
            raise
        raise CheckpointError(f"{path}: cannot be read ({error}); {DAMAGED}") from None


def first_non_finite(weights: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, or None."""
    for key, value in weights.items():
        # in float32 (no copy for float32 itself): isfinite has no kernel for some float8 types
        if value.is_floating_point() and not bool(torch.isfinite(value.float()).all()):
            return key
    return None


def check_finite(weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse the weights of ``path`` when one of them holds NaN or Inf: every feature they
    compute would be NaN, and every ranking meaningless."""
    key = first_non_finite(weights)
    if key is not None:
        raise CheckpointError(
            f"{path}: its tensor {key} holds NaN or Inf: the checkpoint holds non-finite weights "
            "(training diverged before it was saved, or the file was damaged), so every feature "
            "it computes would be NaN. Use an earlier checkpoint of the run, or retrain (with a "
            "lower optim.lr if the loss diverged)."
        )


def load_checkpoint(directory: str | Path, *, with_optimizer: bool = False) -> Checkpoint:
    """Read a checkpoint folder (tensors with safetensors, the rest as JSON)."""
    directory = Path(directory)
    state = read_state(directory)
    weights = read_tensors(directory / WEIGHTS)
    optimizer = None
    if with_optimizer:
        meta = state.get("optimizer")
        if meta is None or not (directory / OPTIMIZER).is_file():
            raise CheckpointError(
                f"{directory} holds no optimizer state; resume from the 'last' checkpoint"
            )
        optimizer = _unflatten_optimizer(read_tensors(directory / OPTIMIZER), meta)
    return Checkpoint(weights=weights, state=state, optimizer=optimizer)
