"""Identities as attribute vectors, sampled in families that differ in one or two attributes.

Families give every identity look-alikes (hard negatives for CMT); colour sits in body regions so
that restoring colour from a grayscale image needs the caption (TIR). Every attribute here is
drawn by ``uit.synth.render`` and may be named by ``uit.synth.captions``; "" means absent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# RGB of each colour name; the renderer jitters them per image. Shades ("dark blue", "light
# gray") and named tones ("navy", "khaki") are colours of their own, drawn as different pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (235, 235, 230),
    "gray": (128, 128, 132),
    "dark gray": (76, 76, 80),
    "light gray": (184, 184, 188),
    "red": (196, 32, 36),
    "maroon": (112, 24, 40),
    "pink": (232, 128, 170),
    "orange": (236, 128, 32),
    "yellow": (228, 198, 40),
    "green": (40, 138, 62),
    "dark green": (24, 80, 44),
    "light green": (150, 210, 140),
    "olive": (110, 112, 50),
    "blue": (38, 72, 186),
    "dark blue": (30, 44, 124),
    "light blue": (130, 176, 230),
    "navy": (22, 28, 70),
    "purple": (118, 50, 150),
    "brown": (118, 74, 40),
    "dark brown": (70, 44, 26),
    "tan": (200, 150, 100),
    "khaki": (176, 170, 112),
    "beige": (222, 206, 172),
}
DARK_COLOURS = ("black", "dark gray", "maroon", "dark green", "dark blue", "navy", "dark brown")
LIGHT_COLOURS = ("white", "light gray", "light green", "light blue", "beige")
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 18, 18),
    "brown": (96, 58, 30),
    "blonde": (214, 180, 100),
    "gray": (150, 150, 150),
}
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (238, 200, 170), (214, 168, 130), (170, 120, 84), (112, 76, 52),
)  # fmt: skip

UPPER_TYPES = ("t-shirt", "shirt", "blouse", "tank top", "hoodie", "jacket", "coat", "sweater")
ONE_PIECES = ("dress", "jumpsuit")  # cover the lower body too: lower_type is ""
FEMALE_ONLY = ("blouse", "dress", "skirt", "heels")
LONG_SLEEVED_ONLY = ("hoodie", "jacket", "coat", "sweater")
SLEEVELESS_ONLY = ("tank top",)
SLEEVES = ("short", "long", "sleeveless")
PATTERNS = ("plain", "striped", "checked", "floral", "logo")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt", "leggings")
JEANS_COLOURS = ("blue", "dark blue", "light blue", "black", "gray", "white")
SHOE_TYPES = ("sneakers", "shoes", "boots", "sandals", "heels")
SHOE_COLOURS = ("black", "white", "gray", "brown", "dark brown", "tan", "red", "blue", "navy")
BAG_TYPES = ("none", "backpack", "handbag", "shoulder bag")
CARRIED = ("umbrella", "phone", "bottle", "paper bag")
CARRIED_COLOURS = {
    "umbrella": ("black", "red", "blue", "navy", "green", "yellow", "purple", "pink"),
    "phone": ("black", "white"),
    "bottle": ("blue", "green", "white", "red", "light blue"),
    "paper bag": ("tan", "brown", "white"),
}
HAT_TYPES = ("cap", "beanie", "hat")
GLASSES = ("glasses", "sunglasses")
SIDES = ("left", "right")


@dataclass(frozen=True)
class Identity:
    """Everything that identifies a synthetic person; nothing here changes between images."""

    gender: str  # male | female
    hair_length: str  # short | long
    hair_colour: str
    upper_type: str  # UPPER_TYPES or ONE_PIECES
    sleeve: str  # short | long | sleeveless
    upper_colour: str
    pattern: str
    lower_type: str  # "" under a one-piece
    lower_colour: str  # "" under a one-piece
    shoe_type: str
    shoe_colour: str
    socks: str  # colour of visible socks, "" for none (or hidden)
    bag_type: str
    bag_colour: str  # "" when bag_type is none
    bag_side: str  # the hand or shoulder of a handbag or shoulder bag, else ""
    carried: str  # CARRIED or ""
    carried_colour: str
    carried_side: str  # the hand holding it
    hat: str  # HAT_TYPES or ""
    hat_colour: str
    glasses: str  # GLASSES or ""
    scarf: str  # colour or ""
    belt: str  # colour or ""
    skin: int  # index into SKIN_TONES; not described in captions

    def key(self) -> tuple[Any, ...]:
        """Attributes that a caption can describe (skin tone is not one)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "skin")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def one_piece(self) -> bool:
        return self.upper_type in ONE_PIECES

    @property
    def bare_ankles(self) -> bool:
        """Whether socks would show: legs bare below the garment, shoes below the ankle."""
        short_lower = self.lower_type in ("shorts", "skirt") or self.upper_type == "dress"
        return short_lower and self.shoe_type != "boots"


def _colour(rng: random.Random, exclude: tuple[str, ...] = ()) -> str:
    return rng.choice([c for c in COLOURS if c not in exclude])


def _maybe(rng: random.Random, p: float, value: str) -> str:
    return value if rng.random() < p else ""


def _clothes(rng: random.Random, gender: str) -> dict[str, str]:
    female = gender == "female"
    uppers = UPPER_TYPES + ONE_PIECES if female else UPPER_TYPES
    upper = rng.choices(uppers, weights=[4, 3, 2, 1, 2, 3, 2, 2] + ([3, 1] if female else []))[0]
    lower = rng.choice(LOWER_TYPES if female else LOWER_TYPES[:3])
    return {
        "upper_type": upper,
        "sleeve": rng.choice(SLEEVES),
        "upper_colour": _colour(rng),
        "pattern": rng.choices(PATTERNS, weights=(10, 3, 2, 2, 2))[0],
        "lower_type": lower,
        "lower_colour": _colour(rng),
        "shoe_type": rng.choices(SHOE_TYPES, weights=(5, 3, 2, 2, 2 if female else 0))[0],
        "shoe_colour": rng.choice(SHOE_COLOURS),
        "socks": _maybe(rng, 0.3, rng.choice(("white", "black", "gray"))),
    }


def _belongings(rng: random.Random) -> dict[str, str]:
    bag_type = rng.choices(BAG_TYPES, weights=(4, 3, 2, 2))[0]
    carried = _maybe(rng, 0.3, rng.choice(CARRIED))
    return {
        "bag_type": bag_type,
        "bag_colour": _colour(rng),
        "bag_side": rng.choice(SIDES),
        "carried": carried,
        "carried_colour": rng.choice(CARRIED_COLOURS[carried]) if carried else "",
        "carried_side": rng.choice(SIDES),
        "hat": _maybe(rng, 0.2, rng.choice(HAT_TYPES)),
        "hat_colour": _colour(rng),
        "glasses": _maybe(rng, 0.25, rng.choice(GLASSES)),
        "scarf": _maybe(rng, 0.1, _colour(rng)),
        "belt": _maybe(rng, 0.12, rng.choice(("black", "brown", "dark brown", "tan", "white"))),
    }


def sample_identity(rng: random.Random) -> Identity:
    """Draw an identity with plausible co-occurrences (dresses and long hair mostly for women)."""
    gender = rng.choice(("male", "female"))
    hair_weights = (8, 2) if gender == "male" else (3, 7)
    return _fix(
        Identity(
            gender=gender,
            hair_length=rng.choices(("short", "long"), weights=hair_weights)[0],
            hair_colour=rng.choices(tuple(HAIR_COLOURS), weights=(5, 3, 2, 1))[0],
            **_clothes(rng, gender),
            **_belongings(rng),
            skin=rng.randrange(len(SKIN_TONES)),
        ),
        rng,
    )


def _garment_changes(p: Identity, rng: random.Random) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if p.gender == "male":
        for name in ("upper_type", "lower_type", "shoe_type"):
            if getattr(p, name) in FEMALE_ONLY + ONE_PIECES:
                options = {"upper_type": UPPER_TYPES[:2], "lower_type": LOWER_TYPES[:3],
                           "shoe_type": SHOE_TYPES[:3]}[name]  # fmt: skip
                changes[name] = rng.choice(options)
    upper = changes.get("upper_type", p.upper_type)
    if upper in LONG_SLEEVED_ONLY and p.sleeve != "long":
        changes["sleeve"] = "long"
    elif upper in SLEEVELESS_ONLY and p.sleeve != "sleeveless":
        changes["sleeve"] = "sleeveless"
    elif upper not in LONG_SLEEVED_ONLY + SLEEVELESS_ONLY + ONE_PIECES and p.sleeve == "sleeveless":
        changes["sleeve"] = "short"
    if upper in ONE_PIECES:
        changes.update(lower_type="", lower_colour="")
    else:
        if not p.lower_type:
            changes["lower_type"] = rng.choice(LOWER_TYPES[:3])
        if not p.lower_colour:
            changes["lower_colour"] = _colour(rng)
    lower = changes.get("lower_type", p.lower_type)
    colour = changes.get("lower_colour", p.lower_colour)
    if lower == "jeans" and colour not in JEANS_COLOURS:
        changes["lower_colour"] = rng.choice(JEANS_COLOURS)
    return changes


def _belonging_changes(p: Identity, rng: random.Random) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if p.bag_type == "none" and (p.bag_colour or p.bag_side):
        changes.update(bag_colour="", bag_side="")
    if p.bag_type != "none" and not p.bag_colour:
        changes["bag_colour"] = _colour(rng)
    if p.bag_type in ("handbag", "shoulder bag") and not p.bag_side:
        changes["bag_side"] = rng.choice(SIDES)
    if p.bag_type == "backpack" and p.bag_side:
        changes["bag_side"] = ""
    if not p.carried and (p.carried_colour or p.carried_side):
        changes.update(carried_colour="", carried_side="")
    if p.carried and p.carried_colour not in CARRIED_COLOURS[p.carried]:
        changes["carried_colour"] = rng.choice(CARRIED_COLOURS[p.carried])
    if p.carried and not p.carried_side:
        changes["carried_side"] = rng.choice(SIDES)
    side = changes.get("carried_side", p.carried_side)
    if p.carried and p.bag_type == "handbag" and side == changes.get("bag_side", p.bag_side):
        changes["carried_side"] = "left" if side == "right" else "right"  # one object per hand
    if not p.hat and p.hat_colour:
        changes["hat_colour"] = ""
    if p.hat and not p.hat_colour:
        changes["hat_colour"] = _colour(rng)
    return changes


def _fix(identity: Identity, rng: random.Random) -> Identity:
    """Enforce the constraints between attributes after sampling or mutation."""
    changes = _garment_changes(identity, rng)
    identity = replace(identity, **changes) if changes else identity
    changes = _belonging_changes(identity, rng)
    if identity.socks and not identity.bare_ankles:
        changes["socks"] = ""
    return replace(identity, **changes) if changes else identity


def _other(rng: random.Random, options: tuple[str, ...], current: str) -> str:
    return rng.choice([o for o in options if o != current])


# Attributes a family member may differ in, and how to draw a new value for each.
_MUTATIONS: dict[str, Callable[[random.Random, str], str]] = {
    "hair_colour": lambda rng, cur: _other(rng, tuple(HAIR_COLOURS), cur),
    "hair_length": lambda rng, cur: "long" if cur == "short" else "short",
    "upper_colour": lambda rng, cur: _colour(rng, (cur,)),
    "upper_type": lambda rng, cur: _other(rng, UPPER_TYPES + ONE_PIECES, cur),
    "pattern": lambda rng, cur: _other(rng, PATTERNS, cur),
    "lower_colour": lambda rng, cur: _colour(rng, (cur,)),
    "lower_type": lambda rng, cur: _other(rng, LOWER_TYPES, cur),
    "shoe_type": lambda rng, cur: _other(rng, SHOE_TYPES, cur),
    "shoe_colour": lambda rng, cur: _other(rng, SHOE_COLOURS, cur),
    "bag_type": lambda rng, cur: _other(rng, BAG_TYPES, cur),
    "bag_colour": lambda rng, cur: _colour(rng, (cur,)),
    "bag_side": lambda rng, cur: _other(rng, SIDES, cur),
    "carried": lambda rng, cur: _other(rng, ("", *CARRIED), cur),
    "carried_side": lambda rng, cur: _other(rng, SIDES, cur),
    "hat": lambda rng, cur: _other(rng, ("", *HAT_TYPES), cur),
    "glasses": lambda rng, cur: _other(rng, ("", *GLASSES), cur),
    "scarf": lambda rng, cur: "" if cur else _colour(rng),
    "belt": lambda rng, cur: "" if cur else rng.choice(("black", "brown")),
}


def mutate(identity: Identity, rng: random.Random, n_changes: int) -> Identity:
    """A look-alike of ``identity`` that differs in ``n_changes`` describable attributes (and the
    ones they bring along: a new bag's colour, the lower garment a dress replaces)."""
    for _ in range(100):
        names = rng.sample(sorted(_MUTATIONS), n_changes)
        new: dict[str, Any] = {
            name: _MUTATIONS[name](rng, getattr(identity, name)) for name in names
        }
        changed = replace(identity, **new)
        changed = _fix(changed, rng)
        differing = sum(a != b for a, b in zip(identity.key(), changed.key(), strict=True))
        if n_changes <= differing <= n_changes + 2 and changed.key() != identity.key():
            return changed
    raise AssertionError("could not mutate an identity")  # unreachable with these attributes


def sample_families(
    rng: random.Random, n_identities: int, seen: set[tuple[Any, ...]], first_family: int = 0
) -> list[tuple[int, Identity]]:
    """``n_identities`` identities not in ``seen`` as (family, identity); families of 2 to 4.

    ``seen`` is updated, so successive calls (one per split) never repeat an identity.
    """
    result: list[tuple[int, Identity]] = []
    family = first_family
    while len(result) < n_identities:
        base = sample_identity(rng)
        members = [base] + [
            mutate(base, rng, rng.choice((1, 1, 2))) for _ in range(rng.randint(1, 3))
        ]
        for member in members:
            if member.key() not in seen and len(result) < n_identities:
                seen.add(member.key())
                result.append((family, member))
        family += 1
    return result
