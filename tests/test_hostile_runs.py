"""Hostile probes, round three, against what writes and what runs: no command deletes what it
did not write (synth over a real benchmark, the pretraining corpus over a user's files or a
file), single-file outputs follow one rule, a run folder has one writer, the machine's GPU slot
never outlives its holder, and a signal at any moment ends in one line. Real processes, real
files, real locks; Prefect through its test harness and a temporary server."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import snapshot
from uit.app.cli import app
from uit.core.config import PretrainConfig, SynthConfig
from uit.core.errors import ConfigError, TrainingError
from uit.core.io import atomic_write_bytes, folder_lock
from uit.synth.corpus import draw_corpus

ROOT = Path(__file__).resolve().parents[1]
CORPUS = PretrainConfig(identities=12, heldout=4, batch_size=4)
TINY = SynthConfig(size="tiny", seed=7, image_height=32, image_width=16)


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def fails(*args: object, says: tuple[str, ...]) -> str:
    code, output = cli(*args)
    assert code == 1 and "Traceback" not in output, output
    for part in says:
        assert part in " ".join(output.split()), (part, output)
    return output


def uit_process(*args: object, **kwargs: object) -> subprocess.Popen[str]:
    """The ``uit`` console script's own ``main`` in a new process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    command = [sys.executable, "-c", "from uit.app import main; main()", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kwargs)  # type: ignore[call-overload]  # fmt: skip


# --- data loss: nothing deleted that uit did not write -----------------------------------------


def test_synth_refuses_a_real_benchmark_and_keeps_it(write_benchmark, tmp_path: Path) -> None:
    root = write_benchmark("cuhk-pedes")  # the real format: reid_raw.json and imgs/, no sidecar
    before = snapshot(root)
    folder = str((root / "CUHK-PEDES").resolve())
    fails("synth", "--root", root, "--benchmark", "cuhk-pedes", "--size", "tiny",
          says=(folder, "did not write", "give a new or empty"))  # fmt: skip
    assert snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["CUHK-PEDES"]  # no staging left behind


def test_synth_replaces_its_own_output_but_not_files_added_to_it(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    assert cli("synth", "--root", root, "--benchmark", "rstpreid", "--size", "tiny")[0] == 0
    mine = root / ".RSTPReid.old"  # the name the old swap deleted without looking
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert cli("synth", "--root", root, "--benchmark", "rstpreid", "--size", "tiny",
               "--seed", "1")[0] == 0  # fmt: skip
    assert (mine / "notes.txt").read_text() == "mine"
    (root / "RSTPReid" / "notes.txt").write_text("mine too")
    before = snapshot(root)
    fails("synth", "--root", root, "--benchmark", "rstpreid", "--size", "tiny",
          says=("notes.txt", "did not write"))  # fmt: skip
    assert snapshot(root) == before


def test_a_second_corpus_refuses_files_added_since_the_first(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    draw_corpus(corpus, CORPUS, TINY)
    draw_corpus(corpus, CORPUS, TINY)  # an earlier corpus alone is replaced
    (corpus / "my-notes.txt").write_text("keep me")
    before = snapshot(corpus)
    with pytest.raises(ConfigError, match=r"my-notes\.txt"):
        draw_corpus(corpus, CORPUS, TINY)
    assert snapshot(corpus) == before


def test_pretrain_refuses_a_file_as_its_corpus(tmp_path: Path) -> None:
    target = tmp_path / "corpus.txt"
    target.write_text("a user's file")
    fails("pretrain", "--corpus", target, "--out", tmp_path / "out",
          says=(str(target), "is a file", "give a folder"))  # fmt: skip
    assert target.read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # no hidden .old


# --- one rule for single-file outputs ---------------------------------------------------------


def test_a_picture_output_never_replaces_a_file_unasked(tmp_path: Path) -> None:
    weights = tmp_path / "weights.png"
    weights.write_bytes(b"precious")
    root = tmp_path / "raw"
    fails("synth", "--root", root, "--size", "tiny", "--benchmark", "rstpreid",
          "--contact-sheet", weights,
          says=(str(weights), "already exists", "--overwrite"))  # fmt: skip
    assert weights.read_bytes() == b"precious" and not root.exists()  # refused before drawing
    fails("synth", "--root", root, "--size", "tiny", "--contact-sheet", tmp_path / "sheet.txt",
          says=("--contact-sheet", ".png"))  # fmt: skip
    code, output = cli("synth", "--root", root, "--size", "tiny", "--benchmark", "rstpreid",
                       "--contact-sheet", weights, "--overwrite")  # fmt: skip
    assert code == 0, output
    assert Image.open(weights).format == "PNG"


@pytest.mark.parametrize("command", [("compare", "--plot"), ("report", "--screenshot")])
def test_every_picture_option_follows_the_same_rule(tmp_path: Path, command) -> None:
    """Checked first, before DVC or the report is asked for anything."""
    existing = tmp_path / "picture.png"
    existing.write_bytes(b"precious")
    name, option = command
    fails(name, option, existing, "--project", tmp_path,
          says=(option, str(existing), "already exists", "--overwrite"))  # fmt: skip
    fails(name, option, tmp_path / "picture.gif", "--project", tmp_path, says=(option, ".png"))
    assert existing.read_bytes() == b"precious"


def test_search_never_writes_its_sheet_over_a_checkpoint(trained, tmp_path: Path) -> None:
    """The probe: --sheet aimed at a checkpoint's weights overwrote them, exit 0."""
    weights = trained["best"] / "weights.safetensors"
    before = weights.read_bytes()
    search = ("search", trained["best"], "a man", "--gallery", trained["gallery"],
              "--cache-dir", tmp_path / "cache", "--device", "cpu")  # fmt: skip
    fails(*search, "--sheet", weights, says=("--sheet", ".png"))
    existing = tmp_path / "sheet.png"
    existing.write_bytes(b"precious")
    fails(*search, "--sheet", existing, says=(str(existing), "already exists", "--overwrite"))
    assert weights.read_bytes() == before and existing.read_bytes() == b"precious"
    code, output = cli(*search, "--sheet", tmp_path / "sheet.webp")
    assert code == 0, output
    assert Image.open(tmp_path / "sheet.webp").format == "WEBP"


def test_the_format_follows_the_name(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.jpg"
    code, output = cli("synth", "--root", tmp_path / "raw", "--size", "tiny", "--benchmark",
                       "rstpreid", "--contact-sheet", sheet)  # fmt: skip
    assert code == 0, output
    assert sheet.read_bytes()[:3] == b"\xff\xd8\xff" and Image.open(sheet).format == "JPEG"


@pytest.mark.parametrize("where", ["under-a-file", "a-folder", "unwritable"])
def test_a_failed_write_names_the_path_the_user_gave(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    path, says = {
        "under-a-file": (tmp_path / "file" / "out.png", f"{tmp_path / 'file'} is a file"),
        "a-folder": (tmp_path / "folder", "is a folder"),
        "unwritable": (Path("/sys/uit-out.png"), "permission denied"),  # EACCES even for root
    }[where]
    with pytest.raises(Exception) as raised:
        atomic_write_bytes(path, b"data")
    message = str(raised.value)
    assert str(path) in message and says in message and ".tmp" not in message, message
    assert "File exists" not in message


# --- one writer per run folder ----------------------------------------------------------------


def test_a_second_writer_of_a_run_folder_is_refused_until_the_first_dies(
    trained, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom uit.core.io import folder_lock\n"
         f"with folder_lock({str(out)!r}, 'busy'):\n    print('held', flush=True)\n"
         "    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fails("train", "--benchmark", "cuhk-pedes", "--prepared", trained["prepared"],
              "--out", out, "--set", "augment.keep_attributes_p=0",
              "--set", "augment.mask_tokens=false",
              says=(str(out), "being written by another training run"))  # fmt: skip
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with folder_lock(out, "busy", TrainingError):  # the kernel dropped a killed holder's lock
        pass


def test_processes_that_cannot_split_the_batch_are_refused_before_launch(trained) -> None:
    fails("train", "--benchmark", "cuhk-pedes", "--prepared", trained["prepared"],
          "--set", "train.nproc_per_node=3", "--set", "train.batch_size=32",
          says=("train.batch_size 32", "train.nproc_per_node 3", "multiple of 6"))  # fmt: skip


def test_uit_run_refuses_a_bad_override_before_prefect_starts(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    output = fails("run", "--project", tmp_path, "--set", "train.batch_size=-3",
                   says=("train.batch_size",))  # fmt: skip
    assert "temporary server" not in output and not (tmp_path / ".prefect").exists()


def test_uit_run_of_a_benchmark_the_stages_leave_out_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("data:\n  benchmarks: [rstpreid]\n")
    says = ("icfg-pedes is not in data.benchmarks (rstpreid)", "params.yaml")
    output = fails("run", "--project", tmp_path, "--benchmark", "icfg-pedes", says=says)
    assert "temporary server" not in output and "flow run" not in output.lower()


# --- signals: one line, the shell's exit code, nothing left running ----------------------------


@pytest.mark.parametrize("delay", [0.1, 0.25])
def test_ctrl_c_while_the_command_line_loads_is_one_line(delay: float) -> None:
    """Before the command runs (its modules still importing): before, a raw KeyboardInterrupt
    traceback, and exit 1 or death by SIGINT."""
    process = uit_process("data", "stats", "/nonexistent")
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, (process.returncode, err)
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)")


def test_sigterm_to_uit_run_stops_its_temporary_server(tmp_path: Path) -> None:
    from tests.pipeline_repo import make_repo

    repo = make_repo(tmp_path / "repo", params={"data": {"benchmarks": ["rstpreid"]}})
    process = uit_process("run", cwd=repo)
    assert process.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline, port = time.monotonic() + 240, None
    while port is None and time.monotonic() < deadline and process.poll() is None:
        found = [re.search(r"temporary server on http://127\.0\.0\.1:(\d+)", x) for x in lines]
        port = next((int(m[1]) for m in found if m), None)
        time.sleep(0.2)
    assert port is not None, "".join(lines)
    time.sleep(2)  # the flow under way
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    reader.join(timeout=10)
    output = "".join(lines)
    assert process.returncode == 143 and "Traceback" not in output, output
    assert "terminated (SIGTERM)" in output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _listening(port):
        time.sleep(0.5)
    assert not _listening(port), f"the temporary server on {port} outlived uit run"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- the machine's GPU slot ---------------------------------------------------------------------


@pytest.fixture
def own_machine_api(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[str]:
    """The API, with a machine name of this test's own (its GPU limit and lock file alone);
    the lock file it leaves in the temporary folder is removed afterwards."""
    from uit.app.flows import pipeline

    monkeypatch.setenv("UIT_MACHINE", f"test-{os.getpid()}-{tmp_path.name}")
    yield prefect_api
    (Path(tempfile.gettempdir()) / f"{pipeline.gpu_limit_name()}.lock").unlink(missing_ok=True)


HOLD = """
import sys, time
from prefect import flow
from uit.app.flows import pipeline

@flow
def hold() -> None:
    with pipeline.gpu_slot(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)

hold()
"""


@pytest.mark.slow
def test_a_killed_holder_leaves_no_slot_behind(own_machine_api: str, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from uit.app.flows import pipeline

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": own_machine_api}
    command = [sys.executable, "-c", HOLD, str(tmp_path)]
    holder = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        messages: list[str] = []

        @flow
        def wait_for_slot() -> None:
            with pipeline.gpu_slot(str(tmp_path)):
                messages.append("acquired")

        handler = _Collect(messages)
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addHandler(handler)
        waiter = threading.Thread(target=wait_for_slot, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 120
        while not any("waiting for this machine's GPU slot" in m for m in messages):
            assert time.monotonic() < deadline and waiter.is_alive(), messages
            time.sleep(0.2)
        assert f"held by process {holder.pid}" in " ".join(messages)
        assert "acquired" not in messages
        holder.kill()  # SIGKILL: no clean-up of any kind
        holder.wait(timeout=30)
        waiter.join(timeout=120)
        assert "acquired" in messages, messages
        assert any("released 1 GPU slot(s)" in m for m in messages), messages
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(pipeline.gpu_limit_name())
        assert limit.active_slots == 0
    finally:
        holder.kill()
        holder.wait(timeout=30)


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_tensor_files_are_the_same_bytes_in_every_process() -> None:
    """safetensors writes its metadata map in an order that changes from one process to the
    next, so a stage run twice wrote files of different hashes (DVC saw the pretrain stage's
    output change). save_tensors sorts it: six processes, one file; the control, safetensors'
    own save, gives more than one."""
    script = (
        "import hashlib, sys, torch; from safetensors.torch import load, save; "
        "from uit.core.io import save_tensors; "
        "t = {'w': torch.arange(6.0).reshape(2, 3), 'b': torch.ones(2)}; "
        "m = {k: k * 3 for k in ('format', 'digests', 'checksum', 'source', 'quick_gelu')}; "
        "ours = save_tensors(t, m); assert torch.equal(load(ours)['w'], t['w']); "
        "print(hashlib.sha256(ours).hexdigest(), hashlib.sha256(save(t, metadata=m)).hexdigest())"
    )
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=environ, check=True).stdout.split() for _ in range(6)]  # fmt: skip
    assert len({ours for ours, _ in runs}) == 1
    assert len({theirs for _, theirs in runs}) > 1
