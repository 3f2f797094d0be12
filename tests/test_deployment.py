"""Deployments as a user runs them, the README's recipe on 127.0.0.1: a Prefect server, a process
work pool, the deployments of prefect.yaml (``prefect deploy --all``), a worker, all started in
the project folder with the home folder pointed at an empty one; the pipeline run on a tiny
configuration of one benchmark (``data.benchmarks: [rstpreid]``), watched to the end; its
artifacts on the server; the workspace holding the results with nothing left to re-run;
nothing written to the home folder (Prefect's files are in the project's .prefect/, from
prefect.toml); everything started is stopped by PID. Experiments through workers (DVC's
temporary workspace, the workspace unchanged, their reports and artifacts named after them,
published to remotes) are tests/test_workers.py."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    free_port,
    recipe_env,
    start,
    stop,
    wait_healthy,
    workspace_snapshot,
)
from tests.pipeline_repo import BIN, ONE_BENCHMARK, make_repo, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # one tiny pipeline run


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """The project (a tiny copy) and a server started in it, as in the README; on a port that
    another process took after ``free_port()`` found it free, again on another."""
    repo = make_repo(tmp_path / "repo", params=ONE_BENCHMARK)
    (tmp_path / "home").mkdir()
    log = tmp_path / "server.log"
    for _ in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}/api"
        environ = recipe_env(tmp_path / "home", url)
        process = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                         "--port", str(port)], repo, environ, log)  # fmt: skip
        try:
            if wait_healthy(url, process, log):
                break
        except BaseException:
            stop(process)
            raise
    else:
        raise AssertionError("three free ports were taken before the server could bind one")
    try:
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


def test_deployment_runs_the_pipeline_through_a_worker(
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
        assert worker.poll() is None, "the worker exited before it was stopped"
    finally:
        stopping = time.monotonic()
        stop(worker)
    # it ended because stop asked it to: at SIGTERM, cleanly (Prefect's worker exits 0 in about
    # a second), not at the SIGKILL that stop sends after 20 s
    assert worker.returncode in (0, -signal.SIGTERM), worker.returncode
    assert time.monotonic() - stopping < 20
    # the workspace holds the run's results, with nothing to re-run
    files = workspace_snapshot(repo)
    assert {"params.yaml", "dvc.lock", "metrics/rstpreid.json"} <= files.keys()
    assert any(name.startswith("runs/rstpreid/checkpoints/") for name in files)
    assert set(json.loads((repo / "metrics" / "rstpreid.json").read_text())) >= {"rstpreid"}
    assert "up to date" in sh("dvc", "status", cwd=repo, env=environ).stdout
    assert (repo / "reports" / "pipeline" / "report.html").is_file()
    # the run's artifacts on the server, under the pipeline's keys
    found = httpx.post(f"{url}/artifacts/filter", json={"limit": 50}, timeout=10).json()
    artifacts = {a["key"]: a for a in found if a["key"]}
    assert {"metrics-rstpreid", "uit-report"} <= set(artifacts)
    # Prefect's database and the CLI's files are in the project; the home folder is untouched
    assert (repo / ".prefect" / "prefect.db").is_file()
    assert list((tmp_path / "home").iterdir()) == []
    assert "telemetry" not in (tmp_path / "server.log").read_text().lower()
