"""The pretraining corpus: image-caption pairs for CLIP-style pretraining of the dual encoder.

Identities are drawn in families as the benchmarks' are (look-alikes teach fine attributes),
never one that any benchmark of the same ``synth`` seed and size holds, and captioned in a
generic alt-text style unlike every benchmark's (``write_generic_caption``). The corpus is
written as a prepared folder (``uit.data.prepared``: images.parquet, captions.parquet,
stats.json and imgs/), split into ``train`` and ``val`` (held-out identities that score the
pretraining), so the one training loop reads it as it reads a benchmark.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from uit.core.config import BENCHMARKS, PretrainConfig, SynthConfig
from uit.core.errors import ConfigError
from uit.core.io import atomic_write_json, replaced_dir
from uit.data.prepared import CAPTIONS_FILE, IMAGES_FILE, IMGS_DIR_BASE, STATS_FILE
from uit.raw.formats import SPECS
from uit.synth.alttext import write_generic_caption
from uit.synth.attributes import sample_families
from uit.synth.generate import _Image, _plan_images, _render_all, plan_for

if TYPE_CHECKING:
    from uit.core.console import Advance

CORPUS = "pretrain-corpus"
OWNED = ("imgs", IMAGES_FILE, CAPTIONS_FILE, STATS_FILE)  # all that a corpus folder holds


def benchmark_identities(synth: SynthConfig) -> set[tuple[Any, ...]]:
    """The describable attributes of every identity in every synthetic benchmark of ``synth``'s
    seed and size (whichever benchmarks a pipeline runs on)."""
    keys: set[tuple[Any, ...]] = set()
    for name in BENCHMARKS:
        _, identities = _plan_images(SPECS[name], plan_for(SPECS[name], synth.size), synth.seed)
        keys.update(identity.key() for _, identity in identities.values())
    return keys


def plan_corpus(cfg: PretrainConfig, synth: SynthConfig) -> list[_Image]:
    """Every image of the corpus: ``cfg.identities`` new identities, the last ``cfg.heldout`` of
    them (whole families) in ``val``."""
    if cfg.heldout >= cfg.identities:
        raise ConfigError(
            f"pretrain.heldout {cfg.heldout} must be below pretrain.identities {cfg.identities}"
        )
    rng = random.Random(f"{cfg.seed}:{CORPUS}:identities")
    seen = benchmark_identities(synth)
    drawn = sample_families(rng, cfg.identities, seen)
    last_train_family = drawn[cfg.identities - cfg.heldout][0] - 1  # val: at least heldout
    images: list[_Image] = []
    for pid, (family, identity) in enumerate(drawn):
        split = "train" if family <= last_train_family else "val"
        for k in range(cfg.images_per_id):
            images.append(_Image(len(images), pid, split, f"{pid:05d}_{k}.jpg", identity))
    return images


def draw_corpus(
    out_dir: str | Path,
    cfg: PretrainConfig,
    synth: SynthConfig,
    *,
    workers: int = 1,
    progress: Advance | None = None,
) -> dict[str, dict[str, int]]:
    """Write the corpus to ``out_dir`` (swapped in whole); return its counts per split. A
    folder there that is not a corpus is refused, never replaced."""
    images = plan_corpus(cfg, synth)
    key = f"{cfg.seed}:{CORPUS}"
    with replaced_dir(out_dir, OWNED, ConfigError, ours=is_corpus) as tmp:
        jobs = [(image, key, synth.image_height, synth.image_width, str(tmp / "imgs"))
                for image in images]  # fmt: skip
        _render_all(jobs, workers, progress)
        captions = []
        for image in images:
            rng = random.Random(f"{key}:{image.index}:captions")
            texts = {write_generic_caption(image.identity, rng).text
                     for _ in range(cfg.captions_per_image)}  # fmt: skip
            captions += [(image.index, image.pid, image.split, text) for text in sorted(texts)]
        pl.DataFrame(
            [(i.index, i.pid, i.split, i.path) for i in images],
            schema=["image_id", "pid", "split", "path"], orient="row",
        ).write_parquet(tmp / IMAGES_FILE)  # fmt: skip
        table = pl.DataFrame(captions, schema=["image_id", "pid", "split", "text"], orient="row")
        table.with_row_index("caption_id").with_columns(
            pl.col("caption_id").cast(pl.Int64)
        ).write_parquet(tmp / CAPTIONS_FILE)
        splits = {
            split: {"identities": len({i.pid for i in images if i.split == split}),
                    "images": sum(i.split == split for i in images),
                    "captions": sum(c[2] == split for c in captions)}
            for split in ("train", "val")
        }  # fmt: skip
        stats = {"benchmark": CORPUS, "splits": splits, "imgs_dir": "imgs",
                 IMGS_DIR_BASE: "prepared_dir",
                 "generator": {"pretrain_seed": cfg.seed, "synth_seed": synth.seed,
                               "synth_size": synth.size}}  # fmt: skip
        atomic_write_json(tmp / STATS_FILE, stats)
    return splits


def is_corpus(folder: Path) -> bool:
    """Whether ``folder`` is a corpus this module wrote (its stats.json says so)."""
    try:
        stats = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and stats.get("benchmark") == CORPUS
