"""Collecting a pipeline's results for the report: the train stage's run folders (curves,
selection) and the evaluate stage's metrics files, read and checked (a damaged file is named,
with the stage that rewrites it), and where the report comes from (commit, params, date).
Rendering them is ``uit.app.report``'s."""

from __future__ import annotations

import csv
import json
import math
import reprlib
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from uit.app.compare import flatten
from uit.core.config import parse_yaml
from uit.core.errors import DataError, UitError
from uit.retrieval.metrics import METRICS


@dataclass
class RunResult:
    """One trained model: its selection summary, training curves and test metrics."""

    benchmark: str
    selection: dict[str, Any]
    curves: list[dict[str, float]]
    # test benchmark -> {"t2i": ..., "i2t": ...}; in-domain also "zero_shot", "restoration"
    tests: dict[str, dict[str, Any]]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the train and evaluate stages first") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); not a JSON file") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be a file uit wrote") from None


PROTOCOLS = ("val", "heldout", "test", "last")  # how training names its model selection


def _fix(path: Path, stage: str, benchmark: str) -> str:
    """How to get back the file ``stage`` wrote for ``benchmark``."""
    return (f"restore it with `git checkout -- {path}`, or write it again with "
            f"`dvc repro --force {stage}@{benchmark}`")  # fmt: skip


def read_curves(path: Path) -> list[dict[str, float]]:
    """``curves.csv`` as one dict per epoch (empty cells, e.g. epochs not evaluated, dropped).
    Refused, naming the file, line and column, unless it is comma-separated with an ``epoch``
    column, and every cell is a number (every epoch a whole one from 1)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return _curves(csv.reader(handle))
    except (ValueError, csv.Error) as why:  # UnicodeDecodeError is a ValueError
        raise DataError(f"{path}: {why}; {_fix(path, 'train', path.parent.name)}") from None


def _curves(reader: Any) -> list[dict[str, float]]:
    header: list[str] = next(reader, [])
    if "epoch" not in header:
        raise ValueError(f"no epoch column in the header {_short(','.join(header))}; "
                         "curves.csv is comma-separated, as training writes it")  # fmt: skip
    curves = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"line {reader.line_num} has {len(row)} cells, the header "
                             f"{len(header)}")  # fmt: skip
        curves.append({column: _number(cell, column, reader.line_num)
                       for column, cell in zip(header, row, strict=True) if cell})  # fmt: skip
        epoch = curves[-1].get("epoch")
        if epoch is None or epoch < 1 or not epoch.is_integer():
            got = "empty" if epoch is None else f"{epoch!r}"
            raise ValueError(f"line {reader.line_num}, column epoch: {got}, not an epoch (a whole "
                             "number from 1)")  # fmt: skip
    return curves


def _number(cell: str, column: str, line: int) -> float:
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"line {line}, column {column}: {_short(cell)} is not a number") from None


def _short(value: Any) -> str:
    return reprlib.repr(value)


def read_selection(path: Path, benchmark: str, curves: Sequence[Mapping[str, float]]) -> Any:
    """``selection.json``, the train stage's summary of its model selection. Refused, naming
    the file and key, unless the protocol is known, ``best_epoch`` is an epoch of the run (of
    ``curves``, where there are curves) and the scores are percentages."""
    selection = _read_json(path)
    try:
        _check_selection(selection, int(max((row["epoch"] for row in curves), default=0)))
    except ValueError as why:
        raise DataError(f"{path}: {why}; {_fix(path, 'train', benchmark)}") from None
    return selection


def _check_selection(selection: Any, last_epoch: int) -> None:
    _check_mapping(selection, "the file", "protocol, optimistic, best_epoch, R1, mAP")
    if selection.get("protocol") not in PROTOCOLS:
        raise ValueError(f"protocol is {_short(selection.get('protocol'))}, not one of "
                         f"{', '.join(PROTOCOLS)}")  # fmt: skip
    if not isinstance(selection.get("optimistic", False), bool):
        raise ValueError(f"optimistic is {_short(selection['optimistic'])}, not true or false")
    best, highest = selection.get("best_epoch"), last_epoch or math.inf  # no curves: from 1
    if isinstance(best, bool) or not isinstance(best, int) or not 1 <= best <= highest:
        epochs = f"1 to {last_epoch}, from curves.csv" if last_epoch else "from 1"
        raise ValueError(f"best_epoch is {_short(best)}, not an epoch of the run ({epochs})")
    _check_percentages(selection, "", ("R1", "mAP"))


def read_metrics(path: Path, benchmark: str) -> Any:
    """``metrics/B.json``, the evaluate stage's file: per test benchmark, its text-to-image
    and image-to-text metrics; beside ``benchmark``'s own, zero-shot and restoration scores.
    Refused, naming the file and key, unless every metric is a percentage."""
    tests = _read_json(path)
    try:
        _check_metrics(tests, benchmark)
    except ValueError as why:
        raise DataError(f"{path}: {why}; {_fix(path, 'evaluate', benchmark)}") from None
    return tests


def _check_metrics(tests: Any, benchmark: str) -> None:
    _check_mapping(tests, "the file", "test benchmark -> metrics")
    if benchmark not in tests:
        raise ValueError(f"no entry for {benchmark}, the benchmark the model was trained on")
    for test, scores in tests.items():
        _check_mapping(scores, test, "t2i, i2t")
        if "t2i" not in scores:
            raise ValueError(f"{test} has no t2i metrics")
        _check_directions(scores, test)
        if "zero_shot" in scores:
            _check_mapping(scores["zero_shot"], f"{test}.zero_shot", "from, t2i, i2t")
            _check_directions(scores["zero_shot"], f"{test}.zero_shot")
        if "restoration" in scores:
            _check_restoration(scores["restoration"], f"{test}.restoration")
        _check_diagnostics(scores, test)


def _check_diagnostics(scores: Mapping[str, Any], test: str) -> None:
    """``binding`` (per kind a score in percent and a count of pairs) and ``lookalike`` (R1
    and its chance in percent)."""
    binding = scores.get("binding", {})
    _check_mapping(binding, f"{test}.binding", "kind -> score, pairs")
    for kind, row in binding.items():
        _check_mapping(row, f"{test}.binding.{kind}", "score, pairs")
        _check_percentages(row, f"{test}.binding.{kind}.", ("score",))
    if "lookalike" in scores:
        _check_mapping(scores["lookalike"], f"{test}.lookalike", "R1, chance, margin, queries")
        _check_percentages(scores["lookalike"], f"{test}.lookalike.", ("R1", "chance"))


def _check_mapping(value: Any, key: str, holds: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} is {_short(value)}, not a mapping ({holds})")


def _check_directions(scores: Mapping[str, Any], key: str) -> None:
    for direction in ("t2i", "i2t"):
        if direction in scores:
            _check_mapping(scores[direction], f"{key}.{direction}", ", ".join(METRICS))
            _check_percentages(scores[direction], f"{key}.{direction}.", METRICS)


def _check_percentages(values: Mapping[str, Any], prefix: str, names: Sequence[str]) -> None:
    from uit.app.compare import percent_problem

    for name in names:
        problem = percent_problem(values[name]) if name in values else None
        if problem:
            raise ValueError(f"{prefix}{name}: {problem}")


def _check_restoration(scores: Any, key: str) -> None:
    """Colour errors (0-255 per channel) and a count of patches."""
    _check_mapping(scores, key, "tir, tir_other, grayscale, mean_colour, patches")
    for name in ("tir", "tir_other", "grayscale", "mean_colour", "patches"):
        value = scores.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}.{name}: {_short(value)} is not a number")
        limit = math.inf if name == "patches" else 255
        if not math.isfinite(value) or not 0 <= value <= limit:
            within = "a count, from 0" if name == "patches" else "a colour error, 0 to 255"
            raise ValueError(f"{key}.{name}: {value!r} is not {within}")


def read_results(runs_dir: str | Path, metrics_dir: str | Path) -> list[RunResult]:
    """Every trained model under ``runs_dir`` that has a metrics file in ``metrics_dir``."""
    runs_dir, metrics_dir = Path(runs_dir), Path(metrics_dir)
    results = []
    for metrics_file in sorted(metrics_dir.glob("*.json")):
        name = metrics_file.stem
        if name == "pretrain":  # the pretrain stage's own held-out scores, not a trained model
            continue
        run = runs_dir / name
        curves = read_curves(run / "curves.csv") if (run / "curves.csv").is_file() else []
        selection = read_selection(run / "selection.json", name, curves)
        results.append(RunResult(name, selection, curves, read_metrics(metrics_file, name)))
    if not results:
        raise DataError(f"{metrics_dir}: no metrics files; run the evaluate stage first")
    return results


@dataclass(frozen=True)
class Provenance:
    """Where a report comes from: what built it and when, the commit, and the params that
    differ from the commit's (``key: committed -> used``)."""

    built_by: str
    built_at: str  # UTC, to the minute
    commit: str | None = None  # short hash; None outside a git repository
    uncommitted: bool = False  # tracked files differ from the commit
    changed_params: list[str] = field(default_factory=list)


def read_provenance(project: str | Path, params_file: str | Path, built_by: str) -> Provenance:
    """The provenance of a report built now in ``project`` with ``params_file``. Git is asked
    for the commit and the committed params; without git (or a repository) the commit is None
    and no params are compared."""
    project, params_file = Path(project), Path(params_file)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True,
                                  timeout=30, check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return Provenance(built_by, now)
    # what the pipeline writes itself (its lock, its metrics) is no change of the user's
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 ":(exclude)dvc.lock", ":(exclude)metrics") or ""  # fmt: skip
    changed: list[str] = []
    try:
        relative = params_file.resolve().relative_to(project.resolve())
        # ./: relative to the project, which may be a folder inside the git repository
        committed = git("show", f"HEAD:./{relative.as_posix()}")
        if committed is not None:
            used = parse_yaml(params_file.read_text(encoding="utf-8"), params_file) or {}
            before = flatten(parse_yaml(committed, f"HEAD:{relative.as_posix()}") or {})
            after = flatten(used)
            changed = [f"{key}: {before.get(key, '(none)')} -> {after.get(key, '(none)')}"
                       for key in sorted(before.keys() | after.keys())
                       if before.get(key) != after.get(key)]  # fmt: skip
    except (ValueError, OSError, UitError):  # params outside the project, or unreadable
        changed = []
    return Provenance(built_by, now, commit.strip(), bool(status.strip()), changed)
