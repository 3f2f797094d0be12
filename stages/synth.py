"""Stage ``synth``: params ``synth`` -> one synthetic benchmark under ``--root``."""

from __future__ import annotations

import argparse

from stages._common import bars, run
from uit.config import load_config
from uit.data.formats import SPECS
from uit.data.synth import synthesize

FOLDERS = {spec.folder: name for name, spec in SPECS.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", choices=FOLDERS, help="the benchmark's folder name")
    parser.add_argument("--root", required=True, help="folder to write the benchmark into")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params).synth
    with bars() as bar:
        synthesize(args.root, cfg, (FOLDERS[args.folder],),
                   progress=bar)  # fmt: skip


if __name__ == "__main__":
    run(main)
