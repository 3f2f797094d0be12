"""The one way an image file becomes the 8-bit RGB picture the model (or a report) sees.

Every decode problem is an ``ImageError`` (a ``DataError``) naming the file and the fix, never a
PIL, OS or numpy exception. High-bit-depth images are scaled to 8 bits, not clipped; transparent
pixels are laid over white; the EXIF orientation is honoured (the picture as every viewer shows
it is the one a caption describes; the benchmarks' crops carry no orientation tag).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from uit.core.errors import DataError

# PIL only warns between MAX_IMAGE_PIXELS and twice that: make the warning an error (and
# _refuse_bomb refuses those images anyway, where something resets the warning filters).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

BACKGROUND = (255, 255, 255)  # what transparent pixels become
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_STALE = "if a prepared folder lists it, that folder is stale: re-run `uit data prepare`"


class ImageError(DataError):
    """An image file that is missing or cannot be decoded.

    A ``DataLoader`` worker's exception reaches the main process rebuilt from its formatted
    traceback (``Caught ImageError in DataLoader worker process 0. Original Traceback ...``);
    the constructor keeps only the original message, so the CLI prints a message, not a trace.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as an 8-bit RGB image."""
    image = _decode(Path(path))
    try:
        return to_rgb(image)
    except ValueError as error:  # a mode PIL cannot convert (LAB, HSV, ...)
        raise ImageError(
            f"{path}: cannot convert its {image.mode} pixels to RGB ({error}); "
            "re-save it as an RGB or grayscale PNG or JPEG"
        ) from None


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            _refuse_bomb(image)
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found ({_STALE})") from None
    except (IsADirectoryError, PermissionError) as error:
        raise ImageError(f"{path}: cannot read the image ({error.strerror}); {_STALE}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(
            f"{path}: refused as a possible decompression bomb ({error}); replace it with an "
            "image of a sensible size, or drop it with `uit data prepare ... --drop-missing`"
        ) from None
    except Exception as error:  # a decoder fed hostile bytes can raise anything
        raise ImageError(
            f"{path}: not a readable image ({type(error).__name__}: {error}); replace the file, "
            "or drop it with `uit data prepare ... --drop-missing`"
        ) from None


def _refuse_bomb(image: Image.Image) -> None:
    """Refuse what PIL only warns about, even where its warning is not made an error."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise Image.DecompressionBombError(
            f"{image.width} x {image.height} pixels, over the limit of {limit}"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: high bit depths scaled, transparency over ``BACKGROUND``, CMYK converted."""
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        image = _scale_to_8bit(image)
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """A single-channel 16-bit, 32-bit integer or float image as 8-bit ``L``, scaled linearly."""
    values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = value_range(image.mode, values)
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def value_range(mode: str, values: np.ndarray) -> tuple[float, float]:
    """The range that maps to 0..255: the dtype's for 16-bit modes; for ``I`` and ``F``, which
    record no source depth, the first of 0..1 (floats only), 0..255, 0..65535 holding every value,
    else the values' own minimum and maximum."""
    if mode in _SIXTEEN_BIT:
        return 0.0, 65535.0
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    bounds = (1.0, 255.0, 65535.0) if mode == "F" else (65535.0,)
    for bound in bounds:
        if low >= 0 and high <= bound:
            return 0.0, bound
    return low, high
