"""Captions written from an identity's attributes by a grammar of annotators' sentence shapes.

A caption opens as annotators do ("The man", "A woman", "This person"), names the garments and
belongings in one to several sentences that refer back by pronoun ("He is carrying ... over his
left shoulder"), leaves things out, adds scene and posture filler, and has the dirt of real files
(a missing final period, doubled spaces, a rare typo). Each benchmark has its own style, the
``CaptionStyle`` its format's spec carries. Each caption comes with the attribute words and
filler words it used, the parser's ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

from uit.core.config import BENCHMARKS
from uit.raw.formats import SPECS, CaptionStyle
from uit.synth.attributes import Identity
from uit.synth.scene import filler
from uit.synth.vocabulary import (
    BODY_PLACES,
    COLOUR_WORDS,
    DETAILS,
    HAIR_COLOUR_WORDS,
    HAIR_LENGTH_WORDS,
    NEUTRAL_SUBJECTS,
    PATTERN_NOUNS,
    PLACE_WORDS,
    PRONOUNS,
    SUBJECTS,
    VAGUE_COLOUR_WORDS,
    WORDS,
    attribute_words,
)

# Each built-in benchmark's annotators' style, by name (a format's spec carries its own).
STYLES: dict[str, CaptionStyle] = {str(name): SPECS[name].style for name in BENCHMARKS}


@dataclass
class Caption:
    text: str
    attribute_words: list[str] = field(default_factory=list)
    filler_words: list[str] = field(default_factory=list)


@dataclass
class _Phrase:
    """Text plus the attribute and filler words in it, so omitted phrases leave no truth."""

    text: str
    words: list[str]
    fillers: list[str] = field(default_factory=list)

    def __add__(self, other: _Phrase) -> _Phrase:
        if not self.text:
            return other
        if not other.text:
            return self
        text = f"{self.text}{other.text}" if other.text[0] in ",." else f"{self.text} {other.text}"
        return _Phrase(text, self.words + other.words, self.fillers + other.fillers)


def _say(text: str) -> _Phrase:
    """Grammar text: its attribute words are its truth."""
    return _Phrase(text, attribute_words(text))


def _pick(rng: random.Random, *options: str) -> _Phrase:
    return _say(rng.choice(options))


def _join(phrases: list[_Phrase]) -> _Phrase:
    joined = _say("")
    for phrase in phrases:
        joined = joined + phrase
    return joined


@dataclass(frozen=True)
class _Person:
    """The identity with the pronouns and style one caption uses."""

    p: Identity
    style: CaptionStyle
    rng: random.Random

    @property
    def he(self) -> str:
        return PRONOUNS[self.p.gender][0]

    @property
    def his(self) -> str:
        return PRONOUNS[self.p.gender][1]


# ---------------------------------------------------------------- noun phrases of attributes


def _colour(who: _Person, name: str) -> _Phrase:
    rng = who.rng
    vague = [word for word, colours in VAGUE_COLOUR_WORDS.items() if name in colours]
    if vague and rng.random() < 0.1:
        return _say(f"{vague[0]} colored" if rng.random() < 0.6 else vague[0])
    words = COLOUR_WORDS[name]
    phrase = _say(words[0]) if rng.random() < 0.6 else _pick(rng, *words)
    return phrase + _say("colored") if rng.random() < 0.04 else phrase


def _article(
    phrase: _Phrase, rng: random.Random, pair: bool = False, many: bool = False
) -> _Phrase:
    """'a red coat', 'a pair of black jeans' or 'black jeans'; plural nouns take no article."""
    if pair and rng.random() < 0.45:
        return _say("a pair of") + phrase
    if pair or (many and phrase.text.endswith("s")):
        return phrase
    return _say("an" if phrase.text[0] in "aeiou" else "a") + phrase


def _type_word(who: _Person, name: str, value: str) -> _Phrase:
    """The word for a garment or thing, now and then hedged: 'what looks like a purse'."""
    return _pick(who.rng, *WORDS[name][value])


def _hedged(phrase: _Phrase, rng: random.Random) -> _Phrase:
    if rng.random() < 0.03:
        hedge = ("what looks like", "what appears to be", "possibly",
                 "probably", "maybe")  # fmt: skip
        return _say(rng.choice(hedge)) + phrase
    return phrase


def _on_body(who: _Person, name: str) -> _Phrase:
    """Now and then where it is worn: 'on his feet', 'on her head'."""
    if who.rng.random() < 0.15:
        return _say(who.rng.choice(BODY_PLACES[name]).format(his=who.his))
    return _say("")


def _upper(who: _Person) -> _Phrase:
    p, rng = who.p, who.rng
    noun = _type_word(who, "upper_type", p.upper_type)
    before, after = _colour(who, p.upper_colour), _say("")
    if p.pattern != "plain" and rng.random() < who.style.detail_p:
        if rng.random() < 0.5:
            before = before + _pick(rng, *WORDS["pattern"][p.pattern])
        else:
            after = _say("with") + _article(_pick(rng, *PATTERN_NOUNS[p.pattern]), rng, many=True)
            after = after + (_say(f"on the {rng.choice(('front', 'chest'))}")
                             if p.pattern == "logo" else _say(""))  # fmt: skip
    if rng.random() < who.style.detail_p and "sleeve" not in noun.text:
        if p.sleeve != "sleeveless" and rng.random() < 0.4 and not after.text:
            after = _say(f"with {p.sleeve} sleeves")
        elif p.upper_type not in ("hoodie", "jacket", "coat", "sweater"):
            before = _pick(rng, *WORDS["sleeve"][p.sleeve]) + before
    if not after.text:
        after = _detail(who, "upper_type", p.upper_type)
    return _article(before + noun, rng) + after


def _detail(who: _Person, name: str, value: str) -> _Phrase:
    """Now and then a detail of the thing: 'with the hood down', 'that reach the ankles'."""
    options = DETAILS[name].get(value, ())
    if options and who.rng.random() < who.style.detail_p / 2:
        return _pick(who.rng, *options)
    return _say("")


def _lower(who: _Person) -> _Phrase:
    p = who.p
    noun = _colour(who, p.lower_colour) + _type_word(who, "lower_type", p.lower_type)
    phrase = _article(noun, who.rng, pair=p.lower_type != "skirt")
    return phrase + _detail(who, "lower_type", p.lower_type)


def _shoes(who: _Person) -> _Phrase:
    p = who.p
    noun = _colour(who, p.shoe_colour) + _type_word(who, "shoe_type", p.shoe_type)
    phrase = _article(noun, who.rng, pair=True) + _detail(who, "shoe_type", p.shoe_type)
    return phrase + _on_body(who, "shoe_type")


def _socks(who: _Person) -> _Phrase:
    return _article(_colour(who, who.p.socks) + _type_word(who, "socks", "*"), who.rng, pair=True)


def _glasses(who: _Person) -> _Phrase:
    phrase = _article(_type_word(who, "glasses", who.p.glasses), who.rng, pair=True)
    return phrase + _on_body(who, "glasses")


def _hat(who: _Person) -> _Phrase:
    noun = _colour(who, who.p.hat_colour) + _type_word(who, "hat", who.p.hat)
    return _article(noun, who.rng) + _on_body(who, "hat")


def _around(who: _Person, item: str, colour: str, place: str) -> _Phrase:
    phrase = _article(_colour(who, colour) + _type_word(who, item, "*"), who.rng)
    return phrase + _say(f"around {who.his} {place}") if who.rng.random() < 0.5 else phrase


def _hair(who: _Person) -> _Phrase:
    p, rng = who.p, who.rng
    length = _pick(rng, *HAIR_LENGTH_WORDS[p.hair_length])
    colour = _pick(rng, *HAIR_COLOUR_WORDS[p.hair_colour])
    chosen = rng.choice((length + colour, length + colour, length, colour))
    return chosen + _say("hair")


def _place(who: _Person, where: str, side: str) -> _Phrase:
    template = who.rng.choice(PLACE_WORDS[where])
    return _say(template.format(his=who.his, side=side))


def _bag(who: _Person) -> _Phrase:
    p, rng = who.p, who.rng
    noun = _colour(who, p.bag_colour) + _type_word(who, "bag_type", p.bag_type)
    phrase = _article(noun, rng)
    if rng.random() < 0.4:
        return phrase + _detail(who, "bag_type", p.bag_type)
    where = {"backpack": "back", "handbag": "hand", "shoulder bag": "shoulder"}[p.bag_type]
    return phrase + _place(who, where, p.bag_side)


def _carried(who: _Person) -> _Phrase:
    p, rng = who.p, who.rng
    noun = _type_word(who, "carried", p.carried)
    if rng.random() < 0.6:
        noun = _colour(who, p.carried_colour) + noun
    phrase = _article(noun, rng)
    return phrase if rng.random() < 0.3 else phrase + _place(who, "hand", p.carried_side)


# ---------------------------------------------------------------- clauses and sentences

_WEAR = (
    "is wearing",
    "is wearing",
    "is wearing",
    "is wearing",
    "wears",
    "has on",
    "has on",
    "is dressed in",
    "is seen wearing",
    "appears to be wearing",
    "is sporting",
    "is in",
    "seems to be wearing",
    "is donning",
    "looks to be wearing",
    "can be seen wearing",
)
_CARRY = ("is carrying", "is carrying", "carries", "has", "is holding", "holds", "is toting",
          "is clutching", "appears to be carrying", "is gripping")  # fmt: skip


@dataclass
class _Item:
    kind: str  # wear | carry | hair
    phrase: _Phrase
    upper: bool = False  # the upper garment, which every caption names


def _worn(who: _Person) -> list[tuple[_Phrase, bool]]:
    """What the person wears, head to toe, as (phrase, is the upper garment); optional things
    may be left out."""
    p, rng, omit = who.p, who.rng, who.style.omit_p
    optional: list[tuple[str, float, Callable[[], _Phrase]]] = [
        (p.hat, omit, lambda: _hat(who)),
        (p.glasses, omit, lambda: _glasses(who)),
        (p.scarf, omit, lambda: _around(who, "scarf", p.scarf, "neck")),
        ("upper", 0.0, lambda: _upper(who)),
        (p.belt, omit + 0.2, lambda: _around(who, "belt", p.belt, "waist")),
        (p.lower_type, omit / 3, lambda: _lower(who)),
        (p.socks, omit + 0.1, lambda: _socks(who)),
        ("shoes", omit, lambda: _shoes(who)),
    ]
    return [(write(), present == "upper") for present, p_omit, write in optional
            if present and rng.random() >= p_omit]  # fmt: skip


def _items(who: _Person) -> list[_Item]:
    p, rng, omit = who.p, who.rng, who.style.omit_p
    worn = _worn(who)
    items = [_Item("wear", _hedged(phrase, rng), upper) for phrase, upper in worn]
    if rng.random() >= omit:
        items.insert(0, _Item("hair", _hair(who)))
    if p.bag_type != "none" and rng.random() >= omit / 2:
        items.append(_Item("carry", _bag(who)))
    if p.carried and rng.random() >= omit / 2:
        items.append(_Item("carry", _carried(who)))
    count = rng.randint(*who.style.items)
    if len(items) > count:  # annotators name a few things, not all, the upper garment always
        upper = next(k for k, item in enumerate(items) if item.upper)
        others = [k for k in range(len(items)) if k != upper]
        items = [items[k] for k in sorted([upper, *rng.sample(others, count - 1)])]
    if rng.random() >= who.style.head_to_toe:
        rng.shuffle(items)
    return items


def _listed(
    rng: random.Random, phrases: list[_Phrase], links: tuple[str, ...] = ("and",)
) -> _Phrase:
    """'a red coat, black jeans and white shoes'."""
    joined = phrases[0]
    for k, phrase in enumerate(phrases[1:], start=2):
        if k < len(phrases) or (len(phrases) > 2 and rng.random() < 0.3):  # an Oxford comma
            joined = joined + _say(",")
        link = _say(rng.choice(links)) if k == len(phrases) else _say("")
        joined = joined + link + phrase
    return joined


_ITEM_LINKS = ("and", "and", "and", "along with", "with", "as well as", "paired with")


def _clause(who: _Person, kind: str, phrases: list[_Phrase]) -> _Phrase:
    """A verb phrase for items of one kind: 'is wearing a red coat and black jeans'."""
    rng = who.rng
    if kind == "hair":
        return _say("has") + phrases[0]
    verb = rng.choice(_WEAR if kind == "wear" else _CARRY)
    if verb == "has on" and rng.random() < 0.5:
        return _say("has") + _listed(rng, phrases, _ITEM_LINKS) + _say("on")
    return _say(verb) + _listed(rng, phrases, _ITEM_LINKS)


def _subject(who: _Person, opening: int) -> _Phrase:
    rng, gender = who.rng, who.p.gender
    noun = _pick(rng, *(SUBJECTS[gender] if rng.random() < 0.85 else NEUTRAL_SUBJECTS))
    if opening == 0:
        return _say("the") + noun
    if opening == 1:
        return _article(noun, rng)
    if opening == 2:
        return _say("this") + noun
    if opening == 3:
        return _say(who.he)
    return noun


def _groups(who: _Person, items: list[_Item], count: int) -> list[list[_Item]]:
    """Split the items into ``count`` sentences, consecutive items of one kind kept together."""
    count = max(1, min(count, len(items)))
    cuts = sorted(who.rng.sample(range(1, len(items)), count - 1)) if count > 1 else []
    bounds = [0, *cuts, len(items)]
    return [items[a:b] for a, b in pairwise(bounds)]


def _predicate(who: _Person, items: list[_Item]) -> _Phrase:
    """The verb phrases of one sentence, joined: 'has long hair and is wearing a red coat'."""
    runs: list[tuple[str, list[_Phrase]]] = []
    for item in items:
        if runs and runs[-1][0] == item.kind:
            runs[-1][1].append(item.phrase)
        else:
            runs.append((item.kind, [item.phrase]))
    clauses = [_clause(who, kind, phrases) for kind, phrases in runs]
    return _listed(who.rng, clauses) if len(clauses) > 1 else clauses[0]


def _first_sentence(who: _Person, items: list[_Item], opening: int) -> _Phrase:
    """'The woman with long black hair is wearing ...' or 'A man wearing ...'."""
    rng = who.rng
    subject = _subject(who, opening)
    if opening != 3 and items[0].kind == "hair" and len(items) > 1 and rng.random() < 0.6:
        subject = subject + _say("with") + items[0].phrase
        items = items[1:]
    if opening != 3 and items[0].kind == "wear" and rng.random() < 0.35:
        shape = rng.choice(("wearing", "in", "dressed in"))
        worn = [i.phrase for i in items if i.kind == "wear"]
        rest = [i for i in items if i.kind != "wear"]
        fragment = subject + _say(shape) + _listed(rng, worn, _ITEM_LINKS)
        return fragment + (_say("and") + _predicate(who, rest) if rest else _say(""))
    return subject + _predicate(who, items)


def _next_sentence(who: _Person, items: list[_Item]) -> _Phrase:
    """'He is also carrying ...', 'The man has ...', 'Carrying a black bag.'"""
    rng = who.rng
    kind = rng.random()
    if kind < 0.12 and len({item.kind for item in items}) == 1 and items[0].kind != "hair":
        verb = "wearing" if items[0].kind == "wear" else rng.choice(("carrying", "holding"))
        return _say(verb) + _listed(rng, [item.phrase for item in items], _ITEM_LINKS)
    if kind < 0.25:
        subject = _say("the") + _pick(rng, *SUBJECTS[who.p.gender][:3], *NEUTRAL_SUBJECTS[:2])
    else:
        subject = _say(who.he)
    if rng.random() < 0.25:
        also = ("also", "also", "also", "additionally")
        subject = subject + _say(rng.choice(also))
    return subject + _predicate(who, items)


def _sentences(who: _Person) -> list[_Phrase]:
    style, rng = who.style, who.rng
    items = _items(who)
    count = rng.choices(range(1, len(style.sentences) + 1), weights=style.sentences)[0]
    opening = rng.choices(range(5), weights=style.openings)[0]
    groups = _groups(who, items, count)
    sentences = [_first_sentence(who, groups[0], opening)]
    sentences += [_next_sentence(who, group) for group in groups[1:]]
    for _ in range(style.filler_slots):
        if rng.random() < style.filler_p:
            _add_filler(who, sentences)
    return sentences


def _add_filler(who: _Person, sentences: list[_Phrase]) -> None:
    """Scene or posture: after the subject's sentence, or as a sentence of its own."""
    text = filler(who.rng, who.he, who.his)
    clause = _Phrase(text, [], text.split())
    if who.rng.random() < 0.5:
        sentences.append(_Phrase(f"{who.he} is", [who.he]) + clause)
    else:
        last = sentences[-1]
        sentences[-1] = last + _say(",") + clause


# ---------------------------------------------------------------- the caption, with its dirt


def write_caption(p: Identity, style: CaptionStyle, rng: random.Random) -> Caption:
    """One caption of ``p`` in ``style``."""
    who = _Person(p, style, rng)
    sentences = _sentences(who)
    text = " ".join(_capitalised(s.text) + "." for s in sentences)
    caption = Caption(
        text,
        [word for s in sentences for word in s.words],
        [word for s in sentences for word in s.fillers],
    )
    for chance, dirt in ((style.typo_p, _typo), (style.spacing_p, _spacing),
                         (style.no_period_p, _no_period)):  # fmt: skip
        if rng.random() < chance:
            caption = dirt(caption, rng)
    return caption


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


def _no_period(caption: Caption, rng: random.Random) -> Caption:
    return Caption(caption.text.rstrip("."), caption.attribute_words, caption.filler_words)


def _spacing(caption: Caption, rng: random.Random) -> Caption:
    text = caption.text.replace(".", " .") if rng.random() < 0.5 else caption.text
    words = text.split(" ")
    k = rng.randrange(len(words))
    words[k] = words[k] + " "
    return Caption(" ".join(words), caption.attribute_words, caption.filler_words)


def _typo(caption: Caption, rng: random.Random) -> Caption:
    """Swap two letters of one longer word, or drop one; the truth records what was written."""
    words = caption.text.split(" ")
    # Only words that occur once, so the ground-truth lists can follow the change exactly.
    lowered = [word.lower() for word in words]
    candidates = [i for i, word in enumerate(lowered)
                  if len(word) >= 5 and word.isalpha() and lowered.count(word) == 1]  # fmt: skip
    if not candidates:
        return caption
    i = rng.choice(candidates)
    old = words[i]
    swappable = [k for k in range(1, len(old) - 2) if old[k] != old[k + 1]]
    if not swappable:
        return caption
    k = rng.choice(swappable)
    swapped = old[:k] + old[k + 1] + old[k] + old[k + 2 :]
    new = swapped if rng.random() < 0.7 else old[:k] + old[k + 1 :]
    words[i] = new

    def swap(items: list[str]) -> list[str]:
        return [new.lower() if item.lower() == old.lower() else item for item in items]

    return Caption(" ".join(words), swap(caption.attribute_words), swap(caption.filler_words))
