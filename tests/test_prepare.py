"""Readers and `uit data prepare`: every format and all bad input (design §3.1-3.2, §8)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from tests.conftest import RecordFactory, default_records, make_record
from uit.app.cli import app
from uit.core.config import BENCHMARKS
from uit.raw.formats import SPECS
from uit.raw.readers import read_annotations, read_benchmark

runner = CliRunner()


def prepare(root: Path, out: Path, name: str, *extra: str):
    return runner.invoke(
        app,
        ["data", "prepare", "--benchmark", name, "--root", str(root), "--out", str(out), *extra],
    )


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 1, the message parts present, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder that already holds a file, to prove failures leave it untouched."""
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "stats.json").write_text('{"old": true}')
    return folder


def assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["stats.json"]
    assert json.loads((out / "stats.json").read_text()) == {"old": True}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".prepared")], "temp left"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_reader_reads_each_format(write_benchmark: RecordFactory, name: str) -> None:
    root = write_benchmark(name)
    annotations = read_annotations(SPECS[name], root)
    assert read_benchmark(name.upper(), root) == annotations
    records = default_records(name)
    assert len(annotations.records) == len(records)
    first = annotations.records[0]
    assert first.pid == records[0]["id"]
    assert first.path == records[0][SPECS[name].path_key]
    assert first.captions == tuple(records[0]["captions"])
    assert {r.split for r in annotations.records} == set(SPECS[name].splits)
    assert annotations.imgs_dir == root / SPECS[name].folder / "imgs"


def test_icfg_accepts_the_underscore_file_name(write_benchmark: RecordFactory) -> None:
    root = write_benchmark("icfg-pedes", annotation_name="ICFG_PEDES.json")
    assert read_benchmark("icfg-pedes", root).annotation_file.name == "ICFG_PEDES.json"


@pytest.mark.parametrize("name", ["cuhk-pedes", "icfg-pedes", "rstpreid"])
def test_prepare_writes_manifests_and_stats(write_benchmark: RecordFactory, tmp_path, name) -> None:
    root = write_benchmark(name)
    result = prepare(root, tmp_path / "out", name)
    assert result.exit_code == 0, result.output
    images = pl.read_parquet(tmp_path / "out" / "images.parquet")
    captions = pl.read_parquet(tmp_path / "out" / "captions.parquet")
    assert images.columns == ["image_id", "pid", "split", "path"]
    assert captions.columns == ["caption_id", "image_id", "pid", "split", "text"]
    assert images["image_id"].to_list() == list(range(images.height))
    joined = captions.join(images, on="image_id", suffix="_image")
    assert (joined["pid"] == joined["pid_image"]).all()
    assert (joined["split"] == joined["split_image"]).all()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    n_splits = len(SPECS[name].splits)
    assert stats["splits"]["train"] == {"identities": 2, "images": 4, "captions": 8}
    assert sum(s["images"] for s in stats["splits"].values()) == 4 * n_splits == images.height


def test_missing_dataset_folder_says_where_and_how(tmp_path: Path, out: Path) -> None:
    result = prepare(tmp_path / "nowhere", out, "cuhk-pedes")
    assert_user_error(
        result, str(tmp_path / "nowhere" / "CUHK-PEDES"), "reid_raw.json", "granted on request"
    )
    assert_untouched(out)


def test_missing_annotation_file(tmp_path: Path, out: Path) -> None:
    (tmp_path / "raw" / "RSTPReid" / "imgs").mkdir(parents=True)
    result = prepare(tmp_path / "raw", out, "rstpreid")
    assert_user_error(result, "data_captions.json not found", "granted on request")
    assert_untouched(out)


def test_malformed_json_names_file_and_position(write_benchmark: RecordFactory, out: Path) -> None:
    root = write_benchmark("cuhk-pedes", raw='[{"id": 1,\n  "file_path": }]')
    result = prepare(root, out, "cuhk-pedes")
    assert_user_error(result, "reid_raw.json", "malformed JSON at line 2, column 16")
    assert_untouched(out)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("captions"), "record 3: missing field 'captions'"),
        (lambda r: r.update(id="7"), "record 3: field 'id' must be an integer, got '7'"),
        (lambda r: r.update(captions="one caption"), "record 3: field 'captions' must be a list"),
        (
            lambda r: r.update(captions=["ok", None]),
            "record 3: field 'captions[1]' must be a string",
        ),
        (lambda r: r.update(split="dev"), "record 3: field 'split' is 'dev'"),
        (
            lambda r: r.update(img_path="/etc/passwd"),
            "record 3: field 'img_path' is an absolute path",
        ),
        (lambda r: r.update(img_path="../../secret.jpg"), "escapes the imgs/ folder"),
        (lambda r: r.update(img_path="a/../../b.jpg"), "escapes the imgs/ folder"),
    ],
)
def test_bad_record_names_file_record_and_field(write_benchmark, out, mutate, message) -> None:
    records = default_records("rstpreid")
    mutate(records[3])
    root = write_benchmark("rstpreid", records=records, images=False)
    result = prepare(root, out, "rstpreid")
    assert_user_error(result, "data_captions.json", message)
    assert_untouched(out)


def test_missing_images_fail_with_count_and_examples(
    write_benchmark: RecordFactory, out: Path
) -> None:
    root = write_benchmark("cuhk-pedes")
    imgs = SPECS["cuhk-pedes"].imgs_dir(root)
    removed = sorted(imgs.rglob("*.png"))[:4]
    for path in removed:
        path.unlink()
    result = prepare(root, out, "cuhk-pedes")
    example = removed[0].relative_to(imgs).as_posix()
    assert_user_error(result, "4 image file(s)", "are missing", example, "--drop-missing")
    assert_untouched(out)


def test_drop_missing_drops_and_counts(write_benchmark: RecordFactory, tmp_path: Path) -> None:
    root = write_benchmark("cuhk-pedes")
    imgs = SPECS["cuhk-pedes"].imgs_dir(root)
    (imgs / "test" / "0005_0.png").unlink()
    (imgs / "test" / "0005_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    result = prepare(root, tmp_path / "out", "cuhk-pedes", "--drop-missing")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"]["missing_image"] == 1
    assert stats["dropped"]["corrupt_image"] == 1
    assert stats["dropped"]["captions_of_dropped_images"] == 4
    assert stats["splits"]["test"] == {"identities": 1, "images": 2, "captions": 4}
    images = pl.read_parquet(tmp_path / "out" / "images.parquet")
    assert "test/0005_0.png" not in images["path"].to_list()


def test_corrupt_image_fails_without_drop(write_benchmark: RecordFactory, out: Path) -> None:
    root = write_benchmark("icfg-pedes")
    victim = sorted(SPECS["icfg-pedes"].imgs_dir(root).rglob("*.jpg"))[2]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    result = prepare(root, out, "icfg-pedes")
    assert_user_error(result, "1 image file(s)", "unreadable or corrupt", victim.name)
    assert_untouched(out)


def test_exists_check_skips_decoding(write_benchmark: RecordFactory, tmp_path: Path) -> None:
    root = write_benchmark("icfg-pedes")
    victim = sorted(SPECS["icfg-pedes"].imgs_dir(root).rglob("*.jpg"))[2]
    victim.write_bytes(b"garbage")
    result = prepare(root, tmp_path / "out", "icfg-pedes", "--check-images", "exists")
    assert result.exit_code == 0, result.output


def test_empty_whitespace_and_duplicate_captions_are_dropped_and_counted(
    write_benchmark: RecordFactory, tmp_path: Path
) -> None:
    records = default_records("rstpreid")
    records[0]["captions"] = ["", "a man in a blue shirt"]
    records[1]["captions"] = [
        "  \t ",
        "\u201cquoted\u201d   text \u2014 here",
        "a man in a blue shirt",
    ]
    records[2]["captions"] = ["same words", "same   words "]
    root = write_benchmark("rstpreid", records=records)
    result = prepare(root, tmp_path / "out", "rstpreid")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"]["empty_caption"] == 2
    assert stats["dropped"]["duplicate_caption"] == 1
    assert stats["notes"]["normalised_caption"] == 1
    texts = pl.read_parquet(tmp_path / "out" / "captions.parquet")["text"].to_list()
    assert '"quoted" text - here' in texts
    assert texts.count("a man in a blue shirt") == 2  # duplicates only count within one image
    assert all(t.strip() == t and t for t in texts)


def test_the_same_image_in_two_records_is_an_error(
    write_benchmark: RecordFactory, out: Path
) -> None:
    records = default_records("rstpreid")
    records[5]["img_path"] = records[4]["img_path"]
    root = write_benchmark("rstpreid", records=records)
    assert_user_error(prepare(root, out, "rstpreid"), "appear in more than one record")
    assert_untouched(out)


def test_stats_command_prints_the_table(write_benchmark: RecordFactory, tmp_path: Path) -> None:
    root = write_benchmark("cuhk-pedes")
    assert prepare(root, tmp_path / "out", "cuhk-pedes").exit_code == 0
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert "CUHK-PEDES" in result.output
    for split in ("train", "val", "test"):
        assert split in result.output
    as_json = runner.invoke(app, ["data", "stats", str(tmp_path / "out"), "--json"])
    assert json.loads(as_json.stdout)["splits"]["val"]["images"] == 4


def test_stats_on_a_folder_that_is_not_prepared(tmp_path: Path) -> None:
    assert_user_error(runner.invoke(app, ["data", "stats", str(tmp_path)]), "uit data prepare")


def test_unknown_benchmark_is_a_usage_error(tmp_path: Path) -> None:
    result = prepare(tmp_path, tmp_path / "out", "market-1501")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_make_record_matches_real_key_sets() -> None:
    assert set(make_record("rstpreid", 1, "a.jpg", ["x"], "train")) == {
        "id",
        "img_path",
        "captions",
        "split",
    }
    assert "processed_tokens" in make_record("cuhk-pedes", 1, "a.png", ["x"], "train")


def test_an_output_path_that_is_a_file_is_refused(
    write_benchmark: RecordFactory, tmp_path: Path
) -> None:
    root = write_benchmark("rstpreid")
    target = tmp_path / "occupied"
    target.write_text("keep me")
    assert_user_error(prepare(root, target, "rstpreid"), "is a file")
    assert target.read_text() == "keep me"
