"""Real CUHK-PEDES annotations (the official validation file, kept outside the repository in
``../shared/real``): the project's reader takes them as they are, and the caption comparison
runs on them. Skipped where that folder is absent (a user's clone has none)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uit.raw.readers import read_benchmark

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real" / "cuhk-pedes-val" / "val_reid.json"

pytestmark = pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is not on this machine")


def test_the_cuhk_pedes_reader_takes_the_official_annotations(tmp_path: Path) -> None:
    """The released reid_raw.json record format, read in place through a link."""
    (tmp_path / "CUHK-PEDES").mkdir()
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").symlink_to(REAL)
    records = read_benchmark("cuhk-pedes", tmp_path).records
    raw = json.loads(REAL.read_text(encoding="utf-8"))
    assert len(records) == len(raw) == 3078
    assert {r.split for r in records} == {"val"}
    assert len({r.pid for r in records}) == 1000
    assert sum(len(r.captions) for r in records) == sum(len(r["captions"]) for r in raw)
    assert records[0].path == raw[0]["file_path"]


def test_the_caption_comparison_sets_real_against_synthetic(
    tmp_path: Path, tiny_synth: tuple[Path, dict]
) -> None:
    root, _ = tiny_synth
    out = tmp_path / "gap.md"
    script = ROOT / "experiments" / "caption_gap.py"
    done = subprocess.run(
        [sys.executable, str(script), str(REAL), "--synthetic", str(root), "--corpus",
         str(tmp_path / "no-corpus"), "--sample", "300", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in
            out.read_text().splitlines()[2:]}  # fmt: skip
    header = out.read_text().splitlines()[0]
    assert header.count("synthetic") == 3 and "real CUHK-PEDES" in header
    assert rows["captions (all / compared)"][0] == "6,158 / 300"
    real_coverage, *synthetic_coverage = rows["real running words its vocabulary covers"]
    assert real_coverage == "100.0%"
    assert all(0 < float(c.strip(" |%")) < 100 for c in synthetic_coverage)
    # the real annotators' vocabulary is far larger than the generator's in as many captions
    real_words, *synthetic_words = rows["distinct words in the compared captions"]
    assert all(int(real_words.replace(",", "")) > 3 * int(w.strip(" |").replace(",", ""))
               for w in synthetic_words)  # fmt: skip
