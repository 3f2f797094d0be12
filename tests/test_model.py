"""The dual encoder on open_clip: building, weights, masked encoding, the TIR decoder."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uit.core.config import ModelConfig
from uit.core.errors import ConfigError, UitError
from uit.model import TIRDecoder, build_model, patchify, weighted_grayscale
from uit.model.encoder import mask_noise, random_masking
from uit.model.tir import sincos_2d

TINY = ModelConfig(name="uit-tiny", image_height=64, image_width=32)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(TINY).eval()


def tokens(encoder, texts: list[str]) -> torch.Tensor:
    import open_clip

    return open_clip.get_tokenizer("uit-tiny", context_length=encoder.context_length)(texts)


def test_tiny_model_shapes(tiny) -> None:
    assert (tiny.embed_dim, tiny.patch_size, tiny.grid_size) == (128, 8, (8, 4))
    images = torch.randn(3, 3, 64, 32)
    assert tiny.encode_image(images).shape == (3, 128)
    text = tokens(tiny, ["a man in a red coat", "a woman", "x"])
    pooled, per_token = tiny.encode_text_tokens(text)
    assert pooled.shape == (3, 128) and per_token.shape == (3, 77, 128)


def test_text_features_are_the_projected_eot_token_and_match_open_clip(tiny) -> None:
    text = tokens(tiny, ["a man in a red coat", "a woman with a black backpack"])
    pooled, per_token = tiny.encode_text_tokens(text)
    eot = text.argmax(-1)
    assert torch.allclose(pooled, per_token[torch.arange(2), eot])
    assert torch.allclose(pooled, tiny.clip.encode_text(text), atol=1e-5)


def test_text_features_cut_at_the_last_eot_equal_the_whole_context(tiny) -> None:
    """encode_text runs only up to the batch's longest caption; the causal mask makes that the
    same as open_clip's pass over the whole context, for short and long captions together."""
    captions = ["x", "a man in a red coat", "a woman with long black hair, a red striped coat"]
    text = tokens(tiny, captions)
    lengths: list[int] = []
    hook = tiny.clip.transformer.register_forward_pre_hook(
        lambda _module, args: lengths.append(args[0].shape[1])
    )
    try:
        cut = tiny.encode_text(text)
    finally:
        hook.remove()
    assert lengths == [int(text.argmax(-1).max()) + 1] and lengths[0] < text.shape[1]
    assert torch.allclose(cut, tiny.clip.encode_text(text), atol=1e-5)
    assert torch.allclose(tiny.encode_text(text[:1]), cut[:1], atol=1e-5)  # alone: shorter still


def test_any_size_divisible_by_the_patch(tiny) -> None:
    encoder = build_model(ModelConfig(name="uit-tiny", image_height=96, image_width=48))
    assert encoder.grid_size == (12, 6)
    assert encoder.encode_image(torch.randn(1, 3, 96, 48)).shape == (1, 128)
    with pytest.raises(
        ConfigError, match=r"model\.image_width: 36 is not divisible by the patch size 8"
    ):
        build_model(ModelConfig(name="uit-tiny", image_height=64, image_width=36))
    with pytest.raises(ConfigError, match="unknown model 'ViT-Z-99'"):
        build_model(ModelConfig(name="ViT-Z-99"))


def test_random_masking_keeps_the_right_share_and_restores_order() -> None:
    x = torch.arange(2 * 10, dtype=torch.float32).view(2, 10, 1)
    kept, mask, restore = random_masking(
        x, 0.7, mask_noise(2, 10, torch.Generator().manual_seed(0))
    )
    assert kept.shape == (2, 3, 1)
    assert mask.sum(1).tolist() == [7.0, 7.0]
    for b in range(2):
        kept_positions = (mask[b] == 0).nonzero().flatten()
        assert sorted(kept[b, :, 0].tolist()) == sorted(x[b, kept_positions, 0].tolist())
    # Restoring (kept, dropped) order with ids_restore gives the original sequence.
    shuffled = torch.cat([kept, torch.full((2, 7, 1), -1.0)], dim=1)
    restored = shuffled.gather(1, restore.unsqueeze(-1))
    assert torch.equal(restored[mask == 0], x[mask == 0])
    again = random_masking(x, 0.7, mask_noise(2, 10, torch.Generator().manual_seed(0)))[1]
    assert torch.equal(mask, again)  # deterministic under a seeded generator


def test_masked_pass_runs_the_same_tower_on_kept_tokens_only(tiny) -> None:
    images = torch.randn(2, 3, 64, 32)
    masked = tiny.encode_masked_image(
        images, 0.75, mask_noise(2, 32, torch.Generator().manual_seed(1))
    )
    assert masked.tokens.shape == (2, 1 + 8, 128)  # CLS + 25% of 32 patches
    assert masked.mask.shape == masked.ids_restore.shape == (2, 32)
    # With nothing masked away the CLS output equals the ordinary image features: the tokens
    # are only shuffled, and attention does not care about order.
    full = tiny.encode_masked_image(
        images, 0.0, mask_noise(2, 32, torch.Generator().manual_seed(1))
    )
    assert torch.allclose(full.tokens[:, 0], tiny.encode_image(images), atol=1e-4)


def test_grayscale_and_patchify() -> None:
    images = torch.zeros(1, 3, 4, 4)
    images[0, 0] = 1.0  # pure red
    gray = weighted_grayscale(images)
    assert torch.allclose(gray, torch.full_like(gray, 0.2989))
    patches = patchify(torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4), 2)
    assert patches.shape == (2, 4, 12)
    # Patch 1 is the top-right 2x2 block; values are (row, col, channel) ordered.
    assert patches[0, 1, :3].tolist() == [2.0, 18.0, 34.0]


def test_sincos_positions_are_fixed_and_distinct() -> None:
    table = sincos_2d(16, (6, 2))
    assert table.shape == (13, 16)
    assert torch.equal(table[0], torch.zeros(16))
    assert len({tuple(row.tolist()) for row in table[1:]}) == 12


@pytest.mark.parametrize("residual", [False, True])
def test_tir_decoder_shapes_and_residual_switch(tiny, residual: bool) -> None:
    torch.manual_seed(0)
    decoder = TIRDecoder(128, 8, (8, 4), layers=2, cross_attn_residual=residual)
    images = torch.randn(2, 3, 64, 32)
    masked = tiny.encode_masked_image(weighted_grayscale(images), 0.7)
    _, text_tokens = tiny.encode_text_tokens(tokens(tiny, ["a red coat", "blue jeans"]))
    pred = decoder(masked.tokens, text_tokens, masked.ids_restore)
    assert pred.shape == (2, 32, 8 * 8 * 3)
    # The caption steers the restoration: another caption, another prediction.
    _, other = tiny.encode_text_tokens(tokens(tiny, ["a green hat", "white shoes"]))
    assert not torch.allclose(pred, decoder(masked.tokens, other, masked.ids_restore))


def test_weights_from_a_safetensors_file_with_resized_positions(tmp_path: Path) -> None:
    torch.manual_seed(3)
    square = build_model(ModelConfig(name="uit-tiny", image_height=64, image_width=64))  # 8 x 8
    path = tmp_path / "square.safetensors"
    save_file({k: v.contiguous() for k, v in square.clip.state_dict().items()}, str(path))
    loaded = build_model(ModelConfig(name="uit-tiny", image_height=64, image_width=32,
                                     pretrained=str(path)))  # fmt: skip
    assert loaded.grid_size == (8, 4)
    assert loaded.clip.visual.positional_embedding.shape == (1 + 32, 128)
    assert torch.equal(loaded.clip.token_embedding.weight, square.clip.token_embedding.weight)
    assert torch.equal(loaded.clip.visual.conv1.weight, square.clip.visual.conv1.weight)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_from_a_torch_file_are_loaded_without_unpickling_code(tmp_path: Path) -> None:
    model = build_model(TINY)
    good = tmp_path / "weights.pt"
    torch.save({"state_dict": model.clip.state_dict()}, good)
    loaded = build_model(TINY.model_copy(update={"pretrained": str(good)}))
    assert torch.equal(loaded.clip.ln_final.weight, model.clip.ln_final.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(UitError, match=r"refused to load it: .* could run code"):
        build_model(TINY.model_copy(update={"pretrained": str(evil)}))


def test_pretrained_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"weights file .* not found"):
        build_model(TINY.model_copy(update={"pretrained": str(tmp_path / "missing.safetensors")}))
    with pytest.raises(ConfigError, match="neither a weights file nor a pretrained tag"):
        build_model(ModelConfig(name="ViT-B-16", pretrained="no-such-tag"))


def test_a_tag_without_network_says_where_to_put_the_weights(tmp_path: Path) -> None:
    # A fresh process with the hub offline, as on a machine without network access.
    script = (
        "from uit.core.config import ModelConfig\n"
        "from uit.model import build_model\n"
        f"cfg = ModelConfig(name='ViT-B-16', pretrained='openai', cache_dir={str(tmp_path)!r})\n"
        "build_model(cfg)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "could not fetch the 'openai' weights of ViT-B-16" in result.stderr
    assert "point model.pretrained at it" in result.stderr
    assert "model.quick_gelu=true" in result.stderr  # OpenAI's weights keep their activation
