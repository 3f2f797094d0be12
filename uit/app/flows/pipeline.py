"""Prefect flows around the DVC pipeline (design §6): they run DVC commands as tasks and publish
the results; the ML lives in ``uit`` and the DAG in ``dvc.yaml``.

- ``preprocess``: synth (synthetic source), prepare and parse for the chosen benchmarks;
- ``pretrain``: the pretrain stage (the corpus and CLIP-style pretraining the demo fine-tunes
  from; nothing where ``model.pretrained`` names other weights);
- ``train``: per benchmark, train then evaluate (in- and cross-domain), one model at a time per
  machine (a Prefect global concurrency limit, ``uit-gpu-<host>``), metrics as table artifacts;
- ``report``: the report stage, its Markdown summary as an artifact;
- ``pipeline``: the three in order; with overrides or an experiment name, one
  ``dvc exp run --temp -S ...`` instead: the changed configuration runs in a temporary copy of
  the project and is recorded as a DVC experiment, and the workspace keeps its own state.

DVC allows one writer per workspace, so the tasks of a flow run one after another. Parallel
training means more workers, each in its own clone (or ``dvc exp run --queue``): each experiment
is pushed to the clone's git remote and DVC's default remote (``dvc exp push``), so that
``dvc exp pull`` and ``uit compare`` bring them together in any clone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.states import Failed, State

from uit.app.dvc import dvc_env, dvc_json
from uit.app.flows import preflight
from uit.core.config import BENCHMARKS, load_config
from uit.core.errors import ConfigError, UitError
from uit.core.io import replaced_dir
from uit.raw.formats import SPECS
from uit.retrieval.metrics import METRICS
from uit.training.preflight import check

P = ParamSpec("P")
R = TypeVar("R")
REPORT_FILES = ("report.html", "report.md")
MACHINE_ENV = "UIT_MACHINE"  # names this machine's GPU limit instead of the host name
TRANSIENT = re.compile(r"Unable to acquire lock|is busy|Resource temporarily unavailable", re.I)
DVC_HINTS = re.compile(  # DVC's advice after a repro; the pipeline commits nothing itself
    r"To track the changes with git|^git add |To enable auto staging|dvc config core\.autostage|"
    r"Use `dvc push` to send your updates"
)


class DvcError(RuntimeError):
    """A DVC command failed; the message is its one error line and where its full log is."""


def gpu_limit_name() -> str:
    """One limit per machine: each machine trains one model at a time on its GPUs. The machine
    is the host name, or ``UIT_MACHINE`` where set (two workers on one host that stand for two
    machines, or hosts whose names clash)."""
    machine = os.environ.get(MACHINE_ENV) or socket.gethostname()
    return f"uit-gpu-{re.sub(r'[^a-z0-9-]', '-', machine.lower())}"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what another DVC process holding the repository lock explains."""
    try:
        state.result()
    except DvcError as error:
        return bool(TRANSIENT.search(str(error)))
    except Exception:
        return False
    return False


def relative_paths(text: str, project: str) -> str:
    """``text`` with the project's absolute path left out of the paths it names: a log line
    that ``prefect deployment run --watch`` shows stays short enough not to wrap mid-path."""
    root = re.escape(str(Path(project).resolve()))
    # the root itself or a path under it; a sibling (``/x/proj-old`` of ``/x/proj``) is kept
    return re.sub(root + r"(/|(?![\w.-]))", lambda m: "" if m[1] else ".", text)


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
                logger.info(relative_paths(line, project))
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
        try:
            client.upsert_global_concurrency_limit_by_name(name, slots)
        except ObjectAlreadyExists:  # another run created it between Prefect's read and create
            client.upsert_global_concurrency_limit_by_name(name, slots)  # now it updates
    return name


@contextmanager
def gpu_slot(project: str) -> Iterator[None]:
    """Hold this machine's GPU slot while the block runs: the machine's lock, then a slot of
    its Prefect limit (what the UI shows, and what workers sharing a server count).

    A slot must not outlive its holder. Prefect frees a killed holder's slot only when its
    lease expires, which a temporary server (``uit run``'s) never checks, so a run killed while
    training left the limit full and every later run waiting without a word. The machine's
    lock is a ``flock`` the kernel drops with its holder, and every holder of a slot holds it:
    so whoever holds the lock knows that slots still counted as active were left by killed
    runs, and releases them (saying so). A run that waits says what it waits for."""
    name = ensure_gpu_limit()
    logger = get_run_logger()
    with ExitStack() as stack:
        stack.enter_context(machine_lock(name, project, logger))
        release_orphaned_slots(name, logger)
        stack.enter_context(concurrency(name, occupy=1))
        yield


@contextmanager
def machine_lock(name: str, project: str, logger: Any) -> Iterator[None]:
    """The lock of this machine's GPU slot, a file in the temporary folder that records who
    holds it (process, project, since when); waiting for it is said once, with that record."""
    import fcntl

    path = Path(tempfile.gettempdir()) / f"{name}.lock"
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: lock it, without recording ourselves
        descriptor = os.open(path, os.O_RDONLY)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    logger.info(f"waiting for this machine's GPU slot ({name}): held by "
                                f"{_holder(path)}; it is free when that run ends or is "
                                "killed")  # fmt: skip
                    waited = True
                time.sleep(0.5)
        record = json.dumps({"pid": os.getpid(), "project": str(Path(project).resolve()),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
        with contextlib.suppress(OSError):  # a read-only descriptor records nothing
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, record.encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"process {record['pid']} (a uit run in {record['project']}, since {record['since']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def release_orphaned_slots(name: str, logger: Any) -> None:
    """Free the slots of ``name`` still counted as active: called with the machine's lock held,
    when no live holder on this machine can have one."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        if limit.active_slots:
            logger.warning(f"{name}: released {limit.active_slots} GPU slot(s) left active by "
                           "a run that was killed while it held them")  # fmt: skip
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(active_slots=0)
            )


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys hold only lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
    return re.sub(r"-{2,}", "-", key).strip("-")


@task
def publish_metrics(
    project: str,
    benchmark: str,
    experiment: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """A table artifact: the model trained on ``benchmark`` tested on every benchmark, read from
    the workspace's ``metrics/`` unless an experiment's ``metrics`` are given."""
    if metrics is None:
        metrics = json.loads((Path(project) / "metrics" / f"{benchmark}.json").read_text())
    rows = [{"tested on": test, **{m: round(values["t2i"][m], 2) for m in METRICS}}
            for test, values in metrics.items()]  # fmt: skip
    about = f"metrics (%) of the model trained on {benchmark}"
    create_table_artifact(
        key=artifact_key("metrics", *([experiment] if experiment else []), benchmark),
        table=rows,
        description=f"Experiment {experiment}: text-to-image {about}"
        if experiment
        else f"Text-to-image {about}",
    )
    return rows


def _benchmarks(
    benchmarks: Sequence[str] | None, project: str, overrides: Sequence[str] = ()
) -> list[str]:
    """The benchmarks asked for, or else those of ``data.benchmarks`` (what dvc.yaml's stages
    run on, overrides applied): a project of one benchmark is not asked for the other two."""
    if benchmarks is None:
        return list(load_config(Path(project) / "params.yaml", list(overrides)).data.benchmarks)
    chosen = list(benchmarks)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}")
    return chosen


def check_listed(chosen: Sequence[str], project: str, overrides: Sequence[str]) -> None:
    """Refuse a benchmark that ``data.benchmarks`` leaves out: dvc.yaml has no stage for it."""
    listed = load_config(Path(project) / "params.yaml", list(overrides)).data.benchmarks
    absent = [name for name in chosen if name not in listed]
    if absent:
        raise ConfigError(
            f"{', '.join(absent)} is not in data.benchmarks ({', '.join(listed)}) of "
            f"{Path(project) / 'params.yaml'}, so no stage runs on it: add it there (or "
            "--set 'data.benchmarks=[...]'), or leave out --benchmark"
        )


@flow(name="preprocess", log_prints=True)
def preprocess(benchmarks: list[str] | None = None, project: str = ".") -> None:
    """Synth (when the source is synthetic), prepare and parse each benchmark."""
    for name in _benchmarks(benchmarks, project):
        dvc(["repro", f"parse@{name}"], project)  # pulls in prepare and synth upstream


@flow(name="pretrain", log_prints=True)
def pretrain(project: str = ".") -> dict[str, Any]:
    """The pretrain stage (CLIP's contrastive loss on the synthetic corpus), on this machine's
    GPU limit; it trains only where ``model.pretrained`` names its weights."""
    with gpu_slot(project):
        dvc(["repro", "pretrain"], project)
    found: dict[str, Any] = json.loads((Path(project) / "metrics" / "pretrain.json").read_text())
    return found


@flow(name="train", log_prints=True)
def train(benchmarks: list[str] | None = None, project: str = ".") -> dict[str, Any]:
    """Train, then evaluate in- and cross-domain, one benchmark at a time."""
    published = {}
    for name in _benchmarks(benchmarks, project):
        with gpu_slot(project):
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
        check(preflight.batch_problems(cfg, root, benchmarks))
    else:
        check(preflight.problems(cfg, root, benchmarks))


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


def experiment_name(experiment: str | None) -> str:
    """The user's name, or one made from the clock, so the flow can find the results."""
    return experiment or time.strftime("uit-%Y%m%d-%H%M%S")


def _tracked(root: Path, path: Path) -> bool:
    """Added to DVC (a ``.dvc`` file beside it or beside a folder above it) or in git."""
    for candidate in (path, *path.parents):
        if candidate == root:
            break
        if candidate.with_name(f"{candidate.name}.dvc").is_file():
            return True
    listed = subprocess.run(["git", "ls-files", "--", str(path)], cwd=root,
                            capture_output=True, text=True)  # fmt: skip
    return bool(listed.stdout.strip())


def untracked_data(project: str, overrides: Sequence[str]) -> list[str]:
    """The folders under ``data.root`` of the benchmarks in ``data.benchmarks`` that an
    experiment's temporary copy of the project would lack: inside the project, yet neither
    tracked by git nor by DVC (nor made by the synth stage). A data root outside the project is
    read where it is."""
    root = Path(project).resolve()
    cfg = load_config(root / "params.yaml", overrides)  # as the experiment will see it
    data_root = (root / cfg.data.root).resolve()
    if not data_root.is_relative_to(root):
        return []
    made = set(cfg.data.benchmarks) if cfg.data.source == "synthetic" else set()
    folders = [SPECS[name].folder for name in cfg.data.benchmarks if name not in made]
    return [str((data_root / f).relative_to(root)) for f in folders
            if not _tracked(root, data_root / f)]  # fmt: skip


def refuse_untracked_data(project: str, overrides: Sequence[str]) -> None:
    missing = untracked_data(project, overrides)
    if missing:
        raise ConfigError(
            f"params.yaml data.root: {', '.join(missing)} is in the project but tracked by "
            "neither DVC nor git, and an experiment runs in a temporary copy of the project that "
            f"holds only what they track: run `dvc add {' '.join(missing)}` (README: Real data "
            "under DVC), or set data.root to a folder outside the project"
        )


def find_experiment(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """The ``dvc exp show --json`` entry of experiment ``name``: its commit, params, metrics."""
    for commit in rows:
        for exp in commit.get("experiments") or []:
            for entry in exp.get("revs") or []:
                if name in (exp.get("name"), entry.get("name")):
                    return dict(entry)
    raise UitError(f"dvc exp show lists no experiment {name!r}: see `dvc exp show`")


def experiment_metrics(entry: dict[str, Any], benchmark: str) -> dict[str, Any]:
    """``metrics/BENCHMARK.json`` as the experiment wrote it (tested on every benchmark)."""
    found = ((entry.get("data") or {}).get("metrics") or {}).get(f"metrics/{benchmark}.json")
    if not found or "data" not in found:
        raise UitError(f"experiment {entry.get('name')!r} has no metrics/{benchmark}.json")
    return dict(found["data"])


@task
def experiment_results(name: str, project: str) -> dict[str, Any]:
    """What DVC recorded of experiment ``name`` (read from ``dvc exp show``)."""
    return find_experiment(dvc_json(["exp", "show"], project), name)


def fetch_report(rev: str, name: str, project: str) -> Path:
    """The experiment's report, from DVC's cache into the git-ignored
    ``reports/experiments/NAME/``, replaced as a whole."""
    out = Path(project).resolve() / "reports" / "experiments" / re.sub(r"[^\w.-]", "-", name)
    with replaced_dir(out, REPORT_FILES) as staging:
        for file in REPORT_FILES:
            dvc(["get", ".", f"reports/pipeline/{file}", "--rev", rev, "-o", str(staging / file)],
                project)  # fmt: skip
    return out


@task
def publish_experiment_report(name: str, out: Path, project: str = ".") -> None:
    """The experiment's report summary as a Markdown artifact, saying where its results are."""
    where = (f"Experiment {name}: full report {out / 'report.html'}; `uit compare` beside the "
             f"others, `dvc exp apply {name}` into the workspace or `dvc exp branch {name} "
             "BRANCH`")  # fmt: skip
    summary = (out / "report.md").read_text()
    create_markdown_artifact(key=artifact_key("report", name), markdown=summary,
                             description=where)  # fmt: skip
    get_run_logger().info(relative_paths(where, project))


def git_remote_url(remote: str, project: str) -> str | None:
    """The URL of the clone's git remote ``remote``, or None when it has none of that name."""
    found = subprocess.run(["git", "remote", "get-url", remote], cwd=project,
                           capture_output=True, text=True)  # fmt: skip
    return found.stdout.strip() if found.returncode == 0 else None


def dvc_default_remote(project: str) -> str | None:
    """The name of DVC's default remote (``dvc remote add -d``), or None when none is set."""
    found = subprocess.run(["dvc", "remote", "default"], cwd=project, env=dvc_env(project),
                           capture_output=True, text=True)  # fmt: skip
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def unpublished_reason(name: str, remote: str, project: str) -> str | None:
    """Why experiment ``name`` cannot be pushed from this clone, and how to make it so, in one
    line; None when the git remote and DVC's default remote are both configured."""
    missing = []
    if git_remote_url(remote, project) is None:
        missing.append(f"no git remote {remote!r} (`git remote add {remote} URL`, or the flow's "
                       "git_remote parameter)")  # fmt: skip
    if dvc_default_remote(project) is None:
        missing.append("no default DVC remote (`dvc remote add -d storage URL`, then commit "
                       ".dvc/config)")  # fmt: skip
    if not missing:
        return None
    return (f"experiment {name} stays in this clone, not published: {' and '.join(missing)}; "
            f"then `dvc exp push {remote} {name}` publishes it")  # fmt: skip


def push_experiment(name: str, remote: str, project: str) -> None:
    """``dvc exp push REMOTE NAME``: the experiment's commit to the git remote, its cached
    outputs to DVC's default remote. A failure is one line; the experiment stays local."""
    pushed = subprocess.run(["dvc", "exp", "push", remote, name], cwd=project,
                            env=dvc_env(project), capture_output=True, text=True)  # fmt: skip
    if pushed.returncode != 0:
        lines = [line.strip() for line in (pushed.stdout + pushed.stderr).splitlines()]
        errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
        reason = (errors or [line for line in lines if line] or [f"exit {pushed.returncode}"])[-1]
        clone = Path(project).resolve()
        raise UitError(f"experiment {name} ran but `dvc exp push {remote} {name}` failed: "
                       f"{reason}; the experiment stays in this clone ({clone}): run that "
                       "command there once the remote is reachable")  # fmt: skip


@task
def publish_experiment(name: str, remote: str, project: str) -> bool:
    """Push experiment ``name`` to the clone's git remote and DVC's default remote, so that
    ``dvc exp pull`` brings it to any clone; where either is missing, say so and push nothing."""
    logger = get_run_logger()
    reason = unpublished_reason(name, remote, project)
    if reason:
        logger.warning(reason)
        return False
    push_experiment(name, remote, project)
    logger.info(f"experiment {name} pushed to {remote} ({git_remote_url(remote, project)}) and "
                f"DVC's default remote: `dvc exp pull {remote} {name}` then `uit compare` "
                "in any clone")  # fmt: skip
    return True


def run_experiment(benchmarks: Sequence[str], overrides: Sequence[str], name: str,
                   project: str, git_remote: str = "origin") -> str:  # fmt: skip
    """One ``dvc exp run --temp``: it runs in a temporary copy of the project (git's files with
    the workspace's changes, DVC's outputs from the cache), so the workspace keeps its params,
    lock, metrics and outputs; the results are the experiment's, published from DVC and
    pushed to the clone's remotes."""
    refuse_untracked_data(project, overrides)
    args = ["exp", "run", "--temp", "-n", name, *(a for o in overrides for a in ("-S", o))]
    with gpu_slot(project):
        dvc([*args, *(f"evaluate@{b}" for b in benchmarks), "report"], project)
    entry = experiment_results(name, project)
    for benchmark in benchmarks:
        publish_metrics(project, benchmark, name, experiment_metrics(entry, benchmark))
    out = fetch_report(str(entry["rev"]), name, project)
    publish_experiment_report(name, out, project)
    publish_experiment(name, git_remote, project)
    get_run_logger().info(f"Report: {relative_paths(str(out / 'report.html'), project)}")
    return str(out / "report.html")


@flow(name="pipeline", log_prints=True)
@one_line_failure
def pipeline(
    benchmarks: list[str] | None = None,
    overrides: list[str] | None = None,
    experiment: str | None = None,
    project: str = ".",
    git_remote: str = "origin",
) -> str:
    """Preprocess, pretrain, train and evaluate, report. ``overrides`` (``section.key=value``) or an
    ``experiment`` name run as one DVC experiment in a temporary copy of the project; the
    workspace is left as it was, and the experiment is pushed to ``git_remote`` and DVC's
    default remote where both are configured."""
    chosen = _benchmarks(benchmarks, project, overrides or [])
    check_listed(chosen, project, overrides or [])
    check_ready(chosen, overrides or [], project, after_prepare=False)
    if overrides or experiment:
        name = experiment_name(experiment)
        return run_experiment(chosen, overrides or [], name, project, git_remote)
    preprocess(chosen, project)
    check_ready(chosen, [], project, after_prepare=True)
    pretrain(project)
    train(chosen, project)
    html = report(project)
    get_run_logger().info(f"Report: {relative_paths(html, project)} (report.md beside it)")
    return html


if __name__ == "__main__":
    pipeline()
