"""Live galleries: images added to a folder gallery, or erased from any gallery, in place.

``add_images`` puts new images in the folder (copies of files from elsewhere), encodes only
them into the embedding cache ``open_gallery`` reads, and carries a cached FAISS index over to
the grown gallery without training it again. ``erase_images`` lists images in the gallery's
erasure list (``read_gallery`` leaves them out from then on), removes their rows from every
embedding cache in the cache folder and from the index, and deletes their files only when
asked. A running ``uit serve`` sees either after ``POST /admin/reload``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uit.core.config import INFERENCE_BATCH_SIZE, MILVUS_URI, IndexChoice
from uit.core.errors import DataError
from uit.core.io import atomic_write_bytes
from uit.data.images import load_rgb, read_image_bytes
from uit.data.prepared import IMAGES_FILE, erasure_lock, read_erased, write_erased
from uit.retrieval.evaluate import load_for_inference
from uit.retrieval.index import carry_index, resolve_kind
from uit.retrieval.milvus import LITE_FILE, connect, drop_other_collections
from uit.retrieval.search import (
    IMAGE_SUFFIXES,
    EmbeddingCache,
    EmptyGallery,
    Gallery,
    checkpoint_digest,
    file_digest,
    gallery_embeddings,
    gallery_not_found,
    list_folder,
    read_gallery,
    shown,
)

if TYPE_CHECKING:
    import torch

    from uit.core.console import Advance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """What ``add_images`` or ``erase_images`` did: the names added or erased, the images
    encoded now, the gallery's size after, the index file (or Milvus collection) carried over
    (None: none cached), and the other cached files (or Milvus collections) rewritten or
    removed."""

    names: list[str]
    encoded: int
    images: int
    index: Path | str | None
    caches: list[Path]
    dropped: list[Path | str]


@contextmanager
def _changing(gallery: Path) -> Iterator[None]:
    """``erasure_lock`` for a gallery that exists: the lock would make a missing folder."""
    if not gallery.is_dir():
        raise gallery_not_found(gallery)
    with erasure_lock(gallery):
        yield


def add_images(
    checkpoint: str | Path,
    folder: str | Path,
    images: Sequence[str | Path],
    *,
    cache_dir: str | Path,
    index_kind: IndexChoice = "auto",
    device: str = "auto",
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: Advance | None = None,
) -> Change:
    """Add ``images`` (files, or folders of them) to the folder gallery ``folder``: a file
    outside it is copied in (a folder under its own name), then only the images not in the
    cache are encoded; a cached index of the gallery before is carried over to the gallery
    after. The gallery may hold no image yet (or only erased ones)."""
    folder = Path(folder)
    with _changing(folder):
        if (folder / IMAGES_FILE).is_file():
            raise DataError(f"--gallery {folder} is a prepared benchmark: add images to a folder "
                            "gallery (a benchmark changes through uit data prepare)")  # fmt: skip
        before = _remaining(folder, "test")
        placed = _placements(folder, images, read_erased(folder))
        for source, _ in placed:  # every new image decodes before any is copied in
            load_rgb(source)
        encoder, _, options = load_for_inference(Path(checkpoint), device, batch_size)
        cache = EmbeddingCache(Path(cache_dir), checkpoint_digest(Path(checkpoint)))
        cache.keep_width(encoder.embed_dim)
        known = {p: file_digest(p) for p in before.paths} if before is not None else {}
        old = _cached_feats(before, cache, known) if before is not None else None
        for source, target in placed:
            if source != target:
                atomic_write_bytes(target, read_image_bytes(source))
        after = read_gallery(folder)
        feats, encoded = gallery_embeddings(encoder, after.paths, options, cache, progress,
                                            after.image_fix, known)  # fmt: skip
        index = None if before is None else _carry(cache_dir, index_kind, before, old, after,
                                                   feats)  # fmt: skip
        names = [target.relative_to(folder).as_posix() for _, target in placed]
        return Change(names, encoded, len(after.paths), index, [cache.path], [])


def _placements(
    folder: Path, images: Sequence[str | Path], erased: set[str]
) -> list[tuple[Path, Path]]:
    """(file, where it goes in ``folder``) for each image given, or each image of a folder
    given; a file already in ``folder`` stays where it is."""
    placed: list[tuple[Path, Path]] = []
    for given in map(Path, images):
        if given.is_dir():
            base = _in_folder(given, folder)
            for path in list_folder(given):
                target = base / path.relative_to(given)
                placed.append((target if _inside(given, folder) else path, target))
        elif given.is_file() and given.suffix.lower() in IMAGE_SUFFIXES:
            target = _in_folder(given, folder)
            placed.append((target if _inside(given, folder) else given, target))
        else:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(f"{given} is not an image file ({suffixes}) or a folder of them: "
                            "give the new images")  # fmt: skip
    for source, target in placed:
        _check_target(folder, source, target, erased)
    return placed


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _in_folder(path: Path, folder: Path) -> Path:
    """Where ``path`` is, or goes, in ``folder``: where it is when inside, else at the top."""
    if _inside(path, folder):
        return folder / path.resolve().relative_to(folder.resolve())
    return folder / path.resolve().name


def _check_target(folder: Path, source: Path, target: Path, erased: set[str]) -> None:
    name = target.relative_to(folder).as_posix()
    if name in erased:
        raise DataError(f"{shown(name)} was erased from gallery {folder} and stays erased: give "
                        "the new image another name")  # fmt: skip
    if source != target and target.exists() and file_digest(target) != file_digest(source):
        raise DataError(f"gallery {folder} already holds another {shown(name)}: rename the new "
                        "image (nothing was copied)")  # fmt: skip


def erase_images(
    checkpoint: str | Path,
    source: str | Path,
    *,
    names: Sequence[str] = (),
    pids: Sequence[int] = (),
    split: str = "test",
    cache_dir: str | Path,
    index_kind: IndexChoice = "auto",
    delete_files: bool = False,
) -> Change:
    """Erase the images ``names`` (paths inside the gallery) and those of the identities
    ``pids`` (a prepared benchmark's) from the gallery at ``source``: listed in its erasure
    list first, then their rows taken out of every embedding cache in ``cache_dir`` (a row an
    image left in the gallery shares is kept) and out of the index of this checkpoint's
    embeddings; other cached indexes, which may hold them, are removed (they are built again
    when next opened). Their files are deleted only with ``delete_files``."""
    source = Path(source)
    with _changing(source):
        if delete_files and (source / IMAGES_FILE).is_file():
            raise DataError(f"--delete-files: the images of the prepared benchmark {source} are "
                            "its raw dataset's, not the gallery's: erase without it (they are "
                            "never served again), then remove them from the raw data yourself "
                            "if you must")  # fmt: skip
        before = read_gallery(source, split)
        targets = _targets(before, names, pids, read_erased(source))
        lite = (Path(cache_dir) / LITE_FILE).exists()
        # a Milvus Lite that a running server holds, or a server that does not answer, stops the
        # erasure before anything has changed
        if lite:
            connect("milvus", cache_dir)
        if MILVUS_URI.fullmatch(index_kind):
            connect(index_kind, cache_dir)
        digests = [file_digest(p) for p in before.paths]
        cache = EmbeddingCache(Path(cache_dir), checkpoint_digest(Path(checkpoint)))
        old = cache.get(digests) if not cache.missing(digests) else None
        write_erased(source, read_erased(source) | set(targets))
        after = _remaining(source, split)
        rows = {name: i for i, name in enumerate(before.names)}
        kept = [rows[n] for n in after.names] if after else []
        files = [before.root / n for n in targets]  # erased earlier too: a rerun completes it
        gone = {file_digest(f) for f in files if f.is_file()} - {digests[i] for i in kept}
        index: Path | str | None = None
        if after is not None and old is not None:
            index = _carry(cache_dir, index_kind, before, old, after, old[kept])
        caches = _forget(Path(cache_dir), gone)
        dropped: list[Path | str] = []
        for path in sorted(Path(cache_dir).glob("index-*.faiss")):
            if path != index:
                path.unlink(missing_ok=True)
                dropped.append(path)
        if lite:  # whatever --index says now: its collections may hold the erased images
            dropped += drop_other_collections("milvus", cache_dir, index)
        if delete_files:
            for path in files:
                path.unlink(missing_ok=True)
        return Change(targets, 0, len(kept), index, caches, dropped)


def _targets(gallery: Gallery, names: Sequence[str], pids: Sequence[int],
             erased: set[str]) -> list[str]:  # fmt: skip
    """The names to erase: each one given must be in the gallery (or erased already)."""
    known = set(gallery.names)
    for name in names:
        if name not in known and name not in erased:
            raise DataError(f"--image {shown(name)} is not an image of gallery "
                            f"{gallery.source}: give its path inside the gallery, as uit "
                            "search prints it")  # fmt: skip
    chosen = list(dict.fromkeys(names))
    if pids:
        if gallery.pids is None:
            raise DataError(f"--identity needs a prepared benchmark; gallery {gallery.source} is "
                            "a folder: name its images with --image")  # fmt: skip
        for pid in pids:
            found = [n for n, p in zip(gallery.names, gallery.pids, strict=True) if p == pid]
            if not found:
                raise DataError(f"--identity {pid} has no images in gallery {gallery.source}")
            chosen += [n for n in found if n not in chosen]
    if not chosen:
        raise DataError("nothing to erase: give --image NAME or --identity PID")
    return chosen


def _remaining(source: Path, split: str) -> Gallery | None:
    """The gallery, or None when no image is left in it (none yet, or every one erased)."""
    try:
        return read_gallery(source, split)
    except EmptyGallery:
        return None


def _cached_feats(
    gallery: Gallery, cache: EmbeddingCache, known: dict[Path, str]
) -> torch.Tensor | None:
    """The gallery's embeddings as they are cached, in its order, or None when any is not
    (``known``: the digests of its images)."""
    digests = [known[p] for p in gallery.paths]
    return cache.get(digests) if digests and not cache.missing(digests) else None


def _carry(
    cache_dir: str | Path,
    kind: IndexChoice,
    before: Gallery,
    old: torch.Tensor | None,
    after: Gallery,
    feats: torch.Tensor,
) -> Path | str | None:
    """The cached index of ``before`` carried over to ``after`` (rows matched by name), or its
    Milvus collection (rows matched by their embeddings' ids: ``uit.retrieval.milvus``)."""
    resolved = resolve_kind(kind, len(after.paths))
    if old is not None and resolved == "milvus":
        from uit.retrieval.milvus import carry_milvus

        return carry_milvus(kind, cache_dir, old, feats)
    if old is None or resolved != "ann":
        return None
    rows = {name: i for i, name in enumerate(before.names)}
    return carry_index(cache_dir, old, feats, [rows.get(n) for n in after.names])


def _forget(cache_dir: Path, digests: set[str]) -> list[Path]:
    """Remove ``digests``' rows from every embedding cache in ``cache_dir``; the files changed."""
    changed = []
    for path in sorted(cache_dir.glob("*.safetensors")):
        cache = EmbeddingCache(cache_dir, path.stem)
        held = digests & cache.rows.keys()
        if held:
            for digest in held:
                del cache.rows[digest]
            if cache.rows:
                cache.save()
            else:  # nothing left in it: the file goes (it was written by uit)
                path.unlink()
            changed.append(path)
    return changed
