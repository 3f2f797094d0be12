"""The CLI and the stages against hostile input: every expected failure ends in one message that
names the file, record or parameter and the fix, exit code 1, no traceback, and leaves what was
written before byte-identical. One test (at least) per root cause of the hostile-user probes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import cli, fails, snapshot
from uit.core.config import SynthConfig, load_config
from uit.core.errors import CheckpointError, ConfigError
from uit.core.io import atomic_write_text
from uit.model.checkpoint import save_checkpoint
from uit.raw.prepare import prepare_benchmark
from uit.synth.generate import synthesize

ROOT = Path(__file__).resolve().parents[1]


def subprocess_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    command = [sys.executable, "-c", "from uit.app.cli import main; main()", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture
def checkpoint_copy(trained, tmp_path: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(trained["best"], copy)
    return copy


# --- 1. one error boundary ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["evaluate", "search", "export"])
def test_a_truncated_checkpoint_is_named(trained, checkpoint_copy, tmp_path, command) -> None:
    weights = checkpoint_copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(tmp_path, trained["run"])
    args = {"evaluate": ("evaluate", checkpoint_copy, trained["prepared"], "--out", tmp_path / "e"),
            "search": ("search", checkpoint_copy, "a man", "--gallery", trained["gallery"],
                       "--cache-dir", tmp_path / "cache"),
            "export": ("export", checkpoint_copy, tmp_path / "export")}[command]  # fmt: skip
    fails(*args, says=(str(weights), "truncated or damaged", "copy it again"))
    assert snapshot(tmp_path, trained["run"]) == before


def test_a_damaged_state_json_is_named(checkpoint_copy, trained, tmp_path) -> None:
    (checkpoint_copy / "state.json").write_text('{"config": ')
    fails("evaluate", checkpoint_copy, trained["prepared"], "--out", tmp_path / "e",
          says=(str(checkpoint_copy / "state.json"), "not valid JSON"))  # fmt: skip


@pytest.mark.parametrize("stats", ['{"benchmark": "cuhk-p', "[1, 2]"])
def test_a_damaged_stats_json_names_the_folder(trained, tmp_path, stats) -> None:
    prepared = tmp_path / "prepared"
    shutil.copytree(trained["prepared"], prepared)
    (prepared / "stats.json").write_text(stats)
    before = snapshot(prepared)
    fails("data", "stats", prepared, says=(str(prepared), "uit data prepare"))
    fails("evaluate", trained["best"], prepared, "--out", tmp_path / "e",
          says=(str(prepared), "uit data prepare"))  # fmt: skip
    assert snapshot(prepared) == before and not (tmp_path / "e").exists()


def test_the_stages_share_the_boundary(trained, checkpoint_copy, tmp_path) -> None:
    """A DVC stage, as DVC runs it (a real process): a message and exit code 1."""
    (checkpoint_copy / "weights.safetensors").write_bytes(b"\x08\x00")
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  benchmarks: [cuhk-pedes]\n")
    result = subprocess.run(
        [sys.executable, "stages/evaluate.py", "--checkpoint", str(checkpoint_copy),
         "--benchmark", "cuhk-pedes", "--prepared", str(trained["prepared"].parent),
         "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"),
         "--params", str(params)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "weights.safetensors" in result.stderr and "truncated or damaged" in result.stderr


def test_a_failed_pipeline_task_leads_with_the_stage_message() -> None:
    from uit.app.flows.pipeline import stage_failure

    lines = ["Running stage 'train@rstpreid':", "error: params.yaml: invalid configuration", "x"]
    message = stage_failure(["repro", "train@rstpreid"], 1, Path("/p/dvc.log"), lines)
    assert message == "params.yaml: invalid configuration (full log: /p/dvc.log)"
    dvc_only = ["ERROR: failed to reproduce 'train@rstpreid': exited with 1"]
    message = stage_failure(["repro", "train@rstpreid"], 255, Path("/p/dvc.log"), dvc_only)
    assert message == "failed to reproduce 'train@rstpreid': exited with 1 (full log: /p/dvc.log)"


def test_ctrl_c_is_one_line_and_exit_130(trained, tmp_path, monkeypatch) -> None:
    import uit.retrieval.evaluate

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(uit.retrieval.evaluate, "evaluate_checkpoint", interrupted)
    output = fails("evaluate", trained["best"], trained["prepared"], "--out", tmp_path / "e",
                   says=("interrupted",), code=130)  # fmt: skip
    assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize("out", ["/sys/kernel", "/sys/kernel/uit-evaluation"])
def test_a_read_only_output_names_the_path(trained, out: str) -> None:
    """A chmod does not bite as root, sysfs does: it refuses a new file (EACCES) or folder
    (EPERM) to everyone. The message names the file the user asked for."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here (not Linux)")
    fails("evaluate", trained["best"], trained["prepared"], "--out", out,
          says=(f"{out}/metrics.json cannot be written: permission denied",))  # fmt: skip


def test_a_bug_shows_its_traceback_behind_a_line_saying_so(trained, tmp_path, monkeypatch):
    import uit.retrieval.evaluate

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(uit.retrieval.evaluate, "evaluate_checkpoint", broken)
    code, output = cli("evaluate", trained["best"], trained["prepared"], "--out", tmp_path / "e")
    assert code == 1
    assert output.index("this is a bug in uit") < output.index("Traceback")


# --- config: overrides, params files, values -------------------------------------------------


def test_a_yaml_error_in_an_override_names_it(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 2\n")
    before = snapshot(tmp_path)
    fails("train", "--benchmark", "rstpreid", "--params", params, "--set", "train.epochs=[1",
          "--out", tmp_path / "run",
          says=("train.epochs=[1", "not valid YAML", "quote"))  # fmt: skip
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, ("is a folder", "YAML file")),
        (b"train:\n  epochs: \xff\xfe\n", ("not UTF-8", "save it as UTF-8")),
        (b"- 1\n- 2\n", ("mapping of sections", "list")),
    ],
    ids=["folder", "latin-1", "list"],
)
def test_a_bad_params_file_is_named(tmp_path, content, says) -> None:
    params = tmp_path / "params.yaml"
    if content is None:
        params.mkdir()
    else:
        params.write_bytes(content)
    fails("train", "--benchmark", "rstpreid", "--params", params, says=(str(params), *says))


def test_unknown_sections_and_keys_are_named(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    fails("train", "--benchmark", "rstpreid", "--params", params, "--set", "trian.epochs=1",
          says=("trian", "unknown key"))  # fmt: skip
    fails("train", "--benchmark", "rstpreid", "--params", params, "--set", "train..epochs=1",
          says=("empty part",))  # fmt: skip


def test_a_yaml_alias_bomb_fails_fast_with_a_short_message(tmp_path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]")
    lines.append("train:\n  epochs: *j")
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(lines) + "\n")
    # Expanded, the bomb is 9**10 strings: refusing it is the only way this returns at all.
    with pytest.raises(ConfigError, match="alias") as raised:
        load_config(params)
    assert len(str(raised.value)) < 1000


def test_huge_values_are_shown_bounded(tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("report:\n  title: [" + ", ".join(["x" * 100] * 5_000) + "]\n")
    with pytest.raises(ConfigError, match=r"report\.title") as raised:
        load_config(params)
    assert len(str(raised.value)) < 1000
    params.write_text("a: " + "x" * 1_100_000 + "\n")
    with pytest.raises(ConfigError, match="at most"):
        load_config(params)


def test_batch_size_is_checked_where_it_enters(trained, tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("augment:\n  keep_attributes_p: 0\nmodel:\n  name: uit-tiny\n")
    common = ("train", "--benchmark", "cuhk-pedes", "--params", params, "--prepared",
              trained["prepared"], "--out", tmp_path / "run")  # fmt: skip
    fails(*common, "--set", "train.batch_size=33", says=("train.batch_size 33", "use 32 or 34"))
    fails(*common, "--set", "train.batch_size=128",
          says=("train.batch_size 128 needs 64 identities", str(trained["prepared"])))  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_counts_and_sizes_of_options_must_be_positive(trained, tmp_path) -> None:
    """Usage errors are typer's: exit code 2, the option named."""
    fails("evaluate", trained["best"], trained["prepared"], "--out", tmp_path / "e",
          "--batch-size", "0", says=("--batch-size",), code=2)  # fmt: skip
    fails("search", trained["best"], "a man", "--gallery", trained["gallery"], "--top-k", "-3",
          says=("--top-k",), code=2)  # fmt: skip


def test_an_empty_pt_as_pretrained_weights_is_named(trained, tmp_path) -> None:
    empty = tmp_path / "empty.pt"
    empty.touch()
    params = tmp_path / "params.yaml"
    params.write_text("augment:\n  keep_attributes_p: 0\n")
    fails("train", "--benchmark", "cuhk-pedes", "--params", params, "--prepared",
          trained["prepared"], "--out", tmp_path / "run", "--set", "model.name=uit-tiny",
          "--set", "train.batch_size=16", "--set", f"model.pretrained={empty}",
          says=(str(empty), "not a weights file"))  # fmt: skip


# --- checkpoints: the declared architecture against the weights -----------------------------


@pytest.mark.parametrize(("name", "says"), [("RN50", "ResNet"), ("ViT-B-16", "embedding size")])
def test_a_checkpoint_declaring_another_architecture(
    checkpoint_copy, trained, tmp_path, name, says
):
    state = json.loads((checkpoint_copy / "state.json").read_text())
    state["config"]["model"]["name"] = name
    (checkpoint_copy / "state.json").write_text(json.dumps(state))
    fails("evaluate", checkpoint_copy, trained["prepared"], "--out", tmp_path / "e",
          says=("state.json", f"model.name {name}", says))  # fmt: skip


def test_a_checkpoint_that_is_a_file(trained, tmp_path) -> None:
    fails("search", trained["best"] / "state.json", "a man", "--gallery", trained["gallery"],
          says=("is a file, not a checkpoint",))  # fmt: skip


# --- export: never deletes what it does not own ----------------------------------------------


def test_export_refuses_a_folder_with_other_files(trained, tmp_path) -> None:
    out = tmp_path / "models"
    out.mkdir()
    (out / "notes.md").write_text("keep me")
    before = snapshot(out, trained["run"])
    fails("export", trained["best"], out, says=(str(out), "notes.md", "new or empty folder"))
    assert snapshot(out, trained["run"]) == before


def test_export_never_writes_over_its_run(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    before = snapshot(run)
    for target in (run, run / "checkpoints", run / "checkpoints" / "best"):
        fails("export", run / "checkpoints" / "best", target, says=("holds the checkpoint",))
    fails("export", run / "checkpoints" / "best", run / "checkpoints" / "last",
          says=("not a previous export",))  # fmt: skip
    fails("export", run / "checkpoints" / "best", run / "curves.csv", says=("is a file",))
    assert snapshot(run) == before


def test_export_replaces_a_previous_export(trained, tmp_path) -> None:
    out = tmp_path / "export"
    for _ in range(2):
        code, output = cli("export", trained["best"], out)
        assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["state.json", "weights.safetensors"]


def test_save_checkpoint_replaces_only_what_it_owns(tmp_path) -> None:
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "notes.md").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"notes\.md"):
        save_checkpoint(folder, {}, {"config": {}})
    assert (folder / "notes.md").read_text() == "keep me"


# --- file modes ---------------------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def modes(folder: Path) -> set[tuple[str, str]]:
    """Each kind of entry under ``folder`` (and itself) with its permission bits."""
    return {("folder" if p.is_dir() else "file", oct(stat.S_IMODE(p.stat().st_mode)))
            for p in [folder, *folder.rglob("*")]}  # fmt: skip


def test_outputs_get_the_modes_of_ordinary_writes(trained, tiny_synth, tmp_path, umask_027):
    """Under umask 027 every output is 0640 (files) and 0750 (folders), as open() and mkdir
    make them, however it was staged (mkstemp, mkdtemp and safetensors' writer make private
    ones); a file written over keeps its mode, as it would under open()."""
    code, output = cli("export", trained["best"], tmp_path / "model")
    assert code == 0, output
    save_checkpoint(tmp_path / "checkpoint", {"w": torch.zeros(2)}, {"config": {}})
    prepare_benchmark("cuhk-pedes", tiny_synth[0].resolve(), tmp_path / "prepared")
    synthesize(tmp_path / "synth", SynthConfig(size="tiny", seed=1), ("rstpreid",))
    _search(trained, tmp_path / "cache")
    for name in ("model", "checkpoint", "prepared", "synth", "cache"):
        assert modes(tmp_path / name) == {("folder", "0o750"), ("file", "0o640")}, name
    kept = tmp_path / "model" / "state.json"
    kept.chmod(0o604)
    atomic_write_text(kept, kept.read_text())
    assert oct(stat.S_IMODE(kept.stat().st_mode)) == "0o604"


# --- search: the gallery cache ----------------------------------------------------------------


def _search(trained, cache: Path | None, *extra: object) -> list[dict[str, object]]:
    caching = ("--cache-dir", cache) if cache else ("--no-cache",)
    code, output = cli("search", trained["best"], "a woman in a red coat", "--gallery",
                       trained["gallery"], "--json", "--top-k", "12", *caching, *extra)  # fmt: skip
    assert code == 0, output
    return json.loads(output[output.index("{") :])["results"]


def test_a_truncated_search_cache_is_rebuilt(trained, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = _search(trained, cache)
    (entry,) = cache.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:300])
    assert _search(trained, cache) == first
    assert entry.stat().st_size > 300  # rebuilt whole


def test_a_warm_cache_advances_the_bar_over_the_whole_gallery(trained, tmp_path) -> None:
    """Cached images advance the bar as they are hashed (a warm search's bar sat at 0 of N),
    encoded ones by batch: N in all however warm the cache; warm and cold searches agree."""
    from uit.retrieval.evaluate import load_for_inference
    from uit.retrieval.search import (
        EmbeddingCache,
        checkpoint_digest,
        gallery_embeddings,
        list_gallery,
    )

    paths = list_gallery(trained["gallery"])
    encoder, _, options = load_for_inference(trained["best"], "cpu", 4)
    key = checkpoint_digest(trained["best"])
    runs = []
    for gallery in (paths[:5], paths, paths):  # cold on 5 images, then half warm, then warm
        steps: list[int] = []
        feats, encoded = gallery_embeddings(
            encoder, gallery, options, EmbeddingCache(tmp_path / "cache", key), steps.append
        )
        runs.append((feats, encoded, steps))
    assert [sum(steps) for _, _, steps in runs] == [5, len(paths), len(paths)]
    assert [encoded for _, encoded, _ in runs] == [5, len(paths) - 5, 0]
    assert runs[2][2] == [1] * len(paths)  # nothing encoded: one step per hashed image
    assert torch.equal(runs[1][0], runs[2][0])
    cache = tmp_path / "cli-cache"
    assert _search(trained, cache) == _search(trained, cache)  # cold, then warm


def test_an_empty_query_and_an_empty_gallery(trained, tmp_path) -> None:
    fails("search", trained["best"], "  ", "--gallery", trained["gallery"],
          says=("query is empty",))  # fmt: skip
    (tmp_path / "empty").mkdir()
    fails("search", trained["best"], "a man", "--gallery", tmp_path / "empty",
          says=(str(tmp_path / "empty"), "holds no images"))  # fmt: skip


WRITER = """
import sys
from pathlib import Path
from uit.retrieval.evaluate import load_for_inference
from uit.retrieval.search import EmbeddingCache, checkpoint_digest, gallery_embeddings, list_gallery

checkpoint, gallery, cache_dir = sys.argv[1:4]
paths = list_gallery(gallery)
encoder, _, options = load_for_inference(checkpoint, "cpu", 64)
key = checkpoint_digest(checkpoint)
for _ in range(8):  # each pass re-encodes its gallery and publishes the cache file
    cache = EmbeddingCache(cache_dir, key)
    cache.rows.clear()
    gallery_embeddings(encoder, paths, options, cache)
"""


def test_concurrent_searches_never_mix_their_cache(trained, tmp_path) -> None:
    """Two real processes write one cache entry at once, each for another gallery; afterwards a
    search from that cache equals one that encodes everything afresh, for both galleries."""
    images = sorted(trained["gallery"].iterdir())
    halves = [tmp_path / "a", tmp_path / "b"]
    for half, part in zip(halves, (images[:6], images[6:]), strict=True):
        half.mkdir()
        for image in part:
            shutil.copy(image, half / image.name)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(trained["best"]), str(half),
                                 str(cache)], env=env) for half in halves]  # fmt: skip
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    for half in halves:
        gallery = {**trained, "gallery": half}
        assert _search(gallery, cache) == _search(gallery, tmp_path / f"fresh-{half.name}")


# --- real processes: exit codes and stderr as a shell sees them -------------------------------


def test_a_real_process_exits_1_with_one_message(trained, tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 2\n")
    result = subprocess_cli("train", "--benchmark", "rstpreid", "--params", params, "--set",
                            "train.batch_size=33")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "train.batch_size 33" in result.stderr and "use 32 or 34" in result.stderr
