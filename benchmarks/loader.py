"""Images per second of the data loader that ``uit train`` iterates, built from a params file.

What it times: ``uit train``'s ``DataLoader`` (decode, image augmentation, caption augmentation,
tokenizing, token masking, collation), built as ``uit.training.train.fit`` and ``_build_run``
build it, step for step: the training split chosen as ``fit`` chooses it (less the identities
held out for selection where the benchmark has no val split), the batch size checked against it,
the image transform of ``train.image_augment``, the attribute-keeping caption augmentation
(``augment.keep_attributes_p``) and the token masking (``augment.mask_tokens``) over the parsed
captions, the identity sampler (``train.random_instances: true`` is the released one),
``train.num_workers`` workers, ``pin_memory`` on CUDA, and torch's threads left as ``uit train``
leaves them. Everything comes from ``--params`` (default: the repository's params.yaml) and its
``--set`` overrides; ``--workers 0 4 8`` times other worker counts instead of the params' one.
The model is built for its input size and normalisation only (random weights: the loader does not
depend on them).

Epochs run as ``uit train`` runs them (the epoch set on dataset and sampler, then a fresh
iterator whose workers start afresh) until ``--batches`` batches have come. Two rates per row:

- ``from start``: images over the time from the first iterator's creation to the last batch,
  every epoch's worker start-up included; what the first ``--batches`` batches cost.
- ``steady``: within each epoch, from the arrival of batch ``2 x workers`` (the prefetch depth:
  batches the workers may have prepared while the clock was not yet meant to run) to the epoch's
  last batch; needs epochs well above ``2 x workers`` batches.

A training step of batch B taking S seconds needs B / S images per second from the loader.
Usage (the DVC pipeline's folders; ``--parsed`` is needed when the augmentation or the masking
is on, as for ``uit train``)::

    python benchmarks/loader.py data/prepared/cuhk-pedes --parsed data/parsed/cuhk-pedes \
        [--params params.yaml] [--set train.batch_size=64] [--workers 0 2] [--batches 60]
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _machine import machine  # benchmarks/ is on sys.path when a script runs
from torch.utils.data import DataLoader

from uit.core.boundary import PREPARED, reading
from uit.core.config import Config, load_config
from uit.core.device import resolve_device
from uit.core.errors import UitError
from uit.data.prepared import Manifests, read_manifests
from uit.model.build import build_model
from uit.training.benchmark import ParsedInputs, read_parsed_inputs
from uit.training.train import (
    TrainData,
    build_train_data,
    check_batch_size,
    choose_selection,
    seed_everything,
    train_loader,
)

ROOT = Path(__file__).resolve().parents[1]
SHOWN = ("model.name", "model.image_height", "model.image_width", "model.context_length",
         "train.batch_size", "train.instances_per_id", "train.random_instances",
         "train.image_augment", "train.num_workers", "train.device", "train.seed",
         "augment.keep_attributes_p", "augment.mask_tokens", "augment.mask_attribute_p",
         "augment.mask_other_p")  # fmt: skip


@dataclass(frozen=True)
class Rates:
    from_start: float  # images/s, every epoch's worker start-up included
    steady: float  # images/s within epochs, after the prefetch depth
    epochs: int  # epochs started to deliver the batches


def training_split(cfg: Config, prepared_dir: Path) -> Manifests:
    """The split ``fit`` trains on (``choose_selection``), its batch checked as ``fit`` checks."""
    with reading(prepared_dir, *PREPARED):
        manifests = read_manifests(prepared_dir)
    train, _ = choose_selection(manifests, cfg.train)
    check_batch_size(cfg.train, train, prepared_dir)
    return train


def build_data(cfg: Config, train: Manifests, parsed: ParsedInputs) -> TrainData:
    """``uit.training.train._build_run``'s data half, by the same functions in its order: seed,
    device, model (for its input size and normalisation), dataset and sampler (one process)."""
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    encoder = build_model(cfg.model)
    return build_train_data(cfg, train, encoder, device, attribute_words=parsed.attribute_words,
                            augment=parsed.augment, tagged_words=parsed.tagged_words)  # fmt: skip


def epoch_arrivals(
    data: TrainData, loader: DataLoader[Any], epoch: int, limit: int
) -> list[tuple[float, int]]:
    """(arrival time, images) of up to ``limit`` batches of ``epoch``, iterated as ``uit train``
    iterates one: the epoch set on dataset and sampler, then a fresh iterator."""
    data.dataset.set_epoch(epoch)
    data.sampler.set_epoch(epoch)
    batches = itertools.islice(loader, limit)
    return [(time.perf_counter(), len(batch["images"])) for batch in batches]


def measure(data: TrainData, loader: DataLoader[Any], batches: int) -> Rates:
    skip = 2 * loader.num_workers  # prefetch depth: DataLoader's default prefetch_factor is 2
    start = time.perf_counter()
    epochs: list[list[tuple[float, int]]] = []
    while (done := sum(map(len, epochs))) < batches:
        epochs.append(epoch_arrivals(data, loader, len(epochs), batches - done))
        if not epochs[-1]:
            raise ValueError(f"epoch {len(epochs)} planned no batch; lower train.batch_size")
    steady = [epoch for epoch in epochs if len(epoch) > skip + 1]
    if not steady:
        raise ValueError(f"no epoch of more than {skip + 1} batches for {loader.num_workers} "
                         "workers: raise --batches or lower train.batch_size")  # fmt: skip
    images = sum(size for epoch in epochs for _, size in epoch)
    steady_images = sum(size for epoch in steady for _, size in epoch[skip + 1 :])
    steady_seconds = sum(epoch[-1][0] - epoch[skip][0] for epoch in steady)
    return Rates(images / (epochs[-1][-1][0] - start), steady_images / steady_seconds, len(epochs))


def setting(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def describe(cfg: Config, args: argparse.Namespace, data: TrainData) -> list[str]:
    """What ran: the params' settings (``key: value``, one a line) and what follows from them."""
    train = data.dataset
    return [
        f"params: {args.params}; overrides: {' '.join(args.overrides)}",
        f"data: {args.prepared} (training split: {len(train)} captions of {train.num_classes} "
        f"identities, {len(data.sampler)} batches in epoch 1); parsed: {args.parsed or 'none'}",
        "config (uit train's loader, as it builds it from these params):",
        *(f"  {key}: {setting(cfg, key)}" for key in SHOWN),
        f"  classes: {train.num_classes}",
        f"  device: {data.device}",
        f"  pin_memory: {data.device.type == 'cuda'}",
        f"  caption augmentation: {train.augment is not None}",
        f"  token masking: {train.mask_tokens is not None}",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="a prepared benchmark folder")
    parser.add_argument("--parsed", type=Path, help="its parsed captions (`uit data parse`)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override the params (repeatable)")  # fmt: skip
    parser.add_argument("--workers", type=int, nargs="+", help="default: train.num_workers")
    parser.add_argument("--batches", type=int, default=60, help="batches per row")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    cfg = load_config(args.params, args.overrides)
    train, parsed = training_split(cfg, args.prepared), read_parsed_inputs(cfg, args.parsed)
    data = build_data(cfg, train, parsed)
    print(f"machine: {machine()}")
    print("\n".join(describe(cfg, args, data)))
    print(f"images/s over {args.batches} batches: 'from start' includes the worker start-up of "
          "every epoch; 'steady' runs within epochs, from batch 2 x workers (the prefetch depth) "
          "to the epoch's last")  # fmt: skip
    print(f"{'workers':>8}{'from start':>12}{'steady':>10}{'steady/worker':>15}{'epochs':>8}")
    for workers in args.workers or [cfg.train.num_workers]:
        rates = measure(data, train_loader(data, workers), args.batches)
        per_worker = rates.steady / max(workers, 1)
        print(f"{workers:>8}{rates.from_start:>12.0f}{rates.steady:>10.0f}{per_worker:>15.0f}"
              f"{rates.epochs:>8}", flush=True)  # fmt: skip


def main() -> None:
    args = parse_args()
    args.overrides.append("model.pretrained=")  # random weights: the loader does not use them
    try:
        run(args)
    except (UitError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
