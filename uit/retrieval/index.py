"""Search a gallery through an index: an exact scan (``top_k``) for small galleries, an
approximate FAISS index (IVF lists of 8-bit vectors) above ``ANN_THRESHOLD`` images, built once
and cached beside the gallery embeddings.

The approximate index only proposes a shortlist; the shortlist is scored again exactly in
float32 from the stored embeddings, so every score it returns is the exact dot product and ties
go to the lower index, as in ``top_k``. FAISS is imported inside functions: ``import uit`` and
the exact path never need it (it comes with the ``serve`` extra).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from uit.core.errors import UitError
from uit.core.io import atomic_write_bytes
from uit.retrieval.search import top_indices, top_k

if TYPE_CHECKING:
    from uit.core.console import NewBar

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ann", "auto"]
ANN_THRESHOLD = 50_000  # images: below it an exact float16 scan answers in a few milliseconds
DEFAULT_NPROBE = 32  # lists visited per query: recall@10 >= 0.99 at 100k and 1M (benchmarks/)
TRAIN_PER_LIST = 40  # k-means training points per list (FAISS warns below 39)
ADD_CHUNK = 16_384  # embeddings added per step of the progress bar


@dataclass(frozen=True)
class AnnSettings:
    lists: int  # inverted lists (k-means cells)
    nprobe: int = DEFAULT_NPROBE

    @classmethod
    def for_size(cls, n: int, nprobe: int = DEFAULT_NPROBE) -> AnnSettings:
        """About 4 sqrt(N) lists (a few hundred embeddings each), as many as N can train."""
        return cls(lists=max(1, min(round(4 * math.sqrt(n)), n // TRAIN_PER_LIST)), nprobe=nprobe)

    def factory(self) -> str:
        return f"IVF{self.lists},SQ8"


class FlatIndex:
    """The exact scan: every embedding scored for every query."""

    kind = "flat"

    def __init__(self, feats: torch.Tensor) -> None:
        self.feats = feats  # (N, D)

    def search(self, query_feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) -> float32 scores and indices (Q, k), best first, ties to the lower index."""
        return top_k(query_feats, self.feats, k)


class AnnIndex:
    """A FAISS IVF index proposes ``shortlist(k)`` candidates; they are scored exactly."""

    kind = "ann"

    def __init__(self, feats: torch.Tensor, index: Any, settings: AnnSettings) -> None:
        self.feats, self.index, self.settings = feats, index, settings
        index.nprobe = settings.nprobe

    def search(self, query_feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.feats.shape[0])
        short = min(max(8 * k, 64), self.feats.shape[0])
        _, found = self.index.search(query_feats.float().numpy(), short)  # (Q, short), -1: none
        rows = [torch.from_numpy(row[row >= 0]).sort().values for row in found]
        best = [_rescore(q, self.feats, c, k) for q, c in zip(query_feats, rows, strict=True)]
        return torch.stack([s for s, _ in best]), torch.stack([i for _, i in best])


def _rescore(
    query_feat: torch.Tensor, feats: torch.Tensor, candidates: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of ``candidates`` (ascending indices) by exact float32 score; a shortlist
    shorter than ``k`` (the visited lists hold fewer) falls back to the exact scan."""
    if len(candidates) < k:
        scores, indices = top_k(query_feat.unsqueeze(0), feats, k)
        return scores[0], indices[0]
    # the same product as ``top_k``'s rescoring, so both give the same scores to the last bit
    exact = torch.einsum("qd,qcd->qc", query_feat.float()[None], feats[candidates].float()[None])[0]
    best = top_indices(exact.unsqueeze(0), k)[0]
    return exact[best], candidates[best]


def resolve_kind(kind: IndexKind, n: int) -> Literal["flat", "ann"]:
    if kind == "auto":
        return "ann" if n >= ANN_THRESHOLD else "flat"
    return kind


def build_index(
    feats: torch.Tensor,
    kind: IndexKind = "auto",
    cache_dir: str | Path | None = None,
    progress: NewBar | None = None,
) -> FlatIndex | AnnIndex:
    """The index ``kind`` chooses for (N, D) normalised ``feats``; an approximate one is read
    from ``cache_dir`` when built before from the same embeddings, else built and saved there."""
    if resolve_kind(kind, feats.shape[0]) == "flat":
        return FlatIndex(feats)
    settings = AnnSettings.for_size(feats.shape[0])
    path = index_path(cache_dir, feats, settings) if cache_dir is not None else None
    index = _read_index(path, feats) if path is not None else None
    if index is None:
        index = _train_and_add(feats, settings, progress)
        if path is not None:
            atomic_write_bytes(path, _faiss().serialize_index(index).tobytes())
    return AnnIndex(feats, index, settings)


def index_path(cache_dir: str | Path, feats: torch.Tensor, settings: AnnSettings) -> Path:
    """Keyed by the embeddings' bytes and the settings: other embeddings, another file."""
    digest = hashlib.blake2b(settings.factory().encode(), digest_size=16)
    digest.update(str(tuple(feats.shape)).encode())
    digest.update(feats.contiguous().view(torch.uint8).numpy().data)
    return Path(cache_dir) / f"index-{digest.hexdigest()}.faiss"


def _read_index(path: Path, feats: torch.Tensor) -> Any:
    """The cached index at ``path``, or None when absent or damaged (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        index = _faiss().deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
    except Exception as error:  # FAISS raises RuntimeError with its own text for any damage
        log.warning("ignoring the damaged index %s (%s)", path, str(error).splitlines()[0])
        return None
    if (index.ntotal, index.d) != tuple(feats.shape):
        log.warning("ignoring the index %s: it holds %d x %d embeddings", path, index.ntotal,
                    index.d)  # fmt: skip
        return None
    return index


def _train_and_add(feats: torch.Tensor, settings: AnnSettings, progress: NewBar | None) -> Any:
    faiss = _faiss()
    data = feats.float().numpy()  # (N, D) float32, as FAISS takes them
    index = faiss.index_factory(data.shape[1], settings.factory(), faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).permutation(len(data))[: TRAIN_PER_LIST * settings.lists]
    trained = progress(f"the index's {settings.lists:,} cells (k-means)", 1) if progress else None
    index.train(data[np.sort(sample)])  # k-means: the slow part of the build
    if trained:
        trained(1)
    advance = progress("adding the gallery to the index", len(data)) if progress else None
    for start in range(0, len(data), ADD_CHUNK):
        index.add(data[start : start + ADD_CHUNK])
        if advance:
            advance(len(data[start : start + ADD_CHUNK]))
    return index


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise UitError(
            "the approximate index needs FAISS: pip install 'uit[serve]' (or faiss-cpu), or use "
            "the exact scan (--index flat)"
        ) from None
    return faiss
