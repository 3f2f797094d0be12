"""The ablation study's tables (experiments/ablation.py): paired differences with their standard
error, and the ideas' diagnostics taken from what evaluation writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def ablation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "experiments/ablation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(variant: str, seed: int, r1: float, **more: float) -> dict:
    return {"variant": variant, "seed": seed, "R1": r1, "mAP": r1 * 2, **more}


def test_paired_differences_give_the_mean_its_standard_error_and_the_seeds_ahead() -> None:
    module = ablation()
    runs = [run(module.BASELINE, s, r) for s, r in enumerate([1.0, 2.0, 3.0])]
    runs += [run("+ CMT", s, r) for s, r in enumerate([2.0, 4.0, 3.0])]  # deltas 1, 2, 0
    row = next(line for line in module.paired(runs).splitlines() if line.startswith("| + CMT"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # mean 1.00, std 1.00, standard error 1 / sqrt(3); mAP doubles both; no diagnostics: "-"
    assert cells == ["+ CMT", "+1.00 ± 0.58", "+2.00 ± 1.15", "-", "-", "1.00", "2 of 3"]


def test_diagnostics_come_from_the_metrics_and_the_restoration_extras() -> None:
    module = ablation()
    metrics = {"t2i": {"R1": 1.0}, "binding": {"all": {"score": 61.0}},
               "lookalike": {"R1": 37.0, "chance": 35.0},
               "paraphrase": {"icfg-pedes": {"R1": 0.5, "drop": 0.5},
                              "rstpreid": {"R1": 0.0, "drop": 1.0}}}  # fmt: skip
    extras = {"restoration": {"tir": 38.0, "tir_other": 39.0, "mean_colour": 40.0}}
    assert module.diagnostics(metrics, extras) == {
        "binding": 61.0, "lookalike": 37.0, "paraphrase_drop": 0.75,
        "tir_own": 38.0, "tir_other": 39.0, "mean_colour": 40.0}  # fmt: skip
    assert module.diagnostics({"t2i": {}}, {}) == {}  # real data, no TIR: nothing made up
    table = module.table([run(module.BASELINE, 0, 1.0, binding=60.0)], module.DIAGNOSTICS)
    assert "| SDM + ID (baseline) | 60.0 ± 0.0 | - | - | - | - | - |" in table
