"""What a weights file declares, checked before anything is inflated or copied.

A hostile file cannot make reading it blow up memory: zip entries may unpack to at most
``MAX_GROWTH`` times the file's size (a zip bomb inflates a few MB to GBs), no entry is read past
its declared size, and every tensor must be a view whose elements are distinct and inside its
storage (an expanded, stride-0 tensor stands for GBs in a few bytes). Shared by the torch-file
readers (``uit.model.weights``) and the TorchScript reader (``uit.model.torchscript``).
"""

from __future__ import annotations

import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from uit.core.errors import WeightsError

MAX_GROWTH = 2  # what a file may unpack to, or copy out as tensors, in multiples of its size


def byte_budget(path: Path) -> int:
    """The most bytes that reading ``path`` may unpack or copy out: weights barely compress and
    torch stores them uncompressed, so a file never legitimately unpacks to much more than its
    own size; twice that leaves room for tied weights, which share their bytes."""
    return MAX_GROWTH * path.stat().st_size


def check_unpacked_sizes(path: Path, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse, before anything is read, an archive whose entries declare more bytes than the
    file could hold (a zip bomb: a few MB that inflate to GBs); readers then read no entry past
    its declared size (``read_entry``)."""
    declared = sum(entry.file_size for entry in entries)
    if declared <= byte_budget(path):
        return
    largest = max(entries, key=lambda entry: entry.file_size)
    raise WeightsError(
        f"{path}: its zip entry {largest.filename} unpacks to {largest.file_size:,} bytes from "
        f"{largest.compress_size:,} (all entries: {declared:,} bytes from a file of "
        f"{path.stat().st_size:,}), more than a weights file ever unpacks to; refused before "
        "reading it. Use the file as torch saved it (torch stores weights uncompressed)."
    )


UNSAFE_VIEW_FIX = (
    "no saved weight is one. Re-save the weights from the model that uses them (its state_dict() "
    "with torch.save or safetensors), or use the original file"
)


def view_problem(
    shape: Sequence[int], stride: Sequence[int], offset: int, storage: int
) -> str | None:
    """What keeps a view of a flat storage of ``storage`` elements from being a weight, or None.
    A weight's elements are distinct and inside its storage; an expanded tensor (stride 0)
    instead repeats a few stored bytes into as many GBs as its shape says, once copied."""
    described = f"is a {' x '.join(map(str, shape)) or 'scalar'} view with strides {tuple(stride)}"
    if len(shape) != len(stride) or offset < 0 or min((*shape, *stride, 0)) < 0:
        return f"{described} from offset {offset}, which no tensor has"
    if 0 in shape:
        return None  # nothing to read
    reach = 1  # a dimension must step over everything the dimensions of smaller strides span
    for step, size in sorted((st, n) for n, st in zip(shape, stride, strict=True) if n > 1):
        if step < reach:
            return (
                f"{described} whose elements overlap: {math.prod(shape):,} elements drawn from a "
                f"storage of {storage:,}"
            )
        reach = step * size
    last = offset + sum((n - 1) * st for n, st in zip(shape, stride, strict=True))
    if last >= storage:
        return f"{described} from offset {offset}, past the {storage:,} elements of its storage"
    return None


# What a cut or damaged archive raises on the way (a bad pickle, a missing storage, bad sizes)
DAMAGED_ARCHIVE = (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, OSError,
                   RuntimeError, ValueError, TypeError, IndexError, AttributeError,
                   RecursionError, OverflowError, zlib.error, struct.error)  # fmt: skip


def read_entry(archive: zipfile.ZipFile, name: str, size: int | None = None) -> bytes:
    """The first ``size`` bytes of an entry (all of it by default), never more than it declares:
    asked for a bounded size, zipfile inflates no more than that, whatever the entry's
    compressed stream holds (the declared sizes were checked against the file's by
    ``check_unpacked_sizes``)."""
    info = archive.getinfo(name)
    with archive.open(info) as entry:
        return entry.read(info.file_size if size is None else min(size, info.file_size))
