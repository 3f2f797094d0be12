"""Retrieval metrics against a naive per-query reference (design §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uit.retrieval.metrics import retrieval_metrics


def naive_metrics(
    similarity: np.ndarray, query_pids, gallery_pids, ks=(1, 5, 10)
) -> dict[str, float]:
    """One query at a time, sorting by (-score, index): the definition, written plainly."""
    totals = {f"R{k}": 0.0 for k in ks} | {"mAP": 0.0, "mINP": 0.0}
    for q in range(similarity.shape[0]):
        order = sorted(range(similarity.shape[1]), key=lambda g: (-float(similarity[q, g]), g))
        ranks = [r for r, g in enumerate(order, start=1) if gallery_pids[g] == query_pids[q]]
        for k in ks:
            totals[f"R{k}"] += ranks[0] <= k
        totals["mAP"] += sum(n / r for n, r in enumerate(ranks, start=1)) / len(ranks)
        totals["mINP"] += len(ranks) / ranks[-1]
    return {key: 100 * value / similarity.shape[0] for key, value in totals.items()}


def random_problem(seed: int, queries: int, gallery: int, identities: int):
    rng = np.random.default_rng(seed)
    gallery_pids = rng.integers(0, identities, gallery)
    query_pids = rng.choice(gallery_pids, queries)
    # Few distinct values, so ties are everywhere; plus signed zeros.
    similarity = np.round(rng.normal(size=(queries, gallery)), 1).astype(np.float32)
    similarity[0] = 0.0
    similarity[1, ::2] = -0.0
    return similarity, query_pids, gallery_pids


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_naive_reference_with_ties(seed: int) -> None:
    similarity, qp, gp = random_problem(seed, queries=40, gallery=70, identities=8)
    expected = naive_metrics(similarity, qp, gp)
    got = retrieval_metrics(similarity, qp, gp, chunk_bytes=4096)  # many small chunks
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
        assert isinstance(got[key], float)


@pytest.mark.parametrize("seed", range(4))
def test_ties_between_relevant_items_and_uneven_counts(seed: int) -> None:
    # Two distinct values only: every relevant item ties with relevant and irrelevant ones, and
    # the pids' sizes differ a lot (the padding of short rows must never count).
    rng = np.random.default_rng(100 + seed)
    gallery_pids = np.concatenate([np.zeros(25, int), rng.integers(1, 6, 35)])
    rng.shuffle(gallery_pids)
    query_pids = rng.choice(gallery_pids, 30)
    similarity = rng.integers(0, 2, size=(30, 60)).astype(np.float32)
    expected = naive_metrics(similarity, query_pids, gallery_pids)
    got = retrieval_metrics(similarity, query_pids, gallery_pids, chunk_bytes=3000)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_adjacent_floats_and_extreme_values_rank_exactly() -> None:
    # Scores one ulp apart must not merge; the largest finite float and signed zeros tie rightly.
    top = np.float32(np.finfo(np.float32).max)
    below = np.nextafter(np.float32(0.5), np.float32(0))
    row = np.array([0.5, below, 0.5, top, -0.0, 0.0, np.nextafter(top, 0), top], np.float32)
    similarity = np.stack([row, row[::-1].copy(), -row])
    gallery_pids = [1, 2, 1, 2, 3, 3, 1, 2]
    query_pids = [1, 2, 3]
    expected = naive_metrics(similarity, query_pids, gallery_pids)
    got = retrieval_metrics(similarity, query_pids, gallery_pids)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def test_hand_computed_example() -> None:
    # Query 0 (pid 1): gallery order by score 2,0,3,1 -> relevant (pid 1) at ranks 2 and 3.
    # Query 1 (pid 2): scores all tied -> order 0,1,2,3 by index -> relevant at rank 2.
    similarity = np.array([[0.8, 0.1, 0.9, 0.5], [0.3, 0.3, 0.3, 0.3]], dtype=np.float32)
    query_pids = [1, 2]
    gallery_pids = [1, 2, 3, 1]
    result = retrieval_metrics(similarity, query_pids, gallery_pids, ks=(1, 2))
    assert result["R1"] == 0.0
    assert result["R2"] == 100.0
    ap0 = (1 / 2 + 2 / 3) / 2
    assert result["mAP"] == pytest.approx(100 * (ap0 + 1 / 2) / 2, abs=1e-12)
    assert result["mINP"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2, abs=1e-12)


def test_ties_go_to_the_lower_gallery_index() -> None:
    similarity = np.zeros((1, 5), dtype=np.float32)
    assert retrieval_metrics(similarity, [7], [7, 0, 0, 0, 0])["R1"] == 100.0
    assert retrieval_metrics(similarity, [7], [0, 0, 0, 0, 7])["R1"] == 0.0
    assert retrieval_metrics(similarity, [7], [0, 0, 0, 0, 7])["R5"] == 100.0


def test_numpy_and_torch_inputs_agree_and_chunking_does_not_matter() -> None:
    similarity, qp, gp = random_problem(11, queries=64, gallery=50, identities=5)
    from_numpy = retrieval_metrics(similarity, qp, gp)
    from_torch = retrieval_metrics(
        torch.from_numpy(similarity), torch.from_numpy(qp), torch.from_numpy(gp)
    )
    one_row_chunks = retrieval_metrics(similarity, qp, gp, chunk_bytes=1)
    assert from_numpy == from_torch == one_row_chunks


def test_bfloat16_scores_rank_by_their_own_values_and_the_tie_rule() -> None:
    # Cosines near 1, where bf16 keeps 8 bits: many scores merge into ties, broken by the lower
    # index. The result is the reference's on the bf16 values, and not the float32 one.
    rng = np.random.default_rng(12)
    gallery_pids = rng.integers(0, 5, 50)
    query_pids = rng.choice(gallery_pids, 64)
    similarity = (1 + 0.01 * rng.normal(size=(64, 50))).astype(np.float32)
    half = torch.from_numpy(similarity).to(torch.bfloat16)
    expected = naive_metrics(half.float().numpy(), query_pids, gallery_pids)
    got = retrieval_metrics(half, query_pids, gallery_pids, chunk_bytes=4096)
    assert got == pytest.approx(expected, abs=1e-9)
    full = retrieval_metrics(similarity, query_pids, gallery_pids)
    assert got["R1"] != pytest.approx(full["R1"], abs=1.0)  # 15.6 against 10.9


def test_exact_float64_is_accepted_and_inexact_float64_is_refused() -> None:
    similarity, qp, gp = random_problem(2, queries=10, gallery=20, identities=4)
    assert retrieval_metrics(similarity.astype(np.float64), qp, gp) == retrieval_metrics(
        similarity, qp, gp
    )
    with pytest.raises(ValueError, match="float32 cannot represent exactly"):
        retrieval_metrics(similarity.astype(np.float64) + 1e-12, qp, gp)


def test_a_query_without_a_relevant_image_is_named() -> None:
    similarity = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"query 2 \(pid 9\) has no relevant image"):
        retrieval_metrics(similarity, [1, 2, 9], [1, 2, 1, 2])


def test_queries_without_a_relevant_image_can_be_excluded_and_counted() -> None:
    similarity, qp, gp = random_problem(3, queries=30, gallery=40, identities=6)
    with_extra = np.concatenate([similarity, similarity[:4]])
    extra_pids = np.concatenate([qp, [1000, 1001, 1002, 1003]])
    result = retrieval_metrics(with_extra, extra_pids, gp, missing="exclude", chunk_bytes=2048)
    baseline = retrieval_metrics(similarity, qp, gp)
    assert result.pop("excluded") == 4.0
    assert result == pytest.approx(baseline, abs=1e-9)


def test_bad_shapes_and_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(3, dtype=np.float32), [1, 2, 3], [1])
    with pytest.raises(ValueError, match="3 query pids and 2 gallery pids"):
        retrieval_metrics(np.zeros((3, 4), dtype=np.float32), [1, 2, 3], [1, 2])
    similarity = np.zeros((3, 2), dtype=np.float32)
    similarity[1, 0] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        retrieval_metrics(similarity, [1, 1, 1], [1, 2])


def test_all_relevant_gives_perfect_scores() -> None:
    similarity = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    result = retrieval_metrics(similarity, [3] * 5, [3] * 6)
    assert result == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_are_evaluated_on_the_gpu_with_the_same_results() -> None:
    similarity, qp, gp = random_problem(5, queries=300, gallery=200, identities=20)
    on_cpu = retrieval_metrics(similarity, qp, gp, chunk_bytes=20_000)
    on_gpu = retrieval_metrics(
        torch.from_numpy(similarity).cuda(), qp, torch.from_numpy(gp).cuda(), chunk_bytes=20_000
    )
    assert on_gpu.keys() == on_cpu.keys()
    for key in on_cpu:
        assert on_gpu[key] == pytest.approx(on_cpu[key], abs=1e-9), key


def test_search_top_indices_follow_the_same_tie_rule_as_ranking_keys() -> None:
    from uit.retrieval.metrics import ranking_keys
    from uit.retrieval.search import top_indices

    generator = torch.Generator().manual_seed(0)
    for gallery in (1, 2, 7, 40, 300):
        scores = torch.randint(-3, 3, (3, gallery), generator=generator).float() / 2  # many ties
        scores[0, ::2] = -0.0
        for k in {1, (gallery + 1) // 2, gallery}:
            expected = torch.topk(ranking_keys(scores), k, dim=1).indices
            assert torch.equal(top_indices(scores, k), expected), (gallery, k)
