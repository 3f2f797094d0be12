"""Checks of a whole pipeline before any stage runs (``uit run``, the flows): data roots,
weights files, and the batch against every benchmark's training identities, counted from the
synth config where the data is still to be drawn. Each problem is one line with its fix;
``uit.training.preflight.check`` raises them as one error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from uit.core.config import PRETRAINED_WEIGHTS, SYNTHETIC_ROOT, Config, ModelConfig
from uit.raw.formats import get_spec
from uit.raw.readers import missing_benchmark
from uit.synth.generate import plan_for
from uit.training.preflight import (
    Identities,
    batch_problem,
    held_out,
    prepared_identities,
)


def synthetic_identities(cfg: Config, benchmark: str) -> Identities | None:
    """The training identities of a benchmark that the synth stage will draw, from
    ``synth.size`` alone; ``None`` where the benchmark is not drawn."""
    spec = get_spec(benchmark)
    if cfg.data.source != "synthetic" or spec.name not in cfg.data.benchmarks:
        return None
    train_ids, val_ids, _ = plan_for(spec, cfg.synth.size).identities
    has_val = "val" in spec.splits and val_ids > 0
    count = train_ids - held_out(train_ids, cfg.train, has_val)
    return Identities(spec.name, count, f"synth.size {cfg.synth.size}")


def data_problems(cfg: Config, project: Path, benchmarks: Sequence[str]) -> list[str]:
    """Each chosen benchmark that no stage draws must already be under ``data.root``."""
    problems = []
    if cfg.data.source == "synthetic" and Path(cfg.data.root) != Path(SYNTHETIC_ROOT):
        problems.append(
            f"data.root is {cfg.data.root} but the synth stage draws into {SYNTHETIC_ROOT}: set "
            f"data.root: {SYNTHETIC_ROOT} (or data.source: real for data of your own)"
        )
    for name in benchmarks:
        spec = get_spec(name)
        drawn = cfg.data.source == "synthetic" and spec.name in cfg.data.benchmarks
        if not drawn and not (project / spec.dataset_dir(cfg.data.root)).is_dir():
            problems.append(missing_benchmark(spec, cfg.data.root))
    return problems


def weights_problems(model: ModelConfig, project: Path) -> list[str]:
    """``model.pretrained`` naming a file (it has a suffix; a tag has none) must exist, unless
    it is the file the pretrain stage writes."""
    if not model.pretrained or not Path(model.pretrained).suffix:
        return []
    if Path(model.pretrained) == Path(PRETRAINED_WEIGHTS):  # the pretrain stage writes it
        return []
    if (project / model.pretrained).is_file():
        return []
    return [
        f"model.pretrained: weights file {model.pretrained} not found (relative paths start at "
        f"{project}): copy the file there, point model.pretrained at it, or set it to '' for "
        "random initial weights"
    ]


def batch_problems(
    cfg: Config, project: Path, benchmarks: Sequence[str], *, prepared: bool = True
) -> list[str]:
    """The batch against each benchmark's training identities: counted by the synth config
    where the data is still to be drawn, else (``prepared``) by the prepared stats."""
    problems = []
    for name in benchmarks:
        found = synthetic_identities(cfg, name)
        if found is None and prepared:
            found = prepared_identities(cfg, project / "data" / "prepared" / name)
        problem = batch_problem(cfg.train, found) if found is not None else None
        problems += [problem] if problem else []
    return problems


def problems(cfg: Config, project: Path, benchmarks: Sequence[str]) -> list[str]:
    """Everything that can be checked before any stage runs."""
    return [
        *data_problems(cfg, project, benchmarks),
        *weights_problems(cfg.model, project),
        *batch_problems(cfg, project, benchmarks),
    ]
