"""Identities as attribute vectors, sampled in families that differ in one or two attributes.

Families give every identity look-alikes (hard negatives for CMT); colour sits in body regions so
that restoring colour from a grayscale image needs the caption (TIR).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# RGB of each colour name; the renderer jitters them per image.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (232, 232, 228),
    "gray": (128, 128, 132),
    "red": (196, 32, 36),
    "blue": (38, 72, 186),
    "green": (40, 138, 62),
    "yellow": (228, 198, 40),
    "purple": (118, 50, 150),
    "pink": (232, 128, 170),
    "brown": (118, 74, 40),
    "orange": (236, 128, 32),
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (20, 18, 18),
    "brown": (96, 58, 30),
    "blonde": (214, 180, 100),
    "gray": (150, 150, 150),
}
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (238, 200, 170), (214, 168, 130), (170, 120, 84), (112, 76, 52),
)  # fmt: skip
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "sweater")
LONG_SLEEVED_ONLY = ("jacket", "coat", "sweater")
PATTERNS = ("plain", "striped", "checked")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
JEANS_COLOURS = ("blue", "black", "gray", "white")
BAG_TYPES = ("none", "backpack", "handbag", "shoulder bag")


@dataclass(frozen=True)
class Identity:
    """Everything that identifies a synthetic person; nothing here changes between images."""

    gender: str  # male | female
    hair_length: str  # short | long
    hair_colour: str
    upper_type: str
    sleeve: str  # short | long
    upper_colour: str
    pattern: str
    lower_type: str
    lower_colour: str
    shoe_colour: str
    bag_type: str
    bag_colour: str  # "" when bag_type is none
    hat: str  # colour of a cap, "" for none
    skin: int  # index into SKIN_TONES; not described in captions

    def key(self) -> tuple[Any, ...]:
        """Attributes that a caption can describe (skin tone is not one)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "skin")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _colour(rng: random.Random, exclude: tuple[str, ...] = ()) -> str:
    return rng.choice([c for c in COLOURS if c not in exclude])


def sample_identity(rng: random.Random) -> Identity:
    """Draw an identity with plausible co-occurrences (skirts and long hair mostly for women)."""
    gender = rng.choice(("male", "female"))
    upper_type = rng.choice(UPPER_TYPES)
    bag_type = rng.choices(BAG_TYPES, weights=(3, 3, 2, 2))[0]
    return _fix(
        Identity(
            gender=gender,
            hair_length=rng.choices(
                ("short", "long"), weights=(8, 2) if gender == "male" else (3, 7)
            )[0],
            hair_colour=rng.choices(tuple(HAIR_COLOURS), weights=(5, 3, 2, 1))[0],
            upper_type=upper_type,
            sleeve=rng.choice(("short", "long")),
            upper_colour=_colour(rng),
            pattern=rng.choices(PATTERNS, weights=(6, 2, 2))[0],
            lower_type=rng.choice(LOWER_TYPES[:3] if gender == "male" else LOWER_TYPES),
            lower_colour=_colour(rng),
            shoe_colour=rng.choice(("black", "white", "gray", "brown", "red", "blue")),
            bag_type=bag_type,
            bag_colour=_colour(rng),
            hat=_colour(rng) if rng.random() < 0.2 else "",
            skin=rng.randrange(len(SKIN_TONES)),
        ),
        rng,
    )


def _fix(identity: Identity, rng: random.Random) -> Identity:
    """Enforce the constraints between attributes after sampling or mutation."""
    changes: dict[str, Any] = {}
    if identity.upper_type in LONG_SLEEVED_ONLY and identity.sleeve != "long":
        changes["sleeve"] = "long"
    if identity.lower_type == "jeans" and identity.lower_colour not in JEANS_COLOURS:
        changes["lower_colour"] = rng.choice(JEANS_COLOURS)
    if identity.gender == "male" and identity.lower_type == "skirt":
        changes["lower_type"] = rng.choice(LOWER_TYPES[:3])
    if identity.bag_type == "none" and identity.bag_colour:
        changes["bag_colour"] = ""
    if identity.bag_type != "none" and not identity.bag_colour:
        changes["bag_colour"] = _colour(rng)
    return replace(identity, **changes) if changes else identity


# Attributes a family member may differ in, and how to draw a new value for each.
_MUTATIONS = {
    "hair_colour": lambda rng, cur: rng.choice([c for c in HAIR_COLOURS if c != cur]),
    "hair_length": lambda rng, cur: "long" if cur == "short" else "short",
    "upper_colour": lambda rng, cur: _colour(rng, (cur,)),
    "upper_type": lambda rng, cur: rng.choice([t for t in UPPER_TYPES if t != cur]),
    "pattern": lambda rng, cur: rng.choice([p for p in PATTERNS if p != cur]),
    "lower_colour": lambda rng, cur: _colour(rng, (cur,)),
    "lower_type": lambda rng, cur: rng.choice([t for t in LOWER_TYPES if t != cur]),
    "shoe_colour": lambda rng, cur: _colour(rng, (cur,)),
    "bag_type": lambda rng, cur: rng.choice([b for b in BAG_TYPES if b != cur]),
    "bag_colour": lambda rng, cur: _colour(rng, (cur,)),
    "hat": lambda rng, cur: "" if cur else _colour(rng),
}


def mutate(identity: Identity, rng: random.Random, n_changes: int) -> Identity:
    """A look-alike of ``identity`` that differs in ``n_changes`` describable attributes."""
    for _ in range(100):
        names = rng.sample(sorted(_MUTATIONS), n_changes)
        changed = replace(
            identity, **{name: _MUTATIONS[name](rng, getattr(identity, name)) for name in names}
        )
        changed = _fix(changed, rng)
        differing = sum(a != b for a, b in zip(identity.key(), changed.key(), strict=True))
        if differing in (n_changes, n_changes + 1) and changed.key() != identity.key():
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
