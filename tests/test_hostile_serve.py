"""`uit serve` and galleries against a hostile user (issue 23): real `uit` processes, real files
(FIFOs, symbolic links, names that are not UTF-8 or hold a newline) and real servers on
127.0.0.1. Every refusal is one line naming the file or parameter, exit code 1 (130 for Ctrl-C)
or a 4xx with a one-line ``detail``; nothing hangs, and nothing outside the gallery is served.

The module's server (``served``) serves a folder gallery with all of the odd names at once and
starts from an embedding cache poisoned with NaN vectors; ``prepared_served`` serves a prepared
benchmark. Both take ``--timeout 1.5`` so the slow-client tests finish in seconds.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import request, terminate, wait_until_serving
from uit.app.cli import app
from uit.retrieval.index import build_index
from uit.retrieval.search import EmbeddingCache, checkpoint_digest, file_digest, list_gallery

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1.5  # --timeout of the servers here: seconds for a request's headers, and its body
NOT_UTF8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, as an old camera or Windows share left
NOT_UTF8_DIR = os.fsdecode(b"gal\xffery")
VICTIMS = ("victim-link.png", "victim-gone.png", "victim-folder.png", "victim-fifo.png")
SECRET = b"root:x:0:0:the secret outside the gallery\n"


# --- helpers: real processes and raw HTTP ---------------------------------------------------


def uit_command(*args: object) -> list[str]:
    """The `uit` console script as a shell runs it (its Ctrl-C handler included)."""
    return [sys.executable, "-c", "from uit.app import main; main()", *map(str, args)]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}


def run_all(*commands: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
    """Run ``commands`` side by side; each must end within ``timeout`` s (else it is killed and
    the test fails: a hang is the bug these tests look for)."""
    processes = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for c in commands]  # fmt: skip
    deadline, done = time.monotonic() + timeout, []
    try:
        for process in processes:
            try:
                out, err = process.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{process.args[3:]} still ran after {timeout:g} s (a hang)")
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return done


def cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    return result.exit_code, result.output


def one_line_error(code: int, output: str, *says: str) -> None:
    """Exit code 1, no traceback, one message holding each of ``says``."""
    assert code == 1, output
    assert "Traceback" not in output, output
    message = " ".join(output.split())  # rich wraps long lines
    for part in says:
        assert part in message, (part, output)


class Server:
    """`uit serve` in a real process on the port it chooses (--port 0), its output in a file (so
    no pipe fills up)."""

    def __init__(self, checkpoint: Path, gallery: Path, cache: Path, log: Path) -> None:
        self.log = log
        command = uit_command("serve", checkpoint, "--gallery", gallery, "--port", 0,
                              "--cache-dir", cache, "--device", "cpu",
                              "--timeout", TIMEOUT)  # fmt: skip
        with log.open("w") as out:
            self.process = subprocess.Popen(command, env=ENV, stdout=out, stderr=out)
        try:
            self.port = wait_until_serving(self.process, log)
        except BaseException:
            self.stop()  # a server that never answered is not left running
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process)

    def search(self, text: str, k: int = 100) -> dict[str, Any]:
        answer = request(self.port, "POST", "/search", {"text": text, "k": k})
        assert answer.status == 200, answer.body
        return answer.json()


def read_answer(client: socket.socket) -> bytes:
    """What the server sends until it closes the connection (the socket's timeout bounds it)."""
    parts = []
    while part := client.recv(65536):
        parts.append(part)
    return b"".join(parts)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# --- the galleries and their servers --------------------------------------------------------


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder beside the galleries: what a link out of one would expose."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "passwd").write_bytes(SECRET)
    Image.new("RGB", (16, 32), "green").save(folder / "secret.png")
    return folder


def odd_gallery(images: Path, folder: Path) -> Path:
    """A folder gallery as users leave them: its own name and a file's not UTF-8, a newline in
    a name, a file and a folder linked from inside it, and files that the tests of the server
    delete or replace (``VICTIMS``)."""
    shutil.copytree(images, folder)
    images = sorted(folder.glob("*.png"))
    shutil.copy(images[0], folder / "new\nline.png")
    shutil.copy(images[1], folder / NOT_UTF8)
    (folder / "inner").mkdir()
    shutil.copy(images[2], folder / "inner" / "deep.png")
    (folder / "alias.png").symlink_to(Path("inner") / "deep.png")  # stays inside: listed
    (folder / "linked").symlink_to("inner", target_is_directory=True)  # its images: once
    for victim, image in zip(VICTIMS, images[3:], strict=False):
        shutil.copy(image, folder / victim)
    return folder


@pytest.fixture(scope="module")
def folder(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gallery ``served`` serves (its tests change it)."""
    return odd_gallery(trained["gallery"], tmp_path_factory.mktemp("served") / NOT_UTF8_DIR)


@pytest.fixture(scope="module")
def pristine(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same gallery, left as it is: for `uit search`."""
    return odd_gallery(trained["gallery"], tmp_path_factory.mktemp("pristine") / NOT_UTF8_DIR)


def poison_cache(checkpoint: Path, gallery: Path, cache: Path) -> None:
    """An embedding cache entry for every image of ``gallery``, with a valid checksum but NaN
    vectors (what a bad disk or a hostile user leaves)."""
    from uit.model.build import load_encoder

    width = load_encoder(checkpoint)[0].embed_dim
    cache.mkdir(parents=True, exist_ok=True)
    entry = EmbeddingCache(cache, checkpoint_digest(checkpoint))
    entry.rows = {file_digest(p): torch.full((width,), float("nan")).half()
                  for p in list_gallery(gallery)}  # fmt: skip
    entry.save()


@pytest.fixture(scope="module")
def served(trained: dict[str, Path], folder: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # fmt: skip
    base = tmp_path_factory.mktemp("served-cache")
    poison_cache(trained["best"], folder, base / "cache")
    server = Server(trained["best"], folder, base / "cache", base / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prepared_served(
    tiny_synth: tuple[Path, Any], trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    """A prepared benchmark over its own copy of the raw images (the tests replace some)."""
    from uit.raw.prepare import prepare_benchmark

    root, _ = tiny_synth
    base = tmp_path_factory.mktemp("prepared-served")
    shutil.copytree(root / "CUHK-PEDES", base / "raw" / "CUHK-PEDES")
    prepare_benchmark("cuhk-pedes", base / "raw", base / "cuhk-pedes")
    server = Server(trained["best"], base / "cuhk-pedes", base / "cache", base / "serve.log")
    yield server, base / "raw" / "CUHK-PEDES" / "imgs"
    server.stop()


def hit_named(server: Server, name: str) -> dict[str, Any]:
    [hit] = [h for h in server.search("a person in a red coat")["hits"] if h["name"] == name]
    return hit


# --- 1. nothing outside the gallery is served or listed -------------------------------------


def test_a_link_planted_after_start_is_not_served(served: Server, folder: Path,
                                                  outside: Path) -> None:  # fmt: skip
    url = hit_named(served, "victim-link.png")["url"]
    (folder / "victim-link.png").unlink()
    (folder / "victim-link.png").symlink_to(outside / "passwd")
    for method in ("GET", "HEAD"):
        answer = request(served.port, method, url)
        assert answer.status == 404 and SECRET not in answer.body, (method, answer)
    detail = request(served.port, "GET", url).json()["detail"]
    assert "victim-link.png" in detail and "\n" not in detail and str(outside) not in detail


@pytest.mark.parametrize("target", ["secret", "dev-zero"])
def test_a_prepared_benchmark_serves_no_link_planted_after_start(
    prepared_served: tuple[Server, Path], outside: Path, target: str
) -> None:
    server, imgs = prepared_served
    hit = server.search("a man with a black backpack", k=2)["hits"][0 if target == "secret" else 1]
    victim = imgs / hit["name"]
    victim.unlink()
    victim.symlink_to(outside / "passwd" if target == "secret" else Path("/dev/zero"))
    answer = request(server.port, "GET", hit["url"], timeout=20)
    assert answer.status == 404 and SECRET not in answer.body, answer
    assert hit["name"] in answer.json()["detail"]


def test_links_inside_a_folder_gallery_are_listed_once(served: Server) -> None:
    names = [h["name"] for h in served.search("a woman in blue jeans")["hits"]]
    assert "alias.png" in names and "inner/deep.png" in names  # a link inside is fine
    assert not [n for n in names if n.startswith("linked/")]  # its folder is listed as itself
    assert len(names) == len(set(names)) == served.search("x", k=1)["gallery_size"] == 20


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_link_out_of_a_folder_gallery_is_refused(trained: dict[str, Path], outside: Path,
                                                   tmp_path: Path, kind: str) -> None:  # fmt: skip
    gallery = tmp_path / "gallery"
    shutil.copytree(trained["gallery"], gallery)
    if kind == "file":
        (gallery / "leak.png").symlink_to(outside / "secret.png")
    else:
        (gallery / "away").symlink_to(outside, target_is_directory=True)
    code, output = cli("search", trained["best"], "a man", "--gallery", gallery, "--cache-dir",
                       tmp_path / "cache", "--device", "cpu")  # fmt: skip
    one_line_error(code, output, "symbolic link", "leak.png" if kind == "file" else "away",
                   str(outside), "Replace the links with the image files")  # fmt: skip


# --- 2. and 3. the Host header, limits, timeouts, headers, no server paths ------------------


REMOTE = ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example",
          "[::2]:80", "10.0.0.1", ""]  # fmt: skip


@pytest.mark.parametrize("host", REMOTE)
def test_only_loopback_host_names_are_answered(served: Server, host: str) -> None:
    for method, path in (("GET", "/healthz"), ("GET", "/images/alias.png"), ("POST", "/search")):
        answer = request(served.port, method, path, {"text": "a man"}, headers={"Host": host})
        assert answer.status == 400, (host, path, answer)
        assert "loopback" in answer.json()["detail"] and "--expose" in answer.json()["detail"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "127.1.2.3",
                                  "[::1]:{port}", "[::1]"])  # fmt: skip
def test_loopback_host_names_are_answered(served: Server, host: str) -> None:
    answer = request(
        served.port, "GET", "/healthz", headers={"Host": host.format(port=served.port)}
    )
    assert answer.status == 200, answer


def test_a_big_body_is_refused_before_it_is_read(served: Server) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as client:
        client.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b"application/json\r\nContent-Length: 50000000\r\n\r\n{}")  # fmt: skip
        answer = read_answer(client)
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer, answer
    chunk = b"x" * 16384
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as client:
        client.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        for _ in range(16):  # up to 256 KiB, no length declared, a piece at a time
            client.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if select.select([client], [], [], 0.3)[0]:
                break  # answered: sending more would only be reset unread
        answer = read_answer(client)
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer, answer[:300]


def test_slow_headers_and_bodies_are_cut_off(served: Server) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
        assert client.recv(1024) == b""  # closed by the server, not by our timeout
    assert time.monotonic() - started < TIMEOUT + 4
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as client:
        client.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b'application/json\r\nContent-Length: 100\r\n\r\n{"text": ')  # fmt: skip
        answer = read_answer(client)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within" in answer, answer
    assert time.monotonic() - started < 2 * TIMEOUT + 6


def test_answers_carry_safety_headers_and_no_server_paths(
    served: Server, folder: Path, trained: dict[str, Path]
) -> None:
    url = hit_named(served, "alias.png")["url"]
    answers = {path: request(served.port, method, path, body)
               for method, path, body in (("GET", "/", None), ("GET", "/healthz", None),
                                          ("GET", "/openapi.json", None), ("GET", url, None),
                                          ("POST", "/search", {"text": "a man"}))}  # fmt: skip
    for path, answer in answers.items():
        assert answer.status == 200, (path, answer)
        assert answer.headers.get("x-content-type-options") == "nosniff", path
        assert answer.headers.get("cache-control") == "no-store", path
    for path in ("/", "/healthz", "/openapi.json"):
        text = answers[path].body.decode()
        for private in (str(folder.parent), str(trained["best"].parent), "/tmp", "pytest-of"):
            assert private not in text, (path, private)
    health = answers["/healthz"].json()
    assert health["gallery"] == "gal\\xffery" and health["model"].startswith("best (")


# --- 4. FIFOs, devices and huge files are never read ----------------------------------------


def finishes(call: Any, *args: Any, within: float = 10) -> BaseException | None:
    """Run ``call(*args)`` in a thread; it must end within ``within`` s (a thread stuck in
    open() cannot be stopped, but it is a daemon: the test fails instead of hanging)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call(*args)
            outcome.append(None)
        except BaseException as error:  # the outcome is what the test looks at
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert outcome, f"{call.__name__} still ran after {within:g} s (a hang)"
    return outcome[0]


def test_a_fifo_is_refused_by_every_reader_at_once(tmp_path: Path) -> None:
    from uit.data.images import ImageError, load_rgb

    stuck = fifo(tmp_path / "stuck.png")  # nobody ever writes to it
    for reader in (load_rgb, file_digest):
        error = finishes(reader, stuck)
        assert isinstance(error, ImageError) and "is a FIFO" in str(error), (reader, error)
        assert str(stuck) in str(error)


def test_a_fifo_or_a_link_to_dev_zero_fails_search_and_serve_in_one_line(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    galleries = {}
    for kind in ("fifo", "zero"):
        galleries[kind] = tmp_path / kind
        galleries[kind].mkdir()
        for image in sorted(trained["gallery"].glob("*.png"))[:2]:
            shutil.copy(image, galleries[kind] / image.name)
    fifo(galleries["fifo"] / "stuck.png")  # nobody ever writes to it
    (galleries["zero"] / "zero.png").symlink_to("/dev/zero")  # never ends
    fifo_search, fifo_serve, zero_search = run_all(
        uit_command("search", trained["best"], "a man", "--gallery", galleries["fifo"],
                    "--device", "cpu", "--cache-dir", tmp_path / "a"),
        uit_command("serve", trained["best"], "--gallery", galleries["fifo"], "--device", "cpu",
                    "--port", 0, "--cache-dir", tmp_path / "b"),
        uit_command("search", trained["best"], "a man", "--gallery", galleries["zero"],
                    "--device", "cpu", "--no-cache"),
    )  # fmt: skip
    for result in (fifo_search, fifo_serve):
        one_line_error(result.returncode, result.stderr, "stuck.png", "is a FIFO",
                       "remove this one or replace it")  # fmt: skip
    one_line_error(zero_search.returncode, zero_search.stderr, "zero.png -> /dev/zero",
                   "symbolic link")  # fmt: skip


def test_a_huge_file_is_refused_unread(trained: dict[str, Path], tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    shutil.copytree(trained["gallery"], gallery)
    with (gallery / "huge.png").open("wb") as handle:
        handle.truncate(1 << 40)  # a sparse terabyte
    for cache in (("--cache-dir", tmp_path / "cache"), ("--no-cache",)):
        code, output = cli("search", trained["best"], "a man", "--gallery", gallery, *cache)
        one_line_error(code, output, "huge.png", "over the limit", "remove this one")


def test_images_deleted_or_replaced_after_start_are_not_found(served: Server,
                                                              folder: Path) -> None:  # fmt: skip
    urls = {name: hit_named(served, name)["url"] for name in VICTIMS[1:]}
    (folder / "victim-gone.png").unlink()
    (folder / "victim-folder.png").unlink()
    (folder / "victim-folder.png").mkdir()
    (folder / "victim-fifo.png").unlink()
    fifo(folder / "victim-fifo.png")
    for name, url in urls.items():
        for method in ("GET", "HEAD"):
            answer = request(served.port, method, url, timeout=15)
            assert answer.status == 404, (name, method, answer)
        detail = request(served.port, "GET", url, timeout=15).json()["detail"]
        assert name in detail and "since uit serve started" in detail and "\n" not in detail
    assert request(served.port, "GET", "/healthz").status == 200  # and the server goes on
    assert "Traceback" not in served.output()


# --- 5. a cached FAISS index that is not the index of these embeddings ----------------------


def clustered(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    middle = torch.randn(20, dim, generator=generator)
    which = torch.randint(0, 20, (n,), generator=generator)
    points = middle[which] + 0.8 * torch.randn(n, dim, generator=generator)
    return torch.nn.functional.normalize(points, dim=-1).half()


def tamper_ids(path: Path, index: Any, change: str) -> None:
    """Rewrite the cached file at ``path`` (whatever precedes FAISS's bytes kept) with one id of
    its first list duplicated or out of range: the same size, only the ids differ."""
    import faiss

    data = path.read_bytes()
    start = data.index(faiss.serialize_index(index).tobytes()[:4])  # FAISS's four-letter code
    copy = faiss.deserialize_index(np.frombuffer(data[start:], dtype=np.uint8))
    lists = faiss.extract_index_ivf(copy).invlists
    first = next(i for i in range(lists.nlist) if lists.list_size(i) > 1)
    ids = faiss.rev_swig_ptr(lists.get_ids(first), lists.list_size(first))  # a writable view
    ids[0] = ids[1] if change == "duplicate" else copy.ntotal + 7
    tampered = faiss.serialize_index(copy).tobytes()
    assert len(tampered) == len(data) - start
    path.write_bytes(data[:start] + tampered)


@pytest.mark.parametrize("change", ["duplicate", "out-of-range"])
def test_a_cached_index_with_wrong_ids_is_rebuilt(tmp_path: Path, change: str, caplog) -> None:
    feats, queries = clustered(2000, 16), clustered(30, 16, seed=1).float()
    built = build_index(feats, "ann", tmp_path)
    expected = built.search(queries, 10)
    [path] = tmp_path.glob("index-*.faiss")
    tamper_ids(path, built.index, change)
    again = build_index(feats, "ann", tmp_path)
    assert "rebuilding it" in caplog.text
    scores, found = again.search(queries, 10)
    assert torch.equal(found, expected[1]) and torch.equal(scores, expected[0])


def test_a_cached_index_of_other_embeddings_is_rebuilt(tmp_path: Path, caplog) -> None:
    feats, other = clustered(2000, 16), clustered(2000, 16, seed=5)
    queries = clustered(30, 16, seed=1).float()
    expected = build_index(feats, "ann", tmp_path / "a").search(queries, 10)
    build_index(other, "ann", tmp_path / "b")
    [mine], [theirs] = (tmp_path / "a").glob("*.faiss"), (tmp_path / "b").glob("*.faiss")
    shutil.copy(theirs, mine)  # the same count and width, another gallery's index
    again = build_index(feats, "ann", tmp_path / "a")
    assert "indexes other embeddings" in caplog.text
    assert torch.equal(again.search(queries, 10)[1], expected[1])


# --- 6. non-UTF-8 names, poisoned caches: no 500, no traceback ------------------------------


def test_names_that_are_not_utf8_are_served(served: Server, folder: Path) -> None:
    for path in ("/", "/healthz", "/openapi.json"):  # the gallery folder's name is not UTF-8
        assert request(served.port, "GET", path).status == 200, path
    hit = hit_named(served, "caf\\xe9.png")  # shown with the byte escaped
    answer = request(served.port, "GET", hit["url"])
    assert answer.status == 200 and answer.body == (folder / NOT_UTF8).read_bytes()


def test_search_prints_names_that_are_not_utf8(trained: dict[str, Path], pristine: Path,
                                               tmp_path: Path) -> None:  # fmt: skip
    args = ("search", trained["best"], "a man", "--gallery", pristine, "--top-k", "20",
            "--cache-dir", tmp_path / "cache", "--device", "cpu")  # fmt: skip
    code, output = cli(*args)
    assert code == 0 and "caf\\xe9.png" in output, output
    code, output = cli(*args, "--json")
    assert code == 0, output
    paths = {r["path"] for r in json.loads(output[output.index("{") :])["results"]}
    assert str(pristine / NOT_UTF8) in paths  # the exact name back, as os.fsdecode reads it


def test_a_nan_cache_is_rebuilt_and_the_server_ranks_as_search(
    served: Server, trained: dict[str, Path], pristine: Path
) -> None:
    """``served`` started from a cache of NaN vectors with valid checksums."""
    answer = served.search("a person in a red coat", k=20)
    assert all(np.isfinite(h["score"]) for h in answer["hits"])
    assert "ignoring the damaged embedding cache" in served.output()
    code, output = cli("search", trained["best"], "a person in a red coat", "--gallery", pristine,
                       "--top-k", "20", "--json", "--no-cache", "--device", "cpu")  # fmt: skip
    assert code == 0, output
    expected = json.loads(output[output.index("{") :])["results"]
    assert [h["score"] for h in answer["hits"]] == pytest.approx([r["score"] for r in expected],
                                                                 abs=2e-3)  # fmt: skip


@pytest.mark.parametrize("poison", ["nan", "wide"])
def test_a_poisoned_search_cache_is_rebuilt(trained: dict[str, Path], tmp_path: Path,
                                            poison: str) -> None:  # fmt: skip
    cache = tmp_path / "cache"
    args = ("search", trained["best"], "a woman in a red coat", "--gallery", trained["gallery"],
            "--json", "--top-k", "12", "--cache-dir", cache, "--device", "cpu")  # fmt: skip
    code, output = cli(*args)
    assert code == 0, output
    first = json.loads(output[output.index("{") :])["results"]
    entry = EmbeddingCache(cache, checkpoint_digest(trained["best"]))
    width = next(iter(entry.rows.values())).shape[0]
    fill = float("nan") if poison == "nan" else 0.1
    entry.rows = {d: torch.full((width + (poison == "wide"),), fill).half() for d in entry.rows}
    entry.save()  # a valid checksum over the bad vectors
    code, output = cli(*args)
    assert code == 0, output
    assert json.loads(output[output.index("{") :])["results"] == first
    rows = EmbeddingCache(cache, checkpoint_digest(trained["best"])).rows.values()
    assert all(row.shape == (width,) and torch.isfinite(row).all() for row in rows)


# --- 7. --device ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
@pytest.mark.parametrize("command", ["search", "evaluate", "serve"])
def test_a_device_this_machine_lacks_is_one_line(trained: dict[str, Path], tmp_path: Path,
                                                 command: str, device: str) -> None:  # fmt: skip
    if device == "cuda:99" and torch.cuda.device_count() >= 100:
        pytest.skip("this machine has a cuda:99")
    args = {"search": ("search", trained["best"], "a man", "--gallery", trained["gallery"],
                       "--cache-dir", tmp_path / "c"),
            "evaluate": ("evaluate", trained["best"], trained["prepared"], "--out", tmp_path / "e"),
            "serve": ("serve", trained["best"], "--gallery", trained["gallery"], "--port",
                      0, "--cache-dir", tmp_path / "c")}[command]  # fmt: skip
    code, output = cli(*args, "--device", device)
    one_line_error(code, output, "--device", device)
    assert "auto, cpu, cuda" in output or "no CUDA device" in output or "cuda:0 to" in output
    assert not (tmp_path / "e").exists()


# --- 8. a newline in a name -----------------------------------------------------------------


def test_a_name_with_a_newline_round_trips(served: Server, folder: Path) -> None:
    hit = hit_named(served, "new\nline.png")
    answer = request(served.port, "GET", hit["url"])
    assert answer.status == 200 and answer.body == (folder / "new\nline.png").read_bytes()
    assert answer.headers["content-type"] == "image/png"


# --- 9. a folder gallery's unreadable image asks to remove or replace it --------------------


def test_a_broken_image_in_a_folder_gallery_says_remove_or_replace(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    gallery = tmp_path / "gallery"
    shutil.copytree(trained["gallery"], gallery)
    (gallery / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for cache in (("--cache-dir", tmp_path / "cache"), ("--no-cache",)):
        code, output = cli("search", trained["best"], "a man", "--gallery", gallery, *cache)
        one_line_error(code, output, "broken.png", "not a readable image",
                       "remove this one or replace it with a readable image")  # fmt: skip
        assert "--drop-missing" not in output and "uit data prepare" not in output


# --- 10. port in use, HEAD, bad JSON, invisible queries, strict integers --------------------


def test_a_port_in_use_fails_at_once(trained: dict[str, Path], tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = cli("serve", trained["best"], "--gallery", trained["gallery"], "--port",
                           port, "--cache-dir", tmp_path / "cache", "--device", "cpu")  # fmt: skip
    one_line_error(code, output, f"--port {port}", "already in use")
    assert not (tmp_path / "cache").exists()  # nothing was encoded before it found out


def test_head_is_answered_without_a_body(served: Server, folder: Path) -> None:
    url = hit_named(served, "alias.png")["url"]
    for path, size in (("/", None), (url, (folder / "inner" / "deep.png").stat().st_size)):
        answer = request(served.port, "HEAD", path)
        assert answer.status == 200 and answer.body == b"", (path, answer)
        if size is not None:
            assert answer.headers["content-length"] == str(size)


@pytest.mark.parametrize(("raw", "says"), [
    (b'{"text": "a man", "k": 5', "body: not valid JSON"),
    (b'["a man"]', "body: expected a JSON object"),
    (b'{"text": "\\u200b\\u200d\\ufeff"}', "text: the text is empty"),
    (b'{"text": "\\u0000\\u0000"}', "text: the text is empty"),
    (b'{"text": "a man", "k": true}', "k: Input should be a valid integer"),
    (b'{"text": "a man", "k": "5"}', "k: Input should be a valid integer"),
    (b'{"text": "a man", "offset": 1.0}', "offset: Input should be a valid integer"),
])  # fmt: skip
def test_bad_bodies_get_one_line_that_says_what_is_expected(served: Server, raw: bytes,
                                                            says: str) -> None:  # fmt: skip
    answer = request(served.port, "POST", "/search", raw=raw)
    assert answer.status == 422 and says in answer.json()["detail"], answer
    assert "\n" not in answer.json()["detail"]
    if "JSON" in says:
        assert '{"text": "a woman in a red coat"' in answer.json()["detail"]


def test_search_refuses_an_invisible_query(trained: dict[str, Path], tmp_path: Path) -> None:
    for query in ("\u200b\u200d\ufeff", "\x00\x00", "\u2060 \u00ad"):
        code, output = cli("search", trained["best"], query, "--gallery", trained["gallery"],
                           "--cache-dir", tmp_path / "cache")  # fmt: skip
        one_line_error(code, output, "the query is empty")
    assert not (tmp_path / "cache").exists()


# --- 11. Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_stops_serve_with_exit_130_and_one_line(trained: dict[str, Path],
                                                       tmp_path: Path) -> None:  # fmt: skip
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for image in sorted(trained["gallery"].glob("*.png"))[:3]:
        shutil.copy(image, gallery / image.name)
    server = Server(trained["best"], gallery, tmp_path / "cache", tmp_path / "serve.log")
    try:
        server.process.send_signal(signal.SIGINT)
        code = server.process.wait(timeout=30)
    finally:
        server.stop()
    output = server.output()
    assert code == 130, output
    assert "Traceback" not in output and "interrupted (Ctrl-C)" in output
