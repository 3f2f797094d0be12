"""The exact search's coarse scan (uit.retrieval.scan): both methods agree with float32."""

from __future__ import annotations

import pytest
import torch

from uit.core.errors import ConfigError
from uit.retrieval import scan
from uit.retrieval.metrics import ranking_keys
from uit.retrieval.search import top_k


def gallery(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1)
    queries = torch.nn.functional.normalize(torch.randn(3, dim, generator=generator), dim=-1)
    return feats.half(), queries


@pytest.mark.parametrize("n", [1, 5, scan.BLOCK - 1, scan.BLOCK + 7, 2 * scan.BLOCK])
def test_both_methods_score_what_float32_scores(n: int) -> None:
    """Block edges included: every row scored once, against its own query."""
    feats, queries = gallery(n, 24, seed=n)
    expected = queries @ feats.float().T
    for method in scan.METHODS:
        for rows in (queries[:1], queries):  # one query takes another path than several
            got = scan.coarse_scores(rows, feats, method)
            assert got.dtype == torch.float32 and got.shape == (len(rows), n)
            tolerance = 2e-3 if method == "float16" else 1e-5  # float16 sums lose bits
            assert torch.allclose(got, expected[: len(rows)], atol=tolerance), method


@pytest.mark.parametrize("method", scan.METHODS)
def test_top_k_is_exact_whatever_the_scan(method: str, monkeypatch) -> None:
    """The shortlist's rescoring makes the result the exact float32 ranking of the stored
    embeddings, ties to the lower index, with either method."""
    monkeypatch.setenv(scan.ENV, method)
    feats, queries = gallery(3 * scan.BLOCK + 11, 64, seed=1)
    feats[100] = feats[7]  # a tie: the lower index must come first
    queries[0] = feats[7].float()
    similarity = queries @ feats.float().T
    scores, indices = top_k(queries, feats, 10)
    assert torch.equal(indices, torch.topk(ranking_keys(similarity), 10, dim=1).indices)
    assert torch.allclose(scores, similarity.gather(1, indices), atol=1e-6)  # einsum's rounding
    assert indices[0, :2].tolist() == [7, 100] and scores[0, 0] == scores[0, 1]


def test_the_choice_is_timed_or_fixed(monkeypatch) -> None:
    timings = scan.calibrate(rows=2 * scan.BLOCK, dim=32, repeats=2)
    assert set(timings) == set(scan.METHODS) and all(ms > 0 for ms in timings.values())
    monkeypatch.delenv(scan.ENV, raising=False)
    assert scan.scan_method() in scan.METHODS
    monkeypatch.setenv(scan.ENV, "float32")
    assert scan.scan_method() == "float32"
    monkeypatch.setenv(scan.ENV, "int8")
    with pytest.raises(ConfigError, match=r"UIT_SCAN='int8': choose one of float16, float32"):
        scan.scan_method()
