"""What several test modules share: fixtures (small datasets written in the three real on-disk
formats, a trained tiny model, Prefect's test server) and helpers (the command line's command
tree, running the CLI and a stage, a served gallery's client, DVC workspaces and Prefect
servers started and stopped, tiny CLIP weights in the released format). ``tests/README.md``
maps each part of the code to its tests."""

from __future__ import annotations

import os

# pytest-xdist's workers inherit COLUMNS=80, and rich fixes a console's width at creation
# when COLUMNS is set: without it, as in a plain run, the width follows what each test sets.
os.environ.pop("COLUMNS", None)
# Under pytest-xdist each worker gets its share of the cores, it and the processes it starts
# (torch would give each worker every core, and 2 workers on 2 cores would fight over them).
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    share = str(max(1, (os.cpu_count() or 1) // workers))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, share)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import hashlib
import http.client
import json
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import open_clip
import pytest
import torch
import typer.main
from PIL import Image
from torch import Tensor, nn
from typer.core import TyperGroup
from typer.testing import CliRunner

from tests.pipeline_repo import env, sh
from uit.app.cli import app
from uit.core.config import SynthConfig
from uit.model.build import register_configs
from uit.raw.formats import SPECS, TOKENS_KEY
from uit.raw.prepare import prepare_benchmark
from uit.synth.generate import synthesize

RecordFactory = Callable[..., Path]
ROOT = Path(__file__).resolve().parents[1]


def _image(path: Path, colour: tuple[int, int, int] = (120, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), colour).save(path)


def make_record(name: str, pid: int, path: str, captions: list[str], split: str) -> dict[str, Any]:
    """A record with exactly the keys of ``name``'s real annotation file."""
    spec = SPECS[name]
    fields: dict[str, Any] = {"id": pid, spec.path_key: path, "captions": captions, "split": split,
                              TOKENS_KEY: [c.lower().split() for c in captions]}  # fmt: skip
    return {key: fields[key] for key in spec.record_keys}


def default_records(name: str) -> list[dict[str, Any]]:
    """Two identities per split the benchmark has, two images each."""
    # the file type the format's images have, as the synthesiser names them
    ext = Path(SPECS[name].image_path("train", 1, 0, random.Random(0))).suffix.lstrip(".")
    records = []
    pid = 1
    for split in SPECS[name].splits:
        for _ in range(2):
            for k in range(2):
                captions = [
                    f"a person {pid} in a red coat view {k}",
                    f"someone {pid} with a bag {k}",
                ]
                records.append(
                    make_record(name, pid, f"{split}/{pid:04d}_{k}.{ext}", captions, split)
                )
            pid += 1
    return records


@pytest.fixture
def write_benchmark(tmp_path: Path) -> RecordFactory:
    """``write_benchmark(name, records=None, images=True, raw=None)`` -> the data root.

    Writes the annotation file (``raw`` text verbatim when given) and, with ``images``, one real
    image per record.
    """

    def write(
        name: str,
        records: list[dict[str, Any]] | None = None,
        images: bool = True,
        raw: str | None = None,
        annotation_name: str | None = None,
    ) -> Path:
        spec = SPECS[name]
        root = tmp_path / "raw"
        folder = spec.dataset_dir(root)
        folder.mkdir(parents=True, exist_ok=True)
        records = default_records(name) if records is None else records
        text = raw if raw is not None else json.dumps(records)
        (folder / (annotation_name or spec.annotation_files[0])).write_text(text, encoding="utf-8")
        if images and raw is None:
            for record in records:
                _image(spec.imgs_dir(root) / record[spec.path_key])
        return root

    return write


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The tiny synthetic benchmark (all three formats) and the generator's counts."""
    root = tmp_path_factory.mktemp("synth")
    summaries = synthesize(root, SynthConfig(size="tiny", seed=7))
    return root, summaries


@pytest.fixture(scope="session")
def trained(
    tiny_synth: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A prepared tiny benchmark, a 1-epoch uit-tiny run and a folder of gallery images (shared
    by the tests of the CLI's failures and of the report)."""

    from uit.core.config import parse_config
    from uit.training.benchmark import train_benchmark

    root, _ = tiny_synth
    base = tmp_path_factory.mktemp("hostile")
    prepared = base / "cuhk-pedes"  # a stage finds it by its benchmark name
    prepare_benchmark("cuhk-pedes", root.resolve(), prepared)
    cfg = parse_config({
        "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32,
                  "context_length": 32},
        "train": {"epochs": 1, "batch_size": 16, "num_workers": 0, "warmup_epochs": 0.5,
                  "eval_batch_size": 64, "precision": "fp32"},
        "optim": {"lr": 1e-4}, "tir": {"decoder_layers": 1},
        "augment": {"keep_attributes_p": 0.0},
    })  # fmt: skip
    train_benchmark(cfg, prepared, base / "run")
    gallery = base / "gallery"
    gallery.mkdir()
    for path in sorted((root / "CUHK-PEDES" / "imgs").rglob("*.png"))[:12]:
        shutil.copy(path, gallery / path.name)
    return {"prepared": prepared, "run": base / "run", "gallery": gallery,
            "best": base / "run" / "checkpoints" / "best"}  # fmt: skip


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """A copy of the project's params.yaml to change."""
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes())
    return path


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server for the whole run (each start costs 10 to 20 s on 2 cores); the
    flows called in this process talk to it. Yields its API URL, for subprocesses."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(get_current_settings().api.url)


# Helpers shared by several test modules (tests/README.md maps the tests to the code).


def clustered(n: int, dim: int, centres: int, seed: int = 0) -> torch.Tensor:
    """Normalised points around ``centres`` gaussian centres, as float16 like the cache."""
    generator = torch.Generator().manual_seed(seed)
    middle = torch.randn(centres, dim, generator=generator)
    which = torch.randint(0, centres, (n,), generator=generator)
    points = middle[which] + 0.8 * torch.randn(n, dim, generator=generator)
    return torch.nn.functional.normalize(points, dim=-1).half()


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


def terminate(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM ``process`` (a server started without a process group of its own), then
    SIGKILL it if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def listening(group: int, port: int) -> bool:
    """Whether a process of the process group ``group`` holds the listening TCP socket of
    ``port`` on 127.0.0.1 (Linux: /proc/net/tcp names the socket's inode, /proc/PID/fd holds it)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != group:
                continue
            fds = Path(f"/proc/{pid}/fd")
            if any(os.readlink(fds / fd) in inodes for fd in os.listdir(fds)):
                return True
        except OSError:  # a process that ended, or a descriptor closed, meanwhile
            continue
    return False


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> bool:
    """Whether the server at ``url`` answers healthy; False when it exited because its port was
    taken between ``free_port()`` and its start (the caller tries another port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            text = log.read_text()
            if "address already in use" in text.lower():
                return False
            raise AssertionError(f"the server exited:\n{text[-3000:]}")
        try:
            healthy = httpx.get(f"{url}/health", timeout=2).status_code == 200
            if healthy and listening(server.pid, int(url.split(":")[2].split("/")[0])):
                return True  # ours answered, not another server on a port ours failed to take
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"no healthy server at {url} after {timeout} s")


WORKSPACE_SKIP = (
    ".git",
    ".dvc",
    ".prefect",
    "reports/experiments",
)  # git's, DVC's, Prefect's stores


def workspace_snapshot(repo: Path) -> dict[str, str]:
    """Every file of the workspace (params, lock, metrics, DVC outputs) by its content hash, and
    what git reports as changed."""
    files = {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file()
        and not str(path.relative_to(repo)).startswith(WORKSPACE_SKIP)
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


def run_stage(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # DVC runs stages from the project root
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def tiny_clip(image_size: tuple[int, int] = (64, 32), quick_gelu: bool = False) -> nn.Module:
    register_configs()
    torch.manual_seed(1)
    return open_clip.create_model(
        "uit-tiny", force_image_size=image_size, force_quick_gelu=quick_gelu
    )


def released_checkpoint(path: Path, clip_state: dict[str, Tensor], prefix: str = "") -> int:
    """A ``best.pth`` in the released code's layout (IRRA/SEN ``Checkpointer.save``): the CLIP
    under ``base_model.`` (without a logit scale, which that code keeps fixed), training heads,
    optimizer and epoch; returns the number of head tensors."""
    heads = {
        "classifier.weight": torch.randn(11003, 128),
        "classifier.bias": torch.zeros(11003),
        "cross_attn.in_proj_weight": torch.randn(384, 128),
        "cross_attn.in_proj_bias": torch.zeros(384),
        "ln_pre_t.weight": torch.ones(128),
        "mlm_head.fc.weight": torch.randn(49408, 128),
    }
    model = {f"base_model.{k}": v for k, v in clip_state.items() if k != "logit_scale"}
    model.update(heads)
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "params": [0]}]}
    checkpoint = {"model": {prefix + k: v for k, v in model.items()}, "optimizer": optimizer}
    checkpoint.update({"scheduler": {"milestones": (20, 50), "last_epoch": 9}, "epoch": 10})
    torch.save(checkpoint, path)
    return len(heads)


# What `uit serve` prints once it listens; with --port 0, the port the system chose.
SERVING = re.compile(r" at http://127\.0\.0\.1:(\d+)/ \(API: ")


class Client:
    """JSON over one ``http.client`` connection per call (raw paths: nothing normalised)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 60
    ) -> tuple[int, Any, bytes]:
        answer = request(self.port, method, path, body, timeout=timeout)
        kind = answer.headers.get("content-type", "")
        return answer.status, answer.json() if "json" in kind else None, answer.body

    def search(self, text: str, k: int = 10, offset: int = 0) -> dict[str, Any]:
        status, answer, _ = self.call("POST", "/search", {"text": text, "k": k, "offset": offset})
        assert status == 200, answer
        return answer


def wait_until_serving(process: subprocess.Popen, log: Path, timeout: float = 180) -> int:
    """The port of ``uit serve --port 0`` (``process``, its output in ``log``) once /healthz
    answers 200; fails with its output when it exits first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"uit serve exited {process.returncode}: {log.read_text(errors='replace')}")
        found = SERVING.search(log.read_text(errors="replace"))
        try:
            if found and Client(int(found[1])).call("GET", "/healthz", timeout=5)[0] == 200:
                return int(found[1])
        except OSError:  # not listening yet, or a reset: asked again below
            pass
        if time.monotonic() > deadline:  # any answer but 200 counts against it too
            pytest.fail(f"uit serve did not answer in {timeout:g} s: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` by its hash: what must not change when a command fails."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def fails(*args: object, says: tuple[str, ...], code: int = 1) -> str:
    """Run the CLI, expect ``code``, one message holding every one of ``says``, no traceback."""
    exit_code, output = cli(*args)
    assert exit_code == code, output
    assert "Traceback" not in output, output
    for part in says:
        assert part in output, (part, output)
    return output


STAGE = """
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
r1 = 20.0 + p["loss"]["cmt"] + p["train"]["seed"]
pathlib.Path("metrics").mkdir(exist_ok=True)
for name, offset in (("cuhk-pedes", 0.0), ("icfg-pedes", 7.25), ("rstpreid", -3.5)):
    r = r1 + offset
    t2i = {"R1": r, "R5": r + 30, "R10": r + 40, "mAP": r / 2, "mINP": r / 4}
    json.dump({name: {"t2i": t2i, "i2t": t2i}}, open(f"metrics/{name}.json", "w"))
"""


DVC_YAML = """stages:
  fake-train:
    cmd: python stage.py
    deps: [stage.py]
    params: [loss.cmt, train.seed]
    metrics:
      - metrics/cuhk-pedes.json: {cache: false}
      - metrics/icfg-pedes.json: {cache: false}
      - metrics/rstpreid.json: {cache: false}
"""


def fake_pipeline(path: Path) -> Path:
    """A git and DVC repository whose one stage turns params into metrics (no training),
    reproduced and committed."""
    (path / "stage.py").write_text(STAGE)
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "params.yaml").write_text("loss:\n  cmt: 10.0\ntrain:\n  seed: 0\n  epochs: 8\n")
    for args in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "t@e.st"],
                 ["git", "config", "user.name", "t"], ["dvc", "init", "-q"],
                 ["dvc", "config", "core.analytics", "false"]):  # fmt: skip
        sh(*args, cwd=path)
    sh("dvc", "repro", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "baseline", cwd=path)
    return path


def commands(
    group: TyperGroup, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


EVERY = list(commands(typer.main.get_command(app)))  # type: ignore[arg-type]


@dataclass
class Answer:
    """A served request's status, headers (lower-case names) and body, as the serve tests
    read them off a raw HTTP connection."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def need_browser() -> None:
    """Skip without headless Chromium, except where UIT_REQUIRE_BROWSER=1 (CI, ``.ci/run``)
    makes its absence a failure rather than a silent green skip."""
    from uit.app.browser import browser_available

    if not browser_available():
        missing = "headless Chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("UIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{missing}, and UIT_REQUIRE_BROWSER=1 requires it")
        pytest.skip(missing)


@dataclass
class PageResults:
    """The serve page after a search: the grid's image widths (0: broken), every URL the
    page fetched, and the console's errors."""

    widths: list[int]
    resources: list[str]
    errors: list[str]


def searched_page(driver: Any, shown: int, timeout: float = 30) -> PageResults:
    """Wait until the page's grid holds ``shown`` loaded images, then read what it did."""
    from selenium.webdriver.support.ui import WebDriverWait

    loaded = ("return Array.from(document.querySelectorAll('#grid img'))"
              ".map(i => i.complete && i.src ? i.naturalWidth : -1)")  # fmt: skip
    WebDriverWait(driver, timeout).until(lambda d: len(d.execute_script(loaded)) == shown
                                         and -1 not in d.execute_script(loaded))  # fmt: skip
    return PageResults(
        driver.execute_script(loaded),
        driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"),
        [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"],
    )


def request(port: int, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None, raw: bytes | None = None,
            timeout: float = 60, source: str = "") -> Answer:  # fmt: skip
    """One request to 127.0.0.1:``port`` on its own connection: ``path`` sent as it is (raw,
    nothing normalised), ``body`` as JSON or ``raw`` bytes, from the loopback address
    ``source`` if given."""
    bound = (source, 0) if source else None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                            source_address=bound)  # fmt: skip
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())  # fmt: skip
    finally:
        connection.close()


def random_searcher(batch_queries: int = 1) -> Any:
    """A server's searcher over 300 random embeddings, uit-tiny encoding the text."""
    from uit.app.serve import assemble_searcher
    from uit.core.config import ModelConfig
    from uit.model.build import build_model, build_tokenizer
    from uit.retrieval.evaluate import EvalOptions
    from uit.retrieval.search import Gallery

    cfg = ModelConfig(name="uit-tiny", image_height=64, image_width=32, context_length=32)
    torch.manual_seed(0)
    encoder = build_model(cfg).eval()
    feats = torch.nn.functional.normalize(
        torch.randn(300, encoder.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1
    ).half()
    names = [f"{i:04d}.png" for i in range(300)]
    gallery = Gallery("random", Path("."), [Path(n) for n in names], names)
    return assemble_searcher((encoder, build_tokenizer(cfg), EvalOptions()), gallery, feats,
                             index_kind="flat", model="uit-tiny",
                             batch_queries=batch_queries)  # fmt: skip


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread, as each pytest-xdist worker has here: the same reductions, so the same
    floats, however busy the machine. With several, a matrix product's sums depend on the batch
    around a row (a plain ``pytest`` run differs from xdist's in the fifth decimal)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
