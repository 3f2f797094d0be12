"""Pretrained weights: every format read offline, checked tensor by tensor (uit.model.weights)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from tests.conftest import released_checkpoint, tiny_clip
from uit.core.config import ModelConfig
from uit.core.errors import CheckpointError, UitError, WeightsError
from uit.model.build import build_model, load_encoder
from uit.model.export import released_to_export
from uit.model.weights import (
    RELEASED_LOGIT_SCALE,
    WeightsInfo,
    check_architecture,
    convert_weights,
    detect_format,
    read_quick_gelu,
    read_state_dict,
)

NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
# uit-tiny's sizes, so that OpenAI-built files load into uit's registered tiny architecture
TINY = {"embed_dim": 128, "width": 128, "layers": 3, "patch": 8, "vocab": 49408, "context": 77}


def assert_same_tensors(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


# --- Files as users hold them ----------------------------------------------------------------


@pytest.fixture(scope="session")
def openai_clip() -> ModuleType:
    """OpenAI's own model code (clip-anytorch's ``clip/model.py``), loaded by path: the package's
    ``__init__`` needs pkg_resources, which recent setuptools no longer ships."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-anytorch (OpenAI's CLIP code) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.py"
    module_spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def openai_file(
    openai_clip: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Tensor]]:
    """A TorchScript file made as OpenAI made ``ViT-B-16.pt`` (their CLIP, float16 weights,
    ``input_resolution``/``context_length``/``vocab_size`` buffers, traced), at uit-tiny's size,
    and the model's own state dict."""
    torch.manual_seed(0)
    t = TINY
    model = openai_clip.CLIP(
        t["embed_dim"], 32, t["layers"], t["width"], t["patch"], t["context"], t["vocab"],
        t["width"], 2, t["layers"],
    ).eval()  # fmt: skip
    for name, value in zip(NON_WEIGHTS, (32, t["context"], t["vocab"]), strict=True):
        model.__dict__.pop(name, None)  # plain attributes in the code, buffers in OpenAI's files
        model.register_buffer(name, torch.tensor(value))
    openai_clip.convert_weights(model)  # OpenAI's files hold float16 weights
    images = torch.randn(2, 3, 32, 32, dtype=torch.float16)
    text = torch.randint(0, t["vocab"], (2, t["context"]))
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    with pytest.warns(Warning), torch.no_grad():  # torch.jit is deprecated, and says so
        torch.jit.save(torch.jit.trace(model, (images, text)), str(path))
    return path, model.state_dict()


# --- OpenAI's TorchScript files --------------------------------------------------------------


def test_openai_torchscript_gives_the_models_exact_state_dict(
    openai_file: tuple[Path, dict[str, Tensor]],
) -> None:
    path, original = openai_file
    state, info = read_state_dict(path)
    expected = {k: v for k, v in original.items() if k not in NON_WEIGHTS}
    assert_same_tensors(state, expected)
    assert list(state) == list(expected)  # in state_dict()'s order, too
    assert state["visual.conv1.weight"].dtype == torch.float16  # the file's dtype is kept
    with pytest.warns(Warning):  # the trusted loader, as a second reference
        jit_state = torch.jit.load(str(path)).state_dict()
    assert_same_tensors(state, {k: v for k, v in jit_state.items() if k not in NON_WEIGHTS})
    assert detect_format(path) == "openai-torchscript"
    assert info == WeightsInfo(
        source=str(path), format="openai-torchscript", quick_gelu=True, embed_dim=128,
        vision_width=128, vision_layers=3, patch_size=8, num_patches=16, image_grid=(4, 4),
        context_length=77, text_width=128, text_layers=3, vocab_size=49408, dropped=3,
    )  # fmt: skip


def test_openai_torchscript_is_read_without_torchscript_or_torch_load(
    openai_file: tuple[Path, dict[str, Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the reader must not hand the archive to torch")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    state, _ = read_state_dict(openai_file[0])
    assert "visual.proj" in state


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4, bias=False)  # a parameter that is None
        self.register_buffer("running", torch.arange(4.0))
        self.mask = torch.ones(4, 4)  # a plain tensor attribute: not in state_dict()
        self.sizes: list[int] = [1, 2]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) * self.mask[0] + self.running + self.sizes[0]


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.blocks = nn.Sequential(Block(), Block())
        self.norm = nn.LayerNorm(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(x)) * self.scale


def test_torchscript_reader_keeps_exactly_parameters_and_buffers(tmp_path: Path) -> None:
    """A scripted module keeps plain tensor attributes that state_dict() leaves out; the reader
    tells them apart from the archive's class declarations."""
    path = tmp_path / "scripted.pt"
    with pytest.warns(Warning):
        torch.jit.save(torch.jit.script(Scripted()), str(path))
        expected = torch.jit.load(str(path)).state_dict()
    from uit.model.torchscript import read_torchscript

    actual = read_torchscript(path)
    assert "blocks.0.mask" not in actual
    assert_same_tensors(actual, dict(expected))


class Payload:
    """Pickles as a call to os.system that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, container: str, marker: Path) -> None:
    payload = {"visual.proj": Payload(marker)}
    if container == "torchscript":  # shaped like OpenAI's archive, with a poisoned data.pkl
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("ViT-B-16/data.pkl", pickle.dumps(payload, protocol=2))
            archive.writestr("ViT-B-16/constants.pkl", pickle.dumps((), protocol=2))
            archive.writestr("ViT-B-16/code/__torch__/model.py", "class CLIP(Module):\n  pass\n")
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=container == "torch-zip")


@pytest.mark.parametrize("container", ["torchscript", "torch-zip", "torch-legacy"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, container: str) -> None:
    path, marker = tmp_path / "ViT-B-16.pt", tmp_path / "pwned"
    write_malicious(path, container, marker)
    # detect_format knows a TorchScript archive from its listing; reading it checks the pickle
    readers = (read_state_dict,) if container == "torchscript" else (read_state_dict, detect_format)
    for read in readers:
        with pytest.raises(WeightsError) as error:
            read(path)
        message = str(error.value)
        assert f"{path}: refused to load it" in message
        assert "system" in message and "could run code" in message
    assert not marker.exists()


# --- open_clip files and OpenAI-style state dicts ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("open_clip_pytorch_model.bin", "state-dict"), ("open_clip_model.safetensors", "safetensors")],
)
def test_open_clip_hub_files_are_read_as_they_are(tmp_path: Path, name: str, fmt: str) -> None:
    original = tiny_clip().state_dict()
    path = tmp_path / name
    if fmt == "safetensors":
        save_file(original, str(path), metadata={"format": "pt"})
    else:
        torch.save(original, path)
    state, info = read_state_dict(path)
    assert_same_tensors(state, dict(original))
    assert detect_format(path) == fmt
    assert (info.format, info.quick_gelu, info.dropped, info.filled) == (fmt, None, 0, ())
    assert (info.num_patches, info.image_grid, info.context_length) == (32, None, 77)
    assert read_quick_gelu(path) is None  # not a file written by convert_weights


@pytest.mark.parametrize("prefix", ["", "module."])
def test_an_openai_style_state_dict_drops_its_scalars_and_needs_quick_gelu(
    tmp_path: Path, prefix: str
) -> None:
    original = dict(tiny_clip().state_dict())
    scalars = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
               "vocab_size": torch.tensor(49408)}  # fmt: skip
    torch.save({prefix + k: v for k, v in {**original, **scalars}.items()}, tmp_path / "sd.pt")
    state, info = read_state_dict(tmp_path / "sd.pt")
    assert_same_tensors(state, original)
    assert (info.format, info.quick_gelu, info.dropped) == ("state-dict", True, 3)


# --- Released checkpoints (IRRA, SEN) ----------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "module."])  # module.: saved from DistributedDataParallel
def test_a_released_checkpoint_keeps_base_model_and_drops_the_heads(
    tmp_path: Path, prefix: str
) -> None:
    original = dict(tiny_clip(quick_gelu=True).state_dict())
    path = tmp_path / "best.pth"
    heads = released_checkpoint(path, original, prefix)
    state, info = read_state_dict(path)
    expected = {k: v for k, v in original.items() if k != "logit_scale"}
    expected["logit_scale"] = torch.tensor(RELEASED_LOGIT_SCALE)
    assert_same_tensors(state, expected)
    assert detect_format(path) == "released-checkpoint"
    assert (info.format, info.quick_gelu, info.dropped) == ("released-checkpoint", True, heads)
    assert info.filled == ("logit_scale",)


# --- Conversion ------------------------------------------------------------------------------


def test_convert_weights_writes_a_file_open_clip_loads(
    openai_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    src, original = openai_file
    out = tmp_path / "converted.safetensors"
    info = convert_weights(src, out)
    assert info.format == "openai-torchscript"
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata == {"format": "open_clip", "source_format": "openai-torchscript",
                        "quick_gelu": "true"}  # fmt: skip
    assert read_quick_gelu(out) is True
    clip = tiny_clip(image_size=(32, 32), quick_gelu=True)
    open_clip.load_checkpoint(clip, str(out), strict=True)
    for key, value in clip.state_dict().items():
        assert torch.equal(value, original[key].float()), key
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind

    with pytest.raises(WeightsError, match="already exists; choose another file name"):
        convert_weights(src, out)
    plain = tmp_path / "plain.pt"
    torch.save(tiny_clip().state_dict(), plain)
    assert convert_weights(plain, out, overwrite=True).quick_gelu is None
    assert read_quick_gelu(out) is None  # recorded as unknown
    assert read_quick_gelu(src) is None and read_quick_gelu(tmp_path / "gone") is None


def test_a_released_checkpoint_becomes_an_export_uit_can_score(tmp_path: Path) -> None:
    source = tiny_clip(image_size=(96, 32), quick_gelu=True)  # a 12 x 4 grid, 3:1 as released
    original = dict(source.state_dict())
    best, out = tmp_path / "best.pth", tmp_path / "export"
    heads = released_checkpoint(best, original)
    info = released_to_export(best, out, model_name="uit-tiny")
    assert info.dropped == heads

    state = json.loads((out / "state.json").read_text())
    assert state["kind"] == "dual-encoder"
    model = state["config"]["model"]
    assert model == ModelConfig(name="uit-tiny", image_height=96, image_width=32,
                                quick_gelu=True).model_dump(mode="json")  # fmt: skip
    assert (model["pretrained"], model["context_length"], model["quick_gelu"]) == ("", 77, True)
    assert state["source"] == {"file": str(best), "format": "released-checkpoint",
                               "dropped": heads, "filled": ["logit_scale"]}  # fmt: skip

    encoder, _ = load_encoder(out)
    loaded = encoder.clip.state_dict()
    for key, value in original.items():
        expected = torch.tensor(RELEASED_LOGIT_SCALE) if key == "logit_scale" else value
        assert torch.equal(loaded[key], expected), key
    for tower in (encoder.clip.visual.transformer, encoder.clip.transformer):
        assert all(isinstance(block.mlp.gelu, QuickGELU) for block in tower.resblocks)
    with torch.no_grad():
        feats = encoder.encode_image(torch.zeros(1, 3, 96, 32))
    assert feats.shape == (1, 128)

    released_to_export(best, out, model_name="uit-tiny")  # replaces its previous export
    assert sorted(p.name for p in out.iterdir()) == ["state.json", "weights.safetensors"]
    (out / "notes.md").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty and not a previous export"):
        released_to_export(best, out, model_name="uit-tiny")
    assert (out / "notes.md").read_text() == "keep me"


def test_released_to_export_takes_an_explicit_image_size(tmp_path: Path) -> None:
    best = tmp_path / "best.pth"
    released_checkpoint(best, dict(tiny_clip(image_size=(64, 32), quick_gelu=True).state_dict()))
    with pytest.raises(WeightsError, match="neither a square nor a 3:1 grid"):
        released_to_export(best, tmp_path / "a", model_name="uit-tiny")
    with pytest.raises(WeightsError, match="does not give the 32 patch positions"):
        released_to_export(best, tmp_path / "b", model_name="uit-tiny", image_size=(32, 32))
    released_to_export(best, tmp_path / "c", model_name="uit-tiny", image_size=(64, 32))
    _, cfg = load_encoder(tmp_path / "c")
    assert (cfg.image_height, cfg.image_width) == (64, 32)


# --- Errors a user can cause -------------------------------------------------------------------


def torch_file_cut_short(path: Path) -> None:
    torch.save(tiny_clip().state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def safetensors_cut_short(path: Path) -> None:
    save_file(dict(tiny_clip().state_dict()), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


ERRORS = {
    "missing": (lambda p: None, "no such file. Give the path of a weights file"),
    "not a zip": (lambda p: p.write_text("hello"), "is not a weights file: it is neither a zip"),
    "truncated zip": (torch_file_cut_short, "but cannot be read as one"),
    "truncated safetensors": (safetensors_cut_short, "cannot be read as safetensors"),
    "no model entry": (
        lambda p: torch.save({"optimizer": {}, "epoch": 3}, p),
        "holds a dict with the keys optimizer, epoch (no 'model' entry",
    ),
    "no base_model": (
        lambda p: torch.save({"model": {"classifier.weight": torch.ones(2)}}, p),
        "its 'model' entry holds no base_model.* weights",
    ),
    "not CLIP": (
        lambda p: torch.save({"weight": torch.ones(2)}, p),
        "does not hold CLIP ViT weights under OpenAI's / open_clip's names: it lacks",
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_bad_file_raises_a_weights_error_naming_it(tmp_path: Path, case: str) -> None:
    write, expected = ERRORS[case]
    path = tmp_path / "weights.pt"
    write(path)
    with pytest.raises(WeightsError) as error:
        read_state_dict(path)
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_a_torchscript_archive_missing_a_storage_is_reported_as_damaged(
    openai_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    path = tmp_path / "damaged.pt"
    with zipfile.ZipFile(openai_file[0]) as source, zipfile.ZipFile(path, "w") as damaged:
        for item in source.infolist():
            if not item.filename.endswith("/data/0"):
                damaged.writestr(item, source.read(item))
    with pytest.raises(WeightsError) as error:
        read_state_dict(path)
    assert str(error.value).startswith(f"{path} is a TorchScript archive whose weights cannot be")
    assert "probably truncated or damaged; download or copy it again" in str(error.value)


def test_an_architecture_that_does_not_match_is_refused_with_the_names_that_fit(
    tmp_path: Path,
) -> None:
    best = tmp_path / "best.pth"
    released_checkpoint(best, dict(tiny_clip(image_size=(96, 32)).state_dict()))
    with pytest.raises(WeightsError) as error:
        released_to_export(best, tmp_path / "export")  # the default, ViT-B-16
    message = str(error.value)
    assert message.startswith(f"{best} does not hold a ViT-B-16 (embedding size 128 in the file")
    assert "image width 128 in the file, 768 in ViT-B-16" in message
    assert "models of this architecture: uit-tiny" in message
    assert not (tmp_path / "export").exists()
    _, info = read_state_dict(best)
    check_architecture(info, "uit-tiny")


def test_only_a_released_checkpoint_is_exported(
    openai_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    with pytest.raises(WeightsError, match=r"not a released checkpoint.*uit weights convert"):
        released_to_export(openai_file[0], tmp_path / "export", model_name="uit-tiny")


# --- A pre-filled Hugging Face cache -----------------------------------------------------------


@pytest.mark.slow
def test_openai_tag_loads_from_a_prefilled_hugging_face_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pretrained: openai`` with no network: open_clip asks the hub for ViT-B-16's weights
    (timm/vit_base_patch16_clip_224.openai, open_clip_model.safetensors first), and the cache a
    user filled beforehand answers. Every tensor is the one put there; the position embeddings
    are the ones open_clip's resize gives."""
    import huggingface_hub.constants as hub

    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    repo_id = tag["hf_hub"].rstrip("/")
    assert repo_id == "timm/vit_base_patch16_clip_224.openai"
    with torch.device("meta"):
        shapes = open_clip.create_model("ViT-B-16", device="meta").state_dict()
    generator = torch.Generator().manual_seed(0)
    source = {k: torch.randn(v.shape, generator=generator) for k, v in shapes.items()}
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(source, str(repo / "snapshots" / revision / "open_clip_model.safetensors"))

    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", str(tmp_path / "hub")),
                        ("HF_HOME", str(tmp_path))):  # fmt: skip
        monkeypatch.setenv(name, value)
    # huggingface_hub reads the environment once, at import: set what it read
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = ModelConfig(name="ViT-B-16", pretrained="openai", image_height=64, image_width=32,
                      context_length=16)  # fmt: skip
    clip = build_model(cfg).clip
    loaded = clip.state_dict()

    resized = {k: source[k] for k in ("visual.positional_embedding", "positional_embedding")}
    open_clip.model.resize_pos_embed(resized, clip)
    open_clip.model.resize_text_pos_embed(resized, clip)
    assert resized["visual.positional_embedding"].shape == (1 + 4 * 2, 768)
    assert resized["positional_embedding"].shape == (16, 512)
    assert sorted(loaded) == sorted(source)
    for key, value in {**source, **resized}.items():
        assert torch.equal(loaded[key], value), key
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert math.isclose(float(loaded["logit_scale"]), float(source["logit_scale"]))


# --- Through the command line and the model builder -----------------------------------------


def _cli(*args: str) -> str:
    from typer.testing import CliRunner

    from uit.app.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_openai_torchscript_through_uit_weights_convert_trains_with_quick_gelu(
    openai_file: tuple[Path, dict[str, Tensor]], tmp_path: Path
) -> None:
    """The README's route: convert once, then model.pretrained=FILE; auto picks QuickGELU."""
    path, original = openai_file
    cfg = ModelConfig(name="uit-tiny", image_height=32, image_width=32, context_length=77)
    with pytest.raises(UitError, match=r"TorchScript archive.*uit weights convert"):
        build_model(cfg.model_copy(update={"pretrained": str(path)}))
    out = tmp_path / "vit-tiny-openai.safetensors"
    assert "activation QuickGELU" in _cli("weights", "convert", str(path), str(out))
    encoder = build_model(cfg.model_copy(update={"pretrained": str(out)}))
    assert encoder.quick_gelu
    loaded = encoder.clip.state_dict()
    for key, value in original.items():
        if key not in NON_WEIGHTS:
            assert torch.equal(loaded[key], value.float()), key
    assert "already exists" in _refused("weights", "convert", str(path), str(out))


def _refused(*args: str) -> str:
    from typer.testing import CliRunner

    from uit.app.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 1 and "Traceback" not in result.output
    return result.output


def test_a_released_checkpoint_scores_through_uit_evaluate_as_the_source_model(
    tiny_synth: tuple[Path, Any], tmp_path: Path
) -> None:
    """`uit weights convert best.pth DIR` then `uit evaluate DIR PREPARED` gives the metrics of
    the released CLIP itself (QuickGELU, its own image size), computed here without uit's
    loaders."""
    from uit.data.prepared import read_manifests
    from uit.model.build import build_tokenizer
    from uit.model.encoder import DualEncoder
    from uit.raw.prepare import prepare_benchmark
    from uit.retrieval.evaluate import EvalOptions, evaluate

    prepared = tmp_path / "prepared"
    prepare_benchmark("cuhk-pedes", tiny_synth[0].resolve(), prepared)
    source = tiny_clip(image_size=(96, 32), quick_gelu=True)
    best, out = tmp_path / "best.pth", tmp_path / "released"
    released_checkpoint(best, dict(source.state_dict()))
    _cli("weights", "convert", str(best), str(out), "--model", "uit-tiny")
    _cli("evaluate", str(out), str(prepared), "--out", str(tmp_path / "eval"))
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["t2i"]

    with torch.no_grad():
        source.logit_scale.fill_(RELEASED_LOGIT_SCALE)
    reference = DualEncoder(source, name="uit-tiny", image_mean=open_clip.OPENAI_DATASET_MEAN,
                            image_std=open_clip.OPENAI_DATASET_STD, quick_gelu=True)  # fmt: skip
    tokenizer = build_tokenizer(ModelConfig(name="uit-tiny", context_length=77))
    test = read_manifests(prepared).split("test")
    expected = evaluate(reference, test, tokenizer, EvalOptions()).metrics["t2i"]
    assert scored == pytest.approx(expected, abs=1e-9)
