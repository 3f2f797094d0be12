"""Prefect flows around the DVC pipeline (design §6): they run DVC commands as tasks and publish
the results; the ML lives in ``uit`` and the DAG in ``dvc.yaml``.

- ``preprocess``: synth (synthetic source), prepare and parse for the chosen benchmarks;
- ``train``: per benchmark, train then evaluate (in- and cross-domain), one model at a time per
  machine (a Prefect global concurrency limit, ``uit-gpu-<host>``), metrics as table artifacts;
- ``report``: the report stage, its Markdown summary as an artifact;
- ``pipeline``: the three in order; with overrides, one ``dvc exp run -S ...`` instead, so the
  changed configuration is recorded as a DVC experiment.

DVC allows one writer per workspace, so the tasks of a flow run one after another. Parallel
training means more workers, each in its own clone (or ``dvc exp run --queue``), pushing to the
shared git and DVC remotes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.states import Failed, State

from uit import preflight
from uit.config import load_config
from uit.errors import UitError

BENCHMARKS = ("cuhk-pedes", "icfg-pedes", "rstpreid")
T2I = ("R1", "R5", "R10", "mAP", "mINP")
P = ParamSpec("P")
R = TypeVar("R")
TRANSIENT = re.compile(r"Unable to acquire lock|is busy|Resource temporarily unavailable", re.I)
DVC_HINTS = re.compile(  # DVC's advice after a repro; the pipeline commits nothing itself
    r"To track the changes with git|^git add |To enable auto staging|dvc config core\.autostage|"
    r"Use `dvc push` to send your updates"
)


class DvcError(RuntimeError):
    """A DVC command failed; the message is its one error line and where its full log is."""


def gpu_limit_name() -> str:
    """One limit per machine: each machine trains one model at a time on its GPU."""
    return f"uit-gpu-{re.sub(r'[^a-z0-9-]', '-', socket.gethostname().lower())}"


def dvc_env(project: str) -> dict[str, str]:
    """Stages call ``python``: the interpreter running this flow comes first on PATH. DVC keeps
    its site cache (state, index) inside the project rather than in /var/tmp."""
    bin_dir = str(Path(sys.executable).parent)
    site_cache = str(Path(project).resolve() / ".dvc" / "tmp" / "site-cache")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": site_cache}  # fmt: skip


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what another DVC process holding the repository lock explains."""
    try:
        state.result()
    except DvcError as error:
        return bool(TRANSIENT.search(str(error)))
    except Exception:
        return False
    return False


@task(retries=3, retry_delay_seconds=15, retry_condition_fn=_transient,
      task_run_name="dvc {args}")  # fmt: skip
def dvc(args: Sequence[str], project: str) -> str:
    """Run ``dvc ARGS`` in ``project``, streaming its output into the task's log (less DVC's
    git hints) and, whole, into a log file under the project's ``.dvc/tmp``."""
    logger = get_run_logger()
    start = time.perf_counter()
    path = log_path(args, project)
    with (subprocess.Popen(["dvc", *args], cwd=project, env=dvc_env(project),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           bufsize=1) as process,
          path.open("w", encoding="utf-8") as log):  # fmt: skip
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            log.write(line)
            line = line.rstrip()
            lines.append(line)
            if forwarded(line):
                logger.info(line)
        code = process.wait()
    if code != 0:
        raise DvcError(stage_failure(args, code, path, lines))
    logger.info("dvc %s done in %.1f s", " ".join(args), time.perf_counter() - start)
    return "\n".join(lines)


def log_path(args: Sequence[str], project: str) -> Path:
    """A new log file for one DVC command, in the project's git-ignored ``.dvc/tmp``."""
    folder = Path(project).resolve() / ".dvc" / "tmp" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w@.-]+", "-", "-".join(["dvc", *args]))[:100]
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-{name}.log"


def forwarded(line: str) -> bool:
    """Whether a line of DVC's output goes to the task log: not progress bars, not blank, not
    DVC's hints about git and remotes (the pipeline commits nothing itself)."""
    return bool(line) and not line.startswith(("\r", " ", "\t")) and "━" not in line and (
        not DVC_HINTS.search(line))  # fmt: skip


def stage_failure(args: Sequence[str], code: int, log: Path, lines: Sequence[str]) -> str:
    """What a failed DVC command tells the user in one line: the stage's own ``error:`` message
    (the stages' error boundary prints one), else DVC's, and where the full output is."""
    stage = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    own = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    lead = (stage or own or [f"dvc {' '.join(args)} failed (exit {code})"])[-1]
    return f"{lead} (full log: {log})"


@task
def ensure_gpu_limit(slots: int = 1) -> str:
    """Create (or resize) this machine's global concurrency limit for GPU work."""
    name = gpu_limit_name()
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)
    return name


@task
def publish_metrics(project: str, benchmark: str) -> list[dict[str, Any]]:
    """A table artifact: the model trained on ``benchmark`` tested on every benchmark."""
    metrics = json.loads((Path(project) / "metrics" / f"{benchmark}.json").read_text())
    rows = [{"tested on": test, **{m: round(values["t2i"][m], 2) for m in T2I}}
            for test, values in metrics.items()]  # fmt: skip
    create_table_artifact(
        key=f"metrics-{benchmark}",
        table=rows,
        description=f"Text-to-image metrics (%) of the model trained on {benchmark}",
    )
    return rows


def _benchmarks(benchmarks: Sequence[str] | None) -> list[str]:
    chosen = list(benchmarks or BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    return chosen


@flow(name="preprocess", log_prints=True)
def preprocess(benchmarks: list[str] | None = None, project: str = ".") -> None:
    """Synth (when the source is synthetic), prepare and parse each benchmark."""
    for name in _benchmarks(benchmarks):
        dvc(["repro", f"parse@{name}"], project)  # pulls in prepare and synth upstream


@flow(name="train", log_prints=True)
def train(benchmarks: list[str] | None = None, project: str = ".") -> dict[str, Any]:
    """Train, then evaluate in- and cross-domain, one benchmark at a time."""
    limit = ensure_gpu_limit()
    published = {}
    for name in _benchmarks(benchmarks):
        with concurrency(limit, occupy=1):
            dvc(["repro", f"train@{name}"], project)
            dvc(["repro", f"evaluate@{name}"], project)
        published[name] = publish_metrics(project, name)
    return published


@flow(name="report", log_prints=True)
def report(project: str = ".") -> str:
    """Build the report; its Markdown summary becomes an artifact."""
    dvc(["repro", "report"], project)
    out = Path(project).resolve() / "reports" / "pipeline"
    summary = (out / "report.md").read_text()
    create_markdown_artifact(key="uit-report", markdown=summary,
                             description=f"Full report: {out / 'report.html'}")  # fmt: skip
    return str(out / "report.html")


def check_ready(
    benchmarks: Sequence[str], overrides: Sequence[str], project: str, *, after_prepare: bool
) -> None:
    """Refuse, in one line per problem, what would fail once training started: absent data,
    absent weights, a batch larger than a benchmark's training identities: before the prepare
    stages, all that can be known then; after them, the batch against the prepared data."""
    root = Path(project).resolve()
    cfg = load_config(root / "params.yaml", overrides)
    if after_prepare:
        preflight.check(preflight.batch_problems(cfg, root, benchmarks))
    else:
        preflight.check(preflight.problems(cfg, root, benchmarks))


def one_line_failure(fn: Callable[P, R]) -> Callable[P, R | State]:
    """Under ``@flow``: a flow that fails for a known reason (a stage's error, a problem
    found before training) ends in a Failed state whose message is that reason's one line,
    which ``prefect deployment run --watch`` and the UI show; callers still get the exception."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | State:
        try:
            return fn(*args, **kwargs)
        except (DvcError, UitError) as error:
            return Failed(message=str(error), data=error)

    return wrapper


@flow(name="pipeline", log_prints=True)
@one_line_failure
def pipeline(
    benchmarks: list[str] | None = None,
    overrides: list[str] | None = None,
    experiment: str | None = None,
    project: str = ".",
) -> str:
    """Preprocess, train and evaluate, report. ``overrides`` (``section.key=value``) run as one
    ``dvc exp run`` so the result is a named DVC experiment."""
    chosen = _benchmarks(benchmarks)
    check_ready(chosen, overrides or [], project, after_prepare=False)
    if overrides or experiment:
        args = ["exp", "run", *(a for o in overrides or [] for a in ("-S", o))]
        args += ["-n", experiment] if experiment else []
        targets = [f"evaluate@{name}" for name in chosen]
        with concurrency(ensure_gpu_limit(), occupy=1):
            dvc([*args, *targets, "report"], project)
        for name in chosen:
            publish_metrics(project, name)
        return report(project)
    preprocess(chosen, project)
    check_ready(chosen, [], project, after_prepare=True)
    train(chosen, project)
    return report(project)


if __name__ == "__main__":
    pipeline()
