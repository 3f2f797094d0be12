"""A contact sheet of the synthetic benchmark: look-alike identities side by side with captions."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from PIL import Image

from uit.app.contact_sheet import Tile, build_contact_sheet
from uit.raw.readers import read_benchmark
from uit.synth.generate import SIDECAR


def family_tiles(root: str | Path, name: str, columns: int = 6) -> list[Tile]:
    """One row: two images each of up to three identities from one test-split family."""
    annotations = read_benchmark(name, root)
    sidecar = json.loads((annotations.spec.dataset_dir(root) / SIDECAR).read_text(encoding="utf-8"))
    by_pid = defaultdict(list)
    for record in annotations.records:
        if record.split == "test" and record.captions:
            by_pid[record.pid].append(record)
    families = defaultdict(list)
    for pid in by_pid:
        families[sidecar["identities"][str(pid)]["family"]].append(pid)
    members = max(families.values(), key=len)[:3]
    tiles = []
    for pid in members:
        for record in by_pid[pid][:2]:
            caption = f"[{annotations.spec.title} #{pid}] {record.captions[0]}"
            tiles.append(Tile(annotations.imgs_dir / record.path, caption))
    return tiles[:columns]


def synthetic_contact_sheet(root: str | Path, names: tuple[str, ...]) -> Image.Image:
    tiles = [tile for name in names for tile in family_tiles(root, name)]
    title = "Synthetic benchmark: each row is one family of look-alike identities (test split)"
    return build_contact_sheet(tiles, columns=6, title=title)
