"""The released code's decoder and resize, as options: ``tir.activation``, ``tir.init`` and
``model.pos_embed_resize`` (docs/differences.md). Each changes what it says, reloads as it was
trained, and is set by the paper profile; the defaults keep the demo as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import nn

from uit.app.profiles import apply_profile, read_profile
from uit.core.config import (
    Config,
    LossConfig,
    ModelConfig,
    load_config,
    parse_config,
    training_config,
)
from uit.core.errors import ConfigError, WeightsError
from uit.model import TIRDecoder, build_model
from uit.model.build import inference_config, resize_positions
from uit.model.checkpoint import save_checkpoint
from uit.model.objective import Objective, load_objective
from uit.model.tir import sincos_2d

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(name="uit-tiny", image_height=64, image_width=32, context_length=32)
RELEASED = {"model.pos_embed_resize": "bilinear", "tir.activation": "quick_gelu",
            "tir.init": "clip"}  # fmt: skip


def decoder(width: int = 128, layers: int = 2, **options: str) -> TIRDecoder:
    torch.manual_seed(0)
    return TIRDecoder(width, 8, (8, 4), layers=layers, **options)  # type: ignore[arg-type]


def decoder_inputs(width: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    kept = torch.randn(2, 1 + 9, width, generator=generator)  # CLS + 9 of 32 patches
    text = torch.randn(2, 7, width, generator=generator)
    restore = torch.stack([torch.randperm(32, generator=generator) for _ in range(2)])
    return kept, text, restore


def activations(module: TIRDecoder) -> set[type]:
    return {type(block.mlp.gelu) for block in module.blocks.resblocks}


# -- tir.activation -------------------------------------------------------------------------------


def test_the_decoder_activation_is_the_option() -> None:
    gelu, quick = decoder(), decoder(activation="quick_gelu")
    assert activations(gelu) == {nn.GELU} and activations(quick) == {QuickGELU}
    quick.load_state_dict(gelu.state_dict())  # the same weights: only the activation differs
    inputs = decoder_inputs()
    assert not torch.allclose(gelu(*inputs), quick(*inputs))


def test_unknown_decoder_options_are_refused() -> None:
    with pytest.raises(ValueError, match="activation 'relu'"):
        decoder(activation="relu")
    with pytest.raises(ConfigError, match=r"tir\.init"):
        parse_config({"tir": {"init": "xavier"}})
    with pytest.raises(ConfigError, match=r"model\.pos_embed_resize"):
        parse_config({"model": {"pos_embed_resize": "nearest"}})


# -- tir.init -------------------------------------------------------------------------------------


def clip_stds(width: int, layers: int) -> dict[str, float]:
    """The released decoder's rule (SEN.__init__), written out: attention in-projections
    width^-0.5, out-projections and MLP outputs width^-0.5 (2 layers)^-0.5, MLP inputs
    (2 width)^-0.5."""
    attn, proj, fc = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
    stds = {"cross_attn.in_proj_weight": attn, "cross_attn.out_proj.weight": proj}
    for i in range(layers):
        block = f"blocks.resblocks.{i}"
        stds |= {f"{block}.attn.in_proj_weight": attn, f"{block}.attn.out_proj.weight": proj,
                 f"{block}.mlp.c_fc.weight": fc, f"{block}.mlp.c_proj.weight": proj}  # fmt: skip
    return stds


def test_clip_init_draws_the_released_normals_and_a_zero_mask_token() -> None:
    width, layers = 256, 2
    released = dict(decoder(width, layers, init="clip").named_parameters())
    default = dict(decoder(width, layers).named_parameters())
    for name, std in clip_stds(width, layers).items():
        weight = released[name].detach()
        assert weight.std().item() == pytest.approx(std, rel=0.03), name
        assert abs(weight.mean().item()) < 0.05 * std, name
        # normal, not uniform: a uniform of this std never goes past sqrt(3) std
        assert weight.abs().max().item() > 2.5 * std, name
    # the default is another draw, which these checks tell apart
    assert default["cross_attn.in_proj_weight"].std().item() < 0.8 * width**-0.5
    assert default["blocks.resblocks.0.mlp.c_fc.weight"].abs().max() <= (width**-0.5) + 1e-6
    assert torch.equal(released["mask_token"], torch.zeros(1, 1, width))
    assert default["mask_token"].std().item() == pytest.approx(0.02, rel=0.2)
    # biases, embed and pixel layers keep PyTorch's initialisation, as released
    assert released["embed.weight"].abs().max() <= width**-0.5
    assert torch.equal(released["cross_attn.in_proj_bias"], torch.zeros(3 * width))


# -- the fixed positions --------------------------------------------------------------------------


def test_sincos_puts_the_row_half_first_then_the_column_half() -> None:
    """uit's layout, which docs/differences.md compares with the released one (columns first)."""
    rows, cols, dim = 3, 5, 16
    table = sincos_2d(dim, (rows, cols))[1:].reshape(rows, cols, dim)  # without the CLS row
    row_half, col_half = table[..., : dim // 2], table[..., dim // 2 :]
    assert torch.equal(row_half, row_half[:, :1].expand_as(row_half))  # the same along a row
    assert not torch.equal(row_half[0], row_half[1])
    assert torch.equal(col_half, col_half[:1].expand_as(col_half))  # the same down a column
    assert not torch.equal(col_half[:, 0], col_half[:, 1])
    # each half: sines, then cosines (at position 0: zeros, then ones)
    assert torch.equal(table[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))


# -- model.pos_embed_resize -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def square_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """uit-tiny weights at 64x64 (an 8x8 grid), as safetensors and as a torch file."""
    torch.manual_seed(3)
    clip = build_model(TINY.model_copy(update={"image_width": 64})).clip
    folder = tmp_path_factory.mktemp("square")
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(folder / "square.safetensors"))
    torch.save({"state_dict": state}, folder / "square.pt")
    return {"safetensors": folder / "square.safetensors", "torch": folder / "square.pt"}


def loaded(path: Path, mode: str, height: int = 96, width: int = 32) -> nn.Module:
    update = {"pretrained": str(path), "pos_embed_resize": mode, "image_height": height,
              "image_width": width}  # fmt: skip
    return build_model(TINY.model_copy(update=update)).clip


def interpolated(source: torch.Tensor, grid: tuple[int, int], **how: object) -> torch.Tensor:
    square = source[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    table = F.interpolate(square, size=grid, align_corners=False, **how)  # type: ignore[arg-type]
    return torch.cat([source[:1], table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_bilinear_resize_is_the_released_interpolation(square_weights, kind: str) -> None:
    source = torch.load(square_weights["torch"])["state_dict"]
    original = source["visual.positional_embedding"]  # (1 + 8 * 8, D)
    # 8x8 to 12x4: more rows, fewer columns, as OpenAI's 14x14 to the paper's 24x8
    bilinear, bicubic = (loaded(square_weights[kind], mode) for mode in ("bilinear", "bicubic"))
    assert bilinear.visual.grid_size == (12, 4)
    expected = interpolated(original, (12, 4), mode="bilinear", antialias=False)
    assert torch.allclose(bilinear.visual.positional_embedding, expected, atol=1e-6)
    assert torch.equal(bilinear.visual.positional_embedding[0], original[0])  # the CLS row
    open_clip_way = interpolated(original, (12, 4), mode="bicubic", antialias=True)
    assert torch.allclose(bicubic.visual.positional_embedding, open_clip_way, atol=1e-6)
    assert not torch.allclose(bicubic.visual.positional_embedding, expected, atol=1e-3)
    others = {k: v for k, v in bicubic.state_dict().items() if k != "visual.positional_embedding"}
    for key, value in bilinear.state_dict().items():
        if key in others:
            assert torch.equal(value, others[key]), key


def test_bilinear_at_the_files_own_grid_leaves_the_positions_alone(square_weights) -> None:
    source = torch.load(square_weights["torch"])["state_dict"]["visual.positional_embedding"]
    same = loaded(square_weights["safetensors"], "bilinear", height=64, width=64)
    assert torch.equal(same.visual.positional_embedding, source)


def test_resize_positions_needs_a_square_grid() -> None:
    with pytest.raises(WeightsError, match="not a square grid"):
        resize_positions(torch.zeros(1 + 6, 4), (2, 2), "bilinear")


# -- reloading ------------------------------------------------------------------------------------


def config(**tir: object) -> Config:
    return parse_config({"model": TINY.model_dump(), "tir": {"decoder_layers": 1, **tir}})


def save_training_checkpoint(folder: Path, cfg: Config, objective: Objective) -> None:
    state = {"config": training_config(cfg), "num_classes": 3, "epoch": 0,
             "architecture": {"quick_gelu": objective.encoder.quick_gelu}}  # fmt: skip
    save_checkpoint(folder, objective.state_dict(), state)


def test_a_checkpoint_with_the_released_decoder_reloads_identically(tmp_path: Path) -> None:
    cfg = config(activation="quick_gelu", init="clip")
    torch.manual_seed(0)
    objective = Objective(build_model(cfg.model), 3, LossConfig(), cfg.tir).eval()
    assert objective.tir_decoder is not None and activations(objective.tir_decoder) == {QuickGELU}
    save_training_checkpoint(tmp_path / "ckpt", cfg, objective)
    reloaded = load_objective(tmp_path / "ckpt")
    assert reloaded.tir_decoder is not None and activations(reloaded.tir_decoder) == {QuickGELU}
    assert reloaded.tir_cfg == cfg.tir
    inputs = decoder_inputs()
    assert torch.equal(reloaded.tir_decoder(*inputs), objective.tir_decoder(*inputs))


def test_a_checkpoint_from_before_the_options_reloads_with_gelu(tmp_path: Path) -> None:
    cfg = config()
    torch.manual_seed(0)
    objective = Objective(build_model(cfg.model), 3, LossConfig(), cfg.tir).eval()
    save_training_checkpoint(tmp_path / "ckpt", cfg, objective)
    state_file = tmp_path / "ckpt" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["tir"]["activation"], state["config"]["tir"]["init"]  # older checkpoints
    state_file.write_text(json.dumps(state))
    reloaded = load_objective(tmp_path / "ckpt")
    assert reloaded.tir_decoder is not None and activations(reloaded.tir_decoder) == {nn.GELU}


def test_the_resize_option_travels_with_the_model_config() -> None:
    cfg = TINY.model_copy(update={"pos_embed_resize": "bilinear", "pretrained": "openai"})
    state = {"config": {"model": cfg.model_dump(mode="json")}, "architecture": {"quick_gelu": True}}
    rebuilt = inference_config(state, "ckpt")
    assert rebuilt.pos_embed_resize == "bilinear" and rebuilt.pretrained == ""


# -- profiles -------------------------------------------------------------------------------------


def test_the_paper_profile_sets_the_released_options_and_the_demo_keeps_todays(
    params: Path,
) -> None:
    paper = read_profile(ROOT / "profiles" / "paper.yaml")
    assert {key: paper[key] for key in RELEASED} == RELEASED
    demo = load_config(params)
    assert (demo.model.pos_embed_resize, demo.tir.activation, demo.tir.init) == (
        "bicubic", "gelu", "default"
    )  # fmt: skip
    apply_profile(params, ROOT / "profiles" / "paper.yaml")
    applied = load_config(params)
    assert (applied.model.pos_embed_resize, applied.tir.activation, applied.tir.init) == (
        "bilinear", "quick_gelu", "clip"
    )  # fmt: skip
