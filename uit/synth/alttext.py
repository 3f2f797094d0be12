"""Web alt-text captions for the pretraining corpus: short, generic, naming a few salient things.

Unlike every benchmark's annotators ("The woman is wearing ... She is carrying ..."), alt text is
one lowercase phrase without a full stop ("photo of a woman in a red floral dress with an
umbrella"), so pretraining learns the concepts, not the benchmarks' phrasing.
"""

from __future__ import annotations

import random

from uit.synth.attributes import Identity
from uit.synth.captions import Caption
from uit.synth.vocabulary import COLOUR_WORDS, HAIR_COLOUR_WORDS, WORDS, attribute_words

PREFIXES = ("", "", "", "photo of", "a photo of", "an image of", "picture of", "stock photo of",
            "candid shot of", "street style:", "cctv still of", "snapshot of")  # fmt: skip
SUBJECTS = {"male": ("man", "guy", "young man", "person"),
            "female": ("woman", "girl", "young woman", "person")}  # fmt: skip
SUFFIXES = ("", "", "", "", "outdoors", "on the street", "in the city", "walking", "at the mall")


def _word(rng: random.Random, options: tuple[str, ...]) -> str:
    """The common way to say it: one of the first two options."""
    return rng.choice(options[:2])


def _colour(rng: random.Random, name: str) -> str:
    return _word(rng, COLOUR_WORDS[name])


def _worn(p: Identity, rng: random.Random) -> list[str]:
    upper = f"{_colour(rng, p.upper_colour)} {_word(rng, WORDS['upper_type'][p.upper_type])}"
    if p.pattern != "plain" and rng.random() < 0.5:
        upper = f"{_word(rng, WORDS['pattern'][p.pattern])} {upper}"
    lower = (f"{_colour(rng, p.lower_colour)} {_word(rng, WORDS['lower_type'][p.lower_type])}"
             if p.lower_type else "")  # fmt: skip
    shoes = f"{_colour(rng, p.shoe_colour)} {_word(rng, WORDS['shoe_type'][p.shoe_type])}"
    hat = f"{_colour(rng, p.hat_colour)} {_word(rng, WORDS['hat'][p.hat])}" if p.hat else ""
    glasses = _word(rng, WORDS["glasses"][p.glasses]) if p.glasses else ""
    extras = [f"{_colour(rng, colour)} {name}" for name, colour in
              (("scarf", p.scarf), ("socks", p.socks), ("belt", p.belt)) if colour]  # fmt: skip
    return [upper, *filter(None, (lower, shoes, hat, glasses, *extras))]


def _held(p: Identity, rng: random.Random) -> list[str]:
    hair = rng.choice((HAIR_COLOURS_FIRST[p.hair_colour], p.hair_length))
    bag = f"{_colour(rng, p.bag_colour)} {p.bag_type}" if p.bag_type != "none" else ""
    carried = _word(rng, WORDS["carried"][p.carried]) if p.carried else ""
    return [f"{hair} hair", *filter(None, (bag, carried))]


HAIR_COLOURS_FIRST = {name: words[0] for name, words in HAIR_COLOUR_WORDS.items()}


def _salient(p: Identity, rng: random.Random) -> tuple[list[str], list[str]]:
    """What is worn and what is had, two to five things in all, the upper garment always."""
    worn, held = _worn(p, rng), _held(p, rng)
    others = [*(("worn", thing) for thing in worn[1:]), *(("held", thing) for thing in held)]
    chosen = rng.sample(others, min(len(others), rng.randint(1, 4)))
    return ([worn[0], *(t for kind, t in chosen if kind == "worn")],
            [t for kind, t in chosen if kind == "held"])  # fmt: skip


def _listed(things: list[str]) -> str:
    return ", ".join(things[:-1]) + f" and {things[-1]}" if len(things) > 1 else things[0]


def _a(phrase: str) -> str:
    if phrase.endswith("s") or phrase.endswith("hair"):
        return phrase
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def write_generic_caption(p: Identity, rng: random.Random) -> Caption:
    """A pretraining caption of ``p``: two to five salient things in alt-text style."""
    worn, held = _salient(p, rng)
    subject = rng.choice(SUBJECTS[p.gender])
    parts = [rng.choice(PREFIXES), _a(subject), rng.choice(("in", "wearing")),
             _listed([_a(thing) for thing in worn])]  # fmt: skip
    if held:
        parts += ["with", _listed([_a(thing) for thing in held])]
    text = " ".join(filter(None, (*parts, rng.choice(SUFFIXES))))
    return Caption(text, attribute_words(text), [])
