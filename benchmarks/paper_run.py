"""The paper path, timed: train with the paper profile on a prepared benchmark, then re-score
the selected checkpoint the way ``uit evaluate`` does and check it reproduces the selection score.

Prints the machine and the model and train settings it ran (the repository's params.yaml with
profiles/paper.yaml's keys, random weights, then the ``--set`` overrides), then one row per epoch
(seconds, loss terms, selection R@1 and mAP, peak GPU memory), the test metrics of the selected
checkpoint, and whether ``uit evaluate`` on the selection split gives exactly the numbers
recorded during training. For a GPU machine (see
``benchmarks/gpu_checks.sh``); on a CPU, with ``--set model.name=uit-tiny`` and a small
benchmark, it exercises the same code.

Usage: ``python benchmarks/paper_run.py PREPARED_DIR OUT_DIR [--parsed DIR] [--set k=v ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from _machine import machine  # benchmarks/ is on sys.path when a script runs

from uit.core.config import load_config, read_yaml
from uit.retrieval.evaluate import evaluate_checkpoint
from uit.training.benchmark import train_benchmark

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "paper.yaml"


class TimingReporter:
    """Wall time and peak GPU memory per epoch, printed as the loop goes."""

    def __init__(self) -> None:
        self.start = 0.0
        self.rows: list[dict[str, float]] = []

    def start_epoch(self, epoch: int, steps: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        print(f"epoch {epoch + 1}: {steps} steps", flush=True)

    def step(self, losses: Mapping[str, float], lr: float) -> None:
        pass

    def end_epoch(self, record: Mapping[str, float]) -> None:
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        row = {**record, "seconds": time.perf_counter() - self.start, "peak_gib": peak}
        self.rows.append(row)
        terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "step"))
        print(
            f"  {row['seconds']:.1f} s (with selection), peak {peak:.1f} GiB, {terms}", flush=True
        )


def paper_overrides() -> list[str]:
    """The keys of profiles/paper.yaml as overrides, except where the data comes from."""
    profile = read_yaml(PROFILE)
    skip = {"data", "synth"}
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section, values in profile.items()
        if section not in skip
        for key, value in values.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--parsed", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    overrides = [*paper_overrides(), "model.pretrained=", *args.overrides]
    cfg = load_config(ROOT / "params.yaml", overrides)
    print(f"machine: {machine()}")
    print("model", cfg.model.model_dump(), "\ntrain", cfg.train.model_dump(), flush=True)
    reporter = TimingReporter()
    started = time.perf_counter()
    result = train_benchmark(cfg, args.prepared, args.out / "run", parsed_dir=args.parsed,
                             reporter=reporter, restart=True)  # fmt: skip
    total = time.perf_counter() - started
    best = args.out / "run" / "checkpoints" / "best"
    selection = json.loads((args.out / "run" / "selection.json").read_text())
    split = "val" if selection["protocol"] == "val" else selection["protocol"]
    report: dict[str, Any] = {"epochs": reporter.rows, "train_seconds": total,
                              "selection": selection}  # fmt: skip
    if split in ("val", "test"):
        again = evaluate_checkpoint(best, args.prepared, args.out / "eval-selection", split=split)
        diffs = {k: abs(again["t2i"][k] - selection[k]) for k in ("R1", "mAP")}
        report["reevaluated"] = {k: again["t2i"][k] for k in ("R1", "mAP")}
        report["reproduces_selection"] = all(d <= 1e-6 for d in diffs.values())
        print(f"uit evaluate on {split}: {report['reevaluated']} vs recorded "
              f"{ {k: selection[k] for k in ('R1', 'mAP')} }: "
              f"reproduced {report['reproduces_selection']}", flush=True)  # fmt: skip
    test = evaluate_checkpoint(best, args.prepared, args.out / "eval-test", split="test")
    report["test"] = test["t2i"]
    per_epoch = [row["seconds"] for row in reporter.rows]
    print(f"best epoch {result.best_epoch}; test t2i {test['t2i']}")
    print(
        f"seconds per epoch (with selection): {[round(s, 1) for s in per_epoch]}; "
        f"median {sorted(per_epoch)[len(per_epoch) // 2]:.1f}; total {total:.0f} s"
    )
    assert all(math.isfinite(row["loss"]) for row in reporter.rows)
    (args.out / "paper_run.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
