"""`uit train` and `uit evaluate` end to end on tiny synthetic data, in and across domains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from uit.app.cli import app
from uit.core.config import ParseConfig
from uit.parsing.parse import parse_benchmark
from uit.raw.prepare import prepare_benchmark

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.name=uit-tiny",
    "model.image_height=64",
    "model.image_width=32",
    "model.context_length=32",
    "model.pretrained=",  # from random weights: no pretrain stage in these tests
    "train.epochs=1",
    "train.batch_size=16",
    "train.num_workers=0",
    "optim.lr=1e-4",
    "tir.decoder_layers=1",
]


@pytest.fixture(scope="module")
def data(tiny_synth, tmp_path_factory) -> Path:
    root, _ = tiny_synth
    base = tmp_path_factory.mktemp("data")
    for name in ("cuhk-pedes", "rstpreid"):
        prepare_benchmark(name, root, base / "prepared" / name)
        parse_benchmark(
            base / "prepared" / name, base / "parsed" / name, ParseConfig(backend="builtin")
        )
    return base


def train_args(data: Path, parsed: Path, out: Path) -> list[str]:
    """`uit train` on the tiny CUHK-PEDES-style set with the tiny overrides."""
    args = ["train", "--benchmark", "cuhk-pedes", "--params", str(ROOT / "params.yaml")]
    args += ["--prepared", str(data / "prepared/cuhk-pedes"), "--parsed", str(parsed)]
    args += ["--out", str(out)]
    for override in TINY:
        args += ["--set", override]
    return args


def test_train_then_evaluate_in_and_across_domains(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = train_args(data, data / "parsed/cuhk-pedes", tmp_path / "run")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    best = tmp_path / "run/checkpoints/best"
    for target in ("cuhk-pedes", "rstpreid"):  # in-domain, then cross-domain
        out = tmp_path / f"eval-{target}"
        result = runner.invoke(
            app,
            ["evaluate", str(best), str(data / "prepared" / target), "--out", str(out),
             "--parsed", str(data / "parsed" / target)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "attribute binding" in result.output and "look-alikes" in result.output
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["benchmark"] == target and metrics["split"] == "test"
        assert set(metrics["t2i"]) == {"R1", "R5", "R10", "mAP", "mINP"}
        # the diagnostics: binding from the parsed captions, look-alikes from the synthetic truth
        assert metrics["binding"]["all"]["pairs"] == pl.read_parquet(out / "binding.parquet").height
        assert all(0 <= row["score"] <= 100 for row in metrics["binding"].values())
        assert set(metrics["lookalike"]) == {"R1", "chance", "margin", "queries"}
        # the same people in the other benchmarks' styles, against the same gallery
        assert set(metrics["paraphrase"]) == {"cuhk-pedes", "icfg-pedes", "rstpreid"} - {target}
        for row in metrics["paraphrase"].values():
            assert 0 <= row["R1"] <= 100
            assert row["drop"] == pytest.approx(metrics["t2i"]["R1"] - row["R1"])
        assert "paraphrase" in result.output
        assert set(metrics["i2t"]) == {"R1", "R5", "R10", "mAP"}
        assert all(0 <= v <= 100 for v in metrics["t2i"].values())
        top = pl.read_parquet(out / "top_k.parquet")
        captions = pl.read_parquet(data / "prepared" / target / "captions.parquet").filter(
            pl.col("split") == "test"
        )
        assert top.height == captions.height
        assert all(len(ids) == 10 for ids in top["image_ids"].to_list())
        r1 = 100 * sum(hits[0] for hits in top["hits"].to_list()) / top.height
        assert r1 == pytest.approx(metrics["t2i"]["R1"])  # the table agrees with the metrics


def test_augmentation_without_parsed_captions_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    args = train_args(data, tmp_path / "none", tmp_path / "run")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "parse" in result.output and "Traceback" not in result.output


def test_evaluate_rejects_a_folder_that_is_not_a_checkpoint(data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path),
            str(data / "prepared/cuhk-pedes"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1 and "not a uit checkpoint" in result.output


def test_train_and_evaluate_stages(data: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "model: {name: uit-tiny, image_height: 64, image_width: 32, context_length: 32}\n"
        "train: {epochs: 1, batch_size: 16, num_workers: 0}\n"
        "tir: {decoder_layers: 1}\n"
        "data: {benchmarks: [cuhk-pedes, rstpreid]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def stage(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", *args], cwd=tmp_path, capture_output=True, text=True, env=env
        )
        assert result.returncode == 0, result.stderr

    prepared, parsed = data / "prepared", data / "parsed"
    stage(
        "stages.train",
        "--prepared",
        str(prepared / "rstpreid"),
        "--parsed",
        str(parsed / "rstpreid"),
        "--out",
        "run",
        "--params",
        str(params),
    )
    stage(
        "stages.evaluate",
        "--checkpoint",
        "run/checkpoints/best",
        "--benchmark",
        "rstpreid",
        "--prepared",
        str(prepared),
        "--out",
        "eval",
        "--metrics",
        "metrics.json",
        "--parsed",
        str(parsed),
        "--params",
        str(params),
    )
    combined = json.loads((tmp_path / "metrics.json").read_text())
    assert set(combined) == {"cuhk-pedes", "rstpreid"}  # in-domain and cross-domain
    # every benchmark: attribute binding (parsed captions) and look-alikes (synthetic truth)
    assert set(combined["cuhk-pedes"]) == {"t2i", "i2t", "binding", "lookalike"}
    # in-domain only: paraphrase and TIR's colour error (no zero-shot: from random weights)
    assert set(combined["rstpreid"]) == {"t2i", "i2t", "binding", "lookalike", "paraphrase",
                                         "restoration"}  # fmt: skip
    restoration = combined["rstpreid"]["restoration"]
    assert set(restoration) == {"tir", "tir_other", "grayscale", "mean_colour", "patches"}
    assert set(combined["rstpreid"]["binding"]) >= {"all", "colour"}
    detail = json.loads((tmp_path / "eval/cuhk-pedes/metrics.json").read_text())
    assert detail["benchmark"] == "cuhk-pedes" and detail["t2i"] == combined["cuhk-pedes"]["t2i"]
    assert (tmp_path / "eval/rstpreid/top_k.parquet").is_file()
