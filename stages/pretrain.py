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

from uit.core.boundary import run_stage
from uit.core.config import load_config
from uit.training.entry import pretrain_entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", required=True, help="folder for the pretraining corpus")
    parser.add_argument("--out", required=True, help="folder for the run and the weights")
    parser.add_argument("--metrics", required=True, help="JSON file of the held-out metrics")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    pretrain_entry(load_config(args.params), args.corpus, args.out, args.metrics,
                   when_enabled=True)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
