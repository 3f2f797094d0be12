"""Image transforms (design §4) and per-sample determinism.

Training: resize, horizontal flip 0.5, pad 10 + random crop, CLIP mean/std, random erasing (p 0.5,
area 0.02-0.4, filled with the mean, i.e. 0 after normalisation). Evaluation: resize + normalise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

Transform = Callable[[Image.Image], torch.Tensor]


def build_train_transform(
    size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> Transform:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.Pad(10),
        v2.RandomCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
        v2.RandomErasing(p=0.5, scale=(0.02, 0.4), value=0.0),
    ])  # fmt: skip


def build_eval_transform(
    size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> Transform:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])  # fmt: skip


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, index), stable across processes and runs."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def seeded(seed: int, function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` with torch's CPU generator set to ``seed``, leaving the caller's intact.

    torchvision's random transforms draw from the global generator; seeding it per sample makes a
    sample's augmentation depend only on (seed, epoch, index), not on workers or resumption.
    """
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone: torch.manual_seed also queues a lazy seeding of every
        # accelerator backend, and each queues a formatted stack trace, per sample.
        torch.default_generator.manual_seed(seed)
        return function(*args)
