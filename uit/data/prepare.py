"""Stage ``prepare`` (DESIGN 3.2): validated annotations -> Parquet manifests plus ``stats.json``.

``images.parquet``: image_id, pid, split, path (relative to the benchmark's imgs/ folder).
``captions.parquet``: caption_id, image_id, pid, split, text.
``stats.json``: counts per split and everything dropped, with the reason.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from uit.config import ImageCheck
from uit.data.images import load_rgb
from uit.data.readers import Annotations, ImageRecord, read_benchmark
from uit.errors import DataError
from uit.io import atomic_write_json, ready_output_dir, replaced_dir

Progress = Callable[[int], None]

IMAGES_FILE = "images.parquet"
CAPTIONS_FILE = "captions.parquet"
STATS_FILE = "stats.json"
OUTPUT_FILES = (IMAGES_FILE, CAPTIONS_FILE, STATS_FILE)
CONTEXT_TOKENS = 75  # CLIP's 77 minus start and end tokens

# Typographic punctuation that annotators paste in; mapped to the ASCII a tokenizer expects.
_ASCII_PUNCTUATION = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
     "\u2026": "...", "\u00a0": " "}
)  # fmt: skip
_WHITESPACE = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class ImageProblems:
    """Image files listed in the annotations that are missing or cannot be decoded."""

    missing: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()


@dataclass
class Manifests:
    images: pl.DataFrame
    captions: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def clean_caption(text: str) -> str:
    """NFKC-normalise, map typographic punctuation to ASCII and collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).translate(_ASCII_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()


def find_image_problems(
    imgs_dir: Path,
    paths: Sequence[str],
    mode: ImageCheck = "decode",
    workers: int = 4,
    progress: Progress | None = None,
) -> ImageProblems:
    """Check that each image exists and, with ``mode="decode"``, that it fully decodes."""

    def check(path: str) -> str | None:
        file = imgs_dir / path
        if not file.is_file():
            return "missing"
        if mode == "decode":
            try:
                load_rgb(file)
            except DataError:
                return "corrupt"
        return None

    missing: list[str] = []
    corrupt: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, verdict in zip(paths, pool.map(check, paths, chunksize=64), strict=True):
            if verdict == "missing":
                missing.append(path)
            elif verdict == "corrupt":
                corrupt.append(path)
            if progress is not None:
                progress(1)
    return ImageProblems(missing=tuple(missing), corrupt=tuple(corrupt))


def check_image_problems(annotations: Annotations, problems: ImageProblems, drop: bool) -> None:
    """Raise a ``DataError`` for missing or corrupt images unless the user allows dropping them."""
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


def build_manifests(annotations: Annotations, problems: ImageProblems) -> Manifests:
    """Turn validated records into the two manifest tables and their statistics."""
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
    stats = _stats(annotations, images, captions, dropped, notes)
    return Manifests(images=images, captions=captions, stats=stats)


def _tables(
    records: Iterable[ImageRecord], dropped: Counter[str], notes: Counter[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    image_rows: dict[str, list[Any]] = {"image_id": [], "pid": [], "split": [], "path": []}
    caption_rows: dict[str, list[Any]] = {
        "caption_id": [], "image_id": [], "pid": [], "split": [], "text": []
    }  # fmt: skip
    for image_id, record in enumerate(records):
        for key, value in zip(image_rows, (image_id, record.pid, record.split, record.path)):
            image_rows[key].append(value)
        for text in _clean_captions(record.captions, dropped, notes):
            row = (len(caption_rows["text"]), image_id, record.pid, record.split, text)
            for key, value in zip(caption_rows, row):
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
    reasons = ("empty_caption", "duplicate_caption", "missing_image", "corrupt_image")
    return {
        "benchmark": annotations.spec.name,
        "annotation_file": str(annotations.annotation_file),
        "imgs_dir": str(annotations.imgs_dir),
        "splits": splits,
        "dropped": {key: dropped[key] for key in (*reasons, "captions_of_dropped_images")},
        "notes": {
            "normalised_caption": notes["normalised_caption"],
            "long_caption": notes["long_caption"],
        },
    }


def write_manifests(manifests: Manifests, out_dir: str | Path) -> None:
    """Replace ``out_dir`` with a folder of the three files: readers see all old or all new."""
    with replaced_dir(out_dir, OUTPUT_FILES) as tmp:
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
    progress: Callable[[int], Progress] | None = None,
) -> dict[str, Any]:
    """Read, validate and write the manifests of one benchmark; return its statistics.

    ``progress``, when given, is called with the number of images to check and returns a
    callback that is advanced once per image.
    """
    ready_output_dir(out_dir, OUTPUT_FILES)  # before the slow part, not after it
    annotations = read_benchmark(name, root)
    paths = [record.path for record in annotations.records]
    advance = progress(len(paths)) if progress is not None else None
    problems = find_image_problems(annotations.imgs_dir, paths, check_images, progress=advance)
    check_image_problems(annotations, problems, drop_missing)
    manifests = build_manifests(annotations, problems)
    write_manifests(manifests, out_dir)
    return manifests.stats


def read_stats(prepared_dir: str | Path) -> dict[str, Any]:
    """Load ``stats.json`` of a prepared benchmark, with a clear error when it is absent."""
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: {prepared_dir} is not a prepared benchmark. "
            "Run `uit data prepare BENCHMARK --root RAW_ROOT --out OUT_DIR` first."
        )
    stats: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return stats
