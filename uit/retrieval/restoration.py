"""How well TIR restores colour on held-out images (the test split): the colour error of its
restorations on the masked patches, beside the two trivial predictions it must beat (the true
grayscale of each pixel, and the mean colour of the split), in 0-255 units."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
import torch

from uit.data.images import load_rgb
from uit.data.transforms import build_eval_transform
from uit.model.objective import Objective, restoration_errors

if TYPE_CHECKING:
    from uit.data.dataset import Tokenizer
    from uit.data.prepared import Manifests

RESTORATION_SEED = 0  # the masks drawn, so that every model is scored on the same patches


def restoration_quality(
    objective: Objective, split: Manifests, tokenizer: Tokenizer, batch_size: int = 64
) -> dict[str, float]:
    """Mean absolute colour error (0-255, per channel) on the masked patches of every image of
    ``split``, each restored from its first caption, for TIR and both baselines; ``patches``
    says how many masked patches were scored."""
    objective.eval()
    encoder = objective.encoder
    transform = build_eval_transform(encoder.image_size, encoder.image_mean, encoder.image_std)
    first = split.captions.group_by("image_id", maintain_order=True).agg(pl.col("text").first())
    captions = dict(zip(first["image_id"].to_list(), first["text"].to_list(), strict=True))
    rows = [row for row in split.images.iter_rows(named=True) if row["image_id"] in captions]
    device = next(objective.parameters()).device
    generator = torch.Generator(device=device).manual_seed(RESTORATION_SEED)
    totals: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = torch.stack([transform(load_rgb(split.imgs_dir / r["path"])) for r in chunk])
        text = tokenizer([captions[r["image_id"]] for r in chunk])
        sums = restoration_errors(objective, images.to(device), text.to(device), generator)
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    patches = totals.pop("patches", 0.0)
    result = {name: value / max(patches, 1.0) for name, value in totals.items()}
    return {**result, "patches": patches}
