"""Stage ``parse``: a prepared benchmark's captions -> ``attributes.parquet`` and ``parse.json``."""

from __future__ import annotations

import argparse

from uit.core.boundary import run_stage
from uit.core.config import load_config
from uit.core.console import bars
from uit.parsing.parse import parse_benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="folder written by stage prepare")
    parser.add_argument("--out", required=True, help="folder for the parsed captions")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params).parse
    with bars() as bar:
        parse_benchmark(
            args.prepared,
            args.out,
            cfg,
            progress=bar,
        )


if __name__ == "__main__":
    run_stage(main)
