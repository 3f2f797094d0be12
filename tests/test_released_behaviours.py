"""The released training code's hidden behaviours, as options: caption token masking
(``augment.mask_tokens``) and the released identity sampler (``train.random_instances``)."""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from pathlib import Path

import polars as pl
import pytest
import torch

from uit.core.config import AugmentConfig, ModelConfig, parse_config
from uit.core.errors import ConfigError, DataError
from uit.data.dataset import TrainDataset
from uit.data.prepared import Manifests
from uit.model import build_tokenizer
from uit.text.masking import (
    MASK_TOKEN_ID,
    attribute_flags,
    build_token_masker,
    mask_caption,
)
from uit.text.parsed import PARSED_FILE, SCHEMA, TaggedWords, read_tagged_words
from uit.training.benchmark import train_benchmark
from uit.training.sampler import IdentityBatchSampler
from uit.training.train import _build_run

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(ModelConfig(name="uit-tiny", context_length=32))


def caption(word_ids: list[int], length: int = 48) -> torch.Tensor:
    """SOT, the ids, EOT, zero padding."""
    ids = [SOT, *word_ids, EOT]
    return torch.tensor(ids + [0] * (length - len(ids)))


def alternating(length: int, words: int) -> torch.Tensor:
    """Attribute flags for positions 1..words: every other one is an attribute token."""
    flags = torch.zeros(length, dtype=torch.bool)
    flags[1 : words + 1 : 2] = True
    return flags


# -- caption token masking ------------------------------------------------------------------------


def test_masking_rates_for_attribute_and_other_tokens() -> None:
    n, words = 3000, 40
    rng = random.Random(0)
    base = caption([rng.randrange(1, MASK_TOKEN_ID) for _ in range(words)])
    flags = alternating(len(base), words)
    masked = torch.stack([mask_caption(base, flags, 0.3, 0.05, random.Random(s)) for s in range(n)])
    differs = masked[:, 2 : words + 1] != base[2 : words + 1]  # 1 also takes at-least-one masks
    changed = {a: int(differs[:, flags[2 : words + 1] == a].sum()) for a in (True, False)}
    trials = {a: n * int((flags[2 : words + 1] == a).sum()) for a in (True, False)}
    for attribute, p in ((True, 0.3), (False, 0.05)):
        expected = p * 0.9  # chosen, then masked (80%) or replaced (10%); 10% stay as they are
        rate = changed[attribute] / trials[attribute]
        bound = 5 * (expected * (1 - expected) / trials[attribute]) ** 0.5
        assert abs(rate - expected) < bound, (attribute, rate, expected)


def test_chosen_tokens_split_80_10_10() -> None:
    words = 40
    rng = random.Random(1)
    base = caption([rng.randrange(1, MASK_TOKEN_ID) for _ in range(words)])
    flags = torch.ones(len(base), dtype=torch.bool)
    masks = randoms = 0
    for seed in range(2000):
        masked = mask_caption(base, flags, 0.5, 0.5, random.Random(seed))
        new = masked[2 : words + 1][masked[2 : words + 1] != base[2 : words + 1]]
        masks += int((new == MASK_TOKEN_ID).sum())
        randoms += int((new != MASK_TOKEN_ID).sum())
        assert bool(((new >= 1) & (new <= MASK_TOKEN_ID)).all())
    share = masks / (masks + randoms)
    assert abs(share - 8 / 9) < 5 * (8 / 9 * 1 / 9 / (masks + randoms)) ** 0.5


class Scripted(random.Random):
    """A generator whose ``random()`` returns the given draws in order."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)

    def getrandbits(self, k: int) -> int:  # keeps randrange off the scripted draws
        return super().getrandbits(k)


def test_each_share_of_a_chosen_token_exactly() -> None:
    base = caption([11, 12, 13, 14])
    flags = torch.tensor([False, True, True, True, False] + [False] * 43)
    # attribute p 0.5: 0.5 * 0.79 -> mask, 0.5 * 0.85 -> random, 0.5 * 0.95 -> kept;
    # other p 0.1: a draw of 0.1 -> not chosen
    masked = mask_caption(base, flags, 0.5, 0.1, Scripted([0.395, 0.425, 0.475, 0.1]))
    assert masked[1] == MASK_TOKEN_ID
    assert masked[2] not in (12, MASK_TOKEN_ID) and 1 <= masked[2] < MASK_TOKEN_ID
    assert masked[3:5].tolist() == [13, 14]  # kept: chosen, so no at-least-one mask either


def test_at_least_one_token_is_masked_but_never_sot_eot_or_padding() -> None:
    base = caption([5, 6, 7])
    nothing = torch.zeros(len(base), dtype=torch.bool)
    masked = mask_caption(base, nothing, 0.0, 0.0, random.Random(0))
    assert masked.tolist() == [SOT, MASK_TOKEN_ID, 6, 7, EOT] + [0] * 43
    empty = caption([])
    assert torch.equal(mask_caption(empty, nothing, 1.0, 1.0, random.Random(0)), empty)
    everything = torch.ones(len(base), dtype=torch.bool)
    for seed in range(200):
        masked = mask_caption(base, everything, 1.0, 1.0, random.Random(seed))
        assert masked[0] == SOT and masked[4] == EOT and not masked[5:].any()


def test_eot_is_still_where_the_encoder_pools() -> None:
    full = torch.tensor([SOT, *range(100, 130), EOT])  # truncated: EOT last
    for base in (caption([3, 49404, 7, 250]), full):
        eot = int(base.argmax())
        flags = torch.ones(len(base), dtype=torch.bool)
        for seed in range(300):
            masked = mask_caption(base, flags, 1.0, 1.0, random.Random(seed))
            assert int(masked.argmax()) == eot and (masked == EOT).sum() == 1


def test_masking_is_deterministic_for_a_seed_and_leaves_its_input_alone() -> None:
    base = caption(list(range(300, 330)))
    before = base.clone()
    flags = alternating(len(base), 30)
    runs = [mask_caption(base, flags, 0.3, 0.05, random.Random(s)) for s in (4, 4, 5)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert torch.equal(base, before)  # the released code masked the caption in place


def test_every_bpe_token_of_a_word_takes_its_tag(tokenizer) -> None:
    masker = build_token_masker(AugmentConfig(mask_tokens=True), tokenizer)
    assert masker is not None
    text = "A woman can't hide her trosuers."
    words = ["A", "woman", "ca", "n't", "hide", "her", "trosuers", "."]
    tags = ["DT", "NN", "MD", "RB", "VB", "PRP$", "NNS", "."]
    tokens = tokenizer([text])[0]
    pieces = [tokenizer.decoder[i] for i in tokens.tolist()[1 : int(tokens.argmax())]]
    assert pieces == ["a</w>", "woman</w>", "can</w>", "'t</w>", "hide</w>", "her</w>",
                      "tro", "su", "ers</w>", ".</w>"]  # fmt: skip
    flags = attribute_flags(tokens, masker.pieces, words, tags)
    assert flags[1 : int(tokens.argmax())].tolist() == [False, True, False, False, False, False,
                                                        True, True, True, False]  # fmt: skip
    other = attribute_flags(tokens, masker.pieces, ["A", "man", "can't"], ["DT", "NN", "MD"])
    assert not other.any()  # the text does not spell these words: from "woman" on, other words


def test_build_token_masker_is_off_by_default_and_needs_clip_vocabulary(tokenizer) -> None:
    assert build_token_masker(AugmentConfig(), tokenizer) is None
    masker = build_token_masker(AugmentConfig(mask_tokens=True, mask_other_p=0.2), tokenizer)
    assert masker is not None and (masker.attribute_p, masker.other_p) == (0.3, 0.2)
    with pytest.raises(ConfigError, match="mask_tokens"):
        build_token_masker(AugmentConfig(mask_tokens=True), lambda texts: torch.zeros(1))


# -- the dataset and the data path ---------------------------------------------------------------

TEXTS = ["a woman in a red coat", "a man with a black backpack", "the girl wears blue jeans",
         "a boy in white shoes"]  # fmt: skip
TAGS = [["DT", "NN", "IN", "DT", "JJ", "NN"], ["DT", "NN", "IN", "DT", "JJ", "NN"],
        ["DT", "NN", "VBZ", "JJ", "NNS"], ["DT", "NN", "IN", "JJ", "NNS"]]  # fmt: skip


def manifests(copies: int = 10) -> Manifests:
    n = len(TEXTS) * copies
    pids, split = [i % 8 for i in range(n)], ["train"] * n
    images = pl.DataFrame({"image_id": range(n), "pid": pids, "split": split,
                           "path": [f"{i}.png" for i in range(n)]})  # fmt: skip
    captions = pl.DataFrame({"caption_id": range(n), "image_id": range(n),
                             "pid": pids, "split": split,
                             "text": [TEXTS[i % len(TEXTS)] for i in range(n)]})  # fmt: skip
    return Manifests(images, captions, Path("imgs"), "cuhk-pedes")


def tagged(n: int) -> dict[int, TaggedWords]:
    return {i: TaggedWords(tuple(TEXTS[i % 4].split()), tuple(TAGS[i % 4])) for i in range(n)}


def test_the_dataset_masks_only_when_asked(tokenizer) -> None:
    train = manifests()
    plain = TrainDataset(train, lambda image: image, tokenizer, seed=3)
    masker = build_token_masker(AugmentConfig(mask_tokens=True), tokenizer)
    masked = TrainDataset(train, lambda image: image, tokenizer, seed=3,
                          tagged_words=tagged(len(plain)), mask_tokens=masker)  # fmt: skip
    originals = [tokenizer([masked.texts[i]])[0] for i in range(len(plain))]
    assert all(torch.equal(plain.text_tokens(i), originals[i]) for i in range(len(plain)))
    first = [masked.text_tokens(i) for i in range(len(plain))]
    changed = sum(not torch.equal(a, b) for a, b in zip(first, originals, strict=True))
    assert changed > 0.8 * len(plain)  # at least one token chosen each; 10% of those kept
    assert all(torch.equal(masked.text_tokens(i), first[i]) for i in range(len(plain)))
    masked.set_epoch(1)
    assert any(not torch.equal(masked.text_tokens(i), first[i]) for i in range(len(plain)))


def test_masking_follows_the_attribute_keeping_augmentation(tokenizer) -> None:
    train = manifests(copies=250)
    n = train.captions.height
    words = {i: [w for w, t in zip(TEXTS[i % 4].split(), TAGS[i % 4], strict=True)
                 if t[:2] in ("NN", "JJ")] for i in range(n)}  # fmt: skip
    masker = build_token_masker(AugmentConfig(mask_tokens=True, mask_other_p=0.0), tokenizer)
    dataset = TrainDataset(train, lambda image: image, tokenizer, seed=0,
                           attribute_words=words, augment=lambda text, w, rng: " ".join(w),
                           tagged_words=tagged(n), mask_tokens=masker)  # fmt: skip
    # every word kept is a noun or adjective: each is masked at the attribute rate (0.3)
    changed = trials = 0
    for i in range(n):
        original = tokenizer([dataset.caption(i)])[0]
        masked = dataset.text_tokens(i)
        end = int(original.argmax())
        trials += end - 2
        changed += int((masked[2:end] != original[2:end]).sum())
    assert abs(changed / trials - 0.27) < 5 * (0.27 * 0.73 / trials) ** 0.5


def test_masking_needs_every_captions_parsed_words(tokenizer) -> None:
    masker = build_token_masker(AugmentConfig(mask_tokens=True), tokenizer)
    with pytest.raises(DataError, match="caption_id 3 first"):
        TrainDataset(manifests(1), lambda image: image, tokenizer, tagged_words=tagged(3),
                     mask_tokens=masker)  # fmt: skip


def test_training_with_masking_needs_the_parsed_folder(tmp_path: Path) -> None:
    cfg = parse_config({"augment": {"keep_attributes_p": 0.0, "mask_tokens": True}})
    with pytest.raises(DataError, match=r"augment.mask_tokens needs the parsed captions"):
        train_benchmark(cfg, tmp_path / "prepared", tmp_path / "run")


def test_read_tagged_words(tmp_path: Path) -> None:
    rows = {"caption_id": [7], "tokens": [["a", "red", "coat"]], "tags": [["DT", "JJ", "NN"]],
            "attribute_words": [["red", "coat"]], "attribute_phrases": [["red coat"]]}  # fmt: skip
    pl.DataFrame(rows, schema=SCHEMA).write_parquet(tmp_path / PARSED_FILE)
    found = read_tagged_words(tmp_path)
    assert found == {7: TaggedWords(("a", "red", "coat"), ("DT", "JJ", "NN"))}
    assert found[7].attributes_only() == TaggedWords(("red", "coat"), ("JJ", "NN"))


def test_build_run_passes_both_options_through() -> None:
    cfg = parse_config({
        "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32, "context_length": 32},
        "augment": {"keep_attributes_p": 0.0, "mask_tokens": True},
        "train": {"batch_size": 8, "random_instances": True, "num_workers": 0, "device": "cpu"},
        "tir": {"decoder_layers": 1},
    })  # fmt: skip
    train = manifests()
    run = _build_run(cfg, train, None, None, tagged(train.captions.height))
    assert run.sampler.random_instances and run.dataset.mask_tokens is not None


# -- the released sampler -------------------------------------------------------------------------


def test_random_instances_batches_are_full_deterministic_and_shared_between_ranks() -> None:
    labels = [i % 60 for i in range(60 * 5 + 17)]
    sampler = IdentityBatchSampler(labels, 16, 2, seed=2, random_instances=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0 and all(len(b) == 16 for b in batches)
    assert {len({labels[i] for i in b}) for b in batches} - set(range(8, 17)) == set()
    assert list(IdentityBatchSampler(labels, 16, 2, seed=2, random_instances=True)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    parts = [list(IdentityBatchSampler(labels, 16, 2, seed=2, rank=r, world_size=2,
                                       random_instances=True)) for r in (0, 1)]  # fmt: skip
    assert [a + b for a, b in zip(*parts, strict=True)] == batches


def test_random_instances_gives_the_released_identities_per_batch() -> None:
    labels = [i // 6 for i in range(2000 * 6)]  # 2,000 identities with 6 captions (CUHK-PEDES: ~6)
    means = []
    for epoch in range(3):
        sampler = IdentityBatchSampler(labels, 128, 2, seed=0, random_instances=True)
        sampler.set_epoch(epoch)
        counts = [len({labels[i] for i in batch}) for batch in sampler.plan()]
        means.append((statistics.mean(counts[: len(counts) // 10]), statistics.mean(counts)))
    early, overall = (statistics.mean(values) for values in zip(*means, strict=True))
    assert 82 < early < 89  # 128 / 1.5: half the identities bring two captions at a time
    assert 90 < overall < 100  # later the one-caption identities dominate (released: ~95)
    fixed = IdentityBatchSampler(labels, 128, 2, seed=0).plan()
    assert {len({labels[i] for i in batch}) for batch in fixed} == {64}


def digest(sampler: IdentityBatchSampler) -> str:
    return hashlib.sha256(json.dumps(sampler.plan()).encode()).hexdigest()[:16]


def test_fixed_instances_plans_are_unchanged() -> None:
    # Digests of the plans made by the sampler before random_instances existed.
    labels = [i % 37 for i in range(37 * 5 + 11)]
    for epoch, expected in ((0, "af5dd95bc9ef911c"), (3, "a7d9fd17ae0c3d7b")):
        sampler = IdentityBatchSampler(labels, 16, 2, seed=5)
        sampler.set_epoch(epoch)
        assert digest(sampler) == expected
        off = IdentityBatchSampler(labels, 16, 2, seed=5, random_instances=False)
        off.set_epoch(epoch)
        assert off.plan() == sampler.plan()
    assert digest(IdentityBatchSampler([i % 9 for i in range(9)], 6, 3, seed=2)) == (
        "fb87a9143cc3f0b6"
    )
