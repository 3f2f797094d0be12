"""The benchmark scripts run (on tiny sizes) and print their tables; timings are never asserted
beyond being positive numbers. The training benchmarks must say they ran the params file given,
and time what ``uit train`` builds from it."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

from uit.core.config import Config, ParseConfig, load_config
from uit.core.errors import UitError
from uit.synth.generate import SIZES
from uit.training.benchmark import ParsedInputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_metrics_benchmark_prints_both_tables_the_machine_and_agreement() -> None:
    command = [sys.executable, "benchmarks/metrics.py", "--queries", "300", "--gallery", "120",
               "--repeats", "2", "--load-mib", "8", "--load-seconds", "120"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "cores, torch" in out and "threads" in out
    assert "alone:" in out and "beside a memory-copy loop" in out
    assert out.count("full argsort (float32)") == 2 and out.count("uit.retrieval_metrics") == 2
    assert out.count("speed-up") == 2 and "min to max" in out
    assert "results agree (every |difference| < 0.0001): True" in out


def test_search_benchmark_prints_a_table_the_machine_and_agreement() -> None:
    command = [sys.executable, "benchmarks/search.py", "--gallery", "5000", "--dim", "64",
               "--queries", "3", "--index-sizes", "3000", "--index-queries", "50",
               "--centres", "30", "--api-gallery", "500", "--api-queries", "2"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    out = result.stdout
    assert "cores, torch" in out and "threads" in out
    scan = r"uit's scan on this CPU: float16 ([\d.]+) ms, float32 ([\d.]+) ms .* -> (\w+)"
    picked = re.search(scan, out)
    assert picked and float(picked[1]) > 0 and float(picked[2]) > 0
    assert picked[3] == min(
        ("float16", "float32"), key=lambda m: float(picked[1 + (m == "float32")])
    )
    rows = {line[:42].strip(): line[42:].split() for line in out.splitlines()
            if line.startswith(("float32 matmul", "top_k, "))}  # fmt: skip
    assert set(rows) == {"float32 matmul + torch.topk (baseline)", "top_k, float16 scan",
                         "top_k, float32 scan"}  # fmt: skip
    for name, columns in rows.items():
        low, median, high = map(float, columns[:3])
        assert 0 < low <= median <= high and columns[3] == "3"
        if name.startswith("top_k"):
            assert columns[4] == "3", name  # both scans: the baseline's top 10 on every query
    assert rows[f"top_k, {picked[3]} scan"][-1] == "uit"
    assert "int64 keys for the whole row" in out
    flat, faiss, milvus = [line for line in out.splitlines() if line.startswith("     3,000")]
    assert "flat" in flat and float(flat.split()[-1]) == 1.0 and "Milvus" in milvus
    # recall@10 of 50 queries (500 neighbours) on clustered points, where neighbours mean
    # something: FAISS's index misses at most 5 of the exact scan's (1.000 measured); Milvus
    # Lite is held to the 0.95
    assert float(faiss.split()[-1]) >= 0.99 and float(milvus.split()[-1]) >= 0.95
    assert "POST /search end to end" in out
    assert (
        "model: uit-tiny at 64x32, context 48, random weights (the architecture of params.yaml"
        in out
    )
    api = [line.split() for line in out.splitlines() if "->" in line and "index," in line]
    assert [row[:4] for row in api] == [
        ["auto", "->", "flat", "500"],
        ["flat", "->", "flat", "500"],
    ]
    assert all(row[-3:-1] == ["flat", "index,"] or "flat" in row for row in api)


# benchmarks/gpu_checks.sh, its shell logic on a CPU: `python3` and `nvidia-smi` on its PATH are
# small scripts that record how they were called and fail when asked to.

FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
if [ "$1" = - ]; then cat >> "$CALLS"; fi  # the script on stdin
if [ "$1" = benchmarks/paper_run.py ]; then mkdir -p "$3" && echo '{}' > "$3/paper_run.json"; fi
case "$*" in *"$FAIL_ON"*) exit 3;; esac
"""
FAKE_NVIDIA_SMI = "#!/bin/sh\necho 'name, memory.total [MiB], driver_version'\n"
GPU_STEPS = ["machine", "gpu tests", "search", "data", "paper run", "train step", "loader"]
STATUS = re.compile(r"^[a-z ]+: (exit \d+|skipped)$|^FAILED: |^all steps passed$")


def run_gpu_checks(tmp_path: Path, fail_on: str) -> tuple[int, list[str], str]:
    """Run the script in ``tmp_path`` with a ``python3`` that exits 3 when its arguments hold
    ``fail_on``; its exit code, the lines of steps.txt and every call made."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, text in (("python3", FAKE_PYTHON), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"),
               "CALLS": str(calls), "FAIL_ON": fail_on}  # fmt: skip
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")], cwd=tmp_path,
                            env=environ, capture_output=True, text=True, timeout=60)  # fmt: skip
    lines = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    assert lines[0] == "name, memory.total [MiB], driver_version"  # the machine heads the file
    return result.returncode, [line for line in lines if STATUS.match(line)], calls.read_text()


def test_gpu_checks_pass_when_every_step_passes_and_train_as_the_paper_does(
    tmp_path: Path,
) -> None:
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_checks.sh")], check=True)
    code, steps, calls = run_gpu_checks(tmp_path, fail_on="no call has this")
    assert code == 0
    assert steps == [f"{name}: exit 0" for name in GPU_STEPS] + ["all steps passed"]
    data = str(tmp_path / "data")
    [paper] = [line for line in calls.splitlines() if line.startswith("benchmarks/paper_run.py")]
    # the augmentation and the token masking, over captions the built-in parser parsed
    assert f"--parsed {data}/parsed-medium/cuhk-pedes" in paper
    for setting in ("augment.keep_attributes_p=0.2", "augment.mask_tokens=true",
                    "parse.backend=builtin"):  # fmt: skip
        assert f"--set {setting}" in paper
    assert f'parse_benchmark(f"{data}/prepared-medium/cuhk-pedes", f"{data}/parsed-medium' in calls
    assert 'ParseConfig(backend="builtin")' in calls
    assert (tmp_path / "out" / "paper_run.json").read_text() == "{}\n"
    # what comes back from a device machine: at most 8 files
    assert len(list((tmp_path / "out").iterdir())) <= 8
    [search] = [line for line in calls.splitlines() if line.startswith("benchmarks/search.py")]
    assert "--params profiles/paper.yaml" in search and "--api-kinds flat" in search


def test_gpu_checks_leave_out_the_steps_named_in_skip(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SKIP", "gpu tests,loader")
    code, steps, calls = run_gpu_checks(tmp_path, fail_on="no call has this")
    assert code == 0 and "gpu tests: skipped" in steps and "loader: skipped" in steps
    assert "-m pytest" not in calls and "benchmarks/loader.py" not in calls


@pytest.mark.parametrize(
    ("fail_on", "step"),
    [("-m pytest -m gpu", "gpu tests"), ("benchmarks/paper_run.py", "paper run"),
     ("benchmarks/loader.py", "loader")],
)  # fmt: skip
def test_a_failing_gpu_check_fails_the_script_after_every_step_ran(
    tmp_path: Path, fail_on: str, step: str
) -> None:
    code, steps, calls = run_gpu_checks(tmp_path, fail_on=fail_on)
    assert code == 1
    assert steps[: len(GPU_STEPS)] == [
        f"{name}: exit {3 if name == step else 0}" for name in GPU_STEPS
    ]
    assert steps[len(GPU_STEPS) :] == [f"FAILED: {step} (exit 3)"]
    for script in ("benchmarks/paper_run.py", "benchmarks/train_step.py", "benchmarks/loader.py"):
        assert script in calls  # the steps after the failing one ran all the same


# The training benchmarks (loader.py, train_step.py, paper_run.py) on the tiny CUHK-PEDES-style
# benchmark, prepared and parsed (by the built-in parser) as the pipeline's stages do it.

CONFIG_LINE = re.compile(r"^  ([a-z_. ]+): (.+)$")
# The params the loader and step benchmarks get: the committed file with these changed, so that
# a value taken from anywhere but the file shows.
TINY_CHANGES = {"model": {"image_height": 64, "image_width": 32, "context_length": 40},
                "train": {"batch_size": 16, "image_augment": True}, "tir": {"decoder_layers": 1},
                "augment": {"keep_attributes_p": 0.5, "mask_tokens": True}}  # fmt: skip


@pytest.fixture(scope="module")
def bench_data(
    tiny_synth: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from uit.parsing.parse import parse_benchmark
    from uit.raw.prepare import prepare_benchmark

    root, _ = tiny_synth
    base = tmp_path_factory.mktemp("bench")
    prepared, parsed = base / "prepared" / "cuhk-pedes", base / "parsed" / "cuhk-pedes"
    prepare_benchmark("cuhk-pedes", root.resolve(), prepared)
    parse_benchmark(prepared, parsed, ParseConfig(backend="builtin"))
    return {"prepared": prepared, "parsed": parsed}


def write_params(path: Path, changes: dict[str, dict[str, Any]]) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_script(*args: str | Path) -> str:
    command = [sys.executable, *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def printed_config(out: str) -> dict[str, str]:
    """The ``  key: value`` lines a benchmark prints to say what it ran."""
    return {m[1]: m[2] for line in out.splitlines() if (m := CONFIG_LINE.match(line))}


def train_split(prepared: Path) -> dict[str, int]:
    """Identities and captions of the training split, as stage prepare counted them."""
    split: dict[str, int] = json.loads((prepared / "stats.json").read_text())["splits"]["train"]
    return split


def benchmark_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A script of benchmarks/ imported as a module (its siblings importable, as when it runs)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def assert_ran(printed: dict[str, str], cfg: Config, keys: tuple[str, ...]) -> None:
    for key in keys:
        section, name = key.split(".")
        assert printed[key] == str(getattr(getattr(cfg, section), name)), key


def test_loader_benchmark_times_the_params_loader_with_augmentation_and_masking(
    bench_data: dict[str, Path], tmp_path: Path
) -> None:
    params = write_params(tmp_path / "params.yaml", TINY_CHANGES)
    out = run_script("benchmarks/loader.py", bench_data["prepared"], "--parsed",
                     bench_data["parsed"], "--params", params, "--workers", "0", "1",
                     "--batches", "10")  # fmt: skip
    assert "machine:" in out and "cores, torch" in out and "threads" in out
    printed, cfg = printed_config(out), load_config(params)
    assert_ran(printed, cfg, ("model.name", "model.image_height", "model.image_width",
                              "model.context_length", "train.batch_size", "train.random_instances",
                              "train.num_workers", "augment.keep_attributes_p",
                              "augment.mask_tokens"))  # fmt: skip
    assert printed["model.context_length"] == "40" and printed["train.batch_size"] == "16"
    assert printed["classes"] == str(train_split(bench_data["prepared"])["identities"])
    assert printed["device"] == "cpu" and printed["pin_memory"] == "False"
    assert printed["caption augmentation"] == printed["token masking"] == "True"
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["workers", "from"])
    rows = [line.split() for line in lines[header + 1 :]]
    assert [row[0] for row in rows] == ["0", "1"]
    found = re.search(r"(\d+) batches in epoch 1", out)
    assert found is not None
    epochs = 1 if int(found[1]) >= 10 else 2  # or more, where epoch 2 is shorter than the rest
    for row in rows:  # images/s from start, steady, steady per worker; epochs
        assert all(float(value) > 0 for value in row[1:4]) and int(row[4]) >= epochs
    assert rows[0][4] == rows[1][4]  # the same batches, whatever the workers


def test_the_loader_benchmark_builds_the_loader_uit_train_builds(
    bench_data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same batches, epoch after epoch, as the loader that ``train_benchmark`` (what ``uit
    train`` calls) builds: caught as it is built, before anything trains."""
    import uit.training.train as train_module
    from uit.training.benchmark import train_benchmark

    loader = benchmark_module("loader", monkeypatch)
    params = write_params(tmp_path / "params.yaml", TINY_CHANGES)
    cfg = load_config(params, ["model.pretrained="])
    built: dict[str, Any] = {}

    class Built(Exception):
        pass

    def catch(*args: Any, **kwargs: Any) -> Any:
        built["run"] = build_run(*args, **kwargs)
        raise Built

    build_run = train_module._build_run
    monkeypatch.setattr(train_module, "_build_run", catch)
    with pytest.raises(Built):
        train_benchmark(cfg, bench_data["prepared"], tmp_path / "run",
                        parsed_dir=bench_data["parsed"])  # fmt: skip
    run = built["run"]
    split = loader.training_split(cfg, bench_data["prepared"])
    data = loader.build_data(cfg, split, loader.read_parsed_inputs(cfg, bench_data["parsed"]))
    ours = loader.train_loader(data, cfg.train.num_workers)
    assert (ours.num_workers, ours.pin_memory) == (run.loader.num_workers, run.loader.pin_memory)
    assert data.dataset.augment is not None and data.dataset.mask_tokens is not None
    for epoch in (0, 1):
        for dataset, sampler in ((data.dataset, data.sampler), (run.dataset, run.sampler)):
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
        assert list(data.sampler) == list(run.sampler)
        for mine, theirs in zip(ours, run.loader, strict=True):
            assert mine.keys() == theirs.keys()
            for key in mine:
                assert torch.equal(mine[key], theirs[key]), (epoch, key)
    # without the parsed captions it refuses, as uit train does, unless both are off
    with pytest.raises(UitError, match="needs the parsed captions"):
        loader.read_parsed_inputs(cfg, None)
    off = load_config(params, ["augment.keep_attributes_p=0", "augment.mask_tokens=false"])
    assert loader.read_parsed_inputs(off, None) == ParsedInputs()


def step_rows(out: str) -> list[tuple[str, str, list[str]]]:
    """(marker, variant, columns) of each row of train_step.py's table (the name is 34 wide)."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    return [(line[0], line[2:34].strip(), line[34:].split()) for line in lines[header + 1 :]]


def test_train_step_benchmark_times_the_params_step(
    bench_data: dict[str, Path], tmp_path: Path
) -> None:
    params = write_params(tmp_path / "params.yaml", TINY_CHANGES)
    out = run_script("benchmarks/train_step.py", "--params", params, "--prepared",
                     bench_data["prepared"], "--steps", "1", "--windows", "2",
                     "--warmup", "0")  # fmt: skip
    assert "machine:" in out and "cores, torch" in out and "threads" in out
    printed, cfg = printed_config(out), load_config(params)
    assert_ran(printed, cfg, ("model.name", "model.image_height", "model.image_width",
                              "model.context_length", "train.batch_size", "train.precision",
                              "tir.decoder_layers"))  # fmt: skip
    assert printed["model.context_length"] == "40" and printed["tir.decoder_layers"] == "1"
    assert printed["classes"].split()[0] == str(train_split(bench_data["prepared"])["identities"])
    assert printed["losses on"] == "sdm 1, id 1, cmt 10, tir 10"
    assert printed["step"] == "fp32, fused Adam"  # precision auto on a CPU; uit's optimiser
    assert "model.pretrained= model.quick_gelu=false" in out  # random weights, GELU as configured
    captions = train_split(bench_data["prepared"])["captions"]
    assert f"{captions:,} pairs" in out  # s/epoch: the prepared split's training captions
    rows = step_rows(out)  # the foreach baseline, then the params' step
    assert [(marker, name) for marker, name, _ in rows] == [
        (" ", "fp32, Adam (foreach)"),
        ("*", "fp32, fused Adam"),
    ]
    for _, _, columns in rows:
        seconds, samples, epoch, tflop = (float(columns[i]) for i in (0, 2, 3, 4))
        assert seconds > 0 and samples > 0 and epoch > 0 and tflop > 0
        assert re.fullmatch(r"\(\d+\.\d{3}-\d+\.\d{3}\)", columns[1])
    assert rows[0][2][4] == rows[1][2][4]  # the optimiser does not change the model's FLOPs


def test_train_step_counts_classes_and_keeps_the_paper_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a prepared folder the ID head has the synthetic benchmark's classes; the paper
    profile's step is bf16 with OpenAI's QuickGELU, beside the fp32 and foreach variants."""
    step = benchmark_module("train_step", monkeypatch)
    args = step.argparse.Namespace(classes=None, prepared=None)
    demo = load_config(ROOT / "params.yaml", ["synth.size=demo", "data.benchmarks=[cuhk-pedes]"])
    classes = step.count_classes(demo, args, None)
    train_ids, _, _ = SIZES["demo"]["cuhk-pedes"].identities  # none held out: it has a val split
    assert classes.count == train_ids and "synth.size demo" in classes.source
    explicit = step.argparse.Namespace(classes=7, prepared=None)
    assert step.count_classes(demo, explicit, None).count == 7
    paper = tmp_path / "paper.yaml"
    paper.write_bytes((ROOT / "params.yaml").read_bytes())
    command = [sys.executable, "-m", "uit.app.cli", "profile", "paper", "--params", str(paper)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    cfg = load_config(paper)
    assert step.activation_overrides(cfg) == ["model.pretrained=", "model.quick_gelu=true"]
    with pytest.raises(UitError, match="--classes"):
        step.count_classes(cfg, args, None)  # real data: no count without the data
    ran = step.configured(cfg, torch.device("cuda"))
    assert ran == step.Variant("bf16", True, False)
    names = [variant.name for variant in step.variants(ran, with_compile=True)]
    assert names == ["fp32, Adam (foreach)", "fp32, fused Adam", "bf16, Adam (foreach)",
                     "bf16, fused Adam", "bf16, fused Adam, compiled"]  # fmt: skip


def test_paper_run_trains_evaluates_and_reproduces_its_selection(
    bench_data: dict[str, Path], tmp_path: Path
) -> None:
    tiny = ["model.name=uit-tiny", "model.image_height=64", "model.image_width=32",
            "model.context_length=32", "train.batch_size=16", "train.epochs=1",
            "train.warmup_epochs=0.5", "train.num_workers=0", "train.device=cpu",
            "tir.decoder_layers=1", "train.eval_batch_size=64"]  # fmt: skip
    sets = [arg for setting in tiny for arg in ("--set", setting)]
    out = run_script("benchmarks/paper_run.py", bench_data["prepared"], tmp_path / "out",
                     "--parsed", bench_data["parsed"], *sets)  # fmt: skip
    assert "machine:" in out and "cores, torch" in out
    model = next(line for line in out.splitlines() if line.startswith("model {"))
    assert "'name': 'uit-tiny'" in model and "'context_length': 32" in model
    train = next(line for line in out.splitlines() if line.startswith("train {"))
    assert "'batch_size': 16" in train and "'epochs': 1," in train
    assert "'random_instances': True" in train  # the paper profile's, not overridden
    found = re.search(r"epoch 1: (\d+) steps", out)
    assert found is not None and int(found[1]) > 0
    steps = int(found[1])
    assert "reproduced True" in out
    report = json.loads((tmp_path / "out" / "paper_run.json").read_text())
    assert report["reproduces_selection"] is True
    assert report["epochs"][0]["step"] == steps and report["epochs"][0]["seconds"] > 0
    assert 0 <= report["test"]["R1"] <= 100 and report["train_seconds"] > 0
