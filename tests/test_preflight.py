"""The checks before training (uit/training/preflight.py, uit/app/flows/preflight.py) as pure
functions: each problem is one line that names the parameter or file and the fix, and each rule
is the one the later code applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from uit.app.flows import preflight
from uit.core.config import BENCHMARKS, Config, ModelConfig, TrainConfig, parse_config
from uit.core.errors import DataError
from uit.raw.formats import get_spec
from uit.raw.prepare import prepare_benchmark
from uit.raw.readers import read_benchmark
from uit.training import preflight as run_checks
from uit.training.sampler import IdentityBatchSampler

REAL = {"data": {"source": "real", "root": "data/real"}}


def config(**sections: dict[str, Any]) -> Config:
    return parse_config({"synth": {"size": "tiny"}, **sections})


def test_an_undersized_batch_is_one_line_with_the_largest_that_fits() -> None:
    cfg = config(train={"batch_size": 64})
    assert preflight.batch_problems(cfg, Path("."), ["rstpreid"]) == [
        "train.batch_size 64 needs 32 identities per batch (train.instances_per_id 2); rstpreid "
        "has 14 training identities (synth.size tiny): set train.batch_size to 28 or less (a "
        "multiple of train.instances_per_id)"
    ]
    fitting = config(train={"batch_size": 28})
    assert preflight.batch_problems(fitting, Path("."), list(BENCHMARKS)) == []


@pytest.mark.parametrize("identities", [3, 8, 9])
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_the_batch_rule_is_the_samplers(identities: int, instances: int) -> None:
    """Wherever the sampler refuses a batch size, the preflight check does, and only there."""
    labels = [pid for pid in range(identities) for _ in range(2)]
    for batch_size in range(max(2, instances), 12 * instances + 1, instances):
        train = TrainConfig(batch_size=batch_size, instances_per_id=instances)
        found = run_checks.Identities("rstpreid", identities, "test")
        try:
            IdentityBatchSampler(labels, batch_size, instances)
            refused = False
        except ValueError:
            refused = True
        assert (run_checks.batch_problem(train, found) is not None) == refused, batch_size


def test_synthetic_counts_match_the_prepared_data(
    tiny_synth: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The counts derived from ``synth.size`` before any data exists are the ones the prepared
    benchmarks report, held-out identities (ICFG-PEDES has no val split) included."""
    root, _ = tiny_synth
    cfg = config()
    for name in BENCHMARKS:
        prepared = tmp_path / name
        prepare_benchmark(name, root, prepared, check_images="exists")
        before = preflight.synthetic_identities(cfg, name)
        after = run_checks.prepared_identities(cfg, prepared)
        assert before is not None and after is not None
        assert before.count == after.count > 0, name
    icfg = run_checks.prepared_identities(cfg, tmp_path / "icfg-pedes")
    last_cfg = config(train={"selection": "last"})
    last = run_checks.prepared_identities(last_cfg, tmp_path / "icfg-pedes")
    assert icfg is not None and last is not None and last.count > icfg.count  # the held-out ones


def test_a_batch_is_checked_against_prepared_stats_once_they_exist(
    tiny_synth: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = tiny_synth
    prepare_benchmark("rstpreid", root, tmp_path / "data/prepared/rstpreid", check_images="exists")
    cfg = parse_config({**REAL, "train": {"batch_size": 64}})
    [problem] = preflight.batch_problems(cfg, tmp_path, ["rstpreid", "cuhk-pedes"])
    stats = tmp_path / "data/prepared/rstpreid/stats.json"
    assert f"rstpreid has 14 training identities ({stats})" in problem
    assert preflight.batch_problems(cfg, tmp_path, ["rstpreid"], prepared=False) == []


@pytest.mark.parametrize("text", ['{"benchmark": "rstpreid"}', "{not json", "[1, 2]"])
def test_a_stats_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path: Path, text: str) -> None:
    """The batch check reads stats.json before training: a damaged one or one of another shape
    names the file and the fix (a KeyError there was reported as a bug in uit)."""
    (tmp_path / "stats.json").write_text(text)
    cfg = parse_config({**REAL, "train": {"batch_size": 64}})
    with pytest.raises(DataError, match=r"stats.json.*uit data prepare"):
        run_checks.prepared_identities(cfg, tmp_path)


def test_missing_real_data_says_what_the_reader_says(tmp_path: Path) -> None:
    cfg = parse_config(REAL)
    problems = preflight.data_problems(cfg, tmp_path, ["rstpreid", "icfg-pedes"])
    for name, problem in zip(["rstpreid", "icfg-pedes"], problems, strict=True):
        with pytest.raises(DataError) as raised:
            read_benchmark(name, tmp_path / "data/real")
        assert problem == str(raised.value).replace(str(tmp_path) + "/", "")
        assert "data/real" in problem and "\n" not in problem
    (tmp_path / "data/real/RSTPReid").mkdir(parents=True)
    assert preflight.data_problems(cfg, tmp_path, ["rstpreid"]) == []


def test_synthetic_data_that_a_stage_draws_need_not_exist_yet(tmp_path: Path) -> None:
    cfg = config()
    assert preflight.data_problems(cfg, tmp_path, list(BENCHMARKS)) == []
    partial = config(data={"benchmarks": ["cuhk-pedes"]})
    [problem] = preflight.data_problems(partial, tmp_path, ["cuhk-pedes", "rstpreid"])
    folder = get_spec("rstpreid").dataset_dir(partial.data.root)
    assert problem.startswith(f"RSTPReid not found: expected the folder {folder} ")
    elsewhere = config(data={"root": "data/mine"})
    [problem] = preflight.data_problems(elsewhere, tmp_path, ["cuhk-pedes"])
    assert problem == (
        "data.root is data/mine but the synth stage draws into data/synthetic: set data.root: "
        "data/synthetic (or data.source: real for data of your own)"
    )


def test_a_missing_weights_file_names_model_pretrained(tmp_path: Path) -> None:
    missing = ModelConfig(pretrained="weights/vit-b-16.safetensors")
    [problem] = preflight.weights_problems(missing, tmp_path)
    assert problem.startswith("model.pretrained: weights file weights/vit-b-16.safetensors")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/vit-b-16.safetensors").write_bytes(b"")
    assert preflight.weights_problems(missing, tmp_path) == []
    for name in ("", "openai"):  # random weights, or an open_clip tag (fetched when training)
        assert preflight.weights_problems(ModelConfig(pretrained=name), tmp_path) == []


def test_check_raises_every_problem_one_line_each(tmp_path: Path) -> None:
    cfg = parse_config({**REAL, "model": {"pretrained": "w.safetensors"}})
    found = preflight.problems(cfg, tmp_path, ["cuhk-pedes", "rstpreid"])
    with pytest.raises(run_checks.PreflightError) as raised:
        run_checks.check(found)
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 and lines[2].startswith("model.pretrained: weights file")
    run_checks.check([])  # nothing found, nothing raised
