"""The README's first steps, run as a new user runs them: the installed `uit` console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

UIT = str(Path(sys.executable).with_name("uit"))  # installed beside the interpreter by pip


def test_synth_prepare_stats_from_the_readme(tmp_path: Path) -> None:
    def uit(*args: str) -> str:
        result = subprocess.run([UIT, *args], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    uit("synth", "--root", "data/raw", "--size", "tiny")
    for name in ("cuhk-pedes", "icfg-pedes", "rstpreid"):
        uit("data", "prepare", "-b", name, "--root", "data/raw", "--out", f"data/prepared/{name}")
    table = uit("data", "stats", "data/prepared/rstpreid")
    assert "RSTPReid" in table and "train" in table
    stats = json.loads(uit("data", "stats", "data/prepared/icfg-pedes", "--json"))
    assert set(stats["splits"]) == {"train", "test"}
