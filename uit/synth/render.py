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
    def colour(name: str) -> RGB:  # jittered even when absent: the same draws either way
        return _jitter(rng, COLOURS[name or "black"])

    p = identity
    return {
        "skin": _jitter(rng, SKIN_TONES[p.skin], 8),
        "hair": _jitter(rng, HAIR_COLOURS[p.hair_colour], 10),
        "upper": colour(p.upper_colour),
        "lower": colour(p.lower_colour or p.upper_colour),
        "shoes": colour(p.shoe_colour),
        "socks": colour(p.socks),
        "bag": colour(p.bag_colour),
        "carried": colour(p.carried_colour),
        "hat": colour(p.hat_colour),
        "scarf": colour(p.scarf),
        "belt": colour(p.belt),
    }


@dataclass(frozen=True)
class _Body:
    """Where the figure's parts are, in canvas units, for one view."""

    view: str
    shoulder: float
    hip: float

    @property
    def side(self) -> bool:
        return self.view == "side"


def _body(p: Identity, view: str) -> _Body:
    side = view == "side"
    shoulder = (0.10 if side else 0.16) * (0.85 if p.gender == "female" else 1.0)
    hip = (0.09 if side else 0.12) * (1.08 if p.gender == "female" else 1.0)
    return _Body(view, shoulder, hip)


def _draw_person(c: _Canvas, p: Identity, view: str, colours: dict[str, RGB]) -> None:
    body = _body(p, view)
    if p.bag_type == "backpack" and body.side:
        c.rect(-body.shoulder - 0.07, 0.18, -body.shoulder + 0.01, 0.40, colours["bag"])
    _draw_legs(c, p, body, colours)
    _draw_shoes(c, p, body, colours)
    _draw_torso(c, p, body, colours)
    _draw_arms(c, p, body, colours)
    _draw_neck_and_waist(c, p, body, colours)
    _draw_bag(c, p, body, colours)
    _draw_carried(c, p, body, colours)
    _draw_head(c, p, view, colours)


def _leg_spans(body: _Body, narrow: bool = False) -> list[tuple[float, float]]:
    leg = body.hip * (0.65 if narrow else 0.8)
    if body.side:
        return [(-leg * 0.5, leg * 0.5)]
    return [(-body.hip, -body.hip + leg), (body.hip - leg, body.hip)]


_LOWER_END = {"trousers": 0.92, "jeans": 0.92, "shorts": 0.64, "skirt": 0.47, "leggings": 0.92,
              "jumpsuit": 0.92, "dress": 0.47}  # fmt: skip


def _draw_legs(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    garment = p.upper_type if p.one_piece else p.lower_type
    xs = _leg_spans(body, narrow=garment == "leggings")
    for x0, x1 in xs:
        c.rect(x0, 0.47, x1, 0.93, colours["skin"])
        c.rect(x0, 0.47, x1, _LOWER_END[garment], colours["lower"])
        if p.socks:
            c.rect(x0, 0.86, x1, 0.93, colours["socks"])
    if garment in ("skirt", "dress"):
        bottom = 0.70 if garment == "skirt" else 0.74
        flare = body.hip * (1.5 if garment == "skirt" else 1.7)
        c.poly([(-body.hip, 0.46), (body.hip, 0.46), (flare, bottom), (-flare, bottom)],
               colours["lower"])  # fmt: skip
    if garment == "jeans":  # seams: a slightly darker stripe down each leg
        for x0, x1 in xs:
            c.line((x0 + x1) / 2, 0.5, (x0 + x1) / 2, 0.9, _darker(colours["lower"], 35), 0.006)


def _darker(rgb: RGB, amount: int) -> RGB:
    r, g, b = (max(0, v - amount) for v in rgb)
    return (r, g, b)


def _draw_shoes(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    shoes, toe = colours["shoes"], 0.04 if body.side else 0.01
    for x0, x1 in _leg_spans(body):
        if p.shoe_type == "boots":
            c.rect(x0 - 0.01, 0.83, x1 + toe, 1.0, shoes)
        elif p.shoe_type == "sandals":
            c.rect(x0, 0.93, x1 + toe, 0.99, colours["skin"])
            c.rect(x0 - 0.01, 0.985, x1 + toe, 1.0, shoes)
            c.line(x0, 0.95, x1 + toe, 0.95, shoes, 0.012)
        elif p.shoe_type == "heels":
            c.rect(x0, 0.93, x1 + toe, 0.975, shoes)
            c.rect(x0, 0.975, x0 + 0.012, 1.0, shoes)
        else:
            c.rect(x0 - 0.01, 0.925, x1 + toe, 1.0, shoes)
        if p.shoe_type == "sneakers":  # a white sole, grey under white shoes
            c.rect(x0 - 0.01, 0.985, x1 + toe, 1.0, _contrast(shoes))


def _draw_torso(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    shoulder, hip = body.shoulder, body.hip
    bottom = 0.56 if p.upper_type == "coat" else 0.49
    outline = [(-shoulder, 0.16), (shoulder, 0.16), (hip * 1.05, bottom), (-hip * 1.05, bottom)]
    c.poly(outline, colours["upper"])
    _draw_pattern(c, p, body, bottom, colours["upper"])
    if p.upper_type in ("jacket", "coat", "shirt", "hoodie"):  # an opening down the front
        c.line(0, 0.17, 0, bottom, _darker(colours["upper"], 45), 0.008)
    if p.upper_type == "hoodie":  # the hood, behind the neck
        c.rect(-0.06, 0.12, 0.06, 0.18 if body.view == "back" else 0.15, colours["upper"])


def _draw_pattern(c: _Canvas, p: Identity, body: _Body, bottom: float, base: RGB) -> None:
    mark, shoulder = _contrast(base), body.shoulder
    if p.pattern in ("striped", "checked"):
        for k in range(5):
            y = 0.2 + k * (bottom - 0.2) / 5
            c.line(-shoulder * 0.95, y, shoulder * 0.95, y, mark, 0.014)
    if p.pattern == "checked":
        for k in range(-2, 3):
            x = k * shoulder * 0.4
            c.line(x, 0.17, x, bottom - 0.01, mark, 0.012)
    if p.pattern == "floral":  # small blossoms in a staggered grid
        for row in range(4):
            y = 0.21 + row * (bottom - 0.24) / 3
            for k in range(-1, 2):
                x = (k + 0.5 * (row % 2)) * shoulder * 0.55
                c.ellipse(x - 0.018, y - 0.018, x + 0.018, y + 0.018, (236, 200, 60))
                c.ellipse(x - 0.007, y - 0.007, x + 0.007, y + 0.007, (200, 40, 90))
    if p.pattern == "logo" and body.view != "back":
        c.rect(-shoulder * 0.45, 0.23, shoulder * 0.45, 0.32, mark)


def _draw_arms(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    arm, shoulder = 0.05, body.shoulder
    sleeve_end = {"long": 0.48, "short": 0.28, "sleeveless": 0.165}[p.sleeve]
    for x0, x1 in [(-arm / 2, arm / 2)] if body.side else [(-shoulder - arm, -shoulder),
                                                           (shoulder, shoulder + arm)]:  # fmt: skip
        c.rect(x0, 0.17, x1, 0.50, colours["skin"])
        c.rect(x0, 0.16, x1, sleeve_end, colours["upper"])


def _draw_neck_and_waist(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    if p.scarf:
        c.rect(-0.05, 0.12, 0.05, 0.18, colours["scarf"])
        if body.view == "front":
            c.rect(0.005, 0.17, 0.04, 0.30, colours["scarf"])
    if p.belt:
        y = 0.40 if p.upper_type == "dress" else 0.47
        c.rect(-body.hip * 1.06, y, body.hip * 1.06, y + 0.022, colours["belt"])


def _hand_x(c: _Canvas, body: _Body, side: str) -> float:
    """Canvas x of the person's left or right hand: their left is the image's right from the
    front, its left from behind; one arm shows from the side."""
    if body.side:
        return 0.0
    facing = 1 if body.view == "front" else -1
    image_x = (body.shoulder + 0.025) * facing * (1 if side == "left" else -1)
    return image_x * c.sign


def _draw_bag(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    bag, shoulder, hip = colours["bag"], body.shoulder, body.hip
    if p.bag_type == "backpack" and body.view == "back":
        c.rect(-shoulder * 0.8, 0.18, shoulder * 0.8, 0.42, bag)
    elif p.bag_type == "backpack" and body.view == "front":
        for x in (-shoulder * 0.6, shoulder * 0.6):
            c.line(x, 0.16, x, 0.36, bag, 0.022)
    elif p.bag_type == "handbag":
        x = _hand_x(c, body, p.bag_side)
        c.rect(x - 0.045, 0.46, x + 0.045, 0.56, bag)
    elif p.bag_type == "shoulder bag":
        x = _hand_x(c, body, p.bag_side)
        direction = 1 if x >= 0 else -1
        c.line(x * 0.8, 0.16, direction * hip * 1.3, 0.42, bag, 0.016)
        c.rect(direction * hip * 0.9, 0.40, direction * hip * 1.8, 0.50, bag)


def _draw_carried(c: _Canvas, p: Identity, body: _Body, colours: dict[str, RGB]) -> None:
    if not p.carried:
        return
    x, colour = _hand_x(c, body, p.carried_side), colours["carried"]
    if p.carried == "umbrella":  # closed, hanging from the hand to the ground
        c.poly([(x - 0.02, 0.50), (x + 0.02, 0.50), (x + 0.006, 0.86), (x - 0.006, 0.86)], colour)
        c.line(x, 0.45, x, 0.50, (40, 40, 40), 0.01)
    elif p.carried == "phone":
        c.rect(x - 0.018, 0.45, x + 0.018, 0.51, colour)
    elif p.carried == "bottle":
        c.rect(x - 0.02, 0.47, x + 0.02, 0.57, colour)
        c.rect(x - 0.01, 0.455, x + 0.01, 0.47, (230, 230, 230))
    else:  # a paper bag with its handles
        c.rect(x - 0.055, 0.50, x + 0.055, 0.62, colour)
        c.line(x - 0.02, 0.47, x - 0.02, 0.50, _darker(colour, 60), 0.006)
        c.line(x + 0.02, 0.47, x + 0.02, 0.50, _darker(colour, 60), 0.006)


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
    _draw_glasses(c, p, view)
    _draw_hat(c, p, colours["hat"])


def _draw_glasses(c: _Canvas, p: Identity, view: str) -> None:
    if not p.glasses or view == "back":
        return
    y0, y1 = 0.058, 0.078
    lenses = [(0.01, 0.06)] if view == "side" else [(-0.055, -0.01), (0.01, 0.055)]
    frame = (20, 20, 24)
    for x0, x1 in lenses:
        if p.glasses == "sunglasses":
            c.rect(x0, y0, x1, y1 + 0.006, frame)
        else:
            c.line(x0, y0, x1, y0, frame, 0.006)
            c.line(x0, y1, x1, y1, frame, 0.006)
            c.line(x0, y0, x0, y1, frame, 0.006)
            c.line(x1, y0, x1, y1, frame, 0.006)
    if view == "front":
        c.line(-0.01, y0 + 0.004, 0.01, y0 + 0.004, frame, 0.006)


def _draw_hat(c: _Canvas, p: Identity, colour: RGB) -> None:
    r = 0.065
    if p.hat == "cap":
        c.ellipse(-r * 1.05, -0.01, r * 1.05, r * 0.9, colour)
        c.rect(0, r * 0.55, r * 1.7, r * 0.8, colour)  # the brim
    elif p.hat == "beanie":
        c.ellipse(-r * 1.08, -0.025, r * 1.08, r * 1.1, colour)
        c.rect(-r * 1.08, r * 0.75, r * 1.08, r * 1.0, _darker(colour, 30))  # the cuff
    elif p.hat == "hat":
        c.ellipse(-r * 0.9, -0.03, r * 0.9, r * 0.8, colour)
        c.rect(-r * 1.8, r * 0.55, r * 1.8, r * 0.8, colour)  # the wide brim


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
