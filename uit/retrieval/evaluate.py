"""Evaluation: encode a split's gallery images and caption queries, rank, score (design §5).

Text-to-image is the task; image-to-text is reported too. Cross-domain evaluation is the same
call with a model trained on another benchmark.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from uit.core.boundary import PREPARED, reading
from uit.core.config import ModelConfig
from uit.core.device import autocast, autocast_dtype, resolve_device
from uit.core.errors import DataError
from uit.core.io import atomic_write_bytes, atomic_write_json
from uit.data.dataset import ImageDataset, Tokenizer
from uit.data.prepared import Manifests, read_manifests
from uit.data.transforms import build_eval_transform
from uit.model.build import (
    build_model,
    build_tokenizer,
    inference_config,
    inference_precision,
    load_encoder,
)
from uit.model.checkpoint import EXPORT_KIND, read_state
from uit.model.encoder import DualEncoder
from uit.retrieval.metrics import I2T_METRICS, ranking_keys, retrieval_metrics

METRICS_FILE, TOP_K_FILE = "metrics.json", "top_k.parquet"

if TYPE_CHECKING:
    from uit.core.console import Advance, NewBar


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


# Whole operations on folders: what `uit evaluate`, `uit search`, the evaluate stage and the
# report call, so that every front door scores a checkpoint the same way.


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 256,
    progress: NewBar | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of any prepared benchmark (in- or cross-domain); write
    ``metrics.json`` and each query's top 10 (``top_k.parquet``) to ``out_dir``."""
    manifests = _split_manifests(prepared_dir, split)
    encoder, tokenizer, options = load_for_inference(checkpoint_dir, device, batch_size)
    return _evaluate_into(encoder, tokenizer, manifests, split, options, Path(out_dir),
                          str(checkpoint_dir), progress)  # fmt: skip


def load_for_inference(
    checkpoint_dir: str | Path, device: str = "auto", batch_size: int = 256
) -> tuple[DualEncoder, Tokenizer, EvalOptions]:
    """A checkpoint's (or export's) encoder on ``device`` in eval mode, its tokenizer, and
    options in the precision it was trained in (the one its selection scores were computed in)."""
    encoder, model_cfg = load_encoder(checkpoint_dir)
    options = inference_options(checkpoint_dir, device, batch_size)
    return encoder.to(options.device).eval(), build_tokenizer(model_cfg), options


def inference_options(
    checkpoint_dir: str | Path, device: str = "auto", batch_size: int = 256
) -> EvalOptions:
    """Evaluation options for a checkpoint: ``device`` resolved, autocast in the precision it
    was trained in (read from its state, not its weights)."""
    torch_device = resolve_device(device, "--device")
    precision = inference_precision(read_state(checkpoint_dir))
    return EvalOptions(device=torch_device, dtype=autocast_dtype(torch_device, precision),
                       batch_size=batch_size)  # fmt: skip


def evaluate_across(
    checkpoint_dir: str | Path,
    prepared_dirs: Mapping[str, str | Path],
    out_dir: str | Path,
    metrics_file: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 256,
    progress: NewBar | None = None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate one checkpoint on several benchmarks (in- and cross-domain), loading it once.

    Writes ``out_dir/<benchmark>/{metrics.json,top_k.parquet}`` per benchmark and, for DVC,
    ``metrics_file`` with every benchmark's text-to-image and image-to-text metrics, plus
    ``extras`` of a benchmark beside them (``in_domain_extras``).
    """
    every = {name: _split_manifests(path, split) for name, path in prepared_dirs.items()}
    encoder, tokenizer, options = load_for_inference(checkpoint_dir, device, batch_size)
    out_dir = Path(out_dir)
    combined = {}
    for name, manifests in every.items():
        metrics = _evaluate_into(encoder, tokenizer, manifests, split, options,
                                 top_k_file(out_dir, name).parent, str(checkpoint_dir),
                                 progress)  # fmt: skip
        combined[name] = {"t2i": metrics["t2i"], "i2t": metrics["i2t"],
                          **(extras or {}).get(name, {})}  # fmt: skip
    atomic_write_json(Path(metrics_file), combined)
    return combined


def fine_tuned_from(checkpoint_dir: str | Path) -> ModelConfig | None:
    """The model a training checkpoint was fine-tuned from (its ``model.pretrained``: a tag or
    a weights file), or None for a model trained from random weights or an export."""
    model = read_state(checkpoint_dir).get("config", {}).get("model")
    if not isinstance(model, dict) or not model.get("pretrained"):
        return None
    return ModelConfig.model_validate(model)


def in_domain_extras(
    checkpoint_dir: str | Path,
    prepared_dir: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 256,
    progress: NewBar | None = None,
) -> dict[str, Any]:
    """What the evaluate stage adds for the benchmark a model was trained on: ``zero_shot``, the
    metrics of the weights it was fine-tuned from, before fine-tuning (where it had any), and
    ``restoration``, TIR's colour error against its baselines (where it was trained with TIR)."""
    from uit.model.objective import load_objective
    from uit.retrieval.restoration import restoration_quality

    manifests = _split_manifests(prepared_dir, split).split(split)
    options = inference_options(checkpoint_dir, device, batch_size)
    extras: dict[str, Any] = {}
    pretrained = fine_tuned_from(checkpoint_dir)
    if pretrained is not None:
        encoder = build_model(pretrained).to(options.device).eval()
        result = evaluate(encoder, manifests, build_tokenizer(pretrained), options, progress)
        extras["zero_shot"] = {"from": pretrained.pretrained, **result.metrics}
    if read_state(checkpoint_dir).get("kind") == EXPORT_KIND:
        return extras  # an export (uit export): no training heads
    objective = load_objective(checkpoint_dir)
    if objective.tir_decoder is not None:
        tokenizer = build_tokenizer(inference_config(read_state(checkpoint_dir), checkpoint_dir))
        extras["restoration"] = restoration_quality(
            objective.to(options.device), manifests, tokenizer
        )
    return extras


def top_k_file(evals_dir: str | Path, tested: str) -> Path:
    """Where ``evaluate_across`` into ``evals_dir`` put the top 10s on benchmark ``tested``
    (what the report shows): the one statement of that layout."""
    return Path(evals_dir) / tested / TOP_K_FILE


def _split_manifests(prepared_dir: str | Path, split: str) -> Manifests:
    with reading(prepared_dir, *PREPARED):
        manifests = read_manifests(prepared_dir)
    if not manifests.has_split(split):
        raise DataError(
            f"{prepared_dir}: the {manifests.benchmark} manifests have no {split!r} split"
        )
    return manifests


def _evaluate_into(
    encoder: DualEncoder,
    tokenizer: Tokenizer,
    manifests: Manifests,
    split: str,
    options: EvalOptions,
    out_dir: Path,
    checkpoint: str,
    progress: NewBar | None,
) -> dict[str, Any]:
    result = evaluate(encoder, manifests.split(split), tokenizer, options, progress)
    metrics = {"benchmark": manifests.benchmark, "split": split, "checkpoint": checkpoint,
               **result.metrics}  # fmt: skip
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    buffer = io.BytesIO()
    result.top_k.write_parquet(buffer)
    atomic_write_bytes(out_dir / TOP_K_FILE, buffer.getvalue())
    return metrics
