"""Training-step throughput of full UIT (SDM + ID + CMT + TIR) on synthetic tensors.

Default: ViT-B-16 at 384x128, batch 128, on CUDA, side by side in fp32 (TF32 matmuls) and with
bf16 autocast (what ``train.precision: auto`` picks). Prints samples/s, seconds per
CUHK-PEDES-sized epoch (68,126 pairs), model FLOPs per step (counted by torch's FLOP counter)
and the model FLOPs utilisation against the card's dense bf16 peak. On a CPU it runs with a
small batch so that the script itself is exercised: ``--device cpu --batch-size 2``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from uit.config import LossConfig, ModelConfig, OptimConfig, TIRConfig
from uit.device import autocast
from uit.model import build_model
from uit.objective import Objective, build_optimizer, param_groups

CUHK_TRAIN_PAIRS = 68_126
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def make_batch(encoder, batch_size: int, device: torch.device):
    height, width = encoder.image_size
    images = torch.randn(batch_size, 3, height, width, device=device)
    text = torch.randint(1, 49_000, (batch_size, encoder.context_length), device=device)
    text[:, 40] = 49_407  # end of text
    pids = torch.arange(batch_size, device=device) // 2  # two samples per identity, as sampled
    return images, text, pids


def step_fn(objective, optimizer, batch, device, dtype):
    def step() -> None:
        with autocast(device, dtype):
            losses = objective(*batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    return step


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--size", default="384x128")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=11_003)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    args = parser.parse_args()
    device = torch.device(args.device)
    height, width = (int(v) for v in args.size.split("x"))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = peak_tflops(device, args.peak_tflops)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.model} {height}x{width}, batch {args.batch_size}, full UIT, on {label}; "
        f"torch {torch.__version__}; mean of {args.steps} steps after {args.warmup}"
    )
    print(
        f"{'precision':<16}{'s/step':>9}{'samples/s':>11}{'s/epoch':>9}{'TFLOP/step':>12}{'MFU':>7}"
    )
    variants = [
        ("fp32 (tf32)", None, False, False),
        ("bf16 autocast", torch.bfloat16, False, False),
        ("bf16 + fused Adam", torch.bfloat16, True, False),
        ("bf16 + fused + compile", torch.bfloat16, True, True),
    ]
    flops = 0.0
    for name, dtype, fused, compiled in variants:
        if (dtype is not None or fused) and device.type == "cpu":
            continue  # the CPU path trains in fp32 with the plain optimiser
        if compiled and not args.compile:
            continue
        torch.manual_seed(0)
        encoder = build_model(ModelConfig(name=args.model, image_height=height, image_width=width))
        objective = Objective(encoder, args.num_classes, LossConfig(), TIRConfig()).to(device)
        if fused:
            optimizer = build_optimizer(objective, OptimConfig())
        else:  # the baseline rows: PyTorch's default (foreach) Adam
            optimizer = torch.optim.Adam(param_groups(objective, OptimConfig()), eps=1e-3)
        model = torch.compile(objective) if compiled else objective
        batch = make_batch(encoder, args.batch_size, device)
        step = step_fn(model, optimizer, batch, device, dtype)
        if not compiled:  # the compiled model does the same FLOPs
            flops = count_flops(step)
        seconds = time_steps(step, device, args.warmup, args.steps)
        rate = args.batch_size / seconds
        mfu = f"{100 * flops / seconds / (peak * 1e12):.1f}%" if peak else "-"
        print(
            f"{name:<16}{seconds:>9.3f}{rate:>11.0f}{CUHK_TRAIN_PAIRS / rate:>9.1f}"
            f"{flops / 1e12:>12.2f}{mfu:>7}"
        )
        del objective, optimizer, encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
