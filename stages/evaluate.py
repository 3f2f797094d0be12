"""Stage ``evaluate``: one trained model x the test split of every benchmark in
``data.benchmarks`` (in- and cross-domain) -> per benchmark metrics and top 10, and one
metrics file for DVC. The model is loaded once for all of them. On the benchmark it was trained
on, the file also holds the zero-shot metrics of the weights it was fine-tuned from and TIR's
colour error against its baselines (``uit.retrieval.evaluate.in_domain_extras``). Every
benchmark's entry holds the diagnostics of ``uit.retrieval.evaluate.diagnose``: attribute
binding (from the parsed captions) and, on synthetic data, look-alike retrieval."""

from __future__ import annotations

import argparse
from pathlib import Path

from uit.core.boundary import run_stage
from uit.core.config import load_config
from uit.core.console import bars
from uit.retrieval.evaluate import evaluate_across, in_domain_extras


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (best)")
    parser.add_argument("--benchmark", required=True, help="the benchmark it was trained on")
    parser.add_argument("--prepared", required=True, help="folder of the prepared benchmarks")
    parser.add_argument("--out", required=True, help="folder for each benchmark's top 10s")
    parser.add_argument("--metrics", required=True, help="JSON file of every benchmark's metrics")
    parser.add_argument("--parsed", help="folder of the parsed benchmarks (attribute binding)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    benchmarks = load_config(args.params).data.benchmarks
    prepared = {str(name): Path(args.prepared) / name for name in benchmarks}
    parsed = {str(name): Path(args.parsed) / name for name in benchmarks} if args.parsed else None
    with bars() as bar:
        extras = in_domain_extras(args.checkpoint, prepared[args.benchmark], progress=bar)
        evaluate_across(args.checkpoint, prepared, args.out, args.metrics, progress=bar,
                        extras={args.benchmark: extras}, parsed_dirs=parsed,
                        paraphrased={args.benchmark})  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
