"""Search a gallery through an index: an exact scan (``top_k``) for small galleries, an
approximate FAISS index (IVF lists of 8-bit vectors) above ``ANN_THRESHOLD`` images, built once
and cached beside the gallery embeddings. A cached index is used only when it is the index of
these embeddings: its header names their count, width and digest, and its lists hold each of the
ids 0 to N-1 exactly once; anything else is rebuilt, with a warning.

The approximate index only proposes a shortlist; the shortlist is scored again exactly in
float32 from the stored embeddings, so every score it returns is the exact dot product and ties
go to the lower index, as in ``top_k``. FAISS is imported inside functions: ``import uit`` and
the exact path never need it (it comes with the ``serve`` extra).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from uit.core.config import IndexChoice
from uit.core.config import IndexKind as IndexKind  # re-exported: gallery and live use it
from uit.core.errors import UitError
from uit.core.io import atomic_write_bytes
from uit.retrieval.scan import scan_method
from uit.retrieval.search import embedding_digest, rescore, top_k

if TYPE_CHECKING:
    from uit.core.console import NewBar
    from uit.retrieval.milvus import MilvusIndex

log = logging.getLogger(__name__)

ANN_THRESHOLD = 50_000  # images: below it an exact scan answers in a few milliseconds
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

    def describe(self) -> str:
        """What a server prints: the kind, and how this machine scans (``uit.retrieval.scan``)."""
        if self.feats.dtype != torch.float16:
            return f"flat index, {self.feats.dtype} scan".replace("torch.", "")
        return f"flat index, {'float16' if self.feats.is_cuda else scan_method()} scan"

    def search(self, query_feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) -> float32 scores and indices (Q, k), best first, ties to the lower index."""
        return top_k(query_feats, self.feats, k)


class AnnIndex:
    """A FAISS IVF index proposes ``shortlist(k)`` candidates; they are scored exactly."""

    kind = "ann"

    def __init__(self, feats: torch.Tensor, index: Any, settings: AnnSettings) -> None:
        self.feats, self.index, self.settings = feats, index, settings
        index.nprobe = settings.nprobe

    def describe(self) -> str:
        return f"ann index, {self.settings.factory()} visiting {self.settings.nprobe} lists"

    def search(self, query_feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.feats.shape[0])
        short = min(max(8 * k, 64), self.feats.shape[0])
        _, found = self.index.search(query_feats.float().numpy(), short)  # (Q, short), -1: none
        rows = [torch.from_numpy(row[row >= 0]).sort().values for row in found]
        best = [rescore(q, self.feats, c, k) for q, c in zip(query_feats, rows, strict=True)]
        return torch.stack([s for s, _ in best]), torch.stack([i for _, i in best])


def resolve_kind(kind: IndexChoice, n: int) -> Literal["flat", "ann", "milvus"]:
    """The kind of index ``kind`` means for ``n`` images (a Milvus server's URI: milvus)."""
    if kind == "auto":
        return "ann" if n >= ANN_THRESHOLD else "flat"
    if kind in ("flat", "ann"):
        return "flat" if kind == "flat" else "ann"
    return "milvus"


def build_index(
    feats: torch.Tensor,
    kind: IndexChoice = "auto",
    cache_dir: str | Path | None = None,
    progress: NewBar | None = None,
) -> FlatIndex | AnnIndex | MilvusIndex:
    """The index ``kind`` chooses for (N, D) normalised ``feats``; an approximate one is read
    from ``cache_dir`` when built before from the same embeddings (or carried over to them by
    ``carry_index``), else built and saved there; a Milvus one lives in the Milvus ``kind``
    names (``uit.retrieval.milvus``)."""
    resolved = resolve_kind(kind, feats.shape[0])
    if resolved == "flat":
        return FlatIndex(feats)
    if resolved == "milvus":
        from uit.retrieval.milvus import build_milvus_index, segment_rows

        lists = AnnSettings.for_size(segment_rows(kind, *feats.shape)).lists
        return build_milvus_index(feats, kind, cache_dir, progress, lists)
    expected = IndexHeader.of(feats, AnnSettings.for_size(feats.shape[0]))
    path = index_path(cache_dir, expected.digest) if cache_dir is not None else None
    index = _read_index(path, expected) if path is not None else None
    if index is not None and not _still_fits(index, feats.shape[0]):
        index = None
    if index is None:
        settings = AnnSettings.for_size(feats.shape[0])
        index = _train_and_add(feats, settings, progress)
        if path is not None:
            _write_index(path, expected, index)
    return AnnIndex(feats, index, AnnSettings(lists=_faiss().extract_index_ivf(index).nlist))


def _still_fits(index: Any, n: int) -> bool:
    """Whether an index carried over (``carry_index``) still has about the cells ``n``
    embeddings want: past half or twice as many, it is trained again."""
    lists, wanted = _faiss().extract_index_ivf(index).nlist, AnnSettings.for_size(n).lists
    if wanted / 2 <= lists <= 2 * wanted:
        return True
    log.info("the cached index has %d cells, %d embeddings want %d: training it again",
             lists, n, wanted)  # fmt: skip
    return False


def index_path(cache_dir: str | Path, digest: str) -> Path:
    """Where the cached index of the embeddings with ``digest`` lives."""
    return Path(cache_dir) / f"index-{digest}.faiss"


def _write_index(path: Path, header: IndexHeader, index: Any) -> None:
    header = replace(header, factory=f"IVF{_faiss().extract_index_ivf(index).nlist},SQ8")
    atomic_write_bytes(path, header.encode() + _faiss().serialize_index(index).tobytes())


def carry_index(
    cache_dir: str | Path, old: torch.Tensor, new: torch.Tensor, source: Sequence[int | None]
) -> Path | None:
    """Carry the cached index of the embeddings ``old`` over to ``new`` without training it
    again: row j of ``new`` is row ``source[j]`` of ``old``, or a new image (None). Rows of
    ``old`` no row comes from are removed from the lists, the others renumbered, the new ones
    assigned to the trained cells. Returns the new index file (the old one is removed: it
    may hold erased images), or None when no index of ``old`` is cached."""
    before = IndexHeader.of(old, AnnSettings.for_size(len(old)))  # hashes old: once
    path = index_path(cache_dir, before.digest)
    index = _read_index(path, before)
    if index is None:
        return None
    mapping = np.full(len(old), -1, dtype=np.int64)  # old id -> new id, -1: removed
    for j, i in enumerate(source):
        if i is not None:
            mapping[i] = j
    gone = np.flatnonzero(mapping < 0)
    if gone.size:
        index.remove_ids(gone)
    _renumber(index, mapping)
    added = np.array([j for j, i in enumerate(source) if i is None], dtype=np.int64)
    if added.size:
        index.add_with_ids(new[torch.from_numpy(added)].float().numpy(), added)
    header = IndexHeader.of(new, AnnSettings.for_size(len(new)))
    carried = index_path(cache_dir, header.digest)
    _write_index(carried, header, index)
    if carried != path:
        path.unlink(missing_ok=True)
    return carried


def _renumber(index: Any, mapping: np.ndarray) -> None:
    """Give every id in an IVF index's lists its new number ``mapping[id]`` (codes kept)."""
    faiss = _faiss()
    lists = faiss.extract_index_ivf(index).invlists
    for i in range(lists.nlist):
        n = lists.list_size(i)
        if n:
            ids = mapping[faiss.rev_swig_ptr(lists.get_ids(i), n)]
            codes = faiss.rev_swig_ptr(lists.get_codes(i), n * lists.code_size).copy()
            lists.update_entries(i, 0, n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))


INDEX_FORMAT = "uit-index-1"


@dataclass(frozen=True)
class IndexHeader:
    """What a cached index file says it indexes, ahead of FAISS's bytes: 8 bytes of length,
    then this as JSON."""

    count: int
    dim: int
    factory: str
    digest: str  # of the embeddings' bytes and shape (the file is named by it)

    @classmethod
    def of(cls, feats: torch.Tensor, settings: AnnSettings) -> IndexHeader:
        """The header an index of ``feats`` built with ``settings`` has (one carried over
        keeps the cells it was trained with: its factory may differ)."""
        count, dim = feats.shape
        return cls(count, dim, settings.factory(), embedding_digest(feats))

    def encode(self) -> bytes:
        text = json.dumps({"format": INDEX_FORMAT, **asdict(self)}).encode()
        return len(text).to_bytes(8, "little") + text

    @classmethod
    def split(cls, data: bytes) -> tuple[IndexHeader, bytes]:
        """The header and FAISS's bytes of a file; ValueError (or KeyError) for another one."""
        size = int.from_bytes(data[:8], "little")
        fields = json.loads(data[8 : 8 + size]) if 0 < size < 4096 else {}
        if not isinstance(fields, dict) or fields.pop("format", None) != INDEX_FORMAT:
            raise ValueError(f"not a {INDEX_FORMAT} file")
        return cls(**fields), data[8 + size :]


def _read_index(path: Path, expected: IndexHeader) -> Any:
    """The cached index at ``path``, or None when absent, damaged or not the index of the
    embeddings ``expected`` describes (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        header, data = IndexHeader.split(path.read_bytes())
        index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        problem = _mismatch(header, index, expected)
    except Exception as error:  # FAISS raises RuntimeError with its own text for any damage
        first = (str(error) or type(error).__name__).splitlines()[0]
        log.warning("ignoring the damaged index %s (%s); rebuilding it", path, first)
        return None
    if problem:
        log.warning("ignoring the index %s: %s; rebuilding it", path, problem)
        return None
    return index


def _mismatch(header: IndexHeader, index: Any, expected: IndexHeader) -> str | None:
    """Why ``index`` (read with ``header``) is not the index of ``expected``'s embeddings."""
    if (header.count, header.dim, header.digest) != (expected.count, expected.dim,
                                                     expected.digest):  # fmt: skip
        return f"it indexes other embeddings ({header.count} x {header.dim}, {header.factory})"
    if (index.ntotal, index.d) != (expected.count, expected.dim):
        return f"it holds {index.ntotal} x {index.d} embeddings, not {expected.count} x " \
            f"{expected.dim}"  # fmt: skip
    ids = _stored_ids(index)
    if len(ids) != expected.count or not np.array_equal(np.sort(ids), np.arange(expected.count)):
        return f"its lists do not hold each id from 0 to {expected.count - 1} exactly once"
    return None


def _stored_ids(index: Any) -> np.ndarray:
    """Every id in an IVF index's inverted lists, list by list."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    ids = [np.array(faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)), dtype=np.int64)
           for i in range(ivf.nlist) if lists.list_size(i)]  # fmt: skip
    return np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)


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
