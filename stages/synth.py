"""Stage ``synth``: params ``synth`` -> the three synthetic benchmarks under ``--root``."""

from __future__ import annotations

import argparse

from stages._common import bars, run
from uit.config import load_config
from uit.data.synth import synthesize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="folder to write the benchmarks into")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params).synth
    with bars() as bar:
        synthesize(args.root, cfg, progress=lambda name, total: bar(f"drawing {name}", total))


if __name__ == "__main__":
    run(main)
