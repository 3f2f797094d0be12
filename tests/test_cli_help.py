"""`uit --help` of every command reads well: click-style labels, every default shown, no help
text eaten as rich markup; `uit --version`; one `--benchmark/-b` option everywhere."""

from __future__ import annotations

import re
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.core import TyperOption
from typer.testing import CliRunner

from tests.conftest import EVERY
from uit.app.cli import app

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str, columns: int = 250) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def test_the_walk_sees_every_command() -> None:
    names = {" ".join(path) for path, _ in EVERY}
    assert {"", "train", "compare", "search", "data", "data prepare", "weights convert"} <= names


def shows_default(option: TyperOption) -> bool:
    """Whether help owes a default: a value, or a None whose meaning the option states. A lone
    switch (--json) is off unless given; there is nothing to show."""
    lone_switch = option.is_flag and not option.secondary_opts
    return isinstance(option.show_default, str) or (option.default is not None and not lone_switch)


@pytest.mark.parametrize("path, command", EVERY, ids=[" ".join(p) or "uit" for p, _ in EVERY])
def test_help_reads_well(path: tuple[str, ...], command: Any) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    for bad in ("<bool>", "<list", "<path>", "<int", "<str>", "{", "--no-no-"):
        assert bad not in result.output, f"{' '.join(path)} --help shows {bad}"
    lines = result.output.splitlines()
    for option in (p for p in command.params if isinstance(p, TyperOption)):
        line = next(line for line in lines if f" {option.opts[-1]} " in line)
        if option.help:  # written out whole: no [bracketed words] swallowed as markup
            assert " ".join(option.help.split()) in line, (option.opts, line)
        assert ("[default:" in line) == shows_default(option), (option.opts, line)


def test_arguments_and_values_are_named_like_click() -> None:
    output = invoke("search", "--help").output
    assert "Usage: root search [OPTIONS] CHECKPOINT QUERY" in output
    assert "--top-k" in output and "INTEGER" in output and "PATH" in output
    assert "--cache" in output and "--no-cache" in output and "[default: cache]" in output
    train = invoke("train", "--help").output
    assert "[default: (data/prepared/BENCHMARK)]" in train and "runs/adhoc/BENCHMARK" in train


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0 and result.output.strip() == f"uit {version('uit')}"


def test_benchmark_option_is_the_same_in_prepare_and_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    prepare = ("data", "prepare", "--root", "raw", "--out", "out")
    for command in (prepare, ("train",)):
        for flag in ("--benchmark", "-b"):
            bad = invoke(*command, flag, "nope")
            assert bad.exit_code == 2 and "'nope' is not one of" in bad.output
            assert "cuhk-pedes" in bad.output and "rstpreid" in bad.output
    prepared = invoke(*prepare, "-b", "rstpreid", columns=400)
    assert prepared.exit_code == 1 and str(Path("raw/RSTPReid")) in prepared.output
    trained = invoke("train", "-b", "rstpreid", columns=400)
    assert trained.exit_code == 1  # the default folders of the benchmark it was given
    assert re.search(r"data/(prepared|parsed)/rstpreid", trained.output), trained.output
