"""A prepared benchmark folder (what stage prepare writes, design §3.2) and reading it back.

``images.parquet``: image_id, pid, split, path (relative to the benchmark's imgs/ folder).
``captions.parquet``: caption_id, image_id, pid, split, text.
``stats.json``: counts per split and everything dropped, with the reason, and where imgs/ is.

Everything that reads a prepared folder (the parse stage, training, evaluation, the report)
imports this module, not the raw-annotation readers behind ``uit.data.prepare``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from uit.core.boundary import PREPARED, reading
from uit.core.errors import DataError
from uit.core.io import atomic_write_json, folder_lock

log = logging.getLogger(__name__)

IMAGES_FILE = "images.parquet"
CAPTIONS_FILE = "captions.parquet"
STATS_FILE = "stats.json"
ERASED_FILE = ".uit-erased.json"  # a gallery's erasure list (uit gallery erase): erasure_file
ERASED_FORMAT = "uit-erased-1"
ERASURE_WAIT = 600.0  # seconds a gallery change waits for another one (an encode can be long)
# Real captions are a few hundred characters; a longer one is broken or hostile (and would make
# tagging slow): it is dropped and counted as "oversized_caption" in stats.json.
MAX_CAPTION_CHARS = 2000
# stats.json's "imgs_dir" is relative to the prepared folder when this key says so (older
# prepared folders recorded it relative to the working directory of `uit data prepare`).
IMGS_DIR_BASE = "imgs_dir_relative_to"


@dataclass(frozen=True)
class Manifests:
    """A prepared benchmark: its two tables and where its images are."""

    images: pl.DataFrame
    captions: pl.DataFrame
    imgs_dir: Path
    benchmark: str

    def split(self, name: str) -> Manifests:
        return Manifests(
            self.images.filter(pl.col("split") == name),
            self.captions.filter(pl.col("split") == name),
            self.imgs_dir,
            self.benchmark,
        )

    def has_split(self, name: str) -> bool:
        return self.images.filter(pl.col("split") == name).height > 0

    def paths(self) -> list[Path]:
        return [self.imgs_dir / p for p in self.images["path"].to_list()]


def read_manifests(prepared_dir: str | Path, imgs_dir: str | Path | None = None) -> Manifests:
    """Load a prepared benchmark; images are found where ``stats.json`` says unless overridden.

    Every listed image must still be a file inside imgs/ where it resolves (symlinks followed):
    a stale prepared folder fails here, in seconds, rather than in a loader worker mid-epoch.
    A damaged file is a ``DataError`` that names the folder and how to rewrite it."""
    prepared_dir = Path(prepared_dir)
    with reading(prepared_dir, *PREPARED):
        stats = read_stats(prepared_dir)
        images = pl.read_parquet(prepared_dir / IMAGES_FILE)
        folder = Path(imgs_dir) if imgs_dir else locate_imgs_dir(prepared_dir, stats)
        check_images_present(folder, images["path"].to_list(), prepared_dir)
        return Manifests(
            images=images,
            captions=pl.read_parquet(prepared_dir / CAPTIONS_FILE),
            imgs_dir=folder,
            benchmark=stats["benchmark"],
        )


def locate_imgs_dir(prepared_dir: Path, stats: Mapping[str, Any]) -> Path:
    """The imgs/ folder that ``stats.json`` records, from any working directory.

    Recorded relative to the prepared folder: taken lexically from the path it was given by (as
    prepare computed it), then physically (symlinks followed). Older prepared folders recorded it
    relative to prepare's working directory; that is tried as is."""
    recorded = str(stats["imgs_dir"])
    if stats.get(IMGS_DIR_BASE) == "prepared_dir":
        candidates = [
            Path(os.path.normpath(prepared_dir.absolute() / recorded)),
            Path(os.path.realpath(prepared_dir)) / recorded,
        ]
        where = f"relative to {prepared_dir}"
    else:
        candidates = [Path(recorded)]
        where = f"relative to the working directory prepare ran in, not this one ({Path.cwd()})"
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DataError(
        f"{prepared_dir / STATS_FILE}: the images folder {recorded!r} ({where}) does not exist: "
        "the benchmark moved or the prepared folder is stale: re-run `uit data prepare`"
    )


def check_images_present(imgs_dir: Path, paths: Sequence[str], prepared_dir: Path) -> None:
    """Refuse image paths that lead outside ``imgs_dir`` or name no file any more."""
    outside: list[str] = []
    missing: list[str] = []
    for path, real in zip(paths, resolve_inside(imgs_dir, paths), strict=True):
        if real is None:
            outside.append(path)
        elif not real.is_file():
            missing.append(path)
    for kind, found in (("lead outside it through a symbolic link", outside),
                        ("are missing", missing)):  # fmt: skip
        if found:
            raise DataError(
                f"{prepared_dir / IMAGES_FILE}: {len(found)} image(s) listed under {imgs_dir} "
                f"{kind} (e.g. {found[0]}): the prepared folder is stale: re-run "
                "`uit data prepare` (it checks every image again)"
            )


def resolve_inside(imgs_dir: Path, paths: Sequence[str]) -> list[Path | None]:
    """Where each ``imgs_dir / path`` really is (symlinks followed), or None when that is outside
    ``imgs_dir`` (itself resolved: an imgs/ that links to a dataset store elsewhere is fine).

    Folders are resolved once each, so 40,000 images cost about one ``lstat`` each."""
    root = os.path.join(os.path.realpath(imgs_dir), "")  # with a trailing separator
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
    resolved: list[Path | None] = []
    for path in paths:
        folder, name = os.path.split(os.path.join(imgs_dir, path))
        real = os.path.join(real_folder(folder), name)
        if name in ("", ".", "..") or os.path.islink(real):
            real = os.path.realpath(real)
        resolved.append(Path(real) if real.startswith(root) else None)
    return resolved


def read_stats(prepared_dir: str | Path) -> dict[str, Any]:
    """Load ``stats.json`` of a prepared benchmark, with a clear error when it is absent or
    damaged."""
    path = Path(prepared_dir) / STATS_FILE
    if not path.is_file():
        raise DataError(
            f"{path} not found: {prepared_dir} is not a prepared benchmark. "
            "Run `uit data prepare --benchmark BENCHMARK --root RAW_ROOT --out OUT_DIR` first."
        )
    with reading(prepared_dir, *PREPARED):
        stats: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return stats


def erasure_file(source: str | Path) -> Path:
    """Where ``uit gallery erase`` lists what it erased from the gallery at ``source``: inside
    a folder of images (``ERASED_FILE``); beside a prepared benchmark's folder
    (``data/prepared/cuhk-pedes.uit-erased.json``), which ``dvc repro`` and ``uit data prepare``
    replace whole: the list outlives every preparation, and git can keep it."""
    source = Path(source)
    folder = Path(os.path.realpath(source))  # one list, whichever link the folder is reached by
    if not (source / IMAGES_FILE).is_file() or not folder.name:
        return source / ERASED_FILE
    return folder.parent / f"{folder.name}{ERASED_FILE}"


def read_erased(source: str | Path) -> set[str]:
    """The names (paths inside the gallery) erased from the gallery at ``source``: listed by
    ``uit gallery erase`` (``erasure_file``; for a prepared benchmark also a list inside its
    folder, where earlier versions kept it), never read or served again."""
    inside, listed = Path(source) / ERASED_FILE, erasure_file(source)
    if inside != listed and inside.is_file() and inside.resolve() not in _WARNED:
        _WARNED.add(inside.resolve())
        log.warning("%s: an erasure list inside a prepared folder, where dvc repro loses it; "
                    "uit data prepare or the next uit gallery erase moves it to %s",
                    inside, listed)  # fmt: skip
    return set().union(*(_read_erasure_list(p) for p in sorted({inside, listed}) if p.is_file()))


_WARNED: set[Path] = set()  # the lists inside a prepared folder this process has warned of


@contextmanager
def erasure_lock(gallery: Path) -> Iterator[None]:
    """Hold the lock of the folder of ``gallery``'s erasure list while the block changes the
    list or the gallery: two erasures at once would each write the list without the other's
    names (an erased image served again), and an addition beside an erasure could put its rows
    back in a cache. A prepared benchmark's list is beside its folder, which ``uit data
    prepare`` may replace meanwhile: the lock is the list's folder's."""
    busy = f"{gallery} is being changed by another uit gallery add or erase: try again"
    with folder_lock(erasure_file(gallery).parent, busy, DataError, wait=ERASURE_WAIT):
        yield


def _read_erasure_list(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != ERASED_FORMAT or not isinstance(data.get("images"), list):
            raise ValueError(f"not a {ERASED_FORMAT} file")
        return {str(name) for name in data["images"]}
    except (ValueError, AttributeError) as error:
        raise DataError(f"{path} is damaged ({error}): it lists the images erased from this "
                        "gallery; restore it from a backup, or run uit gallery erase again "
                        "for every image erased") from None  # fmt: skip


def write_erased(source: str | Path, names: set[str]) -> None:
    """Write the erasure list of the gallery at ``source`` (``erasure_file``); a list an
    earlier version left inside a prepared folder goes, its names in ``names`` by then."""
    listed, inside = erasure_file(source), Path(source) / ERASED_FILE
    atomic_write_json(listed, {"format": ERASED_FORMAT, "images": sorted(names)})
    if inside != listed:
        inside.unlink(missing_ok=True)
