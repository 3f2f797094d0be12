"""The one entry point of each training operation, behind every front door: ``uit train`` and
the train stage call ``train_entry``; ``uit pretrain`` and the pretrain stage ``pretrain_entry``.

They own what the doors used to repeat: the batch checked against the prepared identities before
a model is built, the relaunch under torchrun when ``train.nproc_per_node`` is above 1 (the same
door again, in each process), the progress bars (rank 0's alone), and the metrics file. A door
parses its arguments, calls one of these and prints what it likes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uit.core.config import PRETRAINED_WEIGHTS, Config
from uit.core.console import ProgressReporter, adder, progress_bars
from uit.core.io import atomic_write_json
from uit.training.benchmark import train_benchmark
from uit.training.distributed import launch, launched_world, should_launch
from uit.training.preflight import check, prepared_batch_problems
from uit.training.pretrain import pretrain, pretraining_enabled
from uit.training.train import FitResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Relaunch:
    """How a door starts itself again under torchrun: ``python -m module *argv``."""

    module: str
    argv: Sequence[str]


def train_entry(
    cfg: Config,
    prepared_dir: str | Path,
    out_dir: str | Path,
    parsed_dir: str | Path | None,
    *,
    relaunch: Relaunch,
    restart: bool = False,
) -> FitResult | None:
    """Train on a prepared benchmark as every door does. Returns the fit's result in the process
    that reports (rank 0, or the only one); None in the others, and in a door that handed the
    run to torchrun (its processes report). ``restart``: see ``train_benchmark``."""
    check(prepared_batch_problems(cfg, Path(prepared_dir)))  # before the model is built
    if should_launch(cfg.train.nproc_per_node):
        launch(relaunch.module, list(relaunch.argv), cfg.train.nproc_per_node)
        return None
    main_rank = launched_world().is_main
    with progress_bars() as progress:  # one set of bars: rank 0's
        reporter = ProgressReporter(progress) if main_rank else None
        result = train_benchmark(cfg, prepared_dir, out_dir, parsed_dir=parsed_dir,
                                 reporter=reporter, restart=restart)  # fmt: skip
    return result if main_rank else None


def pretrain_entry(
    cfg: Config,
    corpus_dir: str | Path,
    out_dir: str | Path,
    metrics_file: str | Path,
    *,
    when_enabled: bool = False,
) -> dict[str, Any]:
    """Draw the pretraining corpus, pretrain, and write the held-out metrics to
    ``metrics_file``; returns them. ``when_enabled`` (the pipeline's stage): only where
    ``model.pretrained`` names the pretrained weights; otherwise draw and train nothing, and say
    why in the metrics file, so that the paper profile's DAG is the same one."""
    corpus, out = Path(corpus_dir), Path(out_dir)
    if when_enabled and not pretraining_enabled(cfg):
        corpus.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        reason = (f"model.pretrained is {cfg.model.pretrained!r}, not {PRETRAINED_WEIGHTS}: "
                  "nothing pretrained here")  # fmt: skip
        log.info(reason)
        skipped: dict[str, Any] = {"pretrained": False, "reason": reason}
        atomic_write_json(Path(metrics_file), skipped)
        return skipped
    with progress_bars() as progress:
        scores = pretrain(cfg, corpus, out, reporter=ProgressReporter(progress),
                          progress=adder(progress), workers=os.cpu_count() or 1)  # fmt: skip
    atomic_write_json(Path(metrics_file), scores)
    return scores
