"""The three real on-disk formats (design §3.1): where each benchmark lives and what its JSON
holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from uit.core.config import BENCHMARKS, Benchmark
from uit.core.errors import DataError


@dataclass(frozen=True)
class BenchmarkSpec:
    """What distinguishes one benchmark's on-disk format from another's."""

    name: Benchmark
    title: str
    folder: str
    annotation_files: tuple[str, ...]  # accepted names, the canonical one first
    path_key: str
    splits: tuple[str, ...]
    obtain: str  # how a user gets the real data

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


SPECS: dict[str, BenchmarkSpec] = {
    "cuhk-pedes": BenchmarkSpec(
        name=Benchmark.cuhk_pedes,
        title=Benchmark.cuhk_pedes.label,
        folder=Benchmark.cuhk_pedes.label,
        annotation_files=("reid_raw.json",),
        path_key="file_path",
        splits=("train", "val", "test"),
        obtain=(
            "CUHK-PEDES is granted on request by its authors (Li et al., 'Person Search with "
            "Natural Language Description', CVPR 2017): ask them for access, then unpack it so "
            "that the folder holds imgs/ and reid_raw.json"
        ),
    ),
    "icfg-pedes": BenchmarkSpec(
        name=Benchmark.icfg_pedes,
        title=Benchmark.icfg_pedes.label,
        folder=Benchmark.icfg_pedes.label,
        annotation_files=("ICFG-PEDES.json", "ICFG_PEDES.json"),
        path_key="file_path",
        splits=("train", "test"),
        obtain=(
            "ICFG-PEDES is granted on request by its authors (Ding et al., 'Semantically "
            "Self-Aligned Network for Text-to-Image Part-aware Person Re-identification', 2021): "
            "ask them for access, then unpack it so that the folder holds imgs/ and ICFG-PEDES.json"
        ),
    ),
    "rstpreid": BenchmarkSpec(
        name=Benchmark.rstpreid,
        title=Benchmark.rstpreid.label,
        folder=Benchmark.rstpreid.label,
        annotation_files=("data_captions.json",),
        path_key="img_path",
        splits=("train", "val", "test"),
        obtain=(
            "RSTPReid is granted on request by its authors (Zhu et al., 'DSSL: Deep Surroundings-"
            "person Separation Learning for Text-based Person Retrieval', ACM MM 2021): ask them "
            "for access, then unpack it so that the folder holds imgs/ and data_captions.json"
        ),
    ),
}
assert tuple(SPECS) == BENCHMARKS


def get_spec(name: str) -> BenchmarkSpec:
    """The spec of a benchmark by its CLI name (``cuhk-pedes``, ``icfg-pedes``, ``rstpreid``)."""
    try:
        return SPECS[name.lower()]
    except KeyError:
        raise DataError(
            f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}"
        ) from None
