"""Throughput of the real training step (``uit.training.train.train_step``) of full UIT
(SDM + ID + CMT + TIR) on synthetic tensors.

Each step is the one ``uit train`` runs: learning-rate update, the batch copied from pinned host
memory to the device, TIR's mask noise drawn from (seed, step), the forward under autocast, a
finiteness check per loss term, backward, Adam, and ``float()`` of every loss term (the per-step
host syncs are part of the step). Default: ViT-B-16 at 384x128, batch 128, on CUDA; rows side by
side in one run: fp32 (TF32 matmuls) with PyTorch's default (foreach) Adam, bf16 autocast (what
``train.precision: auto`` picks), + fused Adam (what ``uit train`` builds, on CUDA and CPU),
+ compile (``train.compile: true``, with ``--compile``). Seconds per step are the median over
``--windows`` windows of ``--steps`` steps, with the fastest and slowest window. Seconds per
CUHK-PEDES-sized epoch (68,126 pairs) are compute only: no image decoding or data loading (see
``benchmarks/loader.py`` for that side). Model FLOPs per step are counted by torch's FLOP
counter, MFU against the card's dense bf16 peak. On a CPU it runs the two fp32 rows (PyTorch's
default Adam, a loop over parameters there, against the fused kernel): ``--device cpu --model
uit-tiny --size 64x32 --batch-size 32`` is the demo's step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from uit.core.config import Config, parse_config
from uit.model import build_model
from uit.model.objective import Objective, param_groups
from uit.training.train import StepState, build_step_state, train_step

CUHK_TRAIN_PAIRS = 68_126
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # train.precision
    fused: bool  # uit's optimiser (fused on CUDA) or PyTorch's default Adam
    compile: bool  # train.compile


VARIANTS = (
    Variant("fp32 (tf32)", "fp32", False, False),
    Variant("fp32 + fused Adam", "fp32", True, False),
    Variant("bf16 autocast", "bf16", False, False),
    Variant("bf16 + fused Adam", "bf16", True, False),
    Variant("bf16 + fused + compile", "bf16", True, True),
)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def make_config(args: argparse.Namespace, variant: Variant) -> Config:
    height, width = (int(v) for v in args.size.split("x"))
    return parse_config({
        "model": {"name": args.model, "image_height": height, "image_width": width},
        "train": {"batch_size": args.batch_size, "device": args.device,
                  "precision": variant.precision, "compile": variant.compile},
    })  # fmt: skip


def make_batch(cfg: Config, context_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch as the loader hands it over: on the host, pinned when training on CUDA."""
    size = cfg.train.batch_size
    text = torch.randint(1, 49_000, (size, context_length))
    text[:, 40 % context_length] = 49_407  # end of text
    batch = {
        "images": torch.randn(size, 3, cfg.model.image_height, cfg.model.image_width),
        "text": text,
        "pids": torch.arange(size) // cfg.train.instances_per_id,
    }
    if device.type == "cuda":
        batch = {key: value.pin_memory() for key, value in batch.items()}
    return batch


def build_state(cfg: Config, variant: Variant, num_classes: int) -> StepState:
    torch.manual_seed(0)
    device = torch.device(cfg.train.device)
    objective = Objective(build_model(cfg.model), num_classes, cfg.loss, cfg.tir).to(device)
    optimizer = None  # uit's: fused Adam
    if not variant.fused:  # the baseline rows: PyTorch's default (foreach) Adam
        optimizer = torch.optim.Adam(
            param_groups(objective, cfg.optim), lr=cfg.optim.lr, eps=cfg.optim.eps
        )
    return build_step_state(objective, cfg, device, optimizer)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(state: StepState, batch: dict[str, torch.Tensor], cfg: Config, count: int) -> None:
    steps_per_epoch = CUHK_TRAIN_PAIRS // cfg.train.batch_size
    for _ in range(count):
        train_step(state, batch, cfg, state.step / steps_per_epoch)


def count_flops(state: StepState, batch: dict[str, torch.Tensor], cfg: Config) -> float:
    with FlopCounterMode(display=False) as counter:
        run_steps(state, batch, cfg, 1)
    return float(counter.get_total_flops())


def time_windows(
    state: StepState, batch: dict[str, torch.Tensor], cfg: Config, args: argparse.Namespace
) -> list[float]:
    """Seconds per step of each window, after ``args.warmup`` untimed steps."""
    run_steps(state, batch, cfg, args.warmup)
    seconds = []
    for _ in range(args.windows):
        sync(state.device)
        start = time.perf_counter()
        run_steps(state, batch, cfg, args.steps)
        sync(state.device)
        seconds.append((time.perf_counter() - start) / args.steps)
    return seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--size", default="384x128")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compile: >= 2)")
    parser.add_argument("--num-classes", type=int, default=11_003)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile row")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.model} {args.size}, batch {args.batch_size}, full UIT, "
        f"uit.training.train.train_step on "
        f"{label}; torch {torch.__version__}; s/step: median (min-max) of {args.windows} windows "
        f"of {args.steps} steps after {args.warmup}; s/epoch: compute only (synthetic tensors, "
        "no data loading)"
    )
    print(
        f"{'variant':<24}{'s/step':>8}{'(min-max)':>16}{'samples/s':>11}{'s/epoch':>9}"
        f"{'TFLOP/step':>12}{'MFU':>7}"
    )
    flops = 0.0
    for variant in VARIANTS:
        if device.type == "cpu" and variant.precision != "fp32":
            continue  # the CPU path trains in fp32 (with fused Adam, as uit train builds it)
        if variant.compile and not args.compile:
            continue
        cfg = make_config(args, variant)
        state = build_state(cfg, variant, args.num_classes)
        batch = make_batch(cfg, state.objective.encoder.context_length, device)
        if not variant.compile:  # the compiled step does the same FLOPs
            flops = count_flops(state, batch, cfg)
        seconds = time_windows(state, batch, cfg, args)
        median = statistics.median(seconds)
        rate = args.batch_size / median
        spread = f"({min(seconds):.3f}-{max(seconds):.3f})"
        mfu = f"{100 * flops / median / (peak * 1e12):.1f}%" if peak else "-"
        print(
            f"{variant.name:<24}{median:>8.3f}{spread:>16}{rate:>11.0f}"
            f"{CUHK_TRAIN_PAIRS / rate:>9.1f}{flops / 1e12:>12.2f}{mfu:>7}"
        )
        del state, batch
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
