"""Train and evaluate as whole operations on folders: what the CLI and the DVC stages call.

These functions do the file I/O around ``uit.train.fit`` and ``uit.evaluate.evaluate``, so the
two front doors share one code path.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uit.boundary import PREPARED, reading
from uit.checkpoint import read_state
from uit.config import Config
from uit.data.dataset import Manifests, read_manifests
from uit.device import autocast_dtype, resolve_device
from uit.errors import DataError
from uit.evaluate import EvalOptions, Tokenizer, evaluate
from uit.io import atomic_write_bytes, atomic_write_json
from uit.model.build import build_tokenizer, inference_precision, load_encoder
from uit.model.encoder import DualEncoder

METRICS, TOP_K = "metrics.json", "top_k.parquet"
log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from uit.console import NewBar
    from uit.train import FitResult, Reporter


def train_benchmark(
    cfg: Config,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    parsed_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    restart: bool = False,
) -> FitResult:
    """Fit on a prepared benchmark; attribute words (for the augmentation) and tagged words (for
    the token masking) come from ``parsed_dir`` when ``augment.keep_attributes_p`` is above 0 or
    ``augment.mask_tokens`` is on.

    ``restart``: start afresh unless ``out_dir`` holds an interrupted run of this configuration
    (what a pipeline stage wants: its output folder persists so that a killed run resumes, but a
    finished run or one of another configuration is replaced, never continued).
    """
    # Imported here so that evaluation does not import (and depend on) the training code.
    from uit.text.augment import build_augment
    from uit.text.parsed import read_attribute_words, read_tagged_words
    from uit.train import clear_run, decide_run, fit

    augmenting, masking = cfg.augment.keep_attributes_p > 0, cfg.augment.mask_tokens
    words, augment, tagged = None, None, None
    if parsed_dir is not None:
        if augmenting:
            words, augment = read_attribute_words(parsed_dir), build_augment(cfg.augment)
        if masking:
            tagged = read_tagged_words(parsed_dir)
    elif augmenting or masking:
        keys = [key for key, on in (("augment.keep_attributes_p > 0", augmenting),
                                    ("augment.mask_tokens", masking)) if on]  # fmt: skip
        raise DataError(
            f"{' and '.join(keys)} needs the parsed captions: pass the folder written by "
            "`uit data parse` (or set augment.keep_attributes_p=0 and augment.mask_tokens=false)"
        )
    decision = decide_run(out_dir, cfg, replace=restart)  # the one run-folder policy
    if decision == "replace":
        log.info("%s holds a finished run or another configuration: starting afresh", out_dir)
    if restart and decision != "resume":
        clear_run(out_dir)
    return fit(cfg, prepared_dir, out_dir, attribute_words=words, augment=augment,
               tagged_words=tagged, reporter=reporter)  # fmt: skip


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
    torch_device = resolve_device(device)
    precision = inference_precision(read_state(checkpoint_dir))
    options = EvalOptions(device=torch_device, dtype=autocast_dtype(torch_device, precision),
                          batch_size=batch_size)  # fmt: skip
    return encoder.to(torch_device).eval(), build_tokenizer(model_cfg), options


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
) -> dict[str, dict[str, Any]]:
    """Evaluate one checkpoint on several benchmarks (in- and cross-domain), loading it once.

    Writes ``out_dir/<benchmark>/{metrics.json,top_k.parquet}`` per benchmark and, for DVC,
    ``metrics_file`` with every benchmark's text-to-image and image-to-text metrics.
    """
    every = {name: _split_manifests(path, split) for name, path in prepared_dirs.items()}
    encoder, tokenizer, options = load_for_inference(checkpoint_dir, device, batch_size)
    out_dir = Path(out_dir)
    combined = {}
    for name, manifests in every.items():
        metrics = _evaluate_into(encoder, tokenizer, manifests, split, options,
                                 top_k_file(out_dir, name).parent, str(checkpoint_dir),
                                 progress)  # fmt: skip
        combined[name] = {"t2i": metrics["t2i"], "i2t": metrics["i2t"]}
    atomic_write_json(Path(metrics_file), combined)
    return combined


def top_k_file(evals_dir: str | Path, tested: str) -> Path:
    """Where ``evaluate_across`` into ``evals_dir`` put the top 10s on benchmark ``tested``
    (what the report shows): the one statement of that layout."""
    return Path(evals_dir) / tested / TOP_K


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
    atomic_write_json(out_dir / METRICS, metrics)
    buffer = io.BytesIO()
    result.top_k.write_parquet(buffer)
    atomic_write_bytes(out_dir / TOP_K, buffer.getvalue())
    return metrics
