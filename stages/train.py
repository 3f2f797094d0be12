"""Stage ``train``: a prepared (and parsed) benchmark -> checkpoints, curves and selection.

The run folder persists between runs (``persist: true`` in dvc.yaml), so a killed training
resumes from its last epoch; a finished run, or one of another configuration, starts afresh.
With ``train.nproc_per_node`` above 1 the stage starts itself again under torchrun, one process
per GPU (or per CPU share, with gloo), so ``dvc repro`` and ``uit run`` use the whole machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uit.core.boundary import run_stage
from uit.core.config import load_config
from uit.core.console import ProgressReporter, progress_bars
from uit.training.benchmark import train_benchmark
from uit.training.distributed import launch, launched_world, should_launch
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
    if should_launch(cfg.train.nproc_per_node):
        launch("stages.train", sys.argv[1:] if argv is None else argv, cfg.train.nproc_per_node)
        return
    with progress_bars() as progress:  # one set of bars: rank 0's
        reporter = ProgressReporter(progress) if launched_world().is_main else None
        train_benchmark(cfg, args.prepared, args.out, parsed_dir=args.parsed,
                        reporter=reporter, restart=True)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
