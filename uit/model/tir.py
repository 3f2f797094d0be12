"""Text-guided image restoration (TIR, training only).

The masked grayscale image's kept tokens and the caption's token features go into a small decoder
that predicts the colour pixels of every patch; the loss counts only the dropped patches.
"""

from __future__ import annotations

from typing import Literal

import torch
from open_clip.transformer import QuickGELU, Transformer
from torch import Tensor, nn

GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
INITS = ("default", "clip")


def weighted_grayscale(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): the luma of each pixel, repeated on the three channels."""
    weights = images.new_tensor(GRAYSCALE_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, 3, H, W) -> (B, N, patch * patch * 3), patches in row-major grid order."""
    batch, channels, height, width = images.shape
    h, w = height // patch, width // patch
    x = images.reshape(batch, channels, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, h * w, patch * patch * channels)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int]) -> Tensor:
    """(B, N, patch * patch * 3) in row-major grid order -> (B, 3, H, W); inverse of patchify."""
    batch, (h, w) = patches.shape[0], grid
    x = patches.reshape(batch, h, w, patch, patch, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, -1, h * patch, w * patch)


def sincos_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sine-cosine positions for a (rows, cols) grid plus a zero CLS row: (1 + N, dim)."""
    if dim % 4:
        raise ValueError(f"sine-cosine positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(positions: Tensor) -> Tensor:
        angles = positions.flatten()[:, None] * omega[None, :]  # (N, dim / 4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, dim / 2)

    table = torch.cat([encode(rows), encode(cols)], dim=1)  # (N, dim)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def clip_init_(cross_attn: nn.MultiheadAttention, blocks: Transformer) -> None:
    """CLIP's normal initialisation (OpenAI's ``initialize_parameters``), as the released decoder
    applies it to its cross-attention and blocks: in-projections std width^-0.5; out-projections
    and MLP outputs width^-0.5 (2 layers)^-0.5; MLP inputs (2 width)^-0.5. Biases, LayerNorms
    and the embed and pixel layers keep PyTorch's initialisation, as released."""
    attn_std = blocks.width**-0.5
    proj_std = attn_std * (2 * blocks.layers) ** -0.5
    fc_std = (2 * blocks.width) ** -0.5
    for attn in (cross_attn, *(block.attn for block in blocks.resblocks)):
        nn.init.normal_(attn.in_proj_weight, std=attn_std)
        nn.init.normal_(attn.out_proj.weight, std=proj_std)
    for block in blocks.resblocks:
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class TIRDecoder(nn.Module):
    """LayerNorm, linear embed, mask tokens, fixed positions, one cross-attention to the caption,
    LayerNorm, transformer blocks, LayerNorm, linear to pixels (design §4).

    With ``cross_attn_residual=False`` (the released arrangement) only the cross-attention output
    continues; with ``True`` it is added to its input. ``activation`` is the blocks' (the released
    decoder's OpenAI blocks: ``quick_gelu``). ``init="default"``: PyTorch's initialisation and a
    mask token drawn from N(0, 0.02), as MAE's; ``"clip"``: ``clip_init_`` and a mask token at
    zeros, as released.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        grid_size: tuple[int, int],
        layers: int = 4,
        cross_attn_residual: bool = False,
        activation: Literal["gelu", "quick_gelu"] = "gelu",
        init: Literal["default", "clip"] = "default",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS or init not in INITS:
            raise ValueError(
                f"TIRDecoder: activation {activation!r} (one of {', '.join(ACTIVATIONS)}), "
                f"init {init!r} (one of {', '.join(INITS)})"
            )
        heads = max(1, embed_dim // 64)
        self.grid_size = grid_size
        self.cross_attn_residual = cross_attn_residual
        self.ln_image = nn.LayerNorm(embed_dim)
        self.ln_text = nn.LayerNorm(embed_dim)
        self.embed = nn.Linear(embed_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.positions: Tensor
        self.register_buffer("positions", sincos_2d(embed_dim, grid_size), persistent=False)
        self.ln_query = nn.LayerNorm(embed_dim)
        self.cross_attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.ln_cross = nn.LayerNorm(embed_dim)
        self.blocks = Transformer(embed_dim, layers, heads, act_layer=ACTIVATIONS[activation])
        self.ln_out = nn.LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * 3)
        if init == "clip":
            clip_init_(self.cross_attn, self.blocks)  # the mask token stays at zeros
        else:
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, image_tokens: Tensor, text_tokens: Tensor, ids_restore: Tensor) -> Tensor:
        """Kept tokens (B, 1 + K, D), caption tokens (B, L, D), restore (B, N) -> (B, N, p*p*3)."""
        x = self.embed(self.ln_image(image_tokens))
        batch, kept, dim = x.shape
        dropped = ids_restore.shape[1] + 1 - kept
        patches = torch.cat([x[:, 1:], self.mask_token.expand(batch, dropped, dim)], dim=1)
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # grid order
        x = torch.cat([x[:, :1], patches], dim=1) + self.positions.to(x.dtype)
        text = self.ln_text(text_tokens)
        attended = self.cross_attn(self.ln_query(x), text, text, need_weights=False)[0]
        x = self.ln_cross(x + attended if self.cross_attn_residual else attended)
        x = self.pred(self.ln_out(self.blocks(x)))
        return x[:, 1:]  # drop the CLS position
