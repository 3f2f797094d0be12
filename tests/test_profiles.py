"""`uit profile` on any valid params.yaml (the committed one, or the one `dvc exp run -S` writes
back), the refusal to write text that does not read back as intended, YAML errors as one line
wherever params are read, and the real-data root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides
from typer.testing import CliRunner

import uit.app.profiles
from tests.pipeline_repo import ROOT, make_repo, sh
from uit.app.cli import app

PROFILES = ROOT / "profiles"
# What the user got: two keys on one line, the end of `uit profile paper` on a params.yaml
# that `dvc exp run -S synth.size=tiny` had rewritten.
BROKEN = "synth:\n  benchmarks: []\n  seed: 0 size: tiny\n"


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def profile(name: str, params: Path, *extra: object) -> tuple[int, str]:
    return cli("profile", name, "--params", params, "--profiles", PROFILES, *extra)


def words(output: str) -> str:
    """``output`` with the console's line wrapping undone."""
    return " ".join(output.split())


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the project (its own params.yaml and dvc.yaml) after `dvc exp run -S`, and the
    params.yaml text DVC wrote back."""
    repo = make_repo(tmp_path_factory.mktemp("dvc") / "repo")
    (repo / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    sh("git", "commit", "-qam", "the project's params.yaml", cwd=repo)
    sh("dvc", "exp", "run", "-S", "synth.size=tiny", "synth", cwd=repo)
    return repo, (repo / "params.yaml").read_text()


def differing() -> int:
    """How many keys the two profiles give different values (both list the same keys)."""
    demo, paper = (yaml.safe_load((ROOT / "profiles" / f"{n}.yaml").read_text())
                   for n in ("demo", "paper"))  # fmt: skip
    return sum(demo[s][k] != paper[s][k] for s in paper for k in paper[s])


@pytest.mark.slow
def test_paper_then_demo_on_a_params_file_dvc_rewrote(dvc_repo: tuple[Path, str]) -> None:
    repo, rewritten = dvc_repo
    params = repo / "params.yaml"
    # DVC's layout, which once made `uit profile paper` put two keys on one line
    assert "  benchmarks:  " in rewritten and "\n  - cuhk-pedes\n" in rewritten
    assert yaml.safe_load(rewritten)["synth"]["size"] == "tiny"
    assert "profile demo; 0 values changed" in words(profile("demo", params)[1])
    assert params.read_text() == rewritten  # nothing changed, nothing written

    code, output = profile("paper", params)
    assert code == 0 and f"{differing()} values changed" in words(output), output
    paper = yaml.safe_load(params.read_text())
    assert paper["synth"] == yaml.safe_load(rewritten)["synth"]
    assert paper["model"]["name"] == "ViT-B-16" and paper["train"]["epochs"] == 60
    assert "# what every stage runs on" in params.read_text()
    diff = sh("dvc", "params", "diff", cwd=repo).stdout  # DVC reads the file
    assert "model.name" in diff and "ViT-B-16" in diff, diff

    code, output = profile("demo", params)
    assert code == 0 and f"{differing()} values changed" in words(output), output
    assert yaml.safe_load(params.read_text()) == yaml.safe_load(rewritten)
    sh("dvc", "status", cwd=repo)  # DVC reads the file (and dvc.yaml's ${...}) again
    assert sh("dvc", "params", "diff", "--all", cwd=repo).returncode == 0


def test_keys_after_a_block_list_keep_their_own_lines(params: Path, tmp_path: Path) -> None:
    """The cause, without running a pipeline: DVC's own params writer (what `dvc exp run -S`
    calls) turns flow lists into block lists, with the comment after `benchmarks:`; a profile
    that then replaces that list once put the next key on the comment's line."""
    apply_overrides(str(params), ["synth.size=tiny"])
    rewritten = params.read_text()
    assert "\n  - cuhk-pedes\n" in rewritten
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "one.yaml").write_text("data:\n  benchmarks: [rstpreid]\n")
    code, output = cli("profile", "one", "--params", params, "--profiles", profiles)
    assert code == 0, output
    text = params.read_text()
    assert "\n  drop_missing: false " in text and "# what every stage runs on" in text
    expected = yaml.safe_load(rewritten)
    expected["data"]["benchmarks"] = ["rstpreid"]
    assert yaml.safe_load(text) == expected


def test_a_file_with_the_profile_values_is_left_untouched(params: Path) -> None:
    before = params.stat().st_mtime_ns
    code, output = profile("demo", params)
    assert code == 0 and "0 values changed" in words(output), output
    assert params.stat().st_mtime_ns == before


def test_the_committed_params_round_trip_byte_for_byte(params: Path) -> None:
    committed = params.read_bytes()
    assert profile("paper", params)[0] == 0 and params.read_bytes() != committed
    assert profile("demo", params)[0] == 0 and params.read_bytes() == committed


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda text: text.replace("\n  size:", " size:"), "not read back"),
        (lambda text: text.replace("seed: 0", "seed: 7", 1), "other values (synth.seed)"),
    ],
    ids=["two-keys-on-one-line", "a-value-changed"],
)
def test_a_render_that_does_not_read_back_is_refused(params: Path, monkeypatch, spoil, says):
    render = uit.app.profiles._render
    monkeypatch.setattr(uit.app.profiles, "_render", lambda document: spoil(render(document)))
    committed = params.read_bytes()
    code, output = profile("paper", params)
    assert code == 1 and params.read_bytes() == committed
    line = one_line(output)
    assert says in line and f"{params} left as it was" in line, line


def test_a_yaml_error_is_one_line_in_uit_profile(params: Path, tmp_path: Path) -> None:
    params.write_text(BROKEN)
    code, output = profile("demo", params)
    assert code == 1 and params.read_text() == BROKEN
    line = one_line(output)
    assert f"{params} line 3, column 15: not valid YAML" in line, line
    assert "seed: 0 size: tiny" in line and f"git checkout -- {params}" in line
    bad_profile = tmp_path / "profiles" / "odd.yaml"
    bad_profile.parent.mkdir()
    bad_profile.write_text("train:\n  epochs: [8\n")
    params.write_bytes((ROOT / "params.yaml").read_bytes())
    code, output = cli("profile", "odd", "--params", params, "--profiles", bad_profile.parent)
    assert code == 1 and f"{bad_profile} line 3, column 1" in one_line(output)


def test_a_key_given_twice_is_one_line(params: Path) -> None:
    text = params.read_text().replace("  seed: 0\n", "  seed: 0\n  seed: 1\n", 1)
    params.write_text(text)
    code, output = profile("paper", params)
    assert code == 1 and params.read_text() == text
    assert 'duplicate key "seed"' in one_line(output) and f"{params} line 11" in output


def test_a_yaml_error_is_one_line_in_uit_train_report_and_run(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(BROKEN)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for args in (["train", "--benchmark", "rstpreid", "--params", params],
                 ["report", "--project", tmp_path, "--no-experiments"],
                 ["run", "--project", tmp_path]):  # fmt: skip
        code, output = cli(*args)
        assert code == 1, (args, output)
        assert f"{params} line 3, column 15: not valid YAML" in one_line(output), args


def test_a_yaml_error_is_one_line_in_a_stage(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(BROKEN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "stages.synth", "--out", str(tmp_path / "d"),
               "--params", str(params)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 1 and not (tmp_path / "d").exists()
    assert f"{params} line 3, column 15: not valid YAML" in one_line(done.stdout + done.stderr)


def test_a_data_root_that_does_not_exist_is_refused(params: Path, tmp_path: Path) -> None:
    committed = params.read_bytes()
    code, output = profile("paper", params, "--data-root", tmp_path / "nowhere")
    assert code == 1 and params.read_bytes() == committed
    line = one_line(output)
    assert f"--data-root {tmp_path / 'nowhere'}: no such folder" in line
    assert f"expected the folder {tmp_path / 'nowhere' / 'CUHK-PEDES'}" in line
    assert "granted on request" in line  # how the real benchmarks are obtained
    # synthetic data is drawn into the root later: no folder needed
    assert profile("demo", params, "--data-root", tmp_path / "drawn-later")[0] == 0


def test_a_data_root_without_some_benchmarks_is_a_warning(params: Path, tmp_path: Path) -> None:
    (tmp_path / "real" / "RSTPReid").mkdir(parents=True)
    code, output = profile("paper", params, "--data-root", tmp_path / "real")
    assert code == 0 and yaml.safe_load(params.read_text())["data"]["root"] == str(
        tmp_path / "real"
    )
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert [w.split()[1] for w in warnings] == ["CUHK-PEDES", "ICFG-PEDES"], output
