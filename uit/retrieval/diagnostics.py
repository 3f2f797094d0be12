"""Diagnostics that say whether an idea of UIT does its work, beside the retrieval metrics.

- ``caption_reliance``: does TIR restore colour from the caption? The colour error on the same
  masked patches of the same images, restored from each image's own caption and from another
  identity's; a decoder that ignores the text scores both alike.
- ``lookalike_r1`` and ``lookalike_margin``: does retrieval tell look-alikes apart? Each query
  is ranked only against its family's gallery images (identities that share most attributes,
  as the caller defines families), where a model that sees only the shared attributes is at
  chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from uit.model.objective import Objective, restoration_errors


@dataclass(frozen=True)
class CaptionReliance:
    """Mean absolute colour error (0-255 per channel) on TIR's masked patches, restored from
    each image's own caption (``own``) and from another identity's (``other``), beside the mean
    colour of the images (``mean_colour``); ``patches`` masked patches were scored."""

    own: float
    other: float
    mean_colour: float
    patches: float

    @property
    def gain(self) -> float:
        """How much the own caption lowers the error: about 0 when TIR ignores the text."""
        return self.other - self.own

    @classmethod
    def from_sums(cls, sums: dict[str, float]) -> CaptionReliance:
        """From ``caption_reliance_sums`` totals (summed over batches)."""
        patches = sums["patches"]
        own, other, mean = (sums[k] / max(patches, 1.0) for k in ("own", "other", "mean_colour"))
        return cls(own=own, other=other, mean_colour=mean, patches=patches)


def another_identity(pids: Tensor) -> Tensor:
    """(B,) pids -> (B,) for each sample the index of the next one, cyclically, of another
    identity: whose caption ``caption_reliance`` restores from instead of its own."""
    count = len(pids)
    rows = torch.arange(count, device=pids.device)
    candidates = (rows[:, None] + torch.arange(1, count, device=pids.device)) % count  # (B, B-1)
    differs = pids[candidates] != pids[:, None]
    if count < 2 or not bool(differs.any(dim=1).all()):
        raise ValueError("another_identity: the batch holds a single identity")
    return candidates[rows, differs.int().argmax(dim=1)]  # the first one that differs


@torch.no_grad()
def caption_reliance_sums(
    objective: Objective,
    images: Tensor,
    text: Tensor,
    other_text: Tensor,
    generator: torch.Generator,
) -> dict[str, float]:
    """``restoration_errors`` of ``images`` (B, 3, H, W) from ``text`` (B, L) and from
    ``other_text`` (B, L) on the same masks (drawn once from ``generator``, which advances as
    for one call): sums over the masked patches (``own``, ``other``, ``mean_colour``) and their
    count (``patches``), so that batches add up; ``CaptionReliance.from_sums`` averages."""
    replay = torch.Generator(device=generator.device)
    replay.set_state(generator.get_state())
    own = restoration_errors(objective, images, text, generator)
    other = restoration_errors(objective, images, other_text, replay)
    return {
        "own": float(own["tir"]),
        "other": float(other["tir"]),
        "mean_colour": float(own["mean_colour"]),
        "patches": float(own["patches"]),
    }


def caption_reliance(
    objective: Objective, images: Tensor, text: Tensor, pids: Tensor, seed: int = 0
) -> CaptionReliance:
    """``CaptionReliance`` of one batch, the other caption taken from ``another_identity``."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    other_text = text[another_identity(pids.to(text.device))]
    return CaptionReliance.from_sums(
        caption_reliance_sums(objective, images, text, other_text, generator)
    )


def _check_families(relevant: Tensor, family: Tensor) -> None:
    """Refuse a query whose family holds none of its relevant gallery images."""
    missing = (~(relevant & family).any(dim=1)).nonzero().flatten()
    if len(missing):
        raise ValueError(
            f"look-alike gallery: query {int(missing[0])} has no relevant image in its family"
        )


def lookalike_r1(
    similarity: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    query_families: Tensor,
    gallery_families: Tensor,
) -> float:
    """R@1 in percent of text-to-image ``similarity`` (Q, G) when each query is ranked only
    against the gallery images of its own family (``*_families``: one family id per query and
    per gallery image). Ties go to the lower gallery index, as in ``uit.retrieval.metrics``."""
    relevant = query_pids[:, None] == gallery_pids[None, :]  # (Q, G)
    family = query_families[:, None] == gallery_families[None, :]
    _check_families(relevant, family)
    top = similarity.float().masked_fill(~family, float("-inf")).argmax(dim=1)  # first maximum
    return float((gallery_pids[top] == query_pids).float().mean()) * 100


def lookalike_margin(
    similarity: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    query_families: Tensor,
    gallery_families: Tensor,
) -> float:
    """Mean over queries of the best relevant image's similarity minus the best look-alike's
    (same family, another pid); queries without a look-alike are left out (NaN if all are)."""
    relevant = query_pids[:, None] == gallery_pids[None, :]  # (Q, G)
    family = query_families[:, None] == gallery_families[None, :]
    _check_families(relevant, family)
    scores = similarity.float()
    best_true = scores.masked_fill(~relevant, float("-inf")).amax(dim=1)  # (Q,)
    best_lookalike = scores.masked_fill(~family | relevant, float("-inf")).amax(dim=1)
    has = torch.isfinite(best_lookalike)
    return float((best_true - best_lookalike)[has].mean())
