"""Shared fixtures: small datasets written in the three real on-disk formats."""

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

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from uit.core.config import SynthConfig
from uit.raw.formats import SPECS, TOKENS_KEY
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
    import shutil

    from uit.core.config import parse_config
    from uit.raw.prepare import prepare_benchmark
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
