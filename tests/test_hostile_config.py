"""Config, profiles, `uit compare` and `uit report` against hostile input: a key written twice,
YAML nested thousands deep, a symlinked or CRLF params file, broken metrics files, dangling
experiment refs, an empty benchmark list. Each ends in one line that names the file, key or
experiment and the fix, and nothing is silently dropped or changed."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import fake_pipeline
from tests.pipeline_repo import ROOT, sh
from uit.app.cli import app
from uit.app.cli.results import _experiment_frame
from uit.app.collect import read_results
from uit.app.compare import Experiment, comparison, read_exp_show
from uit.core.config import BENCHMARKS, MAX_YAML_DEPTH, load_config
from uit.core.errors import ConfigError, DataError, UitError

PROFILES = ROOT / "profiles"
DEEP = "[" * 5000 + "]" * 5000  # what once ran Python out of stack (RecursionError)


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def one_line(*args: object) -> str:
    """Run the CLI, expect exit code 1 and exactly one line of output, no traceback."""
    result = cli(*args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# --- 1. a key written twice -------------------------------------------------------------------


def test_a_section_written_twice_is_refused_not_merged(params: Path) -> None:
    committed = params.read_text()
    first = committed.splitlines().index("train:") + 1
    params.write_text(committed + "\ntrain:\n  epochs: 5\n")
    second = len(committed.splitlines()) + 2
    with pytest.raises(ConfigError) as raised:
        load_config(params)
    message = str(raised.value)
    assert message.startswith(f"{params} line {second}, column 1: not valid YAML")
    assert f'duplicate key "train" (first on line {first})' in message and "\n" not in message
    before = params.read_bytes()
    line = one_line("profile", "paper", "--params", params, "--profiles", PROFILES)
    assert f'{params} line {second}, column 1: not valid YAML: duplicate key "train"' in line
    assert params.read_bytes() == before


def test_a_key_written_twice_is_refused_in_a_profile_and_an_override(
    params: Path, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "twice.yaml").write_text("train:\n  epochs: 1\n  epochs: 2\n")
    before = params.read_bytes()
    line = one_line("profile", "twice", "--params", params, "--profiles", profiles)
    assert f"{profiles / 'twice.yaml'} line 3, column 3" in line
    assert 'duplicate key "epochs" in train (first on line 2)' in line
    assert params.read_bytes() == before
    with pytest.raises(ConfigError, match='duplicate key "a"'):
        load_config(params, ["report.title={a: 1, a: 2}"])


def test_equal_keys_in_another_spelling_are_a_key_written_twice(params: Path) -> None:
    params.write_text("synth:\n  seed: 0\n  'seed': 1\n")  # one key once plain, once quoted
    with pytest.raises(ConfigError, match='duplicate key "seed" in synth'):
        load_config(params)


# --- 2. nesting thousands deep ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["profile", "train"])
def test_yaml_nested_thousands_deep_is_one_line(params: Path, command: str) -> None:
    params.write_text(f"data:\n  root: {DEEP}\n")
    before = params.read_bytes()
    args = {"profile": ("profile", "demo", "--params", params, "--profiles", PROFILES),
            "train": ("train", "--benchmark", "rstpreid", "--params", params)}[command]  # fmt: skip
    line = one_line(*args)
    assert f"{params} line 2, column {7 + MAX_YAML_DEPTH}: not valid YAML" in line
    assert f"nested more than {MAX_YAML_DEPTH} levels deep" in line and len(line) < 600
    assert params.read_bytes() == before


def test_an_override_nested_thousands_deep_is_one_line(params: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(params, [f"data.root={DEEP}"])
    assert "levels deep" in str(raised.value) and len(str(raised.value)) < 600


# --- 3. uit profile keeps the file what it was ---------------------------------------------------


def test_profile_writes_through_a_symlink_and_keeps_crlf(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "params.yaml"
    target.parent.mkdir()
    committed = (ROOT / "params.yaml").read_bytes().replace(b"\n", b"\r\n")
    target.write_bytes(committed)
    link = tmp_path / "params.yaml"
    link.symlink_to(target)
    assert cli("profile", "paper", "--params", link, "--profiles", PROFILES).exit_code == 0
    assert link.is_symlink() and link.resolve() == target
    written = target.read_bytes()
    assert written != committed and written.count(b"\n") == written.count(b"\r\n")
    paper = yaml.safe_load((PROFILES / "paper.yaml").read_text())
    assert yaml.safe_load(written)["model"] == {**yaml.safe_load(committed)["model"],
                                                **paper["model"]}  # fmt: skip
    assert cli("profile", "demo", "--params", link, "--profiles", PROFILES).exit_code == 0
    assert link.is_symlink() and target.read_bytes() == committed  # byte for byte, CRLF and all


@pytest.mark.parametrize("text", ["", "# every line a comment\n\n"], ids=["empty", "comments"])
def test_profile_on_a_params_file_without_settings_is_one_line(params: Path, text: str) -> None:
    params.write_text(text)
    line = one_line("profile", "demo", "--params", params, "--profiles", PROFILES)
    assert f"{params} holds no settings" in line and f"git checkout -- {params}" in line
    assert params.read_text() == text


# --- 4. uit compare ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake pipeline of test_compare (params -> metrics, no training), one experiment."""
    path = fake_pipeline(tmp_path_factory.mktemp("hostile-compare"))
    sh("dvc", "exp", "run", "-S", "loss.cmt=0", "-n", "no-cmt", cwd=path)
    return path


@pytest.fixture
def broken_metrics(repo: Path) -> Any:
    """The workspace's cuhk-pedes R1 is the word "forty"; its icfg-pedes file is not JSON."""
    cuhk, icfg = repo / "metrics/cuhk-pedes.json", repo / "metrics/icfg-pedes.json"
    saved = {path: path.read_bytes() for path in (cuhk, icfg)}
    metrics = json.loads(cuhk.read_text())
    metrics["cuhk-pedes"]["t2i"]["R1"] = "forty"
    cuhk.write_text(json.dumps(metrics))
    icfg.write_text("{broken")
    yield
    for path, data in saved.items():
        path.write_bytes(data)


LEFT_OUT = ("warning: workspace: metrics/cuhk-pedes.json (cuhk-pedes.t2i.R1: 'forty' is not a "
            "number) is left out of the comparison")  # fmt: skip


@pytest.mark.parametrize("mode", ["table", "--json", "--csv", "--plot", "--baseline"])
def test_compare_names_each_broken_metrics_file_it_leaves_out(
    repo: Path, broken_metrics: None, tmp_path: Path, mode: str
) -> None:
    extra = {"table": [], "--json": ["--json"], "--csv": ["--csv"],
             "--plot": ["--plot", tmp_path / "r1.png"], "--baseline": ["--baseline", "no-cmt"],
             }[mode]  # fmt: skip
    result = cli("compare", "--project", repo, *extra)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings[0] == LEFT_OUT, result.stderr
    assert warnings[1].startswith("warning: workspace: metrics/icfg-pedes.json (DVC could not")
    assert warnings[1].endswith("is left out of the comparison") and len(warnings) == 2
    if mode == "--json":
        rows = {row["experiment"]: row for row in json.loads(result.stdout)}
        assert rows["no-cmt"]["cuhk-pedes/R1"] == 20.0  # the sound experiment is all there
        assert rows["workspace"]["cuhk-pedes/R1"] is None
        assert rows["workspace"]["rstpreid/R1"] is not None  # only the broken files left out
    if mode == "--csv":
        assert {row["experiment"] for row in csv.DictReader(io.StringIO(result.stdout))} >= {
            "workspace", "no-cmt"}  # fmt: skip
    if mode == "--plot":
        assert (tmp_path / "r1.png").read_bytes().startswith(b"\x89PNG")


def dvc_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """``dvc exp show --json`` of a workspace with these metrics files."""
    return [{"rev": "workspace", "data": {"params": {}, "metrics": metrics}}]


def in_domain(benchmark: str, **t2i: Any) -> dict[str, Any]:
    return {f"metrics/{benchmark}.json": {"data": {benchmark: {"t2i": t2i}}}}


@pytest.mark.parametrize(
    ("metrics", "says"),
    [
        ({"metrics/rstpreid.json": {"data": [1]}}, "no rstpreid.t2i mapping"),
        (in_domain("rstpreid", R1=True), "rstpreid.t2i.R1: True is not a number"),
        (in_domain("rstpreid", R1="40"), "rstpreid.t2i.R1: '40' is not a number"),
        (in_domain("rstpreid", mAP=1e308), "rstpreid.t2i.mAP: 1e+308 is not a percentage"),
        (in_domain("rstpreid", mINP=math.nan), "rstpreid.t2i.mINP: nan is not a percentage"),
        (in_domain("rstpreid", R5=-1), "rstpreid.t2i.R5: -1 is not a percentage within 0..100"),
    ],
    ids=["a-list", "a-bool", "a-string", "too-big", "nan", "negative"],
)
def test_every_bad_metric_is_left_out_with_why(metrics: dict[str, Any], says: str) -> None:
    (experiment,) = read_exp_show(dvc_rows(metrics))
    assert experiment.metrics == {}
    (why,) = experiment.left_out
    assert why.startswith("metrics/rstpreid.json (") and says in why


def test_files_not_written_yet_and_other_metrics_are_no_warning() -> None:
    not_yet = {"error": {"type": "FileNotFoundError", "msg": "No such file"}}
    rows = dvc_rows({**in_domain("rstpreid", R1=40.0), "metrics/cuhk-pedes.json": not_yet,
                     "metrics/pretrain.json": {"data": {"R1": "held-out"}}})  # fmt: skip
    (experiment,) = read_exp_show(rows)
    assert experiment.metrics == {"rstpreid": {"R1": 40.0}} and experiment.left_out == ()


def test_a_metric_or_baseline_that_gives_nothing_is_refused() -> None:
    done = Experiment("done", "experiment", "done", {}, {"rstpreid": {"R1": 40.0}})
    queued = Experiment("queued", "experiment", "queued", {"loss.cmt": 0.0}, {})
    with pytest.raises(UitError, match="unknown metric 'forty': choose from"):
        comparison([done], metrics=("forty",))
    with pytest.raises(UitError, match=r"baseline 'queued' \(queued\) has no metrics"):
        comparison([done, queued], baseline="queued")


@pytest.fixture
def dangling(repo: Path) -> Any:
    """The experiment no-cmt's ref: what it holds is put back afterwards."""
    (ref,) = [p for p in (repo / ".git/refs/exps").rglob("no-cmt")]
    saved = ref.read_bytes()
    yield ref
    ref.write_bytes(saved)


@pytest.mark.parametrize(("content", "says"), [
    ("1234567890123456789012345678901234567890\n", "points at commit 1234567, which is not in"),
    ("not a hash\n", "holds no commit hash"),
], ids=["missing-commit", "no-hash"])  # fmt: skip
def test_a_dangling_experiment_ref_is_named_with_its_fix(
    repo: Path, dangling: Path, content: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dangling.write_text(content)
    ref = dangling.relative_to(repo / ".git").as_posix()
    line = one_line("compare", "--project", repo)
    assert f"error: The experiment ref {ref} {says}" in line
    assert "`dvc exp remove no-cmt`" in line and f"`git update-ref -d {ref}`" in line
    assert "No DVC experiments yet" not in line
    assert _experiment_frame(repo, None) is None  # the report goes on without them, and says why
    assert f"no experiments in the report: The experiment ref {ref}" in capsys.readouterr().err


# --- 5. uit report's inputs ----------------------------------------------------------------------


T2I = {"R1": 40.0, "R5": 70.0, "R10": 80.0, "mAP": 45.0, "mINP": 30.0}
RESTORATION = {"tir": 20.0, "grayscale": 30.0, "mean_colour": 40.0, "patches": 100}
ZERO_SHOT = {"from": "openai", "t2i": T2I, "i2t": T2I}
VALID = {
    "runs/rstpreid/selection.json": json.dumps(
        {"protocol": "val", "optimistic": False, "best_epoch": 2, "R1": 41.0, "mAP": 46.0}
    ),
    "runs/rstpreid/curves.csv": "epoch,step,loss,R1,mAP\n1.0,10.0,9.5,,\n2.0,20.0,8.25,41.0,46.0\n",
    "metrics/rstpreid.json": json.dumps(
        {"rstpreid": {"t2i": T2I, "i2t": T2I, "zero_shot": ZERO_SHOT, "restoration": RESTORATION}}
    ),
}


def spoiled(path: str, change: Callable[[Any], Any]) -> tuple[str, str]:
    """``path`` with its JSON changed by ``change``."""
    content = json.loads(VALID[path])
    change(content)
    return path, json.dumps(content)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for path, text in VALID.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    return tmp_path


def test_the_valid_report_inputs_are_read(project: Path) -> None:
    (run,) = read_results(project / "runs", project / "metrics")
    assert run.selection["best_epoch"] == 2 and run.curves[1] == {
        "epoch": 2.0, "step": 20.0, "loss": 8.25, "R1": 41.0, "mAP": 46.0}  # fmt: skip
    assert run.tests["rstpreid"]["t2i"] == T2I


SELECTION, CURVES, METRICS_FILE = VALID  # the three paths
BROKEN = {
    "best-epoch-text": (spoiled(SELECTION, lambda s: s.update(best_epoch="x")),
                        "best_epoch is 'x', not an epoch of the run (1 to 2, from curves.csv)"),
    "best-epoch-beyond": (spoiled(SELECTION, lambda s: s.update(best_epoch=999999)),
                          "best_epoch is 999999, not an epoch of the run"),
    "selection-r1-huge": (spoiled(SELECTION, lambda s: s.update(R1=1e308)),
                          "R1: 1e+308 is not a percentage within 0..100"),
    "protocol": (spoiled(SELECTION, lambda s: s.update(protocol="best")),
                 "protocol is 'best', not one of val, heldout, test, last"),
    "metrics-a-list": ((METRICS_FILE, "[1]"), "the file is [1], not a mapping"),
    "metric-text": (spoiled(METRICS_FILE, lambda m: m["rstpreid"]["t2i"].update(R1="forty")),
                    "rstpreid.t2i.R1: 'forty' is not a number"),
    "metric-huge": (spoiled(METRICS_FILE, lambda m: m["rstpreid"]["i2t"].update(mAP=1e308)),
                    "rstpreid.i2t.mAP: 1e+308 is not a percentage within 0..100"),
    "zero-shot": (spoiled(METRICS_FILE, lambda m: m["rstpreid"]["zero_shot"].update(t2i=[])),
                  "rstpreid.zero_shot.t2i is [], not a mapping"),
    "restoration": (spoiled(METRICS_FILE,
                            lambda m: m["rstpreid"]["restoration"].update(patches="many")),
                    "rstpreid.restoration.patches: 'many' is not a number"),
    "no-own-entry": (spoiled(METRICS_FILE, lambda m: m.update(other=m.pop("rstpreid"))),
                     "no entry for rstpreid, the benchmark the model was trained on"),
    "curves-text": ((CURVES, VALID[CURVES].replace("8.25", "eight")),
                    "line 3, column loss: 'eight' is not a number"),
    "curves-semicolons": ((CURVES, VALID[CURVES].replace(",", ";")),
                          "no epoch column in the header"),
    "curves-extra-cell": ((CURVES, VALID[CURVES] + "3.0,30.0,7.0,,,1\n"),
                          "line 4 has 6 cells, the header 5"),
    "curves-epoch": ((CURVES, VALID[CURVES].replace("2.0,20.0", "2.5,20.0")),
                     "line 3, column epoch: 2.5, not an epoch"),
}  # fmt: skip


@pytest.mark.parametrize(("spoil", "says"), BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_report_input_is_one_line_naming_file_and_key(
    project: Path, spoil: tuple[str, str], says: str
) -> None:
    path, text = spoil
    (project / path).write_text(text)
    with pytest.raises(DataError) as raised:
        read_results(project / "runs", project / "metrics")
    message = str(raised.value)
    assert message.startswith(f"{project / path}: ") and says in message, message
    stage = "evaluate" if path.startswith("metrics") else "train"
    assert f"dvc repro --force {stage}@rstpreid" in message and "\n" not in message


@pytest.mark.parametrize("which", ["metrics-a-list", "curves-semicolons", "best-epoch-text"])
def test_uit_report_prints_the_line(project: Path, which: str) -> None:
    (path, text), says = BROKEN[which]
    (project / path).write_text(text)
    line = one_line("report", "--project", project, "--no-experiments")
    assert line.startswith(f"error: {project / path}: ") and says in line


# --- 6. an empty benchmark list ------------------------------------------------------------------


@pytest.mark.parametrize(("value", "says"), [
    ("[]", "data.benchmarks is empty: list at least one of cuhk-pedes, icfg-pedes, rstpreid"),
    ("[rstpreid, rstpreid]", "data.benchmarks names rstpreid more than once"),
], ids=["empty", "twice"])  # fmt: skip
def test_a_benchmark_list_that_is_empty_or_repeats_is_refused(
    params: Path, value: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        load_config(params, [f"data.benchmarks={value}"])
    result = cli("train", "-b", "rstpreid", "--params", params, "--set", f"data.benchmarks={value}")
    assert result.exit_code == 1 and "Traceback" not in result.output  # the config's message:
    assert result.output.startswith(f"error: {params}: invalid configuration\n  {says}")


def test_the_flow_reports_an_empty_benchmark_list_not_missing_datasets(params: Path) -> None:
    from uit.app.flows.pipeline import check_ready

    with pytest.raises(ConfigError) as raised:
        check_ready(list(BENCHMARKS), ["data.benchmarks=[]"], str(params.parent),
                    after_prepare=False)  # fmt: skip
    assert "data.benchmarks is empty" in str(raised.value)
    assert "not found" not in str(raised.value)
