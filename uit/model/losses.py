"""The loss terms of UIT and its baselines, as pure functions of features and labels (design §4).

Each returns a scalar. Weights are applied by the objective, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _cosine(text_feats: Tensor, image_feats: Tensor) -> Tensor:
    """(B, D), (B, D) -> (B, B) cosine similarity, text rows, image columns, in float32 even
    under autocast: bf16 resolves only about 0.004 near 1.0, coarser than CMT's 0.05 margin
    needs and than the 50x logit scale tolerates."""
    dtype = torch.promote_types(
        torch.promote_types(text_feats.dtype, image_feats.dtype), torch.float32
    )  # fmt: skip  (float64 stays float64)
    with torch.autocast(text_feats.device.type, enabled=False):
        text = F.normalize(text_feats.to(dtype), dim=-1)
        return text @ F.normalize(image_feats.to(dtype), dim=-1).T


def _kl_to_labels(logits: Tensor, labels: Tensor, eps: float) -> Tensor:
    """Mean over rows of KL(softmax(logits) || labels normalised per row)."""
    q = labels / labels.sum(dim=1, keepdim=True)
    p = logits.softmax(dim=1)
    return (p * (logits.log_softmax(dim=1) - torch.log(q + eps))).sum(dim=1).mean()


def sdm_loss(
    image_feats: Tensor, text_feats: Tensor, pids: Tensor, logit_scale: float, eps: float = 1e-8
) -> Tensor:
    """Similarity distribution matching: KL(p || q) in both directions, summed.

    p = softmax(logit_scale * cos) per row; q = the same-identity labels normalised per row.
    """
    logits = logit_scale * _cosine(text_feats, image_feats)  # (B, B) text -> image
    labels = (pids.unsqueeze(1) == pids.unsqueeze(0)).to(logits.dtype)
    return _kl_to_labels(logits, labels, eps) + _kl_to_labels(logits.T, labels.T, eps)


def itc_loss(image_feats: Tensor, text_feats: Tensor, logit_scale: float) -> Tensor:
    """CLIP's contrastive loss: cross-entropy to the paired sample, averaged over directions."""
    logits = logit_scale * _cosine(text_feats, image_feats)
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def id_loss(image_logits: Tensor, text_logits: Tensor, pids: Tensor) -> Tensor:
    """Identity classification of both modalities with one shared classifier, averaged."""
    return (F.cross_entropy(image_logits, pids) + F.cross_entropy(text_logits, pids)) / 2


def cmt_loss(image_feats: Tensor, text_feats: Tensor, pids: Tensor, margin: float) -> Tensor:
    """Cross-modal triplet loss with the hardest in-batch negatives, summed over directions.

    Distance d = 1 - cos. For each text the anchor's positive is its paired image and its negative
    the most similar image of another identity (chosen on detached similarities); likewise for
    each image. Anchors without any negative in the batch are left out.
    """
    similarity = _cosine(text_feats, image_feats)  # (B, B) text rows, image columns
    same = pids.unsqueeze(1) == pids.unsqueeze(0)
    masked = similarity.detach().masked_fill(same, float("-inf"))
    rows = torch.arange(len(pids), device=pids.device)
    positive = 1 - similarity.diagonal()
    valid = (~same.all(dim=1)).to(similarity.dtype)  # anchors with at least one negative
    text_anchor = 1 - similarity[rows, masked.argmax(dim=1)]  # hardest image per text
    image_anchor = 1 - similarity[masked.argmax(dim=0), rows]  # hardest text per image
    count = valid.sum().clamp(min=1)  # no data-dependent branch: compiles without graph breaks
    t2i = (F.relu(positive - text_anchor + margin) * valid).sum() / count
    i2t = (F.relu(positive - image_anchor + margin) * valid).sum() / count
    return t2i + i2t


def tir_loss(pred_patches: Tensor, target_patches: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per patch, averaged over the masked (dropped) patches only."""
    per_patch = ((pred_patches - target_patches) ** 2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
