"""The one way an image file becomes the 8-bit RGB picture the model (or a report) sees.

Every decode problem is an ``ImageError`` (a ``DataError``) naming the file and the fix, never a
PIL, OS or numpy exception. High-bit-depth images are scaled to 8 bits, not clipped; transparent
pixels are laid over white; the EXIF orientation is honoured (the picture as every viewer shows
it is the one a caption describes; the benchmarks' crops carry no orientation tag).

Only regular files of at most ``MAX_IMAGE_BYTES`` are read (``open_image_file``): a FIFO would
block the reader forever, a link to ``/dev/zero`` would fill its memory.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from uit.core.errors import DataError

# PIL only warns between MAX_IMAGE_PIXELS and twice that: make the warning an error (and
# _refuse_bomb refuses those images anyway, where something resets the warning filters).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

BACKGROUND = (255, 255, 255)  # what transparent pixels become
# A person crop is tens of kilobytes; an uncompressed 8-megapixel photo is 24 MiB. Anything
# bigger is not a gallery image (a sparse file, a disk image) and is refused unread.
MAX_IMAGE_BYTES = 64 << 20
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_STALE = "if a prepared folder lists it, that folder is stale: re-run `uit data prepare`"
_DROP = "replace the file, or drop it with `uit data prepare ... --drop-missing`"
# O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer (then fstat refuses
# it); it changes nothing for a regular file.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class ImageError(DataError):
    """An image file that is missing, not a regular file, or cannot be decoded.

    ``problem`` says what is wrong without the path or the fix, so that a caller that knows where
    the file comes from (a folder gallery, not a prepared benchmark) can give another fix
    (``with_fix``) and a server can answer without showing the file system's paths.

    A ``DataLoader`` worker's exception reaches the main process rebuilt from its formatted
    traceback (``Caught ImageError in DataLoader worker process 0. Original Traceback ...``);
    the constructor keeps only the original message, so the CLI prints a message, not a trace.
    """

    def __init__(self, message: str, *, path: Path | None = None, problem: str = "") -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)
        self.path, self.problem = path, problem or message

    @classmethod
    def of(cls, path: str | Path, problem: str, fix: str) -> ImageError:
        return cls(f"{path}: {problem}; {fix}", path=Path(path), problem=problem)

    def with_fix(self, fix: str) -> ImageError:
        """The same problem with another fix (the message as it is when the path is unknown)."""
        return self if self.path is None else ImageError.of(self.path, self.problem, fix)


def open_image_file(path: str | Path, inside: str | Path | None = None) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file of at most
    ``MAX_IMAGE_BYTES`` (not a FIFO, which would block, nor a device such as ``/dev/zero``,
    which never ends, nor a folder) and, with ``inside``, really under that folder (symbolic
    links followed; ``inside`` itself may be one).

    The checks that count are made on the opened file (``fstat``), so a file swapped between a
    check and the open is still caught; a first ``stat`` only keeps devices from being opened."""
    path = Path(path)
    with suppress(OSError):  # missing or unreadable: the open says which
        _check_kind(path, os.stat(path))
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ImageError.of(path, "image file not found", _STALE) from None
    except OSError as error:
        raise ImageError.of(path, f"cannot be opened ({error.strerror})", _STALE) from None
    handle = os.fdopen(fd, "rb")
    try:
        _check_kind(path, os.fstat(fd))
        if inside is not None:
            _check_inside(path, Path(inside), os.fstat(fd))
    except BaseException:
        handle.close()
        raise
    return handle


def _check_kind(path: Path, status: os.stat_result) -> None:
    if stat.S_ISDIR(status.st_mode):
        raise ImageError.of(path, "is a folder, not an image file", _STALE)
    if not stat.S_ISREG(status.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(status.st_mode) else "a device or other special file"
        raise ImageError.of(path, f"is {kind}, not a regular image file", _DROP)
    if status.st_size > MAX_IMAGE_BYTES:
        raise ImageError.of(path, f"{status.st_size:,} bytes, over the limit of "
                                  f"{MAX_IMAGE_BYTES:,} for one image", _DROP)  # fmt: skip


def _check_inside(path: Path, folder: Path, opened: os.stat_result) -> None:
    """The real location of ``path`` is under ``folder``'s, and it is the file that was opened."""
    real, root = os.path.realpath(path), os.path.join(os.path.realpath(folder), "")
    try:
        same = real.startswith(root) and os.path.samestat(os.stat(real), opened)
    except OSError:  # gone or swapped since it was opened
        same = False
    if not same:
        raise ImageError.of(path, f"leads outside {folder} through a symbolic link (to {real})",
                            "replace the link with the image file")  # fmt: skip


def read_image_bytes(path: str | Path, inside: str | Path | None = None) -> bytes:
    """The bytes of an image file, checked as ``open_image_file`` checks it (a file that grows
    past the limit while it is read is refused too)."""
    with open_image_file(path, inside) as handle:
        data = handle.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError.of(path, f"over the limit of {MAX_IMAGE_BYTES:,} bytes", _DROP)
    return data


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as an 8-bit RGB image."""
    image = _decode(Path(path))
    try:
        return to_rgb(image)
    except ValueError as error:  # a mode PIL cannot convert (LAB, HSV, ...)
        raise ImageError.of(
            path, f"cannot convert its {image.mode} pixels to RGB ({error})",
            "re-save it as an RGB or grayscale PNG or JPEG",
        ) from None  # fmt: skip


def _decode(path: Path) -> Image.Image:
    data = read_image_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            _refuse_bomb(image)
            image.load()
            return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError.of(path, f"refused as a possible decompression bomb ({error})",
                            "replace it with an image of a sensible size, or drop it with "
                            "`uit data prepare ... --drop-missing`") from None  # fmt: skip
    except Exception as error:  # a decoder fed hostile bytes can raise anything
        raise ImageError.of(path, f"not a readable image ({type(error).__name__}: {error})",
                            _DROP) from None  # fmt: skip


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
