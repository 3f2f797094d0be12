"""The training objective: the dual encoder plus its training-only heads, as named losses.

The objective owns the ID head and the TIR decoder; neither is part of the exported model. A term
whose weight is 0 is not computed, and its head is not built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from uit.core.config import LossConfig, TIRConfig
from uit.core.errors import UitError
from uit.model.encoder import DualEncoder, mask_noise
from uit.model.heads import IDHead
from uit.model.losses import cmt_loss, id_loss, itc_loss, sdm_loss, tir_loss
from uit.model.tir import GRAYSCALE_WEIGHTS, TIRDecoder, patchify, unpatchify, weighted_grayscale


class Objective(nn.Module):
    """``forward(images, text, pids)`` -> {"sdm": ..., "id": ..., ..., "loss": total}.

    Each named term is already multiplied by its weight, so ``loss`` is their sum.

    ``gather_batch`` (several processes, ``loss.gather``) turns a process's slice (B / world, ...)
    into the global batch (B, ...) for the batch-wide terms SDM, ITC and CMT; ID and TIR stay
    per sample on the slice (their mean over processes is the global mean).
    """

    def __init__(
        self,
        encoder: DualEncoder,
        num_classes: int,
        loss: LossConfig,
        tir: TIRConfig,
        gather_batch: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.gather_batch = gather_batch
        self.loss_cfg = loss
        self.tir_cfg = tir
        self.id_head = IDHead(encoder.embed_dim, num_classes) if loss.id > 0 else None
        self.tir_decoder = (
            TIRDecoder(encoder.embed_dim, encoder.patch_size, encoder.grid_size,
                       tir.decoder_layers, tir.cross_attn_residual, tir.activation, tir.init)
            if loss.tir > 0 else None
        )  # fmt: skip

    def forward(
        self,
        images: Tensor,
        text: Tensor,
        pids: Tensor,
        mask_noise: Tensor | None = None,
        epoch_progress: float | None = None,
    ) -> dict[str, Tensor]:
        """``mask_noise`` (B, N patches) picks TIR's masked patches (``draw_mask_noise``; None:
        the global generator). ``epoch_progress`` (fractional epochs so far) drives the CMT
        ramp; None: full weight."""
        cfg = self.loss_cfg
        image_feats = self.encoder.encode_image(images)  # (B, D)
        if self.tir_decoder is None:  # only TIR reads the token features
            text_feats, text_tokens = self.encoder.encode_text(text), None
        else:
            text_feats, text_tokens = self.encoder.encode_text_tokens(text)  # (B, D), (B, L, D)
        image_feats, text_feats = image_feats.float(), text_feats.float()
        losses: dict[str, Tensor] = {}
        batch_image, batch_text, batch_pids = self._batch_wide(image_feats, text_feats, pids)
        if cfg.sdm > 0:
            losses["sdm"] = cfg.sdm * sdm_loss(batch_image, batch_text, batch_pids, cfg.logit_scale)
        if cfg.itc > 0:
            losses["itc"] = cfg.itc * itc_loss(batch_image, batch_text, cfg.logit_scale)
        if self.id_head is not None:
            logits = self.id_head(torch.cat([image_feats, text_feats])).float()
            image_logits, text_logits = logits.chunk(2)
            losses["id"] = cfg.id * id_loss(image_logits, text_logits, pids)
        if cfg.cmt > 0:
            weight = cfg.cmt * self.cmt_ramp(epoch_progress)
            losses["cmt"] = weight * cmt_loss(batch_image, batch_text, batch_pids, cfg.cmt_margin)
        if self.tir_decoder is not None and text_tokens is not None:
            losses["tir"] = self.loss_cfg.tir * self._tir(images, text_tokens, mask_noise)
        if not losses:
            raise ValueError("every loss weight is 0: enable at least one of loss.*")
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

    def _batch_wide(
        self, image_feats: Tensor, text_feats: Tensor, pids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What SDM, ITC and CMT see: the global batch when gathering, else this slice."""
        cfg = self.loss_cfg
        batch_terms = cfg.sdm > 0 or cfg.itc > 0 or cfg.cmt > 0
        if self.gather_batch is None or not cfg.gather or not batch_terms:
            return image_feats, text_feats, pids
        gather = self.gather_batch
        return gather(image_feats), gather(text_feats), gather(pids)

    def cmt_ramp(self, epoch_progress: float | None) -> float:
        warmup = self.loss_cfg.cmt_warmup_epochs
        if epoch_progress is None or warmup <= 0:
            return 1.0
        return min(1.0, epoch_progress / warmup)

    def draw_mask_noise(self, batch: int, generator: torch.Generator) -> Tensor | None:
        """TIR's mask noise (B, N) for a batch of ``batch``, on the generator's device; None
        without TIR. Drawn outside ``forward`` so that a compiled forward has no graph break."""
        if self.tir_decoder is None:
            return None
        height, width = self.encoder.grid_size
        return mask_noise(batch, height * width, generator)

    def _tir(self, images: Tensor, text_tokens: Tensor, noise: Tensor | None) -> Tensor:
        assert self.tir_decoder is not None
        masked = self.encoder.encode_masked_image(
            weighted_grayscale(images), self.tir_cfg.mask_ratio, noise
        )
        pred = self.tir_decoder(masked.tokens, text_tokens, masked.ids_restore).float()
        target = patchify(images, self.encoder.patch_size).float()  # colour, normalised
        return tir_loss(pred, target, masked.mask)


def _masked_pass(
    objective: Objective, images: Tensor, text: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """TIR on ``images`` (B, 3, H, W) from ``text`` (B, L), as training runs it: the grayscale
    input (B, 3, H, W), the decoder's patches (B, N, P) in float32, and the mask (B, N, 1), 1
    where a patch was dropped. ``generator`` draws the mask (None: the global generator)."""
    if objective.tir_decoder is None:
        raise ValueError("this model was trained without TIR (loss.tir 0): nothing to restore")
    encoder = objective.encoder
    gray = weighted_grayscale(images)
    noise = None if generator is None else objective.draw_mask_noise(len(images), generator)
    masked = encoder.encode_masked_image(gray, objective.tir_cfg.mask_ratio, noise)
    _, text_tokens = encoder.encode_text_tokens(text)
    pred = objective.tir_decoder(masked.tokens, text_tokens, masked.ids_restore).float()
    return gray, pred, masked.mask.unsqueeze(-1)


def _mean_std(encoder: DualEncoder, images: Tensor) -> tuple[Tensor, Tensor]:
    """The encoder's normalisation, (1, 3, 1, 1) each, on ``images``' device and dtype."""
    mean, std = (
        images.new_tensor(v).view(1, 3, 1, 1) for v in (encoder.image_mean, encoder.image_std)
    )
    return mean, std


@torch.no_grad()
def restore(
    objective: Objective, images: Tensor, text: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """TIR for pictures: (masked grayscale input, its restoration from the caption), both
    (B, 3, H, W) in the normalised space; visible patches stay grayscale, masked ones are
    black in the input and predicted in the restoration."""
    gray, pred, mask = _masked_pass(objective, images, text, generator)
    encoder, patch = objective.encoder, objective.encoder.patch_size
    visible = patchify(gray, patch).float()
    mean, std = _mean_std(encoder, images)
    black = patchify((-mean / std).expand_as(images), patch).float()  # masked: black when shown
    shown = unpatchify(visible * (1 - mask) + black * mask, patch, encoder.grid_size)
    restored = unpatchify(visible * (1 - mask) + pred * mask, patch, encoder.grid_size)
    return shown, restored


RESTORATION_BASELINES = ("grayscale", "mean_colour")


@torch.no_grad()
def restoration_errors(
    objective: Objective, images: Tensor, text: Tensor, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """How far TIR's colours are from the truth on the masked patches, against two trivial
    predictions: the true grayscale of each pixel (luminance exact, no colour) and the mean
    colour of ``images``. Returns, per prediction, the sum over the masked patches of each
    patch's mean absolute error (over its pixels and three channels, in 0-255 units), and
    ``patches``, their count: sums, so that batches add up."""
    _, pred, mask = _masked_pass(objective, images, text, generator)
    encoder, patch = objective.encoder, objective.encoder.patch_size
    mean, std = _mean_std(encoder, images)

    def pixels(normalised: Tensor) -> Tensor:  # (B, 3, H, W) normalised -> 0-255
        return (normalised.float() * std + mean).clamp(0, 1) * 255

    truth = pixels(images)
    predictions = {
        "tir": pixels(unpatchify(pred, patch, encoder.grid_size)),
        "grayscale": (truth * truth.new_tensor(GRAYSCALE_WEIGHTS).view(1, 3, 1, 1))
        .sum(dim=1, keepdim=True)
        .expand_as(truth),
        "mean_colour": truth.mean(dim=(0, 2, 3), keepdim=True).expand_as(truth),
    }
    target = patchify(truth, patch)
    sums = {
        name: ((patchify(value, patch) - target).abs().mean(dim=-1, keepdim=True) * mask).sum()
        for name, value in predictions.items()
    }
    sums["patches"] = mask.sum()
    return sums


def load_objective(checkpoint_dir: str | Path) -> Objective:
    """The whole training model of a checkpoint (encoder and heads), for TIR pictures."""
    from uit.model.build import build_model, inference_config
    from uit.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_dir)
    cfg, classes = checkpoint.state.get("config", {}), checkpoint.state.get("num_classes")
    if not {"model", "loss", "tir"} <= set(cfg) or classes is None:
        raise UitError(f"{checkpoint_dir}: not a training checkpoint (an exported model has no "
                       "heads)")  # fmt: skip
    model_cfg = inference_config(checkpoint.state, checkpoint_dir)
    loss, tir = dict(cfg["loss"]), dict(cfg["tir"])
    if "weight" in tir:  # checkpoints written before the weight moved to loss.tir
        loss["tir"] = tir.pop("weight")
    objective = Objective(build_model(model_cfg), classes, LossConfig.model_validate(loss),
                          TIRConfig.model_validate(tir))  # fmt: skip
    objective.load_state_dict(checkpoint.weights)
    return objective.eval()
