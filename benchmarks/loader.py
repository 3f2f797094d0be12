"""Images per second of the training data pipeline (decode + augment + tokenize), per worker.

Runs the real ``TrainDataset`` over a prepared benchmark with 0, 1, 2, ... workers and prints a
table; a GPU step of ViT-B-16 at batch 128 needs roughly 128 / step-seconds images per second.
Usage: ``python benchmarks/loader.py PREPARED_DIR [--size 384x128] [--workers 0 1 2]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader

from uit.config import ModelConfig
from uit.data.dataset import TrainDataset, read_manifests
from uit.data.sampler import IdentityBatchSampler
from uit.data.transforms import build_train_transform
from uit.model.build import build_tokenizer

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def measure(dataset: TrainDataset, workers: int, batch_size: int, batches: int) -> float:
    sampler = IdentityBatchSampler(dataset.labels, batch_size, 2, seed=0)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None
    )
    iterator = iter(loader)
    next(iterator)  # start-up of the workers is not throughput
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            seen += len(next(iterator)["images"])
        except StopIteration:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared")
    parser.add_argument("--size", default="384x128", help="HxW of the model input")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
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
    print(f"{'workers':>8}{'images/s':>12}{'per worker':>12}")
    for workers in args.workers:
        rate = measure(dataset, workers, args.batch_size, args.batches)
        print(f"{workers:>8}{rate:>12.0f}{rate / max(workers, 1):>12.0f}")


if __name__ == "__main__":
    main()
