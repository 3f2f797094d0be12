"""Checkpoints: safetensors tensors plus a JSON state; nothing is ever unpickled (DESIGN 8).

A checkpoint folder holds ``weights.safetensors`` (the objective: encoder and training heads),
``state.json`` (the whole config, epoch, step, best metric, optimizer hyper-parameters, RNG
states) and, for ``last``, ``optimizer.safetensors`` (Adam's moments). Folders are written beside
their final place and renamed in, so a reader sees a whole checkpoint or the previous one.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from uit.errors import UitError

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


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
    """Write a checkpoint folder atomically, replacing any previous one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS)
        )
        full_state = dict(state)
        if optimizer_state is not None:
            tensors, meta = _flatten_optimizer(optimizer_state)
            save_file(tensors, str(tmp / OPTIMIZER))
            full_state["optimizer"] = meta
        (tmp / STATE).write_text(json.dumps(full_state, indent=2) + "\n", encoding="utf-8")
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE
    if not path.is_file():
        raise UitError(f"{directory} is not a uit checkpoint: {STATE} is missing")
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UitError(f"{path}: not valid JSON ({error})") from None
    return state


def load_checkpoint(directory: str | Path, *, with_optimizer: bool = False) -> Checkpoint:
    """Read a checkpoint folder (tensors with safetensors, the rest as JSON)."""
    directory = Path(directory)
    state = read_state(directory)
    weights_path = directory / WEIGHTS
    if not weights_path.is_file():
        raise UitError(f"{directory} is not a uit checkpoint: {WEIGHTS} is missing")
    weights = load_file(str(weights_path))
    optimizer = None
    if with_optimizer:
        meta = state.get("optimizer")
        if meta is None or not (directory / OPTIMIZER).is_file():
            raise UitError(
                f"{directory} holds no optimizer state; resume from the 'last' checkpoint"
            )
        optimizer = _unflatten_optimizer(load_file(str(directory / OPTIMIZER)), meta)
    return Checkpoint(weights=weights, state=state, optimizer=optimizer)
