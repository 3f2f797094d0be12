"""The diagnostics of UIT's ideas as the evaluate stage computes them: attribute binding on
counterfactual captions (a stub encoder that binds every word scores 100%, one blind to the
attribute words 50%), look-alike retrieval from a synthetic benchmark's families, and how the
report words them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
import torch

from uit.app.report import diagnostics_rows, restoration_line
from uit.data.prepared import Manifests
from uit.parsing.lexicon import PERSON_VOCABULARY
from uit.retrieval.diagnostics import (
    _BINDING_GROUPS,
    binding_scores,
    counterfactuals,
    paraphrases,
    read_families,
    read_identities,
)
from uit.retrieval.evaluate import EvalOptions, attribute_binding, lookalike_scores
from uit.synth.captions import STYLES

CAPTIONS = [
    (0, "A woman in a red shirt and blue jeans carries a black backpack."),
    (1, "The man wears a gray T-shirt, grey shorts and white shoes."),
    (2, "Someone standing."),  # no attribute word binding knows
]
WORDS = {
    0: ["woman", "red", "shirt", "blue", "jeans", "black", "backpack"],
    1: ["man", "gray", "T-shirt", "grey", "shorts", "white", "shoes"],
    2: [],
}


def test_every_binding_word_is_in_the_parsers_lexicon() -> None:
    lexicon = {w for _, text in PERSON_VOCABULARY.values() for w in text.split()}
    assert set(_BINDING_GROUPS) <= lexicon


def test_counterfactuals_change_one_word_into_another_of_its_kind_and_number() -> None:
    made = counterfactuals(CAPTIONS, WORDS, per_caption=10)
    assert made == counterfactuals(CAPTIONS, WORDS, per_caption=10)  # seeded
    assert {c.caption_id for c in made} == {0, 1}
    for c in made:
        kind, groups, own = _BINDING_GROUPS[c.word]
        assert c.kind == kind
        assert c.substitute in [g[0] for i, g in enumerate(groups) if i != own]  # no synonym
        original = dict(CAPTIONS)[c.caption_id]
        changed = [(a, b) for a, b in zip(original.split(), c.text.split(), strict=True) if a != b]
        assert len(changed) == 1, c  # one word, the rest as written
    by_word = {(c.caption_id, c.word): c for c in made}
    assert by_word[(0, "woman")].text.startswith("A man in")
    assert by_word[(1, "shorts")].substitute in {"trousers", "jeans", "leggings"}  # plural
    assert by_word[(1, "man")].text.startswith("The woman ")
    assert "t-shirt" not in by_word  # "shirt" is not found inside "T-shirt"
    assert len(counterfactuals(CAPTIONS, WORDS, per_caption=1)) == 2
    assert len(counterfactuals(CAPTIONS, WORDS, per_caption=10, max_captions=1)) <= 7


def test_binding_scores_count_ties_half_per_kind() -> None:
    true = torch.tensor([0.9, 0.5, 0.2, 0.4])
    counter = torch.tensor([0.1, 0.5, 0.3, 0.1])
    scores = binding_scores(true, counter, ["colour", "colour", "gender", "colour"])
    assert scores["all"] == {"score": pytest.approx(62.5), "pairs": 4.0}
    assert scores["colour"]["score"] == pytest.approx(250 / 3)  # win, tie, win
    assert scores["gender"] == {"score": 0.0, "pairs": 1.0}
    assert "garment" not in scores


class BagOfWords(torch.nn.Module):
    """A stub dual encoder: a text is the sum of its words' one-hot vectors, with the words
    that binding changes dropped when ``blind``."""

    def __init__(self, vocabulary: list[str], blind: bool) -> None:
        super().__init__()
        self.vocabulary, self.blind = vocabulary, blind

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        rows = torch.zeros(len(texts), len(self.vocabulary))
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                if not (self.blind and word in _BINDING_GROUPS):
                    rows[i, self.vocabulary.index(word)] += 1
        return rows

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


def binding_of(blind: bool) -> dict[str, dict[str, float]]:
    texts = [text for _, text in CAPTIONS]
    words = {w for t in texts for w in t.lower().replace(",", " ").replace(".", " ").split()}
    vocabulary = sorted(words | {g[0] for _, groups, _ in _BINDING_GROUPS.values() for g in groups})
    encoder = BagOfWords(vocabulary, blind)
    images = pl.DataFrame({"image_id": [10, 11, 12], "pid": [1, 2, 3], "split": ["test"] * 3,
                           "path": ["a.png", "b.png", "c.png"]})  # fmt: skip
    captions = pl.DataFrame({"caption_id": [0, 1, 2], "image_id": [10, 11, 12], "pid": [1, 2, 3],
                             "split": ["test"] * 3, "text": texts})  # fmt: skip
    split = Manifests(images, captions, Path("."), "toy")
    # each image looks exactly like its caption says, every attribute word included
    gallery = torch.nn.functional.normalize(BagOfWords(vocabulary, False).tokenize(texts), dim=-1)
    scores, pairs = attribute_binding(encoder, split, encoder.tokenize, WORDS, EvalOptions(),
                                      gallery)  # type: ignore[arg-type]  # fmt: skip
    assert pairs.height == scores["all"]["pairs"] == 4  # two per caption with such words
    return scores


def test_a_model_that_binds_every_word_scores_100_and_a_blind_one_50() -> None:
    assert all(row["score"] == 100 for row in binding_of(blind=False).values())
    assert all(row["score"] == 50 for row in binding_of(blind=True).values())


def synthetic_split(tmp_path: Path) -> Manifests:
    """Two families: {pid 1, pid 2} and {pid 3}; one image and one caption per pid."""
    (tmp_path / "imgs").mkdir()
    truth = {"generator": {"seed": 0},
             "identities": {"1": {"family": 0}, "2": {"family": 0}, "3": {"family": 1}},
             "images": [{"path": f"{pid}.png", "pid": pid} for pid in (1, 2, 3)]}  # fmt: skip
    (tmp_path / "attributes.json").write_text(json.dumps(truth))
    images = pl.DataFrame({"image_id": [0, 1, 2], "pid": [1, 2, 3], "split": ["test"] * 3,
                           "path": ["1.png", "2.png", "3.png"]})  # fmt: skip
    captions = pl.DataFrame({"caption_id": [0, 1, 2], "image_id": [0, 1, 2], "pid": [1, 2, 3],
                             "split": ["test"] * 3, "text": ["a", "b", "c"]})  # fmt: skip
    return Manifests(images, captions, tmp_path / "imgs", "toy")


def test_lookalikes_are_ranked_within_their_family_from_the_ground_truth(tmp_path: Path) -> None:
    split = synthetic_split(tmp_path)
    families = read_families(split.imgs_dir)
    assert families == {"1.png": 0, "2.png": 0, "3.png": 1}
    # query 0 prefers image 2 (another family: out of its gallery), then its look-alike 1
    similarity = torch.tensor([[0.5, 0.6, 0.9], [0.1, 0.8, 0.0], [0.0, 0.0, 0.3]])
    scores = lookalike_scores(similarity, split, families)
    assert scores["R1"] == pytest.approx(200 / 3)  # query 0 misses, 1 and 2 hit
    assert scores["chance"] == pytest.approx((50 + 50 + 100) / 3)
    assert scores["margin"] == pytest.approx(((0.5 - 0.6) + (0.8 - 0.1)) / 2)  # query 2: none
    assert scores["queries"] == 3


def test_real_data_has_no_families(tmp_path: Path) -> None:
    assert read_families(tmp_path / "imgs") is None
    (tmp_path / "attributes.json").write_text("{}")  # someone else's file of that name
    assert read_families(tmp_path / "imgs") is None


def test_paraphrases_describe_the_same_people_in_another_style() -> None:
    """Captions of the generator's own identities, in each style: seeded, one per identity, and
    every attribute word they use names something that person has (the ground-truth walk of
    tests/test_synth_world.py, here on the diagnostic's path)."""
    from uit.synth.attributes import sample_families
    from uit.synth.captions import write_caption

    rng = random.Random(0)
    people = [identity for _, identity in sample_families(rng, 12, set())]
    for style in ("cuhk-pedes", "icfg-pedes", "rstpreid"):
        texts = paraphrases(people, style, seed=3)
        assert texts == paraphrases(people, style, seed=3) and len(texts) == len(people)
        assert texts != paraphrases(people, style, seed=4)
        again = random.Random(f"paraphrase:3:{style}")
        assert texts == [write_caption(p, STYLES[style], again).text for p in people]
    assert paraphrases(people, "cuhk-pedes") != paraphrases(people, "icfg-pedes")


def test_identities_are_read_from_the_ground_truth_by_image(tmp_path: Path) -> None:
    from uit.synth.attributes import sample_identity

    rng = random.Random(1)
    drawn = {pid: sample_identity(rng) for pid in (1, 2)}
    truth = {"generator": {"seed": 0},
             "identities": {str(pid): {"family": 0, **p.to_dict()} for pid, p in drawn.items()},
             "images": [{"path": f"{pid}_{k}.png", "pid": pid} for pid in (1, 2)
                        for k in (0, 1)]}  # fmt: skip
    (tmp_path / "attributes.json").write_text(json.dumps(truth))
    identities = read_identities(tmp_path / "imgs")
    assert identities == {"1_0.png": drawn[1], "1_1.png": drawn[1], "2_0.png": drawn[2],
                          "2_1.png": drawn[2]}  # fmt: skip
    assert read_identities(tmp_path / "elsewhere" / "imgs") is None
    # the families-only file of the look-alike test names no person: an error, not a guess
    (tmp_path / "toy").mkdir()
    with pytest.raises(ValueError, match="not a synthetic benchmark's ground truth"):
        read_identities(synthetic_split(tmp_path / "toy").imgs_dir)


def test_the_report_labels_the_grayscale_an_oracle_and_says_whether_tir_reads_the_caption() -> None:
    scores = {"tir": 20.0, "tir_other": 26.0, "grayscale": 12.0, "mean_colour": 40.0,
              "patches": 100.0}  # fmt: skip
    line = restoration_line(scores)
    assert "an oracle" in line and "TIR beats it" in line and "TIR reads the caption" in line
    assert "does not clearly read it" in restoration_line({**scores, "tir_other": 20.5})
    rows = diagnostics_rows({"binding": {"all": {"score": 71.25, "pairs": 8.0}},
                             "lookalike": {"R1": 60.0, "chance": 40.0, "margin": 0.01,
                                           "queries": 5.0}})  # fmt: skip
    assert rows[0] == ["attribute binding", "all", "71.2", "50.0", "8"]
    assert rows[1][0] == "look-alikes" and rows[1][2:] == ["60.0", "40.0", "5"]
