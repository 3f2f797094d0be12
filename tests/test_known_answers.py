"""``evaluate()`` on answers known by hand: a stub encoder that reads each identity back from the
image's pixels and the caption's words of a real prepared split, and maps it to a one-hot
feature. Every other evaluation test compares one uit path with another; these fail if images
are paired with the wrong identities or if text-to-image and image-to-text are swapped."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from tests.conftest import RecordFactory, make_record
from uit.core.config import ModelConfig
from uit.data.prepared import Manifests, read_manifests
from uit.model.build import build_tokenizer
from uit.raw.formats import SPECS
from uit.raw.prepare import prepare_benchmark
from uit.retrieval.evaluate import EvalOptions, Evaluation, evaluate

# The test split: four identities (A, B, C, D in gallery order), two images each. A's and B's
# images have two captions each, C's and D's one: 4 + 4 + 2 + 2 = 12 queries, 8 gallery images,
# so that text-to-image and image-to-text give different numbers. A pid is written into its
# images as a red level (pid * RED_STEP) and into its captions as a code word.
WORDS = {21: "alpha", 8: "bravo", 13: "charlie", 5: "delta"}  # A, B, C, D
A, B, C, D = WORDS
RED_STEP = 10
CAPTIONS = ("a person called {} in a red coat", "someone called {} carrying a bag")
TRAIN_PID = 2  # prepare wants a training split; it is not evaluated


def records() -> list[dict[str, Any]]:
    made = [make_record("cuhk-pedes", TRAIN_PID, "train/0002_0.png", ["a man"], "train")]
    for pid, word in WORDS.items():
        captions = [text.format(word) for text in CAPTIONS[: 2 if pid in (A, B) else 1]]
        for k in range(2):
            path = f"test/{pid:04d}_{k}.png"
            made.append(make_record("cuhk-pedes", pid, path, captions, "test"))
    return made


@pytest.fixture
def split(write_benchmark: RecordFactory, tmp_path: Path) -> Manifests:
    """The test split, prepared by ``prepare_benchmark`` from annotations in the real format, with
    PNG images (lossless: the red level survives) repainted in a colour that says their pid."""
    made = records()
    root = write_benchmark("cuhk-pedes", made)
    for record in made:
        colour = (record["id"] * RED_STEP, 40, 40)
        Image.new("RGB", (16, 32), colour).save(
            SPECS["cuhk-pedes"].imgs_dir(root) / record["file_path"]
        )
    prepare_benchmark("cuhk-pedes", root, tmp_path / "prepared")
    return read_manifests(tmp_path / "prepared").split("test")


TOKENIZER = build_tokenizer(ModelConfig(name="uit-tiny", context_length=32))


class PidEncoder(nn.Module):
    """Reads a pid back (an image's red level, a caption's code word), maps it through
    ``image_map`` / ``text_map`` (identity for pids not in them) and returns its one-hot."""

    image_size = (8, 4)
    image_mean = (0.0, 0.0, 0.0)
    image_std = (1.0, 1.0, 1.0)  # pixels stay in [0, 1]
    embed_dim = len(WORDS)

    def __init__(
        self, image_map: Mapping[int, int] | None = None, text_map: Mapping[int, int] | None = None
    ) -> None:
        super().__init__()
        self.image_map, self.text_map = dict(image_map or {}), dict(text_map or {})
        self.pid_of_token = {}
        for pid, word in WORDS.items():
            ids = TOKENIZER([word])[0]  # start, the word's tokens, end (the largest id), padding
            [token] = ids[1 : int(ids.argmax())].tolist()  # one token: the lookup is exact
            self.pid_of_token[token] = pid

    def one_hot(self, pids: list[int]) -> Tensor:
        order = list(WORDS)
        return torch.eye(len(order))[[order.index(pid) for pid in pids]]  # (B, D)

    def encode_image(self, images: Tensor) -> Tensor:
        red = images[:, 0].mean(dim=(1, 2)) * 255 / RED_STEP  # (B,)
        pids = [round(value) for value in red.tolist()]
        return self.one_hot([self.image_map.get(pid, pid) for pid in pids])

    def encode_text(self, text: Tensor) -> Tensor:
        pids = []
        for row in text.tolist():
            [pid] = [self.pid_of_token[token] for token in row if token in self.pid_of_token]
            pids.append(self.text_map.get(pid, pid))
        return self.one_hot(pids)


def scores(encoder: PidEncoder, split: Manifests) -> Evaluation:
    """``evaluate`` in batches of 3, so that batches split identities."""
    return evaluate(encoder, split, TOKENIZER, EvalOptions(batch_size=3))


def test_the_split_is_laid_out_as_the_derivations_assume(split: Manifests) -> None:
    assert split.images["pid"].to_list() == [A, A, B, B, C, C, D, D]
    assert split.captions["pid"].to_list() == [A] * 4 + [B] * 4 + [C] * 2 + [D] * 2


def test_a_perfect_encoder_scores_100_in_both_directions(split: Manifests) -> None:
    result = scores(PidEncoder(), split)
    assert result.metrics == {
        "t2i": {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0},
        "i2t": {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0},
    }
    # each query's two images come first, and the table names them by their own pid
    assert result.top_k["pid"].to_list() == split.captions["pid"].to_list()
    assert [hits[:3] for hits in result.top_k["hits"].to_list()] == [[True, True, False]] * 12
    pid_of_path = dict(zip(split.images["path"], split.images["pid"], strict=True))
    for pid, paths in zip(result.top_k["pid"], result.top_k["paths"].to_list(), strict=True):
        assert [pid_of_path[p] for p in paths[:2]] == [pid, pid]


def test_images_of_a_cycled_identity_find_nothing_first(split: Manifests) -> None:
    # Image features say A->B, B->C, C->D, D->A; captions tell the truth. Scores are 1 or 0, and
    # ties go to the lower index, so every query's relevant items follow the wrong identity's.
    # t2i (gallery A0 A1 B0 B1 C0 C1 D0 D1): a query of A ranks D's images first, then its
    #   own at 3, 4 (AP 5/12, INP 1/2); B: A's first, its own at 3, 4 (5/12, 1/2); C: B's first,
    #   then A's, its own at 5, 6 (AP 4/15, INP 1/3); D: C's, then A's and B's, its own at 7, 8
    #   (AP 11/56, INP 1/4). Over 4 + 4 + 2 + 2 queries: R1 0, R5 10/12, R10 12/12,
    #   mAP (8 * 5/12 + 2 * 4/15 + 2 * 11/56) / 12 = 1789/5040, mINP (4 + 2/3 + 1/2) / 12 = 31/72.
    # i2t (gallery: A's 4 captions, B's 4, C's 2, D's 2): an image of A finds B's captions, then
    #   its own at 5..8 (AP 307/840); B: C's, then A's, its own at 7..10 (AP 473/1680); C: D's,
    #   then the 8 of A and B, its own at 11, 12 (AP 17/132); D: A's, then B's and C's, its own at
    #   11, 12 (17/132). Two images each: R1 0, R5 2/8, R10 4/8,
    #   mAP (307/840 + 473/1680 + 2 * 17/132) / 4 = 16717/73920.
    result = scores(PidEncoder(image_map={A: B, B: C, C: D, D: A}), split)
    t2i, i2t = result.metrics["t2i"], result.metrics["i2t"]
    assert t2i["R1"] == 0.0 and i2t["R1"] == 0.0
    assert t2i["R5"] == pytest.approx(100 * 10 / 12) and t2i["R10"] == 100.0
    assert t2i["mAP"] == pytest.approx(100 * 1789 / 5040)
    assert t2i["mINP"] == pytest.approx(100 * 31 / 72)
    assert i2t["R5"] == 25.0 and i2t["R10"] == 50.0
    assert i2t["mAP"] == pytest.approx(100 * 16717 / 73920)
    assert [hits[0] for hits in result.top_k["hits"].to_list()] == [False] * 12


def test_swapping_half_the_identities_gives_the_counted_share(split: Manifests) -> None:
    # Image features swap A and B; C and D are right. t2i: the 8 captions of A and B find the
    # other's images first and their own at 3, 4 (AP 5/12, INP 1/2); C's and D's 4 are perfect:
    # R1 4/12, mAP (8 * 5/12 + 4) / 12 = 22/36, mINP (8 * 1/2 + 4) / 12 = 8/12. i2t: the 4
    # images of A and B find the other's 4 captions first and their own at 5..8 (AP 307/840):
    # R1 4/8, mAP (4 * 307/840 + 4) / 8 = 1147/1680. Different shares in the two directions: a
    # swap of t2i and i2t fails here.
    result = scores(PidEncoder(image_map={A: B, B: A}), split)
    t2i, i2t = result.metrics["t2i"], result.metrics["i2t"]
    assert t2i["R1"] == pytest.approx(100 * 4 / 12)
    assert t2i["mAP"] == pytest.approx(100 * 22 / 36)
    assert t2i["mINP"] == pytest.approx(100 * 8 / 12)
    assert i2t["R1"] == 50.0
    assert i2t["mAP"] == pytest.approx(100 * 1147 / 1680)
    assert t2i["R5"] == t2i["R10"] == i2t["R5"] == i2t["R10"] == 100.0


def test_a_wrong_caption_is_as_wrong_as_a_wrong_image(split: Manifests) -> None:
    # The same swap on the captions' side: the similarity matrix is the same, so are the scores.
    on_images = scores(PidEncoder(image_map={A: B, B: A}), split).metrics
    on_captions = scores(PidEncoder(text_map={A: B, B: A}), split).metrics
    assert on_captions == on_images
