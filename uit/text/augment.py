"""The attribute-keeping text augmentation of UIT (design §4).

With probability ``p`` per training sample, a caption is replaced by its attribute words joined by
spaces ("A woman with long black hair wears a red backpack." -> "woman long black hair red
backpack"), so the model learns to match the words that identify a person without the sentence
around them. The attribute words come from the ``parse`` stage (``uit.parsing.parse``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from uit.core.config import AugmentConfig

if TYPE_CHECKING:
    import torch


def uniform(rng: random.Random | torch.Generator) -> float:
    """One draw from U[0, 1) of a ``random.Random`` or a ``torch.Generator``."""
    if isinstance(rng, random.Random):
        return rng.random()
    import torch

    return float(torch.rand((), generator=rng))


def augment_caption(
    text: str, attribute_words: Sequence[str], p: float, rng: random.Random | torch.Generator
) -> str:
    """``text``, or with probability ``p`` its attribute words joined by spaces.

    Exactly one number is drawn from ``rng`` per call, whatever the outcome, so a seeded
    generator gives the same augmentation for the same sequence of samples. A caption without
    attribute words is kept as it is.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment.keep_attributes_p must be in [0, 1], got {p}")
    keep_attributes = uniform(rng) < p
    if keep_attributes and attribute_words:
        return " ".join(attribute_words)
    return text


def build_augment(cfg: AugmentConfig) -> Callable[[str, Sequence[str], random.Random], str]:
    """``augment_caption`` with ``cfg.keep_attributes_p`` bound: ``augment(text, words, rng)``."""
    p = cfg.keep_attributes_p

    def augment(text: str, attribute_words: Sequence[str], rng: random.Random) -> str:
        return augment_caption(text, attribute_words, p, rng)

    return augment
