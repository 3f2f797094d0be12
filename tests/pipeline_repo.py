"""A throwaway copy of the project's pipeline (dvc.yaml, stages/, uit/ with its flows) in its
own git and DVC repository, with a tiny params.yaml: what the DVC and Prefect tests run on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"

TINY: dict[str, dict[str, Any]] = {
    "synth": {"size": "tiny", "seed": 3},
    "data": {"check_images": "exists"},
    "parse": {"backend": "builtin"},  # as in CI, even where a trained spaCy pipeline is installed
    "model": {"name": "uit-tiny", "image_height": 64, "image_width": 32, "context_length": 32},
    "tir": {"decoder_layers": 1},
    "train": {"epochs": 1, "batch_size": 16, "num_workers": 0, "eval_batch_size": 64},
    "pretrain": {"identities": 40, "heldout": 8, "epochs": 1, "batch_size": 16},
    "report": {"random_queries": 1, "restorations": 1},
}


# One benchmark, fine-tuned from random weights: for the tests of orchestration (deployments,
# workers, experiments), where what trains does not matter; tests/test_pipeline.py runs the
# pretrain stage and all three benchmarks.
ONE_BENCHMARK: dict[str, dict[str, Any]] = {
    "data": {"benchmarks": ["rstpreid"]},
    "model": {**TINY["model"], "pretrained": ""},
}


def env() -> dict[str, str]:
    """The project's interpreter first on PATH (DVC stages call ``python``), no analytics."""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": ""}


def sh(
    *args: str, cwd: Path, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=kwargs.pop("env", env()), capture_output=True,
                            text=True, **kwargs)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def tiny_params(overrides: dict[str, dict[str, Any]] | None = None) -> str:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in {**TINY, **(overrides or {})}.items():
        params.setdefault(section, {}).update(values)
    return yaml.safe_dump(params, sort_keys=False)


def make_repo(
    path: Path, *, probe: bool = False, params: dict[str, dict[str, Any]] | None = None
) -> Path:
    """Copy the pipeline into ``path``, init git and DVC, commit. With ``probe``, every stage
    runs through ``tests/_probe.py`` (which records the params and modules it uses); ``params``
    overrides sections of the tiny params.yaml (``{"data": {"benchmarks": ["rstpreid"]}}`` keeps
    one benchmark's stages in the DAG)."""
    path.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("uit", "stages", "profiles"):
        shutil.copytree(ROOT / folder, path / folder, ignore=ignore)
    for name in ("dvc.yaml", "prefect.yaml", "prefect.toml", ".gitignore", ".dvcignore"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, path / name)
    dvc_yaml = (path / "dvc.yaml").read_text()
    if probe:
        shutil.copy(ROOT / "tests" / "_probe.py", path / "_probe.py")
        dvc_yaml = dvc_yaml.replace("python -m stages.", "python -m _probe stages.")
    (path / "dvc.yaml").write_text(dvc_yaml)
    (path / "params.yaml").write_text(tiny_params(params))
    sh("git", "init", "-q", "-b", "main", cwd=path)
    sh("git", "config", "user.email", "test@example.com", cwd=path)
    sh("git", "config", "user.name", "test", cwd=path)
    sh("dvc", "init", "-q", cwd=path)
    sh("dvc", "config", "core.analytics", "false", cwd=path)
    sh("git", "add", "-A", cwd=path)
    sh("git", "commit", "-q", "-m", "pipeline", cwd=path)
    return path
