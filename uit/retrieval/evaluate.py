"""Evaluation: encode a split's gallery images and caption queries, rank, score (design §5).

Text-to-image is the task; image-to-text is reported too. Cross-domain evaluation is the same
call with a model trained on another benchmark.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from uit.core.config import INFERENCE_BATCH_SIZE, TOP_K, ModelConfig
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
from uit.model.checkpoint import read_state
from uit.model.encoder import DualEncoder
from uit.model.export import is_export
from uit.retrieval.diagnostics import (
    binding_scores,
    counterfactuals,
    lookalike_chance,
    lookalike_margin,
    lookalike_r1,
    paraphrases,
    read_families,
    read_identities,
)
from uit.retrieval.metrics import I2T_METRICS, ranking_keys, retrieval_metrics
from uit.synth.captions import STYLES
from uit.text.parsed import read_attribute_words

METRICS_FILE, TOP_K_FILE, BINDING_FILE = "metrics.json", "top_k.parquet", "binding.parquet"
DIAGNOSTICS = (
    "binding",
    "lookalike",
    "paraphrase",
)  # what ``diagnose`` adds to a benchmark's metrics

if TYPE_CHECKING:
    from uit.core.console import Advance, NewBar


@dataclass(frozen=True)
class EvalOptions:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None  # autocast dtype, None for fp32
    batch_size: int = INFERENCE_BATCH_SIZE
    workers: int = 0
    top_k: int = TOP_K


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]  # {"t2i": {...}, "i2t": {...}}
    top_k: pl.DataFrame  # one row per query: its ranked gallery images and which are hits
    gallery: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (G, D) image feats
    similarity: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (Q, G)


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
    return Evaluation(metrics=metrics, top_k=top_k_table(similarity, split, options.top_k),
                      gallery=gallery, similarity=similarity)  # fmt: skip


# Diagnostics of UIT's ideas beside the retrieval metrics (uit.retrieval.diagnostics).

BINDING_PER_CAPTION, BINDING_CAPTIONS = 2, 500  # counterfactuals per caption, captions at most


def attribute_binding(
    encoder: DualEncoder,
    split: Manifests,
    tokenizer: Tokenizer,
    attribute_words: Mapping[int, Sequence[str]],
    options: EvalOptions,
    gallery: torch.Tensor | None = None,
    similarity: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[dict[str, dict[str, float]], pl.DataFrame]:
    """``binding_scores`` of ``split``'s captions against their ``counterfactuals`` (from the
    parser's ``attribute_words``), each pair scored on the caption's own image (``gallery``
    and ``similarity``: ``split``'s image features and caption-image scores, where already
    computed); and one row per pair, for pictures."""
    captions = split.captions
    made = counterfactuals(list(zip(captions["caption_id"].to_list(), captions["text"].to_list(),
                                    strict=True)), attribute_words, BINDING_PER_CAPTION,
                           BINDING_CAPTIONS, seed)  # fmt: skip
    if not made:
        return {}, pl.DataFrame()
    if gallery is None:
        gallery = encode_images(encoder, split.paths(), options)
    caption_row = {cid: i for i, cid in enumerate(captions["caption_id"].to_list())}
    image_row = {iid: i for i, iid in enumerate(split.images["image_id"].to_list())}
    rows = [caption_row[c.caption_id] for c in made]
    own = torch.tensor([image_row[captions["image_id"][r]] for r in rows])  # (P,)
    texts = [captions["text"][r] for r in rows]
    counter = encode_texts(encoder, [c.text for c in made], tokenizer, options)  # (P, D)
    counter_scores = (counter * gallery[own]).sum(-1)
    if similarity is None:
        true_scores = (encode_texts(encoder, texts, tokenizer, options) * gallery[own]).sum(-1)
    else:
        true_scores = similarity[torch.tensor(rows), own]
    pairs = pl.DataFrame({
        "caption_id": [c.caption_id for c in made], "kind": [c.kind for c in made],
        "word": [c.word for c in made], "substitute": [c.substitute for c in made],
        "text": texts, "counterfactual": [c.text for c in made],
        "path": split.images["path"].gather(own.numpy()),
        "true_score": true_scores.tolist(), "counter_score": counter_scores.tolist(),
    })  # fmt: skip
    return binding_scores(true_scores, counter_scores, [c.kind for c in made]), pairs


def lookalike_scores(
    similarity: torch.Tensor, split: Manifests, families: Mapping[str, int]
) -> dict[str, float]:
    """Text-to-image retrieval among look-alikes: each query ranked against its identity's
    family only (``families``: image path -> family, ``read_families``): ``R1`` and its
    ``chance`` (a random ranking's), in percent, the mean ``margin`` of the best true image's
    similarity over the best look-alike's, and the number of ``queries``."""
    paths = dict(zip(split.images["image_id"].to_list(), split.images["path"].to_list(),
                     strict=True))  # fmt: skip
    missing = [p for p in paths.values() if p not in families]
    if missing:
        raise DataError(f"{split.imgs_dir}: {missing[0]} has no family in the ground truth")
    gallery_families = torch.tensor([families[paths[i]] for i in split.images["image_id"]])
    query_families = torch.tensor([families[paths[i]] for i in split.captions["image_id"]])
    query_pids = torch.tensor(split.captions["pid"].to_list())
    args = (query_pids, torch.tensor(split.images["pid"].to_list()), query_families,
            gallery_families)  # fmt: skip
    return {"R1": lookalike_r1(similarity, *args), "chance": lookalike_chance(*args),
            "margin": lookalike_margin(similarity, *args),
            "queries": float(len(query_families))}  # fmt: skip


def diagnose(
    encoder: DualEncoder,
    split: Manifests,
    tokenizer: Tokenizer,
    evaluation: Evaluation,
    options: EvalOptions,
    attribute_words: Mapping[int, Sequence[str]] | None = None,
    paraphrase: bool = True,
) -> tuple[dict[str, Any], pl.DataFrame | None]:
    """The diagnostics an evaluation adds beside its metrics: ``binding``, where the parser's
    ``attribute_words`` are at hand (and the binding pairs); ``lookalike`` and (unless
    ``paraphrase`` is false: it encodes every query twice more) ``paraphrase``, where ``split``
    is synthetic (its ground truth tells the families and the people)."""
    found: dict[str, Any] = {}
    pairs = None
    if attribute_words is not None:
        found["binding"], pairs = attribute_binding(encoder, split, tokenizer, attribute_words,
                                                    options, evaluation.gallery,
                                                    evaluation.similarity)  # fmt: skip
    families = read_families(split.imgs_dir)
    if families is not None:
        found["lookalike"] = lookalike_scores(evaluation.similarity, split, families)
    if families is not None and paraphrase:
        found["paraphrase"] = paraphrase_scores(encoder, split, tokenizer, evaluation, options)
    return found, pairs


def paraphrase_scores(
    encoder: DualEncoder,
    split: Manifests,
    tokenizer: Tokenizer,
    evaluation: Evaluation,
    options: EvalOptions,
) -> dict[str, dict[str, float]]:
    """Text-to-image R@1 when each query is replaced by a caption of the same person in another
    benchmark's style (``paraphrases``, from the synthetic ground truth), against the same
    gallery; ``drop`` is the split's own R@1 minus it. One entry per other style."""
    identities = read_identities(split.imgs_dir)
    if identities is None:
        return {}
    paths = dict(zip(split.images["image_id"].to_list(), split.images["path"].to_list(),
                     strict=True))  # fmt: skip
    people = [identities[paths[i]] for i in split.captions["image_id"].to_list()]
    query_pids = split.captions["pid"].to_list()
    gallery_pids = split.images["pid"].to_list()
    gallery = evaluation.gallery  # on the CPU, as evaluate() scores the split's own queries
    found = {}
    for style in sorted(STYLES):
        if style == split.benchmark:
            continue
        texts = encode_texts(encoder, paraphrases(people, style), tokenizer, options)
        r1 = retrieval_metrics(texts @ gallery.T, query_pids, gallery_pids)["R1"]
        found[style] = {"R1": r1, "drop": evaluation.metrics["t2i"]["R1"] - r1}
    return found


# Whole operations on folders: what `uit evaluate`, `uit search`, the evaluate stage and the
# report call, so that every front door scores a checkpoint the same way.


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: NewBar | None = None,
    parsed_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of any prepared benchmark (in- or cross-domain); write
    ``metrics.json`` and each query's top 10 (``top_k.parquet``) to ``out_dir``. With the
    benchmark's parsed captions (``parsed_dir``), the metrics hold ``binding`` (and
    ``binding.parquet`` its pairs); on a synthetic benchmark, ``lookalike`` (``diagnose``)."""
    manifests = _split_manifests(prepared_dir, split)
    encoder, tokenizer, options = load_for_inference(checkpoint_dir, device, batch_size)
    words = None if parsed_dir is None else read_attribute_words(parsed_dir)
    return _evaluate_into(encoder, tokenizer, manifests, split, options, Path(out_dir),
                          str(checkpoint_dir), progress, words)  # fmt: skip


def load_for_inference(
    checkpoint_dir: str | Path, device: str = "auto", batch_size: int = INFERENCE_BATCH_SIZE
) -> tuple[DualEncoder, Tokenizer, EvalOptions]:
    """A checkpoint's (or export's) encoder on ``device`` in eval mode, its tokenizer, and
    options in the precision it was trained in (the one its selection scores were computed in)."""
    encoder, model_cfg = load_encoder(checkpoint_dir)
    options = inference_options(checkpoint_dir, device, batch_size)
    return encoder.to(options.device).eval(), build_tokenizer(model_cfg), options


def inference_options(
    checkpoint_dir: str | Path, device: str = "auto", batch_size: int = INFERENCE_BATCH_SIZE
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
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: NewBar | None = None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    parsed_dirs: Mapping[str, str | Path] | None = None,
    paraphrased: Collection[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate one checkpoint on several benchmarks (in- and cross-domain), loading it once.

    Writes ``out_dir/<benchmark>/{metrics.json,top_k.parquet}`` per benchmark and, for DVC,
    ``metrics_file`` with every benchmark's text-to-image and image-to-text metrics and its
    diagnostics (``diagnose``: ``binding`` for a benchmark in ``parsed_dirs``, ``lookalike``
    for a synthetic one, ``paraphrase`` for a synthetic one in ``paraphrased``, None: every
    one), plus ``extras`` of a benchmark beside them (``in_domain_extras``).
    """
    every = {name: _split_manifests(path, split) for name, path in prepared_dirs.items()}
    encoder, tokenizer, options = load_for_inference(checkpoint_dir, device, batch_size)
    out_dir = Path(out_dir)
    combined = {}
    for name, manifests in every.items():
        parsed = (parsed_dirs or {}).get(name)
        words = None if parsed is None else read_attribute_words(parsed)
        metrics = _evaluate_into(encoder, tokenizer, manifests, split, options,
                                 top_k_file(out_dir, name).parent, str(checkpoint_dir),
                                 progress, words,
                                 paraphrased is None or name in paraphrased)  # fmt: skip
        found = {k: metrics[k] for k in DIAGNOSTICS if k in metrics}
        combined[name] = {"t2i": metrics["t2i"], "i2t": metrics["i2t"], **found,
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
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: NewBar | None = None,
    zero_shot: bool = True,
) -> dict[str, Any]:
    """What the evaluate stage adds for the benchmark a model was trained on: ``zero_shot``, the
    metrics of the weights it was fine-tuned from, before fine-tuning (where it had any, and
    unless ``zero_shot`` is false: a study of many runs from one weights file scores it once),
    and ``restoration``, TIR's colour error against its baselines (where it trained TIR)."""
    from uit.model.objective import load_objective
    from uit.retrieval.restoration import restoration_quality

    manifests = _split_manifests(prepared_dir, split).split(split)
    options = inference_options(checkpoint_dir, device, batch_size)
    extras: dict[str, Any] = {}
    pretrained = fine_tuned_from(checkpoint_dir)
    if pretrained is not None and zero_shot:
        encoder = build_model(pretrained).to(options.device).eval()
        result = evaluate(encoder, manifests, build_tokenizer(pretrained), options, progress)
        extras["zero_shot"] = {"from": pretrained.pretrained, **result.metrics}
    if is_export(read_state(checkpoint_dir)):
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
    attribute_words: Mapping[int, Sequence[str]] | None = None,
    paraphrase: bool = True,
) -> dict[str, Any]:
    tested = manifests.split(split)
    result = evaluate(encoder, tested, tokenizer, options, progress)
    found, pairs = diagnose(encoder, tested, tokenizer, result, options, attribute_words,
                            paraphrase)  # fmt: skip
    metrics = {"benchmark": manifests.benchmark, "split": split, "checkpoint": checkpoint,
               **result.metrics, **found}  # fmt: skip
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    _write_parquet(out_dir / TOP_K_FILE, result.top_k)
    if pairs is not None and pairs.height:
        _write_parquet(out_dir / BINDING_FILE, pairs)
    return metrics


def _write_parquet(path: Path, frame: pl.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    atomic_write_bytes(path, buffer.getvalue())
