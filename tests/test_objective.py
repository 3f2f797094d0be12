"""The training objective: named weighted terms, switches, parameter groups, and ViT-B-16."""

from __future__ import annotations

from typing import Any

import open_clip
import pytest
import torch

import uit.model.objective
from uit.core.config import LossConfig, ModelConfig, OptimConfig, TIRConfig
from uit.model import build_model
from uit.model.objective import Objective
from uit.training.optim import build_optimizer, param_groups

CAPTIONS = ["a woman in a red coat with a black backpack", "a man in blue jeans and white shoes"]


def batch(encoder, size: int = 4):
    height, width = encoder.image_size
    text = open_clip.get_tokenizer("uit-tiny", context_length=encoder.context_length)(
        [CAPTIONS[i % 2] for i in range(size)]
    )
    return torch.randn(size, 3, height, width), text, torch.tensor([0, 1, 0, 2][:size])


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return build_model(ModelConfig(name="uit-tiny", image_height=64, image_width=32))


def test_every_enabled_term_is_named_weighted_and_summed(tiny_encoder) -> None:
    objective = Objective(tiny_encoder, 3, LossConfig(itc=0.5), TIRConfig(decoder_layers=1))
    noise = objective.draw_mask_noise(4, torch.Generator().manual_seed(0))
    losses = objective(*batch(tiny_encoder), mask_noise=noise)
    assert set(losses) == {"sdm", "itc", "id", "cmt", "tir", "loss"}
    terms = [v for k, v in losses.items() if k != "loss"]
    assert torch.allclose(losses["loss"], torch.stack(terms).sum())
    assert all(torch.isfinite(v) for v in losses.values())


def test_weights_scale_their_terms(tiny_encoder) -> None:
    images, text, pids = batch(tiny_encoder)
    base = Objective(tiny_encoder, 3, LossConfig(tir=0), TIRConfig())(images, text, pids)
    doubled = Objective(tiny_encoder, 3, LossConfig(cmt=20.0, tir=0), TIRConfig())
    assert doubled(images, text, pids)["cmt"].item() == pytest.approx(2 * base["cmt"].item())


def test_a_zero_weight_switches_the_term_and_its_head_off(tiny_encoder) -> None:
    objective = Objective(tiny_encoder, 3, LossConfig(id=0.0, cmt=0.0, tir=0.0), TIRConfig())
    assert objective.id_head is None and objective.tir_decoder is None
    assert set(objective(*batch(tiny_encoder))) == {"sdm", "loss"}
    nothing = Objective(tiny_encoder, 3, LossConfig(sdm=0, id=0, cmt=0, tir=0), TIRConfig())
    with pytest.raises(ValueError, match="every loss weight is 0"):
        nothing(*batch(tiny_encoder))


def test_parameter_groups_follow_the_recipe(tiny_encoder) -> None:
    objective = Objective(tiny_encoder, 3, LossConfig(), TIRConfig(decoder_layers=1))
    cfg = OptimConfig(lr=1e-5, weight_decay=4e-5, new_module_lr_factor=5.0, bias_lr_factor=2.0)
    groups = {g["name"]: g for g in param_groups(objective, cfg)}
    names = {id(p): n for n, p in objective.named_parameters()}
    members = {key: {names[id(p)] for p in g["params"]} for key, g in groups.items()}
    assert (groups["encoder"]["lr"], groups["encoder"]["weight_decay"]) == (1e-5, 4e-5)
    assert (groups["encoder_bias"]["lr"], groups["encoder_bias"]["weight_decay"]) == (2e-5, 0.0)
    assert (groups["new"]["lr"], groups["new"]["weight_decay"]) == (5e-5, 4e-5)
    assert (groups["new_bias"]["lr"], groups["new_bias"]["weight_decay"]) == (2e-5, 0.0)
    assert "encoder.clip.visual.conv1.weight" in members["encoder"]
    assert "encoder.clip.token_embedding.weight" in members["encoder"]
    assert (
        "encoder.clip.visual.transformer.resblocks.0.attn.in_proj_bias" in members["encoder_bias"]
    )
    assert "id_head.classifier.weight" in members["new"]
    assert "tir_decoder.cross_attn.in_proj_weight" in members["new"]
    assert "tir_decoder.mask_token" in members["new"]
    assert "tir_decoder.pred.bias" in members["new_bias"]
    assert "id_head.classifier.bias" in members["new_bias"]
    everything = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert set().union(*members.values()) == everything  # each trainable parameter exactly once
    assert sum(len(m) for m in members.values()) == len(everything)
    assert "encoder.clip.logit_scale" not in everything  # the logit scale is fixed
    optimizer = build_optimizer(objective, cfg)
    assert optimizer.defaults["eps"] == 1e-3


def test_one_optimiser_step_changes_the_towers_and_heads(tiny_encoder) -> None:
    torch.manual_seed(1)
    encoder = build_model(ModelConfig(name="uit-tiny", image_height=64, image_width=32))
    objective = Objective(encoder, 3, LossConfig(), TIRConfig(decoder_layers=1))
    optimizer = build_optimizer(objective, OptimConfig(lr=1e-3))
    before = {n: p.detach().clone() for n, p in objective.named_parameters()}
    objective(*batch(encoder))["loss"].backward()
    optimizer.step()
    changed = {n for n, p in objective.named_parameters() if not torch.equal(p, before[n])}
    for name in ("encoder.clip.visual.conv1.weight", "encoder.clip.token_embedding.weight",
                 "id_head.classifier.weight", "tir_decoder.pred.weight"):  # fmt: skip
        assert name in changed


@pytest.mark.slow
def test_vit_b_16_at_384x128_runs_the_full_objective_on_cpu() -> None:
    torch.manual_seed(0)
    encoder = build_model(ModelConfig(name="ViT-B-16", image_height=384, image_width=128))
    assert encoder.grid_size == (24, 8)
    objective = Objective(encoder, num_classes=11003, loss=LossConfig(), tir=TIRConfig())
    images = torch.randn(2, 3, 384, 128)
    text = open_clip.get_tokenizer("ViT-B-16")(CAPTIONS)
    losses = objective(
        images,
        text,
        torch.tensor([5, 9]),
        objective.draw_mask_noise(2, torch.Generator().manual_seed(0)),
    )
    assert set(losses) == {"sdm", "id", "cmt", "tir", "loss"}
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = {
        "image tower": encoder.clip.visual.conv1.weight.grad,
        "text tower": encoder.clip.token_embedding.weight.grad,
        "TIR decoder": objective.tir_decoder.cross_attn.in_proj_weight.grad,
        "ID head": objective.id_head.classifier.weight.grad,
    }
    for part, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, part


def test_cmt_ramps_up_over_its_warmup_epochs(tiny_encoder) -> None:
    images, text, pids = batch(tiny_encoder)
    full = Objective(tiny_encoder, 3, LossConfig(tir=0), TIRConfig())(images, text, pids)
    ramped = Objective(tiny_encoder, 3, LossConfig(cmt_warmup_epochs=4.0, tir=0), TIRConfig())
    assert ramped(images, text, pids, epoch_progress=1.0)["cmt"].item() == pytest.approx(
        full["cmt"].item() / 4
    )
    assert ramped(images, text, pids, epoch_progress=9.0)["cmt"].item() == pytest.approx(
        full["cmt"].item()
    )
    assert ramped(images, text, pids, epoch_progress=0.0)["cmt"].item() == 0.0


@pytest.mark.parametrize("ratio", [0.3, 0.9])  # not the default 0.7: it must come from cfg
def test_tir_masks_the_configured_share_and_scores_only_the_masked_patches(
    tiny_encoder, monkeypatch: pytest.MonkeyPatch, ratio: float
) -> None:
    """``tir.mask_ratio`` reaches the masked image pass, which keeps ``int(N * (1 - r))`` of the
    N patches; the TIR term averages the squared error over exactly the masked ones."""
    objective = Objective(tiny_encoder, 3, LossConfig(), TIRConfig(decoder_layers=1,
                                                                   mask_ratio=ratio))  # fmt: skip
    seen: dict[str, Any] = {}
    encode = objective.encoder.encode_masked_image
    score = uit.model.objective.tir_loss

    def spy_encode(images: torch.Tensor, mask_ratio: float, *args: Any, **kwargs: Any) -> Any:
        seen["ratio"], seen["masked"] = mask_ratio, encode(images, mask_ratio, *args, **kwargs)
        return seen["masked"]

    def spy_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen["scored"] = (pred, target, mask)
        return score(pred, target, mask)

    monkeypatch.setattr(objective.encoder, "encode_masked_image", spy_encode)
    monkeypatch.setattr(uit.model.objective, "tir_loss", spy_loss)
    noise = objective.draw_mask_noise(4, torch.Generator().manual_seed(0))
    losses = objective(*batch(tiny_encoder), mask_noise=noise)
    height, width = tiny_encoder.image_size
    patches = (height // tiny_encoder.patch_size) * (width // tiny_encoder.patch_size)
    keep = int(patches * (1 - ratio))
    masked = seen["masked"]
    assert seen["ratio"] == ratio
    assert masked.tokens.shape[:2] == (4, 1 + keep)  # CLS and the kept patches
    assert masked.mask.shape == (4, patches)
    assert masked.mask.sum(dim=1).tolist() == [patches - keep] * 4
    pred, target, mask = seen["scored"]
    assert torch.equal(mask, masked.mask)  # the pass's own mask, not its complement
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
    expected = LossConfig().tir * per_patch[mask.bool()].mean()
    assert losses["tir"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_bf16_autocast_on_cpu_gives_finite_losses_close_to_fp32(tiny_encoder) -> None:
    objective = Objective(tiny_encoder, 3, LossConfig(), TIRConfig(decoder_layers=1))
    images, text, pids = batch(tiny_encoder)
    noise = objective.draw_mask_noise(4, torch.Generator().manual_seed(0))
    exact = objective(images, text, pids, mask_noise=noise)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = objective(images, text, pids, mask_noise=noise)
    assert low.keys() == exact.keys()
    for name, value in low.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.item() == pytest.approx(exact[name].item(), rel=0.05, abs=0.05), name
