"""The DVC pipeline, for real: `dvc repro` of the whole DAG on a tiny configuration in a
temporary git repository; every stage declares exactly the params it reads and the code it
imports; a changed loss weight re-runs only training, evaluation and the report."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import need_browser
from tests.pipeline_repo import BIN, ROOT, make_repo, sh
from uit.app.browser import check_page
from uit.app.cli import app
from uit.core.config import Config, SynthConfig
from uit.model.build import build_tokenizer, load_encoder
from uit.raw.formats import SPECS
from uit.retrieval.evaluate import EvalOptions, encode_images, encode_texts
from uit.synth.generate import synthesize

pytestmark = pytest.mark.slow

BENCHMARKS = ("cuhk-pedes", "icfg-pedes", "rstpreid")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", probe=True)
    probes = tmp_path_factory.mktemp("probes")
    sh("dvc", "repro", cwd=repo, env={**_env(), "UIT_PROBE_DIR": str(probes)})
    return repo, probes


def _env() -> dict[str, str]:
    from tests.pipeline_repo import env

    return env()


def stage_specs() -> dict[str, dict[str, Any]]:
    """Stage name in dvc.yaml -> its definition (the ``do`` body for foreach/matrix)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def leaves(keys: list[str]) -> set[str]:
    """Expand section names (``model``) to their leaf keys (``model.name`` ...)."""
    result = set()
    for key in keys:
        section, _, leaf = key.partition(".")
        if leaf:
            result.add(key)
        else:
            fields = Config.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
            result.update(f"{section}.{name}" for name in fields)
    return result


def probe_records(probes: Path) -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    for path in probes.glob("*.json"):
        record = json.loads(path.read_text())
        records.setdefault(record["stage"].removeprefix("stages."), []).append(record)
    return records


def test_repro_builds_everything_and_dvc_reports_it(pipeline: tuple[Path, Path]) -> None:
    repo, _ = pipeline
    status = sh("dvc", "status", "--json", cwd=repo)
    assert json.loads(status.stdout) == {}
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo).stdout)
    files = next(iter(shown.values()))["data"]
    for name in BENCHMARKS:
        metrics = files[f"metrics/{name}.json"]["data"]
        assert set(metrics) == set(BENCHMARKS)  # in-domain and both cross-domain tests
        assert 0.0 <= metrics[name]["t2i"]["R1"] <= 100.0
        assert files[f"runs/{name}/selection.json"]["data"]["protocol"] in {
            "val",
            "heldout",
            "test",
            "last",
        }
    html = (repo / "reports" / "pipeline" / "report.html").read_text()
    assert "Cross-domain" in html and "data:image/png;base64," in html
    untracked = sh("git", "status", "--porcelain", "--untracked-files=all", cwd=repo).stdout
    small = re.compile(r"(.*\.gitignore|dvc\.lock|metrics/[\w-]+\.json|runs/[\w-]+/"
                       r"(selection\.json|curves\.csv))")  # fmt: skip
    for line in untracked.splitlines():  # checkpoints, data and reports are DVC's, not git's
        assert small.fullmatch(line[3:]), f"git would take {line[3:]}"


def test_each_cross_domain_cell_is_what_uit_evaluate_gives(
    pipeline: tuple[Path, Path], tmp_path: Path
) -> None:
    """All 9 (trained, tested) pairs: the evaluate stage's metrics file against the CLI's
    ``uit evaluate`` of the same checkpoint on the same prepared benchmark, run on its own."""
    repo, _ = pipeline
    for trained in BENCHMARKS:
        stage = json.loads((repo / f"metrics/{trained}.json").read_text())
        for tested in BENCHMARKS:
            out = tmp_path / f"{trained}-on-{tested}"
            args = ["evaluate", str(repo / f"runs/{trained}/checkpoints/best"),
                    str(repo / f"data/prepared/{tested}"), "--out", str(out)]  # fmt: skip
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, result.output
            alone = json.loads((out / "metrics.json").read_text())
            for direction in ("t2i", "i2t"):
                cell, expected = stage[tested][direction], alone[direction]
                assert cell.keys() == expected.keys(), (trained, tested, direction)
                for metric, value in expected.items():
                    assert cell[metric] == pytest.approx(value, abs=1e-9), (trained, tested, metric)


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """``## heading`` -> the cells of the first Markdown table under it (header row first)."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("|") and not re.fullmatch(r"\|(-+\|)+", line):
            tables.setdefault(heading, []).append([c.strip() for c in line.strip("|").split("|")])
    return tables


def test_report_tables_show_the_metrics_files(pipeline: tuple[Path, Path]) -> None:
    """Every in-domain and cross-domain cell of report.md against metrics/*.json and
    runs/*/selection.json, formatted as the report formats them (one decimal)."""
    repo, _ = pipeline
    tables = markdown_tables((repo / "reports/pipeline/report.md").read_text())
    metrics = {n: json.loads((repo / f"metrics/{n}.json").read_text()) for n in BENCHMARKS}
    name = {SPECS[n].folder: n for n in BENCHMARKS}  # the report's names for the benchmarks
    header, *rows = tables["In-domain test metrics (text-to-image, %)"]
    assert header == ["trained on", "R1", "R5", "R10", "mAP", "mINP", "selection", "epoch"]
    assert sorted(name[row[0]] for row in rows) == sorted(BENCHMARKS)
    for row in rows:
        trained = name[row[0]]
        t2i = metrics[trained][trained]["t2i"]
        assert row[1:6] == [f"{t2i[m]:.1f}" for m in header[1:6]], trained
        selection = json.loads((repo / f"runs/{trained}/selection.json").read_text())
        assert row[6].split()[0] == selection["protocol"]
        assert row[7] == str(selection["best_epoch"])
    header, *rows = tables["Cross-domain R@1 (%)"]
    tested = [name[cell] for cell in header[1:]]
    assert sorted(tested) == sorted(BENCHMARKS) and len(rows) == len(BENCHMARKS)
    for row in rows:
        trained = name[row[0]]
        expected = [f"{metrics[trained][t]['t2i']['R1']:.1f}" for t in tested]
        assert row[1:] == expected, trained
    # before and after fine-tuning: the pretrain stage's weights scored on the same test split
    header, *rows = tables["Before and after fine-tuning (text-to-image, %)"]
    assert header[:3] == ["benchmark", "zero-shot R1", "fine-tuned R1"]
    assert sorted(name[row[0]] for row in rows) == sorted(BENCHMARKS)
    for row in rows:
        scored = metrics[name[row[0]]][name[row[0]]]
        assert row[1:3] == [f"{scored['zero_shot']['t2i']['R1']:.1f}",
                            f"{scored['t2i']['R1']:.1f}"]  # fmt: skip
        assert row[5] == "runs/pretrain/model.safetensors"
        # TIR's colour error against both baselines, above the restored pictures
        restoration = scored["restoration"]
        assert restoration["patches"] > 0
        assert (
            f"TIR {restoration['tir']:.1f}, the mean colour"
            in (repo / "reports/pipeline/report.md").read_text()
        )


def test_every_stage_declares_exactly_the_params_it_reads(pipeline: tuple[Path, Path]) -> None:
    records = probe_records(pipeline[1])
    specs = stage_specs()
    assert set(records) == set(specs)  # every stage ran through the probe
    for name, spec in specs.items():
        declared = leaves(spec.get("params", []))
        if name == "parse":  # the tests pin the builtin backend, which needs no trained model
            declared -= {"parse.trained_model"}
        for record in records[name]:
            read = leaves([key for key in record["params"] if key != "*"])
            assert "*" not in record["params"], f"{name} read the whole config"
            assert read == declared, (
                f"stage {name}: reads {sorted(read)}, declares {sorted(declared)}"
            )


def _has_imports(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(tree))


def test_every_stage_declares_exactly_the_code_it_imports(pipeline: tuple[Path, Path]) -> None:
    repo, probes = pipeline
    for name, records in probe_records(probes).items():
        declared = [d for d in stage_specs()[name]["deps"] if re.match(r"(uit|stages)/", d)]
        imported = {m for r in records for m in r["modules"] if m != "_probe.py"}
        for module in imported:
            covered = any(module == d or module.startswith(d.rstrip("/") + "/") for d in declared)
            # uit/__init__.py is the library's front door: lazy re-exports that no stage uses
            # (test_layering: the library and the stages import the modules themselves)
            package_marker = module == "uit/__init__.py" or (
                module.endswith("__init__.py") and not _has_imports(repo / module)
            )
            assert covered or package_marker, f"stage {name} imports {module}, not in its deps"
        for dep in declared:
            used = any(m == dep or m.startswith(dep + "/") for m in imported)
            assert used, f"stage {name} declares {dep} but never imports it"


def uit(*args: str, cwd: Path) -> str:
    result = sh(str(BIN / "uit"), *args, cwd=cwd)
    return result.stdout


def test_report_renders_offline_in_headless_chromium(pipeline: tuple[Path, Path]) -> None:
    repo, _ = pipeline
    html = (repo / "reports/pipeline/report.html").read_text()
    for part in ("Cross-domain", "Training curves", "Retrievals on RSTPReid test",
                 "TIR restorations (RSTPReid)", "ground-truth image", "optimistic"):  # fmt: skip
        assert part in html, part
    assert "<script" not in html and "http://" not in html and "https://" not in html
    need_browser()
    shot = repo / "report.png"
    check = check_page(repo / "reports/pipeline/report.html", shot)
    assert check.console_errors == [] and check.remote_resources == []
    assert check.images >= 6 and check.broken_images == []  # curves, strips, restorations
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_export_keeps_only_the_dual_encoder(pipeline: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _ = pipeline
    best = repo / "runs/rstpreid/checkpoints/best"
    uit("export", str(best), str(tmp_path / "model"), cwd=repo)
    weights = load_file(str(tmp_path / "model/weights.safetensors"))
    assert weights and not any(
        k.startswith(("id_head", "tir_decoder", "encoder.")) for k in weights
    )
    for source, out in ((best, "trained"), (tmp_path / "model", "exported")):
        uit("evaluate", str(source), "data/prepared/rstpreid", "--out", str(tmp_path / out),
            cwd=repo)  # fmt: skip
    trained, exported = (json.loads((tmp_path / f"{n}/metrics.json").read_text())
                         for n in ("trained", "exported"))  # fmt: skip
    assert trained["t2i"] == exported["t2i"]


def test_search_ranks_caches_and_notices_changed_images(
    pipeline: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, _ = pipeline
    gallery = tmp_path / "gallery"
    shutil.copytree(repo / "data/synthetic/RSTPReid/imgs", gallery)
    best = str(repo / "runs/rstpreid/checkpoints/best")
    query = "a woman in a red coat carrying a black backpack"
    args = ["search", best, query, "--gallery", str(gallery), "--json", "--top-k", "5",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    first = json.loads(uit(*args, "--sheet", str(tmp_path / "sheet.png"), cwd=repo))
    count = len(list(gallery.rglob("*.jpg")))
    assert first["encoded_now"] == count and len(first["results"]) == 5
    scores = [r["score"] for r in first["results"]]
    assert scores == sorted(scores, reverse=True)
    assert (tmp_path / "sheet.png").read_bytes().startswith(b"\x89PNG")
    again = json.loads(uit(*args, cwd=repo))
    assert again["encoded_now"] == 0 and again["results"] == first["results"]
    changed = Path(first["results"][0]["path"])
    Image.new("RGB", (64, 128), (0, 0, 255)).save(changed)  # same name, new contents
    third = json.loads(uit(*args, cwd=repo))
    assert third["encoded_now"] == 1
    # the brute force answer for the top image: its cosine with the sentence
    encoder, cfg = load_encoder(best)
    options = EvalOptions()
    image = encode_images(encoder.eval(), [Path(third["results"][0]["path"])], options)
    text = encode_texts(encoder, [query], build_tokenizer(cfg), options)
    # the cache keeps float16 embeddings: scores agree to float16 rounding
    assert float(image[0] @ text[0]) == pytest.approx(third["results"][0]["score"], abs=2e-3)


def planned(repo: Path, section: str, key: str, value: Any) -> set[str]:
    """The stages DVC's own plan would run after ``section.key`` changes to ``value``: ``dvc
    repro --dry`` names the stages whose own deps changed, ``--force-downstream`` adds what
    depends on them (a dry run produces no new outputs for DVC to see change); params.yaml and
    dvc.lock are as before afterwards."""
    params = repo / "params.yaml"
    baseline, lock = params.read_text(), (repo / "dvc.lock").read_bytes()
    changed = yaml.safe_load(baseline)
    changed[section][key] = value
    params.write_text(yaml.safe_dump(changed, sort_keys=False))
    try:
        result = sh("dvc", "repro", "--dry", "--force-downstream", cwd=repo, env=_env())
    finally:
        params.write_text(baseline)
    assert (repo / "dvc.lock").read_bytes() == lock
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def test_a_loss_change_reruns_only_training_evaluation_and_report(
    pipeline: tuple[Path, Path],
) -> None:
    """DVC's plan, writing nothing (the experiments that really run such a change, through
    workers, are tests/test_deployment.py and tests/test_workers.py): pretraining is not
    re-run by a fine-tuning change; a pretraining change re-runs it and everything after."""
    repo, _ = pipeline
    after_training = {f"{stage}@{name}" for stage in ("train", "evaluate") for name in BENCHMARKS}
    assert planned(repo, "loss", "cmt", 0) == after_training | {"report"}
    assert planned(repo, "pretrain", "epochs", 2) == after_training | {"pretrain", "report"}


def test_paper_profile_draws_nothing_and_real_data_is_dvc_tracked(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    synthesize(repo / "data" / "real", SynthConfig(size="tiny", seed=1), ("rstpreid",))
    profile = sh(str(BIN / "uit"), "profile", "paper", "--data-root", "data/real", cwd=repo)
    assert "data.source" in profile.stdout and "model.name" in profile.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["name"] == "ViT-B-16" and "benchmarks" not in params["synth"]
    assert params["train"]["epochs"] == 60 and params["synth"]["size"] == "tiny"  # others kept
    sh("dvc", "add", "data/real/RSTPReid", cwd=repo)
    sh("dvc", "repro", "synth", "prepare@rstpreid", cwd=repo)
    assert list((repo / "data/synthetic").iterdir()) == []  # real source: nothing drawn
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare@rstpreid"]
    assert any(dep["path"] == "data/real" and dep.get("md5") for dep in lock["deps"])
    assert not any(dep["path"].startswith("data/synthetic") for dep in lock["deps"])


def test_a_killed_training_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", params={"data": {"benchmarks": ["rstpreid"]}})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("dvc", "repro", "parse@rstpreid", cwd=repo)
    state = repo / "runs/rstpreid/checkpoints/last/state.json"
    process = subprocess.Popen(["dvc", "repro", "train@rstpreid"], cwd=repo, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not state.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # as a power cut would
    process.wait()
    killed_at = json.loads(state.read_text())["epoch"]  # 0-based, last finished epoch
    assert killed_at < 3, "training finished before it could be killed"
    again = sh("dvc", "repro", "train@rstpreid", cwd=repo)
    output = again.stdout + again.stderr
    assert f"resumed runs/rstpreid at epoch {killed_at + 2}" in output
    assert "epoch 1:" not in output  # no finished epoch is trained twice
    assert json.loads(state.read_text())["epoch"] == 3
    assert json.loads(sh("dvc", "status", "--json", "train@rstpreid", cwd=repo).stdout) == {}
    weights = repo / "runs/rstpreid/checkpoints/last/weights.safetensors"
    resumed = load_file(str(weights))
    fresh = sh("dvc", "repro", "--force", "--single-item", "train@rstpreid", cwd=repo)
    assert "resumed" not in fresh.stdout + fresh.stderr  # finished runs start afresh
    straight = load_file(str(weights))
    assert resumed.keys() == straight.keys()
    for key in straight:  # a power cut costs time, never a different model
        assert torch.equal(resumed[key], straight[key]), key


def test_an_erasure_from_a_benchmark_survives_dvc_repro_of_its_prepare_stage(
    pipeline: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real DVC removes a stage's output before it runs the stage again: the erasure list of
    the prepared benchmark sits beside that folder, so the identity stays erased, and the
    stage's output (and so everything after it) is the same as before."""
    from uit.data.prepared import erasure_file
    from uit.retrieval.live import erase_images
    from uit.retrieval.search import read_gallery

    repo, _ = pipeline
    prepared = repo / "data/prepared/rstpreid"
    best = repo / "runs/rstpreid/checkpoints/best"
    pid = read_gallery(prepared).pids[0]
    lock = (repo / "dvc.lock").read_bytes()
    try:
        erase_images(best, prepared, pids=[pid], cache_dir=tmp_path / "cache")
        sh("dvc", "repro", "--force", "--single-item", "prepare@rstpreid", cwd=repo, env=_env())
        assert pid not in read_gallery(prepared).pids
        assert (repo / "dvc.lock").read_bytes() == lock
    finally:  # the other tests of this module read the benchmark whole
        erasure_file(prepared).unlink(missing_ok=True)
    assert pid in read_gallery(prepared).pids
