"""`uit compare` on real DVC experiments: a temporary repository whose one stage turns params
into metrics (no training), so experiments, seeds and the queue cost seconds."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.pipeline_repo import sh
from uit.cli import app

STAGE = """
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
r1 = 20.0 + p["loss"]["cmt"] + p["train"]["seed"]
pathlib.Path("metrics").mkdir(exist_ok=True)
for name in ("cuhk-pedes", "rstpreid"):
    t2i = {"R1": r1, "R5": r1 + 30, "R10": r1 + 40, "mAP": r1 / 2, "mINP": r1 / 4}
    json.dump({name: {"t2i": t2i, "i2t": t2i}}, open(f"metrics/{name}.json", "w"))
"""

WIDE = {"COLUMNS": "300"}  # the terminal table is wide; do not let rich cut it

DVC_YAML = """stages:
  fake-train:
    cmd: python stage.py
    deps: [stage.py]
    params: [loss.cmt, train.seed]
    metrics:
      - metrics/cuhk-pedes.json: {cache: false}
      - metrics/rstpreid.json: {cache: false}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compare")
    (path / "stage.py").write_text(STAGE)
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "params.yaml").write_text("loss:\n  cmt: 10.0\ntrain:\n  seed: 0\n  epochs: 8\n")
    for args in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "t@e.st"],
                 ["git", "config", "user.name", "t"], ["dvc", "init", "-q"],
                 ["dvc", "config", "core.analytics", "false"]):  # fmt: skip
        sh(*args, cwd=path)
    sh("dvc", "repro", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "baseline", cwd=path)
    return path


def compare(repo: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["compare", "--project", str(repo), *args], env=WIDE)
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


def test_bad_choices_are_messages(repo: Path) -> None:
    code, output = compare(repo, "--baseline", "nope")
    assert code == 1 and "baseline 'nope' is not among the experiments" in output
    code, output = compare(repo, "--sort", "nope")
    assert code == 1 and "cannot sort by 'nope'" in output
    code, output = compare(repo, "--benchmark", "icfg-pedes")
    assert code == 1 and "no metrics for icfg-pedes" in output
