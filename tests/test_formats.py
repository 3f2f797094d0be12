"""The registry of benchmark formats: one spec per format carries every fact, and the readers,
``prepare`` and the synthesiser take a format registered from outside the library as they take
the built-in three."""

from __future__ import annotations

import ast
import dataclasses
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from uit.app.report import benchmark_title
from uit.core.config import BENCHMARKS, Benchmark, DataConfig, SynthConfig
from uit.core.errors import DataError
from uit.raw.formats import (
    SPECS,
    BenchmarkSpec,
    SplitPlan,
    get_spec,
    register_format,
    unregister_format,
)
from uit.raw.prepare import prepare_benchmark
from uit.raw.readers import missing_benchmark, read_benchmark
from uit.synth.captions import STYLES
from uit.synth.generate import SIDECAR, SIZES, plan_for, synthesize

ROOT = Path(__file__).resolve().parents[1]


def _four_path(split: str, pid: int, k: int, rng: random.Random) -> str:
    return f"cam{rng.randint(1, 3)}/{pid:05d}_{k}.jpg"


# A fourth format in a few lines: RSTPReid's captions, everything else its own.
FOUR = dataclasses.replace(
    SPECS["rstpreid"],
    name="pedes-four",
    title="PEDES-Four",
    folder="PEDES-Four",
    annotation_files=("four.json",),
    path_key="image",
    record_keys=("image", "split", "id", "captions"),
    splits=("train", "test"),
    first_pid=100,
    image_path=_four_path,
    plan=SplitPlan(train_identities=100, held_out_share=3, images_per_id=(2, 2),
                   captions_per_image=1),
)  # fmt: skip


@pytest.fixture
def four() -> Iterator[BenchmarkSpec]:
    register_format(FOUR)
    yield FOUR
    unregister_format(FOUR.name)


def test_the_config_type_names_the_built_in_formats() -> None:
    """``Benchmark`` stays a closed type for params.yaml; it and the registry agree."""
    assert tuple(SPECS)[: len(BENCHMARKS)] == BENCHMARKS == tuple(Benchmark)
    assert all(SPECS[name].name == name for name in BENCHMARKS)
    assert DataConfig().benchmarks == BENCHMARKS


def test_labels_styles_and_plans_come_from_the_specs() -> None:
    assert [SPECS[n].title for n in BENCHMARKS] == ["CUHK-PEDES", "ICFG-PEDES", "RSTPReid"]
    assert {n: SPECS[n].style for n in BENCHMARKS} == STYLES
    assert SIZES["tiny"] == {n: plan_for(SPECS[n], "tiny") for n in BENCHMARKS}
    assert [SPECS[n].first_pid for n in BENCHMARKS] == [1, 1, 0]


def test_a_registered_format_is_synthesised_read_and_prepared(
    four: BenchmarkSpec, tmp_path: Path
) -> None:
    root, out = tmp_path / "raw", tmp_path / "prepared"
    summary = synthesize(root, SynthConfig(size="tiny"), ("pedes-four",))["pedes-four"]
    # tiny: 100 * 0.12 training identities, its 6 test identities divided by 3, two images each
    assert {s: c["identities"] for s, c in summary.items()} == {"train": 12, "test": 2}
    records = json.loads((root / "PEDES-Four" / "four.json").read_text(encoding="utf-8"))
    assert [list(r) for r in records] == [["image", "split", "id", "captions"]] * 28
    assert (root / "PEDES-Four" / SIDECAR).is_file()

    stats = prepare_benchmark("PEDES-FOUR", root, out)
    assert stats["benchmark"] == "pedes-four"
    images = pl.read_parquet(out / "images.parquet").sort("image_id")
    assert images["pid"].to_list() == [100 + i // 2 for i in range(28)]  # numbered from 100
    assert images.filter(pl.col("split") == "test")["pid"].unique().to_list() == [112, 113]
    assert all(re.fullmatch(r"cam[1-3]/\d{5}_[01]\.jpg", p) for p in images["path"])
    assert images["path"].to_list() == [r["image"] for r in records]
    assert all((root / "PEDES-Four" / "imgs" / p).is_file() for p in images["path"])
    assert set(stats["splits"]) == {"train", "test"}


def test_a_registered_format_gets_the_same_clear_errors(
    four: BenchmarkSpec, tmp_path: Path
) -> None:
    with pytest.raises(DataError) as missing:
        read_benchmark("pedes-four", tmp_path)
    assert str(missing.value) == missing_benchmark(four, tmp_path)
    assert "PEDES-Four not found" in str(missing.value)
    folder = four.dataset_dir(tmp_path)
    folder.mkdir()
    (folder / "four.json").write_text('[{"id": 1, "captions": [], "split": "train"}]')
    with pytest.raises(DataError, match=r"four\.json: record 0: missing field 'image'"):
        read_benchmark("pedes-four", tmp_path)


def test_registering_refuses_a_name_twice_and_forgets_only_what_it_added(
    four: BenchmarkSpec,
) -> None:
    assert get_spec("pedes-four") is four
    with pytest.raises(ValueError, match="registered already"):
        register_format(four)
    with pytest.raises(ValueError, match="built-in"):
        unregister_format("rstpreid")
    with pytest.raises(ValueError, match="no benchmark format named 'nope'"):
        unregister_format("nope")


def test_a_spec_refuses_record_keys_that_miss_a_field() -> None:
    with pytest.raises(ValueError, match="record_keys"):
        dataclasses.replace(FOUR, record_keys=("image", "id", "captions"))
    with pytest.raises(ValueError, match="lower case"):
        dataclasses.replace(FOUR, name="Pedes-Four")


def test_an_unknown_name_lists_the_registered_formats(four: BenchmarkSpec) -> None:
    with pytest.raises(
        DataError, match="choose one of cuhk-pedes, icfg-pedes, rstpreid, pedes-four"
    ):
        get_spec("nope")


def _name_branches(path: Path) -> list[str]:
    """Where ``path`` compares with a benchmark's name, keys a mapping by one, or names a
    ``Benchmark`` member."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        operands: list[ast.expr | None] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            operands = list(node.keys)
        elif isinstance(node, ast.Subscript):
            operands = [node.slice]
        elif isinstance(node, ast.Attribute):
            operands = [node]
        hits = [ast.unparse(o) for o in operands if o is not None and _names_a_benchmark(o)]
        found += [f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}: {h}" for h in hits]
    return found


def _names_a_benchmark(node: ast.expr) -> bool:
    if isinstance(node, ast.Attribute):
        return ast.unparse(node.value) == "Benchmark" and node.attr in Benchmark.__members__
    return isinstance(node, ast.Constant) and node.value in BENCHMARKS


def test_no_code_outside_the_registry_branches_on_a_benchmark_name() -> None:
    sources = [p for folder in ("uit", "stages") for p in (ROOT / folder).rglob("*.py")]
    allowed = {ROOT / "uit/raw/formats.py", ROOT / "uit/core/config.py"}  # the spec, the type
    branches = [hit for p in sources if p not in allowed for hit in _name_branches(p)]
    assert branches == []
    assert _name_branches(ROOT / "uit/raw/formats.py")  # the check sees names where they are


def test_the_report_titles_a_format_registered_after_it_was_imported(
    four: BenchmarkSpec,
) -> None:
    """The report read the titles once, at import (this module imports it before any test
    runs): a format registered later showed its name."""
    assert benchmark_title("pedes-four") == "PEDES-Four"
    assert benchmark_title("rstpreid") == "RSTPReid" and benchmark_title("other") == "other"
