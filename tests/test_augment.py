"""The attribute-keeping text augmentation (DESIGN 4)."""

from __future__ import annotations

import random

import pytest
import torch

from uit.config import AugmentConfig
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
