"""Contact sheets: a grid of images, each with a wrapped caption under it, as one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from uit.data.images import load_rgb

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Tile:
    image: Path
    caption: str
    outline: RGB | None = None  # e.g. green for a hit, red for a miss


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def build_contact_sheet(
    tiles: Sequence[Tile],
    *,
    columns: int = 6,
    thumb_size: tuple[int, int] = (96, 192),  # (width, height)
    text_lines: int = 9,
    font_size: int = 11,
    title: str = "",
) -> Image.Image:
    """Lay ``tiles`` out in rows of ``columns``; captions longer than ``text_lines`` are cut."""
    font = ImageFont.load_default(size=font_size)
    pad, line_height = 8, font_size + 3
    cell_w = max(thumb_size[0], 150) + 2 * pad
    cell_h = thumb_size[1] + text_lines * line_height + 2 * pad
    top = 2 * line_height + pad if title else 0
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, fill="black", font=ImageFont.load_default(size=font_size + 4))
    for i, tile in enumerate(tiles):
        x, y = (i % columns) * cell_w + pad, top + (i // columns) * cell_h + pad
        thumb = load_rgb(tile.image).resize(thumb_size, Image.Resampling.BICUBIC)
        x_img = x + (cell_w - 2 * pad - thumb_size[0]) // 2
        sheet.paste(thumb, (x_img, y))
        if tile.outline:
            draw.rectangle([x_img - 3, y - 3, x_img + thumb_size[0] + 2, y + thumb_size[1] + 2],
                           outline=tile.outline, width=3)  # fmt: skip
        lines = _wrap(tile.caption, font, cell_w - 2 * pad)
        if len(lines) > text_lines:
            lines = [*lines[: text_lines - 1], lines[text_lines - 1] + " ..."]
        for k, line in enumerate(lines):
            draw.text((x, y + thumb_size[1] + 4 + k * line_height), line, fill="black", font=font)
    return sheet
