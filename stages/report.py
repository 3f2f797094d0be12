"""Stage ``report``: run folders, metrics, top 10s and prepared test sets -> ``report.html``
(offline, self-contained) and ``report.md``."""

from __future__ import annotations

import argparse

from uit.app.collect import read_provenance
from uit.app.report import report_pipeline
from uit.core.boundary import run_stage
from uit.core.config import load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", required=True, help="folder of the train stage's run folders")
    parser.add_argument("--evals", required=True, help="folder of the evaluate stage's top 10s")
    parser.add_argument("--metrics", required=True, help="folder of the evaluate stage's metrics")
    parser.add_argument("--prepared", required=True, help="folder of the prepared benchmarks")
    parser.add_argument("--out", required=True, help="folder for report.html and report.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    provenance = read_provenance(".", args.params, "the pipeline's report stage")
    report_pipeline(load_config(args.params).report, args.runs, args.metrics, args.evals,
                    args.prepared, args.out, provenance=provenance)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
