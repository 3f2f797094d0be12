from pathlib import Path

import pytest

from uit.core.config import BENCHMARKS, Config, apply_overrides, load_config, parse_config
from uit.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_load_into_the_typed_config() -> None:
    cfg = load_config(ROOT / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.data.benchmarks == BENCHMARKS
    assert cfg.synth.size == "demo"


def test_sections_are_frozen() -> None:
    cfg = parse_config({})
    with pytest.raises(ValueError):
        cfg.synth.seed = 3  # type: ignore[misc]


def test_unknown_key_is_rejected_with_its_dotted_name(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("synth:\n  sead: 3\n")
    with pytest.raises(ConfigError, match=r"synth\.sead: unknown key") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="trian: unknown key"):
        parse_config({"trian": {"lr": 1}})


def test_wrong_type_names_the_key_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"synth\.seed: .*integer.*'abc'"):
        parse_config({"synth": {"seed": "abc"}})
    with pytest.raises(ConfigError, match=r"data\.benchmarks\.0"):
        parse_config({"data": {"benchmarks": ["market-1501"]}})


def test_dotted_overrides_use_the_same_loader_and_coerce_strings(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("synth:\n  seed: 1\n")
    cfg = load_config(path, ["synth.seed=3", "data.root=/elsewhere", "data.benchmarks=[rstpreid]"])
    assert cfg.synth.seed == 3
    assert cfg.data.root == "/elsewhere"
    assert cfg.data.benchmarks == ("rstpreid",)
    # DVC's -S passes numbers as strings; pydantic coerces them like YAML would.
    assert apply_overrides({}, ["synth.seed='5'"]) == {"synth": {"seed": "5"}}
    assert parse_config(apply_overrides({}, ["synth.seed='5'"])).synth.seed == 5


def test_bad_overrides_are_rejected() -> None:
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["synth.seed"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"synth": {"seed": 1}}, ["synth.seed.x=2"])
    with pytest.raises(ConfigError, match=r"synth\.nope: unknown key"):
        parse_config(apply_overrides({}, ["synth.nope=1"]))


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_moved_key_names_its_new_place() -> None:
    """Every loss weight lives under ``loss``: the old ``tir.weight`` is refused, pointing to
    ``loss.tir``, and the new key switches TIR on and off."""
    with pytest.raises(ConfigError, match=r"tir\.weight: renamed to loss\.tir"):
        parse_config({"tir": {"weight": 0}})
    assert parse_config({"loss": {"tir": 0}}).loss.tir == 0
    assert "weight" not in Config().tir.model_dump()
    with pytest.raises(ConfigError, match=r"synth\.benchmarks: no longer a key: the synth stage "
                       r"draws data\.benchmarks"):  # fmt: skip
        parse_config({"synth": {"benchmarks": ["CUHK-PEDES"]}})
