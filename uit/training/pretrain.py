"""Pretraining: CLIP's contrastive objective on the synthetic corpus (``uit.synth.corpus``).

This is UIT's premise in miniature: a dual encoder that already matches images and generic
captions, which the benchmarks then fine-tune with the paper's recipe. The same ``fit`` loop
trains it with one loss term, ITC, at ``pretrain.logit_scale``, on batches of distinct
identities (``instances_per_id`` 1, so a batch has no false negatives); the held-out corpus
identities select the epoch. The result is written as open_clip weights
(``model.safetensors``, loadable by ``open_clip.load_checkpoint`` and ``model.pretrained``)
with the open_clip model config beside them (``model.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip

from uit.core.config import (
    PRETRAINED_WEIGHTS,
    AugmentConfig,
    Config,
    LossConfig,
    OptimConfig,
    TrainConfig,
)
from uit.core.io import atomic_write_bytes, atomic_write_text, save_tensors
from uit.model.build import register_configs
from uit.model.checkpoint import load_checkpoint
from uit.retrieval.evaluate import evaluate_checkpoint
from uit.synth.corpus import draw_corpus
from uit.training.benchmark import train_benchmark
from uit.training.train import BEST

if TYPE_CHECKING:
    from uit.core.console import NewBar
    from uit.training.train import Reporter

FIT_DIR, WEIGHTS_FILE, CONFIG_FILE = "fit", "model.safetensors", "model.json"


def pretraining_enabled(cfg: Config) -> bool:
    """Whether the pipeline pretrains: ``model.pretrained`` names the pretrain stage's output."""
    return Path(cfg.model.pretrained) == Path(PRETRAINED_WEIGHTS)


def pretrain_config(cfg: Config) -> Config:
    """The fit configuration of pretraining: ``cfg``'s model from random weights, ITC alone at
    ``pretrain.logit_scale``, Adam (eps 1e-8, one learning rate for every group) on
    ``pretrain``'s schedule; of ``train`` only where and how it runs (device, precision, loader
    workers, evaluation batch)."""
    p, run = cfg.pretrain, cfg.train
    return Config(
        model=cfg.model.model_copy(update={"pretrained": ""}),
        augment=AugmentConfig(keep_attributes_p=0.0, mask_tokens=False),
        loss=LossConfig(sdm=0.0, id=0.0, cmt=0.0, tir=0.0, itc=1.0, logit_scale=p.logit_scale),
        optim=OptimConfig(lr=p.lr, weight_decay=p.weight_decay, eps=1e-8,
                          new_module_lr_factor=1.0, bias_lr_factor=1.0),
        train=TrainConfig(epochs=p.epochs, batch_size=p.batch_size, instances_per_id=1,
                          warmup_epochs=p.warmup_epochs, seed=p.seed, selection="val",
                          image_augment=p.image_augment,
                          device=run.device, precision=run.precision,
                          num_workers=run.num_workers, eval_batch_size=run.eval_batch_size),
    )  # fmt: skip


def pretrain(
    cfg: Config,
    corpus_dir: str | Path,
    out_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    progress: NewBar | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Draw the corpus into ``corpus_dir``, pretrain on it; write ``out_dir/fit`` (the run:
    checkpoints, curves), ``out_dir/model.safetensors`` and ``model.json``; return the corpus
    counts and the held-out metrics (what ``metrics/pretrain.json`` holds)."""
    out_dir = Path(out_dir)
    total = cfg.pretrain.identities * cfg.pretrain.images_per_id
    advance = progress("drawing the pretraining corpus", total) if progress else None
    counts = draw_corpus(corpus_dir, cfg.pretrain, cfg.synth, workers=workers, progress=advance)
    result = train_benchmark(pretrain_config(cfg), corpus_dir, out_dir / FIT_DIR,
                             reporter=reporter, restart=True)  # fmt: skip
    best = out_dir / FIT_DIR / BEST
    write_open_clip_weights(best, out_dir / WEIGHTS_FILE)
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(model_config(cfg), indent=2) + "\n")
    scores = evaluate_checkpoint(best, corpus_dir, out_dir / "heldout", split="val",
                                 device=cfg.train.device, progress=progress)  # fmt: skip
    return {"pretrained": True, "corpus": counts, "best_epoch": result.best_epoch,
            "heldout": {"t2i": scores["t2i"], "i2t": scores["i2t"]}}  # fmt: skip


def model_config(cfg: Config) -> dict[str, Any]:
    """open_clip's config of ``model.name`` at the image size and context length trained."""
    register_configs()
    architecture = dict(open_clip.get_model_config(cfg.model.name) or {})
    vision, text = architecture.get("vision_cfg", {}), architecture.get("text_cfg", {})
    size = [cfg.model.image_height, cfg.model.image_width]
    architecture["vision_cfg"] = {**vision, "image_size": size}
    architecture["text_cfg"] = {**text, "context_length": cfg.model.context_length}
    return architecture


def write_open_clip_weights(checkpoint_dir: Path, path: Path) -> None:
    """The dual encoder of a training checkpoint as an open_clip state dict (``clip.*`` keys
    without their prefix), written atomically."""
    weights = load_checkpoint(checkpoint_dir).weights
    prefix = "encoder.clip."
    clip = {k.removeprefix(prefix): v.contiguous() for k, v in weights.items()
            if k.startswith(prefix)}  # fmt: skip
    atomic_write_bytes(path, save_tensors(clip, {"format": "pt", "written_by": "uit pretrain"}))
