"""Stage ``train``: a prepared (and parsed) benchmark -> checkpoints, curves and selection.

The run folder persists between runs (``persist: true`` in dvc.yaml), so a killed training
resumes from its last epoch; a finished run, or one of another configuration, starts afresh.
With ``train.nproc_per_node`` above 1 the stage starts itself again under torchrun, one process
per GPU (or per CPU share, with gloo), so ``dvc repro`` and ``uit run`` use the whole machine.
"""

from __future__ import annotations

import argparse
import sys

from uit.core.boundary import run_stage
from uit.core.config import load_config
from uit.training.entry import Relaunch, train_entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="folder written by stage prepare")
    parser.add_argument("--parsed", required=True, help="folder written by stage parse")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, curves.csv)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    relaunch = Relaunch("stages.train", sys.argv[1:] if argv is None else argv)
    train_entry(load_config(args.params), args.prepared, args.out, args.parsed,
                relaunch=relaunch, restart=True)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
