"""Torch datasets over prepared manifests: training samples, gallery images, queries.

Training uses one sample per caption with pids relabelled to 0..N-1 over the training identities
(design §3.2). A sample's augmentation (image, attribute-keeping, token masking) depends only on
(seed, epoch, index), so results do not depend on the number of workers or on resuming.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
from torch.utils.data import Dataset

from uit.core.errors import DataError
from uit.data.images import load_rgb
from uit.data.prepared import Manifests
from uit.data.transforms import Transform, sample_seed, seeded

if TYPE_CHECKING:
    from uit.text.parsed import TaggedWords

Tokenizer = Callable[[list[str]], torch.Tensor]
Augment = Callable[[str, Sequence[str], random.Random], str]
# (tokens, words, tags, rng) -> masked tokens: uit.text.masking.TokenMasker
MaskTokens = Callable[[torch.Tensor, Sequence[str], Sequence[str], random.Random], torch.Tensor]


def held_out_count(identities: int, fraction: float) -> int:
    """How many of ``identities`` training identities model selection holds out."""
    return max(1, round(identities * fraction))


def hold_out_identities(
    train: Manifests, fraction: float, seed: int
) -> tuple[Manifests, Manifests]:
    """Split a training split into (train, held-out val) by identity, deterministically.

    Used for model selection on benchmarks without a val split (ICFG-PEDES).
    """
    pids = sorted(train.images["pid"].unique().to_list())
    count = held_out_count(len(pids), fraction)
    if count >= len(pids):
        raise DataError(f"{train.benchmark}: too few training identities ({len(pids)}) to hold out")
    held = set(random.Random(sample_seed(seed, 17)).sample(pids, count))

    def part(keep: bool) -> Manifests:
        def chosen(frame: pl.DataFrame) -> pl.DataFrame:
            inside = pl.col("pid").is_in(sorted(held))
            return frame.filter(~inside if keep else inside)

        return Manifests(
            chosen(train.images), chosen(train.captions), train.imgs_dir, train.benchmark
        )

    return part(True), part(False)


class TrainDataset(Dataset[dict[str, Any]]):
    """One sample per caption: (augmented image, tokenized, maybe augmented caption, label).

    ``augment`` may reduce a caption to its attribute words; ``mask_tokens`` then masks its
    tokens, as the released code orders them; it needs each caption's parsed ``tagged_words``.
    ``random_transform`` False says ``transform`` draws nothing (resize only), so it is not run
    under a per-sample seed.
    """

    def __init__(
        self,
        train: Manifests,
        transform: Transform,
        tokenizer: Tokenizer,
        *,
        seed: int = 0,
        attribute_words: Mapping[int, Sequence[str]] | None = None,
        augment: Augment | None = None,
        tagged_words: Mapping[int, TaggedWords] | None = None,
        mask_tokens: MaskTokens | None = None,
        random_transform: bool = True,
    ) -> None:
        pids = sorted(train.images["pid"].unique().to_list())
        self.label_of = {pid: label for label, pid in enumerate(pids)}
        paths = dict(
            zip(train.images["image_id"].to_list(), train.images["path"].to_list(), strict=True)
        )
        rows = train.captions.sort("caption_id")
        self.caption_ids: list[int] = rows["caption_id"].to_list()
        self.texts: list[str] = rows["text"].to_list()
        self.paths = [train.imgs_dir / paths[i] for i in rows["image_id"].to_list()]
        self.labels = [self.label_of[p] for p in rows["pid"].to_list()]
        self.transform, self.tokenizer = transform, tokenizer
        self.random_transform = random_transform  # False: no generator to fork and seed
        self.seed, self.epoch = seed, 0
        self.attribute_words = attribute_words or {}
        self.augment = augment
        self.tagged_words = tagged_words or {}
        self.mask_tokens = mask_tokens
        if mask_tokens is not None:
            _check_tagged(self.caption_ids, self.tagged_words, train.benchmark)

    @property
    def num_classes(self) -> int:
        return len(self.label_of)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.texts)

    def caption(self, index: int) -> str:
        """The caption as training sees it this epoch (maybe reduced to its attribute words)."""
        text = self.texts[index]
        if self.augment is None:
            return text
        words = self.attribute_words.get(self.caption_ids[index], ())
        return self.augment(
            text, words, random.Random(sample_seed(self.seed, self.epoch, index, 1))
        )

    def text_tokens(self, index: int) -> torch.Tensor:
        """The caption's token ids as training sees them this epoch (augmented, maybe masked)."""
        text = self.caption(index)
        tokens = self.tokenizer([text])[0]
        if self.mask_tokens is None:
            return tokens
        tagged = self.tagged_words[self.caption_ids[index]]
        if text != self.texts[index]:  # the augmentation kept only the attribute words
            tagged = tagged.attributes_only()
        rng = random.Random(sample_seed(self.seed, self.epoch, index, 2))
        return self.mask_tokens(tokens, tagged.words, tagged.tags, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb = load_rgb(self.paths[index])
        if self.random_transform:
            pixels = seeded(sample_seed(self.seed, self.epoch, index), self.transform, rgb)
        else:
            pixels = self.transform(rgb)
        text = self.text_tokens(index)
        return {"images": pixels, "text": text, "pids": self.labels[index], "index": index}


def _check_tagged(
    caption_ids: Sequence[int], tagged: Mapping[int, TaggedWords], benchmark: str
) -> None:
    missing = [cid for cid in caption_ids if cid not in tagged]
    if missing:
        raise DataError(
            f"{benchmark}: augment.mask_tokens needs the parsed words of every training caption, "
            f"but {len(missing)} have none (caption_id {missing[0]} first): parse this prepared "
            "benchmark again with `uit data parse`"
        )


class ImageDataset(Dataset[torch.Tensor]):
    """Gallery images for evaluation or search."""

    def __init__(self, paths: Sequence[Path], transform: Transform) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        result: torch.Tensor = self.transform(load_rgb(self.paths[index]))
        return result
