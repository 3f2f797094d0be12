"""Seconds per training step (``uit.training.train.train_step``) of the model a params file
describes, built as ``uit train`` builds it, on synthetic tensors.

What it times: the step ``uit train`` runs, for the model, input size, context length, batch
size, loss weights, TIR decoder, optimiser settings, precision, compile switch and device of
``--params`` (default: the repository's params.yaml) and its ``--set`` overrides: learning-rate
update, the batch copied from pinned host memory to a CUDA device, TIR's mask noise drawn from
(seed, step), the forward under autocast, a finiteness check per loss term, backward, Adam, and
``float()`` of every loss term (the per-step host syncs are part of the step). The ID head has
``--classes`` classes, else as many as training would give it: the training identities of
``--prepared`` (less those held out for selection), else those of the first of
``data.benchmarks`` at ``synth.size`` where the data is synthetic. Weights are random (a step's
time does not depend on them) with the activation the configured weights would choose (QuickGELU
for OpenAI's).

Rows: the step the params run (marked ``*``: ``train.precision``, fused Adam as ``uit`` builds
it, ``train.compile``) among variants that change one of those: PyTorch's default (foreach)
Adam; fp32 beside bf16 autocast where the params train in bf16 (``precision: auto`` on CUDA);
``torch.compile``, last, with ``--compile`` or ``train.compile: true``. Seconds per step are the
median over ``--windows`` windows of ``--steps`` steps, with the fastest and slowest window;
seconds per epoch are compute only (no image decoding or data loading: ``benchmarks/loader.py``
times that side) for the training captions of ``--prepared``, else CUHK-PEDES's 68,126. Model
FLOPs per step are counted by torch's FLOP counter, MFU against the card's dense bf16 peak.

Usage::

    python benchmarks/train_step.py [--params params.yaml] [--prepared data/prepared/cuhk-pedes]
    # the paper's step on a GPU (ViT-B-16, 384x128, context 77, batch 128, bf16, CUHK-PEDES):
    cp params.yaml /tmp/paper.yaml && uit profile paper --params /tmp/paper.yaml
    python benchmarks/train_step.py --params /tmp/paper.yaml --classes 11003 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from _machine import machine  # benchmarks/ is on sys.path when a script runs
from loader import training_split
from torch.utils.flop_counter import FlopCounterMode

from uit.app.flows.preflight import synthetic_identities
from uit.core.config import Config, load_config
from uit.core.device import autocast_dtype, resolve_device
from uit.core.errors import UitError
from uit.data.prepared import Manifests
from uit.model import build_model
from uit.model.build import register_configs, resolve_quick_gelu
from uit.model.objective import Objective
from uit.training.optim import param_groups
from uit.training.train import StepState, build_step_state, seed_everything, train_step

ROOT = Path(__file__).resolve().parents[1]
CUHK_TRAIN_PAIRS = 68_126
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM
SHOWN = ("model.name", "model.image_height", "model.image_width", "model.context_length",
         "model.quick_gelu", "train.batch_size", "train.instances_per_id", "train.precision",
         "train.compile", "train.device", "tir.decoder_layers", "tir.mask_ratio",
         "optim.lr")  # fmt: skip
LOSSES = ("sdm", "id", "cmt", "itc", "tir")


@dataclass(frozen=True)
class Variant:
    precision: str  # train.precision, resolved: fp32 | bf16
    fused: bool  # uit's optimiser (fused Adam) or PyTorch's default (foreach) Adam
    compile: bool  # train.compile

    @property
    def name(self) -> str:
        adam = "fused Adam" if self.fused else "Adam (foreach)"
        return f"{self.precision}, {adam}{', compiled' if self.compile else ''}"


@dataclass(frozen=True)
class Classes:
    count: int
    source: str  # where the count comes from


def configured(cfg: Config, device: torch.device) -> Variant:
    """The step the params run: their precision on this device, fused Adam, their compile."""
    precision = "fp32" if autocast_dtype(device, cfg.train.precision) is None else "bf16"
    return Variant(precision, True, cfg.train.compile)


def variants(ran: Variant, with_compile: bool) -> list[Variant]:
    """The params' step and its neighbours: the other Adam, fp32 beside bf16, then compiled."""
    precisions = ("fp32", "bf16") if ran.precision == "bf16" else ("fp32",)
    rows = [Variant(p, fused, False) for p in precisions for fused in (False, True)]
    if with_compile or ran.compile:
        rows.append(Variant(ran.precision, True, True))
    return rows


def activation_overrides(cfg: Config) -> list[str]:
    """Random weights, with the activation that ``model.pretrained`` would choose
    (``uit.model.build.resolve_quick_gelu``, without fetching the weights)."""
    model = cfg.model
    if not model.pretrained:
        return []
    register_configs()
    architecture = open_clip.get_model_config(model.name) or {}
    is_file = bool(Path(model.pretrained).suffix)
    tag = {} if is_file else open_clip.get_pretrained_cfg(model.name, model.pretrained) or {}
    weights = model.pretrained if is_file and Path(model.pretrained).is_file() else None
    quick_gelu = resolve_quick_gelu(model, architecture, tag, weights)
    return ["model.pretrained=", f"model.quick_gelu={str(quick_gelu).lower()}"]


def count_classes(cfg: Config, args: argparse.Namespace, train: Manifests | None) -> Classes:
    """The ID head's classes as training would have them (see the module's docstring)."""
    if args.classes:
        return Classes(args.classes, "--classes")
    if train is not None:  # TrainDataset's labels: one per identity of its images
        return Classes(train.images["pid"].n_unique(), f"training identities of {args.prepared}")
    benchmark = cfg.data.benchmarks[0]
    found = synthetic_identities(cfg, benchmark)
    if found is None:
        raise UitError(f"data.source is {cfg.data.source}: pass --prepared data/prepared/"
                       f"{benchmark} or --classes N (the training identities)")  # fmt: skip
    return Classes(found.count, f"training identities of {benchmark} at {found.source}")


def epoch_pairs(args: argparse.Namespace, train: Manifests | None) -> tuple[int, str]:
    """Samples per epoch: the training captions of ``--prepared``, else CUHK-PEDES's."""
    if train is not None:
        return len(train.captions), f"the training captions of {args.prepared}"
    return CUHK_TRAIN_PAIRS, "CUHK-PEDES's training captions"


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def variant_config(cfg: Config, variant: Variant) -> Config:
    train = cfg.train.model_copy(update={"precision": variant.precision,
                                         "compile": variant.compile})  # fmt: skip
    return cfg.model_copy(update={"train": train})


def make_batch(cfg: Config, classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch as the loader hands it over: on the host, pinned when training on CUDA."""
    size, context = cfg.train.batch_size, cfg.model.context_length
    text = torch.randint(1, 49_000, (size, context))
    text[:, 40 % context] = 49_407  # end of text
    batch = {
        "images": torch.randn(size, 3, cfg.model.image_height, cfg.model.image_width),
        "text": text,
        "pids": (torch.arange(size) // cfg.train.instances_per_id) % classes,
    }
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    return batch


def build_state(cfg: Config, variant: Variant, classes: int, device: torch.device) -> StepState:
    """As ``uit.training.train._build_run`` builds it (one process), with PyTorch's default Adam
    in place of the fused one for the rows that compare them."""
    seed_everything(cfg.train.seed)
    objective = Objective(build_model(cfg.model), classes, cfg.loss, cfg.tir).to(device)
    optimizer = None  # uit's: fused Adam
    if not variant.fused:
        optimizer = torch.optim.Adam(
            param_groups(objective, cfg.optim), lr=cfg.optim.lr, eps=cfg.optim.eps
        )
    return build_step_state(objective, cfg, device, optimizer)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(
    state: StepState, batch: dict[str, torch.Tensor], cfg: Config, count: int, pairs: int
) -> None:
    steps_per_epoch = max(pairs // cfg.train.batch_size, 1)
    for _ in range(count):
        train_step(state, batch, cfg, state.step / steps_per_epoch)


def count_flops(state: StepState, batch: dict[str, torch.Tensor], cfg: Config, pairs: int) -> float:
    with FlopCounterMode(display=False) as counter:
        run_steps(state, batch, cfg, 1, pairs)
    return float(counter.get_total_flops())


def time_windows(
    state: StepState, batch: dict[str, torch.Tensor], cfg: Config, args: argparse.Namespace,
    pairs: int,
) -> list[float]:  # fmt: skip
    """Seconds per step of each window, after ``args.warmup`` untimed steps."""
    run_steps(state, batch, cfg, args.warmup, pairs)
    seconds = []
    for _ in range(args.windows):
        sync(state.device)
        start = time.perf_counter()
        run_steps(state, batch, cfg, args.steps, pairs)
        sync(state.device)
        seconds.append((time.perf_counter() - start) / args.steps)
    return seconds


def setting(cfg: Config, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def describe(
    cfg: Config, args: argparse.Namespace, classes: Classes, device: torch.device, ran: Variant
) -> list[str]:
    """What ran: the params' settings (``key: value``, one a line) and what follows from them."""
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    losses = ", ".join(f"{name} {getattr(cfg.loss, name):g}" for name in LOSSES
                       if getattr(cfg.loss, name) > 0)  # fmt: skip
    return [
        f"params: {args.params}; overrides: {' '.join(args.overrides) or 'none'}",
        "config (the step uit train runs with these params, on synthetic tensors):",
        *(f"  {key}: {setting(cfg, key)}" for key in SHOWN),
        f"  classes: {classes.count} ({classes.source})",
        f"  losses on: {losses}",
        f"  device: {device} ({label})",
        f"  step: {ran.name}",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override the params (repeatable)")  # fmt: skip
    parser.add_argument("--prepared", type=Path, help="classes and epoch size from its train split")
    parser.add_argument("--classes", type=int, help="the ID head's classes (overrides the rest)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile: >= 2)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile row")
    return parser.parse_args()


def report_row(
    variant: Variant, ran: Variant, seconds: list[float], flops: float, cfg: Config, pairs: int,
    peak: float | None,
) -> str:  # fmt: skip
    median = statistics.median(seconds)
    rate = cfg.train.batch_size / median
    spread = f"({min(seconds):.3f}-{max(seconds):.3f})"
    mfu = f"{100 * flops / median / (peak * 1e12):.1f}%" if peak else "-"
    name = f"{'*' if variant == ran else ' '} {variant.name}"
    return (f"{name:<34}{median:>8.3f}{spread:>16}{rate:>11.0f}{pairs / rate:>9.1f}"
            f"{flops / 1e12:>12.4f}{mfu:>7}")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.params, args.overrides)
    args.overrides += activation_overrides(cfg)
    cfg = load_config(args.params, args.overrides)
    device = resolve_device(cfg.train.device)
    train = training_split(cfg, args.prepared) if args.prepared else None
    classes, (pairs, source) = count_classes(cfg, args, train), epoch_pairs(args, train)
    ran, peak = configured(cfg, device), peak_tflops(device, args.peak_tflops)
    print(f"machine: {machine()}")
    print("\n".join(describe(cfg, args, classes, device, ran)))
    print(f"s/step: median (min-max) of {args.windows} windows of {args.steps} steps after "
          f"{args.warmup}; s/epoch: compute only, {pairs:,} pairs ({source}); *: the params' "
          "step")  # fmt: skip
    print(f"{'variant':<34}{'s/step':>8}{'(min-max)':>16}{'samples/s':>11}{'s/epoch':>9}"
          f"{'TFLOP/step':>12}{'MFU':>7}")  # fmt: skip
    flops = 0.0
    for variant in variants(ran, args.compile):
        variant_cfg = variant_config(cfg, variant)
        state = build_state(variant_cfg, variant, classes.count, device)
        batch = make_batch(variant_cfg, classes.count, device)
        if not variant.compile:  # the compiled step does the same FLOPs
            flops = count_flops(state, batch, variant_cfg, pairs)
        seconds = time_windows(state, batch, variant_cfg, args, pairs)
        print(report_row(variant, ran, seconds, flops, cfg, pairs, peak), flush=True)
        del state, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    args = parse_args()
    try:
        run(args)
    except UitError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
