"""Checks that run before anything trains: each finds what would otherwise fail late (after
other benchmarks trained for an hour, or deep inside the sampler) and says it in one line that
names the parameter or file and the fix.

Every check is a pure function of the parsed config and the project folder, returning the
problems it found (an empty list when all is well); ``check`` raises them as one error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uit.config import Config, ModelConfig, TrainConfig
from uit.data.dataset import held_out_count
from uit.data.formats import get_spec
from uit.data.readers import missing_benchmark
from uit.errors import UitError

STATS = "stats.json"  # what stage prepare writes beside the manifests


class PreflightError(UitError):
    """The configuration cannot train: one line per problem, each with its fix."""


@dataclass(frozen=True)
class Identities:
    """How many identities training will see, and where the count comes from."""

    benchmark: str
    count: int  # after the held-out ones are taken away
    source: str  # "synth.size tiny" or the stats file


def held_out(identities: int, train: TrainConfig, has_val: bool) -> int:
    """Identities the model selection takes from training (``uit.data.dataset``'s rule)."""
    if train.selection != "val" or has_val:
        return 0
    return held_out_count(identities, train.holdout_fraction)


def synthetic_identities(cfg: Config, benchmark: str) -> Identities | None:
    """The training identities of a benchmark that the synth stage will draw, from
    ``synth.size`` alone; ``None`` where the benchmark is not drawn."""
    spec = get_spec(benchmark)
    if cfg.data.source != "synthetic" or spec.folder not in cfg.synth.benchmarks:
        return None
    # Imported here: the train stage uses this module without the generator.
    from uit.data.synth.generate import SIZES

    train_ids, val_ids, _ = SIZES[cfg.synth.size][spec.name].identities
    has_val = "val" in spec.splits and val_ids > 0
    count = train_ids - held_out(train_ids, cfg.train, has_val)
    return Identities(spec.name, count, f"synth.size {cfg.synth.size}")


def prepared_identities(cfg: Config, prepared_dir: Path) -> Identities | None:
    """The training identities recorded in a prepared benchmark's stats; ``None`` before the
    benchmark is prepared."""
    path = prepared_dir / STATS
    if not path.is_file():
        return None
    stats = json.loads(path.read_text(encoding="utf-8"))
    splits = stats["splits"]
    train_ids = splits["train"]["identities"]
    has_val = splits.get("val", {}).get("images", 0) > 0
    count = train_ids - held_out(train_ids, cfg.train, has_val)
    return Identities(stats["benchmark"], count, str(path))


def batch_problem(train: TrainConfig, found: Identities) -> str | None:
    """The identity sampler's rule: a batch holds ``batch_size / instances_per_id`` distinct
    identities, so training needs at least that many."""
    needed = train.batch_size // train.instances_per_id
    if found.count >= needed:
        return None
    fitting = found.count * train.instances_per_id
    fix = (f"set train.batch_size to {fitting} or less (a multiple of train.instances_per_id)"
           if fitting > 0 else "give it more training identities")  # fmt: skip
    return (
        f"train.batch_size {train.batch_size} needs {needed} identities per batch "
        f"(train.instances_per_id {train.instances_per_id}); {found.benchmark} has "
        f"{found.count} training identities ({found.source}): {fix}"
    )


def data_problems(cfg: Config, project: Path, benchmarks: Sequence[str]) -> list[str]:
    """Each chosen benchmark that no stage draws must already be under ``data.root``."""
    problems = []
    for name in benchmarks:
        spec = get_spec(name)
        drawn = cfg.data.source == "synthetic" and spec.folder in cfg.synth.benchmarks
        if not drawn and not (project / spec.dataset_dir(cfg.data.root)).is_dir():
            problems.append(missing_benchmark(spec, cfg.data.root))
    return problems


def weights_problems(model: ModelConfig, project: Path) -> list[str]:
    """``model.pretrained`` naming a file (it has a suffix; a tag has none) must exist."""
    if not model.pretrained or not Path(model.pretrained).suffix:
        return []
    if (project / model.pretrained).is_file():
        return []
    return [
        f"model.pretrained: weights file {model.pretrained} not found (relative paths start at "
        f"{project}): copy the file there, point model.pretrained at it, or set it to '' for "
        "random initial weights"
    ]


def prepared_batch_problems(cfg: Config, prepared_dir: Path) -> list[str]:
    """The batch against one prepared benchmark (what its train stage checks first)."""
    found = prepared_identities(cfg, prepared_dir)
    problem = batch_problem(cfg.train, found) if found is not None else None
    return [problem] if problem else []


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


def check(found: Sequence[str]) -> None:
    """Raise the problems found, one line each."""
    if found:
        raise PreflightError("\n".join(found))
