"""Evaluation: encode a split's gallery images and caption queries, rank, score (design §5).

Text-to-image is the task; image-to-text is reported too. Cross-domain evaluation is the same
call with a model trained on another benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from uit.data.dataset import ImageDataset, Manifests, Tokenizer
from uit.data.transforms import build_eval_transform
from uit.device import autocast
from uit.metrics import I2T_METRICS, ranking_keys, retrieval_metrics
from uit.model.encoder import DualEncoder

if TYPE_CHECKING:
    from uit.console import Advance, NewBar


@dataclass(frozen=True)
class EvalOptions:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None  # autocast dtype, None for fp32
    batch_size: int = 256
    workers: int = 0
    top_k: int = 10


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # {"t2i": {...}, "i2t": {...}}
    top_k: pl.DataFrame  # one row per query: its ranked gallery images and which are hits


@torch.no_grad()
def encode_images(
    encoder: DualEncoder,
    paths: Sequence[Path],
    options: EvalOptions,
    progress: Advance | None = None,
) -> torch.Tensor:
    """L2-normalised image features (N, D), float32 on the CPU."""
    transform = build_eval_transform(encoder.image_size, encoder.image_mean, encoder.image_std)
    loader = DataLoader(ImageDataset(paths, transform), batch_size=options.batch_size,
                        num_workers=options.workers)  # fmt: skip
    feats = []
    for images in loader:
        with autocast(options.device, options.dtype):
            feats.append(
                F.normalize(encoder.encode_image(images.to(options.device)).float(), dim=-1).cpu()
            )
        if progress:
            progress(len(images))
    return torch.cat(feats) if feats else torch.empty(0, encoder.embed_dim)


@torch.no_grad()
def encode_texts(
    encoder: DualEncoder,
    texts: Sequence[str],
    tokenizer: Tokenizer,
    options: EvalOptions,
    progress: Advance | None = None,
) -> torch.Tensor:
    """L2-normalised text features (N, D), float32 on the CPU."""
    feats = []
    for start in range(0, len(texts), options.batch_size):
        chunk = list(texts[start : start + options.batch_size])
        with autocast(options.device, options.dtype):
            out = encoder.encode_text(tokenizer(chunk).to(options.device))
        feats.append(F.normalize(out.float(), dim=-1).cpu())
        if progress:
            progress(len(chunk))
    return torch.cat(feats) if feats else torch.empty(0, encoder.embed_dim)


def top_k_table(similarity: torch.Tensor, split: Manifests, k: int) -> pl.DataFrame:
    """Each query's top-k gallery images (ties to the lower index) with hits marked."""
    k = min(k, similarity.shape[1])
    order = torch.topk(ranking_keys(similarity), k, dim=1).indices  # (Q, k)
    scores = similarity.gather(1, order)
    gallery_ids = torch.tensor(split.images["image_id"].to_list())[order]
    gallery_pids = torch.tensor(split.images["pid"].to_list())[order]
    query_pids = torch.tensor(split.captions["pid"].to_list())
    paths = split.images["path"].to_numpy()
    return pl.DataFrame({
        "caption_id": split.captions["caption_id"],
        "text": split.captions["text"],
        "pid": split.captions["pid"],
        "image_ids": gallery_ids.tolist(),
        "paths": [paths[row].tolist() for row in order.numpy()],
        "scores": scores.tolist(),
        "hits": (gallery_pids == query_pids.unsqueeze(1)).tolist(),
    })  # fmt: skip


def evaluate(
    encoder: DualEncoder,
    split: Manifests,
    tokenizer: Tokenizer,
    options: EvalOptions,
    progress: NewBar | None = None,
) -> Evaluation:
    """Score a split: its images are the gallery, its captions the queries."""
    encoder.eval()
    image_bar = progress("encoding gallery", split.images.height) if progress else None
    gallery = encode_images(encoder, split.paths(), options, image_bar)
    text_bar = progress("encoding queries", split.captions.height) if progress else None
    queries = encode_texts(encoder, split.captions["text"].to_list(), tokenizer, options, text_bar)
    similarity = queries @ gallery.T  # (Q, G)
    query_pids, gallery_pids = split.captions["pid"].to_numpy(), split.images["pid"].to_numpy()
    t2i = retrieval_metrics(similarity, query_pids, gallery_pids)
    i2t = retrieval_metrics(similarity.T, gallery_pids, query_pids, missing="exclude")
    i2t.pop("excluded")  # gallery images whose every caption was dropped have no query to find
    metrics: dict[str, Any] = {"t2i": t2i, "i2t": {k: i2t[k] for k in I2T_METRICS}}
    return Evaluation(metrics=metrics, top_k=top_k_table(similarity, split, options.top_k))
