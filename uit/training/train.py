"""The fit loop: data, optimiser, warm-up + cosine schedule, selection, checkpoints, curves.

The loop's sections run in a fixed order each step: schedule, forward, finiteness check,
backward, clip, step. Randomness comes only from (seed, epoch, index) or (seed, step), so a run
resumed from its last checkpoint ends with the same weights as one that was never interrupted.

On several processes (``uit.training.distributed``) each rank trains on its slice of the same
global batch and DDP averages the gradients; loss terms are averaged over ranks before the
finiteness check, so a NaN stops every rank at the same step. Rank 0 alone evaluates the
selection split (its verdict is shared) and writes checkpoints, curves and the selection.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from uit.core.config import Config, TrainConfig, training_config
from uit.core.device import autocast, autocast_dtype, resolve_device
from uit.core.errors import ConfigError, TrainingError
from uit.core.io import atomic_write_json, atomic_write_text
from uit.data.dataset import TrainDataset, hold_out_identities
from uit.data.prepared import Manifests, read_manifests
from uit.data.transforms import build_eval_transform, build_train_transform, sample_seed
from uit.model.build import build_model, build_tokenizer
from uit.model.checkpoint import (
    load_checkpoint,
    read_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from uit.model.encoder import DualEncoder
from uit.model.objective import Objective
from uit.retrieval.evaluate import EvalOptions, evaluate
from uit.text.masking import build_token_masker
from uit.text.parsed import TaggedWords
from uit.training.distributed import (
    World,
    current_world,
    gather_batch,
    mean_over_ranks,
    process_device,
    share_from_main,
    wait_for_all,
)
from uit.training.optim import build_optimizer, group_lr
from uit.training.preflight import Identities, batch_problem
from uit.training.sampler import IdentityBatchSampler

log = logging.getLogger(__name__)
LAST, BEST = "checkpoints/last", "checkpoints/best"
CURVES, SELECTION = "curves.csv", "selection.json"


class Reporter(Protocol):
    """Where the loop reports progress (a progress bar in the CLI, logging otherwise)."""

    def start_epoch(self, epoch: int, steps: int) -> None: ...
    def step(self, losses: Mapping[str, float], lr: float) -> None: ...
    def end_epoch(self, record: Mapping[str, float]) -> None: ...


class LogReporter:
    def start_epoch(self, epoch: int, steps: int) -> None:
        log.info("epoch %d: %d steps", epoch + 1, steps)

    def step(self, losses: Mapping[str, float], lr: float) -> None:
        pass

    def end_epoch(self, record: Mapping[str, float]) -> None:
        log.info("epoch %d done: %s", int(record["epoch"]), dict(record))


@dataclass(frozen=True)
class Selection:
    """Which split picks the best epoch, and whether that choice is optimistic."""

    protocol: str  # val | heldout | test | last
    split: Manifests | None

    @property
    def optimistic(self) -> bool:
        return self.protocol == "test"


@dataclass
class FitResult:
    best_epoch: int
    best: dict[str, float]
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """The one place that seeds Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(epoch_progress: float, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at a fractional epoch: linear warm-up from
    ``warmup_factor`` over ``warmup_epochs``, then a cosine from 1 to 0 at ``epochs``."""
    if epoch_progress < cfg.warmup_epochs:
        return cfg.warmup_factor + (1 - cfg.warmup_factor) * epoch_progress / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    done = min((epoch_progress - cfg.warmup_epochs) / span, 1.0)
    return 0.5 * (1 + math.cos(math.pi * done))


def choose_selection(manifests: Manifests, cfg: TrainConfig) -> tuple[Manifests, Selection]:
    """The training split and the selection split (design §4). Without a val split, ``val``
    holds out ``holdout_fraction`` of the training identities instead."""
    train = manifests.split("train")
    if cfg.selection == "last":
        return train, Selection(
            "last", manifests.split("val") if manifests.has_split("val") else None
        )
    if cfg.selection == "test":
        return train, Selection("test", manifests.split("test"))
    if manifests.has_split("val"):
        return train, Selection("val", manifests.split("val"))
    train, held = hold_out_identities(train, cfg.holdout_fraction, cfg.seed)
    return train, Selection("heldout", held)


def check_batch_size(cfg: TrainConfig, train: Manifests, prepared_dir: str | Path) -> None:
    """Refuse, before anything is built, a batch that needs more identities than ``train``
    has (``train.batch_size / train.instances_per_id`` of them per batch)."""
    found = Identities(train.benchmark, train.captions["pid"].n_unique(), str(prepared_dir))
    problem = batch_problem(cfg, found)
    if problem:
        raise ConfigError(problem)


def check_finite(losses: Mapping[str, torch.Tensor], step: int, epoch: int) -> None:
    """Stop at a NaN or Inf term (on several processes: averaged over ranks, so all stop)."""
    for name, value in losses.items():
        if not torch.isfinite(value):
            raise TrainingError(
                f"loss term '{name}' is {value.item()} at step {step} (epoch {epoch + 1}); "
                "training stopped. Lower optim.lr, set train.grad_clip, or check the data."
            )


@dataclass
class StepState:
    """What one training step reads and mutates: the objective and its forward (compiled or
    not), the optimiser (groups named as ``uit.training.optim.param_groups`` names them), device,
    autocast dtype, the process's place in the job, and the counters that name the step (its
    mask noise is seeded from ``step``)."""

    objective: Objective
    forward: Callable[..., dict[str, torch.Tensor]]  # the objective: DDP, compiled, or neither
    optimizer: torch.optim.Optimizer
    device: torch.device
    dtype: torch.dtype | None
    epoch: int = 0
    step: int = 0
    world: World = field(default_factory=World)


@dataclass(kw_only=True)
class _Run(StepState):
    """Everything the loop mutates, in one place."""

    loader: DataLoader[Any]
    dataset: TrainDataset
    sampler: IdentityBatchSampler
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


def build_step_state(
    objective: Objective,
    cfg: Config,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    world: World | None = None,
) -> StepState:
    """The step state of ``objective`` (already on ``device``) under ``cfg.train``'s precision
    and compile switches; ``optimizer`` replaces ``build_optimizer``'s (benchmarks compare). On
    several processes the forward is DDP's, which averages gradients over ranks."""
    world = world or World()
    optimizer = optimizer or build_optimizer(objective, cfg.optim)
    forward: Callable[..., dict[str, torch.Tensor]] = objective
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        forward = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)
    forward = torch.compile(forward) if cfg.train.compile else forward
    dtype = autocast_dtype(device, cfg.train.precision)
    return StepState(objective, forward, optimizer, device, dtype, world=world)


@dataclass(frozen=True)
class TrainData:
    """What ``uit train``'s loader iterates: the dataset, the identity sampler, the device fed."""

    dataset: TrainDataset
    sampler: IdentityBatchSampler
    device: torch.device


def build_train_data(
    cfg: Config, train: Manifests, encoder: DualEncoder, device: torch.device,
    world: World | None = None, *, attribute_words: Mapping[int, Sequence[str]] | None = None,
    augment: Callable[[str, Sequence[str], random.Random], str] | None = None,
    tagged_words: Mapping[int, TaggedWords] | None = None,
) -> TrainData:  # fmt: skip
    """The training dataset (``encoder``'s input size and normalisation, the image transform of
    ``train.image_augment``, the caption augmentation and token masking) and this process's
    sampler (``benchmarks/loader.py`` times what this builds)."""
    world = world or World()
    build = build_train_transform if cfg.train.image_augment else build_eval_transform
    transform = build(encoder.image_size, encoder.image_mean, encoder.image_std)
    tokenizer = build_tokenizer(cfg.model)
    dataset = TrainDataset(train, transform, tokenizer, seed=cfg.train.seed,
                           attribute_words=attribute_words, augment=augment,
                           tagged_words=tagged_words,
                           mask_tokens=build_token_masker(cfg.augment, tokenizer),
                           random_transform=cfg.train.image_augment)  # fmt: skip
    sampler = IdentityBatchSampler(dataset.labels, cfg.train.batch_size, cfg.train.instances_per_id,
                                   seed=cfg.train.seed, rank=world.rank, world_size=world.size,
                                   random_instances=cfg.train.random_instances)  # fmt: skip
    return TrainData(dataset, sampler, device)


def train_loader(data: TrainData, workers: int) -> DataLoader[Any]:
    """The ``DataLoader`` over ``data`` with ``workers`` processes, pinned memory for a GPU."""
    return DataLoader(data.dataset, batch_sampler=data.sampler, num_workers=workers,
                      pin_memory=data.device.type == "cuda")  # fmt: skip


def _build_run(
    cfg: Config, train: Manifests, attribute_words: Mapping[int, Sequence[str]] | None,
    augment: Callable[[str, Sequence[str], random.Random], str] | None,
    tagged_words: Mapping[int, TaggedWords] | None, world: World | None = None,
) -> _Run:  # fmt: skip
    world = world or World()  # a single process unless fit says otherwise
    seed_everything(cfg.train.seed)  # the same on every rank: same weights, same global plans
    device = process_device(world, resolve_device(cfg.train.device))
    encoder = build_model(cfg.model)
    data = build_train_data(cfg, train, encoder, device, world, attribute_words=attribute_words,
                            augment=augment, tagged_words=tagged_words)  # fmt: skip
    dataset, sampler = data.dataset, data.sampler
    loader = train_loader(data, cfg.train.num_workers)
    gather = gather_batch if world.distributed else None
    objective = Objective(encoder, dataset.num_classes, cfg.loss, cfg.tir, gather).to(device)
    state = build_step_state(objective, cfg, device, world=world)
    return _Run(objective=state.objective, forward=state.forward, optimizer=state.optimizer,
                device=device, dtype=state.dtype, world=world, loader=loader, dataset=dataset,
                sampler=sampler)  # fmt: skip


def forward_inputs(
    state: StepState, batch: Mapping[str, torch.Tensor], cfg: Config, progress: float
) -> dict[str, Any]:
    """The objective's keyword arguments for one step: the batch moved to the device, TIR's
    mask noise drawn there from (seed, step) for the global batch (this rank takes its slice's
    rows, so a sample's mask does not depend on the number of processes), and the fractional
    epoch."""
    images = batch["images"].to(state.device, non_blocking=True)
    generator = torch.Generator(device=state.device).manual_seed(
        sample_seed(cfg.train.seed, state.step)
    )
    rows, world = len(images), state.world
    noise = state.objective.draw_mask_noise(rows * world.size, generator)
    return {
        "images": images,
        "text": batch["text"].to(state.device, non_blocking=True),
        "pids": batch["pids"].to(state.device, non_blocking=True),
        "mask_noise": None if noise is None else noise[world.rank * rows : (world.rank + 1) * rows],
        "epoch_progress": progress,
    }


def reported_losses(losses: Mapping[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Each term, detached, as one process on the global batch reports it: the mean over ranks
    (batch-wide terms are already global when gathered; per-sample ones average to it)."""
    if not world.distributed:
        return {name: value.detach() for name, value in losses.items()}
    names = list(losses)
    means = mean_over_ranks(torch.stack([losses[name].detach() for name in names]), world)
    return dict(zip(names, means, strict=True))


def train_step(
    state: StepState, batch: Mapping[str, torch.Tensor], cfg: Config, progress: float
) -> dict[str, float]:
    """One optimisation step at fractional epoch ``progress``: learning rate, forward,
    finiteness check, backward, clip, step. Returns each loss term as a float (a host sync per
    term, as the finiteness check is)."""
    factor = lr_factor(progress, cfg.train)
    for group in state.optimizer.param_groups:  # a function of the step alone: resume-proof
        group["lr"] = group_lr(group["name"], cfg.optim) * factor
    inputs = forward_inputs(state, batch, cfg, progress)
    with autocast(state.device, state.dtype):
        losses = state.forward(**inputs)
    reported = reported_losses(losses, state.world)
    check_finite(reported, state.step, state.epoch)
    state.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.objective.parameters(), cfg.train.grad_clip)
    state.optimizer.step()
    state.step += 1
    return {name: float(value) for name, value in reported.items()}


def _train_epoch(run: _Run, cfg: Config, reporter: Reporter) -> dict[str, float]:
    run.objective.train()
    run.dataset.set_epoch(run.epoch)
    run.sampler.set_epoch(run.epoch)
    steps = len(run.sampler)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    reporter.start_epoch(run.epoch, steps)
    sums: dict[str, float] = {}
    for index, batch in zip(range(steps), run.loader, strict=False):
        losses = train_step(run, batch, cfg, run.epoch + index / max(steps, 1))
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value
        reporter.step(losses, run.optimizer.param_groups[0]["lr"])
    record = {"epoch": float(run.epoch + 1), "step": float(run.step),
              "lr": float(run.optimizer.param_groups[0]["lr"])}  # fmt: skip
    return record | {name: total / max(steps, 1) for name, total in sums.items()}


def _select(run: _Run, cfg: Config, selection: Selection, record: dict[str, float]) -> bool:
    """Evaluate on the selection split when due; return whether this epoch is the new best.
    Rank 0 evaluates and every rank takes its scores, so all agree on the best epoch."""
    last_epoch = run.epoch + 1 == cfg.train.epochs
    due = (run.epoch + 1) % cfg.train.eval_every == 0 or last_epoch
    if selection.split is not None and due:
        scores = _selection_scores(run, cfg, selection.split) if run.world.is_main else None
        record.update(share_from_main(scores, run.world))
    if selection.protocol == "last":
        return True
    if "R1" not in record:
        return False
    score = (record["R1"], record["mAP"])
    return not run.best or score > (run.best["R1"], run.best["mAP"])


def _selection_scores(run: _Run, cfg: Config, split: Manifests) -> dict[str, float]:
    options = EvalOptions(device=run.device, dtype=run.dtype, batch_size=cfg.train.eval_batch_size,
                          workers=cfg.train.num_workers)  # fmt: skip
    result = evaluate(run.objective.encoder, split, run.dataset.tokenizer, options)
    return {"R1": result.metrics["t2i"]["R1"], "mAP": result.metrics["t2i"]["mAP"]}


def _state(run: _Run, cfg: Config, selection: Selection) -> dict[str, Any]:
    return {
        "config": training_config(cfg),
        "architecture": {"quick_gelu": run.objective.encoder.quick_gelu},
        "epoch": run.epoch,
        "step": run.step,
        "num_classes": run.dataset.num_classes,
        "best": run.best,
        "best_epoch": run.best_epoch,
        "selection": {"protocol": selection.protocol, "optimistic": selection.optimistic},
        "history": run.history,
        "world_size": run.world.size,  # processes that trained the last epoch (not identity)
        "rng": rng_state(),
    }


def _write_curves(out_dir: Path, history: list[dict[str, float]]) -> None:
    columns = list(dict.fromkeys(key for record in history for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out_dir / CURVES, buffer.getvalue())


def _end_epoch(
    run: _Run, cfg: Config, selection: Selection, out_dir: Path, record: dict[str, float]
) -> None:
    is_best = _select(run, cfg, selection, record)
    run.history.append(record)
    if is_best:
        run.best = {k: record[k] for k in ("R1", "mAP") if k in record}
        run.best_epoch = run.epoch + 1
    if run.world.is_main:
        _write_epoch(run, cfg, selection, out_dir, is_best)


def _write_epoch(
    run: _Run, cfg: Config, selection: Selection, out_dir: Path, is_best: bool
) -> None:
    """Checkpoints (best when ``is_best``, last always), curves and selection, each atomic."""
    state = _state(run, cfg, selection)
    weights = run.objective.state_dict()
    if is_best:
        save_checkpoint(out_dir / BEST, weights, state)
    save_checkpoint(out_dir / LAST, weights, state, run.optimizer.state_dict())
    _write_curves(out_dir, run.history)
    summary = {"protocol": selection.protocol, "optimistic": selection.optimistic,
               "best_epoch": run.best_epoch, **run.best}  # fmt: skip
    atomic_write_json(out_dir / SELECTION, summary)


RunDecision = Literal["new", "resume", "replace"]


def decide_run(out_dir: str | Path, cfg: Config, *, replace: bool) -> RunDecision:
    """The one run-folder policy: what training does with ``out_dir``.

    - nothing trained there yet: ``new``;
    - an interrupted run of this very configuration: ``resume`` from its last epoch;
    - a finished run, or a run of another configuration: ``replace`` it when ``replace``
      (what the pipeline's train stage wants: its folder persists so that a killed run
      resumes, but a stale one is never continued); otherwise a finished run of this
      configuration is ``resume``d (nothing left to do) and another configuration is refused.
    """
    state_file = Path(out_dir) / LAST / "state.json"
    if not state_file.is_file():
        return "replace" if replace and (Path(out_dir) / LAST).parent.exists() else "new"
    saved, current = read_state(state_file.parent).get("config"), training_config(cfg)
    if saved == current and (is_interrupted(out_dir, cfg) or not replace):
        return "resume"
    if replace:
        return "replace"
    changed = sorted(k for k in current if (saved or {}).get(k) != current[k])
    raise TrainingError(
        f"{out_dir} holds a run with another configuration (sections differing: "
        f"{', '.join(changed)}); use another output folder or delete it to start afresh"
    )


def _resume(run: _Run, cfg: Config, out_dir: Path) -> None:
    """Continue from ``checkpoints/last`` when ``decide_run`` says so (it refuses a folder of
    another configuration)."""
    if decide_run(out_dir, cfg, replace=False) != "resume":
        return
    checkpoint = load_checkpoint(out_dir / LAST, with_optimizer=True)
    run.objective.load_state_dict(checkpoint.weights)
    assert checkpoint.optimizer is not None
    run.optimizer.load_state_dict(checkpoint.optimizer)
    state = checkpoint.state
    run.epoch, run.step = state["epoch"] + 1, state["step"]
    run.best, run.best_epoch, run.history = state["best"], state["best_epoch"], state["history"]
    set_rng_state(state["rng"])
    log.info("resumed %s at epoch %d, step %d", out_dir, run.epoch + 1, run.step)


def is_interrupted(out_dir: str | Path, cfg: Config) -> bool:
    """Whether ``out_dir`` holds an unfinished run of this very configuration (one to resume)."""
    state_file = Path(out_dir) / LAST / "state.json"
    if not state_file.is_file():
        return False
    state = read_state(state_file.parent)
    return state.get("config") == training_config(cfg) and state["epoch"] + 1 < cfg.train.epochs


def clear_run(out_dir: str | Path) -> None:
    """Remove what ``fit`` writes into ``out_dir`` (checkpoints, curves, selection)."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / LAST.split("/")[0], ignore_errors=True)
    for name in (CURVES, SELECTION):
        (out_dir / name).unlink(missing_ok=True)


def fit(
    cfg: Config,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    attribute_words: Mapping[int, Sequence[str]] | None = None,
    augment: Callable[[str, Sequence[str], random.Random], str] | None = None,
    tagged_words: Mapping[int, TaggedWords] | None = None,
    reporter: Reporter | None = None,
    stop_after_epochs: int | None = None,
) -> FitResult:
    """Train on a prepared benchmark's train split; write checkpoints and curves to ``out_dir``.

    An interrupted run of this configuration in ``out_dir`` is resumed; whether a folder
    holding anything else is cleared first is the caller's decision (``uit.training.benchmark``).
    ``stop_after_epochs`` ends the call early (as an interruption would) for resume tests.
    Under torchrun, the process group must already be joined (``uit.training.distributed.
    session``; ``uit.training.benchmark.train_benchmark`` does it).
    """
    out_dir = Path(out_dir)
    manifests = read_manifests(prepared_dir)
    train, selection = choose_selection(manifests, cfg.train)
    check_batch_size(cfg.train, train, prepared_dir)
    run = _build_run(cfg, train, attribute_words, augment, tagged_words, current_world())
    _resume(run, cfg, out_dir)
    reporter = reporter or LogReporter()
    epochs_this_call = 0
    while run.epoch < cfg.train.epochs and epochs_this_call != stop_after_epochs:
        record = _train_epoch(run, cfg, reporter)
        _end_epoch(run, cfg, selection, out_dir, record)
        reporter.end_epoch(record)
        run.epoch += 1
        epochs_this_call += 1
    wait_for_all(run.world)  # every rank returns once rank 0's files are written
    return FitResult(run.best_epoch, run.best, run.epoch, run.history)
