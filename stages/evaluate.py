"""Stage ``evaluate``: a checkpoint x a prepared benchmark's test split -> metrics and top 10."""

from __future__ import annotations

import argparse

from stages._common import bars, run
from uit.runs import evaluate_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (best)")
    parser.add_argument("--prepared", required=True, help="prepared benchmark to test on")
    parser.add_argument("--out", required=True, help="folder for metrics.json and top_k.parquet")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    with bars() as bar:
        evaluate_checkpoint(
            args.checkpoint, args.prepared, args.out, split=args.split, progress=bar
        )


if __name__ == "__main__":
    run(main)
