"""How well TIR restores colour on held-out images (the test split): the colour error of its
restorations on the masked patches, beside the mean colour of the split (the trivial prediction
it must beat) and the true grayscale of each pixel (an oracle: it knows the masked patches'
luminance, which TIR does not), in 0-255 units; and whether it reads the caption: the same
images and masks restored from another identity's caption (``tir_other``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl
import torch

from uit.data.images import load_rgb
from uit.data.transforms import build_eval_transform
from uit.model.objective import Objective
from uit.retrieval.diagnostics import another_identity, caption_reliance_sums

if TYPE_CHECKING:
    from uit.data.dataset import Tokenizer
    from uit.data.prepared import Manifests

RESTORATION_SEED = 0  # the masks drawn, so that every model is scored on the same patches


def restoration_quality(
    objective: Objective, split: Manifests, tokenizer: Tokenizer, batch_size: int = 64
) -> dict[str, float]:
    """Mean absolute colour error (0-255, per channel) on the masked patches of every image of
    ``split``: ``tir``, each restored from its first caption; ``tir_other``, the same masks
    restored from the first caption of the next image of another identity
    (``another_identity``); the ``mean_colour`` baseline and the ``grayscale`` oracle;
    ``patches`` says how many masked patches were scored."""
    objective.eval()
    encoder = objective.encoder
    transform = build_eval_transform(encoder.image_size, encoder.image_mean, encoder.image_std)
    first = split.captions.group_by("image_id", maintain_order=True).agg(pl.col("text").first())
    captions = dict(zip(first["image_id"].to_list(), first["text"].to_list(), strict=True))
    rows = [row for row in split.images.iter_rows(named=True) if row["image_id"] in captions]
    others = another_identity(torch.tensor([row["pid"] for row in rows])).tolist()
    device = next(objective.parameters()).device
    generator = torch.Generator(device=device).manual_seed(RESTORATION_SEED)
    totals: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = torch.stack([transform(load_rgb(split.imgs_dir / r["path"])) for r in chunk])
        text = tokenizer([captions[r["image_id"]] for r in chunk])
        other = tokenizer(
            [captions[rows[i]["image_id"]] for i in others[start : start + len(chunk)]]
        )
        sums = caption_reliance_sums(objective, images.to(device), text.to(device),
                                     other.to(device), generator)  # fmt: skip
        for name, value in sums.items():
            if name in ("own", "other"):  # the same sums as tir and tir_other
                continue
            totals[name] = totals.get(name, 0.0) + float(value)
    patches = totals.pop("patches", 0.0)
    result = {name: value / max(patches, 1.0) for name, value in totals.items()}
    return {**result, "patches": patches}
