"""Stage ``prepare``: one benchmark's raw folder -> Parquet manifests and ``stats.json``."""

from __future__ import annotations

import argparse

from uit.core.boundary import run_stage
from uit.core.config import BENCHMARKS, load_config
from uit.core.console import bars
from uit.raw.prepare import prepare_benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmark", "-b", required=True, choices=BENCHMARKS)
    parser.add_argument("--root", required=True, help="folder holding the benchmark's folder")
    parser.add_argument("--out", required=True, help="folder for the manifests")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params).data
    with bars() as bar:
        prepare_benchmark(
            args.benchmark,
            args.root,
            args.out,
            drop_missing=cfg.drop_missing,
            check_images=cfg.check_images,
            progress=bar,
        )


if __name__ == "__main__":
    run_stage(main)
