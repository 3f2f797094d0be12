"""Stage ``pretrain``: params ``pretrain`` (and ``model``, ``synth``) -> the pretraining corpus
(``--corpus``), the pretrained dual encoder as open_clip weights (``--out``) and its held-out
retrieval metrics (``--metrics``).

It pretrains only where ``model.pretrained`` names its weights (``runs/pretrain/
model.safetensors``, the demo); with any other value (``openai``, a file of your own, or ""
for random weights) it draws and trains nothing and says so in the metrics file, so the
paper profile's DAG is the same one.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from uit.core.boundary import run_stage
from uit.core.config import PRETRAINED_WEIGHTS, load_config
from uit.core.console import ProgressReporter, adder, progress_bars
from uit.core.io import atomic_write_json
from uit.training.pretrain import pretrain, pretraining_enabled

log = logging.getLogger("stages.pretrain")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", required=True, help="folder for the pretraining corpus")
    parser.add_argument("--out", required=True, help="folder for the run and the weights")
    parser.add_argument("--metrics", required=True, help="JSON file of the held-out metrics")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    corpus, out = Path(args.corpus), Path(args.out)
    if not pretraining_enabled(cfg):
        corpus.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        reason = (f"model.pretrained is {cfg.model.pretrained!r}, not {PRETRAINED_WEIGHTS}: "
                  "nothing pretrained here")  # fmt: skip
        log.info(reason)
        atomic_write_json(Path(args.metrics), {"pretrained": False, "reason": reason})
        return
    with progress_bars() as progress:
        scores = pretrain(cfg, corpus, out, reporter=ProgressReporter(progress),
                          progress=adder(progress), workers=os.cpu_count() or 1)  # fmt: skip
    atomic_write_json(Path(args.metrics), scores)


if __name__ == "__main__":
    run_stage(main)
