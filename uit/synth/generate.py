"""Write the synthetic benchmark in the exact on-disk format of each registered benchmark format.

A format's spec (``uit.raw.formats``) says everything drawn here that differs between formats:
its splits and their sizes, identity numbers, image file names, record key order, caption style.

Everything is a pure function of the seed: identities come from one generator per benchmark and
split, each image and its captions from a generator seeded by the image's index, so the output is
byte-identical for a seed and can be rendered in parallel.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uit.core.config import BENCHMARKS, SynthConfig
from uit.core.errors import DataError
from uit.core.io import atomic_write_json, atomic_write_text, replaced_dir
from uit.raw.formats import SPECS, TOKENS_KEY, BenchmarkSpec
from uit.synth.attributes import Identity, sample_families
from uit.synth.captions import Caption, write_caption
from uit.synth.render import render_person, sample_shot

if TYPE_CHECKING:
    from uit.core.console import Advance, NewBar

SIDECAR = "attributes.json"


@dataclass(frozen=True)
class Plan:
    """How big one synthetic benchmark is."""

    identities: tuple[int, int, int]  # train, val, test (val 0 where the benchmark has none)
    images_per_id: tuple[int, int]  # inclusive range
    captions_per_image: int


@dataclass(frozen=True)
class Scale:
    """What one size makes of every format's ``SplitPlan``."""

    factor: float  # times each format's training identities
    val: int  # held-out identities, before a format's share divides them
    test: int


SCALES: dict[str, Scale] = {
    "tiny": Scale(0.12, val=6, test=6),  # for tests: seconds
    # the default pipeline on a 2-core CPU: 600, 480 and 360 training identities (enough for
    # fine-tuning to learn what the pretraining corpus never names), test splits of 2,500 to
    # 3,400 queries, so that one R@1 figure has a standard error of about 1 point at most
    "demo": Scale(3.0, val=40, test=560),
    "small": Scale(6.0, val=200, test=560),  # ablations
    "medium": Scale(15.0, val=400, test=1000),  # evaluation and speed work at real test sizes
}


def plan_for(spec: BenchmarkSpec, size: str) -> Plan:
    """How big ``spec``'s synthetic stand-in is at ``size`` (no val identities without a val
    split)."""
    scale, shape = SCALES[size], spec.plan
    val = (scale.val // shape.held_out_share or 1) if "val" in spec.splits else 0
    test = scale.test // shape.held_out_share or 1
    identities = (round(shape.train_identities * scale.factor), val, test)
    return Plan(identities, shape.images_per_id, shape.captions_per_image)


# The built-in benchmarks' plans by size and name (a registered format: ``plan_for``).
SIZES: dict[str, dict[str, Plan]] = {
    size: {str(name): plan_for(SPECS[name], size) for name in BENCHMARKS} for size in SCALES
}


@dataclass(frozen=True)
class _Image:
    index: int
    pid: int
    split: str
    path: str
    identity: Identity


def _plan_images(
    spec: BenchmarkSpec, plan: Plan, seed: int
) -> tuple[list[_Image], dict[int, tuple[int, Identity]]]:
    """Identities per split (families never straddle splits) and every image to draw."""
    rng = random.Random(f"{seed}:{spec.name}:identities")
    seen: set[tuple[Any, ...]] = set()
    identities: dict[int, tuple[int, Identity]] = {}
    images: list[_Image] = []
    for split, count in zip(("train", "val", "test"), plan.identities, strict=True):
        if split not in spec.splits or count == 0:
            continue
        family_base = max((f for f, _ in identities.values()), default=-1) + 1
        for family, identity in sample_families(rng, count, seen, family_base):
            pid = spec.first_pid + len(identities)
            identities[pid] = (family, identity)
            for k in range(rng.randint(*plan.images_per_id)):
                path = spec.image_path(split, pid, k, rng)
                images.append(_Image(len(images), pid, split, path, identity))
    return images, identities


def _render_one(job: tuple[_Image, str, int, int, str]) -> None:
    image, key, height, width, out_dir = job
    rng = random.Random(f"{key}:{image.index}:image")
    picture = render_person(image.identity, sample_shot(rng), rng, height, width)
    target = Path(out_dir) / image.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".png":
        picture.save(target, format="PNG")
    else:
        picture.save(target, format="JPEG", quality=92)


def _captions(spec: BenchmarkSpec, plan: Plan, key: str, image: _Image) -> list[Caption]:
    rng = random.Random(f"{key}:{image.index}:captions")
    return [write_caption(image.identity, spec.style, rng) for _ in range(plan.captions_per_image)]


def benchmark_captions(name: str, cfg: SynthConfig) -> list[str]:
    """Every caption ``generate_benchmark`` writes for ``name``, without drawing an image (the
    deliberate dirty records left out)."""
    spec = SPECS[name]
    plan = plan_for(spec, cfg.size)
    images, _ = _plan_images(spec, plan, cfg.seed)
    key = f"{cfg.seed}:{name}"
    return [c.text for image in images for c in _captions(spec, plan, key, image)]


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


# The deliberate dirty records (design §3.4), each applied to one training image.
def _make_empty(captions: list[str]) -> list[str]:
    return [*captions[:-1], "   "]


def _make_duplicate(captions: list[str]) -> list[str]:
    return [*captions, captions[0]]


def _make_non_ascii(captions: list[str]) -> list[str]:
    text = captions[0].rstrip(".")
    return [
        f"\u201c{text}\u201d \u2014 the person\u2019s outfit is clearly visible.",
        *captions[1:],
    ]


def _make_long(captions: list[str]) -> list[str]:
    filler = "The photo was taken from a camera mounted high above the busy pedestrian street."
    return [captions[0] + " " + " ".join([filler] * 6), *captions[1:]]


DIRTY: dict[str, Callable[[list[str]], list[str]]] = {
    "empty_caption": _make_empty,
    "duplicate_caption": _make_duplicate,
    "non_ascii": _make_non_ascii,
    "long_caption": _make_long,
}


def _record(spec: BenchmarkSpec, image: _Image, captions: list[str]) -> dict[str, Any]:
    """One annotation record with the key order of the real file."""
    fields = {"id": image.pid, spec.path_key: image.path, "captions": captions,
              "split": image.split}  # fmt: skip
    if TOKENS_KEY in spec.record_keys:
        fields[TOKENS_KEY] = [_tokens(c) for c in captions]
    return {key: fields[key] for key in spec.record_keys}


def _annotations(
    spec: BenchmarkSpec, plan: Plan, key: str, images: list[_Image]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Annotation records and their ground-truth sidecar entries, dirty records included."""
    train = [image.index for image in images if image.split == "train"]
    dirty_at = dict(
        zip(random.Random(f"{key}:dirty").sample(train, len(DIRTY)), DIRTY, strict=True)
    )
    records, truth = [], []
    for image in images:
        captions = _captions(spec, plan, key, image)
        texts = [c.text for c in captions]
        dirt = dirty_at.get(image.index)
        if dirt is not None:
            texts = DIRTY[dirt](texts)
        records.append(_record(spec, image, texts))
        truth.append({
            "path": image.path, "pid": image.pid, "split": image.split, "dirty": dirt,
            "captions": [{"attribute_words": c.attribute_words, "filler_words": c.filler_words}
                         for c in captions],
        })  # fmt: skip
    return records, truth


def _summary(spec: BenchmarkSpec, records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts per split as ``prepare`` will find them (the empty and duplicate captions dropped)."""
    summary: dict[str, dict[str, int]] = {}
    for split in spec.splits:
        rows = [r for r in records if r["split"] == split]
        captions = sum(len({c for c in r["captions"] if c.strip()}) for r in rows)
        summary[split] = {"identities": len({r["id"] for r in rows}), "images": len(rows),
                          "captions": captions}  # fmt: skip
    return summary


def generate_benchmark(
    name: str,
    root: str | Path,
    cfg: SynthConfig,
    *,
    workers: int = 1,
    progress: Advance | None = None,
) -> dict[str, dict[str, int]]:
    """Write one synthetic benchmark under ``root`` and return its counts per split.

    The benchmark folder is built beside its final place and swapped in whole, so an interrupted
    run leaves the previous copy (or nothing) rather than a mixture; a folder there that this
    generator did not write (a real benchmark) is refused, never replaced.
    """
    spec = SPECS[name]
    plan = plan_for(spec, cfg.size)
    key = f"{cfg.seed}:{name}"
    images, identities = _plan_images(spec, plan, cfg.seed)
    owned = ("imgs", spec.annotation_files[0], SIDECAR)
    with replaced_dir(spec.dataset_dir(root), owned, DataError, ours=_synthetic) as tmp:
        jobs = [
            (image, key, cfg.image_height, cfg.image_width, str(tmp / "imgs")) for image in images
        ]
        _render_all(jobs, workers, progress)
        records, truth = _annotations(spec, plan, key, images)
        atomic_write_text(tmp / spec.annotation_files[0], _dump(records))
        sidecar = {
            "generator": {"seed": cfg.seed, "size": cfg.size, "benchmark": name},
            "identities": {str(pid): {"family": family, **identity.to_dict()}
                           for pid, (family, identity) in identities.items()},
            "images": truth,
        }  # fmt: skip
        atomic_write_json(tmp / SIDECAR, sidecar, indent=None)
    return _summary(spec, records)


def _synthetic(folder: Path) -> bool:
    """Whether ``folder`` is a benchmark this generator wrote (its sidecar says so): a real
    benchmark has the same annotation file and ``imgs/``, and is never replaced."""
    try:
        with (folder / SIDECAR).open(encoding="utf-8") as handle:
            return "generator" in json.load(handle)
    except (OSError, ValueError, TypeError):
        return False


def _dump(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, ensure_ascii=False)


def _render_all(
    jobs: list[tuple[_Image, str, int, int, str]],
    workers: int,
    progress: Advance | None,
) -> None:
    if workers <= 1:
        for job in jobs:
            _render_one(job)
            if progress:
                progress(1)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_render_one, jobs, chunksize=32):
            if progress:
                progress(1)


def synthesize(
    root: str | Path,
    cfg: SynthConfig,
    benchmarks: tuple[str, ...] = BENCHMARKS,
    *,
    workers: int = 1,
    progress: NewBar | None = None,
) -> dict[str, dict[str, dict[str, int]]]:
    """Write every requested synthetic benchmark; return their counts per split.

    ``progress`` (``uit.core.console.NewBar``) shows each benchmark's images being drawn.
    """
    summaries = {}
    for name in benchmarks:
        total = _count_images(name, cfg)
        advance = progress(f"drawing {name}", total) if progress else None
        summaries[name] = generate_benchmark(name, root, cfg, workers=workers, progress=advance)
    return summaries


def _count_images(name: str, cfg: SynthConfig) -> int:
    spec = SPECS[name]
    images, _ = _plan_images(spec, plan_for(spec, cfg.size), cfg.seed)
    return len(images)
