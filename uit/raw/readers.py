"""The reader of every benchmark format, driven by its spec, producing ``ImageRecord``s.

It only parses and validates the annotation file; it does not open images (``prepare`` does).
Every problem is a ``DataError`` naming the file, the record's index and the field.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from uit.core.errors import DataError
from uit.raw.formats import BenchmarkSpec, get_spec

INT64 = (-(2**63), 2**63 - 1)  # what the manifests' pid column holds


@dataclass(frozen=True)
class ImageRecord:
    """One image with all its captions, as the annotation file lists it."""

    index: int  # position in the annotation file, for error messages
    pid: int
    path: str  # relative to the benchmark's imgs/ folder, POSIX separators
    split: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Annotations:
    """A benchmark's annotation file, parsed."""

    spec: BenchmarkSpec
    annotation_file: Path
    imgs_dir: Path
    records: tuple[ImageRecord, ...]


def read_benchmark(name: str, root: str | Path) -> Annotations:
    """Read a benchmark by its CLI name."""
    return read_annotations(get_spec(name), root)


def missing_benchmark(spec: BenchmarkSpec, root: str | Path) -> str:
    """``spec.missing`` for a reader of ``root``: also how to draw the synthetic stand-in."""
    return (
        f"{spec.missing(root)} Or run `uit synth --root {root}` to generate the synthetic stand-in."
    )


def read_annotations(spec: BenchmarkSpec, root: str | Path) -> Annotations:
    """Read ``spec``'s annotation file under ``root``: every format is a JSON list of image
    records, the spec says where it lies and what its records' fields are called."""
    folder = spec.dataset_dir(root)
    if not folder.is_dir():
        raise DataError(missing_benchmark(spec, root))
    path = spec.annotation_file(root)
    if not path.is_file():
        names = " or ".join(spec.annotation_files)
        raise DataError(
            f"{spec.title}: annotation file {names} not found in {folder}. {spec.obtain}."
        )
    raw = _load_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of image records, got {type(raw).__name__}")
    records = tuple(_parse_record(spec, path, index, item) for index, item in enumerate(raw))
    return Annotations(
        spec=spec, annotation_file=path, imgs_dir=spec.imgs_dir(root), records=records
    )


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}): {error.reason}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the annotation file ({error.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno} "
            f"(character {error.pos}): {error.msg}"
        ) from None
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"{path}: unreadable JSON ({error})") from None
    except RecursionError:
        raise DataError(
            f"{path}: JSON nested too deeply to read; an annotation file is a list of flat "
            "image records: restore the file the dataset came with"
        ) from None


def _parse_record(spec: BenchmarkSpec, path: Path, index: int, item: Any) -> ImageRecord:
    where = f"{path}: record {index}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    for key in ("id", spec.path_key, "captions", "split"):
        if key not in item:
            raise DataError(f"{where}: missing field {key!r}")
    pid = item["id"]
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise DataError(f"{where}: field 'id' must be an integer, got {_short(pid)}")
    if not INT64[0] <= pid <= INT64[1]:
        raise DataError(f"{where}: field 'id' is {_short(pid)}, outside the 64-bit integer range")
    split = item["split"]
    if split not in spec.splits:
        raise DataError(f"{where}: field 'split' is {split!r}; {spec.title} has {spec.splits}")
    return ImageRecord(
        index=index,
        pid=pid,
        path=_check_path(where, spec.path_key, item[spec.path_key]),
        split=split,
        captions=_check_captions(where, item["captions"]),
    )


def _check_path(where: str, key: str, value: Any) -> str:
    """Return a clean relative POSIX path, or refuse one that could leave ``imgs/``."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {_short(value)}")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise DataError(
            f"{where}: field {key!r} ({_short(value)}) holds a control character "
            "(NUL, newline, ...) or an unpaired surrogate; no image file is named so"
        )
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(value).drive:
        raise DataError(
            f"{where}: field {key!r} is an absolute path ({value!r}); paths must be "
            "relative to the benchmark's imgs/ folder"
        )
    if ".." in posix.parts:
        raise DataError(
            f"{where}: field {key!r} ({value!r}) escapes the imgs/ folder; "
            "paths must stay inside it"
        )
    return posix.as_posix()


def _check_captions(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field 'captions' must be a list of strings, got {_short(value)}")
    for position, caption in enumerate(value):
        if not isinstance(caption, str):
            raise DataError(
                f"{where}: field 'captions[{position}]' must be a string, got {_short(caption)}"
            )
    return tuple(value)


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: a hostile value must not flood the message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "a huge integer"
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"
