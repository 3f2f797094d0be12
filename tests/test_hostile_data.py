"""Data a hostile (or unlucky) user feeds `uit`: each root cause of issue 11, plus probes beyond it.

Every refusal is a message naming the file or record and the fix, exit code 1 through the CLI, no
traceback, and a previously prepared folder left byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from tests.conftest import RecordFactory, default_records
from uit.app.cli import app
from uit.core.errors import DataError
from uit.data.dataset import ImageDataset
from uit.data.images import ImageError, load_rgb
from uit.data.prepared import MAX_CAPTION_CHARS, read_manifests
from uit.raw.formats import SPECS
from uit.raw.prepare import clean_caption

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
RST = SPECS["rstpreid"]
STATS = "stats.json"


def prepare(root: Path, out: Path, *extra: str, name: str = "rstpreid"):
    return runner.invoke(
        app,
        ["data", "prepare", "--benchmark", name, "--root", str(root), "--out", str(out), *extra],
    )


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (and the folder's siblings' names) with its SHA-256."""
    files = {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    return {**files, "siblings": ",".join(sorted(p.name for p in folder.parent.iterdir()))}


@pytest.fixture
def published(write_benchmark: RecordFactory, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A good prepared RSTPReid folder: (raw root, prepared folder, its snapshot)."""
    root = write_benchmark("rstpreid")
    out = tmp_path / "prepared" / "rstpreid"
    result = prepare(root, out)
    assert result.exit_code == 0, result.output
    return root, out, snapshot(out)


def rewrite(root: Path, records: list[dict]) -> None:
    (RST.dataset_dir(root) / RST.annotation_files[0]).write_text(json.dumps(records))


# 1. Images: decoded the same way everywhere, scaled not clipped, every failure a DataError.


def save(tmp_path: Path, name: str, image: Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = save(tmp_path, "deep.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    rgb = load_rgb(path)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.asarray(Image.open(path).convert("RGB"))[0, 1:, 0].tolist() == [255] * 3  # the bug


@pytest.mark.parametrize(
    ("name", "make", "pixel"),
    [
        ("int.tif", lambda: Image.fromarray(np.full((2, 2), 65535, np.int32)), (255, 255, 255)),
        ("half.tif", lambda: Image.fromarray(np.full((2, 2), 0.5, np.float32)), (128, 128, 128)),
        ("clear.png", lambda: Image.new("LA", (2, 2), (0, 0)), (255, 255, 255)),
        ("clear.png", lambda: Image.new("RGBA", (2, 2), (255, 0, 0, 0)), (255, 255, 255)),
        ("half.png", lambda: Image.new("RGBA", (2, 2), (0, 0, 0, 128)), (127, 127, 127)),
        ("bits.png", lambda: Image.new("1", (2, 2), 1), (255, 255, 255)),
        ("cmyk.jpg", lambda: Image.new("RGB", (8, 8), (200, 30, 30)).convert("CMYK"), None),
    ],
)
def test_every_mode_becomes_eight_bit_rgb(tmp_path: Path, name, make, pixel) -> None:
    rgb = load_rgb(save(tmp_path, name, make()))
    assert rgb.mode == "RGB"
    value = tuple(int(v) for v in np.asarray(rgb)[0, 0])
    if pixel is None:  # lossy JPEG: close to the colour it was drawn in
        assert max(abs(a - b) for a, b in zip(value, (200, 30, 30), strict=True)) <= 6
    else:
        assert max(abs(a - b) for a, b in zip(value, pixel, strict=True)) <= 1


def test_palette_transparency_is_laid_over_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    path = save(tmp_path, "p.png", image, transparency=0)
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(tmp_path, "phone.jpg", Image.new("RGB", (40, 20), "blue"), exif=exif)
    assert load_rgb(path).size == (20, 40)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.jpg", b"these are my notes, not a picture", "not a readable image"),
        ("empty.png", b"", "not a readable image"),
        ("cut.png", None, "not a readable image"),
    ],
)
def test_undecodable_files_are_data_errors_naming_file_and_fix(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is None:  # a PNG cut in the middle of its pixel data
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        load_rgb(path)
    assert isinstance(caught.value, DataError)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert "--drop-missing" in str(caught.value)


@pytest.mark.parametrize("factor", [1.5, 3])  # PIL warns below twice its limit, raises above
@pytest.mark.parametrize("action", ["error", "ignore"])  # uit's filter, or one reset by others
def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch, factor, action) -> None:
    path = save(tmp_path, "bomb.png", Image.new("L", (30, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(600 / factor))
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        with pytest.raises(ImageError) as caught:
            load_rgb(path)
    assert "decompression bomb" in str(caught.value) and str(path) in str(caught.value)


def test_prepare_refuses_a_bomb_and_keeps_the_old_output(published, monkeypatch) -> None:
    root, out, before = published
    victim = RST.imgs_dir(root) / default_records("rstpreid")[2]["img_path"]
    Image.new("RGB", (400, 300)).save(victim, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    result = prepare(root, out)
    assert_user_error(result, "1 image file(s)", "unreadable or corrupt", victim.name)
    assert snapshot(out) == before


def test_an_image_deleted_after_prepare_names_the_file_and_the_fix(published) -> None:
    root, out, _ = published
    victim = sorted(RST.imgs_dir(root).rglob("*.jpg"))[3]
    victim.unlink()
    with pytest.raises(DataError) as caught:
        read_manifests(out)
    message = str(caught.value)
    assert victim.relative_to(RST.imgs_dir(root)).as_posix() in message
    assert "stale" in message and "re-run `uit data prepare`" in message


def test_an_image_deleted_mid_run_fails_in_a_loader_worker_without_a_traceback(
    published,
) -> None:
    _, out, _ = published
    test = read_manifests(out)
    paths = test.paths()
    paths[1].unlink()  # after the manifests were read: only the worker finds out
    loader = DataLoader(ImageDataset(paths, lambda image: torch.zeros(1)), num_workers=1)
    with pytest.raises(ImageError) as caught:
        list(loader)
    message = str(caught.value)
    assert message.startswith(str(paths[1]))
    assert "Traceback" not in message and "stale" in message


def test_image_error_keeps_its_message_when_torch_rebuilds_it() -> None:
    try:
        raise ImageError("imgs/a.jpg: image file not found (re-run it)")
    except ImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ImageError) as caught:
        wrapped.reraise()
    assert str(caught.value) == "imgs/a.jpg: image file not found (re-run it)"


def test_train_with_a_stale_prepared_folder_is_one_message(published, tmp_path: Path) -> None:
    root, out, _ = published
    parse = ["data", "parse", str(out), "--out", str(tmp_path / "parsed"), "--backend", "builtin"]
    assert runner.invoke(app, parse).exit_code == 0
    victim = sorted(RST.imgs_dir(root).rglob("*.jpg"))[0]
    victim.unlink()
    result = runner.invoke(app, ["train", "--benchmark", "rstpreid", "--params",
                                 str(ROOT / "params.yaml"), "--prepared", str(out),
                                 "--parsed", str(tmp_path / "parsed"),
                                 "--out", str(tmp_path / "run"),
                                 # a batch the 2 identities fill: `uit train` checks it first
                                 "--set", "train.batch_size=4"])  # fmt: skip
    assert_user_error(result, victim.name, "re-run `uit data prepare`")


# 2. A prepared folder is replaced as a whole.

KILL_BETWEEN_RENAMES = """
import os, signal, sys
real = os.rename
def rename(src, dst):
    real(src, dst)
    if os.path.basename(str(dst)).startswith(".rstpreid.uit-old-"):
        os.kill(os.getpid(), signal.SIGKILL)  # after the old folder moved aside
os.rename = rename
from uit.app.cli import main
sys.argv = ["uit", *sys.argv[1:]]
main()
"""


def run_cli(
    *args: str, code: str = "from uit.app.cli import main; main()"
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_kill_between_the_renames_never_shows_a_mix(published) -> None:
    root, out, before = published
    records = default_records("rstpreid")
    records[0]["captions"] = ["a brand new caption"]
    rewrite(root, records)
    args = ("data", "prepare", "--benchmark", "rstpreid", "--root", str(root), "--out", str(out))
    killed = run_cli(*args, code=KILL_BETWEEN_RENAMES)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()  # neither old nor new: never a mix
    (leftover,) = [p for p in out.parent.iterdir() if ".uit-old-" in p.name]
    assert snapshot(leftover)[STATS] == before[STATS]
    rewrite(root, [])  # the next run fails validation: the old output comes back whole
    failed = run_cli(*args)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert snapshot(out) == before
    rewrite(root, records)
    assert run_cli(*args).returncode == 0
    assert "a brand new caption" in pl.read_parquet(out / "captions.parquet")["text"].to_list()
    assert sorted(p.name for p in out.parent.iterdir()) == ["rstpreid"]


def test_leftovers_of_killed_runs_are_cleaned_and_live_ones_kept(published) -> None:
    root, out, _ = published
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = out.parent / f".rstpreid.uit-tmp-{dead.stdout.strip()}-abc123"
    live = out.parent / f".rstpreid.uit-tmp-{os.getppid()}-def456"
    unrelated = out.parent / ".rstpreid.backup"
    for folder in (stale, live, unrelated):
        folder.mkdir()
        (folder / "images.parquet").write_text("half written")
    assert prepare(root, out).exit_code == 0
    assert not stale.exists()
    assert live.exists() and unrelated.exists()  # another run's, and not ours at all


@pytest.mark.parametrize("where", ["dataset", "parent", "foreign"])
def test_an_output_folder_that_holds_other_files_is_refused(published, where: str) -> None:
    root, out, _ = published
    target = {"dataset": RST.dataset_dir(root), "parent": out.parent, "foreign": out}[where]
    if where == "foreign":
        (out / "my_notes.txt").write_text("mine")
    before = snapshot(target)
    assert_user_error(prepare(root, target), "did not write", "give a new folder")
    assert snapshot(target) == before


def test_a_symlinked_output_folder_has_its_target_replaced(
    write_benchmark: RecordFactory, tmp_path: Path
) -> None:
    root = write_benchmark("rstpreid")
    real = tmp_path / "fast" / "rstpreid"
    real.mkdir(parents=True)
    link = tmp_path / "prepared"
    link.symlink_to(real)
    assert prepare(root, link).exit_code == 0
    assert link.is_symlink() and (real / STATS).is_file()
    assert read_manifests(link).images.height == 12


# 3. Empty results never replace a good benchmark; invisible captions are empty.


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "no image with a usable caption"),
        ("invisible", "no image with a usable caption"),
        ("no-train", "no captions in the train split"),
    ],
)
def test_an_empty_result_is_an_error_and_keeps_the_old_output(published, records, message) -> None:
    root, out, before = published
    if records == "invisible":
        records = default_records("rstpreid")
        for record in records:
            record["captions"] = ["\u200b\u200c\u200d", "\u2060\ufeff\u00ad ", "\u3164\u2800"]
    elif records == "no-train":
        records = [r for r in default_records("rstpreid") if r["split"] != "train"]
    rewrite(root, records)
    result = prepare(root, out)
    assert_user_error(result, "data_captions.json", message, "previous output is kept")
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),
        ("a red\u00adcoat", "a redcoat"),
        ("a\u200bwoman", "a woman"),
        ("\ufeffa man\u0000 with\u0007 a bag\u202e", "a man with a bag"),
        ("long\u2028hair\u3000and\tshoes", "long hair and shoes"),
        ("a \ud800 lone surrogate", "a lone surrogate"),
        ("caf\u0065\u0301 coat", "caf\u00e9 coat"),  # combining marks are kept (NFKC joins)
    ],
)
def test_clean_caption_drops_invisible_characters(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_invisible_captions_are_dropped_and_counted(write_benchmark, tmp_path: Path) -> None:
    records = default_records("rstpreid")
    records[0]["captions"] = ["\u200b\u200b", "a man\u200d in a coat"]
    root = write_benchmark("rstpreid", records=records)
    assert prepare(root, tmp_path / "out").exit_code == 0
    stats = json.loads((tmp_path / "out" / STATS).read_text())
    assert stats["dropped"]["empty_caption"] == 1
    assert "a man in a coat" in pl.read_parquet(tmp_path / "out" / "captions.parquet")["text"]


# 4. Symlinks cannot lead image reads outside imgs/.


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    Image.new("RGB", (16, 32), "green").save(folder / "secret.jpg")
    return folder


@pytest.mark.parametrize("kind", ["file", "folder", "root"])
@pytest.mark.parametrize("drop", [False, True])
def test_symlinks_out_of_imgs_are_refused(published, outside: Path, kind: str, drop: bool) -> None:
    root, out, before = published
    records = default_records("rstpreid")
    imgs = RST.imgs_dir(root)
    if kind == "file":
        (imgs / "train" / "link.jpg").symlink_to(outside / "secret.jpg")
        records[0]["img_path"] = "train/link.jpg"
    elif kind == "folder":
        (imgs / "away").symlink_to(outside)
        records[0]["img_path"] = "away/secret.jpg"
    else:
        (imgs / "everything").symlink_to("/")
        records[0]["img_path"] = "everything/" + str(outside / "secret.jpg").lstrip("/")
    rewrite(root, records)
    result = prepare(root, out, *(["--drop-missing"] if drop else []))
    assert_user_error(result, "symbolic link", records[0]["img_path"], str(outside / "secret.jpg"))
    assert snapshot(out) == before


def test_a_symlinked_imgs_folder_keeps_working(write_benchmark, tmp_path: Path) -> None:
    root = write_benchmark("rstpreid")
    store = tmp_path / "store" / "rstpreid-imgs"
    store.parent.mkdir()
    shutil.move(RST.imgs_dir(root), store)
    RST.imgs_dir(root).symlink_to(store)
    assert prepare(root, tmp_path / "out").exit_code == 0
    manifests = read_manifests(tmp_path / "out")
    assert all(path.is_file() for path in manifests.paths())


def test_a_symlink_planted_after_prepare_is_refused_on_reading(published, outside: Path) -> None:
    root, out, _ = published
    victim = sorted(RST.imgs_dir(root).rglob("*.jpg"))[0]
    victim.unlink()
    victim.symlink_to(outside / "secret.jpg")
    with pytest.raises(DataError, match="symbolic link"):
        read_manifests(out)


# 5. A prepared folder works from any working directory.


def test_a_prepared_folder_works_from_another_working_directory(
    write_benchmark, tmp_path: Path, monkeypatch
) -> None:
    write_benchmark("rstpreid")  # under tmp_path/raw
    monkeypatch.chdir(tmp_path)
    assert prepare(Path("raw"), Path("data/prepared/rstpreid")).exit_code == 0
    stats = json.loads(Path("data/prepared/rstpreid", STATS).read_text())
    assert stats["imgs_dir"] == "../../../raw/RSTPReid/imgs"  # the same on every machine
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert read_manifests("../data/prepared/rstpreid").images.height == 12
    moved = tmp_path.parent / f"{tmp_path.name}-moved"  # the whole project moved
    shutil.move(tmp_path, moved)
    monkeypatch.chdir(moved)
    assert all(p.is_file() for p in read_manifests("data/prepared/rstpreid").paths())


def test_an_old_prepared_folder_is_still_read(published, tmp_path: Path, monkeypatch) -> None:
    root, out, _ = published
    stats = json.loads((out / STATS).read_text())
    del stats["imgs_dir_relative_to"]
    stats["imgs_dir"] = os.path.relpath(RST.imgs_dir(root), tmp_path)  # as typed, relative to cwd
    (out / STATS).write_text(json.dumps(stats))
    monkeypatch.chdir(tmp_path)
    assert read_manifests(out).images.height == 12
    monkeypatch.chdir(out)
    with pytest.raises(DataError, match=r"working directory prepare ran in.*re-run `uit data"):
        read_manifests(out)


# 6. Bounded work on hostile input.


def test_a_huge_caption_is_dropped_and_counted(write_benchmark, tmp_path: Path) -> None:
    records = default_records("rstpreid")
    records[0]["captions"].append("a very long caption " * 250_000)  # 5 MB
    root = write_benchmark("rstpreid", records=records)
    result = prepare(root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "oversized caption 1" in result.output
    stats = json.loads((tmp_path / "out" / STATS).read_text())
    assert stats["dropped"]["oversized_caption"] == 1
    texts = pl.read_parquet(tmp_path / "out" / "captions.parquet")["text"]
    assert texts.str.len_chars().max() <= MAX_CAPTION_CHARS


def test_parse_refuses_an_oversized_caption_with_a_message(published, tmp_path: Path) -> None:
    _, out, _ = published
    captions = pl.read_parquet(out / "captions.parquet")
    huge = captions.with_columns(
        pl.when(pl.col("caption_id") == 3).then(pl.lit("x " * 2_500_000)).otherwise(pl.col("text"))
        .alias("text")
    )  # fmt: skip
    huge.write_parquet(out / "captions.parquet")
    result = runner.invoke(app, ["data", "parse", str(out), "--out", str(tmp_path / "parsed"),
                                 "--backend", "builtin"])  # fmt: skip
    assert_user_error(result, "captions.parquet", "caption_id 3", "uit data prepare")
    assert not (tmp_path / "parsed").exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(id=2**64), "record 3: field 'id' is 18446744073709551616, outside"),
        (lambda r: r.update(id=-(2**63) - 1), "outside the 64-bit integer range"),
        (lambda r: r.update(id=10**100), "is a huge integer, outside"),
        (lambda r: r.update(id=1.0), "record 3: field 'id' must be an integer"),
        (lambda r: r.update(img_path="train/a\u0000.jpg"), "holds a control character"),
        (lambda r: r.update(img_path="train/a\n.jpg"), "holds a control character"),
        (lambda r: r.update(img_path="C:\\imgs\\a.jpg"), "is an absolute path"),
        (lambda r: r.update(img_path="\\\\server\\share\\a.jpg"), "is an absolute path"),
        (lambda r: r.update(img_path="train/../../../etc/passwd"), "escapes the imgs/ folder"),
        (lambda r: r.update(captions="a single caption"), "field 'captions' must be a list"),
        (lambda r: r.update(captions={"0": "x"}), "field 'captions' must be a list"),
        (lambda r: r.update(captions=["x" * 500]), None),  # fine: long but sane
    ],
)
def test_hostile_records_name_the_file_and_record(published, mutate, message) -> None:
    root, out, before = published
    records = default_records("rstpreid")
    mutate(records[3])
    rewrite(root, records)
    result = prepare(root, out)
    if message is None:
        assert result.exit_code == 0, result.output
        return
    assert_user_error(result, "data_captions.json", "record 3", message)
    assert len(result.output) < 2000  # a hostile value does not flood the message
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"images": []}', "expected a JSON list of image records"),
        ('[{"id": 1' + "0" * 5000 + "}]", "unreadable JSON (Exceeds the limit (4300 digits)"),
    ],
)
def test_hostile_annotation_files(published, raw: str, message: str) -> None:
    root, out, before = published
    (RST.dataset_dir(root) / RST.annotation_files[0]).write_text(raw)
    assert_user_error(prepare(root, out), "data_captions.json", message)
    assert snapshot(out) == before


def test_windows_separators_and_redundant_parts_are_one_path(published) -> None:
    root, out, _ = published
    records = default_records("rstpreid")
    records[3]["img_path"] = records[3]["img_path"].replace("/", "\\")
    assert prepare_records(root, out, records).exit_code == 0
    records[5]["img_path"] = "./" + records[4]["img_path"].replace("/", "//")
    records[5]["id"] = 99  # the same image under another identity
    assert_user_error(prepare_records(root, out, records), "appear in more than one record")


def prepare_records(root: Path, out: Path, records: list[dict]):
    rewrite(root, records)
    return prepare(root, out)


def test_odd_images_prepare_cleanly(write_benchmark, tmp_path: Path) -> None:
    root = write_benchmark("cuhk-pedes")
    imgs = SPECS["cuhk-pedes"].imgs_dir(root)
    first, second, third = sorted(imgs.rglob("*.png"))[:3]
    Image.fromarray(np.full((32, 16), 40000, np.uint16)).save(first)
    Image.new("RGBA", (16, 32), (10, 20, 30, 0)).save(second)
    Image.new("1", (16, 32), 1).save(third)
    result = prepare(root, tmp_path / "out", name="cuhk-pedes")
    assert result.exit_code == 0, result.output
    assert np.asarray(load_rgb(first))[0, 0].tolist() == [156, 156, 156]
