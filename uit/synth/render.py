"""Draw a pedestrian crop of an identity with PIL.

Body regions carry the identity's colours; each image varies the view (front, back, side), the
position, scale, lighting, blur, JPEG noise and sometimes an occluder, on a cluttered background.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from uit.synth.attributes import COLOURS, HAIR_COLOURS, SKIN_TONES, Identity

RGB = tuple[int, int, int]
SUPERSAMPLE = 2  # draw large, then downsample: cheap anti-aliasing


@dataclass(frozen=True)
class Shot:
    """Per-image nuisance: nothing here identifies the person."""

    view: str  # front | back | side
    mirrored: bool
    centre_x: float  # fraction of width
    height: float  # figure height as a fraction of image height
    bottom: float  # feet position as a fraction of image height
    brightness: float
    blur: float
    jpeg_quality: int  # 0: no JPEG round trip
    occluded: bool


def sample_shot(rng: random.Random) -> Shot:
    return Shot(
        view=rng.choices(("front", "back", "side"), weights=(4, 3, 3))[0],
        mirrored=rng.random() < 0.5,
        centre_x=rng.uniform(0.42, 0.58),
        height=rng.uniform(0.78, 0.94),
        bottom=rng.uniform(0.95, 0.99),
        brightness=rng.uniform(0.7, 1.25),
        blur=rng.choice((0.0, 0.0, 0.4, 0.8)),
        jpeg_quality=rng.choice((0, 35, 60, 85)),
        occluded=rng.random() < 0.1,
    )


def _jitter(rng: random.Random, rgb: RGB, amount: int = 14) -> RGB:
    r, g, b = (max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)
    return (r, g, b)


def _contrast(rgb: RGB) -> RGB:
    """A stripe colour that stands out from ``rgb``."""
    return (30, 30, 30) if sum(rgb) > 380 else (235, 235, 235)


class _Canvas:
    """Figure coordinates: x in body half-widths from the centre, y in figure heights from the
    top."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, fh: float, sign: int):
        self.draw, self.cx, self.top, self.fh, self.sign = draw, cx, top, fh, sign

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.sign * x * self.fh, self.top + y * self.fh)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, b), (c, d) = self.xy(x0, y0), self.xy(x1, y1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        self.draw.rectangle(self.box(x0, y0, x1, y1), fill=fill)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        self.draw.ellipse(self.box(x0, y0, x1, y1), fill=fill)

    def poly(self, points: list[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([self.xy(x, y) for x, y in points], fill=fill)

    def line(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, width: float) -> None:
        self.draw.line(
            [self.xy(x0, y0), self.xy(x1, y1)], fill=fill, width=max(1, round(width * self.fh))
        )


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), _jitter(rng, (rng.randint(70, 170),) * 3, 30))
    draw = ImageDraw.Draw(image)
    ground = int(height * rng.uniform(0.6, 0.8))
    draw.rectangle([0, ground, width, height], fill=_jitter(rng, (110, 105, 100), 40))
    for _ in range(rng.randint(6, 14)):
        colour = _jitter(rng, (rng.randint(40, 200),) * 3, 45)
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.1, 0.9) * height
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * width, y0 + rng.uniform(0.05, 0.4) * height
        shape = rng.choice(("rect", "ellipse", "line"))
        if shape == "rect":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif shape == "ellipse":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=rng.randint(1, 4) * SUPERSAMPLE)
    return image


def _palette(identity: Identity, rng: random.Random) -> dict[str, RGB]:
    return {
        "skin": _jitter(rng, SKIN_TONES[identity.skin], 8),
        "hair": _jitter(rng, HAIR_COLOURS[identity.hair_colour], 10),
        "upper": _jitter(rng, COLOURS[identity.upper_colour]),
        "lower": _jitter(rng, COLOURS[identity.lower_colour]),
        "shoes": _jitter(rng, COLOURS[identity.shoe_colour]),
        "bag": _jitter(rng, COLOURS[identity.bag_colour]) if identity.bag_colour else (0, 0, 0),
        "hat": _jitter(rng, COLOURS[identity.hat]) if identity.hat else (0, 0, 0),
    }


def _draw_person(c: _Canvas, p: Identity, view: str, colours: dict[str, RGB]) -> None:
    side = view == "side"
    shoulder = (0.10 if side else 0.16) * (0.85 if p.gender == "female" else 1.0)
    hip = (0.09 if side else 0.12) * (1.08 if p.gender == "female" else 1.0)
    _draw_legs(c, p, side, hip, colours)
    if p.bag_type == "backpack" and view == "front":
        pass  # the pack is behind the body; only its straps show (drawn after the torso)
    elif p.bag_type == "backpack" and side:
        c.rect(-shoulder - 0.07, 0.18, -shoulder + 0.01, 0.40, colours["bag"])
    _draw_torso(c, p, shoulder, hip, colours)
    _draw_arms(c, p, side, shoulder, colours)
    _draw_bag(c, p, view, shoulder, hip, colours)
    _draw_head(c, p, view, colours)


def _draw_legs(c: _Canvas, p: Identity, side: bool, hip: float, colours: dict[str, RGB]) -> None:
    leg = hip * 0.8
    xs = [(-leg * 0.5, leg * 0.5)] if side else [(-hip, -hip + leg), (hip - leg, hip)]
    cover = {"trousers": 0.92, "jeans": 0.92, "shorts": 0.64, "skirt": 0.47}[p.lower_type]
    for x0, x1 in xs:
        c.rect(x0, 0.47, x1, 0.93, colours["skin"])
        c.rect(x0, 0.47, x1, cover, colours["lower"])
        c.rect(x0 - 0.01, 0.925, x1 + (0.04 if side else 0.01), 1.0, colours["shoes"])
    if p.lower_type == "skirt":
        c.poly([(-hip, 0.46), (hip, 0.46), (hip * 1.5, 0.70), (-hip * 1.5, 0.70)], colours["lower"])
    if p.lower_type == "jeans":  # seams: a slightly darker stripe down each leg
        seam = tuple(max(0, v - 35) for v in colours["lower"])
        for x0, x1 in xs:
            c.line((x0 + x1) / 2, 0.5, (x0 + x1) / 2, 0.9, seam, 0.006)  # type: ignore[arg-type]


def _draw_torso(
    c: _Canvas, p: Identity, shoulder: float, hip: float, colours: dict[str, RGB]
) -> None:
    bottom = 0.56 if p.upper_type == "coat" else 0.49
    outline = [(-shoulder, 0.16), (shoulder, 0.16), (hip * 1.05, bottom), (-hip * 1.05, bottom)]
    c.poly(outline, colours["upper"])
    stripe = _contrast(colours["upper"])
    if p.pattern in ("striped", "checked"):
        for k in range(5):
            y = 0.2 + k * (bottom - 0.2) / 5
            c.line(-shoulder * 0.95, y, shoulder * 0.95, y, stripe, 0.014)
    if p.pattern == "checked":
        for k in range(-2, 3):
            x = k * shoulder * 0.4
            c.line(x, 0.17, x, bottom - 0.01, stripe, 0.012)
    if p.upper_type in ("jacket", "coat", "shirt"):  # an opening down the front
        c.line(0, 0.17, 0, bottom, tuple(max(0, v - 45) for v in colours["upper"]), 0.008)  # type: ignore[arg-type]


def _draw_arms(
    c: _Canvas, p: Identity, side: bool, shoulder: float, colours: dict[str, RGB]
) -> None:
    arm = 0.05
    sleeve_end = 0.48 if p.sleeve == "long" else 0.28
    sides = (
        [(-arm / 2, arm / 2)]
        if side
        else [(-shoulder - arm, -shoulder), (shoulder, shoulder + arm)]
    )
    for x0, x1 in sides:
        c.rect(x0, 0.17, x1, 0.50, colours["skin"])
        c.rect(x0, 0.16, x1, sleeve_end, colours["upper"])


def _draw_bag(
    c: _Canvas, p: Identity, view: str, shoulder: float, hip: float, colours: dict[str, RGB]
) -> None:
    bag = colours["bag"]
    if p.bag_type == "backpack" and view == "back":
        c.rect(-shoulder * 0.8, 0.18, shoulder * 0.8, 0.42, bag)
    elif p.bag_type == "backpack" and view == "front":
        for x in (-shoulder * 0.6, shoulder * 0.6):
            c.line(x, 0.16, x, 0.36, bag, 0.022)
    elif p.bag_type == "handbag":
        c.rect(shoulder + 0.01, 0.46, shoulder + 0.10, 0.56, bag)
    elif p.bag_type == "shoulder bag":
        c.line(-shoulder * 0.8, 0.16, hip * 1.2, 0.44, bag, 0.016)
        c.rect(hip * 0.9, 0.40, hip * 1.8, 0.50, bag)


def _draw_head(c: _Canvas, p: Identity, view: str, colours: dict[str, RGB]) -> None:
    hair, r = colours["hair"], 0.065
    if p.hair_length == "long":
        c.rect(-r * 1.1, 0.04, r * 1.1, 0.27 if view == "back" else 0.22, hair)
    c.rect(-0.025, 0.12, 0.025, 0.17, colours["skin"])  # neck
    c.ellipse(-r, 0.0, r, 2 * r, colours["skin"] if view != "back" else hair)
    if view == "front":
        c.ellipse(-r, 0.0, r, r * 0.9, hair)
    elif view == "side":
        c.poly([(-r, 0.02), (r * 0.6, 0.0), (r * 0.3, r * 0.7), (-r, r * 1.5)], hair)
    if p.hat:
        c.ellipse(-r * 1.05, -0.01, r * 1.05, r * 0.9, colours["hat"])
        c.rect(0, r * 0.55, r * 1.7, r * 0.8, colours["hat"])  # the brim


def _occlude(image: Image.Image, rng: random.Random) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    colour = _jitter(rng, (rng.randint(50, 180),) * 3, 40)
    if rng.random() < 0.5:  # something in front of the legs: a car, a bench, a bin
        draw.rectangle([0, height * rng.uniform(0.55, 0.75), width, height], fill=colour)
    else:  # a pole or a passer-by's shoulder at one side
        x0 = width * rng.choice((rng.uniform(-0.1, 0.15), rng.uniform(0.6, 0.85)))
        draw.rectangle([x0, 0, x0 + width * rng.uniform(0.2, 0.35), height], fill=colour)


def render_person(
    identity: Identity, shot: Shot, rng: random.Random, height: int, width: int
) -> Image.Image:
    """One image of ``identity`` as seen in ``shot`` (``rng`` only adds colour jitter and
    clutter)."""
    big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    image = _background(rng, big_w, big_h)
    fh = shot.height * big_h
    top = shot.bottom * big_h - fh
    canvas = _Canvas(
        ImageDraw.Draw(image), shot.centre_x * big_w, top, fh, -1 if shot.mirrored else 1
    )
    _draw_person(canvas, identity, shot.view, _palette(identity, rng))
    if shot.occluded:
        _occlude(image, rng)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    image = ImageEnhance.Brightness(image).enhance(shot.brightness)
    if shot.blur:
        image = image.filter(ImageFilter.GaussianBlur(shot.blur))
    if shot.jpeg_quality:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=shot.jpeg_quality)
        image = Image.open(buffer).convert("RGB")
    return image
