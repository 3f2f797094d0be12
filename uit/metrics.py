"""Text-to-image retrieval metrics (DESIGN 5): R@k, mAP and mINP, in percent.

A gallery item is relevant to a query when their pids are equal. Ties in similarity are broken by
the lower gallery index, so results never depend on sort stability.

Instead of sorting every row of the (queries x gallery) matrix, each row's relevant items are
ranked by counting how many gallery items lie ahead of each of them: one batched binary search of
every gallery score into the row's few sorted relevant scores, then a histogram. Scores and
indices are packed into one int64 key per item (order-preserving float bits in the high half,
reversed index in the low half), which makes every key unique and the tie rule exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | Sequence[int]
Missing = Literal["error", "exclude"]
CHUNK_BYTES = 64 * 2**20  # working memory per chunk of queries


def _as_tensor(values: ArrayLike) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    array = np.asarray(values)
    if not array.flags.writeable:  # e.g. a polars column: torch wants memory it may write
        array = array.copy()
    return torch.as_tensor(array)


def ranking_keys(scores: torch.Tensor) -> torch.Tensor:
    """(C, G) float32 -> int64 keys, larger = ranked earlier, unique within a row.

    ``topk`` of these keys gives the ranking with ties broken by the lower gallery index.
    """
    bits = (scores + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float value
    gallery = scores.shape[1]
    reversed_index = torch.arange(gallery - 1, -1, -1, dtype=torch.int64)  # lower index wins ties
    return (ordered << 32) | reversed_index


def _relevant_ranks(
    scores: torch.Tensor, relevant: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """1-based ranks of each row's relevant items, best first, padded with 0: (C, max count)."""
    rows = scores.shape[0]
    width = int(counts.max())
    keys = ranking_keys(scores)
    pad = torch.iinfo(torch.int64).max
    # Relevant keys of each row, ascending; rows with fewer relevant items are padded at the end.
    masked = torch.where(relevant, keys, torch.full_like(keys, pad))
    rel_keys = torch.topk(masked, width, dim=1, largest=False, sorted=True).values  # (C, W)
    # below[c, g]: how many relevant keys of row c are smaller than key g (pads never are).
    below = torch.searchsorted(rel_keys, keys)  # (C, G), values in 0..W
    offsets = torch.arange(rows).unsqueeze(1) * (width + 1)
    histogram = torch.bincount((below + offsets).flatten(), minlength=rows * (width + 1))
    histogram = histogram.view(rows, width + 1)
    # ahead[c, i] = items with key > rel_keys[c, i] = items whose `below` exceeds i.
    ahead = histogram.flip(1).cumsum(1).flip(1)[:, 1:]  # (C, W)
    ranks_ascending = ahead + 1
    # Re-order best first: the best relevant item is the last real one in ascending order.
    position = counts.unsqueeze(1) - 1 - torch.arange(width).unsqueeze(0)  # (C, W)
    valid = position >= 0
    best_first = torch.gather(ranks_ascending, 1, position.clamp(min=0))
    return torch.where(valid, best_first, torch.zeros_like(best_first))


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


def retrieval_metrics(
    similarity: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    missing: Missing = "error",
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, float]:
    """R@k for each k, mAP and mINP in percent, ranking the gallery for every query.

    ``similarity`` is (queries, gallery); higher is more similar. With ``missing="error"`` a query
    with no relevant gallery item raises ``ValueError`` naming it; with ``"exclude"`` such queries
    are left out and counted under the extra key ``"excluded"``. Memory stays bounded: queries are
    processed in chunks of about ``chunk_bytes`` of working memory.
    """
    scores, qpids, gpids = _as_tensor(similarity), _as_tensor(query_pids), _as_tensor(gallery_pids)
    _check_inputs(scores, qpids, gpids)
    chunk = max(1, chunk_bytes // (32 * max(1, scores.shape[1])))
    hits = torch.zeros(len(ks), dtype=torch.float64)
    ap_sum = inp_sum = 0.0
    counted = excluded = 0
    for start in range(0, scores.shape[0], chunk):
        rows = _as_float32(scores[start : start + chunk]).contiguous()
        if not torch.isfinite(rows).all():
            bad = start + int((~torch.isfinite(rows)).any(1).nonzero()[0])
            raise ValueError(f"similarity row {bad} (query {bad}) holds NaN or Inf")
        relevant = qpids[start : start + chunk].unsqueeze(1) == gpids.unsqueeze(0)
        counts = relevant.sum(1)
        if not bool(counts.all()):
            empty = (counts == 0).nonzero().flatten()
            if missing == "error":
                q = start + int(empty[0])
                raise ValueError(
                    f"query {q} (pid {int(qpids[q])}) has no relevant image in the gallery "
                    f"({len(empty)} such queries in rows {start}..{start + len(counts) - 1}); "
                    "pass missing='exclude' to leave such queries out and count them"
                )
            excluded += len(empty)
            keep = counts > 0
            rows, relevant, counts = rows[keep], relevant[keep], counts[keep]
            if not len(counts):
                continue
        ranks = _relevant_ranks(rows, relevant, counts).to(torch.float64)  # (C, W), 0 = padding
        best = ranks[:, 0]
        hits += torch.stack([(best <= k).sum() for k in ks]).to(torch.float64)
        order = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64).unsqueeze(0)
        precision = torch.where(ranks > 0, order / ranks.clamp(min=1), torch.zeros_like(ranks))
        ap_sum += float((precision.sum(1) / counts).sum())
        last = ranks.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
        inp_sum += float((counts / last).sum())
        counted += len(counts)
    if counted == 0:
        raise ValueError("no query has a relevant image in the gallery; nothing to evaluate")
    result = {f"R{k}": float(100 * hits[i] / counted) for i, k in enumerate(ks)}
    result["mAP"] = 100 * ap_sum / counted
    result["mINP"] = 100 * inp_sum / counted
    if missing == "exclude":
        result["excluded"] = float(excluded)
    return result
