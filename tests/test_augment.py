"""The attribute-keeping text augmentation (design §4)."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
import torch

from uit.core.config import AugmentConfig
from uit.data.dataset import TrainDataset
from uit.data.prepared import Manifests
from uit.text.augment import augment_caption, build_augment

TEXT = "A woman with long black hair wears a red backpack."
WORDS = ["woman", "long", "black", "hair", "red", "backpack"]
REDUCED = "woman long black hair red backpack"


def draws(rng: random.Random | torch.Generator, n: int = 200, p: float = 0.5) -> list[str]:
    return [augment_caption(TEXT, WORDS, p, rng) for _ in range(n)]


def test_the_caption_becomes_its_attribute_words_joined_by_spaces() -> None:
    assert augment_caption(TEXT, WORDS, 1.0, random.Random(0)) == REDUCED


def test_deterministic_for_a_seed_with_either_generator() -> None:
    assert draws(random.Random(7)) == draws(random.Random(7))
    assert draws(random.Random(7)) != draws(random.Random(8))
    assert draws(torch.Generator().manual_seed(7)) == draws(torch.Generator().manual_seed(7))
    assert set(draws(torch.Generator().manual_seed(7))) == {TEXT, REDUCED}


def test_one_draw_per_call_whatever_the_outcome() -> None:
    for words in (WORDS, []):
        used, fresh = random.Random(3), random.Random(3)
        augment_caption(TEXT, words, 0.5, used)
        fresh.random()
        assert used.random() == fresh.random()


@pytest.mark.parametrize("p", [0.05, 0.2, 0.7])
def test_rate_is_about_p(p: float) -> None:
    n = 20_000
    rate = draws(random.Random(1), n, p).count(REDUCED) / n
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5 + 1e-3


def test_p_zero_never_and_p_one_always_changes() -> None:
    assert set(draws(random.Random(2), p=0.0)) == {TEXT}
    assert set(draws(random.Random(2), p=1.0)) == {REDUCED}


def test_a_caption_without_attribute_words_is_kept() -> None:
    assert augment_caption(TEXT, [], 1.0, random.Random(0)) == TEXT


def test_p_outside_zero_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="keep_attributes_p"):
        augment_caption(TEXT, WORDS, 1.5, random.Random(0))


def test_build_augment_binds_the_configured_p() -> None:
    always = build_augment(AugmentConfig(keep_attributes_p=1.0))
    never = build_augment(AugmentConfig(keep_attributes_p=0.0))
    assert always(TEXT, WORDS, random.Random(0)) == REDUCED
    assert never(TEXT, WORDS, random.Random(0)) == TEXT


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_the_training_dataset_reduces_a_share_p_of_captions(tmp_path: Path, p: float) -> None:
    """Over (epoch, index) draws, ``TrainDataset`` replaces a share of its captions by their
    attribute words that is ``keep_attributes_p`` within 4 binomial standard deviations, and a
    different subset each epoch."""
    captions, epochs = 500, 20
    ids = list(range(captions))
    common = {"image_id": ids, "pid": [i // 2 for i in ids], "split": ["train"] * captions}
    images = pl.DataFrame({**common, "path": [f"{i}.jpg" for i in ids]})
    texts = pl.DataFrame({**common, "caption_id": ids, "text": [f"{TEXT} ({i})" for i in ids]})
    dataset = TrainDataset(
        Manifests(images, texts, tmp_path, "rstpreid"), transform=lambda image: image,
        tokenizer=lambda batch: torch.zeros(len(batch), 8), seed=11,
        attribute_words={i: WORDS for i in ids},
        augment=build_augment(AugmentConfig(keep_attributes_p=p)),
    )  # fmt: skip
    reduced = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        reduced.append({i for i in ids if dataset.caption(i) == REDUCED})
    draws = captions * epochs
    share = sum(map(len, reduced)) / draws
    assert abs(share - p) <= 4 * (p * (1 - p) / draws) ** 0.5, share
    assert len({frozenset(chosen) for chosen in reduced}) == epochs  # new draws each epoch
