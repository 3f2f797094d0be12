"""A gallery's index in Milvus: ``--index milvus`` keeps it in Milvus Lite (a file in the cache
folder), ``--index milvus://HOST:PORT`` in a Milvus server or cluster.

The collection is named by the digest of the embeddings (as the cached FAISS index file is), so
a changed gallery gets a fresh collection and an unchanged one is reused as it stands. Milvus
(IVF of 8-bit vectors) only proposes a shortlist; it is scored again exactly from the float16
embeddings this process holds, so scores and tie order are ``uit search``'s.

Each row's Milvus id is a hash of its embedding (and of how many identical rows come before
it), not its gallery position: adding an image to a folder gallery shifts the positions of the
images after it, but not their ids, so a live gallery's change is the difference of two id sets
(delete the ids that went, insert the rows that came) and the positions come back through a
sorted id table. pymilvus is imported inside functions (the ``serve`` extra).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uit.core.config import MILVUS_URI, IndexChoice
from uit.core.errors import UitError
from uit.retrieval.search import embedding_digest, rescore

if TYPE_CHECKING:
    from uit.core.console import NewBar

log = logging.getLogger(__name__)

LITE_FILE = "milvus.db"  # Milvus Lite's folder inside the cache folder
COLLECTION_PREFIX = "uit_"
MAX_SHORTLIST = 16_384  # the most hits Milvus returns for one query
INSERT_CHUNK = 8_192  # rows per insert call (and per step of the progress bar)
CONNECT_TIMEOUT = 5.0  # seconds
NPROBE = 32  # cells visited per query in each segment, as the FAISS index visits
LITE_SEGMENT_BYTES = 128 * 2**20  # Milvus Lite seals a segment when its memtable holds this
# The smallest segment a Milvus server seals by default: dataCoord.segment.maxSize (1 GiB) times
# dataCoord.segment.sealProportion (0.12). Its segments lie between this and 1 GiB (compaction
# merges them), and cells sized to the smallest keep enough rows in each; not yet measured on
# a server.
SERVER_SEGMENT_BYTES = int(1024 * 2**20 * 0.12)


class MilvusIndex:
    """A Milvus collection proposes ``max(k, 64) * 4`` candidates; they are scored exactly."""

    kind = "milvus"

    def __init__(self, feats: torch.Tensor, client: Any, collection: str, where: str) -> None:
        self.feats, self.client, self.collection, self.where = feats, client, collection, where
        ids = row_ids(feats)
        self.order = np.argsort(ids)  # positions by id
        self.sorted_ids = ids[self.order]

    def describe(self) -> str:
        return f"milvus index, collection {self.collection} in {self.where}"

    def search(self, query_feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) -> float32 scores and indices (Q, k), best first, ties to the lower index."""
        k = min(k, self.feats.shape[0])
        short = min(max(k, 64) * 4, self.feats.shape[0], MAX_SHORTLIST)
        found = self.client.search(self.collection, data=query_feats.float().tolist(),
                                   limit=short, output_fields=["id"],
                                   search_params={"metric_type": "IP",
                                                  "params": {"nprobe": NPROBE}})  # fmt: skip
        rows = [self.positions([hit["id"] for hit in hits]) for hits in found]
        best = [rescore(q, self.feats, c, k) for q, c in zip(query_feats, rows, strict=True)]
        return torch.stack([s for s, _ in best]), torch.stack([i for _, i in best])

    def positions(self, ids: list[int]) -> torch.Tensor:
        """Gallery positions (ascending) of Milvus ``ids``; an id not in the gallery is dropped."""
        wanted = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted_ids, wanted), len(self.sorted_ids) - 1)
        known = self.sorted_ids[at] == wanted
        return torch.from_numpy(np.sort(self.order[at[known]]))


def row_ids(feats: torch.Tensor) -> np.ndarray:
    """A stable 63-bit id for each row of (N, D) ``feats``: a hash of its bytes, plus how many
    equal rows come before it (two copies of one image are two rows)."""
    data = feats.contiguous().view(torch.uint8).numpy()  # (N, 2D) for float16
    ids = np.empty(len(data), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, row in enumerate(data):
        base = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
        copies = seen.get(base, 0)
        seen[base] = copies + 1
        ids[i] = (base + copies) & (2**63 - 1)
    if len(np.unique(ids)) != len(ids):  # 1 in 10^7 at a billion rows; say so rather than guess
        raise UitError("two gallery embeddings hash to one Milvus id: use --index ann or flat")
    return ids


def segment_rows(choice: IndexChoice, n: int, dim: int) -> int:
    """About how many of ``n`` ``dim``-wide rows one segment of the Milvus ``choice`` names
    holds. Milvus trains an IVF in each segment on that segment's rows alone, so the cells are
    sized to a segment: cells for the whole gallery (4,000 at 1M) over Milvus Lite's 65,536-row
    segments hold 16 rows each, and 32 of them are too few to find the nearest."""
    budget = SERVER_SEGMENT_BYTES if MILVUS_URI.fullmatch(choice) else _lite_segment_bytes()
    return max(1, min(n, budget // (4 * dim)))  # float32 rows


def _lite_segment_bytes() -> int:
    """Milvus Lite's own figure (an environment variable may change it), else its default."""
    try:
        from milvus_lite.constants import MEMTABLE_MEMORY_LIMIT
    except ImportError:
        return LITE_SEGMENT_BYTES
    return int(MEMTABLE_MEMORY_LIMIT)


def collection_name(feats: torch.Tensor) -> str:
    return COLLECTION_PREFIX + embedding_digest(feats)


def build_milvus_index(
    feats: torch.Tensor,
    choice: IndexChoice,
    cache_dir: str | Path | None,
    progress: NewBar | None = None,
    lists: int = 1,
) -> MilvusIndex:
    """The Milvus index of (N, D) normalised ``feats`` in the Milvus ``choice`` names: its
    collection is reused when it holds these embeddings, else created (IVF of ``lists``
    cells) and filled."""
    client, where = connect(choice, cache_dir)
    name = collection_name(feats)
    if not _holds(client, name, len(feats)):
        _create(client, name, feats, lists, progress)
    client.load_collection(name)  # every segment's IVF built (or read back from its file)
    return MilvusIndex(feats, client, name, where)


def carry_milvus(
    choice: IndexChoice, cache_dir: str | Path, old: torch.Tensor, new: torch.Tensor
) -> str | None:
    """Carry the collection of ``old`` over to ``new`` (a live gallery's change): rows whose
    id went are deleted, new ones inserted (into the trained cells), and the collection
    renamed after ``new``. Returns the collection's name, or None when no collection of
    ``old`` exists (then it is built when the gallery is next opened)."""
    client, _ = connect(choice, cache_dir)
    before, after = collection_name(old), collection_name(new)
    if not client.has_collection(before):
        return None
    old_ids, new_ids = row_ids(old), row_ids(new)
    gone = np.setdiff1d(old_ids, new_ids)
    if gone.size:
        client.delete(before, ids=gone.tolist())
    came = np.flatnonzero(~np.isin(new_ids, old_ids))
    _insert(client, before, new[torch.from_numpy(came)], new_ids[came], None)
    client.release_collection(before)  # the next load indexes the new rows' segment
    if after != before:
        if client.has_collection(after):
            client.drop_collection(after)
        client.rename_collection(before, after)
    return after


def drop_other_collections(
    choice: IndexChoice, cache_dir: str | Path, keep: str | Path | None
) -> list[str]:
    """Drop every uit collection but ``keep`` from Milvus Lite in ``cache_dir`` (an erasure:
    they may hold erased images; each is built again when its gallery is next opened). A
    Milvus server is shared: only the gallery's own collection is changed there."""
    if choice != "milvus" or not (Path(cache_dir) / LITE_FILE).exists():
        return []
    client, _ = connect(choice, cache_dir)
    names = [n for n in client.list_collections() if n.startswith(COLLECTION_PREFIX)]
    for name in names:
        if name != keep:
            client.drop_collection(name)
    return [n for n in names if n != keep]


def connect(choice: IndexChoice, cache_dir: str | Path | None) -> tuple[Any, str]:
    """A client of the Milvus ``choice`` names, and where it is (for messages)."""
    pymilvus = _pymilvus()
    address = MILVUS_URI.fullmatch(choice)
    if address is None:
        if cache_dir is None:
            raise UitError("--index milvus keeps Milvus Lite in the cache folder: give --cache-dir")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        where = str(Path(cache_dir) / LITE_FILE)
        try:
            return pymilvus.MilvusClient(where), where
        except pymilvus.MilvusException:  # the one reason on a folder it can write: the lock
            raise UitError(f"--index milvus: Milvus Lite in {where} is open in another "
                           "process (a running uit serve?): stop it first, or serve from a "
                           "Milvus server (--index milvus://HOST:PORT), which processes "
                           "share") from None  # fmt: skip
    host, port = address.groups()
    try:
        client = pymilvus.MilvusClient(uri=f"http://{host}:{port}", timeout=CONNECT_TIMEOUT)
    except pymilvus.MilvusException:
        raise UitError(f"--index {choice}: no Milvus server answers at {host}:{port}; start one "
                       "there, give its address, or use --index milvus (Milvus Lite in "
                       "--cache-dir)") from None  # fmt: skip
    return client, choice


def _holds(client: Any, name: str, count: int) -> bool:
    """Whether collection ``name`` exists and holds ``count`` rows (else it is built again)."""
    if not client.has_collection(name):
        return False
    rows = int(client.get_collection_stats(name)["row_count"])
    if rows == count:
        return True
    log.warning("the Milvus collection %s holds %d rows, not %d: building it again", name, rows,
                count)  # fmt: skip
    client.drop_collection(name)
    return False


def _create(
    client: Any, name: str, feats: torch.Tensor, lists: int, progress: NewBar | None
) -> None:
    """The collection filled first and indexed after: with the index declared up front, Milvus
    Lite trained each segment's IVF in the background while rows still came, and the load after
    them trained some again (21 trainings for 16 segments, once seen in Milvus Lite's log on a
    1M gallery; which order builds faster was not measured on the same code)."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=feats.shape[1])
    client.create_collection(name, schema=schema)
    advance = progress("adding the gallery to Milvus", len(feats)) if progress else None
    _insert(client, name, feats, row_ids(feats), advance)
    client.create_index(name, _index_params(client, lists))


def _index_params(client: Any, lists: int) -> Any:
    """An IVF of ``lists`` cells of 8-bit vectors, by inner product (FAISS's ``IVFn,SQ8``)."""
    params = client.prepare_index_params()
    # pymilvus 3 sends ``nlist`` as a key of its own, Milvus Lite 3.2 reads only a ``params``
    # key (else 128 cells): both are sent, as a Milvus server takes either
    cells = {"nlist": lists}
    params.add_index(field_name="vec", index_type="IVF_SQ8", metric_type="IP",
                     params={**cells, "params": cells})  # fmt: skip
    return params


def _insert(client: Any, name: str, feats: torch.Tensor, ids: np.ndarray, advance: Any) -> None:
    data = feats.float().numpy()  # (N, D) float32, as Milvus takes them
    for start in range(0, len(data), INSERT_CHUNK):
        rows = range(start, min(start + INSERT_CHUNK, len(data)))
        client.insert(name, [{"id": int(ids[i]), "vec": data[i]} for i in rows])
        if advance:
            advance(len(rows))
    client.flush(name)  # sealed: Milvus Lite scans unflushed rows one by one


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise UitError(
            "the Milvus index needs pymilvus and milvus-lite: pip install 'uit[serve]', or use "
            "--index ann or flat"
        ) from None
    return pymilvus
