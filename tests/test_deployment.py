"""Deployments as a user runs them, on 127.0.0.1: a Prefect server, a process work pool, the
deployments of prefect.yaml, a worker; one pipeline run on a tiny configuration, watched to the
end; its metrics artifact on the server; everything started is stopped by PID."""

from __future__ import annotations

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

pytestmark = pytest.mark.slow


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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    url = f"http://127.0.0.1:{free_port()}/api"
    port = url.rsplit(":", 1)[1].split("/")[0]
    environ = {**env(), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_UI_ENABLED": "false"}  # fmt: skip
    log = tmp_path / "server.log"
    process = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                     port], tmp_path, environ, log)  # fmt: skip
    try:
        wait_healthy(url, process, log)
        yield url, environ
    finally:
        stop(process)


def test_deployment_runs_the_pipeline_through_a_worker(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, environ = server
    repo = make_repo(tmp_path / "repo")
    prefect = str(BIN / "prefect")
    sh(prefect, "work-pool", "create", "uit", "--type", "process", cwd=repo, env=environ)
    deployed = sh(prefect, "--no-prompt", "deploy", "--all", cwd=repo, env=environ)
    assert "pipeline/pipeline" in deployed.stdout
    worker = start([prefect, "worker", "start", "--pool", "uit"], repo, environ,
                   tmp_path / "worker.log")  # fmt: skip
    try:
        run = sh(prefect, "deployment", "run", "pipeline/pipeline", "--param",
                 'benchmarks=["rstpreid"]', "--watch", "--watch-timeout", "900",
                 cwd=repo, env=environ, check=False)  # fmt: skip
        log = (tmp_path / "worker.log").read_text()
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{log[-4000:]}"
        assert "Completed" in run.stdout
    finally:
        stop(worker)
    assert worker.poll() is not None
    metrics = (repo / "metrics" / "rstpreid.json").read_text()
    assert '"rstpreid"' in metrics
    assert (repo / "reports" / "pipeline" / "report.html").is_file()
    artifacts = httpx.post(f"{url}/artifacts/filter", json={"limit": 50}, timeout=10).json()
    keys = {artifact["key"] for artifact in artifacts}
    assert {"metrics-rstpreid", "uit-report"} <= keys
