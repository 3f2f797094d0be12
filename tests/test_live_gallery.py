"""``uit gallery add | erase`` on real files with the tiny trained checkpoint: only new images
encoded, a cached FAISS index carried over untrained, erased images gone from the gallery, the
embedding cache, the index and a running server (after ``POST /admin/reload``), the audit log
keeping that it happened; a cached search after either equals an uncached one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    Client,
    cli,
    fails,
    single_thread,
    snapshot,
    stop,
    wait_until_serving,
)
from uit.data import prepared as prepared_module
from uit.data.prepared import ERASED_FILE, erasure_file
from uit.raw.prepare import prepare_benchmark
from uit.retrieval import index as index_module
from uit.retrieval import live as live_module
from uit.retrieval import search as search_module
from uit.retrieval.gallery import open_gallery
from uit.retrieval.live import add_images, erase_images
from uit.retrieval.search import (
    EmbeddingCache,
    checkpoint_digest,
    file_digest,
    read_gallery,
)

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a person in a red coat"


@pytest.fixture
def folder(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A folder gallery of 8 of the tiny benchmark's images (4 more wait in ``new/``)."""
    images = sorted(trained["gallery"].glob("*.png"))
    (tmp_path / "gallery").mkdir()
    (tmp_path / "new").mkdir()
    for i, path in enumerate(images):
        shutil.copy(path, tmp_path / ("gallery" if i < 8 else "new") / path.name)
    return tmp_path / "gallery"


def search(checkpoint: Path, gallery: Path, cache: Path | None, k: int = 50) -> dict[str, Any]:
    caching = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    code, out = cli("search", checkpoint, QUERY, "--gallery", gallery, "--top-k", k, "--json",
                    "--device", "cpu", *caching)  # fmt: skip
    assert code == 0, out
    return json.loads(out[out.index("{") :])


def ranking(answer: dict[str, Any]) -> list[tuple[str, float]]:
    return [(Path(r["path"]).name, r["score"]) for r in answer["results"]]


def test_add_encodes_only_the_new_images_and_search_finds_them(
    trained: dict[str, Path], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, best = folder.parent / "cache", trained["best"]
    assert search(best, folder, cache)["encoded_now"] == 8
    new = sorted((folder.parent / "new").glob("*.png"))
    hashed: list[Path] = []
    real_digest = search_module.file_digest
    for module in (search_module, live_module):
        monkeypatch.setattr(module, "file_digest", lambda p: hashed.append(p) or real_digest(p))
    change = add_images(best, folder, new[:2], cache_dir=cache, device="cpu")
    assert change.encoded == 2 and change.images == 10 and (folder / new[0].name).is_file()
    assert len(hashed) == 10  # each image read and hashed once, the 8 already there included
    monkeypatch.undo()
    code, out = cli("gallery", "add", best, new[2], "--gallery", folder, "--cache-dir", cache,
                    "--device", "cpu")  # fmt: skip
    assert code == 0 and "1 encoded now, 11 in the gallery" in out, out
    warm = search(best, folder, cache)
    assert warm["encoded_now"] == 0 and {p.name for p in new[:3]} <= dict(ranking(warm)).keys()
    fresh = folder.parent / "fresh"  # a cache built anew on the gallery as it is now
    assert ranking(warm) == ranking(search(best, folder, fresh))


def test_add_fills_an_empty_gallery_and_one_whose_images_were_all_erased(
    trained: dict[str, Path], folder: Path, one_thread: None
) -> None:
    """A gallery starts empty, or is emptied by erasures: ``gallery add`` fills it, erased names
    stay refused, and a search of the filled gallery ranks as one on a cache built anew (the
    first search ever of a gallery, ``--no-cache``, differs in the sixth decimal: the cache
    stores float16 vectors)."""
    cache, best, new = folder.parent / "cache", trained["best"], folder.parent / "new"
    empty = folder.parent / "empty"
    empty.mkdir()
    code, out = cli("gallery", "add", best, *sorted(new.glob("*.png"))[:2], "--gallery", empty,
                    "--cache-dir", cache, "--device", "cpu")  # fmt: skip
    assert code == 0 and "2 encoded now, 2 in the gallery" in out, out
    fresh = folder.parent / "fresh"  # caches built anew on each gallery as it is now
    assert ranking(search(best, empty, cache)) == ranking(search(best, empty, fresh))
    names = sorted(p.name for p in folder.glob("*.png"))
    erase_images(best, folder, names=names, cache_dir=cache)
    fails("search", best, QUERY, "--gallery", folder, "--cache-dir", cache,
          says=("every image in it was erased",))  # fmt: skip
    fails("gallery", "add", best, folder / names[0], "--gallery", folder, "--cache-dir", cache,
          says=("was erased", "another name"))  # fmt: skip
    change = add_images(best, folder=folder, images=sorted(new.glob("*.png")), cache_dir=cache,
                        device="cpu")  # fmt: skip
    assert change.images == 4 and change.encoded == 2  # two were encoded for the empty gallery
    answer = search(best, folder, cache)
    assert {name for name, _ in ranking(answer)} == {p.name for p in new.glob("*.png")}
    assert ranking(answer) == ranking(search(best, folder, fresh))


def test_add_to_a_folder_that_does_not_exist_is_refused_and_makes_nothing(
    trained: dict[str, Path], folder: Path
) -> None:
    """Only an existing folder is a gallery: a typo in --gallery (or a benchmark's name, which
    add does not take) must not become a new gallery."""
    typo = folder.parent / "galery"
    fails("gallery", "add", trained["best"], *sorted((folder.parent / "new").glob("*.png")),
          "--gallery", typo, "--cache-dir", folder.parent / "cache",
          says=(str(typo), "not found"))  # fmt: skip
    assert not typo.exists()


def test_add_refuses_bad_input_before_writing_anything(trained: dict[str, Path],
                                                       folder: Path) -> None:  # fmt: skip
    cache, best = folder.parent / "cache", trained["best"]
    broken = folder.parent / "broken.png"
    broken.write_bytes(b"not an image")
    before = snapshot(folder)
    fails("gallery", "add", best, broken, "--gallery", folder, "--cache-dir", cache,
          says=("broken.png",))  # fmt: skip
    clash = folder.parent / "new" / sorted(folder.glob("*.png"))[0].name
    shutil.copy(sorted((folder.parent / "new").glob("*.png"))[0], clash)
    fails("gallery", "add", best, clash, "--gallery", folder, "--cache-dir", cache,
          says=("already holds another", "rename"))  # fmt: skip
    fails("gallery", "add", best, folder.parent / "nothing.png", "--gallery", folder,
          says=("nothing.png", "not an image file"))  # fmt: skip
    assert snapshot(folder) == before


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Cached rows encoded beside an erased image and a fresh encode without it agree only on
    one thread (``single_thread``)."""
    with single_thread():
        yield


def test_erase_removes_an_image_everywhere_and_the_audit_log_says_so(
    trained: dict[str, Path], folder: Path, one_thread: None
) -> None:
    cache, best, audit = folder.parent / "cache", trained["best"], folder.parent / "audit.jsonl"
    audit.write_text('{"time": "2026-01-01T00:00:00Z", "route": "/images", "image": "x"}\n')
    first = search(best, folder, cache)
    victim = Path(first["results"][0]["path"]).name
    digest = file_digest(folder / victim)
    key = checkpoint_digest(best)
    assert digest in EmbeddingCache(cache, key).rows
    code, out = cli("gallery", "erase", best, "--gallery", folder, "--image", victim,
                    "--cache-dir", cache, "--audit-log", audit)  # fmt: skip
    assert code == 0 and "erased 1 images" in out, out
    after = search(best, folder, cache)
    assert victim not in dict(ranking(after)) and len(after["results"]) == 7
    assert digest not in EmbeddingCache(cache, key).rows
    assert (folder / victim).is_file()  # no --delete-files: the file stays, never read again
    assert victim in json.loads((folder / ERASED_FILE).read_text())["images"]
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert lines[0]["image"] == "x" and lines[-1]["event"] == "erase"
    assert lines[-1]["images"] == [victim] and "time" in lines[-1]
    assert ranking(after) == ranking(search(best, folder, folder.parent / "fresh"))
    fails("gallery", "add", best, folder / victim, "--gallery", folder, "--cache-dir", cache,
          says=("was erased", "another name"))  # fmt: skip
    fails("gallery", "erase", best, "--gallery", folder, "--image", "nobody.png",
          "--cache-dir", cache, says=("--image nobody.png", "path inside the gallery"))  # fmt: skip
    erase_images(best, folder, names=[victim], cache_dir=cache, delete_files=True)
    assert not (folder / victim).exists()


def test_erasures_at_once_lose_no_name(trained: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Six erasures at the same moment: each reads and writes the erasure list, so without the
    gallery's lock the last writer drops the others' names (and serves those images again).
    A slow read of the list (a slow disk) widens the window the lock must close."""
    real = live_module.read_erased

    def slow(source: Path) -> set[str]:
        found = real(source)
        time.sleep(0.05)
        return found

    monkeypatch.setattr(live_module, "read_erased", slow)
    folder, cache = tmp_path / "gallery", tmp_path / "cache"
    shutil.copytree(trained["gallery"], folder)
    names = sorted(p.name for p in folder.iterdir())[:6]
    search(trained["best"], folder, cache)  # the cache the erasures rewrite
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda name: erase_images(trained["best"], folder, names=[name],
                                                cache_dir=cache), names))  # fmt: skip
    assert sorted(json.loads((folder / ERASED_FILE).read_text())["images"]) == names
    left = {Path(hit["path"]).name for hit in search(trained["best"], folder, cache)["results"]}
    assert not left & set(names) and len(left) == len(list(folder.glob("*.png"))) - 6


def test_erase_by_identity_in_a_prepared_benchmark(
    trained: dict[str, Path], tiny_synth: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Erased from a prepared benchmark, an identity stays erased when the benchmark is
    prepared again, by ``uit data prepare`` or as ``dvc repro`` does it (the folder removed
    first): the list sits beside the folder. Its raw images are the dataset's, so
    --delete-files is refused there and nothing changes."""
    prepared = tmp_path / "cuhk-pedes"
    shutil.copytree(trained["prepared"], prepared)
    cache = tmp_path / "cache"
    opened = open_gallery(trained["best"], prepared, cache_dir=cache, device="cpu")
    pid = opened.gallery.pids[0]
    change = erase_images(trained["best"], prepared, pids=[pid], cache_dir=cache)
    assert change.names and change.images == len(opened.gallery.paths) - len(change.names)
    listed = tmp_path / f"cuhk-pedes{ERASED_FILE}"
    assert erasure_file(prepared) == listed and not (prepared / ERASED_FILE).exists()
    assert sorted(json.loads(listed.read_text())["images"]) == sorted(change.names)
    again = open_gallery(trained["best"], prepared, cache_dir=cache, device="cpu")
    assert pid not in again.gallery.pids and pid not in again.gallery.captions.values()
    raw, before = tiny_synth[0], snapshot(tiny_synth[0], prepared)
    other = again.gallery.pids[0]  # not erased yet: old code deleted its raw images
    fails("gallery", "erase", trained["best"], "--gallery", prepared, "--identity", other,
          "--cache-dir", cache, "--delete-files",
          says=("--delete-files", "raw dataset", "erase without it"))  # fmt: skip
    assert snapshot(raw, prepared) == before
    prepare_benchmark("cuhk-pedes", raw.resolve(), prepared)
    third = open_gallery(trained["best"], prepared, cache_dir=cache, device="cpu")
    assert pid not in third.gallery.pids and len(third.gallery.paths) == change.images
    shutil.rmtree(prepared)  # what dvc repro does to a stage's output before running it
    prepare_benchmark("cuhk-pedes", raw.resolve(), prepared)
    fourth = open_gallery(trained["best"], prepared, cache_dir=cache, device="cpu")
    assert fourth.gallery.names == third.gallery.names
    code, out = cli("gallery", "erase", trained["best"], "--gallery", prepared, "--identity",
                    other, "--cache-dir", cache)  # fmt: skip
    assert code == 0 and "commit it with the project" in " ".join(out.split()), out
    assert other not in read_gallery(prepared).pids and pid not in read_gallery(prepared).pids


def test_an_erasure_list_inside_a_prepared_folder_counts_and_moves_beside_it(
    trained: dict[str, Path],
    tiny_synth: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Where earlier versions wrote it: inside the prepared folder. It counts (with one
    warning), the next erasure or ``uit data prepare`` moves it beside the folder, and then a
    folder removed as ``dvc repro`` removes it loses nothing. (The library's functions are
    called with keywords here: the gallery is found whichever way it is passed.)"""
    prepared = tmp_path / "cuhk-pedes"
    for move in ("erase", "prepare"):
        monkeypatch.setattr(prepared_module, "_WARNED", set())
        caplog.clear()
        shutil.rmtree(prepared, ignore_errors=True)
        shutil.copytree(trained["prepared"], prepared)
        listed = erasure_file(prepared)
        listed.unlink(missing_ok=True)
        names = read_gallery(prepared).names
        old, new = names[0], names[1]
        (prepared / ERASED_FILE).write_text(json.dumps({"format": "uit-erased-1",
                                                        "images": [old]}))  # fmt: skip
        assert old not in read_gallery(prepared).names
        if move == "erase":
            erase_images(checkpoint=trained["best"], source=prepared, names=[new],
                         cache_dir=tmp_path / "cache")  # fmt: skip
            assert json.loads(listed.read_text())["images"] == sorted([old, new])
        else:
            prepare_benchmark("cuhk-pedes", tiny_synth[0].resolve(), prepared)
            assert json.loads(listed.read_text())["images"] == [old]
        warned = [r for r in caplog.records if "an erasure list inside" in r.getMessage()]
        assert len(warned) == 1, move
        assert not (prepared / ERASED_FILE).exists()
        shutil.rmtree(prepared)  # dvc repro
        prepare_benchmark("cuhk-pedes", tiny_synth[0].resolve(), prepared)
        assert old not in read_gallery(prepared).names, move


def test_a_benchmark_reached_through_a_link_has_one_erasure_list(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    """Erased through a link to the prepared folder, an image is erased for the folder's own
    path too: the list sits beside the folder the link leads to, not beside the link."""
    real = tmp_path / "cuhk-pedes"  # at the depth its relative images folder expects
    shutil.copytree(trained["prepared"], real)
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "cuhk"
    link.symlink_to(real)
    victim = read_gallery(real).names[0]
    erase_images(trained["best"], link, names=[victim], cache_dir=tmp_path / "cache")
    assert erasure_file(link) == erasure_file(real) == tmp_path / f"cuhk-pedes{ERASED_FILE}"
    assert victim not in read_gallery(real).names and victim not in read_gallery(link).names
    assert not list((tmp_path / "links").glob(f"*{ERASED_FILE}"))


def _centroids(path: Path) -> np.ndarray:
    faiss = index_module._faiss()
    _, data = index_module.IndexHeader.split(path.read_bytes())
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    ivf = faiss.extract_index_ivf(index)
    return faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)


def test_add_and_erase_carry_the_ivf_index_without_training_it(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, new, cache = tmp_path / "gallery", tmp_path / "new", tmp_path / "cache"
    rng = np.random.default_rng(0)
    for i in range(90):  # enough for 2 k-means cells of 40 training points
        where = folder if i < 84 else new
        where.mkdir(exist_ok=True)
        pixels = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(where / f"p{i:03d}.png")
    best = trained["best"]
    opened = open_gallery(best, folder, index_kind="ann", cache_dir=cache, device="cpu")
    [built] = cache.glob("index-*.faiss")
    trained_cells = _centroids(built)
    trainings: list[int] = []
    real = index_module._train_and_add
    monkeypatch.setattr(index_module, "_train_and_add",
                        lambda *a: trainings.append(1) or real(*a))  # fmt: skip
    change = add_images(best, folder, sorted(new.glob("*.png")), cache_dir=cache,
                        index_kind="ann", device="cpu")  # fmt: skip
    assert change.encoded == 6 and change.index is not None and not built.exists()
    assert np.array_equal(_centroids(change.index), trained_cells)
    grown = open_gallery(best, folder, index_kind="ann", cache_dir=cache, device="cpu")
    exact = open_gallery(best, folder, index_kind="flat", cache_dir=cache, device="cpu")
    assert not trainings and len(grown.gallery.paths) == 90 > len(opened.gallery.paths)
    for query in [QUERY, "a man with a black backpack"]:
        assert grown.search(query, 20) == exact.search(query, 20)
    for i in range(84, 90):  # each new image is found by its own embedding
        assert grown.rank(exact.feats[i : i + 1].float(), 1)[0][0] == i
    erased = erase_images(best, folder, names=["p084.png", "p010.png"], cache_dir=cache,
                          index_kind="ann")  # fmt: skip
    assert erased.index is not None and [erased.index] == list(cache.glob("index-*.faiss"))
    assert np.array_equal(_centroids(erased.index), trained_cells)
    left = open_gallery(best, folder, index_kind="ann", cache_dir=cache, device="cpu")
    assert not trainings and len(left.gallery.paths) == 88
    faiss = index_module._faiss()
    _, data = index_module.IndexHeader.split(erased.index.read_bytes())
    assert faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)).ntotal == 88
    exact = open_gallery(best, folder, index_kind="flat", cache_dir=cache, device="cpu")
    assert left.search(QUERY, 20) == exact.search(QUERY, 20)


def test_a_running_server_takes_additions_and_erasures_on_reload(
    trained: dict[str, Path], folder: Path
) -> None:
    cache, best, log = folder.parent / "cache", trained["best"], folder.parent / "serve.log"
    command = [sys.executable, "-c", "from uit.app import main; main()", "serve", str(best),
               "--gallery", str(folder), "--port", "0", "--cache-dir", str(cache),
               "--device", "cpu"]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        client = Client(wait_until_serving(process, log))
        assert client.call("GET", "/healthz")[1]["images"] == 8
        new = sorted((folder.parent / "new").glob("*.png"))[0]
        assert cli("gallery", "add", best, new, "--gallery", folder, "--cache-dir", cache,
                   "--device", "cpu")[0] == 0  # fmt: skip
        assert new.name not in [h["name"] for h in client.search(QUERY, 20)["hits"]]
        status, answer, _ = client.call("POST", "/admin/reload")
        assert status == 200 and answer["images"] == 9 and answer["was"] == 8, answer
        assert new.name in [h["name"] for h in client.search(QUERY, 20)["hits"]]
        assert cli("gallery", "erase", best, "--gallery", folder, "--image", new.name,
                   "--cache-dir", cache)[0] == 0  # fmt: skip
        assert client.call("POST", "/admin/reload")[1]["images"] == 8
        hits = client.search(QUERY, 20)["hits"]
        assert new.name not in [h["name"] for h in hits] and len(hits) == 8
        assert client.call("GET", f"/images/{new.name}")[0] == 404
    finally:
        stop(process)
