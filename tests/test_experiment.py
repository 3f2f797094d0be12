"""An experiment through the pipeline flow (Prefect's test harness, real DVC on a tiny copy of
the project): it runs in DVC's temporary workspace, so the workspace's params, lock, metrics,
outputs and git status are byte-identical afterwards; DVC records it with its metrics; its
artifacts carry its name; a plain run afterwards is still the baseline with nothing to re-run.
One repository and one baseline for the module: 13.5 min wall on 2 cores shared with four other
test runs (load 6)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness

from flows import pipeline
from tests.pipeline_repo import make_repo, sh
from uit.compare import read_exp_show
from uit.errors import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a baseline and an experiment

SKIP = (".git", ".dvc", "reports/experiments")  # git's and DVC's own stores; the fetched report


def snapshot(repo: Path) -> dict[str, str]:
    """Every file of the workspace (params, lock, metrics, DVC outputs) by its content hash, and
    what git reports as changed."""
    files = {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file()
        and not str(path.relative_to(repo)).startswith(SKIP)
        and "__pycache__" not in path.parts
    }
    files["git status"] = sh("git", "status", "--porcelain", cwd=repo).stdout
    return files


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def runs(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The baseline, then the experiment ``No CMT`` (loss.cmt=0), then a plain run again."""
    repo = make_repo(tmp_path_factory.mktemp("experiment") / "repo")
    pipeline.pipeline(["rstpreid"], project=str(repo))
    before = snapshot(repo)
    html = pipeline.pipeline(["rstpreid"], ["loss.cmt=0"], "No_CMT", str(repo))
    after = snapshot(repo)
    pipeline.pipeline(["rstpreid"], project=str(repo))
    return {"repo": repo, "before": before, "after": after, "html": html,
            "again": snapshot(repo)}  # fmt: skip


def test_the_workspace_is_byte_identical_after_an_experiment(runs: dict) -> None:
    before, after = runs["before"], runs["after"]
    assert {"params.yaml", "dvc.lock", "metrics/rstpreid.json"} <= before.keys()
    assert any(name.startswith("runs/rstpreid/checkpoints/") for name in before)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == []
    assert "cmt: 10.0" in (runs["repo"] / "params.yaml").read_text()


def test_dvc_records_the_experiment_with_its_metrics(runs: dict) -> None:
    repo = runs["repo"]
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo).stdout)
    experiments = {e.name: e for e in read_exp_show(shown) if e.kind == "experiment"}
    assert set(experiments) == {"No_CMT"}
    assert experiments["No_CMT"].params["loss.cmt"] == 0
    assert set(experiments["No_CMT"].metrics["rstpreid"]) >= {"R1", "mAP"}
    report = Path(runs["html"])
    assert report == repo / "reports" / "experiments" / "No_CMT" / "report.html"
    assert report.is_file() and (report.parent / "report.md").read_text().startswith("#")


def test_the_experiments_artifacts_carry_its_name(runs: dict) -> None:
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts() if a.key}
    assert {"metrics-rstpreid", "uit-report", "metrics-no-cmt-rstpreid", "report-no-cmt"} <= set(
        artifacts
    )
    assert "No_CMT" in (artifacts["metrics-no-cmt-rstpreid"].description or "")
    assert "dvc exp apply No_CMT" in (artifacts["report-no-cmt"].description or "")
    assert "No_CMT" not in (artifacts["metrics-rstpreid"].description or "")


def test_a_plain_run_afterwards_is_still_the_baseline(runs: dict) -> None:
    assert runs["again"] == runs["before"]
    status = sh("dvc", "status", cwd=runs["repo"]).stdout
    assert "up to date" in status, status


def test_untracked_real_data_in_the_project_is_refused(tmp_path: Path) -> None:
    """Real data copied under the project but not added to DVC would be missing from the
    experiment's temporary workspace: one error naming the key and the fix; DVC-tracked data
    and data outside the project pass."""
    sh("git", "init", "-q", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  source: real\n  root: data/real\n")
    for folder in ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid"):
        (tmp_path / "data" / "real" / folder).mkdir(parents=True)
    (tmp_path / "data" / "real" / "CUHK-PEDES.dvc").write_text("outs: []\n")
    with pytest.raises(ConfigError, match=r"params.yaml data.root: data/real/ICFG-PEDES, "
                       r"data/real/RSTPReid .*`dvc add data/real/ICFG-PEDES"):  # fmt: skip
        pipeline.refuse_untracked_data(str(tmp_path), [])
    pipeline.refuse_untracked_data(str(tmp_path), [f"data.root={tmp_path.parent / 'elsewhere'}"])
    synthetic = ["data.source=synthetic", "synth.benchmarks=[CUHK-PEDES, ICFG-PEDES, RSTPReid]"]
    assert pipeline.untracked_data(str(tmp_path), synthetic) == []  # the synth stage makes them
