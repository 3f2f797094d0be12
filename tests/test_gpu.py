"""The CUDA path of training: bf16 autocast, fused Adam, exact resume with CUDA's RNG, and the
compiled step. Every test needs a CUDA device and is skipped cleanly without one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uit.core.config import Config, parse_config
from uit.model import build_model
from uit.model.objective import Objective
from uit.raw.prepare import prepare_benchmark
from uit.training.optim import param_groups
from uit.training.train import StepState, build_step_state, fit, forward_inputs, train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module", autouse=True)
def cublas_workspace() -> Iterator[None]:
    """cuBLAS is deterministic only with a fixed workspace, which PyTorch reads at cuBLAS's
    first use in the process: set for this module from before its first test (gpu_checks.sh
    runs it alone, so that is the first use) and taken away after it, never for other modules
    nor at import, where it would leak into every test and subprocess of the run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        )
        yield


def tiny_config(**train: object) -> Config:
    return parse_config({
        "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32, "context_length": 32},
        "train": {"epochs": 2, "batch_size": 16, "num_workers": 0, "warmup_epochs": 1.0,
                  "eval_batch_size": 64, "device": "cuda", **train},
        "optim": {"lr": 1e-4},
        "tir": {"decoder_layers": 1},
    })  # fmt: skip


def tiny_batch(cfg: Config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size, length = cfg.train.batch_size, cfg.model.context_length
    text = torch.randint(1, 400, (size, length), generator=generator)
    text[:, length // 2] = 49_407  # end of text: the largest id
    images = torch.randn(
        size, 3, cfg.model.image_height, cfg.model.image_width, generator=generator
    )
    return {"images": images, "text": text, "pids": torch.arange(size) // 2}


def tiny_state(cfg: Config, optimizer_fused: bool | None = None) -> StepState:
    torch.manual_seed(0)
    objective = Objective(build_model(cfg.model), cfg.train.batch_size // 2, cfg.loss, cfg.tir)
    objective = objective.to("cuda")
    optimizer = None
    if optimizer_fused is False:
        optimizer = torch.optim.Adam(param_groups(objective, cfg.optim), lr=cfg.optim.lr,
                                     eps=cfg.optim.eps, fused=False, foreach=False)  # fmt: skip
    return build_step_state(objective, cfg, torch.device("cuda"), optimizer)


def run_steps(state: StepState, cfg: Config, steps: int = 2) -> list[dict[str, float]]:
    batch = tiny_batch(cfg)
    return [train_step(state, batch, cfg, progress=0.1 * k) for k in range(steps)]


def test_bf16_step_losses_are_finite_and_close_to_fp32() -> None:
    fp32 = run_steps(tiny_state(tiny_config(precision="fp32")), tiny_config(precision="fp32"))
    bf16_state = tiny_state(tiny_config(precision="auto"))
    assert bf16_state.dtype == torch.bfloat16  # what `auto` picks on CUDA
    bf16 = run_steps(bf16_state, tiny_config(precision="auto"))
    for exact, low in zip(fp32, bf16, strict=True):
        assert exact.keys() == low.keys()
        for name in exact:
            assert torch.isfinite(torch.tensor(low[name])), name
            assert low[name] == pytest.approx(exact[name], rel=0.05, abs=0.05), name


def test_uit_uses_fused_adam_on_cuda_and_it_matches_plain_adam() -> None:
    cfg = tiny_config(precision="fp32")
    fused, plain = tiny_state(cfg), tiny_state(cfg, optimizer_fused=False)
    assert fused.optimizer.defaults["fused"] is True
    run_steps(fused, cfg, steps=3)
    run_steps(plain, cfg, steps=3)
    for (name, a), b in zip(
        fused.objective.named_parameters(), plain.objective.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def prepared(tiny_synth, tmp_path_factory) -> Path:
    root, _ = tiny_synth
    out = tmp_path_factory.mktemp("prepared") / "cuhk-pedes"
    prepare_benchmark("cuhk-pedes", root, out)
    return out


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def test_resume_on_cuda_ends_with_the_same_weights(prepared, tmp_path, deterministic) -> None:
    cfg = tiny_config()
    fit(cfg, prepared, tmp_path / "straight")
    fit(cfg, prepared, tmp_path / "resumed", stop_after_epochs=1)  # "killed" after epoch 1
    fit(cfg, prepared, tmp_path / "resumed")
    straight = load_file(str(tmp_path / "straight/checkpoints/last/weights.safetensors"))
    resumed = load_file(str(tmp_path / "resumed/checkpoints/last/weights.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_compiled_step_matches_the_eager_step_without_graph_breaks() -> None:
    eager_cfg, compiled_cfg = tiny_config(precision="fp32"), tiny_config(precision="fp32",
                                                                        compile=True)  # fmt: skip
    compiled_state = tiny_state(compiled_cfg)
    inputs = forward_inputs(compiled_state, tiny_batch(compiled_cfg), compiled_cfg, 0.1)
    explained = torch._dynamo.explain(compiled_state.objective)(**inputs)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    compiled = run_steps(compiled_state, compiled_cfg, steps=3)
    eager = run_steps(tiny_state(eager_cfg), eager_cfg, steps=3)
    for a, b in zip(compiled, eager, strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_evaluate_on_cuda_matches_the_cpu_on_the_same_checkpoint(prepared, tmp_path) -> None:
    """`uit evaluate` on a GPU scores as on the CPU, its diagnoses included (the paraphrase
    pass once multiplied CPU queries by a CUDA gallery and failed on every GPU)."""
    from uit.retrieval.evaluate import evaluate_checkpoint

    fit(tiny_config(epochs=1), prepared, tmp_path / "run")
    best = tmp_path / "run/checkpoints/last"
    on_gpu = evaluate_checkpoint(best, prepared, tmp_path / "gpu", split="test", device="cuda")
    on_cpu = evaluate_checkpoint(best, prepared, tmp_path / "cpu", split="test", device="cpu")
    assert on_gpu.keys() == on_cpu.keys()
    assert "paraphrase" in on_gpu and "lookalike" in on_gpu  # the synthetic set's diagnoses
    for key, value in on_cpu["t2i"].items():  # bf16 on the GPU, fp32 on the CPU
        assert on_gpu["t2i"][key] == pytest.approx(value, abs=5.0), key
