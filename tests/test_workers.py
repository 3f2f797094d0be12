"""Experiments published by many workers and pulled together anywhere.

Fast: the flow's publishing against a real git and DVC repository holding one tiny experiment
(a one-line stage): nothing configured, each half of it configured, both (pushed to a bare git
repository and a local DVC remote), and an unreachable remote.

Slow: the README's recipe for many machines on 127.0.0.1: a bare git remote and a local DVC
remote, one Prefect server, two workers each in its own clone (each standing for one machine
through UIT_MACHINE, with its own work queue and deployment), one experiment deployment run
for each (in DVC's temporary workspace: the clone's workspace unchanged, the experiment's report
fetched and its artifacts named after it); then a third clone pulls both and `uit compare`
shows both rows with their metrics."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import time
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
from uit.app.flows import pipeline
from uit.core.errors import UitError

STAGE = {"stages": {"make": {
    "cmd": "python -c \"import yaml, json; x = yaml.safe_load(open('params.yaml'))['x']; "
           "open('out.txt', 'w').write(str(x)); json.dump({'x': x}, open('m.json', 'w'))\"",
    "params": ["x"], "outs": ["out.txt"], "metrics": [{"m.json": {"cache": False}}],
}}}  # fmt: skip


def tiny_project(tmp_path: Path, *, git: bool = True, dvc: bool = True) -> tuple[Path, Path]:
    """A git and DVC repository with one stage, run and committed, with a git remote (a bare
    repository) and a default DVC remote (a local folder) where asked, and one experiment,
    ``e1``. Returns the project and the bare repository."""
    project, bare = tmp_path / "project", tmp_path / "remote.git"
    project.mkdir()
    (project / "params.yaml").write_text("x: 1\n")
    (project / "dvc.yaml").write_text(json.dumps(STAGE))
    steps = [("git", "init", "-q", "-b", "main"), ("git", "config", "user.email", "t@e.st"),
             ("git", "config", "user.name", "t"), ("dvc", "init", "-q")]  # fmt: skip
    if dvc:
        steps.append(("dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")))
    steps += [("dvc", "repro"), ("git", "add", "-A"), ("git", "commit", "-q", "-m", "baseline")]
    if git:
        sh("git", "init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
        steps += [("git", "remote", "add", "origin", str(bare)), ("git", "push", "-q", "origin",
                  "main")]  # fmt: skip
    for args in [*steps, ("dvc", "exp", "run", "-n", "e1", "-S", "x=2")]:
        sh(*args, cwd=project)
    return project, bare


def exp_refs(bare: Path) -> list[str]:
    listed = sh("git", "ls-remote", str(bare), "refs/exps/*", cwd=bare.parent).stdout
    return [line.split("/")[-1] for line in listed.splitlines()]


@pytest.mark.parametrize(("git", "dvc", "missing"), [
    (False, False, ["git remote 'origin'", "default DVC remote"]),
    (True, False, ["default DVC remote"]),
    (False, True, ["git remote 'origin'"]),
])  # fmt: skip
def test_an_experiment_without_both_remotes_stays_local_and_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    git: bool, dvc: bool, missing: list[str],
) -> None:  # fmt: skip
    project, bare = tiny_project(tmp_path, git=git, dvc=dvc)
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("publish"))
    with caplog.at_level(logging.INFO, logger="publish"):
        assert pipeline.publish_experiment.fn("e1", "origin", str(project)) is False
    [line] = caplog.messages
    assert "\n" not in line and "e1 stays in this clone" in line
    assert all(f"no {m}" in line for m in missing) and line.count("no ") == len(missing)
    assert "`dvc exp push origin e1`" in line
    assert not (tmp_path / "dvc-remote").exists()
    if git:
        assert exp_refs(bare) == []


def test_an_experiment_is_pushed_to_the_git_remote_and_the_dvc_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    project, bare = tiny_project(tmp_path)
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("publish"))
    with caplog.at_level(logging.INFO, logger="publish"):
        assert pipeline.publish_experiment.fn("e1", "origin", str(project)) is True
    assert exp_refs(bare) == ["e1"]
    assert "`dvc exp pull origin e1`" in caplog.messages[-1]
    # another clone pulls it, with its cached output, from the two remotes alone
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(bare), str(clone), cwd=tmp_path)
    sh("dvc", "exp", "pull", "origin", "e1", cwd=clone)
    sh("dvc", "exp", "apply", "e1", cwd=clone)
    assert (clone / "out.txt").read_text() == "2"


def test_a_push_that_fails_is_one_line_and_the_experiment_stays(tmp_path: Path) -> None:
    project, _ = tiny_project(tmp_path)
    sh("git", "remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=project)
    with pytest.raises(UitError) as failed:
        pipeline.push_experiment("e1", "origin", str(project))
    message = str(failed.value)
    assert "\n" not in message and "Traceback" not in message
    assert "`dvc exp push origin e1` failed" in message and "stays in this clone" in message
    assert "e1" in sh("dvc", "exp", "list", cwd=project).stdout


def test_the_gpu_limit_is_per_machine_and_uit_machine_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(pipeline.MACHINE_ENV, raising=False)
    monkeypatch.setattr(pipeline.socket, "gethostname", lambda: "GPU_Box.lab")
    assert pipeline.gpu_limit_name() == "uit-gpu-gpu-box-lab"
    monkeypatch.setenv(pipeline.MACHINE_ENV, "gpu-b")
    assert pipeline.gpu_limit_name() == "uit-gpu-gpu-b"


TINY_EXPERIMENT = "data.benchmarks=[rstpreid]"  # one benchmark: one tiny training each
RUNS = {"gpu-a": ("no-cmt", "loss.cmt=0"), "gpu-b": ("no-tir", "loss.tir=0")}


def shared_remotes(tmp_path: Path) -> Path:
    """The project pushed to a bare git repository, with a local folder as DVC's default
    remote committed in .dvc/config, as the README sets them up. Returns the bare one."""
    seed, bare = make_repo(tmp_path / "seed", params=ONE_BENCHMARK), tmp_path / "uit.git"
    sh("git", "init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    sh("dvc", "remote", "add", "-d", "storage", str(tmp_path / "uit-dvc"), cwd=seed)
    sh("git", "commit", "-q", "-m", "Shared DVC remote", ".dvc/config", cwd=seed)
    sh("git", "remote", "add", "origin", str(bare), cwd=seed)
    sh("git", "push", "-q", "origin", "main", cwd=seed)
    return bare


def clone(bare: Path, path: Path) -> Path:
    sh("git", "clone", "-q", str(bare), str(path), cwd=bare.parent)
    for key, value in (("user.email", "worker@example.com"), ("user.name", "worker")):
        sh("git", "config", key, value, cwd=path)  # the home folder is empty: no identity there
    return path


def deployment_run(machine: str, clone: Path, environ: dict[str, str]) -> subprocess.Popen:
    """The README's ``prefect deployment run pipeline/MACHINE ... --watch``, started."""
    name, override = RUNS[machine]
    params = ['benchmarks=["rstpreid"]', f'overrides=["{override}", "{TINY_EXPERIMENT}"]',
              f"experiment={name}"]  # fmt: skip
    args = [str(BIN / "prefect"), "deployment", "run", f"pipeline/{machine}", "--watch",
            "--watch-timeout", "600", *(a for p in params for a in ("--param", p))]  # fmt: skip
    return start(args, clone, environ, clone.parent / f"run-{machine}.log")


def wait_all(runs: dict[str, subprocess.Popen], tmp_path: Path, timeout: float = 660) -> None:
    deadline = time.monotonic() + timeout
    for machine, run in runs.items():
        try:
            code = run.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = -1
        logs = "\n".join((tmp_path / f"{kind}-{machine}.log").read_text()[-3000:]
                         for kind in ("run", "worker"))  # fmt: skip
        assert code == 0 and "Completed" in logs, f"{machine}: exit {code}\n{logs}"


def compared(project: Path, environ: dict[str, str]) -> dict[str, dict[str, str]]:
    """``uit compare --csv`` in ``project``: each row by its experiment's name."""
    out = sh(str(BIN / "uit"), "compare", "--csv", cwd=project, env=environ).stdout
    return {row["experiment"]: row for row in csv.DictReader(io.StringIO(out))}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_publish_experiments_that_a_third_clone_pulls_and_compares(
    tmp_path: Path,
) -> None:
    bare = shared_remotes(tmp_path)
    clones = {machine: clone(bare, tmp_path / machine) for machine in (*RUNS, "laptop")}
    (tmp_path / "home").mkdir()
    url = f"http://127.0.0.1:{free_port()}/api"
    environ = recipe_env(tmp_path / "home", url)
    prefect = str(BIN / "prefect")
    server = start([prefect, "server", "start", "--host", "127.0.0.1", "--port",
                    url.split(":")[2].split("/")[0]], clones["laptop"], environ,
                   tmp_path / "server.log")  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        wait_healthy(url, server, tmp_path / "server.log")
        sh(prefect, "work-pool", "create", "uit", "--type", "process", cwd=clones["laptop"],
           env=environ)  # fmt: skip
        before = workspace_snapshot(clones["gpu-a"])
        for machine in RUNS:  # each machine: its own deployment, work queue and worker
            machine_env = {**environ, pipeline.MACHINE_ENV: machine}
            sh(prefect, "--no-prompt", "deploy", "uit/app/flows/pipeline.py:pipeline", "--name",
               machine, "--pool", "uit", "--work-queue", machine, cwd=clones[machine],
               env=machine_env)  # fmt: skip
            workers.append(start([prefect, "worker", "start", "--pool", "uit", "--work-queue",
                                  machine, "--limit", "1"], clones[machine], machine_env,
                                 tmp_path / f"worker-{machine}.log"))  # fmt: skip
        wait_all({m: deployment_run(m, clones["laptop"], environ) for m in RUNS}, tmp_path)
        found = httpx.post(f"{url}/v2/concurrency_limits/filter", json={}, timeout=10).json()
        listed = httpx.post(f"{url}/artifacts/filter", json={"limit": 50}, timeout=10).json()
    finally:
        for process in [*workers, server]:
            stop(process)
    # each experiment ran on its own machine, in that machine's clone, whose workspace it kept
    for machine, (name, _) in RUNS.items():
        assert sh("dvc", "exp", "list", "--name-only", cwd=clones[machine]).stdout.split() == [name]
    assert {f"uit-gpu-{m}" for m in RUNS} <= {limit["name"] for limit in found}
    assert workspace_snapshot(clones["gpu-a"]) == before
    # each experiment's report fetched beside the workspace, its artifacts named after it
    for machine, (name, _) in RUNS.items():
        fetched = clones[machine] / "reports" / "experiments" / name
        assert (fetched / "report.html").is_file()
        assert (fetched / "report.md").read_text().startswith("#")
    artifacts = {a["key"]: a for a in listed if a["key"]}
    for name, _ in RUNS.values():
        assert name in (artifacts[f"metrics-{name}-rstpreid"]["description"] or "")
        assert f"dvc exp apply {name}" in (artifacts[f"report-{name}"]["description"] or "")
    # a third clone pulls both from the remotes and compares them, metrics and all
    laptop = clones["laptop"]
    for name, _ in RUNS.values():
        sh("dvc", "exp", "pull", "origin", name, cwd=laptop)
    rows = compared(laptop, environ)
    assert {"no-cmt", "no-tir"} <= rows.keys(), rows
    for name, _ in RUNS.values():
        assert 0 <= float(rows[name]["rstpreid/R1"]) <= 100, rows[name]
    assert rows["no-cmt"]["loss.cmt"] != rows["no-tir"]["loss.cmt"]
    # and with the checkpoints: the DVC remote holds the outputs the experiments cached
    sh("dvc", "exp", "apply", "no-tir", cwd=laptop)
    assert any((laptop / "runs" / "rstpreid" / "checkpoints").rglob("*"))
