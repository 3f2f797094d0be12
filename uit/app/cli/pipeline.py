"""``uit run``: the pipeline flow (Prefect), with Prefect's logs reduced to what a user acts on."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from uit.app.cli.base import app, benchmark_option, friendly_errors
from uit.core.config import Benchmark
from uit.core.console import console
from uit.core.errors import UitError
from uit.core.io import atomic_write_text


class _KnownFailures(logging.Filter):
    """Drops the records that Prefect's engines log, with a traceback, for a failure whose
    one-line message ``uit run`` prints itself; a bug's traceback still shows."""

    def __init__(self, known: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.known))


class _DrainNotices(logging.Filter):
    """Drops Prefect's "Still processing items" warnings: its events worker draining its queue
    at shutdown on a busy machine, which says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


def quiet_drain_notices() -> None:
    """For the rest of the process (the drain runs as Prefect shuts down, after the flow)."""
    worker = logging.getLogger("EventsWorker")  # Prefect's services log under their class name
    if not any(isinstance(f, _DrainNotices) for f in worker.filters):
        worker.addFilter(_DrainNotices())


def quiet_server_shutdown(project: Path) -> None:
    """Prefect's temporary server stops when the flow is done, and a database connection it
    was using can be cut mid-rollback: SQLAlchemy's pool then logs a traceback ("Exception
    during reset or similar", a cancelled ``rollback``) under a run that succeeded. That
    server is a child process that configures its logging from Prefect's ``logging.config_path``
    setting, so this writes Prefect's own logging configuration with the ``sqlalchemy.pool``
    logger quiet to ``.prefect/uit-logging.yml`` in the project and sets that setting (its
    environment variable) to it. A configuration the user chose wins: the setting, from any of
    Prefect's sources (environment, ``.env``, ``prefect.toml``, ``pyproject.toml``, profile),
    or a ``logging.yml`` in ``PREFECT_HOME``. Call it with ``PREFECT_HOME`` set and before the
    flows are imported (Prefect reads its settings once)."""
    import os

    import yaml
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH
    from prefect.settings import Settings

    chosen = Settings().logging
    if "config_path" in chosen.model_fields_set or chosen.config_path.exists():
        return
    # the placeholders (${PREFECT_LOGGING_LEVEL}) stay strings; Prefect fills them when it loads
    config = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    config["loggers"]["sqlalchemy.pool"] = {"level": "CRITICAL"}
    path = project / ".prefect" / "uit-logging.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))
    os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(path)


@contextmanager
def quiet_tracebacks(known: tuple[type[BaseException], ...]) -> Iterator[None]:
    """While the flow runs, Prefect's task and flow run loggers skip ``known`` failures."""
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    quiet = _KnownFailures(known)
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


@app.command("run")
@friendly_errors
def run_pipeline(
    benchmark: Annotated[
        list[Benchmark] | None, benchmark_option("Run only this benchmark", "all")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override section.key=value; runs as a DVC experiment."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the DVC experiment.")] = None,
    project: Annotated[Path, typer.Option(help="The project (git + DVC) folder.")] = Path("."),
) -> None:
    """Run the pipeline flow (Prefect): preprocess, train and evaluate, report."""
    import os

    project = project.resolve()
    if not (project / "dvc.yaml").is_file():
        raise UitError(f"{project} has no dvc.yaml: run `uit run` in the project folder")
    from uit.core.config import load_config

    # a broken file or --set value fails here in one line, before Prefect's server starts
    load_config(project / "params.yaml", set_ or [])
    # Prefect's temporary server keeps its database under the project, not in the home folder.
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    quiet_server_shutdown(project)
    from uit.app.flows.pipeline import DvcError, check_listed, pipeline

    quiet_drain_notices()
    names = [b.value for b in benchmark] if benchmark else None
    if names:  # one the stages do not run on fails here too, not after Prefect has started
        check_listed(names, str(project), set_ or [])
    started = time.perf_counter()
    try:
        with quiet_tracebacks((DvcError, UitError)):
            # a flow called directly raises its failure; what returns is the report's path
            html = str(pipeline(names, set_ or None, name, str(project)))
    except DvcError as error:
        raise UitError(str(error)) from None
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    console.print(f"\nPipeline done in {int(minutes)} min {seconds:.0f} s.")
    console.print(f"Report: {html} (and report.md beside it)")
    if set_ or name:
        exp = Path(html).parent.name  # reports/experiments/NAME/report.html
        console.print(f"Experiment {exp} ran in DVC's temporary workspace, so this one is "
                      f"unchanged; `dvc exp apply {exp}` brings it in")  # fmt: skip
    console.print("Experiments and their metrics: `uit compare`; curves: `uit report`")
    own = project / "reports" / "report.html"  # what `uit report` last built
    if own.is_file() and own.stat().st_mtime < Path(html).stat().st_mtime:
        console.print(f"{own.relative_to(project)} (from `uit report`) is older than this run: "
                      "`uit report` rebuilds it")  # fmt: skip
