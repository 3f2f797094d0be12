"""Stage ``train``: a prepared (and parsed) benchmark -> checkpoints, curves and selection.

The run folder persists between runs (``persist: true`` in dvc.yaml), so a killed training
resumes from its last epoch; a finished run, or one of another configuration, starts afresh.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uit.core.boundary import run_stage
from uit.core.config import load_config
from uit.core.console import ProgressReporter, progress_bars
from uit.training.benchmark import train_benchmark
from uit.training.preflight import check, prepared_batch_problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="folder written by stage prepare")
    parser.add_argument("--parsed", required=True, help="folder written by stage parse")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, curves.csv)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check(prepared_batch_problems(cfg, Path(args.prepared)))  # before the model is built
    with progress_bars() as progress:
        train_benchmark(cfg, args.prepared, args.out, parsed_dir=args.parsed,
                        reporter=ProgressReporter(progress), restart=True)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
