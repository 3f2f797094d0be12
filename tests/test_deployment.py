"""Deployments as a user runs them, the README's recipe on 127.0.0.1: a Prefect server, a process
work pool, the deployments of prefect.yaml, a worker, all started in the project folder with the
home folder pointed at an empty one; the pipeline run and the experiment run on a tiny
configuration, each watched to the end; their artifacts on the server under distinct keys; the
workspace still the baseline; nothing written to the home folder (Prefect's files are in the
project's .prefect/, from prefect.toml); everything started is stopped by PID. The experiment
runs in DVC's temporary workspace: every file of the workspace and git's status are
byte-identical afterwards, DVC records it with its metrics, its artifacts carry its name, and
the workspace needs nothing re-run. One baseline and one experiment, on one benchmark
(``data.benchmarks: [rstpreid]``: one tiny training each)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.pipeline_repo import BIN, env, make_repo, sh
from uit.app.compare import read_exp_show

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a baseline and an experiment
ONE_BENCHMARK = {"data": {"benchmarks": ["rstpreid"]}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], cwd: Path, environ: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(args, cwd=cwd, env=environ, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group started for ``process``, then SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"no healthy server at {url} after {timeout} s")


SKIP = (".git", ".dvc", ".prefect", "reports/experiments")  # git's, DVC's, Prefect's stores


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


def recipe_env(home: Path, url: str) -> dict[str, str]:
    """The environment of the README's terminals: an empty home folder, no Prefect setting but
    PREFECT_API_URL (the rest comes from the project's prefect.toml)."""
    base = {k: v for k, v in env().items()
            if not k.startswith(("PREFECT_", "XDG_", "DVC_SITE_CACHE"))}  # fmt: skip
    return {**base, "HOME": str(home), "PREFECT_API_URL": url}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """The project (a tiny copy) and a server started in it, as in the README."""
    repo = make_repo(tmp_path / "repo", params=ONE_BENCHMARK)
    (tmp_path / "home").mkdir()
    url = f"http://127.0.0.1:{free_port()}/api"
    port = url.rsplit(":", 1)[1].split("/")[0]
    environ = recipe_env(tmp_path / "home", url)
    log = tmp_path / "server.log"
    process = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                     port], repo, environ, log)  # fmt: skip
    try:
        wait_healthy(url, process, log)
        yield url, environ, repo
    finally:
        stop(process)


def watch(prefect: str, repo: Path, environ: dict[str, str], *params: str) -> None:
    """``prefect deployment run pipeline/pipeline ... --watch``; fails with the worker's log."""
    args = [a for p in ('benchmarks=["rstpreid"]', *params) for a in ("--param", p)]
    run = sh(prefect, "deployment", "run", "pipeline/pipeline", *args, "--watch",
             "--watch-timeout", "900", cwd=repo, env=environ, check=False)  # fmt: skip
    log = (repo.parent / "worker.log").read_text()
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{log[-4000:]}"
    assert "Completed" in run.stdout


def test_deployment_runs_the_pipeline_and_an_experiment_through_a_worker(
    server: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, environ, repo = server
    prefect = str(BIN / "prefect")
    sh(prefect, "work-pool", "create", "uit", "--type", "process", cwd=repo, env=environ)
    deployed = sh(prefect, "--no-prompt", "deploy", "--all", cwd=repo, env=environ)
    assert "pipeline/pipeline" in deployed.stdout
    worker = start([prefect, "worker", "start", "--pool", "uit"], repo, environ,
                   tmp_path / "worker.log")  # fmt: skip
    try:
        watch(prefect, repo, environ)
        before = snapshot(repo)
        watch(prefect, repo, environ, 'overrides=["loss.cmt=0"]', "experiment=No_CMT")
    finally:
        stop(worker)
    assert worker.poll() is not None
    # the workspace is the baseline's, byte for byte, with nothing to re-run
    assert {"params.yaml", "dvc.lock", "metrics/rstpreid.json"} <= before.keys()
    assert any(name.startswith("runs/rstpreid/checkpoints/") for name in before)
    after = snapshot(repo)
    assert sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)) == []
    assert "cmt: 10.0" in (repo / "params.yaml").read_text()
    assert "up to date" in sh("dvc", "status", cwd=repo, env=environ).stdout
    # DVC records the experiment with its metrics; its report is fetched beside the baseline's
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo, env=environ).stdout)
    experiments = {e.name: e for e in read_exp_show(shown) if e.kind == "experiment"}
    assert set(experiments) == {"No_CMT"}
    assert experiments["No_CMT"].params["loss.cmt"] == 0
    assert set(experiments["No_CMT"].metrics["rstpreid"]) >= {"R1", "mAP"}
    assert (repo / "reports" / "pipeline" / "report.html").is_file()
    fetched = repo / "reports" / "experiments" / "No_CMT"
    assert (fetched / "report.html").is_file()
    assert (fetched / "report.md").read_text().startswith("#")
    # the artifacts of the two runs under distinct keys, the experiment's naming it
    found = httpx.post(f"{url}/artifacts/filter", json={"limit": 50}, timeout=10).json()
    artifacts = {a["key"]: a for a in found if a["key"]}
    assert {"metrics-rstpreid", "uit-report", "metrics-no-cmt-rstpreid", "report-no-cmt"} <= set(
        artifacts
    )
    assert "No_CMT" in (artifacts["metrics-no-cmt-rstpreid"]["description"] or "")
    assert "dvc exp apply No_CMT" in (artifacts["report-no-cmt"]["description"] or "")
    assert "No_CMT" not in (artifacts["metrics-rstpreid"]["description"] or "")
    # a clone without a git remote or a DVC remote keeps the experiment and says so, in one line
    assert (
        "experiment No_CMT stays in this clone, not published: no git remote 'origin'"
        in (tmp_path / "worker.log").read_text()
    )
    # Prefect's database and the CLI's files are in the project; the home folder is untouched
    assert (repo / ".prefect" / "prefect.db").is_file()
    assert list((tmp_path / "home").iterdir()) == []
    assert "telemetry" not in (tmp_path / "server.log").read_text().lower()
