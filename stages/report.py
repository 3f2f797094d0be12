"""Stage ``report``: run folders, metrics and prepared test sets -> ``report.html`` (offline,
self-contained) and ``report.md``."""

from __future__ import annotations

import argparse
from pathlib import Path

from stages._common import run
from uit.config import load_config
from uit.io import atomic_write_text
from uit.report import build_report, read_results, render_html, render_markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", required=True, help="folder of the train stage's run folders")
    parser.add_argument("--evals", required=True, help="folder of the evaluate stage's top 10s")
    parser.add_argument("--metrics", required=True, help="folder of the evaluate stage's metrics")
    parser.add_argument("--prepared", required=True, help="folder of the prepared benchmarks")
    parser.add_argument("--out", required=True, help="folder for report.html and report.md")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params).report
    report = build_report(read_results(args.runs, args.metrics), cfg)
    out = Path(args.out)
    atomic_write_text(out / "report.html", render_html(report))
    atomic_write_text(out / "report.md", render_markdown(report))


if __name__ == "__main__":
    run(main)
