"""Checks that run before anything trains: each finds what would otherwise fail late (after
other benchmarks trained for an hour, or deep inside the sampler) and says it in one line that
names the parameter or file and the fix. This module holds the checks of one prepared benchmark
(what training asks first); ``uit.app.flows.preflight`` checks a whole pipeline before it
starts.

Every check is a pure function of the parsed config and the project folder, returning the
problems it found (an empty list when all is well); ``check`` raises them as one error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uit.core.boundary import PREPARED, reading
from uit.core.config import Config, TrainConfig
from uit.core.errors import UitError
from uit.data.dataset import held_out_count
from uit.data.prepared import STATS_FILE, read_stats


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


def prepared_identities(cfg: Config, prepared_dir: Path) -> Identities | None:
    """The training identities recorded in a prepared benchmark's stats; ``None`` before the
    benchmark is prepared."""
    path = prepared_dir / STATS_FILE
    if not path.is_file():
        return None
    stats = read_stats(prepared_dir)  # a damaged file is one line naming it
    with reading(path, *PREPARED):  # and so is one of the wrong shape
        splits = stats["splits"]
        train_ids = int(splits["train"]["identities"])
        has_val = splits.get("val", {}).get("images", 0) > 0
        benchmark = str(stats["benchmark"])
    count = train_ids - held_out(train_ids, cfg.train, has_val)
    return Identities(benchmark, count, str(path))


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


def prepared_batch_problems(cfg: Config, prepared_dir: Path) -> list[str]:
    """The batch against one prepared benchmark (what its train stage checks first)."""
    found = prepared_identities(cfg, prepared_dir)
    problem = batch_problem(cfg.train, found) if found is not None else None
    return [problem] if problem else []


def check(found: Sequence[str]) -> None:
    """Raise the problems found, one line each."""
    if found:
        raise PreflightError("\n".join(found))
