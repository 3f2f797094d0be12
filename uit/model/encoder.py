"""The inference model: an open_clip CLIP seen as a dual encoder.

Image features are the projected CLS token, text features the projected EOT token (design §4).
For training it also gives the caption's projected token features and an MAE-style masked pass
of the same image tower. Everything calls open_clip's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn


@dataclass(frozen=True)
class MaskedImage:
    """Output of the masked image pass."""

    tokens: Tensor  # (B, 1 + K, D) projected CLS + the K kept patch tokens
    mask: Tensor  # (B, N) 1.0 where the patch was dropped
    ids_restore: Tensor  # (B, N) position of each patch in the (kept, dropped) order


def mask_noise(batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
    """The uniform noise (B, N) that ``random_masking`` ranks, on the generator's device.

    Drawn by the caller, outside any compiled region: a generator inside one breaks the graph.
    """
    device = generator.device if generator is not None else None
    return torch.rand(batch, length, generator=generator, device=device)


def random_masking(
    tokens: Tensor, mask_ratio: float, noise: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random ``1 - mask_ratio`` share of each sample's tokens (MAE): those with the
    smallest ``noise`` (B, N; drawn from the global generator when None).

    Returns kept tokens (B, K, W), the binary mask (B, N) and the restore indices (B, N).
    """
    batch, length, width = tokens.shape
    keep = max(1, int(length * (1 - mask_ratio)))
    if noise is None:
        noise = torch.rand(batch, length, device=tokens.device)
    ids_shuffle = noise.argsort(dim=1)  # ascending: the first `keep` are kept
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, width))
    mask = torch.ones(batch, length, device=tokens.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


class DualEncoder(nn.Module):
    """An open_clip ``CLIP`` with a ViT image tower and the standard text tower."""

    def __init__(
        self,
        clip: CLIP,
        *,
        name: str,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        quick_gelu: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(clip.visual, VisionTransformer):
            raise TypeError(
                f"{name}: the image tower must be a ViT, got {type(clip.visual).__name__}"
            )
        self.clip = clip
        self.name = name
        self.image_mean = image_mean
        self.image_std = image_std
        self.quick_gelu = quick_gelu  # the activation it was built with; checkpoints record it
        clip.logit_scale.requires_grad_(False)  # UIT uses a fixed logit scale

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    @property
    def patch_size(self) -> int:
        return int(self.clip.visual.patch_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        height, width = self.clip.visual.grid_size
        return int(height), int(width)

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.clip.visual.image_size
        return int(height), int(width)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, D) projected CLS features."""
        return self.clip.encode_image(images)

    def encode_text(self, text: Tensor) -> Tensor:
        """(B, L) token ids -> (B, D) projected EOT features.

        Under the causal mask no position after the batch's last EOT reaches an EOT token, so
        the batch is cut there first: the same features for less work (captions of 25 tokens in
        a context of 48 or 77). Not while ``torch.compile`` traces (a length per batch would
        recompile) nor for a text tower without the causal mask.
        """
        if self.clip.attn_mask is not None and not torch.compiler.is_compiling():
            text = text[:, : int(text.argmax(dim=-1).max()) + 1]
        return self.encode_text_tokens(text)[0]

    def encode_text_tokens(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) token ids -> projected EOT features (B, D) and all token features (B, L, D);
        L may be shorter than the context (the first L positions)."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        length = text.shape[1]
        position = clip.positional_embedding[:length].to(cast)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        x = clip.token_embedding(text).to(cast) + position
        x = clip.ln_final(clip.transformer(x, attn_mask=mask))  # (B, L, W)
        tokens = x @ clip.text_projection  # (B, L, D)
        eot = text.argmax(dim=-1)  # the end-of-text token has the largest id in CLIP's vocabulary
        return tokens[torch.arange(text.shape[0], device=text.device), eot], tokens

    def encode_masked_image(
        self, images: Tensor, mask_ratio: float, noise: Tensor | None = None
    ) -> MaskedImage:
        """Drop ``mask_ratio`` of the patch tokens (those with the largest ``noise``, (B, N); see
        ``random_masking``), then run the kept ones (plus CLS) through the same image
        transformer; returns their projected features, the mask and restore indices."""
        visual = self.clip.visual
        x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, N, W)
        x = x + visual.positional_embedding[1:].to(x.dtype)
        kept, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (visual.class_embedding + visual.positional_embedding[0]).to(x.dtype)
        x = torch.cat([cls.expand(x.shape[0], 1, -1), kept], dim=1)  # (B, 1 + K, W)
        x = visual.ln_post(visual.transformer(visual.ln_pre(x)))
        return MaskedImage(tokens=x @ visual.proj, mask=mask, ids_restore=ids_restore)
