"""How well a parser finds attribute words, measured against the synthetic benchmark's truth.

The generator writes ``attributes.json`` beside each annotation file: for every caption, the
attribute words it used (colours, garments, footwear, bags, hair, gender words, pronouns) and the
filler words ("walking along the street"). Recall is the share of those attribute words that the
parser marks as attribute words; precision is the share of the parser's attribute words, filler
words left aside, that the truth holds; the filler share is the share of filler words it marks
too (a part-of-speech parser keeps the nouns and adjectives of fillers, "street", "sunny": design
§3.3 defines attribute words by tag, so this share measures noise, not an error).

Words are compared case-insensitively within each caption, each occurrence once. A hyphenated
word ("t-shirt", "short-sleeved") counts as found when every part of it is among the parser's
attribute words, whether the tokenizer kept it whole (the built-in pipeline) or split it (trained
pipelines). A caption whose text is empty after cleaning has nothing to parse and is skipped; a
duplicated caption has one truth entry and is measured once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacy.language import Language

from uit.core.errors import DataError
from uit.parsing.parse import parse_texts
from uit.raw.formats import get_spec
from uit.raw.prepare import clean_caption
from uit.raw.readers import read_benchmark
from uit.synth.generate import SIDECAR


@dataclass(frozen=True)
class TruthCaption:
    """One caption as prepared, with the words the generator wrote into it."""

    path: str
    text: str
    attribute_words: tuple[str, ...]
    filler_words: tuple[str, ...]


@dataclass(frozen=True)
class AttributeScore:
    captions: int
    attribute_words: int
    attribute_found: int
    filler_words: int
    filler_kept: int
    skipped: int = 0
    missed: Counter[str] = field(default_factory=Counter)  # ground-truth words not found
    extra: Counter[str] = field(default_factory=Counter)  # found, but neither truth nor filler

    @property
    def recall(self) -> float:
        return self.attribute_found / self.attribute_words if self.attribute_words else 1.0

    @property
    def precision(self) -> float:
        wrong = sum(self.extra.values())
        return self.attribute_found / (self.attribute_found + wrong) if wrong else 1.0

    @property
    def filler_share(self) -> float:
        return self.filler_kept / self.filler_words if self.filler_words else 0.0

    def __add__(self, other: AttributeScore) -> AttributeScore:
        """The score of both sets of captions together."""
        return AttributeScore(
            captions=self.captions + other.captions,
            attribute_words=self.attribute_words + other.attribute_words,
            attribute_found=self.attribute_found + other.attribute_found,
            filler_words=self.filler_words + other.filler_words,
            filler_kept=self.filler_kept + other.filler_kept,
            skipped=self.skipped + other.skipped,
            missed=self.missed + other.missed,
            extra=self.extra + other.extra,
        )

    def to_dict(self, top_missed: int = 10) -> dict[str, Any]:
        return {
            "captions": self.captions,
            "skipped": self.skipped,
            "attribute_words": self.attribute_words,
            "recall": self.recall,
            "precision": self.precision,
            "filler_words": self.filler_words,
            "filler_share": self.filler_share,
            "most_missed": dict(self.missed.most_common(top_missed)),
            "most_extra": dict(self.extra.most_common(top_missed)),
        }


def read_ground_truth(name: str, root: str | Path) -> tuple[list[TruthCaption], int]:
    """The cleaned captions of a synthetic benchmark with their truth, and how many were empty."""
    annotations = read_benchmark(name, root)
    sidecar_path = get_spec(name).dataset_dir(root) / SIDECAR
    images = _read_sidecar(sidecar_path)
    if len(images) != len(annotations.records):
        raise DataError(
            f"{sidecar_path}: {len(images)} images but {annotations.annotation_file} has "
            f"{len(annotations.records)} records; regenerate the synthetic benchmark"
        )
    truth: list[TruthCaption] = []
    skipped = 0
    for index, (record, image) in enumerate(zip(annotations.records, images, strict=True)):
        if image.get("path") != record.path:
            raise DataError(f"{sidecar_path}: images[{index}] is not {record.path}")
        for raw, words in zip(record.captions, image["captions"], strict=False):
            text = clean_caption(raw)
            if not text:
                skipped += 1
                continue
            truth.append(TruthCaption(record.path, text, tuple(words["attribute_words"]),
                                      tuple(words["filler_words"])))  # fmt: skip
    return truth, skipped


def _read_sidecar(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(
            f"{path} not found: attribute ground truth exists only for the synthetic benchmark "
            "(`uit synth --root ROOT`)"
        )
    try:
        images: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a synthetic ground-truth file ({error!r})") from None
    return images


def _parts(words: Iterable[str]) -> Counter[str]:
    return Counter(part for word in words for part in word.lower().split("-") if part)


def _take(available: Counter[str], word: str) -> bool:
    """Consume ``word``'s parts from ``available`` when all of them are there."""
    parts = _parts([word])
    if any(available[part] < n for part, n in parts.items()):
        return False
    available.subtract(parts)
    return True


def score_attributes(
    truth: Sequence[TruthCaption], predicted: Sequence[Sequence[str]], skipped: int = 0
) -> AttributeScore:
    """Recall and precision of attribute words and share of filler words kept; ``predicted[i]``
    holds the attribute words the parser found in ``truth[i]``."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} captions of truth but {len(predicted)} parsed")
    found = kept = 0
    missed: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    for caption, words in zip(truth, predicted, strict=True):
        available = _parts(words)
        for word in caption.attribute_words:
            if _take(available, word):
                found += 1
            else:
                missed[word.lower()] += 1
        kept += sum(_take(available, word) for word in caption.filler_words)
        extra += +available
    return AttributeScore(
        captions=len(truth),
        attribute_words=sum(len(c.attribute_words) for c in truth),
        attribute_found=found,
        filler_words=sum(len(c.filler_words) for c in truth),
        filler_kept=kept,
        skipped=skipped,
        missed=missed,
        extra=extra,
    )


def evaluate_parser(
    nlp: Language, name: str, root: str | Path, batch_size: int = 1000
) -> AttributeScore:
    """Parse a synthetic benchmark's captions with ``nlp`` and score them against its truth."""
    truth, skipped = read_ground_truth(name, root)
    parsed = parse_texts(nlp, (caption.text for caption in truth), batch_size)
    return score_attributes(truth, [p.attribute_words for p in parsed], skipped)
