"""Experiments published by many workers and pulled together anywhere.

Fast: the flow's publishing against a real git and DVC repository holding one tiny experiment
(a one-line stage): nothing configured, each half of it configured, both (pushed to a bare git
repository and a local DVC remote), and an unreachable remote.

Slow: the README's recipe for many machines on 127.0.0.1: a bare git remote and a local DVC
remote, one Prefect server, two workers each in its own clone (each standing for one machine
through UIT_MACHINE, with its own work queue and deployment), one experiment deployment run
for each; then a third clone pulls both and `uit compare` shows both rows with their metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from flows import pipeline
from tests.pipeline_repo import sh
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
