"""The Milvus index on Milvus Lite (real files in a temporary cache folder): ranks exactly as
the flat scan (scores and tie order), finds the exact top 10 of 100,000 clustered embeddings,
is reused for unchanged embeddings, takes a live gallery's additions and erasures, refuses an
unreachable server in one line, and serves a gallery end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import Client, clustered, fails, snapshot, stop, wait_until_serving
from uit.data.prepared import ERASED_FILE
from uit.retrieval import milvus as milvus_module
from uit.retrieval.gallery import open_gallery
from uit.retrieval.index import AnnSettings, build_index
from uit.retrieval.live import add_images, erase_images
from uit.retrieval.milvus import MilvusIndex, carry_milvus, row_ids, segment_rows

pytest.importorskip("pymilvus")
ROOT = Path(__file__).resolve().parents[1]


def random_feats(n: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=-1).half()


def milvus(feats: torch.Tensor, cache: Path) -> MilvusIndex:
    index = build_index(feats, "milvus", cache)
    assert isinstance(index, MilvusIndex)
    return index


def test_milvus_ranks_exactly_as_flat_ties_included(tmp_path: Path) -> None:
    feats = random_feats(500, 32, seed=0)
    feats[300:320] = feats[10:30]  # copies: equal scores, the lower index first
    queries = torch.cat([random_feats(18, 32, seed=1).float(), feats[10:12].float()])  # (20, D)
    index = milvus(feats, tmp_path)
    assert (tmp_path / "milvus.db").is_dir() and index.collection.startswith("uit_")
    for k, offset in ((10, 0), (10, 5), (3, 40)):
        flat_scores, flat = build_index(feats, "flat").search(queries, k + offset)
        scores, found = index.search(queries, k + offset)
        assert torch.equal(found[:, offset:], flat[:, offset:])
        assert torch.equal(scores, flat_scores)  # the exact float32 products, bit for bit
    assert found[18, 0] == 10 and found[18, 1] == 300  # a tie goes to the lower index


def test_unchanged_embeddings_reuse_their_collection(tmp_path: Path, monkeypatch) -> None:
    feats, other = random_feats(300, 16, seed=2), random_feats(300, 16, seed=3)
    first = milvus(feats, tmp_path)
    inserts: list[int] = []
    real = milvus_module._insert

    def counted(client: Any, name: str, feats: torch.Tensor, ids: Any, advance: Any) -> None:
        inserts.append(len(feats))
        real(client, name, feats, ids, advance)

    monkeypatch.setattr(milvus_module, "_insert", counted)
    again = milvus(feats, tmp_path)
    assert again.collection == first.collection and inserts == []
    assert milvus(other, tmp_path).collection != first.collection and inserts == [300]


def test_cells_are_sized_to_a_segment_not_to_the_gallery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus trains an IVF per segment: Milvus Lite seals one at 128 MB of float32 rows
    (65,536 at 512-d), a server at 12% of 1 GiB at the least; a gallery smaller than a segment
    is one segment. The cells the collection is given are those of a segment: with segments
    made smaller than the gallery, fewer than the gallery's own size would have."""
    assert segment_rows("milvus", 1_000_000, 512) == 65_536
    assert segment_rows("milvus://10.0.0.5:19530", 1_000_000, 512) == 62_914
    assert segment_rows("milvus", 3_000, 512) == 3_000
    monkeypatch.setattr(milvus_module, "_lite_segment_bytes", lambda: 500 * 16 * 4)  # 500 rows
    feats = random_feats(3_000, 16, seed=4)
    index = milvus(feats, tmp_path)
    described = index.client.describe_index(index.collection, "vec")
    cells = int(described.get("params", described)["nlist"])  # Milvus Lite nests it, a server not
    assert cells == AnnSettings.for_size(500).lists != AnnSettings.for_size(3_000).lists


@pytest.mark.slow
def test_milvus_finds_the_exact_top_10_of_100k(tmp_path: Path) -> None:
    points = clustered(100_050, 64, 2000)  # queries around the gallery's own centres
    feats, queries = points[:100_000], points[100_000:].float()
    _, flat = build_index(feats, "flat").search(queries, 10)
    _, found = milvus(feats, tmp_path).search(queries, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, flat, strict=True))
    assert recall / flat.numel() >= 0.95


def test_additions_and_erasures_reach_the_collection(tmp_path: Path) -> None:
    old = random_feats(400, 16, seed=4)
    index = milvus(old, tmp_path)
    added = random_feats(30, 16, seed=5)
    # erase rows 0-49, add 30 in the middle: every position after them shifts, ids do not
    new = torch.cat([old[50:200], added, old[200:]])
    carried = carry_milvus("milvus", tmp_path, old, new)
    assert carried is not None and carried != index.collection
    rows = int(index.client.get_collection_stats(carried)["row_count"])
    assert rows == len(new) and not index.client.has_collection(index.collection)
    grown = build_index(new, "milvus", tmp_path)
    assert isinstance(grown, MilvusIndex) and grown.collection == carried
    queries = torch.cat([added[:5].float(), old[:5].float()])  # new images, erased ones
    expected = build_index(new, "flat").search(queries, 10)
    got = grown.search(queries, 10)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])
    assert got[1][:5, 0].tolist() == list(range(150, 155))  # each added image finds itself
    hits = index.client.search(carried, data=old[:5].float().tolist(), limit=5)
    gone = set(row_ids(old[:50]).tolist())
    assert not gone & {hit["id"] for q in hits for hit in q}  # erased rows are not in Milvus


def test_uit_gallery_add_and_erase_reach_the_collection(trained: dict[str, Path],
                                                         tmp_path: Path) -> None:  # fmt: skip
    images = sorted(trained["gallery"].glob("*.png"))
    folder, cache, best = tmp_path / "gallery", tmp_path / "cache", trained["best"]
    folder.mkdir()
    for path in images[:8]:
        shutil.copy(path, folder / path.name)
    first = open_gallery(best, folder, index_kind="milvus", cache_dir=cache, device="cpu")
    assert isinstance(first.index, MilvusIndex)
    first.index.client.release_collection(first.index.collection)  # as if served elsewhere
    change = add_images(best, folder, images[8:10], cache_dir=cache, index_kind="milvus",
                        device="cpu")  # fmt: skip
    grown = open_gallery(best, folder, index_kind="milvus", cache_dir=cache, device="cpu")
    assert isinstance(grown.index, MilvusIndex) and change.index == grown.index.collection
    query = grown.encode("a person in a red coat")
    assert grown.index.search(query, 10)[1].tolist() == build_index(grown.feats, "flat").search(
        query, 10)[1].tolist()  # fmt: skip
    gone = images[9].name
    erase_images(best, folder, names=[gone], cache_dir=cache, index_kind="milvus")
    cut = open_gallery(best, folder, index_kind="milvus", cache_dir=cache, device="cpu")
    assert isinstance(cut.index, MilvusIndex) and len(cut.feats) == 9
    assert cut.index.client.list_collections() == [cut.index.collection]  # the others dropped
    found = cut.index.search(cut.encode("a person in a red coat"), 9)[1][0].tolist()
    assert sorted(found) == list(range(9)) and gone not in cut.gallery.names


def test_erase_reaches_milvus_lite_whatever_index_it_is_given(trained: dict[str, Path],
                                                               tmp_path: Path) -> None:  # fmt: skip
    """An erasure with the default --index still drops the Milvus Lite collections of the cache
    (they hold the erased image); while another process holds that Milvus Lite, the erasure
    stops in one line before anything changed (the gallery's erasure list included)."""
    folder, cache, best = tmp_path / "gallery", tmp_path / "cache", trained["best"]
    folder.mkdir()
    for path in sorted(trained["gallery"].glob("*.png"))[:6]:
        shutil.copy(path, folder / path.name)
    victim = sorted(p.name for p in folder.iterdir())[0]
    # the collection made in a process of its own: Milvus Lite is held until its process ends
    build = ("import sys; from uit.retrieval.gallery import open_gallery; "
             "open_gallery(sys.argv[1], sys.argv[2], index_kind='milvus', cache_dir=sys.argv[3], "
             "device='cpu')")  # fmt: skip
    subprocess.run([sys.executable, "-c", build, str(best), str(folder), str(cache)],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    hold = ("import sys, time; from pymilvus import MilvusClient; MilvusClient(sys.argv[1]); "
            "print('held', flush=True); time.sleep(120)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(cache / "milvus.db")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(folder)
        fails("gallery", "erase", best, "--gallery", folder, "--image", victim,
              "--cache-dir", cache, says=("open in another process", "stop it first"))  # fmt: skip
        assert snapshot(folder) == before and not (folder / ERASED_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
    erase_images(best, folder, names=[victim], cache_dir=cache)  # --index auto: flat here
    client, _ = milvus_module.connect("milvus", cache)
    assert client.list_collections() == []


def test_an_unreachable_milvus_server_is_one_clear_line(trained: dict[str, Path],
                                                        tmp_path: Path) -> None:  # fmt: skip
    unreachable = ("--index milvus://127.0.0.1:1", "no Milvus server answers", "--index milvus")
    fails("serve", trained["best"], "--gallery", trained["prepared"], "--port", "0",
          "--cache-dir", tmp_path, "--device", "cpu", "--index", "milvus://127.0.0.1:1",
          says=unreachable)  # fmt: skip
    for wrong in ("milvus:/x", "milvus://127.0.0.1:99999", "milvus://127.0.0.1:0"):
        fails("serve", trained["best"], "--gallery", trained["prepared"], "--index", wrong,
              says=("--index", "milvus://HOST:PORT"), code=2)  # fmt: skip


def test_a_server_on_milvus_lite_answers_as_the_flat_one(trained: dict[str, Path],
                                                          tmp_path: Path) -> None:  # fmt: skip
    answers = []
    for kind in ("flat", "milvus"):
        log = tmp_path / f"{kind}.log"
        command = [sys.executable, "-c", "from uit.app import main; main()", "serve",
                   str(trained["best"]), "--gallery", str(trained["prepared"]), "--port", "0",
                   "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                   "--index", kind]  # fmt: skip
        environ = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("w") as out:
            process = subprocess.Popen(command, env=environ, stdout=out,
                                       stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        try:
            client = Client(wait_until_serving(process, log))
            health = client.call("GET", "/healthz")[1]
            assert health["index"] == kind, health
            answers.append(client.search("a man in a black jacket", 10, offset=3)["hits"])
        finally:
            stop(process)
    assert answers[0] == answers[1] and len(answers[0]) == 10
    assert "milvus index, collection uit_" in (tmp_path / "milvus.log").read_text()
