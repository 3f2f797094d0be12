"""Captions written from an identity's attributes by a small grammar.

Synonyms, varied clause order, omitted attributes, filler clauses that identify nobody, rare
typos, and one style per benchmark. Each caption comes with the attribute words and filler words
it used, the ground truth for measuring the attribute parser.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from uit.synth.attributes import Identity

SUBJECTS = {
    "male": ("man", "guy", "young man", "male", "gentleman"),
    "female": ("woman", "lady", "young woman", "girl", "female"),
}
COLOUR_WORDS = {"gray": ("gray", "grey"), "blonde": ("blonde", "blond")}
UPPER_WORDS = {
    "t-shirt": ("t-shirt", "tee", "tshirt"),
    "shirt": ("shirt", "button-up shirt"),
    "jacket": ("jacket", "windbreaker"),
    "coat": ("coat", "overcoat"),
    "sweater": ("sweater", "jumper", "pullover"),
}
LOWER_WORDS = {
    "trousers": ("trousers", "pants", "slacks"),
    "jeans": ("jeans", "denim jeans"),
    "shorts": ("shorts",),
    "skirt": ("skirt",),
}
SHOE_WORDS = ("shoes", "sneakers", "trainers")
BAG_WORDS = {
    "backpack": ("backpack", "rucksack"),
    "handbag": ("handbag", "purse"),
    "shoulder bag": ("shoulder bag", "messenger bag", "crossbody bag"),
}
HAT_WORDS = ("cap", "hat", "baseball cap")
PATTERN_WORDS = {"striped": ("striped",), "checked": ("plaid", "checked", "checkered")}
SLEEVE_WORDS = {"short": ("short-sleeved", "short sleeve"), "long": ("long-sleeved", "long sleeve")}
FILLERS = (
    "walking along the street",
    "standing near a building",
    "looking at the phone in the hand",
    "crossing the road",
    "waiting at the corner",
    "heading towards the camera",
    "walking away from the camera",
    "in front of a shop window",
    "on a sunny day",
    "next to a parked car",
)


@dataclass(frozen=True)
class CaptionStyle:
    """How one benchmark's annotators wrote: length, detail and what they left out."""

    omit_p: float  # probability that an optional attribute goes unmentioned
    filler_p: float  # probability of each filler clause slot being used
    filler_slots: int
    detail_p: float  # probability of mentioning sleeve length and pattern
    sentences: bool  # several short sentences instead of one long one
    typo_p: float = 0.03


STYLES = {
    "cuhk-pedes": CaptionStyle(
        omit_p=0.2, filler_p=0.3, filler_slots=1, detail_p=0.5, sentences=False
    ),
    "icfg-pedes": CaptionStyle(
        omit_p=0.05, filler_p=0.6, filler_slots=2, detail_p=0.9, sentences=True
    ),
    "rstpreid": CaptionStyle(
        omit_p=0.3, filler_p=0.4, filler_slots=1, detail_p=0.4, sentences=True
    ),
}


@dataclass
class Caption:
    text: str
    attribute_words: list[str] = field(default_factory=list)
    filler_words: list[str] = field(default_factory=list)


@dataclass
class _Phrase:
    """Text plus the attribute words it contains, so omitted phrases leave no ground truth."""

    text: str
    words: list[str]

    def __add__(self, other: _Phrase) -> _Phrase:
        return _Phrase(f"{self.text} {other.text}", self.words + other.words)


def _attr(rng: random.Random, *options: str) -> _Phrase:
    word = rng.choice(options)
    return _Phrase(word, word.split())


def _plain(text: str) -> _Phrase:
    return _Phrase(text, [])


def _colour(rng: random.Random, name: str) -> _Phrase:
    return _attr(rng, *COLOUR_WORDS.get(name, (name,)))


def _with_article(phrase: _Phrase) -> _Phrase:
    return _plain("an" if phrase.text[0] in "aeiou" else "a") + phrase


def _upper(rng: random.Random, p: Identity, style: CaptionStyle) -> _Phrase:
    phrase = _colour(rng, p.upper_colour)
    if p.pattern != "plain" and rng.random() < style.detail_p:
        phrase = phrase + _attr(rng, *PATTERN_WORDS[p.pattern])
    if p.upper_type in ("t-shirt", "shirt") and rng.random() < style.detail_p:
        phrase = _attr(rng, *SLEEVE_WORDS[p.sleeve]) + phrase
    return _with_article(phrase + _attr(rng, *UPPER_WORDS[p.upper_type]))


def _verb_phrases(rng: random.Random, p: Identity, style: CaptionStyle) -> list[_Phrase]:
    """Each describable attribute as a verb phrase ("wears black jeans"); some are omitted."""
    upper = _upper(rng, p, style)
    lower = _colour(rng, p.lower_colour) + _attr(rng, *LOWER_WORDS[p.lower_type])
    wearing = rng.choice(("is wearing", "wears", "is dressed in"))
    if rng.random() < 0.5:
        phrases = [_plain(wearing) + upper + _plain("and") + lower]
    else:
        phrases = [_plain(wearing) + upper, _plain(rng.choice(("wears", "has on"))) + lower]
    optional = [
        _plain("has")
        + _attr(rng, p.hair_length)
        + _colour(rng, p.hair_colour)
        + _attr(rng, "hair"),
        _plain(rng.choice(("wears", "has on")))
        + _colour(rng, p.shoe_colour)
        + _attr(rng, *SHOE_WORDS),
    ]
    if p.bag_type != "none":
        bag = _with_article(_colour(rng, p.bag_colour) + _attr(rng, *BAG_WORDS[p.bag_type]))
        optional.append(_plain(rng.choice(("carries", "is carrying", "has"))) + bag)
    if p.hat:
        optional.append(
            _plain("wears") + _with_article(_colour(rng, p.hat) + _attr(rng, *HAT_WORDS))
        )
    return phrases + [phrase for phrase in optional if rng.random() >= style.omit_p]


def write_caption(p: Identity, style: CaptionStyle, rng: random.Random) -> Caption:
    """One caption of ``p`` in ``style``."""
    subject = _with_article(_attr(rng, *SUBJECTS[p.gender]))
    pronoun = "he" if p.gender == "male" else "she"
    phrases = _verb_phrases(rng, p, style)
    rng.shuffle(phrases)
    fillers = [
        rng.choice(FILLERS) for _ in range(style.filler_slots) if rng.random() < style.filler_p
    ]
    if fillers:
        subject = subject + _plain(fillers[0])
    if style.sentences:
        first, rest = phrases[0], phrases[1:]
        sentences = [subject + first] + [_attr(rng, pronoun) + phrase for phrase in rest]
    else:
        sentences = [subject + _join(rng, phrases)]
    if len(fillers) > 1:
        sentences.append(_attr(rng, pronoun) + _plain(f"is {fillers[1]}"))
    text = " ".join(f"{s.text[0].upper()}{s.text[1:]}." for s in sentences)
    words = [word for s in sentences for word in s.words]
    caption = Caption(text, words, [word for f in fillers for word in f.split()])
    return _typo(caption, rng) if rng.random() < style.typo_p else caption


def _join(rng: random.Random, phrases: list[_Phrase]) -> _Phrase:
    """'is wearing a red coat, wears black shoes and has a bag' style joining."""
    joined = phrases[0]
    for k, phrase in enumerate(phrases[1:], start=2):
        joined = _Phrase(joined.text + ",", joined.words) if k < len(phrases) else joined
        joined = joined + (_plain("and") + phrase if k == len(phrases) else phrase)
    return joined


def _typo(caption: Caption, rng: random.Random) -> Caption:
    """Swap two letters of one longer word; the ground-truth lists record what was written."""
    words = caption.text.split(" ")
    # Only words that occur once, so the ground-truth lists can follow the change exactly.
    candidates = [i for i, word in enumerate(words)
                  if len(word) >= 5 and word.isalpha() and words.count(word) == 1]  # fmt: skip
    if not candidates:
        return caption
    i = rng.choice(candidates)
    old = words[i]
    swappable = [k for k in range(1, len(old) - 2) if old[k] != old[k + 1]]
    if not swappable:
        return caption
    k = rng.choice(swappable)
    new = old[:k] + old[k + 1] + old[k] + old[k + 2 :]
    words[i] = new

    def swap(items: list[str]) -> list[str]:
        return [new if item == old else item for item in items]

    return Caption(" ".join(words), swap(caption.attribute_words), swap(caption.filler_words))


def write_generic_caption(p: Identity, rng: random.Random) -> Caption:
    """A pretraining caption of ``p``: alt-text style, unlike every benchmark's annotators ("a
    photo of a woman with long black hair, a red striped coat, blue jeans, white shoes and a
    black backpack"). Every describable attribute is named, in a random order, so that the
    corpus teaches each of them."""
    subject = _plain(rng.choice(("a photo of", "an image of", "a picture of"))) + _with_article(
        _attr(rng, *SUBJECTS[p.gender])
    )
    upper = _colour(rng, p.upper_colour)
    if p.pattern != "plain":
        upper = upper + _attr(rng, *PATTERN_WORDS[p.pattern])
    if p.upper_type in ("t-shirt", "shirt"):
        upper = _attr(rng, *SLEEVE_WORDS[p.sleeve]) + upper
    items = [
        _with_article(upper + _attr(rng, *UPPER_WORDS[p.upper_type])),
        _colour(rng, p.lower_colour) + _attr(rng, *LOWER_WORDS[p.lower_type]),
        _colour(rng, p.shoe_colour) + _attr(rng, *SHOE_WORDS),
    ]
    if p.bag_type != "none":
        items.append(_with_article(_colour(rng, p.bag_colour) + _attr(rng, *BAG_WORDS[p.bag_type])))
    if p.hat:
        items.append(_with_article(_colour(rng, p.hat) + _attr(rng, *HAT_WORDS)))
    rng.shuffle(items)
    hair = _attr(rng, p.hair_length) + _colour(rng, p.hair_colour) + _attr(rng, "hair")
    listed = items[0]
    for k, item in enumerate(items[1:], start=2):
        listed = listed + (_plain("and") + item if k == len(items) else _plain(",") + item)
    phrase = subject + _plain("with") + hair + _plain(",") + listed
    text = phrase.text.replace(" ,", ",")
    return Caption(text[0].upper() + text[1:], phrase.words, [])
