"""Write the synthetic benchmark in the exact on-disk formats of CUHK-PEDES, ICFG-PEDES, RSTPReid.

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
from uit.raw.formats import SPECS, BenchmarkSpec
from uit.synth.attributes import Identity, sample_families
from uit.synth.captions import STYLES, Caption, write_caption
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


def _plans(scale: float, test: int, val: int) -> dict[str, Plan]:
    return {
        "cuhk-pedes": Plan((round(200 * scale), val, test), (2, 4), 2),
        "icfg-pedes": Plan((round(160 * scale), 0, test), (3, 6), 1),
        "rstpreid": Plan((round(120 * scale), val // 2 or 1, test // 2 or 1), (5, 5), 2),
    }


SIZES: dict[str, dict[str, Plan]] = {
    "tiny": _plans(0.12, test=6, val=6),  # for tests: seconds
    # the default pipeline on a 2-core CPU: 600, 480 and 360 training identities (enough for
    # fine-tuning to learn what the pretraining corpus never names), test splits of 2,500 to
    # 3,400 queries, so that one R@1 figure has a standard error of about 1 point at most
    "demo": _plans(3.0, test=560, val=40),
    "small": _plans(6.0, test=560, val=200),  # ablations
    "medium": _plans(15.0, test=1000, val=400),  # evaluation and speed work at real test sizes
}


@dataclass(frozen=True)
class _Image:
    index: int
    pid: int
    split: str
    path: str
    identity: Identity


def _cuhk_path(pid: int, k: int, rng: random.Random) -> str:
    folder = rng.choice(("CUHK01", "CUHK03", "Market", "test_query", "train_query"))
    return f"{folder}/{pid:04d}{k:03d}.png"


def _icfg_path(split: str, pid: int, k: int, rng: random.Random) -> str:
    time = rng.choice(("0302morning", "0303noon", "0303afternoon", "0304morning"))
    cam, seq, frame = rng.randint(1, 20), rng.randint(1, 9), rng.randint(100, 9999)
    return f"{split}/{pid:04d}/{pid:04d}_{cam:03d}_{seq:02d}_{time}_{frame:04d}_{k}.jpg"


def _rstp_path(pid: int, k: int, rng: random.Random) -> str:
    return f"{pid:04d}_c{rng.randint(1, 15)}_{k:04d}.jpg"


def _image_path(spec: BenchmarkSpec, split: str, pid: int, k: int, rng: random.Random) -> str:
    if spec.name == "cuhk-pedes":
        return _cuhk_path(pid, k, rng)
    if spec.name == "icfg-pedes":
        return _icfg_path(split, pid, k, rng)
    return _rstp_path(pid, k, rng)


def _plan_images(
    spec: BenchmarkSpec, plan: Plan, seed: int
) -> tuple[list[_Image], dict[int, tuple[int, Identity]]]:
    """Identities per split (families never straddle splits) and every image to draw."""
    rng = random.Random(f"{seed}:{spec.name}:identities")
    seen: set[tuple[Any, ...]] = set()
    first_pid = 0 if spec.name == "rstpreid" else 1
    identities: dict[int, tuple[int, Identity]] = {}
    images: list[_Image] = []
    for split, count in zip(("train", "val", "test"), plan.identities, strict=True):
        if split not in spec.splits or count == 0:
            continue
        family_base = max((f for f, _ in identities.values()), default=-1) + 1
        for family, identity in sample_families(rng, count, seen, family_base):
            pid = first_pid + len(identities)
            identities[pid] = (family, identity)
            for k in range(rng.randint(*plan.images_per_id)):
                path = _image_path(spec, split, pid, k, rng)
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
    return [
        write_caption(image.identity, STYLES[spec.name], rng)
        for _ in range(plan.captions_per_image)
    ]


def benchmark_captions(name: str, cfg: SynthConfig) -> list[str]:
    """Every caption ``generate_benchmark`` writes for ``name``, without drawing an image (the
    deliberate dirty records left out)."""
    spec, plan = SPECS[name], SIZES[cfg.size][name]
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
    if spec.name == "rstpreid":
        return {"id": image.pid, "img_path": image.path, "captions": captions, "split": image.split}
    tokens = [_tokens(c) for c in captions]
    if spec.name == "cuhk-pedes":
        return {"split": image.split, "captions": captions, "file_path": image.path,
                "processed_tokens": tokens, "id": image.pid}  # fmt: skip
    return {"id": image.pid, "file_path": image.path, "captions": captions,
            "processed_tokens": tokens, "split": image.split}  # fmt: skip


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
    spec, plan = SPECS[name], SIZES[cfg.size][name]
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
    images, _ = _plan_images(SPECS[name], SIZES[cfg.size][name], cfg.seed)
    return len(images)
