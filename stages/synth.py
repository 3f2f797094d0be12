"""Stage ``synth``: params ``synth`` -> the synthetic benchmarks ``data.benchmarks`` under
``--out`` (``data/synthetic``), in the exact formats of the real three. With ``data.source:
real`` it draws nothing: the folder stays empty and the prepare stages read ``data.root``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from uit.core.boundary import run_stage
from uit.core.config import SYNTHETIC_ROOT, load_config
from uit.core.console import bars
from uit.core.errors import ConfigError
from uit.synth.generate import synthesize

log = logging.getLogger("stages.synth")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=SYNTHETIC_ROOT, help="folder to draw the benchmarks in")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if cfg.data.source != "synthetic":
        log.info("data.source is %s: nothing to draw", cfg.data.source)
        return
    if Path(cfg.data.root) != Path(args.out):
        raise ConfigError(
            f"params.yaml data.root is {cfg.data.root} but the synth stage draws into "
            f"{args.out}: set data.root: {args.out} (or data.source: real for data of your own)"
        )
    with bars() as bar:
        synthesize(args.out, cfg.synth, tuple(cfg.data.benchmarks), progress=bar)


if __name__ == "__main__":
    run_stage(main)
