"""The synthetic benchmark (design §3.4): formats, determinism, families, styles, dirty records."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from uit.app.cli import app
from uit.core.config import BENCHMARKS, SynthConfig
from uit.raw.formats import SPECS
from uit.raw.prepare import prepare_benchmark
from uit.raw.readers import read_benchmark
from uit.synth.attributes import Identity, sample_families
from uit.synth.captions import STYLES, write_caption
from uit.synth.generate import SIDECAR, SIZES, generate_benchmark
from uit.synth.vocabulary import COLOUR_WORDS


def sidecar(root: Path, name: str) -> dict:
    return json.loads((SPECS[name].dataset_dir(root) / SIDECAR).read_text())


@pytest.mark.parametrize("name", BENCHMARKS)
def test_output_is_in_the_exact_real_format(tiny_synth, name: str) -> None:
    root, _ = tiny_synth
    spec = SPECS[name]
    raw = json.loads(spec.annotation_file(root).read_text())
    expected_keys = {"id", spec.path_key, "captions", "split"}
    if name != "rstpreid":
        expected_keys.add("processed_tokens")
    assert all(set(record) == expected_keys for record in raw)
    annotations = read_benchmark(name, root)  # the real reader accepts it
    assert {r.split for r in annotations.records} == set(spec.splits)
    for record in annotations.records[:5]:
        with Image.open(annotations.imgs_dir / record.path) as image:
            assert image.size == (64, 128)
            assert image.format == ("PNG" if name == "cuhk-pedes" else "JPEG")


def test_pids_follow_each_benchmark_convention(tiny_synth) -> None:
    root, _ = tiny_synth
    assert min(r.pid for r in read_benchmark("cuhk-pedes", root).records) == 1
    assert min(r.pid for r in read_benchmark("rstpreid", root).records) == 0
    icfg = read_benchmark("icfg-pedes", root).records
    assert all(r.path.startswith(f"{r.split}/{r.pid:04d}/") for r in icfg)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    cfg = SynthConfig(size="tiny", seed=3)
    generate_benchmark("rstpreid", tmp_path / "a", cfg)
    generate_benchmark("rstpreid", tmp_path / "b", cfg, workers=2)  # parallel drawing too
    generate_benchmark("rstpreid", tmp_path / "c", SynthConfig(size="tiny", seed=4))
    files = ("data_captions.json", SIDECAR)
    for file in files:
        a = (tmp_path / "a" / "RSTPReid" / file).read_bytes()
        assert a == (tmp_path / "b" / "RSTPReid" / file).read_bytes()
        assert a != (tmp_path / "c" / "RSTPReid" / file).read_bytes()
    images_a = sorted((tmp_path / "a" / "RSTPReid" / "imgs").iterdir())
    images_b = sorted((tmp_path / "b" / "RSTPReid" / "imgs").iterdir())
    assert [p.read_bytes() for p in images_a[:10]] == [p.read_bytes() for p in images_b[:10]]


def test_regenerating_replaces_the_folder_whole(tmp_path: Path) -> None:
    generate_benchmark("rstpreid", tmp_path, SynthConfig(size="tiny", seed=1))
    stale = tmp_path / "RSTPReid" / "imgs" / "stale.jpg"
    stale.write_bytes(b"old")
    generate_benchmark("rstpreid", tmp_path, SynthConfig(size="tiny", seed=1))
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RSTPReid"]


def test_identities_come_in_families_of_near_duplicates() -> None:
    members = sample_families(random.Random(0), 200, set())
    by_family: dict[int, list[Identity]] = defaultdict(list)
    for family, identity in members:
        by_family[family].append(identity)
    assert len({identity.key() for _, identity in members}) == 200  # all distinct
    assert sum(len(m) >= 2 for m in by_family.values()) >= 0.8 * len(by_family)
    for family in by_family.values():
        base = family[0]
        for other in family[1:]:
            differing = sum(a != b for a, b in zip(base.key(), other.key(), strict=True))
            # one or two changes, and what they bring along (a new bag's colour and side)
            assert 1 <= differing <= 4


def test_families_never_straddle_splits(tiny_synth) -> None:
    root, _ = tiny_synth
    truth = sidecar(root, "cuhk-pedes")
    split_of_family: dict[int, set[str]] = defaultdict(set)
    for image in truth["images"]:
        split_of_family[truth["identities"][str(image["pid"])]["family"]].add(image["split"])
    assert all(len(splits) == 1 for splits in split_of_family.values())


def test_caption_styles_differ_per_benchmark(tiny_synth) -> None:
    root, _ = tiny_synth
    per_image = {
        n: Counter(len(r.captions) for r in read_benchmark(n, root).records) for n in BENCHMARKS
    }
    assert per_image["cuhk-pedes"].most_common(1)[0][0] == 2
    assert per_image["icfg-pedes"].most_common(1)[0][0] == 1
    assert per_image["rstpreid"].most_common(1)[0][0] == 2
    assert (
        Counter(r.pid for r in read_benchmark("rstpreid", root).records).most_common()[-1][1] == 5
    )
    rng = random.Random(0)
    identity = sample_families(rng, 1, set())[0][1]
    lengths = {n: sum(len(write_caption(identity, STYLES[n], rng).text.split()) for _ in range(200))
               for n in BENCHMARKS}  # fmt: skip
    assert lengths["icfg-pedes"] > lengths["cuhk-pedes"]


def test_captions_mention_the_identity_and_ground_truth_matches_the_text() -> None:
    rng = random.Random(1)
    no_typos = dataclasses.replace(STYLES["cuhk-pedes"], typo_p=0.0, spacing_p=0.0, no_period_p=0.0)
    typos = 0
    for _, identity in sample_families(rng, 300, set()):
        for style in (STYLES["cuhk-pedes"], no_typos):
            caption = write_caption(identity, style, rng)
            words = caption.text.lower().replace(".", " ").replace(",", " ").split()
            for word in caption.attribute_words + caption.filler_words:
                assert word.lower() in words, (word, caption.text)  # typos included
        upper = {w for name in COLOUR_WORDS[identity.upper_colour] for w in name.split()}
        assert upper & set(caption.attribute_words) or {"dark", "light"} & set(
            caption.attribute_words
        ), caption.text
        clean = write_caption(identity, no_typos, random.Random(5)).text
        typo = write_caption(identity, dataclasses.replace(no_typos, typo_p=1.0), random.Random(5))
        # two letters swapped or one dropped
        typos += typo.text != clean and len(clean) - len(typo.text) in (0, 1)
    assert typos == 300


def test_dirty_records_are_there_on_purpose(tiny_synth) -> None:
    root, _ = tiny_synth
    for name in BENCHMARKS:
        records = read_benchmark(name, root).records
        captions = [c for r in records for c in r.captions]
        assert any(not c.strip() for c in captions)
        assert any(len(r.captions) != len(set(r.captions)) for r in records)
        assert any(not c.isascii() for c in captions)
        assert any(len(c.split()) > 77 for c in captions)
        dirty = [image["dirty"] for image in sidecar(root, name)["images"] if image["dirty"]]
        assert sorted(dirty) == ["duplicate_caption", "empty_caption", "long_caption", "non_ascii"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_prepared_counts_agree_with_the_generator(tiny_synth, tmp_path: Path, name: str) -> None:
    root, summaries = tiny_synth
    stats = prepare_benchmark(name, root, tmp_path / name)
    assert stats["splits"] == summaries[name]
    assert stats["dropped"]["empty_caption"] == 1
    assert stats["dropped"]["duplicate_caption"] == 1
    assert stats["notes"]["long_caption"] == 1


def test_sizes_grow_and_medium_reaches_real_test_sizes() -> None:
    totals = {size: sum(sum(p.identities) for p in plans.values()) for size, plans in SIZES.items()}
    assert totals["tiny"] < totals["demo"] < totals["small"] < totals["medium"]
    assert SIZES["medium"]["cuhk-pedes"].identities[2] == 1000
    assert SIZES["medium"]["icfg-pedes"].identities[1] == 0  # ICFG-PEDES has no val split


def test_synth_command_writes_all_three_and_a_contact_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "docs" / "sheet.png"
    result = CliRunner().invoke(
        app,
        ["synth", "--root", str(tmp_path / "raw"), "--size", "tiny", "--contact-sheet", str(sheet)],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "CUHK-PEDES",
        "ICFG-PEDES",
        "RSTPReid",
    ]
    with Image.open(sheet) as image:
        assert image.width >= 6 * 100 and image.height >= 3 * 200
    bad = CliRunner().invoke(app, ["synth", "--root", str(tmp_path), "--size", "huge"])
    assert bad.exit_code == 2
