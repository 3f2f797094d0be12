"""The report's pictures, without a pipeline: thumbnails keep their pixels sharp and their
aspect ratio, retrieval strips fit the page at full size, restorations are scaled to be seen."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageChops

from tests.conftest import need_browser
from uit.app.browser import check_page
from uit.app.contact_sheet import Tile, build_contact_sheet, thumbnail
from uit.app.report import RESTORATION_HEIGHT, STRIP_THUMB, STRIP_WIDTH, _restoration_grid, _strip


def noise(path: Path, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (height, width, 3) picture of random colours (never white), saved losslessly."""
    pixels = np.random.default_rng(seed).integers(0, 250, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def drawn(sheet: Image.Image) -> Image.Image:
    """What is not white background: the one thumbnail of a sheet without captions."""
    box = ImageChops.difference(sheet, Image.new("RGB", sheet.size, "white")).getbbox()
    assert box is not None
    return sheet.crop(box)


def test_a_small_image_grows_by_whole_pixels(tmp_path: Path) -> None:
    source = noise(tmp_path / "small.png", (16, 32))
    sheet = build_contact_sheet([Tile(tmp_path / "small.png", "")], columns=1,
                                thumb_size=(64, 128), text_lines=0)  # fmt: skip
    thumb = np.asarray(drawn(sheet))
    assert thumb.shape == (128, 64, 3)
    assert np.array_equal(thumb, source.repeat(4, axis=0).repeat(4, axis=1))  # no blur


def test_thumbnails_keep_the_aspect_ratio() -> None:
    assert thumbnail(Image.new("RGB", (200, 400)), (64, 128)).size == (64, 128)
    assert thumbnail(Image.new("RGB", (100, 100)), (64, 128)).size == (64, 64)
    assert thumbnail(Image.new("RGB", (30, 100)), (64, 128)).size == (38, 128)
    assert thumbnail(Image.new("RGB", (20, 50)), (64, 128)).size == (40, 100)  # 2x, whole


def test_a_retrieval_strip_fits_the_page_at_full_size(tmp_path: Path) -> None:
    """The ground truth and a top 10 in one row no wider than the page (a browser shrinks a
    wider picture: 11 tiles used to show 58 px high); 24 tiles wrap into two rows instead."""
    paths = [tmp_path / f"{i}.png" for i in range(25)]
    for i, path in enumerate(paths):
        noise(path, (32, 64), seed=i)
    sentence = "a woman in a red coat carrying a black backpack and a long umbrella " * 3
    for count, rows in ((11, 1), (24, 2)):
        tiles = [Tile(p, f"#{i} 0.50", (210, 40, 40)) for i, p in enumerate(paths[:count])]
        strip = Image.open(io.BytesIO(_strip(sentence, tiles, "").webp))
        assert strip.format == "WEBP" and strip.width <= STRIP_WIDTH
        thumbs = rows * STRIP_THUMB[1]
        assert thumbs < strip.height < thumbs + rows * 60 + 80  # captions and the title


def test_restorations_are_scaled_up_to_be_seen_not_beyond() -> None:
    for height, width, shown in ((64, 32, 192), (128, 64, 256), (384, 128, 384)):
        columns = [torch.rand(2, 3, height, width) for _ in range(3)]
        grid = _restoration_grid(columns, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        assert grid.height == 2 * (shown + 6) and shown >= RESTORATION_HEIGHT


def test_the_report_reads_each_checkpoint_once(trained, tmp_path: Path, monkeypatch) -> None:
    """The free sentences and the TIR restorations of a benchmark come from one read of its
    checkpoint's weights (they were two: the encoder, then the whole training model)."""
    import uit.model.checkpoint
    from uit.app.report import RunResult, build_report
    from uit.core.config import ReportConfig

    reads: list[Path] = []
    real = uit.model.checkpoint.load_checkpoint

    def counting(directory: Path, **kwargs: bool) -> uit.model.checkpoint.Checkpoint:
        reads.append(Path(directory))
        return real(directory, **kwargs)

    monkeypatch.setattr(uit.model.checkpoint, "load_checkpoint", counting)
    cfg = ReportConfig(queries=("a person in a red coat",), random_queries=0, restorations=1,
                       top_k=3)  # fmt: skip
    report = build_report([RunResult("cuhk-pedes", {}, [], {})], cfg, evals_dir=tmp_path,
                          prepared_dir=trained["prepared"].parent,
                          checkpoints={"cuhk-pedes": trained["best"]})  # fmt: skip
    assert reads == [trained["best"]]
    titles = [title for title, _, _ in report.sections]
    assert titles == ["Retrievals on CUHK-PEDES test (model trained on CUHK-PEDES)",
                      "TIR restorations (CUHK-PEDES)"]  # fmt: skip
    assert "free sentence" in report.sections[0][1] and "<img" in report.sections[1][2]


def test_a_model_trained_without_tir_has_no_restorations_and_the_report_says_so(
    trained, tmp_path: Path, monkeypatch
) -> None:
    """An experiment with loss.tir 0 trains no TIR decoder: the report says there is nothing to
    restore instead of failing (the report stage of such an experiment used to crash)."""
    import uit.model.objective
    from uit.app.report import RunResult, build_report
    from uit.core.config import ReportConfig

    real = uit.model.objective.load_objective

    def without_tir(checkpoint: Path) -> uit.model.objective.Objective:
        objective = real(checkpoint)
        objective.tir_decoder = None  # what the objective of a loss.tir 0 run holds
        return objective

    monkeypatch.setattr(uit.model.objective, "load_objective", without_tir)
    report = build_report([RunResult("cuhk-pedes", {}, [], {})],
                          ReportConfig(restorations=1, random_queries=0), evals_dir=tmp_path,
                          prepared_dir=trained["prepared"].parent,
                          checkpoints={"cuhk-pedes": trained["best"]})  # fmt: skip
    [(title, markdown, fragment)] = report.sections
    assert title == "TIR restorations (CUHK-PEDES)"
    assert "without TIR (loss.tir 0)" in markdown and "<img" not in fragment


def test_a_page_check_leaves_nothing_in_the_temporary_folder(tmp_path: Path, monkeypatch) -> None:
    """Chromium's profile and the socket folder it leaves on quitting go with its scratch
    folder (each check used to leave an org.chromium.Chromium.* folder in /tmp)."""
    need_browser()
    scratch = Path(tempfile.mkdtemp(dir="/tmp"))  # short: Chromium's socket path must fit
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><title>t</title><p>a page", encoding="utf-8")
    try:
        check = check_page(page, tmp_path / "shot.png")
        left = list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch)
    assert check.console_errors == [] and (tmp_path / "shot.png").stat().st_size > 0
    assert left == []


def test_a_page_check_starts_under_a_long_temporary_folder(tmp_path: Path, monkeypatch) -> None:
    """Chromium's socket under a temporary folder this long would pass the 107 bytes of a
    Unix socket's path, and Chromium would exit at start: the check makes its folder in /tmp."""
    need_browser()
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><title>t</title><p>a page", encoding="utf-8")
    assert check_page(page).console_errors == []
    assert list(deep.iterdir()) == []
