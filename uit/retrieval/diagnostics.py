"""Diagnostics that say whether an idea of UIT does its work, beside the retrieval metrics.

- ``caption_reliance``: does TIR restore colour from the caption? The colour error on the same
  masked patches of the same images, restored from each image's own caption and from another
  identity's; a decoder that ignores the text scores both alike.
- ``lookalike_r1`` and ``lookalike_margin``: does retrieval tell look-alikes apart? Each query
  is ranked only against its family's gallery images (identities that share most attributes,
  as the caller defines families), where a model that sees only the shared attributes is at
  chance. ``read_families`` finds the families of a synthetic benchmark (its ground truth);
  real data has none.
- ``counterfactuals`` and ``binding_scores``: does the model bind each attribute word to what
  it names? A caption's own image should score it above the same caption with one colour,
  garment, shoe, carried object or gender word changed (chance 50%). Works on real captions:
  the parser's attribute words say which words to change.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from uit.model.objective import Objective, restoration_errors
from uit.synth.attributes import Identity
from uit.synth.captions import STYLES, write_caption

T = TypeVar("T")


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
    for one call): sums over the masked patches (``own``, ``other``, ``mean_colour``,
    ``grayscale``; ``tir`` and ``tir_other`` repeat ``own`` and ``other`` under the names of
    the evaluate stage's ``restoration``) and their count (``patches``), so that batches add
    up; ``CaptionReliance.from_sums`` averages."""
    replay = torch.Generator(device=generator.device)
    replay.set_state(generator.get_state())
    own = restoration_errors(objective, images, text, generator)
    other = restoration_errors(objective, images, other_text, replay)
    sums = {name: float(value) for name, value in own.items()}  # tir, grayscale, mean_colour
    return {**sums, "tir_other": float(other["tir"]), "own": sums["tir"],
            "other": float(other["tir"])}  # fmt: skip


def caption_reliance(
    objective: Objective, images: Tensor, text: Tensor, pids: Tensor, seed: int = 0
) -> CaptionReliance:
    """``CaptionReliance`` of one batch, the other caption taken from ``another_identity``."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    other_text = text[another_identity(pids.to(text.device))]
    return CaptionReliance.from_sums(
        caption_reliance_sums(objective, images, text, other_text, generator)
    )


def _family_masks(
    query_pids: Tensor, gallery_pids: Tensor, query_families: Tensor, gallery_families: Tensor
) -> tuple[Tensor, Tensor]:
    """(Q, G) masks: the gallery images of each query's identity, and of its family; a query
    whose family holds none of its relevant images is refused."""
    relevant = query_pids[:, None] == gallery_pids[None, :]
    family = query_families[:, None] == gallery_families[None, :]
    missing = (~(relevant & family).any(dim=1)).nonzero().flatten()
    if len(missing):
        raise ValueError(
            f"look-alike gallery: query {int(missing[0])} has no relevant image in its family"
        )
    return relevant, family


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
    _, family = _family_masks(query_pids, gallery_pids, query_families, gallery_families)
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
    relevant, family = _family_masks(query_pids, gallery_pids, query_families, gallery_families)
    scores = similarity.float()
    best_true = scores.masked_fill(~relevant, float("-inf")).amax(dim=1)  # (Q,)
    best_lookalike = scores.masked_fill(~family | relevant, float("-inf")).amax(dim=1)
    has = torch.isfinite(best_lookalike)
    return float((best_true - best_lookalike)[has].mean())


# Attribute binding: does the model tie each attribute word to what it names? Counterfactual
# captions change one attribute word into another of the same kind; the caption's own image
# should score the true caption higher.

# kind -> sets of groups (" | " between groups, synonyms within one). A word is replaced by the
# first word of another group of its own set, so that the number agrees ("shirt" by "dress",
# "jeans" by "shorts") and a synonym ("grey" for "gray") never counts as a counterfactual. Every
# word is in the parser's lexicon (uit.parsing.lexicon.PERSON_VOCABULARY), so real captions work.
BINDING_VOCABULARY: dict[str, tuple[str, ...]] = {
    "colour": (
        "black | white | gray grey | red | blue | green | yellow | purple | pink | brown | orange",
    ),
    "garment": (
        "shirt t-shirt tshirt tee top blouse polo | jacket coat overcoat raincoat parka blazer "
        "windbreaker anorak | sweater jumper pullover cardigan hoodie sweatshirt | dress gown "
        "| skirt miniskirt",
        "trousers pants slacks | jeans | shorts | leggings tights",
    ),
    "footwear": (
        "shoe sneaker trainer | boot | sandal | slipper",
        "shoes sneakers trainers | boots | sandals | slippers",
    ),
    "carried": (
        "backpack rucksack knapsack | handbag purse | suitcase luggage | briefcase | umbrella "
        "| bottle | phone",
    ),
    "gender": ("man guy gentleman male boy | woman lady female girl", "men gentlemen | women"),
}
BINDING_KINDS = tuple(BINDING_VOCABULARY)


def _binding_groups() -> dict[str, tuple[str, list[list[str]], int]]:
    """word -> (its kind, the groups of its set, the index of its group)."""
    found: dict[str, tuple[str, list[list[str]], int]] = {}
    for kind, sets in BINDING_VOCABULARY.items():
        for text in sets:
            groups = [group.split() for group in text.split("|")]
            for index, group in enumerate(groups):
                found.update(dict.fromkeys(group, (kind, groups, index)))
    return found


_BINDING_GROUPS = _binding_groups()


@dataclass(frozen=True)
class Counterfactual:
    """A caption with one attribute ``word`` (as written) replaced by ``substitute``."""

    caption_id: int
    kind: str
    word: str
    substitute: str
    text: str


def _replace_once(text: str, word: str, substitute: str) -> str | None:
    """``text`` with the first whole-word ``word`` (any case; "shirt" is not in "t-shirt")
    replaced, its capital kept; None where the word is not found as written."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.IGNORECASE)
    found = pattern.search(text)
    if found is None:
        return None
    written = found.group(0)
    replacement = substitute.capitalize() if written[0].isupper() else substitute
    return text[: found.start()] + replacement + text[found.end() :]


def counterfactuals(
    captions: Sequence[tuple[int, str]],
    attribute_words: Mapping[int, Sequence[str]],
    per_caption: int = 2,
    max_captions: int = 500,
    seed: int = 0,
) -> list[Counterfactual]:
    """Up to ``per_caption`` counterfactuals of each of up to ``max_captions`` ``captions``
    ((caption_id, text), drawn at random beyond that), each replacing one of the caption's
    attribute words (``attribute_words``: caption_id -> the parser's words) that
    ``BINDING_VOCABULARY`` knows by a word of another group of its kind. Seeded."""
    rng = random.Random(seed)
    if len(captions) > max_captions:
        captions = [captions[i] for i in sorted(rng.sample(range(len(captions)), max_captions))]
    made = []
    for caption_id, text in captions:
        words = sorted(
            {w.lower() for w in attribute_words.get(caption_id, ())} & set(_BINDING_GROUPS)
        )
        for word in rng.sample(words, min(per_caption, len(words))):
            kind, groups, own = _BINDING_GROUPS[word]
            substitute = rng.choice([g for i, g in enumerate(groups) if i != own])[0]
            changed = _replace_once(text, word, substitute)
            if changed is not None:
                made.append(Counterfactual(caption_id, kind, word, substitute, changed))
    return made


def binding_scores(
    true_scores: Tensor, counter_scores: Tensor, kinds: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The share (percent) of (caption, counterfactual) pairs whose image scores the true
    caption higher (``true_scores`` (P,) against ``counter_scores`` (P,)), a tie counting half
    (so a model blind to the word scores 50, chance), as ``score`` with the count of ``pairs``:
    over ``all`` pairs and per kind (kinds without a pair left out)."""
    wins = (true_scores > counter_scores).float() + 0.5 * (true_scores == counter_scores).float()
    names = list(kinds)
    result = {}
    for kind in ("all", *BINDING_KINDS):
        chosen = [i for i, k in enumerate(names) if kind in ("all", k)]
        if chosen:
            score = float(wins[chosen].mean()) * 100
            result[kind] = {"score": score, "pairs": float(len(chosen))}
    return result


def lookalike_chance(
    query_pids: Tensor, gallery_pids: Tensor, query_families: Tensor, gallery_families: Tensor
) -> float:
    """``lookalike_r1`` of a random ranking, in percent: the mean over queries of the share of
    its family's gallery images that are its own identity's."""
    relevant, family = _family_masks(query_pids, gallery_pids, query_families, gallery_families)
    return float(((relevant & family).sum(1) / family.sum(1)).mean()) * 100


SIDECAR = "attributes.json"  # what uit.synth.generate writes beside a synthetic benchmark


def read_families(imgs_dir: Path) -> dict[str, int] | None:
    """Image path (relative to ``imgs_dir``) -> its identity's family, from the ground truth a
    synthetic benchmark keeps beside its images (``attributes.json``: identities drawn in
    families that differ in one or two attributes); None for real data, which has none."""
    truth = _ground_truth(imgs_dir)
    if truth is None:
        return None
    return _by_path(imgs_dir, truth, lambda attributes: int(attributes["family"]))


def read_identities(imgs_dir: Path) -> dict[str, Identity] | None:
    """Image path (relative to ``imgs_dir``) -> the synthetic identity drawn in it, from the same
    ground truth as ``read_families``; None for real data."""
    truth = _ground_truth(imgs_dir)
    if truth is None:
        return None
    names = {f.name for f in fields(Identity)}
    return _by_path(imgs_dir, truth,
                    lambda attributes: Identity(**{k: v for k, v in attributes.items()
                                                   if k in names}))  # fmt: skip


def _ground_truth(imgs_dir: Path) -> dict[str, Any] | None:
    try:
        truth = json.loads((Path(imgs_dir).parent / SIDECAR).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise _not_truth(imgs_dir, error) from None
    if not isinstance(truth, dict) or "generator" not in truth:  # not the generator's file
        return None
    return truth


def _by_path(
    imgs_dir: Path, truth: dict[str, Any], value: Callable[[dict[str, Any]], T]
) -> dict[str, T]:
    try:
        per_pid = {str(pid): value(v) for pid, v in truth["identities"].items()}
        return {str(image["path"]): per_pid[str(image["pid"])] for image in truth["images"]}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise _not_truth(imgs_dir, error) from None


def _not_truth(imgs_dir: Path, error: Exception) -> ValueError:
    return ValueError(
        f"{Path(imgs_dir).parent / SIDECAR}: not a synthetic benchmark's ground truth ({error!r})"
    )


def paraphrases(identities: Sequence[Identity], style: str, seed: int = 0) -> list[str]:
    """One caption of each identity written afresh in benchmark ``style``'s caption style
    (``uit.synth.captions.STYLES``), seeded: the same people, described as another benchmark's
    annotators would."""
    rng = random.Random(f"paraphrase:{seed}:{style}")
    return [write_caption(identity, STYLES[style], rng).text for identity in identities]
