"""Images per second of the training data pipeline (decode + augment + tokenize), per worker.

Runs the real ``TrainDataset`` over a prepared benchmark, through a ``DataLoader`` set up as
``uit train`` sets it up (identity batches, default prefetch of 2 batches per worker), with 0, 1,
2, ... workers, and prints two rates per row:

- ``from start``: the clock starts before the iterator is created, so worker start-up counts;
  what the first ``--batches`` batches of an epoch cost.
- ``steady``: from the arrival of batch ``2 x workers`` (the prefetch depth: batches the workers
  may have prepared while the clock was not yet meant to run) to the last one; needs
  ``--batches`` well above ``2 x workers``.

A GPU step of ViT-B-16 at batch 128 needs roughly 128 / step-seconds images per second. Batches
cycle over epochs of the sampler, so a small benchmark still gives ``--batches`` of them.
Usage: ``python benchmarks/loader.py PREPARED_DIR [--size 384x128] [--workers 0 1 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from uit.core.config import ModelConfig
from uit.data.dataset import TrainDataset
from uit.data.prepared import read_manifests
from uit.data.transforms import build_train_transform
from uit.model.build import build_tokenizer
from uit.training.sampler import IdentityBatchSampler

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Rates:
    from_start: float  # images/s, worker start-up included
    steady: float  # images/s after the prefetch depth


def batch_plan(dataset: TrainDataset, batch_size: int, batches: int) -> list[list[int]]:
    """``batches`` identity batches, the sampler's epochs one after another."""
    sampler = IdentityBatchSampler(dataset.labels, batch_size, 2, seed=0)
    plan: list[list[int]] = []
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        plan.extend(itertools.islice(sampler, batches - len(plan)))
        if len(plan) == batches:
            return plan
    raise AssertionError("unreachable")


def measure(dataset: TrainDataset, workers: int, plan: list[list[int]]) -> Rates:
    skip = 2 * workers  # prefetch depth: DataLoader's default prefetch_factor is 2
    if len(plan) <= skip + 1:
        raise ValueError(f"--batches must exceed {skip + 1} for {workers} workers")
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=workers)
    arrivals, sizes = [], []
    for batch in loader:
        arrivals.append(time.perf_counter())
        sizes.append(len(batch["images"]))
    from_start = sum(sizes) / (arrivals[-1] - start)
    steady = sum(sizes[skip + 1 :]) / (arrivals[-1] - arrivals[skip])
    return Rates(from_start, steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared")
    parser.add_argument("--size", default="384x128", help="HxW of the model input")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    train = read_manifests(args.prepared).split("train")
    transform = build_train_transform((height, width), MEAN, STD)
    dataset = TrainDataset(train, transform, build_tokenizer(ModelConfig(name="ViT-B-16")))
    print(
        f"{args.prepared}: {len(dataset)} samples, input {height}x{width}, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs"
    )
    print(
        f"images/s over {args.batches} batches: 'from start' includes worker start-up; 'steady' "
        "runs from batch 2 x workers (the prefetch depth) to the last"
    )
    print(f"{'workers':>8}{'from start':>12}{'steady':>10}{'steady/worker':>15}")
    plan = batch_plan(dataset, args.batch_size, args.batches)
    for workers in args.workers:
        rates = measure(dataset, workers, plan)
        per_worker = rates.steady / max(workers, 1)
        print(f"{workers:>8}{rates.from_start:>12.0f}{rates.steady:>10.0f}{per_worker:>15.0f}")


if __name__ == "__main__":
    main()
