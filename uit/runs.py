"""Train and evaluate as whole operations on folders: what the CLI and the DVC stages call.

These functions do the file I/O around ``uit.train.fit`` and ``uit.evaluate.evaluate``, so the
two front doors share one code path.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uit.config import Config
from uit.data.dataset import read_manifests
from uit.device import autocast_dtype, resolve_device
from uit.errors import DataError
from uit.evaluate import EvalOptions, evaluate
from uit.io import atomic_write_bytes, atomic_write_json
from uit.model.build import build_tokenizer, load_encoder
from uit.train import FitResult, Reporter, fit

METRICS, TOP_K = "metrics.json", "top_k.parquet"


def train_benchmark(
    cfg: Config,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    parsed_dir: str | Path | None = None,
    reporter: Reporter | None = None,
) -> FitResult:
    """Fit on a prepared benchmark; attribute words (for the augmentation) come from
    ``parsed_dir`` when ``augment.keep_attributes_p`` is above 0."""
    from uit.text.augment import build_augment
    from uit.text.parse import read_attribute_words

    words, augment = None, None
    if cfg.augment.keep_attributes_p > 0:
        if parsed_dir is None:
            raise DataError(
                "augment.keep_attributes_p > 0 needs the parsed captions: pass the folder written "
                "by `uit data parse` (or set augment.keep_attributes_p=0)"
            )
        words, augment = read_attribute_words(parsed_dir), build_augment(cfg.augment)
    return fit(
        cfg, prepared_dir, out_dir, attribute_words=words, augment=augment, reporter=reporter
    )


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 256,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of any prepared benchmark (in- or cross-domain); write
    ``metrics.json`` and each query's top 10 (``top_k.parquet``) to ``out_dir``."""
    manifests = read_manifests(prepared_dir)
    if not manifests.has_split(split):
        raise DataError(
            f"{prepared_dir}: the {manifests.benchmark} manifests have no {split!r} split"
        )
    encoder, model_cfg = load_encoder(checkpoint_dir)
    torch_device = resolve_device(device)
    options = EvalOptions(device=torch_device, dtype=autocast_dtype(torch_device, "auto"),
                          batch_size=batch_size)  # fmt: skip
    result = evaluate(encoder.to(torch_device), manifests.split(split), build_tokenizer(model_cfg),
                      options, progress)  # fmt: skip
    metrics = {"benchmark": manifests.benchmark, "split": split, "checkpoint": str(checkpoint_dir),
               **result.metrics}  # fmt: skip
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / METRICS, metrics)
    buffer = io.BytesIO()
    result.top_k.write_parquet(buffer)
    atomic_write_bytes(out_dir / TOP_K, buffer.getvalue())
    return metrics
