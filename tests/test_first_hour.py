"""What a newcomer meets in the first hour reads whole at 80 columns: `uit search` names every
result in full, with its identity where the gallery is a benchmark, and every `--help` shows
every flag and choice whole, without the docstrings' reStructuredText markup."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.core import TyperOption
from typer.testing import CliRunner

from tests.conftest import EVERY
from uit.app.cli import app
from uit.app.cli.serving import print_hits
from uit.app.report import RunResult, build_report, curves_plot, render_html
from uit.core.config import ReportConfig
from uit.data.prepared import read_manifests


def search(*args: object) -> str:
    result = CliRunner().invoke(app, ["search", *map(str, args)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def tab_rows(output: str) -> list[list[str]]:
    """The tab-separated lines of ``output`` (the count of gallery images goes to stderr, which
    the runner mixes in: it has no tab)."""
    return [line.split("\t") for line in output.splitlines() if "\t" in line]


def test_search_on_a_benchmark_prints_identity_and_whole_relative_names(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    output = search(trained["best"], "a man in a red coat", "--gallery", trained["prepared"],
                    "--top-k", "5", "--cache-dir", tmp_path, "--device", "cpu")  # fmt: skip
    header, *rows = tab_rows(output)
    assert header == ["rank", "score", "identity", "image"]
    test = read_manifests(trained["prepared"]).split("test")
    pid_of = dict(zip(test.images["path"].to_list(), test.images["pid"].to_list(), strict=True))
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    for _, _, identity, name in rows:
        assert pid_of[name] == int(identity)  # a whole name, relative to the gallery
        assert "…" not in name and (test.imgs_dir / name).is_file()


def test_search_on_a_folder_has_no_identity_column(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    output = search(trained["best"], "a man", "--gallery", trained["gallery"], "--top-k", "3",
                    "--cache-dir", tmp_path, "--device", "cpu")  # fmt: skip
    header, *rows = tab_rows(output)
    assert header == ["rank", "score", "image"] and len(rows) == 3
    assert all((trained["gallery"] / name).is_file() for _, _, name in rows)


def terminal_table(names: list[str]) -> str:
    rows = [(str(i + 1), "0.512", str(1000 + i), name) for i, name in enumerate(names)]
    out = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    print_hits("a woman in a red coat", ["rank", "score", "identity", "image"], rows, out)
    text: str = out.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines()), text
    return text


def test_on_an_80_column_terminal_names_are_whole() -> None:
    names = [f"people/cam{i}/{'x' * 20}_{i:04d}_file_name.png" for i in range(3)]  # 51 chars
    text = terminal_table(names)
    assert all(name in text for name in names), text  # each on one line
    assert "identity" in text and "1002" in text


def test_a_name_wider_than_the_terminal_folds_whole() -> None:
    name = "a/" + "0123456789" * 10 + ".png"
    lines = terminal_table([name]).splitlines()
    start = lines.index(next(line for line in lines if line.rstrip().endswith("image")))
    column = lines[start].index("image")  # the image column's left edge
    cells = [line[column:].strip() for line in lines[start + 2 :] if line.strip()]
    assert "".join(cells) == name, lines


@pytest.mark.parametrize("path, command", EVERY, ids=[" ".join(p) or "uit" for p, _ in EVERY])
def test_help_at_80_columns_shows_every_flag_and_choice_whole(path: tuple[str, ...],
                                                             command: Any) -> None:  # fmt: skip
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text and "``" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for param in command.params:
        if isinstance(param, TyperOption) and not param.hidden:
            for name in (*param.opts, *param.secondary_opts):
                assert re.search(rf"(^|[\s,/]){re.escape(name)}([\s,/]|$)", text, re.M), name
            descriptor = param.type_descriptor
            choices = (descriptor.choices or ()) if descriptor.is_choice else ()
            for choice in choices:
                assert str(getattr(choice, "value", choice)) in text, (param.name, choice)


def test_a_one_epoch_run_has_visible_curve_points() -> None:
    """One epoch is one point per curve, which a line without markers does not draw."""
    run = RunResult("cuhk-pedes", {}, [{"epoch": 1.0, "loss": 12.5, "R1": 30.0}], {})
    figure = curves_plot([run])
    lines = [line for axis in figure.axes for line in axis.get_lines()]
    assert len(lines) == 2 and all(len(line.get_xdata()) == 1 for line in lines)
    assert all(line.get_marker() not in (None, "", " ", "None") for line in lines)
    assert all(line.get_markersize() >= 3 and line.get_visible() for line in lines)


def test_the_report_shows_no_markdown_backticks() -> None:
    """The HTML sets `code` spans as code: a reader sees val, not `val`."""
    run = RunResult("cuhk-pedes", {"protocol": "val", "epoch": 1},
                    [{"epoch": 1.0, "loss": 12.5, "R1": 30.0}], {})  # fmt: skip
    page = render_html(build_report([run], ReportConfig(restorations=0, random_queries=0)))
    text = re.sub(r"data:[^'\"]+", "", page)  # the pictures' bytes are no prose
    assert "`" not in text
    assert "<code>val</code>" in text


def _git(cwd: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)  # fmt: skip


def test_the_report_header_names_commit_changed_params_and_date(tmp_path: Path) -> None:
    """The header says what built the page, when, from which commit, and which params differ
    from the commit's, so that a stale or modified report says so."""
    from uit.app.collect import read_provenance
    from uit.app.report import render_markdown

    repo = tmp_path / "repo"
    repo.mkdir()
    params = repo / "params.yaml"
    params.write_text("train:\n  epochs: 2\n  seed: 0\nloss:\n  cmt: 1.0\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "params.yaml")
    _git(repo, "commit", "-qm", "params")
    params.write_text("train:\n  epochs: 4\n  seed: 0\nloss:\n  cmt: 1.0\n")
    found = read_provenance(repo, params, "`uit report`")
    assert found.commit and found.uncommitted and found.changed_params == ["train.epochs: 2 -> 4"]
    run = RunResult("cuhk-pedes", {}, [{"epoch": 1.0, "loss": 12.5, "R1": 30.0}], {})
    report = build_report([run], ReportConfig(restorations=0, random_queries=0))
    report.provenance = found
    for page in (render_markdown(report), render_html(report)):
        assert found.commit in page and found.built_at in page
        assert "train.epochs: 2 -&gt; 4" in page or "train.epochs: 2 -> 4" in page
        assert "uncommitted changes" in page and "reports/pipeline/report.html" in page
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "metrics").mkdir()
    (repo / "metrics" / "cuhk-pedes.json").write_text("{}\n")
    _git(repo, "add", "dvc.lock", "metrics")
    _git(repo, "commit", "-qam", "four epochs")
    assert read_provenance(repo, params, "x").changed_params == []
    # what the pipeline writes itself (its lock, its metrics) is no uncommitted change
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "metrics" / "cuhk-pedes.json").write_text('{"R1": 1}\n')
    assert not read_provenance(repo, params, "x").uncommitted
    params.write_text(params.read_text() + "# a note\n")
    assert read_provenance(repo, params, "x").uncommitted
    inner = repo / "project"  # a DVC project in a folder of the repository
    inner.mkdir()
    (inner / "params.yaml").write_text("train:\n  epochs: 1\n")
    _git(repo, "add", "project/params.yaml")
    _git(repo, "commit", "-qm", "inner")
    (inner / "params.yaml").write_text("train:\n  epochs: 5\n")
    found = read_provenance(inner, inner / "params.yaml", "x")
    assert found.changed_params == ["train.epochs: 1 -> 5"]
    outside = tmp_path / "no-git"
    outside.mkdir()
    (outside / "params.yaml").write_text("train: {}\n")
    assert read_provenance(outside, outside / "params.yaml", "x").commit is None


def test_the_experiments_note_mentions_a_baseline_only_with_one() -> None:
    import polars as pl

    from uit.app.report import experiments_section

    plain = pl.DataFrame({"experiment": ["a"], "seeds": [1], "cuhk-pedes/R1": [1.0]})
    assert "baseline" not in experiments_section(plain)[1]
    compared = plain.with_columns(pl.lit(0.5).alias("cuhk-pedes/R1 delta"))
    markdown = experiments_section(compared)[1]
    assert "baseline" in markdown and "(+0.5)" in markdown


def test_flow_logs_name_paths_relative_to_the_project(tmp_path: Path) -> None:
    from uit.app.flows.pipeline import relative_paths

    line = f"saved {tmp_path.resolve()}/.dvc/tmp/exps/run/abc/reports/pipeline/report.html"
    assert relative_paths(line, str(tmp_path)) == (
        "saved .dvc/tmp/exps/run/abc/reports/pipeline/report.html"
    )
    sibling = f"{tmp_path.resolve()}-old/report.html and {tmp_path.resolve()}: done"
    assert (
        relative_paths(sibling, str(tmp_path))
        == f"{tmp_path.resolve()}-old/report.html and .: done"
    )
