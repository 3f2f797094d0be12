"""The UIT ablation on a prepared benchmark: each idea switched on alone and all together, with
several seeds, every run selected on val and scored on test, with the diagnostics of each idea
beside R@1 and mAP (attribute binding, look-alike R@1, paraphrase R@1 where the benchmark is
synthetic, TIR's colour error from the own and another identity's caption where TIR trained).
Prints Markdown tables (mean and standard deviation; each variant paired with the baseline of
the same seed, with the standard error of the paired mean) and writes them, with the per-run
numbers, to ``--out``.

Usage: ``python experiments/ablation.py PREPARED PARSED --out docs/ablation.md [--seeds 0 1 2]
[--set section.key=value ...]``; the base configuration is ``params.yaml`` plus the overrides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from uit.core.config import load_config
from uit.retrieval.evaluate import evaluate_checkpoint, in_domain_extras
from uit.training.benchmark import train_benchmark

VARIANTS = {
    "SDM + ID (baseline)": ["loss.cmt=0", "loss.tir=0", "augment.keep_attributes_p=0"],
    "+ CMT": ["loss.tir=0", "augment.keep_attributes_p=0"],
    "+ TIR": ["loss.cmt=0", "augment.keep_attributes_p=0"],
    "+ attribute augmentation": ["loss.cmt=0", "loss.tir=0"],
    "full UIT": [],
}
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
# The diagnostics of the ideas, flattened into a run's record (absent where they do not apply).
DIAGNOSTICS = ("binding", "lookalike", "paraphrase_drop", "tir_own", "tir_other", "mean_colour")
BASELINE = "SDM + ID (baseline)"


def run_variant(args: argparse.Namespace, name: str, overrides: list[str], seed: int) -> dict:
    cfg = load_config(args.params, [*args.set, *overrides, f"train.seed={seed}"])
    work = Path(args.work) / f"{name.replace(' ', '_').replace('+', 'p')}-s{seed}"
    start = time.perf_counter()
    train_benchmark(cfg, args.prepared, work, parsed_dir=args.parsed)
    best = work / "checkpoints/best"
    metrics = evaluate_checkpoint(best, args.prepared, work / "test", parsed_dir=args.parsed)
    extras = in_domain_extras(best, args.prepared, zero_shot=False)  # the same in every run
    return {"variant": name, "seed": seed, "seconds": time.perf_counter() - start,
            **metrics["t2i"], **diagnostics(metrics, extras)}  # fmt: skip


def diagnostics(metrics: dict, extras: dict) -> dict[str, float]:
    found = {}
    if "binding" in metrics:
        found["binding"] = metrics["binding"]["all"]["score"]
    if "lookalike" in metrics:
        found["lookalike"] = metrics["lookalike"]["R1"]
    drops = [row["drop"] for row in metrics.get("paraphrase", {}).values()]
    if drops:
        found["paraphrase_drop"] = statistics.mean(drops)
    restoration = extras.get("restoration")
    if restoration:
        found |= {"tir_own": restoration["tir"], "tir_other": restoration["tir_other"],
                  "mean_colour": restoration["mean_colour"]}  # fmt: skip
    return found


def table(runs: list[dict], metrics: tuple[str, ...] = METRICS) -> str:
    """Mean ± standard deviation over seeds per variant; "-" where a metric does not apply."""
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name in VARIANTS:
        rows = [r for r in runs if r["variant"] == name]
        if not rows:
            continue
        cells = []
        for metric in metrics:
            values = [r[metric] for r in rows if metric in r]
            if not values:
                cells.append("-")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(
    runs: list[dict], metrics: tuple[str, ...] = ("R1", "mAP", "binding", "lookalike")
) -> str:
    """Each variant against the baseline trained with the same seed: the mean and standard
    deviation of the per-seed differences, and on how many seeds the variant was ahead. The
    seed moves both runs of a pair alike (the same data order and initial heads), so these
    differences are what the ablation can tell apart; their spread is the noise to beat."""
    base = {r["seed"]: r for r in runs if r["variant"] == BASELINE}
    header = ["variant", *(f"Δ{m} (mean ± SE)" for m in metrics), "ΔR1 std", "ahead on seeds"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    for name in VARIANTS:
        if name == BASELINE:
            continue
        pairs = [(r, base[r["seed"]]) for r in runs if r["variant"] == name and r["seed"] in base]
        if not pairs:
            continue
        cells = []
        for metric in metrics:
            deltas = [r[metric] - b[metric] for r, b in pairs if metric in r and metric in b]
            if not deltas:
                cells.append("-")
                continue
            spread = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
            cells.append(f"{statistics.mean(deltas):+.2f} ± {spread / len(deltas) ** 0.5:.2f}")
        r1 = [r[metrics[0]] - b[metrics[0]] for r, b in pairs]
        std = statistics.stdev(r1) if len(r1) > 1 else 0.0
        ahead = sum(r[metrics[0]] > b[metrics[0]] for r, b in pairs)
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {std:.2f} | {ahead} of {len(pairs)} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared")
    parser.add_argument("parsed")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="runs/ablation")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    # Every finished run is appended to a JSON-lines file; a restarted ablation skips them.
    log = Path(args.out).with_suffix(".runs.jsonl")
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    runs = []
    for seed in args.seeds:
        for name, overrides in VARIANTS.items():
            previous = [r for r in done if r["variant"] == name and r["seed"] == seed]
            runs.append(previous[0] if previous else run_variant(args, name, overrides, seed))
            if not previous:
                with log.open("a") as handle:
                    handle.write(json.dumps(runs[-1]) + "\n")
            print(json.dumps(runs[-1]), flush=True)
    text = table(runs) + "\n\nThe ideas' diagnostics (mean ± std over seeds):\n\n"
    text += table(runs, DIAGNOSTICS)
    text += "\n\nPaired with the baseline of the same seed (R@1 decides 'ahead'):\n\n"
    text += paired(runs)
    print(text)
    Path(args.out).write_text(
        f"{text}\n\nPer run:\n\n```\n" + "\n".join(json.dumps(r) for r in runs) + "\n```\n"
    )


if __name__ == "__main__":
    main()
