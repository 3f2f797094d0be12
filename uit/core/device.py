"""Device and precision from config: CUDA with bf16 autocast when present, fp32 on the CPU."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch

from uit.core.errors import ConfigError

DEVICES = "auto, cpu, cuda or cuda:N (N a CUDA device's number)"


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when available; ``cpu``, ``cuda`` and ``cuda:N`` are taken as they
    are, if this machine has them. Anything else is a ``ConfigError`` naming ``setting`` (the key
    or option the name came from) and the values it takes."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    found = re.fullmatch(r"(cpu|cuda)(?::(\d{1,4}))?", name.strip().lower())
    if found is None or (found[1] == "cpu" and found[2] is not None):
        raise ConfigError(f"{setting} {name!r} is not a device uit runs on: use {DEVICES}")
    if found[1] == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"{setting}: {name} was asked for but no CUDA device is available; "
                          "use cpu (or auto)")  # fmt: skip
    if found[2] is not None and int(found[2]) >= count:
        raise ConfigError(f"{setting} {name}: this machine has {count} CUDA device(s), cuda:0 "
                          f"to cuda:{count - 1}; use one of them, cuda or auto")  # fmt: skip
    return torch.device(f"cuda:{found[2]}" if found[2] is not None else "cuda")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (``auto``: bf16 on CUDA, fp32 elsewhere)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
