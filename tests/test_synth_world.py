"""The synthetic world and its words (design §3.4): every attribute a caption names is drawn,
every new attribute shows in the pixels, and the pretraining corpus speaks like the web."""

from __future__ import annotations

import random
from dataclasses import fields, replace

import numpy as np
import pytest

from uit.synth import attributes as a
from uit.synth.alttext import write_generic_caption
from uit.synth.attributes import Identity, sample_families
from uit.synth.captions import STYLES, write_caption
from uit.synth.render import Shot, render_person
from uit.synth.vocabulary import COLOUR_WORDS, DETAILS, WORDS, attribute_words, words_for

DOMAINS: dict[str, tuple[str, ...]] = {
    "upper_type": a.UPPER_TYPES + a.ONE_PIECES, "sleeve": a.SLEEVES, "pattern": a.PATTERNS[1:],
    "lower_type": a.LOWER_TYPES, "shoe_type": a.SHOE_TYPES, "socks": ("*",),
    "glasses": a.GLASSES, "hat": a.HAT_TYPES, "scarf": ("*",), "belt": ("*",),
    "bag_type": a.BAG_TYPES[1:], "carried": a.CARRIED,
}  # fmt: skip
CLEAN = {name: replace(style, typo_p=0.0) for name, style in STYLES.items()}


def identities(count: int, seed: int = 0) -> list[Identity]:
    return [identity for _, identity in sample_families(random.Random(seed), count, set())]


def test_the_vocabulary_covers_every_value_and_names_only_values() -> None:
    for table in (WORDS, DETAILS):
        for name, words in table.items():
            assert name in {f.name for f in fields(Identity)}, name
            assert set(words) <= set(DOMAINS[name]), (name, set(words) - set(DOMAINS[name]))
    for name, values in DOMAINS.items():
        assert set(values) <= set(WORDS[name]), name  # every drawn value can be said
    assert set(COLOUR_WORDS) == set(a.COLOURS)


def test_every_caption_word_for_the_person_is_drawn() -> None:
    """The grammar's whole vocabulary walked: each attribute word of each caption is a word for
    one of the identity's drawn attributes (pronouns, positions and "pair" included)."""
    rng = random.Random(1)
    used: set[str] = set()
    for identity in identities(600):
        allowed = words_for(identity)
        for style in CLEAN.values():
            caption = write_caption(identity, style, rng)
            wrong = set(caption.attribute_words) - allowed
            assert not wrong, (wrong, caption.text, identity)
            used |= set(caption.attribute_words)
    vocabulary = {word for table in WORDS.values() for phrases in table.values()
                  for phrase in phrases for word in attribute_words(phrase)}  # fmt: skip
    assert len(vocabulary & used) >= 0.95 * len(vocabulary), sorted(vocabulary - used)


def test_truth_words_are_in_the_text_and_positions_follow_the_drawing() -> None:
    rng = random.Random(2)
    sides = 0
    for identity in identities(400, seed=2):
        caption = write_caption(identity, STYLES["cuhk-pedes"], rng)
        text = caption.text.lower().replace(".", " ").replace(",", " ").split()
        assert all(w.lower() in text for w in caption.attribute_words + caption.filler_words)
        for side in ("left", "right"):
            if side in caption.attribute_words:
                sides += 1
                assert side in (identity.bag_side, identity.carried_side), caption.text
    assert sides > 20


def test_function_words_and_attribute_words_follow_the_tagger() -> None:
    """Nouns, adjectives and pronouns are attribute words (what the parser keeps); articles,
    prepositions and verbs are not."""
    words = attribute_words("she is carrying a pair of tan sandals in her left hand")
    assert words == ["she", "pair", "tan", "sandals", "her", "left", "hand"]
    assert attribute_words("he has on a navy blue coat , over his shoulder") == [
        "he", "navy", "blue", "coat", "his", "shoulder"
    ]  # fmt: skip


def test_the_new_attributes_are_sampled_and_kept_consistent() -> None:
    people = identities(2000, seed=3)
    for name in ("shoe_type", "hat", "glasses", "carried", "pattern", "upper_type"):
        values = {getattr(p, name) for p in people}
        assert set(DOMAINS[name]) <= values | {""}, (name, values)
    for p in people:
        assert p.one_piece == (p.lower_type == "") == (p.lower_colour == "")
        assert not p.socks or p.bare_ankles
        assert (p.carried_side != "") == (p.carried != "")
        assert p.gender == "female" or not {p.upper_type, p.lower_type, p.shoe_type} & set(
            a.FEMALE_ONLY + a.ONE_PIECES
        )
        if p.carried and p.bag_type == "handbag":
            assert p.carried_side != p.bag_side  # one thing per hand


FRONT = Shot(view="front", mirrored=False, centre_x=0.5, height=0.9, bottom=0.97,
             brightness=1.0, blur=0.0, jpeg_quality=0, occluded=False)  # fmt: skip
BASE = Identity(
    gender="female", hair_length="short", hair_colour="black", upper_type="t-shirt",
    sleeve="short", upper_colour="gray", pattern="plain", lower_type="shorts",
    lower_colour="blue", shoe_type="shoes", shoe_colour="black", socks="", bag_type="none",
    bag_colour="", bag_side="", carried="", carried_colour="", carried_side="", hat="",
    hat_colour="", glasses="", scarf="", belt="", skin=0,
)  # fmt: skip
VARIANTS = {
    "dress": {"upper_type": "dress", "lower_type": "", "lower_colour": ""},
    "jumpsuit": {"upper_type": "jumpsuit", "lower_type": "", "lower_colour": ""},
    "sleeveless": {"sleeve": "sleeveless"},
    "leggings": {"lower_type": "leggings"},
    **{f"shoes {t}": {"shoe_type": t} for t in a.SHOE_TYPES[:1] + a.SHOE_TYPES[2:]},
    "socks": {"socks": "white"},
    **{f"glasses {g}": {"glasses": g} for g in a.GLASSES},
    **{f"hat {h}": {"hat": h, "hat_colour": "red"} for h in a.HAT_TYPES},
    "scarf": {"scarf": "red"},
    "belt": {"belt": "brown"},
    **{f"pattern {p}": {"pattern": p} for p in a.PATTERNS[1:]},
    **{
        f"carried {c}": {
            "carried": c,
            "carried_colour": a.CARRIED_COLOURS[c][0],
            "carried_side": "left",
        }
        for c in a.CARRIED
    },
    "handbag": {"bag_type": "handbag", "bag_colour": "red", "bag_side": "left"},
    "shoulder bag": {"bag_type": "shoulder bag", "bag_colour": "red", "bag_side": "left"},
    "dark shade": {"upper_colour": "dark gray"},
    "light shade": {"upper_colour": "light gray"},
    "named tone": {"upper_colour": "khaki"},
}


def draw(identity: Identity) -> np.ndarray:
    return np.asarray(render_person(identity, FRONT, random.Random(0), 128, 64), dtype=np.int16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_new_attribute_changes_the_pixels(variant: str) -> None:
    base = draw(BASE)
    assert np.array_equal(base, draw(BASE))
    changed = np.abs(draw(replace(BASE, **VARIANTS[variant])) - base).max(axis=2) > 20
    assert changed.sum() >= 4, (variant, changed.sum())


@pytest.mark.parametrize("thing", ["carried", "bag"])
def test_the_left_hand_and_the_right_hand_are_different_places(thing: str) -> None:
    variant = VARIANTS["carried umbrella"] if thing == "carried" else VARIANTS["handbag"]
    left = draw(replace(BASE, **variant))
    right = draw(replace(BASE, **{**variant, f"{thing}_side": "right"}))
    columns = np.nonzero((np.abs(left - right).max(axis=2) > 20).any(axis=0))[0]
    assert columns.min() < 32 <= columns.max()  # one side and the other of the figure


def test_shades_and_tones_are_different_pixels() -> None:
    names = list(a.COLOURS)
    rgb = np.array([a.COLOURS[n] for n in names], dtype=float)
    distance = np.linalg.norm(rgb[:, None] - rgb[None], axis=2) + np.eye(len(names)) * 999
    assert distance.min() > 25, names[int(distance.argmin()) // len(names)]


def test_the_corpus_speaks_like_alt_text_not_like_annotators() -> None:
    rng = random.Random(4)
    people = identities(300, seed=4)
    web = [write_generic_caption(p, rng).text for p in people]
    annotated = [write_caption(p, STYLES["cuhk-pedes"], rng).text for p in people]
    assert all(t == t.lower() and not t.endswith(".") for t in web)
    assert np.mean([len(t.split()) for t in web]) < np.mean([len(t.split()) for t in annotated])
    assert not any(". " in t for t in web)  # one phrase, never several sentences
    assert sum(t.split()[0] in ("the", "this") for t in web) == 0
