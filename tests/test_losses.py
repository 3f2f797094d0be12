"""Loss functions: hand-computed values, symmetry, permutation invariance, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from uit.model import losses
from uit.model.losses import cmt_loss, id_loss, itc_loss, sdm_loss, tir_loss


def unit(*rows: tuple[float, ...]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_sdm_by_hand_on_two_by_two() -> None:
    image = unit((1.0, 0.0), (0.0, 1.0))
    text = unit((1.0, 0.0), (0.6, 0.8))
    pids = torch.tensor([0, 1])
    scale = 2.0
    cos = [[1.0, 0.0], [0.6, 0.8]]  # text rows, image columns
    eps = 1e-8

    def kl_row(logits: list[float], target: list[float]) -> float:
        z = sum(math.exp(v) for v in logits)
        p = [math.exp(v) / z for v in logits]
        return sum(
            pi * (math.log(pi) - math.log(qi + eps)) for pi, qi in zip(p, target, strict=True)
        )

    t2i = (
        sum(
            kl_row([scale * c for c in cos[r]], [float(r == c) for c in range(2)]) for r in range(2)
        )
        / 2
    )
    cols = [[cos[0][c], cos[1][c]] for c in range(2)]
    i2t = (
        sum(
            kl_row([scale * v for v in cols[r]], [float(r == c) for c in range(2)])
            for r in range(2)
        )
        / 2
    )
    assert sdm_loss(image, text, pids, scale).item() == pytest.approx(t2i + i2t, rel=1e-9)


def test_sdm_spreads_the_target_over_same_identity_pairs() -> None:
    feats = unit((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    # Two samples of identity 7: matching them perfectly to each other is not penalised fully.
    same = sdm_loss(feats, feats, torch.tensor([7, 7, 3]), 10.0)
    unique = sdm_loss(feats, feats, torch.tensor([1, 2, 3]), 10.0)
    assert same.item() != pytest.approx(unique.item())
    # 3x3 by hand for the shared-identity case, text->image row 0: q = (1/2, 1/2, 0).
    p0 = torch.softmax(torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64), 0)
    q0 = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    row0 = (p0 * (p0.log() - (q0 + 1e-8).log())).sum()
    p2 = torch.softmax(torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64), 0)
    row2 = (
        p2 * (p2.log() - (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) + 1e-8).log())
    ).sum()
    expected = 2 * (2 * row0 + row2) / 3  # rows 0 and 1 alike; both directions alike
    assert same.item() == pytest.approx(expected.item(), rel=1e-9)


def test_sdm_on_unique_pids_is_the_kl_form_of_itc() -> None:
    torch.manual_seed(0)
    image, text = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    logits = 50 * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    eye = torch.eye(5, dtype=torch.float64)

    def kl(scores: torch.Tensor) -> torch.Tensor:
        p = scores.softmax(1)
        return (p * (scores.log_softmax(1) - (eye + 1e-8).log())).sum(1).mean()

    assert sdm_loss(image, text, torch.arange(5), 50.0).item() == pytest.approx(
        (kl(logits) + kl(logits.T)).item()
    )


def test_itc_by_hand() -> None:
    image = unit((1.0, 0.0), (0.0, 1.0))
    text = unit((1.0, 0.0), (1.0, 1.0))
    cos = torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]], dtype=torch.float64)

    def ce(scores: torch.Tensor) -> torch.Tensor:
        return -(scores.log_softmax(1).diagonal()).mean()

    expected = (ce(3 * cos) + ce(3 * cos.T)) / 2
    assert itc_loss(image, text, 3.0).item() == pytest.approx(expected.item())


def test_symmetry_between_directions() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 2, 2, 3])
    assert sdm_loss(a, b, pids, 50.0).item() == pytest.approx(sdm_loss(b, a, pids, 50.0).item())
    assert itc_loss(a, b, 50.0).item() == pytest.approx(itc_loss(b, a, 50.0).item())
    assert cmt_loss(a, b, pids, 0.05).item() == pytest.approx(cmt_loss(b, a, pids, 0.05).item())


def test_invariance_to_batch_permutation() -> None:
    torch.manual_seed(2)
    image, text = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4])
    order = torch.randperm(8)
    logits_i, logits_t = (
        torch.randn(8, 5, dtype=torch.float64),
        torch.randn(8, 5, dtype=torch.float64),
    )
    for loss in (
        lambda p: sdm_loss(image[p], text[p], pids[p], 50.0),
        lambda p: itc_loss(image[p], text[p], 50.0),
        lambda p: cmt_loss(image[p], text[p], pids[p], 0.05),
        lambda p: id_loss(logits_i[p], logits_t[p], pids[p]),
    ):
        assert loss(order).item() == pytest.approx(loss(torch.arange(8)).item())


def test_id_loss_by_hand() -> None:
    image_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text_logits = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    pids = torch.tensor([0, 1])
    ce_image = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    ce_text = (-math.log(0.5) - math.log(1 / (math.exp(3) + 1))) / 2
    assert id_loss(image_logits, text_logits, pids).item() == pytest.approx(
        (ce_image + ce_text) / 2
    )


def test_cmt_by_hand_and_zero_when_negatives_are_far() -> None:
    image = unit((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0))
    text = unit((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0))
    pids = torch.tensor([0, 1, 2])
    assert cmt_loss(image, text, pids, 0.05).item() == 0.0  # every negative >= 1 farther
    # Text 0 is nearer image 1 (wrong id) than its own: d_pos = 1 - 0.6, d_neg = 1 - 0.8.
    text = unit((0.6, 0.8), (0.0, 1.0), (-1.0, 0.0))
    # text->image anchors: text 0: relu(0.4 - 0.2 + 0.05) = 0.25; texts 1, 2: 0.
    # image->text anchors: image 0's hardest text is text 1 (cos 0) -> relu(0.4 - 1 + .05) = 0;
    # image 1's hardest text is text 0 (cos 0.8) -> relu(0 - 0.2 + 0.05) = 0; image 2: 0.
    assert cmt_loss(image, text, pids, 0.05).item() == pytest.approx(0.25 / 3)


def test_cmt_skips_anchors_without_negatives() -> None:
    feats = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    zero = cmt_loss(feats, feats, torch.tensor([5, 5, 5]), 0.05)
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph
    assert feats.grad is not None


def test_tir_loss_counts_only_masked_patches() -> None:
    target = torch.zeros(1, 3, 4)
    pred = torch.tensor([[[1.0] * 4, [2.0] * 4, [100.0] * 4]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert tir_loss(pred, target, mask).item() == pytest.approx((1 + 4) / 2)


def test_all_losses_have_finite_gradients() -> None:
    torch.manual_seed(3)
    image = torch.randn(6, 8, requires_grad=True)
    text = torch.randn(6, 8, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 2, 3, 3])
    logits = torch.randn(6, 4, requires_grad=True)
    pred = torch.randn(6, 5, 12, requires_grad=True)
    total = (
        sdm_loss(image, text, pids, 50.0)
        + itc_loss(image, text, 50.0)
        + cmt_loss(image, text, pids, 0.05)
        + id_loss(logits, logits.flip(0), pids)
        + tir_loss(pred, torch.zeros_like(pred), (torch.rand(6, 5) > 0.3).float())
    )
    total.backward()
    for tensor in (image, text, logits, pred):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_similarity_losses_stay_fp32_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 resolves about 0.004 near a cosine of 1: CMT's 0.05 margin and the 50x logits need
    the similarity matrices in fp32, which the losses compute even inside autocast."""
    torch.manual_seed(3)
    # Every cosine between 0.98 and 1 (one shared direction, identities 0.1 apart, pairs closer
    # still): all three losses are far from 0 and hinge on differences that bf16 blurs.
    identity = (0.1 * torch.randn(16, 64)).repeat_interleave(2, dim=0)
    text = torch.randn(1, 64) + identity + 0.03 * torch.randn(32, 64)
    image = text + 0.03 * torch.randn(32, 64)
    pids = torch.arange(16).repeat_interleave(2)
    terms = {
        "sdm": lambda: sdm_loss(image, text, pids, 50.0),
        "cmt": lambda: cmt_loss(image, text, pids, 0.05),
        "itc": lambda: itc_loss(image, text, 50.0),
    }
    expected = {name: float(loss()) for name, loss in terms.items()}
    assert min(expected.values()) > 0.05, expected
    for name, loss in terms.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = loss()
        assert inside.dtype == torch.float32, name
        assert float(inside) == pytest.approx(expected[name], abs=1e-5), name

    # The control: the same losses over a similarity left to autocast (bf16) land at least 20
    # times that tolerance away (measured: 0.28, 0.0016, 0.050), so the check above can fail.
    def bf16_cosine(text_feats: torch.Tensor, image_feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(text_feats, dim=-1) @ F.normalize(image_feats, dim=-1).T

    monkeypatch.setattr(losses, "_cosine", bf16_cosine)
    for name, loss in terms.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            coarse = float(loss())
        assert abs(coarse - expected[name]) > 20 * 1e-5, (name, coarse, expected[name])
