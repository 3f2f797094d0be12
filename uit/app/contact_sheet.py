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


def thumbnail(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """``image`` scaled to fit ``box`` (width, height) with its aspect ratio kept. Small images
    (person crops are often tens of pixels wide) grow by a whole factor with NEAREST, so their
    pixels stay sharp instead of blurring; the others are resampled with LANCZOS."""
    scale = min(box[0] / image.width, box[1] / image.height)
    if scale >= 2:
        factor = int(scale)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def build_contact_sheet(
    tiles: Sequence[Tile],
    *,
    columns: int = 6,
    thumb_size: tuple[int, int] = (96, 192),  # (width, height): each image fits inside
    text_lines: int = 9,
    font_size: int = 13,  # px; 11 px captions were hard to read on a laptop screen
    title: str = "",
    min_cell_width: int = 150,  # room for the captions
    max_width: int | None = None,  # fewer columns (more rows) rather than a wider sheet
) -> Image.Image:
    """Lay ``tiles`` out in rows of ``columns``; captions longer than ``text_lines`` are cut."""
    font = ImageFont.load_default(size=font_size)
    pad, line_height = 8, font_size + 3
    cell_w = max(thumb_size[0], min_cell_width) + 2 * pad
    if max_width is not None:
        columns = max(1, min(columns, max_width // cell_w))
    cell_h = thumb_size[1] + text_lines * line_height + 2 * pad
    title_font = ImageFont.load_default(size=font_size + 4)
    title_lines = _wrap(title, title_font, columns * cell_w - 2 * pad)  # as wide as the sheet
    top = len(title_lines) * (line_height + 4) + line_height + pad if title else 0
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(title_lines):
        draw.text((pad, pad + k * (line_height + 4)), line, fill="black", font=title_font)
    for i, tile in enumerate(tiles):
        x, y = (i % columns) * cell_w + pad, top + (i // columns) * cell_h + pad
        thumb = thumbnail(load_rgb(tile.image), thumb_size)
        x_img = x + (cell_w - 2 * pad - thumb.width) // 2
        y_img = y + thumb_size[1] - thumb.height  # on the caption's line, as people stand
        sheet.paste(thumb, (x_img, y_img))
        if tile.outline:
            draw.rectangle([x_img - 3, y_img - 3, x_img + thumb.width + 2, y + thumb_size[1] + 2],
                           outline=tile.outline, width=3)  # fmt: skip
        lines = _wrap(tile.caption, font, cell_w - 2 * pad)
        if len(lines) > text_lines:
            lines = [*lines[: text_lines - 1], lines[text_lines - 1] + " ..."]
        for k, line in enumerate(lines):
            draw.text((x, y + thumb_size[1] + 4 + k * line_height), line, fill="black", font=font)
    return sheet
