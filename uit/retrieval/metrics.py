"""Text-to-image retrieval metrics (design §5): R@k, mAP and mINP, in percent.

A gallery item is relevant to a query when their pids are equal. Ties in similarity are broken by
the lower gallery index, so results never depend on sort stability.

Instead of sorting every row of the (queries x gallery) matrix, each relevant item's rank is
counted: how many gallery items score strictly higher, plus how many score the same and come
earlier in the gallery. One batched binary search of every score into the row's few relevant
scores (each paired with the float just below it) gives both counts through one small histogram,
in a single pass that writes one int32 per score; the rare scores equal to a relevant one are then
looked at one by one for the tie rule. The work runs where the scores are (a CUDA matrix stays on
the GPU); only per-query sums come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | Sequence[int]
Missing = Literal["error", "exclude"]
CHUNK_BYTES = 64 * 2**20  # working memory per chunk of queries
KS = (1, 5, 10)  # the recalls every table reports
# The names of the text-to-image metrics, in the order tables show them: the one list.
METRICS = (*(f"R{k}" for k in KS), "mAP", "mINP")
I2T_METRICS = METRICS[:-1]  # mINP is reported text-to-image only


def _as_tensor(values: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach() if device is None else values.detach().to(device)
    array = np.asarray(values)
    if not array.flags.writeable:  # e.g. a polars column: torch wants memory it may write
        array = array.copy()
    return torch.as_tensor(array, device=device)


def ranking_keys(scores: torch.Tensor) -> torch.Tensor:
    """(C, G) float32 -> int64 keys, larger = ranked earlier, unique within a row.

    ``topk`` of these keys gives the ranking with ties broken by the lower gallery index.
    """
    bits = (scores + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float value
    gallery = scores.shape[1]
    reversed_index = torch.arange(gallery - 1, -1, -1, dtype=torch.int64, device=scores.device)
    return (ordered << 32) | reversed_index  # lower index wins ties


@dataclass(frozen=True)
class Relevant:
    """Each query's relevant gallery indices, ascending, as slices of one sorted index list."""

    order: torch.Tensor  # (G,) gallery indices sorted by pid, ascending within a pid
    start: torch.Tensor  # (Q,) where the query's slice of ``order`` begins
    count: torch.Tensor  # (Q,) how many gallery items share the query's pid (0: none)

    def indices(self, rows: slice) -> torch.Tensor:
        """(C, W) relevant gallery indices of the queries ``rows``, padded with the last one."""
        count = self.count[rows]
        width = max(1, int(count.max()))
        step = torch.arange(width, device=count.device)
        offset = torch.minimum(step.unsqueeze(0), (count - 1).clamp(min=0).unsqueeze(1))
        return self.order[(self.start[rows].unsqueeze(1) + offset).clamp(max=len(self.order) - 1)]


def find_relevant(query_pids: torch.Tensor, gallery_pids: torch.Tensor) -> Relevant:
    """Groups the gallery by pid once: no (queries x gallery) match matrix is ever built."""
    order = torch.argsort(gallery_pids, stable=True)
    pids, counts = torch.unique_consecutive(gallery_pids[order], return_counts=True)
    starts = counts.cumsum(0) - counts
    slot = torch.searchsorted(pids, query_pids).clamp(max=len(pids) - 1)
    found = pids[slot] == query_pids
    return Relevant(order, starts[slot], torch.where(found, counts[slot], 0))


def _thresholds(pos_scores: torch.Tensor) -> torch.Tensor:
    """(C, W) relevant scores -> (C, 2W) ascending [below(u0), u0, below(u1), u1, ...].

    ``u`` are the row's distinct relevant scores (padded with +inf), ``below(u)`` the float just
    under ``u``. A score ``s`` then lands, by binary search, in an odd slot exactly when it equals
    some ``u``: ``below(u) < s <= u`` holds for ``s == u`` only.
    """
    values = pos_scores.sort(dim=1).values
    repeat = torch.zeros_like(values, dtype=torch.bool)
    repeat[:, 1:] = values[:, 1:] == values[:, :-1]
    distinct = values.masked_fill(repeat, torch.inf).sort(dim=1).values
    below = torch.nextafter(distinct, torch.full_like(distinct, -torch.inf))
    return torch.stack([below, distinct], dim=2).flatten(1)


def _ties_ahead(
    scores: torch.Tensor, slots: torch.Tensor, pos_scores: torch.Tensor, pos_index: torch.Tensor
) -> torch.Tensor:
    """(C, W): for each relevant item, the items with its score that come earlier in the gallery.

    ``slots`` are the binary-search slots (odd = equal to a relevant score; overwritten here); only
    those few items are compared with the row's relevant items.
    """
    ahead = torch.zeros_like(pos_index)
    tied = slots.bitwise_and_(1).nonzero()  # (N, 2) rows and gallery indices of the tied items
    batch = max(1, 2**22 // pos_index.shape[1])  # bounds the (N, W) comparison below
    for part in tied.split(batch):
        row, item = part[:, 0], part[:, 1]
        same = pos_scores[row] == scores[row, item].unsqueeze(1)  # (N, W)
        earlier = item.unsqueeze(1) < pos_index[row]
        ahead.index_add_(0, row, (same & earlier).to(ahead.dtype))
    return ahead


def relevant_ranks(
    scores: torch.Tensor, pos_index: torch.Tensor, padding: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based ranks (C, W) of the relevant items ``pos_index`` (C, W) in each row of ``scores``;
    entries where ``padding`` (C, W) is true are placeholders, and their ranks are meaningless.

    Rank = 1 + items with a higher score + items with the same score and a lower gallery index.
    """
    rows, width = pos_index.shape
    pos_scores = scores.gather(1, pos_index)  # (C, W)
    if padding is not None:
        pos_scores = pos_scores.masked_fill(padding, torch.inf)
    bounds = _thresholds(pos_scores).contiguous()  # (C, 2W)
    stride = 2 * width + 2  # even, so that a slot's parity survives the row offset
    small = rows * stride < 2**31  # int32 slots halve the one write over the matrix
    slots = torch.searchsorted(bounds, scores, out_int32=small)  # (C, G), 0..2W
    slots += torch.arange(rows, device=slots.device, dtype=slots.dtype).unsqueeze(1) * stride
    histogram = torch.bincount(slots.flatten(), minlength=rows * stride).view(rows, stride)
    at_least = histogram.flip(1).cumsum(1).flip(1)  # at_least[c, j] = items in slot >= j
    # Items scoring above s sit in slots past every bound <= s.
    above = at_least.gather(1, torch.searchsorted(bounds, pos_scores, right=True))
    equal_counts = histogram[:, 1 : 2 * width : 2]  # items equal to each distinct relevant score
    if not bool((equal_counts > 1).any()):  # no score ties with a relevant one: done
        return above + 1
    return above + _ties_ahead(scores, slots, pos_scores, pos_index) + 1


def _check_inputs(
    similarity: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor
) -> None:
    if similarity.ndim != 2:
        raise ValueError(
            f"similarity must be 2-D (queries, gallery), got shape {tuple(similarity.shape)}"
        )
    if similarity.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(
            f"similarity has shape {tuple(similarity.shape)} but there are {len(query_pids)} "
            f"query pids and {len(gallery_pids)} gallery pids"
        )


def _as_float32(similarity: torch.Tensor) -> torch.Tensor:
    """float32 view of the scores; refuses a float64 matrix that float32 cannot hold exactly."""
    if similarity.dtype == torch.float64:
        single = similarity.to(torch.float32)
        if not torch.equal(single.to(torch.float64), similarity):
            raise ValueError(
                "similarity is float64 with values float32 cannot represent exactly; ranking in "
                "float32 could merge distinct scores. Pass float32 scores (model outputs are)."
            )
        return single
    return similarity.to(torch.float32)  # exact for float16, bfloat16 and small integers


def _check_finite(rows: torch.Tensor, start: int) -> None:
    """One read of the chunk (min and max carry NaN along) instead of a mask of it."""
    low, high = torch.aminmax(rows)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        bad = start + int((~torch.isfinite(rows)).any(1).nonzero()[0])
        raise ValueError(f"similarity row {bad} (query {bad}) holds NaN or Inf")


def _missing_error(relevant: Relevant, query_pids: torch.Tensor) -> ValueError:
    empty = (relevant.count == 0).nonzero().flatten()
    q = int(empty[0])
    return ValueError(
        f"query {q} (pid {int(query_pids[q])}) has no relevant image in the gallery "
        f"({len(empty)} such queries); pass missing='exclude' to leave such queries out and "
        "count them"
    )


def _query_sums(ranks: torch.Tensor, counts: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """(C, W) ranks (valid first, in any order), (C,) counts -> [hits at each k, AP, INP] sums."""
    width = ranks.shape[1]
    valid = torch.arange(width, device=ranks.device).unsqueeze(0) < counts.unsqueeze(1)
    ranks = ranks.to(torch.float64).masked_fill(~valid, torch.inf).sort(dim=1).values
    best = ranks[:, 0]
    hits = [(best <= k).sum().to(torch.float64) for k in ks]
    order = torch.arange(1, width + 1, dtype=torch.float64, device=ranks.device).unsqueeze(0)
    precision = torch.where(valid, order / ranks, torch.zeros_like(ranks))
    ap = (precision.sum(1) / counts).sum()
    last = ranks.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
    inp = (counts / last).sum()
    return torch.stack([*hits, ap, inp])


def retrieval_metrics(
    similarity: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    *,
    ks: Sequence[int] = KS,
    missing: Missing = "error",
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, float]:
    """R@k for each k, mAP and mINP in percent, ranking the gallery for every query.

    ``similarity`` is (queries, gallery); higher is more similar. With ``missing="error"`` a query
    with no relevant gallery item raises ``ValueError`` naming it; with ``"exclude"`` such queries
    are left out and counted under the extra key ``"excluded"``. Memory stays bounded: queries are
    processed in chunks of about ``chunk_bytes`` of working memory. A CUDA ``similarity`` is
    evaluated on its GPU.
    """
    scores = _as_tensor(similarity)
    qpids = _as_tensor(query_pids, scores.device)
    gpids = _as_tensor(gallery_pids, scores.device)
    _check_inputs(scores, qpids, gpids)
    relevant = find_relevant(qpids, gpids)
    if missing == "error" and not bool(relevant.count.all()):
        raise _missing_error(relevant, qpids)
    keep = (relevant.count > 0).nonzero().flatten()
    if not len(keep):
        raise ValueError("no query has a relevant image in the gallery; nothing to evaluate")
    chunk = max(1, chunk_bytes // (16 * max(1, scores.shape[1])))
    sums = torch.zeros(len(ks) + 2, dtype=torch.float64, device=scores.device)
    for start in range(0, scores.shape[0], chunk):
        part = slice(start, start + chunk)
        rows = _as_float32(scores[part]).contiguous()  # (C, G)
        _check_finite(rows, start)
        counts, pos_index = relevant.count[part], relevant.indices(part)  # (C,), (C, W)
        if not bool(counts.all()):
            kept = counts > 0
            rows, counts, pos_index = rows[kept], counts[kept], pos_index[kept]
            if not len(counts):
                continue
        padding = torch.arange(pos_index.shape[1], device=counts.device) >= counts.unsqueeze(1)
        sums += _query_sums(relevant_ranks(rows, pos_index, padding), counts, ks)
    totals = (100 * sums / len(keep)).tolist()  # the only values that leave the device
    result = {f"R{k}": totals[i] for i, k in enumerate(ks)}
    result["mAP"], result["mINP"] = totals[len(ks)], totals[len(ks) + 1]
    if missing == "exclude":
        result["excluded"] = float(len(relevant.count) - len(keep))
    return result
