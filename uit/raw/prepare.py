"""Stage ``prepare`` (design §3.2): validated annotations -> Parquet manifests plus ``stats.json``.

``images.parquet``: image_id, pid, split, path (relative to the benchmark's imgs/ folder).
``captions.parquet``: caption_id, image_id, pid, split, text.
``stats.json``: counts per split and everything dropped, with the reason.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from uit.core.config import ImageCheck
from uit.core.errors import DataError
from uit.core.io import atomic_write_json, ready_output_dir, replaced_dir
from uit.data.images import load_rgb
from uit.data.prepared import (
    CAPTIONS_FILE,
    ERASED_FILE,
    IMAGES_FILE,
    IMGS_DIR_BASE,
    MAX_CAPTION_CHARS,
    STATS_FILE,
    erasure_lock,
    read_erased,
    resolve_inside,
    write_erased,
)
from uit.raw.readers import Annotations, ImageRecord, read_benchmark

if TYPE_CHECKING:
    from uit.core.console import Advance, NewBar


OUTPUT_FILES = (IMAGES_FILE, CAPTIONS_FILE, STATS_FILE)
# what may be replaced: an erasure list inside, from an earlier version, has moved out by then
OWNED_FILES = (*OUTPUT_FILES, ERASED_FILE)
CONTEXT_TOKENS = 75  # CLIP's 77 minus start and end tokens
# Typographic punctuation that annotators paste in; mapped to the ASCII a tokenizer expects.
_ASCII_PUNCTUATION = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
     "\u2026": "...", "\u00a0": " ", "\u200b": " "}
)  # fmt: skip
_WHITESPACE = re.compile(r"\s+")
# Invisible characters that str.isprintable() does not catch: Hangul fillers, Braille blank,
# combining grapheme joiner. Everything of category Cc, Cf, Cs, Co or Cn is removed as well.
_INVISIBLE = re.compile("[\u115f\u1160\u3164\uffa0\u2800\u034f]")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class ImageProblems:
    """Image files listed in the annotations that are missing or cannot be decoded."""

    missing: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()
    outside: tuple[str, ...] = ()  # inside imgs/ as written, elsewhere through a symlink


@dataclass
class Prepared:
    """The tables and stats that ``write_manifests`` writes."""

    images: pl.DataFrame
    captions: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def clean_caption(text: str) -> str:
    """NFKC-normalise, map typographic punctuation to ASCII, drop invisible characters (zero-width
    spaces and joiners, soft hyphens, byte-order marks, controls) and collapse whitespace."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).translate(_ASCII_PUNCTUATION))
    if not text.isprintable():  # the fast path for ordinary captions
        text = "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE_CATEGORIES)
    return _WHITESPACE.sub(" ", _INVISIBLE.sub("", text)).strip()


def find_image_problems(
    imgs_dir: Path,
    paths: Sequence[str],
    mode: ImageCheck = "decode",
    workers: int = 4,
    progress: Advance | None = None,
) -> ImageProblems:
    """Check that each image exists and, with ``mode="decode"``, that it fully decodes."""

    def check(path: str, file: Path | None) -> str | None:
        if file is None:
            return "outside"
        if not file.is_file():
            return "missing"
        if mode == "decode":
            try:
                load_rgb(file)
            except DataError:
                return "corrupt"
        return None

    found: dict[str, list[str]] = {"missing": [], "corrupt": [], "outside": []}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = pool.map(check, paths, resolve_inside(imgs_dir, paths), chunksize=64)
        for path, verdict in zip(paths, verdicts, strict=True):
            if verdict is not None:
                found[verdict].append(path)
            if progress is not None:
                progress(1)
    return ImageProblems(**{kind: tuple(paths) for kind, paths in found.items()})


def check_image_problems(annotations: Annotations, problems: ImageProblems, drop: bool) -> None:
    """Raise a ``DataError`` for missing or corrupt images unless the user allows dropping them.

    An image that leaves imgs/ through a symlink is an error either way: it is never read."""
    if problems.outside:
        paths = problems.outside
        target = os.path.realpath(annotations.imgs_dir / paths[0])
        raise DataError(
            f"{annotations.spec.title}: {len(paths)} image path(s) listed in "
            f"{annotations.annotation_file} lead outside {annotations.imgs_dir} through a "
            f"symbolic link (e.g. {paths[0]} -> {target}). Replace the links with the image "
            "files, or link the whole imgs/ folder instead."
        )
    if drop:
        return
    for kind, paths in (("missing", problems.missing), ("unreadable or corrupt", problems.corrupt)):
        if paths:
            examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            raise DataError(
                f"{annotations.spec.title}: {len(paths)} image file(s) listed in "
                f"{annotations.annotation_file} are {kind} under {annotations.imgs_dir} "
                f"(e.g. {examples}). Restore them, or pass --drop-missing to drop those images "
                "and their captions and count them in stats.json."
            )


def build_manifests(
    annotations: Annotations, problems: ImageProblems, out_dir: str | Path
) -> Prepared:
    """Turn validated records into the two manifest tables and their statistics.

    Refuses a result without images, captions or training captions: an empty benchmark must not
    replace a good one. ``out_dir`` is where stats.json will be: ``imgs_dir`` is recorded
    relative to it, so the prepared folder works from any working directory."""
    bad = set(problems.missing) | set(problems.corrupt)
    kept = [record for record in annotations.records if record.path not in bad]
    dropped: Counter[str] = Counter(
        missing_image=len(problems.missing), corrupt_image=len(problems.corrupt)
    )
    dropped["captions_of_dropped_images"] = sum(
        len(r.captions) for r in annotations.records if r.path in bad
    )
    duplicates = [path for path, n in Counter(r.path for r in kept).items() if n > 1]
    if duplicates:
        raise DataError(
            f"{annotations.annotation_file}: {len(duplicates)} image path(s) appear in more than "
            f"one record (e.g. {duplicates[0]}); each image must have exactly one record"
        )
    notes: Counter[str] = Counter()
    images, captions = _tables(kept, dropped, notes)
    _check_not_empty(annotations, captions, dropped)
    stats = _stats(annotations, images, captions, dropped, notes)
    stats = {**stats, **record_imgs_dir(annotations.imgs_dir, out_dir)}
    return Prepared(images=images, captions=captions, stats=stats)


def _check_not_empty(
    annotations: Annotations, captions: pl.DataFrame, dropped: Counter[str]
) -> None:
    where = f"{annotations.annotation_file} ({len(annotations.records)} records)"
    why = ", ".join(f"{key.replace('_', ' ')} {n}" for key, n in dropped.items() if n)
    if captions.height == 0:
        raise DataError(
            f"{where}: no image with a usable caption is left{f' (dropped: {why})' if why else ''};"
            " nothing was written and the previous output is kept. Check that this is the "
            "benchmark's full annotation file."
        )
    if captions.filter(pl.col("split") == "train").height == 0:
        raise DataError(
            f"{where}: no captions in the train split; nothing was written and the previous "
            "output is kept. Check the records' 'split' fields."
        )


def record_imgs_dir(imgs_dir: Path, out_dir: str | Path) -> dict[str, str]:
    """The stats.json entries that locate imgs/: a POSIX path relative to the prepared folder."""
    try:
        relative = os.path.relpath(os.path.abspath(imgs_dir), os.path.abspath(out_dir))
    except ValueError:  # another drive (Windows): only an absolute path works
        return {"imgs_dir": Path(imgs_dir).absolute().as_posix(), IMGS_DIR_BASE: "prepared_dir"}
    return {"imgs_dir": Path(relative).as_posix(), IMGS_DIR_BASE: "prepared_dir"}


def _tables(
    records: Iterable[ImageRecord], dropped: Counter[str], notes: Counter[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    image_rows: dict[str, list[Any]] = {"image_id": [], "pid": [], "split": [], "path": []}
    caption_rows: dict[str, list[Any]] = {
        "caption_id": [], "image_id": [], "pid": [], "split": [], "text": []
    }  # fmt: skip
    for image_id, record in enumerate(records):
        for key, value in zip(
            image_rows, (image_id, record.pid, record.split, record.path), strict=True
        ):
            image_rows[key].append(value)
        for text in _clean_captions(record.captions, dropped, notes):
            row = (len(caption_rows["text"]), image_id, record.pid, record.split, text)
            for key, value in zip(caption_rows, row, strict=True):
                caption_rows[key].append(value)
    schema = {"image_id": pl.Int64, "pid": pl.Int64, "split": pl.String}
    images = pl.DataFrame(image_rows, schema={**schema, "path": pl.String})
    captions = pl.DataFrame(
        caption_rows, schema={"caption_id": pl.Int64, **schema, "text": pl.String}
    )
    return images, captions


def _clean_captions(
    captions: Iterable[str], dropped: Counter[str], notes: Counter[str]
) -> list[str]:
    kept: list[str] = []
    for raw in captions:
        text = clean_caption(raw)
        if not text:
            dropped["empty_caption"] += 1
        elif len(text) > MAX_CAPTION_CHARS:
            dropped["oversized_caption"] += 1
        elif text in kept:
            dropped["duplicate_caption"] += 1
        else:
            notes["normalised_caption"] += text != _WHITESPACE.sub(" ", raw).strip()
            notes["long_caption"] += len(_TOKEN.findall(text)) > CONTEXT_TOKENS
            kept.append(text)
    return kept


def _stats(
    annotations: Annotations,
    images: pl.DataFrame,
    captions: pl.DataFrame,
    dropped: Counter[str],
    notes: Counter[str],
) -> dict[str, Any]:
    splits: dict[str, dict[str, int]] = {}
    for split in annotations.spec.splits:
        split_images = images.filter(pl.col("split") == split)
        splits[split] = {
            "identities": split_images["pid"].n_unique(),
            "images": split_images.height,
            "captions": captions.filter(pl.col("split") == split).height,
        }
    reasons = ("empty_caption", "oversized_caption", "duplicate_caption", "missing_image",
               "corrupt_image")  # fmt: skip
    return {
        "benchmark": annotations.spec.name,
        "annotation_file": str(annotations.annotation_file),
        "splits": splits,
        "dropped": {key: dropped[key] for key in (*reasons, "captions_of_dropped_images")},
        "notes": {
            "normalised_caption": notes["normalised_caption"],
            "long_caption": notes["long_caption"],
        },
    }


def write_manifests(manifests: Prepared, out_dir: str | Path) -> None:
    """Replace ``out_dir`` with a folder of the three files: readers see all old or all new.
    An erasure list inside it (where ``uit gallery erase`` wrote it before it moved beside the
    folder, out of reach of ``dvc repro``) moves beside it first: a benchmark prepared again
    must not serve the images erased from it."""
    if (Path(out_dir) / ERASED_FILE).is_file() and (Path(out_dir) / IMAGES_FILE).is_file():
        with erasure_lock(Path(out_dir)):  # an erasure under way writes the list too
            write_erased(out_dir, read_erased(out_dir))
    with replaced_dir(out_dir, OWNED_FILES) as tmp:
        manifests.images.write_parquet(tmp / IMAGES_FILE)
        manifests.captions.write_parquet(tmp / CAPTIONS_FILE)
        atomic_write_json(tmp / STATS_FILE, manifests.stats)


def prepare_benchmark(
    name: str,
    root: str | Path,
    out_dir: str | Path,
    *,
    drop_missing: bool = False,
    check_images: ImageCheck = "decode",
    progress: NewBar | None = None,
) -> dict[str, Any]:
    """Read, validate and write the manifests of one benchmark; return its statistics.

    ``progress`` (``uit.core.console.NewBar``) shows the images being checked.
    """
    ready_output_dir(out_dir, OWNED_FILES)  # before the slow part, not after it
    annotations = read_benchmark(name, root)
    paths = [record.path for record in annotations.records]
    advance = progress(f"checking {name} images", len(paths)) if progress is not None else None
    problems = find_image_problems(annotations.imgs_dir, paths, check_images, progress=advance)
    check_image_problems(annotations, problems, drop_missing)
    manifests = build_manifests(annotations, problems, out_dir)
    write_manifests(manifests, out_dir)
    return manifests.stats
