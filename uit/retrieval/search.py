"""Search a gallery of person images with a sentence: encode the gallery once, cache the
embeddings (keyed by the checkpoint's and each image's contents), rank by cosine similarity.

A gallery is a folder of images (searched recursively) or a prepared benchmark's split. Only
regular image files are read (``uit.data.images.open_image_file``), and a symbolic link in a
folder gallery may point anywhere inside the folder but not out of it, as ``uit data prepare``
allows none out of imgs/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import torch
from safetensors.torch import load

from uit.core.errors import DataError
from uit.core.io import atomic_write_bytes, save_tensors
from uit.data.images import ImageError, read_image_bytes
from uit.data.prepared import (
    IMAGES_FILE,
    erasure_file,
    read_erased,
    read_manifests,
)
from uit.model.encoder import DualEncoder
from uit.retrieval.evaluate import EvalOptions, encode_images
from uit.retrieval.metrics import ranking_keys
from uit.retrieval.scan import coarse_scores

if TYPE_CHECKING:
    from uit.core.console import Advance

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# What an unreadable image of a folder gallery asks for (``--drop-missing`` is for benchmarks).
FOLDER_FIX = "a gallery folder holds image files only: remove this one or replace it with a " \
    "readable image, then run again"  # fmt: skip


@dataclass(frozen=True)
class Hit:
    rank: int
    path: Path
    score: float


@dataclass(frozen=True)
class Gallery:
    """The images searched: a name to show for them (the folder's, never its whole path), the
    folder they are under, their paths, their names (paths relative to ``root``) and, for a
    prepared benchmark, their identities and the split's captions by identity."""

    source: str
    root: Path
    paths: list[Path]
    names: list[str]
    pids: list[int] | None = None
    captions: dict[str, int] = field(default_factory=dict)  # normalised caption -> pid
    examples: list[str] = field(default_factory=list)  # the captions as written

    @property
    def image_fix(self) -> str | None:
        """What an unreadable image's error says to do: a folder's file is removed or replaced;
        a benchmark's error already says how (``--drop-missing``)."""
        return FOLDER_FIX if self.pids is None else None


def normalise(text: str) -> str:
    """What a caption is matched by: lower case, single spaces, no final full stop."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .")


def shown(text: str) -> str:
    """``text`` safe to print or send as JSON: bytes of a file name that are not UTF-8 (kept by
    Python as lone surrogates) as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class EmptyGallery(DataError):
    """A folder gallery with no image to read: none in it, or every one erased."""


def read_gallery(source: str | Path, split: str = "test") -> Gallery:
    """A folder of images (searched recursively) or a prepared benchmark's ``split``, less the
    images erased from it (``read_erased``)."""
    source = Path(source)
    name = shown(Path(os.path.abspath(source)).name or os.sep)
    erased = read_erased(source)
    if not (source / IMAGES_FILE).is_file():
        paths = [p for p in list_folder(source) if p.relative_to(source).as_posix() not in erased]
        if not paths:
            raise EmptyGallery(f"gallery {source}: every image in it was erased "
                               f"({erasure_file(source)})")  # fmt: skip
        return Gallery(name, source, paths, [p.relative_to(source).as_posix() for p in paths])
    manifests = read_manifests(source)
    if not manifests.has_split(split):
        raise DataError(f"{source}: the prepared {manifests.benchmark} has no {split!r} split")
    manifests = manifests.split(split)
    images = manifests.images.filter(~pl.col("path").is_in(sorted(erased)))
    manifests = replace(manifests, images=images, captions=manifests.captions.filter(
        pl.col("pid").is_in(images["pid"].unique().to_list())))  # fmt: skip
    captions = manifests.captions.select("text", "pid").rows()
    return Gallery(f"{name} ({manifests.benchmark} {split})", manifests.imgs_dir,
                   manifests.paths(), manifests.images["path"].to_list(),
                   manifests.images["pid"].to_list(),
                   {normalise(text): pid for text, pid in captions},
                   [text for text, _ in captions])  # fmt: skip


def list_gallery(source: str | Path, split: str = "test") -> list[Path]:
    """The images of a folder (recursively, sorted), or of a prepared benchmark's split."""
    return read_gallery(source, split).paths


def gallery_not_found(folder: Path) -> DataError:
    return DataError(f"gallery {folder} not found: give a folder of images, a prepared benchmark "
                     "folder (data/prepared/NAME) or a benchmark name")  # fmt: skip


def list_folder(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted. A symbolic link that stays inside it is fine
    (see ``_walk``); one that leads out of it, to a file or a folder, is an error, as
    ``uit data prepare`` refuses one out of imgs/ (its target would be read and served)."""
    if not folder.is_dir():
        raise gallery_not_found(folder)
    images, outside = _walk(folder)
    if outside:
        link, target = outside[0]
        raise DataError(
            f"gallery {folder}: {len(outside)} symbolic link(s) lead outside it (e.g. "
            f"{shown(link.relative_to(folder).as_posix())} -> {shown(target)}); a gallery's "
            "images are read and served from inside its folder only. Replace the links with the "
            "image files, or link the whole gallery folder instead"
        )
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise EmptyGallery(f"gallery {folder} holds no images ({suffixes})")
    return sorted(images)


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder`` (links to files inside it included) and the links that
    lead out of it, with where they lead. A link to a folder inside it is not followed: that
    folder is listed under its own name, once (and no loop can start)."""
    root = os.path.realpath(folder)
    inside = os.path.join(root, "")
    images: list[Path] = []
    outside: list[tuple[Path, str]] = []
    pending = [folder]
    while pending:
        for entry in _entries(pending.pop()):
            path = Path(entry.path)
            image = path.suffix.lower() in IMAGE_SUFFIXES
            if entry.is_symlink():
                real = os.path.realpath(path)
                if real != root and not real.startswith(inside):
                    if image or os.path.isdir(real):  # what a reader would follow out
                        outside.append((path, real))
                elif image and not os.path.isdir(real):
                    images.append(path)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif image:
                images.append(path)
    return images, outside


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise DataError(
            f"gallery folder {shown(str(folder))} cannot be read "
            f"({error.strerror}): fix its permissions or remove it"
        ) from None


@contextmanager
def image_fix(fix: str | None) -> Iterator[None]:
    """Image errors raised inside say ``fix`` (when given) instead of their own."""
    try:
        yield
    except ImageError as error:
        if fix is None:
            raise
        raise error.with_fix(fix) from None


def file_digest(path: Path) -> str:
    """What an image's cache entry is keyed by: its bytes, not its name or time (only a regular
    file of a bounded size is read: see ``open_image_file``)."""
    return hashlib.blake2b(read_image_bytes(path), digest_size=16).hexdigest()


def checkpoint_digest(checkpoint_dir: str | Path) -> str:
    """A checkpoint's weights and architecture, hashed: a retrained or other model gets a new
    cache (the training state changes per epoch; the architecture it rebuilds as does not)."""
    from uit.model.build import inference_config, inference_precision
    from uit.model.checkpoint import read_state

    digest = hashlib.blake2b(digest_size=16)
    for name in ("weights.safetensors", "state.json"):
        path = Path(checkpoint_dir) / name
        if name == "state.json":
            state = read_state(checkpoint_dir)
            model = inference_config(state, checkpoint_dir).model_dump(mode="json")
            digest.update(json.dumps([model, inference_precision(state)]).encode())
            continue
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


class EmbeddingCache:
    """Image embeddings of one checkpoint, by image digest, in one safetensors file.

    The file holds the (N, D) features and, in its metadata, the N digests and a checksum of
    both; it is written under a unique temporary name and renamed into place, so processes that
    search at once each publish a whole, consistent file (the last one wins). A file that is
    damaged, truncated or inconsistent, or whose vectors are not finite or not the model's width
    (``keep_width``), is ignored (with a warning) and rebuilt.
    """

    FORMAT = "uit-embeddings-1"

    def __init__(self, cache_dir: str | Path, checkpoint_key: str) -> None:
        self.path = Path(cache_dir) / f"{checkpoint_key}.safetensors"
        self.rows: dict[str, torch.Tensor] = {}
        if self.path.is_file():
            try:
                self.rows = self._read()
            except Exception as error:  # any damage means the same: rebuild the entry
                log.warning("ignoring the damaged embedding cache %s (%s)", self.path, error)

    def _read(self) -> dict[str, torch.Tensor]:
        data = self.path.read_bytes()
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        metadata = header.get("__metadata__") or {}
        if metadata.get("format") != self.FORMAT:
            raise ValueError(f"not a {self.FORMAT} file")
        digests, feats = json.loads(metadata["digests"]), load(data)["feats"]
        if feats.dim() != 2 or feats.shape[0] != len(digests) or len(set(digests)) != len(digests):
            raise ValueError(f"{len(digests)} digests for features of shape {tuple(feats.shape)}")
        if metadata.get("checksum") != _checksum(digests, feats):
            raise ValueError("checksum mismatch")
        if not feats.is_floating_point() or not torch.isfinite(feats).all():
            raise ValueError(f"its {feats.dtype} vectors are not all finite numbers")
        return dict(zip(digests, feats, strict=True))

    def keep_width(self, width: int) -> None:
        """Forget the stored vectors unless they are ``width`` wide (the model's)."""
        stored = next(iter(self.rows.values()), None)  # the file's rows share one width
        if stored is not None and stored.shape[0] != width:
            log.warning("ignoring the embedding cache %s: it holds vectors %d wide, the model's "
                        "are %d (rebuilding it)", self.path, stored.shape[0], width)  # fmt: skip
            self.rows = {}

    def missing(self, digests: Sequence[str]) -> list[int]:
        return [i for i, d in enumerate(digests) if d not in self.rows]

    def add(self, digests: Sequence[str], feats: torch.Tensor) -> None:
        """Stored as float16: half the memory, and less to read in ``top_k``'s scan."""
        self.rows.update(zip(digests, feats.half(), strict=True))

    def get(self, digests: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.rows[d] for d in digests])

    def save(self) -> None:
        digests = list(self.rows)
        feats = torch.stack([self.rows[d] for d in digests]).contiguous()  # (N, D)
        metadata = {"format": self.FORMAT, "digests": json.dumps(digests),
                    "checksum": _checksum(digests, feats)}  # fmt: skip
        atomic_write_bytes(self.path, save_tensors({"feats": feats}, metadata))


def _checksum(digests: Sequence[str], feats: torch.Tensor) -> str:
    """What ties the digests to the features: a file pairing one with another's fails it."""
    digest = hashlib.blake2b(json.dumps(list(digests)).encode(), digest_size=16)
    digest.update(str(tuple(feats.shape)).encode())
    digest.update(feats.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gallery_embeddings(
    encoder: DualEncoder,
    paths: Sequence[Path],
    options: EvalOptions,
    cache: EmbeddingCache | None = None,
    progress: Advance | None = None,
    fix: str | None = None,
    digests: Mapping[Path, str] | None = None,
) -> tuple[torch.Tensor, int]:
    """(N, D) normalised features of ``paths``; only images not in ``cache`` are encoded.
    Returns the features and how many images were encoded now. An unreadable image's error
    says ``fix`` when given (``Gallery.image_fix``). ``digests`` holds the images' digests
    (``file_digest``) already computed: those are not read and hashed again.

    ``progress`` advances by N in all: by one for each image found in the cache as it is
    hashed, then by each batch encoded, so a warm cache's bar moves instead of looking stuck."""
    with image_fix(fix):
        if cache is None:
            return encode_images(encoder, paths, options, progress), len(paths)
        cache.keep_width(encoder.embed_dim)
        keys = _digests(paths, cache, progress, digests or {})
        todo = cache.missing(keys)
        if todo:
            feats = encode_images(encoder, [paths[i] for i in todo], options, progress)
            cache.add([keys[i] for i in todo], feats)
            cache.save()
    return cache.get(keys), len(todo)


def _digests(paths: Sequence[Path], cache: EmbeddingCache, progress: Advance | None,
             known: Mapping[Path, str]) -> list[str]:  # fmt: skip
    digests = []
    for path in paths:
        digests.append(known.get(path) or file_digest(path))
        if progress and digests[-1] in cache.rows:
            progress(1)
    return digests


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, N) -> indices (Q, k) of each row's best scores, best first, ties to the lower index.

    The same as ``torch.topk(ranking_keys(scores), k)`` but with a float ``topk`` over the row:
    only the items at or above the k-th best score get int64 keys (``benchmarks/search.py``
    times both ways)."""
    values, indices = torch.topk(scores, k, dim=1)  # (Q, k) each; ties in any order
    rows = []
    for row, best, where in zip(scores, values, indices, strict=True):
        least = best[-1]  # the k-th best score: everything above it is in ``where``
        above = where[best > least]
        tied = (row == least).nonzero().flatten()[: k - len(above)]  # lower indices first
        chosen = torch.cat([above, tied]).sort().values  # (k,) ascending, so keys break ties
        rows.append(chosen[torch.topk(ranking_keys(row[chosen].unsqueeze(0)), k).indices[0]])
    return torch.stack(rows)


def top_k(
    query_feats: torch.Tensor, gallery_feats: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, D) x (N, D) normalised -> float32 scores and indices (Q, k), ties to the lower index.

    A float16 gallery (the cache's) is scanned by ``uit.retrieval.scan`` in the arithmetic this
    CPU does fast; a shortlist of the best ``max(8k, 64)`` is then scored again in float32, so the
    returned scores are the exact dot products of the stored embeddings, whatever the scan."""
    k = min(k, gallery_feats.shape[0])
    if gallery_feats.dtype != torch.float16:
        similarity = query_feats.float() @ gallery_feats.float().T  # (Q, N)
        indices = top_indices(similarity, k)
        return similarity.gather(1, indices), indices
    coarse = coarse_scores(query_feats, gallery_feats)  # (Q, N) float32
    short = min(max(8 * k, 64), gallery_feats.shape[0])
    candidates = top_indices(coarse, short).sort(dim=1).values
    exact = torch.einsum("qd,qcd->qc", query_feats.float(), gallery_feats[candidates].float())
    best = top_indices(exact, k)  # positions follow gallery order
    return exact.gather(1, best), candidates.gather(1, best)


def rescore(
    query_feat: torch.Tensor, feats: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of ``candidates`` (ascending indices into ``feats``) by exact float32
    score, ties to the lower index: how an approximate index's shortlist is ranked. A shortlist
    shorter than ``k`` (the visited cells hold fewer) falls back to the exact scan."""
    if len(candidates) < k:
        scores, indices = top_k(query_feat.unsqueeze(0), feats, k)
        return scores[0], indices[0]
    # the same product as ``top_k``'s rescoring, so both give the same scores to the last bit
    exact = torch.einsum("qd,qcd->qc", query_feat.float()[None], feats[candidates].float()[None])[0]
    best = top_indices(exact.unsqueeze(0), k)[0]
    return exact[best], candidates[best]


def embedding_digest(feats: torch.Tensor) -> str:
    """A digest of (N, D) embeddings' bytes and shape: what names an index built of them."""
    digest = hashlib.blake2b(str(tuple(feats.shape)).encode(), digest_size=16)
    digest.update(feats.contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


def rank(
    query_feat: torch.Tensor, gallery_feats: torch.Tensor, paths: Sequence[Path], k: int
) -> list[Hit]:
    scores, indices = top_k(query_feat.unsqueeze(0), gallery_feats, k)
    pairs = zip(indices[0].tolist(), scores[0].tolist(), strict=True)
    return [Hit(r + 1, Path(paths[i]), float(s)) for r, (i, s) in enumerate(pairs)]
