"""The registry of benchmark formats (design §3.1): one ``BenchmarkSpec`` per format holds every
fact that distinguishes it, and readers, ``prepare``, the synthesiser and the labels of tables
and messages all read it from here.

A fourth format is one spec and one ``register_format`` call; no code elsewhere branches on a
benchmark's name. The built-in three are also the names of ``uit.core.config.Benchmark``, the
type that ``params.yaml`` is checked against (``tests/test_formats.py`` keeps the two equal).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uit.core.config import BENCHMARKS, Benchmark
from uit.core.errors import DataError

# (split, pid, k, rng) -> the path of a pid's k-th image under imgs/, as the format names files
ImagePath = Callable[[str, int, int, random.Random], str]
RECORD_FIELDS = ("id", "captions", "split")  # in every format's records, beside the path key
TOKENS_KEY = "processed_tokens"  # the released files' pre-tokenised captions; readers ignore it


@dataclass(frozen=True)
class CaptionStyle:
    """How one benchmark's annotators wrote: length, detail, sentence shapes and dirt (the
    synthetic captions of ``uit.synth.captions`` imitate it)."""

    omit_p: float  # probability that an optional attribute goes unmentioned
    filler_p: float  # probability of each filler clause slot being used
    filler_slots: int
    detail_p: float  # probability of mentioning sleeve length and pattern
    sentences: tuple[int, ...]  # relative weights of 1, 2, 3, ... sentences
    openings: tuple[int, int, int, int, int]  # weights of: the, a, this, he/she, bare noun
    head_to_toe: float  # probability of naming things from head to toe, not shuffled
    items: tuple[int, int]  # how many things one caption names at most, a range
    typo_p: float = 0.03
    no_period_p: float = 0.06
    spacing_p: float = 0.05  # doubled spaces, a space before a full stop


@dataclass(frozen=True)
class SplitPlan:
    """The shape of a format's synthetic stand-in before a size (``tiny`` ... ``medium``) scales
    it: the size gives the scale and the held-out (val, test) identity counts."""

    train_identities: int  # at scale 1
    held_out_share: int  # val and test get the size's counts divided by this (at least 1)
    images_per_id: tuple[int, int]  # inclusive range
    captions_per_image: int


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that distinguishes one benchmark format from another."""

    name: str  # the CLI's, params.yaml's and metrics files' name: lower case
    title: str  # how the benchmark names itself, in tables and messages
    folder: str  # under a data root
    annotation_files: tuple[str, ...]  # accepted names, the canonical one first
    path_key: str  # the record field holding the image's path under imgs/
    record_keys: tuple[str, ...]  # a record's fields in the released file's order
    splits: tuple[str, ...]
    first_pid: int  # the identity number the release counts from
    image_path: ImagePath
    plan: SplitPlan
    style: CaptionStyle
    obtain: str  # how a user gets the real data

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise ValueError(f"benchmark format name {self.name!r}: must be non-empty lower case")
        needed = {*RECORD_FIELDS, self.path_key}
        if not needed <= set(self.record_keys) <= {*needed, TOKENS_KEY}:
            raise ValueError(
                f"benchmark format {self.name!r}: record_keys {self.record_keys} must hold "
                f"{sorted(needed)}, and {TOKENS_KEY!r} at most beside them"
            )

    def dataset_dir(self, root: str | Path) -> Path:
        return Path(root) / self.folder

    def missing(self, root: str | Path) -> str:
        """What a user whose ``root`` lacks this benchmark is told: where it goes, how to get it."""
        return (
            f"{self.title} not found: expected the folder {self.dataset_dir(root)} (holding imgs/ "
            f"and {self.annotation_files[0]}). {self.obtain}."
        )

    def imgs_dir(self, root: str | Path) -> Path:
        return self.dataset_dir(root) / "imgs"

    def annotation_file(self, root: str | Path) -> Path:
        """The annotation file that exists, or the canonical name when none does."""
        folder = self.dataset_dir(root)
        for name in self.annotation_files:
            if (folder / name).is_file():
                return folder / name
        return folder / self.annotation_files[0]


def _cuhk_path(split: str, pid: int, k: int, rng: random.Random) -> str:
    folder = rng.choice(("CUHK01", "CUHK03", "Market", "test_query", "train_query"))
    return f"{folder}/{pid:04d}{k:03d}.png"


def _icfg_path(split: str, pid: int, k: int, rng: random.Random) -> str:
    time = rng.choice(("0302morning", "0303noon", "0303afternoon", "0304morning"))
    cam, seq, frame = rng.randint(1, 20), rng.randint(1, 9), rng.randint(100, 9999)
    return f"{split}/{pid:04d}/{pid:04d}_{cam:03d}_{seq:02d}_{time}_{frame:04d}_{k}.jpg"


def _rstp_path(split: str, pid: int, k: int, rng: random.Random) -> str:
    return f"{pid:04d}_c{rng.randint(1, 15)}_{k:04d}.jpg"


CUHK_PEDES = BenchmarkSpec(
    name=Benchmark.cuhk_pedes,
    title="CUHK-PEDES",
    folder="CUHK-PEDES",
    annotation_files=("reid_raw.json",),
    path_key="file_path",
    record_keys=("split", "captions", "file_path", TOKENS_KEY, "id"),
    splits=("train", "val", "test"),
    first_pid=1,
    image_path=_cuhk_path,
    plan=SplitPlan(train_identities=200, held_out_share=1, images_per_id=(2, 4),
                   captions_per_image=2),
    style=CaptionStyle(
        omit_p=0.5, filler_p=0.2, filler_slots=1, detail_p=0.25, sentences=(48, 42, 10),
        openings=(38, 44, 9, 5, 4), head_to_toe=0.2, items=(2, 4), typo_p=0.09,
    ),
    obtain=(
        "CUHK-PEDES is granted on request by its authors (Li et al., 'Person Search with "
        "Natural Language Description', CVPR 2017): ask them for access, then unpack it so "
        "that the folder holds imgs/ and reid_raw.json"
    ),
)  # fmt: skip
ICFG_PEDES = BenchmarkSpec(
    name=Benchmark.icfg_pedes,
    title="ICFG-PEDES",
    folder="ICFG-PEDES",
    annotation_files=("ICFG-PEDES.json", "ICFG_PEDES.json"),
    path_key="file_path",
    record_keys=("id", "file_path", "captions", TOKENS_KEY, "split"),
    splits=("train", "test"),
    first_pid=1,
    image_path=_icfg_path,
    plan=SplitPlan(train_identities=160, held_out_share=1, images_per_id=(3, 6),
                   captions_per_image=1),
    style=CaptionStyle(
        omit_p=0.15, filler_p=0.3, filler_slots=2, detail_p=0.5, sentences=(0, 4, 4, 2),
        openings=(30, 55, 5, 5, 5), head_to_toe=0.8, items=(4, 6), typo_p=0.03,
        no_period_p=0.02,
    ),
    obtain=(
        "ICFG-PEDES is granted on request by its authors (Ding et al., 'Semantically "
        "Self-Aligned Network for Text-to-Image Part-aware Person Re-identification', 2021): "
        "ask them for access, then unpack it so that the folder holds imgs/ and ICFG-PEDES.json"
    ),
)  # fmt: skip
RSTPREID = BenchmarkSpec(
    name=Benchmark.rstpreid,
    title="RSTPReid",
    folder="RSTPReid",
    annotation_files=("data_captions.json",),
    path_key="img_path",
    record_keys=("id", "img_path", "captions", "split"),
    splits=("train", "val", "test"),
    first_pid=0,
    image_path=_rstp_path,
    plan=SplitPlan(train_identities=120, held_out_share=2, images_per_id=(5, 5),
                   captions_per_image=2),
    style=CaptionStyle(
        omit_p=0.3, filler_p=0.4, filler_slots=1, detail_p=0.3, sentences=(15, 65, 20),
        openings=(60, 30, 5, 5, 0), head_to_toe=0.5, items=(2, 5), typo_p=0.03,
        no_period_p=0.03,
    ),
    obtain=(
        "RSTPReid is granted on request by its authors (Zhu et al., 'DSSL: Deep Surroundings-"
        "person Separation Learning for Text-based Person Retrieval', ACM MM 2021): ask them "
        "for access, then unpack it so that the folder holds imgs/ and data_captions.json"
    ),
)  # fmt: skip

# Every known format by name: the built-in three, then any registered since.
SPECS: dict[str, BenchmarkSpec] = {str(s.name): s for s in (CUHK_PEDES, ICFG_PEDES, RSTPREID)}


def register_format(spec: BenchmarkSpec) -> BenchmarkSpec:
    """Make ``spec`` known by its name to ``get_spec``, the readers, ``prepare`` and the
    synthesiser; a name is registered once."""
    if spec.name in SPECS:
        raise ValueError(f"a benchmark format named {spec.name!r} is registered already")
    SPECS[str(spec.name)] = spec
    return spec


def unregister_format(name: str) -> None:
    """Forget a format ``register_format`` added; the built-in three stay."""
    if name in BENCHMARKS:
        raise ValueError(f"{name!r} is a built-in benchmark format and cannot be unregistered")
    if SPECS.pop(name, None) is None:
        raise ValueError(f"no benchmark format named {name!r} is registered")


def get_spec(name: str) -> BenchmarkSpec:
    """The spec of a benchmark by its CLI name (``cuhk-pedes``, ``icfg-pedes``, ``rstpreid``)."""
    try:
        return SPECS[name.lower()]
    except KeyError:
        raise DataError(f"unknown benchmark {name!r}: choose one of {', '.join(SPECS)}") from None
