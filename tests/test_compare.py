"""`uit compare` on real DVC experiments: a temporary repository whose one stage turns params
into metrics (no training), so experiments, seeds and the queue cost seconds."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import fake_pipeline
from tests.pipeline_repo import sh
from uit.app.cli import app
from uit.app.compare import METRICS, Experiment, compact_view, comparison
from uit.core.errors import UitError


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_pipeline(tmp_path_factory.mktemp("compare"))


def compare(repo: Path, *args: str, columns: int = 300) -> tuple[int, str]:
    env = {"COLUMNS": str(columns)}
    result = CliRunner().invoke(app, ["compare", "--project", str(repo), *args], env=env)
    return result.exit_code, result.output


def test_without_experiments_it_says_so_and_shows_the_commit(repo: Path) -> None:
    code, output = compare(repo)
    assert code == 0
    assert "No DVC experiments yet" in output
    assert "main" in output


def test_experiments_seeds_queue_deltas_and_outputs(repo: Path, tmp_path: Path) -> None:
    for seed in (1, 2):
        sh("dvc", "exp", "run", "-S", f"train.seed={seed}", "-n", f"seed-{seed}", cwd=repo)
    # exp run applies -S on top of the workspace, which holds the last experiment (seed 2)
    sh("dvc", "exp", "run", "-S", "loss.cmt=0", "-S", "train.seed=0", "-n", "no-cmt", cwd=repo)
    sh("dvc", "exp", "run", "--queue", "-S", "loss.cmt=5", "-n", "waiting", cwd=repo)

    code, output = compare(repo, "--json", "--no-group")
    rows = {row["experiment"]: row for row in json.loads(output)}
    assert {"main", "seed-1", "seed-2", "no-cmt", "waiting"} <= set(rows)
    assert rows["waiting"]["status"] == "queued" and rows["waiting"]["cuhk-pedes/R1"] is None
    assert rows["no-cmt"]["cuhk-pedes/R1"] == 20.0 and rows["seed-2"]["cuhk-pedes/R1"] == 32.0

    code, output = compare(repo, "--json", "--baseline", "no-cmt", "--sort", "R1")
    rows = json.loads(output)
    seeds = next(r for r in rows if r["seeds"] == 3)  # main (seed 0), seed-1, seed-2
    assert set(seeds["experiment"].split(", ")) == {"main", "seed-1", "seed-2"}
    assert seeds["cuhk-pedes/R1"] == pytest.approx(31.0)  # mean of 30, 31, 32
    assert seeds["cuhk-pedes/R1 std"] == pytest.approx(1.0)
    assert seeds["cuhk-pedes/R1 delta"] == pytest.approx(11.0)  # against no-cmt's 20
    ranked = [r["cuhk-pedes/R1"] for r in rows if r["cuhk-pedes/R1"] is not None]
    assert ranked == sorted(ranked, reverse=True)
    assert "loss.cmt" in rows[0] and "train.seed" not in rows[0]  # grouped away

    code, output = compare(repo, "--csv", "--benchmark", "rstpreid", "--metric", "R1")
    table = list(csv.DictReader(io.StringIO(output)))
    assert table and "rstpreid/R1" in table[0] and "cuhk-pedes/R1" not in table[0]

    plot = tmp_path / "r1.png"
    code, output = compare(repo, "--plot", str(plot), "--baseline", "no-cmt")
    assert code == 0 and plot.read_bytes().startswith(b"\x89PNG")
    assert "±" in output and "(+11.0)" in output  # the terminal table: mean ± std (delta)


def shown_metrics(output: str) -> list[str]:
    """The metrics the compact view shows: all but those its note says it left out."""
    note = next((line for line in output.splitlines() if line.startswith("Left out")), "")
    hidden = note.partition(": ")[2].partition(".")[0].split(", ") if note else []
    return [m for m in METRICS if m not in hidden]


# What the stage writes (STAGE), worked out by hand: R1 = 20 + loss.cmt + train.seed, so main
# (seed 0), seed-1 and seed-2 give 30, 31, 32 (mean 31, std 1, +11 from no-cmt's 20) and the
# workspace holds the last experiment run, no-cmt. icfg-pedes adds 7.25 and rstpreid -3.5; R5 is
# R1 + 30, R10 R1 + 40, mAP R1 / 2 and mINP R1 / 4. One decimal, halves to even: 38.25 -> 38.2,
# 7.75 -> 7.8, a std of 0.25 -> 0.2, a delta of 2.75 -> +2.8.
SEEDS = "main, seed-1, seed-2"
CELLS = {
    "cuhk-pedes": {
        "workspace": ["20.0 (+0.0)", "50.0 (+0.0)", "60.0 (+0.0)", "10.0 (+0.0)", "5.0 (+0.0)"],
        SEEDS: ["31.0 ± 1.0 (+11.0)", "61.0 ± 1.0 (+11.0)", "71.0 ± 1.0 (+11.0)",
                "15.5 ± 0.5 (+5.5)", "7.8 ± 0.2 (+2.8)"],
        "no-cmt": ["20.0 (+0.0)", "50.0 (+0.0)", "60.0 (+0.0)", "10.0 (+0.0)", "5.0 (+0.0)"],
    },
    "icfg-pedes": {
        "workspace": ["27.2 (+0.0)", "57.2 (+0.0)", "67.2 (+0.0)", "13.6 (+0.0)", "6.8 (+0.0)"],
        SEEDS: ["38.2 ± 1.0 (+11.0)", "68.2 ± 1.0 (+11.0)", "78.2 ± 1.0 (+11.0)",
                "19.1 ± 0.5 (+5.5)", "9.6 ± 0.2 (+2.8)"],
        "no-cmt": ["27.2 (+0.0)", "57.2 (+0.0)", "67.2 (+0.0)", "13.6 (+0.0)", "6.8 (+0.0)"],
    },
    "rstpreid": {
        "workspace": ["16.5 (+0.0)", "46.5 (+0.0)", "56.5 (+0.0)", "8.2 (+0.0)", "4.1 (+0.0)"],
        SEEDS: ["27.5 ± 1.0 (+11.0)", "57.5 ± 1.0 (+11.0)", "67.5 ± 1.0 (+11.0)",
                "13.8 ± 0.5 (+5.5)", "6.9 ± 0.2 (+2.8)"],
        "no-cmt": ["16.5 (+0.0)", "46.5 (+0.0)", "56.5 (+0.0)", "8.2 (+0.0)", "4.1 (+0.0)"],
    },
}  # fmt: skip


def expected_cells(benchmark: str, metrics: list[str]) -> dict[str, list[str]]:
    return {name: [cells[METRICS.index(m)] for m in metrics]
            for name, cells in CELLS[benchmark].items()}  # fmt: skip


def table_cells(output: str, benchmark: str) -> tuple[list[str], dict[str, list[str]]]:
    """The metric columns of ``benchmark``'s table in the terminal output and its rows, by
    experiment (names wrapped over lines joined, a seed group's sorted)."""
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if f"{benchmark} text-to-image" in line)
    header = next(i for i in range(first, len(lines)) if lines[i].startswith("┃"))
    columns = [c.strip() for c in lines[header].split("┃")[2:-1]]
    rows: dict[str, list[str]] = {}
    name = ""
    for line in lines[header + 2 :]:
        if line.startswith("└"):
            break
        first_cell, *cells = (c.strip() for c in line.split("│")[1:-1])
        if any(cells):
            name, rows[first_cell] = first_cell, cells
        else:  # the experiment's name goes on over this line
            rows[f"{name} {first_cell}"] = rows.pop(name)
            name = f"{name} {first_cell}"
    return columns, {", ".join(sorted(n.split(", "))): cells for n, cells in rows.items()}


@pytest.mark.parametrize("columns", [80, 120])
def test_the_compact_view_fits_the_terminal(repo: Path, columns: int) -> None:
    """3 benchmarks x 5 metrics, a seed group and deltas: nothing wider than the terminal, no
    number cut, every cell of the metrics shown as worked out by hand, and a note naming the
    others."""
    code, output = compare(repo, "--baseline", "no-cmt", columns=columns)
    assert code == 0, output
    assert max(map(len, output.splitlines())) <= columns
    assert "…" not in output
    shown = shown_metrics(output)
    assert shown[0] == "R1" and (len(shown) < len(METRICS)) == ("--wide" in output)
    for benchmark in CELLS:
        assert table_cells(output, benchmark) == (shown, expected_cells(benchmark, shown))
    assert "loss.cmt=0.0" in output or "loss.cmt=0" in output  # the params that differ


def test_chosen_metrics_all_show_at_80_columns(repo: Path) -> None:
    code, output = compare(repo, "--baseline", "no-cmt", "--metric", "mINP", "--metric", "R1",
                           "-b", "icfg-pedes", columns=80)  # fmt: skip
    assert code == 0 and "Left out" not in output and "…" not in output
    assert "cuhk-pedes" not in output and "icfg-pedes" in output
    # in the order asked for
    assert table_cells(output, "icfg-pedes") == (["mINP", "R1"], {
        "workspace": ["6.8 (+0.0)", "27.2 (+0.0)"],
        SEEDS: ["9.6 ± 0.2 (+2.8)", "38.2 ± 1.0 (+11.0)"],
        "no-cmt": ["6.8 (+0.0)", "27.2 (+0.0)"],
    })  # fmt: skip


def test_wide_is_the_one_table_of_everything(repo: Path) -> None:
    code, output = compare(repo, "--wide", "--baseline", "no-cmt")
    header = next(line for line in output.splitlines() if "cuhk-pedes" in line)
    assert code == 0 and header.count("cuhk-pedes") == len(METRICS)
    assert all(header.count(b) == len(METRICS) for b in ("icfg-pedes", "rstpreid"))


def test_bad_choices_are_messages(repo: Path) -> None:
    code, output = compare(repo, "--baseline", "nope")
    assert code == 1 and "baseline 'nope' is not among the experiments" in output
    code, output = compare(repo, "--sort", "nope")
    assert code == 1 and "cannot sort by 'nope'" in output
    code, output = compare(repo, "--benchmark", "nope")
    assert code == 2 and "nope" in output


def test_a_benchmark_without_metrics_is_named() -> None:
    only_rstpreid = Experiment("a", "commit", "done", {}, {"rstpreid": {"R1": 1.0}})
    with pytest.raises(UitError, match="no metrics for icfg-pedes"):
        comparison([only_rstpreid], benchmarks=["icfg-pedes"])


def titles_at(columns: int, experiments: list[Experiment], baseline: str | None) -> list[str]:
    """The title lines of the compact view's tables, rendered at ``columns``."""
    frame = comparison(experiments, benchmarks=["icfg-pedes"])
    view = compact_view(frame, ["icfg-pedes"], ["R1"], baseline, columns)
    out = Console(file=io.StringIO(), width=columns, color_system=None)
    for table in view.tables:
        out.print(table)
    lines = out.file.getvalue().splitlines()  # type: ignore[attr-defined]
    return [line.strip() for line in lines if "text-to-image" in line]


def test_mean_and_std_are_announced_only_where_seeds_are_grouped() -> None:
    one = [Experiment(name, "c", "done", {"loss.cmt": cmt}, {"icfg-pedes": {"R1": r1}})
           for name, cmt, r1 in (("no-cmt", 0, 30.0), ("cmt", 10, 31.5))]  # fmt: skip
    (title,) = titles_at(80, one, baseline="no-cmt")
    assert title == "icfg-pedes text-to-image test (%) (difference from no-cmt)"
    seeds = [Experiment(f"s{seed}", "c", "done", {"train.seed": seed},
                        {"icfg-pedes": {"R1": 30.0 + seed}}) for seed in (0, 1)]  # fmt: skip
    (title,) = titles_at(80, seeds, baseline=None)  # one line at 80 columns, not wrapped
    assert title == "icfg-pedes text-to-image test (%), mean ± std over seeds"
