"""Compare experiments: ``dvc exp show --json`` rows -> one table of the params that differ and
each benchmark's in-domain test metrics, with seed groups (mean and std) and deltas against a
baseline. ``read_experiments`` asks git and DVC; the rest is pure transforms and rich tables, and
the CLI prints.

The terminal gets a compact view that fits its width: the experiments with the params that differ,
then one table per benchmark (experiments as rows, metrics as columns). Metric columns that do not
fit are left out whole, never cut; ``wide_table`` is everything in one table."""

from __future__ import annotations

import io
import math
import reprlib
import statistics
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.table import Table

from uit.core.config import BENCHMARKS
from uit.core.errors import UitError
from uit.retrieval.metrics import METRICS

SEED = "train.seed"
FIXED = ("experiment", "status", "seeds")  # the comparison's columns that are not params
COLUMN_FRAME = 3  # what a rich table adds to each column: one space either side and a border
NAME_WIDTH = (10, 24)  # the experiment column keeps at least its longest word, within these


@dataclass(frozen=True)
class Experiment:
    """One row of ``dvc exp show``: the workspace, a commit or branch, or an experiment."""

    name: str
    kind: str  # workspace | commit | experiment
    status: str  # done | queued | running | failed
    params: dict[str, Any]  # dotted keys of params.yaml
    metrics: dict[str, dict[str, float]]  # trained-on benchmark -> in-domain text-to-image
    left_out: tuple[str, ...] = ()  # metrics files that could not be read, each with why


@dataclass
class Group:
    """Experiments that differ only by seed (or a single experiment)."""

    names: list[str]
    status: str
    params: dict[str, Any]
    values: dict[str, list[float]] = field(default_factory=dict)  # "bench/metric" -> per seed


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def percent_problem(value: Any) -> str | None:
    """Why ``value`` is not a retrieval metric (R@k, mAP, mINP: a number within 0..100), or
    ``None`` when it is one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{_short(value)} is not a number"
    if not math.isfinite(value) or not 0 <= value <= 100:
        return f"{value!r} is not a percentage within 0..100"
    return None


def _short(value: Any) -> str:
    return reprlib.repr(value)


def _in_domain(metrics: Mapping[str, Any]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """``metrics/B.json`` files -> {B: t2i metrics of the model trained and tested on B}, and
    the files left out, each with why. A file not written yet is no metrics, not a problem."""
    result, left_out = {}, []
    for path, content in metrics.items():
        benchmark = path.removeprefix("metrics/").removesuffix(".json")
        if f"metrics/{benchmark}.json" != path or benchmark not in BENCHMARKS:
            continue  # another metrics file (metrics/pretrain.json)
        try:
            t2i = _t2i(content, benchmark)
        except ValueError as why:
            left_out.append(f"{path} ({why})")
            continue
        if t2i is not None:
            result[benchmark] = t2i
    return result, left_out


def _t2i(content: Any, benchmark: str) -> dict[str, float] | None:
    """The in-domain text-to-image metrics of one metrics file as ``dvc exp show`` gives it;
    ``None`` for a file that does not exist (yet); ``ValueError`` saying what is wrong."""
    error = content.get("error") if isinstance(content, Mapping) else None
    if isinstance(error, Mapping) and error.get("type") == "FileNotFoundError":
        return None
    if error:
        why = error.get("msg") if isinstance(error, Mapping) else error
        raise ValueError(f"DVC could not read it: {' '.join(str(why).split())}")
    data = content.get("data") if isinstance(content, Mapping) else None
    tested = data.get(benchmark) if isinstance(data, Mapping) else None
    t2i = tested.get("t2i") if isinstance(tested, Mapping) else None
    if not isinstance(t2i, Mapping):
        raise ValueError(f"no {benchmark}.t2i mapping of metrics, as the evaluate stage writes")
    for metric in METRICS:
        problem = percent_problem(t2i[metric]) if metric in t2i else None
        if problem:
            raise ValueError(f"{benchmark}.t2i.{metric}: {problem}")
    return {m: float(t2i[m]) for m in METRICS if m in t2i}


def _experiment(entry: Mapping[str, Any], name: str, kind: str, status: str) -> Experiment:
    data = entry.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics, left_out = _in_domain(data.get("metrics") or {})
    return Experiment(name, kind, status, flatten(params), metrics, tuple(left_out))


def read_exp_show(rows: Sequence[Mapping[str, Any]]) -> list[Experiment]:
    """Parse the JSON of ``dvc exp show --json`` (DVC 3) into experiments, in its order."""
    if not isinstance(rows, Sequence):
        raise UitError("dvc exp show --json did not return a list of commits")
    experiments = []
    for commit in rows:
        rev = str(commit.get("rev", "?"))
        kind = "workspace" if rev == "workspace" else "commit"
        name = commit.get("name") or (rev if kind == "workspace" else rev[:7])
        experiments.append(
            _experiment(commit, name, kind, "failed" if commit.get("error") else "done")
        )
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state") or "done"
            status = {"success": "done"}.get(state, state)
            for rev_entry in exp.get("revs") or []:
                label = exp.get("name") or rev_entry.get("name") or str(rev_entry.get("rev"))[:7]
                experiments.append(_experiment(rev_entry, label, "experiment", status))
    return experiments


def read_experiments(project: str | Path) -> list[Experiment]:
    """Every experiment of ``project`` as ``dvc exp show --all-branches`` lists them. Refused,
    naming each and its fix, while an experiment's git ref points at nothing: DVC then lists no
    experiments at all, or fails with only the missing commit's hash."""
    from uit.app.dvc import dvc_json

    broken = broken_experiment_refs(project)
    if broken:
        raise UitError(" ".join(broken))
    return read_exp_show(dvc_json(["exp", "show", "--all-branches"], project))


def broken_experiment_refs(project: str | Path) -> list[str]:
    """One sentence per experiment ref (``refs/exps/...``) of ``project``'s git repository that
    names a missing commit or holds no commit hash, with the command that removes it."""
    listed = _git(project, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps")
    if listed is None:  # no git, or not a repository: DVC says so
        return []
    pairs = (line.split(" ", 1) for line in listed.stdout.splitlines())
    commits = {ref: sha for ref, sha in pairs if _is_experiment_ref(ref)}
    missing = _missing_objects(project, commits.values())
    broken = {ref: f"points at commit {sha[:7]}, which is not in the repository"
              for ref, sha in commits.items() if sha in missing}  # fmt: skip
    for line in listed.stderr.splitlines():  # git skips a ref that holds no hash, and warns
        ref = line.rsplit(" ", 1)[-1]
        if "ignoring broken ref" in line and _is_experiment_ref(ref):
            broken[ref] = "holds no commit hash"
    return [
        f"The experiment ref {ref} {why}; remove it with `dvc exp remove "
        f"{ref.rsplit('/', 1)[-1]}` (or `git update-ref -d {ref}`)."
        for ref, why in broken.items()
    ]


def _missing_objects(project: str | Path, shas: Iterable[str]) -> set[str]:
    found = _git(project, "cat-file", "--batch-check", stdin="".join(f"{s}\n" for s in shas))
    lines = found.stdout.splitlines() if found is not None else []
    return {line.split()[0] for line in lines if line.endswith(" missing")}


def _is_experiment_ref(ref: str) -> bool:
    """``refs/exps/AB/CDEF.../NAME``: not DVC's own bookkeeping (``refs/exps/exec/...``)."""
    parts = ref.split("/")
    return len(parts) == 5 and parts[:2] == ["refs", "exps"] and parts[2] != "exec"


def _git(
    project: str | Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str] | None:
    """What ``git ARGS`` printed in ``project``; ``None`` where git is absent or failed."""
    try:
        done = subprocess.run(["git", *args], cwd=project, input=stdin, capture_output=True,
                              text=True)  # fmt: skip
    except OSError:
        return None
    return done if done.returncode == 0 else None


def _norm(value: Any) -> str:
    """Equal values compare equal across YAML spellings (``0`` and ``0.0``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


def differing_params(experiments: Iterable[Experiment], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted params whose value is not the same in every experiment."""
    experiments, ignored = list(experiments), set(ignore)
    keys = sorted({k for e in experiments for k in e.params} - ignored)
    return [k for k in keys if len({_norm(e.params.get(k)) for e in experiments}) > 1]


def group_seeds(experiments: Sequence[Experiment], by_seed: bool = True) -> list[Group]:
    """Experiments whose params are equal except ``train.seed`` (and whose seeds differ) form
    one group; the workspace beside the experiment it holds stays two rows."""
    groups: list[tuple[str, set[Any], Group]] = []
    for exp in experiments:
        key = repr(sorted((k, _norm(v)) for k, v in exp.params.items() if k != SEED))
        seed = exp.params.get(SEED)
        target = next((g for k, seeds, g in groups if by_seed and k == key and seed not in seeds),
                      None)  # fmt: skip
        if target is None:
            target = Group([], exp.status, exp.params)
            groups.append((key, set(), target))
        next(seeds for _, seeds, g in groups if g is target).add(seed)
        target.names.append(exp.name)
        for benchmark, values in exp.metrics.items():
            for metric, value in values.items():
                target.values.setdefault(f"{benchmark}/{metric}", []).append(value)
    return [group for _, _, group in groups]


def comparison(
    experiments: Sequence[Experiment],
    *,
    benchmarks: Sequence[str] = (),
    metrics: Sequence[str] = METRICS,
    baseline: str | None = None,
    sort: str | None = None,
    group: bool = True,
) -> pl.DataFrame:
    """One row per experiment (or seed group): differing params, then per benchmark and metric
    the mean (``B/M``), its standard deviation over seeds (``B/M std``) and, with a baseline,
    the difference from it (``B/M delta``)."""
    if not experiments:
        raise UitError("no experiments to compare")
    groups = group_seeds(experiments, by_seed=group)
    params = differing_params(experiments, ignore=[SEED] if group else [])
    found = sorted({key.split("/")[0] for g in groups for key in g.values})
    chosen = list(benchmarks) or found
    unknown = [b for b in chosen if b not in found]
    if unknown:
        raise UitError(f"no metrics for {', '.join(unknown)}; benchmarks with metrics: {found}")
    odd = [m for m in metrics if m not in METRICS]
    if odd:
        raise UitError(f"unknown metric {', '.join(map(repr, odd))}: choose from {list(METRICS)}")
    rows = [_row(g, params, chosen, metrics) for g in groups]
    frame = pl.DataFrame(rows, infer_schema_length=None)
    if baseline is not None:
        frame = _with_deltas(frame, baseline, chosen, metrics)
    if sort:
        column = sort if "/" in sort else f"{chosen[0]}/{sort}"
        if column not in frame.columns:
            raise UitError(
                f"cannot sort by {sort!r}: choose one of {list(metrics)} or BENCHMARK/METRIC"
            )
        frame = frame.sort(column, descending=True, nulls_last=True)
    return frame


def _row(
    group: Group, params: list[str], benchmarks: Sequence[str], metrics: Sequence[str]
) -> dict[str, Any]:
    row: dict[str, Any] = {"experiment": ", ".join(group.names), "status": group.status,
                           "seeds": len(group.names)}  # fmt: skip
    row.update({key: _cell(group.params.get(key)) for key in params})
    for benchmark in benchmarks:
        for metric in metrics:
            values = group.values.get(f"{benchmark}/{metric}", [])
            row[f"{benchmark}/{metric}"] = statistics.fmean(values) if values else None
            row[f"{benchmark}/{metric} std"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def _cell(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _with_deltas(
    frame: pl.DataFrame, baseline: str, benchmarks: Sequence[str], metrics: Sequence[str]
) -> pl.DataFrame:
    matches = frame.filter(pl.col("experiment").str.split(", ").list.contains(baseline))
    if matches.height == 0:
        names = ", ".join(frame["experiment"].to_list())
        raise UitError(f"baseline {baseline!r} is not among the experiments ({names})")
    base = matches.row(0, named=True)
    columns = [f"{b}/{m}" for b in benchmarks for m in metrics]
    if all(base[c] is None for c in columns):
        raise UitError(
            f"baseline {baseline!r} ({base['status']}) has no metrics to compare against: "
            "choose an experiment that has"
        )
    return frame.with_columns(
        (pl.col(c) - base[c]).alias(f"{c} delta") for c in columns if base[c] is not None
    )


def format_cell(row: Mapping[str, Any], column: str) -> str:
    """``mean ± std (+delta)`` of one metric column of a comparison row; ``-`` when absent."""
    if row.get(column) is None:
        return "-"
    text = f"{row[column]:.1f}"
    if row.get(f"{column} std") is not None:
        text += f" ± {row[f'{column} std']:.1f}"
    if row.get(f"{column} delta") is not None:
        text += f" ({row[f'{column} delta']:+.1f})"
    return text


def _title(benchmark: str | None, baseline: str | None, several_seeds: bool) -> str:
    """What a metrics table holds; "mean ± std" only where a row groups several seeds."""
    title = f"{benchmark} text-to-image test (%)" if benchmark else "text-to-image test (%)"
    title += ", mean ± std over seeds" if several_seeds else ""
    return title + (f" (difference from {baseline})" if baseline else "")


def _titled(title: str) -> Table:
    """A table at least as wide as its title, so that the title stays on one line (up to the
    terminal's width) above a table of one or two narrow columns."""
    return Table(title=title, min_width=len(title))


def _grouped(rows: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any row is a group of seeds (it has a standard deviation)."""
    return any(k.endswith(" std") and v is not None for row in rows for k, v in row.items())


def param_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if "/" not in c and c not in FIXED]


def wide_table(frame: pl.DataFrame, benchmarks: Sequence[str], metrics: Sequence[str],
               baseline: str | None) -> Table:  # fmt: skip
    """Everything in one table: a column per param and per benchmark and metric."""
    params = param_columns(frame)
    table = _titled(_title(None, baseline, _grouped(frame.to_dicts())))
    for column in (*FIXED, *params):
        table.add_column(column)
    for b in benchmarks:
        for m in metrics:
            table.add_column(f"{b}\n{m}", justify="right")
    for row in frame.to_dicts():
        cells = [str(row[c]) for c in (*FIXED, *params)]
        cells += [format_cell(row, f"{b}/{m}") for b in benchmarks for m in metrics]
        table.add_row(*cells)
    return table


@dataclass(frozen=True)
class CompactView:
    """What the terminal shows by default: ``tables`` fit the width; ``hidden`` metrics did not."""

    tables: list[Table]
    hidden: list[str]


def compact_view(frame: pl.DataFrame, benchmarks: Sequence[str], metrics: Sequence[str],
                 baseline: str | None, width: int) -> CompactView:  # fmt: skip
    """The experiments and the params that differ, then one table per benchmark with as many
    of ``metrics`` (in order, the first always) as fit ``width`` columns uncut."""
    rows = frame.to_dicts()
    cells = {b: _benchmark_cells(rows, b, metrics) for b in benchmarks}
    names = [name for table in cells.values() for name in table]
    shown = _metrics_that_fit(cells, metrics, width - _name_width(names) - COLUMN_FRAME - 1)
    tables = [experiments_table(frame)]
    seeds = _grouped(rows)
    tables += [_benchmark_table(b, cells[b], shown, baseline, seeds) for b in benchmarks
               if cells[b]]  # fmt: skip
    return CompactView(tables, [m for m in metrics if m not in shown])


def experiments_table(frame: pl.DataFrame) -> Table:
    """One row per experiment (or seed group): its status, seeds and the params that differ."""
    params = param_columns(frame)
    table = Table(title="experiments" + (" and the params that differ" if params else ""))
    for column in FIXED:
        table.add_column(column, overflow="fold", justify="right" if column == "seeds" else "left")
    if params:
        table.add_column("params", overflow="fold")
    for row in frame.to_dicts():
        changed = [f"{key}={row[key]}" for key in params]
        table.add_row(*(str(row[c]) for c in FIXED), *([", ".join(changed)] if params else []))
    return table


def _benchmark_cells(rows: list[dict[str, Any]], benchmark: str,
                     metrics: Sequence[str]) -> dict[str, dict[str, str]]:  # fmt: skip
    """experiment -> metric -> its text, for the experiments with a value on ``benchmark``."""
    return {
        row["experiment"]: {m: format_cell(row, f"{benchmark}/{m}") for m in metrics}
        for row in rows
        if any(row.get(f"{benchmark}/{m}") is not None for m in metrics)
    }


def _name_width(names: Sequence[str]) -> int:
    longest_word = max((len(word) for name in names for word in name.split()), default=0)
    return max(NAME_WIDTH[0], min(longest_word, NAME_WIDTH[1]))


def _metrics_that_fit(cells: Mapping[str, Mapping[str, Mapping[str, str]]],
                      metrics: Sequence[str], room: int) -> list[str]:  # fmt: skip
    """The metrics, in order, whose columns fit in ``room`` in every benchmark's table."""
    shown: list[str] = []
    for metric in metrics:
        texts = [row[metric] for table in cells.values() for row in table.values()]
        need = max([len(metric), *map(len, texts)]) + COLUMN_FRAME
        if shown and need > room:
            break
        shown.append(metric)
        room -= need
    return shown


def _benchmark_table(benchmark: str, cells: Mapping[str, Mapping[str, str]],
                     metrics: Sequence[str], baseline: str | None,
                     several_seeds: bool) -> Table:  # fmt: skip
    table = _titled(_title(benchmark, baseline, several_seeds))
    table.add_column("experiment", overflow="fold")
    for metric in metrics:
        table.add_column(metric, justify="right", no_wrap=True)
    for name, values in cells.items():
        table.add_row(name, *(values[m] for m in metrics))
    return table


def to_csv(frame: pl.DataFrame) -> str:
    buffer = io.StringIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def plot_comparison(frame: pl.DataFrame, metric: str, benchmarks: Sequence[str]) -> bytes:
    """A PNG bar chart: ``metric`` per experiment (bars) and benchmark (groups), std as whiskers."""
    from uit.app.plotting import png, pyplot

    plt = pyplot()

    names = frame["experiment"].to_list()
    width = 0.8 / max(len(names), 1)
    fig, axis = plt.subplots(
        figsize=(max(6, 1.6 * len(benchmarks) * max(len(names), 2) / 2), 3.6), dpi=110
    )
    for i, name in enumerate(names):
        means = [frame[f"{b}/{metric}"][i] or 0.0 for b in benchmarks]
        stds = [frame[f"{b}/{metric} std"][i] or 0.0 for b in benchmarks]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(benchmarks))]
        axis.bar(xs, means, width, yerr=stds, capsize=3, label=name[:40])
    axis.set_xticks(range(len(benchmarks)), list(benchmarks))
    axis.set_ylabel(f"{metric} (%)")
    axis.set_title(f"text-to-image {metric} per experiment (mean and std over seeds)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return png(fig)
