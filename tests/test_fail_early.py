"""Failures arrive early and in one line: a batch too large for a benchmark's training
identities and absent real data stop the pipeline before anything trains; a failed stage reaches
the flow as its one ``error:`` line and the path of its full log; the logs carry neither
open_clip's INFO lines nor DVC's git hints. Real DVC in a tiny repo, Prefect's test harness."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_repo import env, make_repo, sh, tiny_params
from uit.app.flows import pipeline
from uit.core.errors import UitError
from uit.raw.formats import get_spec
from uit.raw.readers import missing_benchmark

pytestmark = pytest.mark.slow

BATCH_LINE = (
    "train.batch_size 32 needs 16 identities per batch (train.instances_per_id 2); rstpreid has "
    "14 training identities"
)
REAL = {"data": {"source": "real", "root": "data/real", "check_images": "exists"},
        "synth": {"size": "tiny"}}  # fmt: skip


def repo_with(path: Path, **overrides: dict[str, object]) -> Path:
    repo = make_repo(path)
    (repo / "params.yaml").write_text(tiny_params(overrides))  # type: ignore[arg-type]
    return repo


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_an_undersized_batch_fails_before_anything_trains(prefect_api: str, tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", train={"batch_size": 32})
    """The default batch with the tiny data: cuhk-pedes and icfg-pedes would train first."""
    state = pipeline.pipeline(project=str(repo), return_state=True)
    assert state.is_failed()
    assert state.message.startswith(BATCH_LINE) and "\n" not in state.message
    assert "(synth.size tiny): set train.batch_size to 28 or less" in state.message
    assert not (repo / "runs").exists() and not (repo / "data" / "synthetic").exists()
    with pytest.raises(UitError, match="28 or less"):  # a caller gets the exception itself
        pipeline.pipeline(["rstpreid"], project=str(repo))


def test_a_failed_stage_is_one_line_and_a_log_file(prefect_api: str, tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", train={"batch_size": 32})
    task_log = Records()
    logging.getLogger("prefect.task_runs").addHandler(task_log)
    try:
        pipeline.preprocess(["rstpreid"], str(repo))
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(task_log)
    assert any("Running stage 'prepare@rstpreid'" in m for m in task_log.messages)
    assert not [m for m in task_log.messages if pipeline.DVC_HINTS.search(m)]
    logs = sorted((repo / ".dvc" / "tmp" / "logs").glob("*parse@rstpreid.log"))
    assert len(logs) == 1 and "git add" in logs[0].read_text()  # the hints, kept in the file

    stage = sh("dvc", "repro", "train@rstpreid", cwd=repo, check=False)
    output = stage.stdout + stage.stderr
    assert stage.returncode != 0 and "Traceback" not in output
    stats = "data/prepared/rstpreid/stats.json"
    assert f"error: {BATCH_LINE} ({stats}): set train.batch_size to 28" in output
    assert not (repo / "runs" / "rstpreid" / "checkpoints").exists()

    with pytest.raises(pipeline.DvcError) as raised:
        pipeline.train(["rstpreid"], str(repo))
    message = str(raised.value)
    line, _, log = message.rpartition(" (full log: ")
    assert line.startswith(f"{BATCH_LINE} ({stats})") and "\n" not in message
    log_file = Path(log.removesuffix(")"))
    assert log_file.is_relative_to(repo / ".dvc" / "tmp")
    assert "Running stage" in log_file.read_text()
    assert sh("git", "check-ignore", str(log_file), cwd=repo).returncode == 0


def test_missing_real_data_fails_the_flow_with_the_readers_message(
    prefect_api: str, tmp_path: Path
) -> None:
    repo = repo_with(tmp_path / "repo", **REAL)
    with pytest.raises(UitError) as raised:
        pipeline.pipeline(["rstpreid"], project=str(repo))
    assert str(raised.value) == missing_benchmark(get_spec("rstpreid"), "data/real")


def test_uit_run_on_missing_real_data_prints_the_message_in_a_few_lines(tmp_path: Path) -> None:
    repo = repo_with(tmp_path / "repo", **REAL)
    environ = {**env(), "PYTHONPATH": str(repo), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}  # fmt: skip
    environ.pop("PREFECT_API_URL", None)
    result = subprocess.run([sys.executable, "-c", "from uit.app.cli import main; main()", "run",
                             "--benchmark", "rstpreid"], cwd=repo, env=environ,
                            capture_output=True, text=True, timeout=400)  # fmt: skip
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1
    errors = [line for line in output if line.startswith("error:")]
    assert errors == [f"error: {missing_benchmark(get_spec('rstpreid'), 'data/real')}"]
    assert len(output) <= 6 and "Traceback" not in result.stderr, output


def test_stage_logs_keep_uit_info_and_drop_open_clips(tmp_path: Path) -> None:
    """A stage builds the model through ``uit.core.boundary.run_stage``: uit's INFO lines show,
    open_clip's do not (without ``run``'s logging set-up they do: the control)."""
    script = (
        "import logging, sys\n"
        "from uit.core.boundary import run_stage as run\n"
        "from uit.core.config import ModelConfig\n"
        "from uit.model.build import build_model\n"
        "def main():\n"
        "    build_model(ModelConfig(name='uit-tiny', image_height=64, image_width=32))\n"
        "    logging.getLogger('uit.training.benchmark').info('resumed at epoch 3')\n"
        "if sys.argv[1] == 'stage':\n"
        "    run(main)\n"
        "else:\n"
        "    logging.basicConfig(level=logging.INFO)\n"
        "    main()\n"
    )
    root = Path(__file__).resolve().parents[1]
    environ = {**os.environ, "PYTHONPATH": str(root)}
    logs = {}
    for mode in ("stage", "control"):
        result = subprocess.run([sys.executable, "-c", script, mode], cwd=tmp_path,
                                env=environ, capture_output=True, text=True, timeout=120,
                                check=True)  # fmt: skip
        logs[mode] = result.stderr
    assert "Loaded built-in uit-tiny model config" in logs["control"]
    assert "uit-tiny" not in logs["stage"] and "resumed at epoch 3" in logs["stage"]


def test_uit_run_hides_prefects_drain_notices_only(caplog: pytest.LogCaptureFixture) -> None:
    """On a busy machine Prefect's events worker warns while it drains at shutdown, one line
    more under the one-line error above; ``uit run`` drops that notice and nothing else."""
    from uit.app.cli.pipeline import quiet_drain_notices

    quiet_drain_notices()
    quiet_drain_notices()  # idempotent: one filter
    worker = logging.getLogger("EventsWorker")
    assert len(worker.filters) == 1
    with caplog.at_level(logging.WARNING):
        worker.warning("Still processing items: 1 items remaining...")
        worker.warning("Failed to send events")
    assert [r.getMessage() for r in caplog.records] == ["Failed to send events"]


SERVER_LOGS = """
import logging
from prefect.server.api.server import create_app

create_app(ephemeral=True)  # what Prefect's temporary server process does first (logging with it)
for name in ("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", "sqlalchemy.engine", "prefect.server"):
    try:
        raise RuntimeError(name)
    except RuntimeError:
        logging.getLogger(name).exception("failed in " + name)
"""


def _server_stderr() -> str:
    """What a child process started with this environment, as Prefect starts its temporary
    server, prints for a pool error, an engine error and a server error."""
    result = subprocess.run([sys.executable, "-c", SERVER_LOGS], env=dict(os.environ),
                            capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return result.stderr


def test_uit_run_quiets_the_pool_traceback_of_prefects_stopping_server_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary server, stopped under a run that succeeded, can log a SQLAlchemy pool
    traceback (a rollback cut short); ``uit run`` quiets that logger in the server's process
    and nothing else: an engine error and Prefect's own errors still print."""
    from uit.app.cli.pipeline import quiet_server_shutdown

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    monkeypatch.setenv("PREFECT_LOGGING_SETTINGS_PATH", "")  # recorded, so the test restores it
    monkeypatch.delenv("PREFECT_LOGGING_SETTINGS_PATH")
    control = _server_stderr()
    assert "failed in sqlalchemy.pool" in control and "Traceback" in control
    quiet_server_shutdown(tmp_path)
    assert os.environ["PREFECT_LOGGING_SETTINGS_PATH"] == str(tmp_path / ".prefect/uit-logging.yml")
    quiet = _server_stderr()
    assert "failed in sqlalchemy.pool" not in quiet
    assert "failed in sqlalchemy.engine" in quiet and "failed in prefect.server" in quiet
    # the rest of Prefect's configuration is its own: same format, same levels
    assert "| ERROR   | prefect.server - failed in prefect.server" in quiet


def test_uit_run_leaves_a_logging_configuration_the_user_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uit.app.cli.pipeline import quiet_server_shutdown

    home = tmp_path / ".prefect"
    home.mkdir()
    (home / "logging.yml").write_text("version: 1\n")
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_LOGGING_SETTINGS_PATH", "")
    monkeypatch.delenv("PREFECT_LOGGING_SETTINGS_PATH")
    quiet_server_shutdown(tmp_path)
    assert "PREFECT_LOGGING_SETTINGS_PATH" not in os.environ
    assert sorted(p.name for p in home.iterdir()) == ["logging.yml"]
    monkeypatch.setenv("PREFECT_LOGGING_SETTINGS_PATH", str(tmp_path / "mine.yml"))
    quiet_server_shutdown(tmp_path / "other")
    assert os.environ["PREFECT_LOGGING_SETTINGS_PATH"] == str(tmp_path / "mine.yml")
    assert not (tmp_path / "other").exists()
    # chosen in a file Prefect reads (here prefect.toml in the working folder), not the shell
    monkeypatch.delenv("PREFECT_LOGGING_SETTINGS_PATH")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "elsewhere"))
    (tmp_path / "prefect.toml").write_text('[logging]\nconfig_path = "mine.yml"\n')
    monkeypatch.chdir(tmp_path)
    quiet_server_shutdown(tmp_path / "other")
    assert "PREFECT_LOGGING_SETTINGS_PATH" not in os.environ
    assert not (tmp_path / "other").exists()
