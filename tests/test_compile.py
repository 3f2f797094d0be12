"""The compiled training step: the objective's forward, called as ``train_step`` calls it, is
one graph with no breaks, and later steps (new mask noise, new epoch progress) reuse it."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from uit.core.config import Config, parse_config
from uit.model import build_model
from uit.model.objective import Objective
from uit.training.train import StepState, build_step_state, forward_inputs


def tiny_config() -> Config:
    return parse_config({
        "model": {"name": "uit-tiny", "image_height": 32, "image_width": 16, "context_length": 16},
        "train": {"batch_size": 4, "device": "cpu"},
        "loss": {"cmt_warmup_epochs": 1.0},
        "tir": {"decoder_layers": 1},
    })  # fmt: skip


def tiny_batch(cfg: Config) -> dict[str, torch.Tensor]:
    text = torch.randint(1, 400, (4, cfg.model.context_length))
    text[:, 8] = 49_407  # end of text: the largest id
    return {"images": torch.randn(4, 3, 32, 16), "text": text, "pids": torch.tensor([0, 0, 1, 1])}


@pytest.fixture(scope="module")
def state() -> StepState:
    torch.manual_seed(0)
    cfg = tiny_config()
    objective = Objective(build_model(cfg.model), 2, cfg.loss, cfg.tir)
    return build_step_state(objective, cfg, torch.device("cpu"))


@pytest.mark.slow
def test_the_training_forward_compiles_to_one_graph_without_breaks(state: StepState) -> None:
    cfg = tiny_config()
    inputs = forward_inputs(state, tiny_batch(cfg), cfg, progress=0.25)
    assert inputs["mask_noise"] is not None  # TIR is on: its masking is inside the graph
    explained = torch._dynamo.explain(state.objective)(**inputs)
    reasons = [reason.reason for reason in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


@pytest.mark.slow
def test_later_steps_reuse_the_compiled_graph(state: StepState) -> None:
    """The first call specialises on the epoch progress, the second makes it symbolic
    (dynamo's automatic dynamic); from then on new noise and progress compile nothing."""
    cfg, counter = tiny_config(), CompileCounter()
    forward = torch.compile(state.objective, backend=counter)
    batch = tiny_batch(cfg)
    for step, progress in enumerate((0.1, 0.2, 0.6, 1.7, 2.9)):  # across the CMT ramp's end
        state.step = step
        forward(**forward_inputs(state, batch, cfg, progress))
    assert counter.frame_count <= 2
