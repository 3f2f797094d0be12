"""``uit serve``: a real server on 127.0.0.1 (the `uit` command in a subprocess) over the tiny
trained checkpoint and its prepared test split; the FAISS index against the exact scan; the page
in headless Chromium at laptop and phone width."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import (
    Client,
    clustered,
    need_browser,
    random_searcher,
    searched_page,
    terminate,
    wait_until_serving,
)
from uit.app.browser import chromium
from uit.app.cli import app
from uit.data.prepared import read_manifests
from uit.retrieval import index as index_module
from uit.retrieval.index import ANN_THRESHOLD, build_index, resolve_kind

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["a person in a red coat", "a man with a black backpack", "a woman in blue jeans",
             "someone wearing white shoes", "a girl with long hair and a green bag"]  # fmt: skip


def start_server(trained: dict[str, Path], cache: Path, log: Path) -> subprocess.Popen:
    """`uit serve` of the tiny checkpoint on the prepared test split, on a port it chooses
    (--port 0: no other process can take it between a choice and the bind)."""
    command = [sys.executable, "-c", "from uit.app import main; main()", "serve",
               str(trained["best"]), "--gallery", str(trained["prepared"]), "--port", "0",
               "--cache-dir", str(cache), "--device", "cpu"]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:  # a file, not a pipe that nobody drains
        return subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def served(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The server of ``start_server``, once for the module."""
    base = tmp_path_factory.mktemp("serve")
    cache, log = base / "cache", base / "serve.log"
    process = start_server(trained, cache, log)
    try:
        yield Client(wait_until_serving(process, log)), cache
    finally:
        terminate(process)


def test_health_says_which_model_and_gallery(served: Any, trained: dict[str, Path]) -> None:
    client, _ = served
    status, health, _ = client.call("GET", "/healthz")
    images = read_manifests(trained["prepared"]).split("test").images.height
    assert status == 200 and health["status"] == "ok" and health["images"] == images
    assert health["model"].startswith("best (training checkpoint, epoch")  # no server paths
    assert "cuhk-pedes test" in health["gallery"] and health["index"] == "flat"
    _, schema, _ = client.call("GET", "/openapi.json")
    assert {"/search", "/healthz", "/images/{name}"} <= set(schema["paths"])
    assert client.call("GET", "/docs")[0] == 404  # its page would load scripts from a CDN


def test_the_api_ranks_as_uit_search_does(served: Any, trained: dict[str, Path]) -> None:
    """The invariant: the server and `uit search` on the same checkpoint and gallery give the
    same images in the same order with the same scores, and pages join into the whole list."""
    client, cache = served
    manifests = read_manifests(trained["prepared"])
    n = manifests.split("test").images.height  # the whole gallery, ranked
    result = CliRunner().invoke(app, ["search", str(trained["best"]), SENTENCES[0], "--gallery",
                                      str(trained["prepared"]), "--top-k", str(n), "--json",
                                      "--cache-dir", str(cache), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)["results"]
    answer = client.search(SENTENCES[0], k=n)
    assert len(expected) == n > 8
    assert [
        (str(manifests.imgs_dir / h["name"]), h["score"], h["rank"]) for h in answer["hits"]
    ] == [(r["path"], r["score"], r["rank"]) for r in expected]
    pages = [client.search(SENTENCES[0], k=4, offset=o)["hits"] for o in range(0, n, 4)]
    assert [h["name"] for page in pages for h in page] == [h["name"] for h in answer["hits"]]


def test_bad_requests_get_a_4xx_with_a_message(served: Any, trained: dict[str, Path]) -> None:
    client, _ = served
    for body, words in (({"text": "  ", "k": 5}, "text: the text is empty"),
                        ({"text": "a man", "k": 0}, "k: Input should be greater than or equal"),
                        ({"text": "a man", "k": 101}, "k: Input should be less than or equal"),
                        ({"text": "a man", "k": 100, "offset": 950}, "offset + k must be at most"),
                        ({"k": 5}, "text: Field required"),
                        ({"text": "x" * 2001}, "text: String should have at most")):  # fmt: skip
        status, answer, _ = client.call("POST", "/search", body)
        assert status == 422 and words in answer["detail"], (body, answer)
    outside = [f"../{trained['prepared'].name}/stats.json", "/etc/passwd",
               "../../../../../../etc/passwd", "..%2F..%2Fstats.json", "nothing.png"]  # fmt: skip
    for name in outside:
        status, answer, _ = client.call("GET", f"/images/{name}")
        assert status == 404 and "is not an image of this gallery" in answer["detail"], name
    hit = client.search(SENTENCES[1], k=1)["hits"][0]
    status, _, raw = client.call("GET", hit["url"])
    imgs_dir = read_manifests(trained["prepared"]).imgs_dir
    assert status == 200 and raw == (imgs_dir / hit["name"]).read_bytes()


def test_twenty_requests_at_once_are_each_answered_correctly(served: Any) -> None:
    client, _ = served
    alone = {text: client.search(text, k=5)["hits"] for text in SENTENCES}
    asked = [SENTENCES[i % len(SENTENCES)] for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda text: client.search(text, k=5), asked))
    for text, answer in zip(asked, answers, strict=True):
        assert answer["text"] == text and answer["hits"] == alone[text]


def test_attribute_words_are_marked_and_a_benchmark_caption_finds_its_identity(
    served: Any, trained: dict[str, Path]
) -> None:
    client, _ = served
    answer = client.search("A woman in a red coat, with a black backpack.", k=3)
    assert "".join(w["text"] for w in answer["words"]) == answer["text"]
    marked = {w["text"] for w in answer["words"] if w["attribute"]}
    assert {"woman", "red", "coat", "black", "backpack"} <= marked
    assert not marked & {"A", "in", "a", "with", ",", "."}
    assert answer["query_pid"] is None and {h["correct"] for h in answer["hits"]} == {None}
    _, [caption], _ = client.call("GET", "/examples?n=1")
    split = read_manifests(trained["prepared"]).split("test")
    pid = split.captions.filter(split.captions["text"] == caption)["pid"][0]
    whole = client.search(caption.upper() + " ", k=100)  # case and spacing do not matter
    assert whole["query_pid"] == pid
    assert [h["correct"] for h in whole["hits"]] == [h["pid"] == pid for h in whole["hits"]]
    assert (
        sum(h["correct"] for h in whole["hits"])
        == split.images.filter(split.images["pid"] == pid).height
    )


def test_a_benchmark_caption_says_which_identity_and_the_rank_of_its_first_image(
    served: Any, trained: dict[str, Path]
) -> None:
    client, _ = served
    split = read_manifests(trained["prepared"]).split("test")
    assert client.search(SENTENCES[0], k=3)["described"] is None
    for caption in split.captions["text"].unique().sort().to_list()[:4]:
        pid = split.captions.filter(split.captions["text"] == caption)["pid"][0]
        whole = client.search(caption, k=split.images.height)  # every rank
        first = min(h["rank"] for h in whole["hits"] if h["pid"] == pid)
        images = split.images.filter(split.images["pid"] == pid).height
        assert whole["described"] == {"identity": pid, "images": images, "first_rank": first}
        later = client.search(caption, k=1, offset=first + 1)  # the same on any page
        assert later["described"] == whole["described"]


def test_serve_refuses_a_public_host_and_missing_inputs_in_one_line(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    best, gallery = str(trained["best"]), str(trained["gallery"])
    cases = (([best, "--host", "0.0.0.0"], "--host 0.0.0.0 is not a loopback address"),
             ([best, "--host", "example.org"], "Add --expose to mean it"),
             ([str(tmp_path / "nowhere")], f"checkpoint {tmp_path / 'nowhere'} not found"),
             ([best, "--gallery", str(tmp_path / "no")], "no not found: give"))  # fmt: skip
    for args, words in cases:
        command = ["serve", *args, "--cache-dir", str(tmp_path)]
        if "--gallery" not in args:
            command += ["--gallery", gallery]
        result = CliRunner().invoke(app, command, env={"COLUMNS": "300"})
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Traceback" not in result.output


def test_an_export_is_served_and_named_as_one(trained: dict[str, Path], tmp_path: Path) -> None:
    from uit.app.serve import load_searcher
    from uit.model.export import export_encoder

    export_encoder(trained["best"], tmp_path / "model")
    exported = load_searcher(tmp_path / "model", trained["gallery"], cache_dir=tmp_path / "c",
                             device="cpu")  # fmt: skip
    checkpoint = load_searcher(trained["best"], trained["gallery"], cache_dir=tmp_path / "c",
                               device="cpu")  # fmt: skip
    assert exported.model.startswith(f"{tmp_path / 'model'} (export of {trained['best']}")
    assert exported.search(SENTENCES[2], 12) == checkpoint.search(SENTENCES[2], 12)


# The approximate index, against the exact scan.


def test_the_ann_index_finds_the_exact_top_10(tmp_path: Path) -> None:
    feats, queries = clustered(6000, 32, 60), clustered(40, 32, 60, seed=1).float()
    flat_scores, flat = build_index(feats, "flat").search(queries, 10)
    ann = build_index(feats, "ann", tmp_path)
    assert ann.kind == "ann" and ann.settings.lists == 150  # forced below the threshold
    scores, found = ann.search(queries, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, flat, strict=True))
    assert recall / flat.numel() >= 0.95
    exact = torch.einsum("qd,qkd->qk", queries, feats[found].float())
    assert torch.allclose(scores, exact, atol=1e-6)  # rescored exactly, not FAISS's 8-bit guess
    assert torch.equal(scores, flat_scores) == torch.equal(found, flat)


def test_a_small_gallery_forced_to_ann_ranks_exactly_as_flat(tmp_path: Path) -> None:
    feats, queries = clustered(60, 16, 4), clustered(5, 16, 4, seed=2).float()
    expected = build_index(feats, "flat").search(queries, 10)
    got = build_index(feats, "ann", tmp_path).search(queries, 10)
    assert torch.equal(got[1], expected[1]) and torch.allclose(got[0], expected[0], atol=1e-6)


def test_the_index_is_built_once_and_a_damaged_one_rebuilt(tmp_path: Path, monkeypatch,
                                                           caplog) -> None:  # fmt: skip
    builds: list[int] = []
    real = index_module._train_and_add

    def counting(*args: Any) -> Any:
        builds.append(1)
        return real(*args)

    monkeypatch.setattr(index_module, "_train_and_add", counting)
    feats = clustered(2000, 16, 20)
    first = build_index(feats, "ann", tmp_path)
    [path] = tmp_path.glob("index-*.faiss")
    stamp = path.stat().st_mtime_ns
    second = build_index(feats, "ann", tmp_path)
    assert len(builds) == 1 and path.stat().st_mtime_ns == stamp
    queries = clustered(3, 16, 20, seed=3).float()
    assert torch.equal(first.search(queries, 5)[1], second.search(queries, 5)[1])
    build_index(clustered(2000, 16, 20, seed=4), "ann", tmp_path)  # other embeddings
    assert len(builds) == 2 and len(list(tmp_path.glob("index-*.faiss"))) == 2
    path.write_bytes(path.read_bytes()[:100])
    build_index(feats, "ann", tmp_path)
    assert len(builds) == 3 and "ignoring the damaged index" in caplog.text


def test_auto_chooses_by_gallery_size_and_the_library_loads_without_faiss() -> None:
    assert resolve_kind("auto", ANN_THRESHOLD - 1) == "flat"
    assert resolve_kind("auto", ANN_THRESHOLD) == "ann" and resolve_kind("flat", 10**7) == "flat"
    code = ("import sys, torch; from uit.retrieval.index import build_index; "
            "build_index(torch.ones(3, 4), 'auto').search(torch.ones(1, 4), 2); "
            "print('faiss' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.strip() == "False"


# The page, in headless Chromium.


@pytest.mark.parametrize("width", [1280, 390])
def test_the_page_searches_in_headless_chromium(served: Any, width: int) -> None:
    need_browser()
    from selenium.webdriver.common.by import By

    client, _ = served
    origin = f"http://127.0.0.1:{client.port}"
    shown = min(20, client.call("GET", "/healthz")[1]["images"])  # 20 a page
    with chromium(width, 900) as driver:
        driver.get(origin + "/")
        assert "cuhk-pedes test" in driver.find_element(By.ID, "about").text
        driver.find_element(By.ID, "text").send_keys("a woman in a red coat")
        driver.find_element(By.ID, "go").click()
        page = searched_page(driver, shown)
        marked = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#query mark")]
        page_width = driver.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]"
        )
    assert len(page.widths) == shown and min(page.widths) > 0
    assert {"woman", "red", "coat"} <= set(marked)
    assert page_width == [width, width]  # nothing wider than the window: no sideways scrolling
    assert page.errors == [] and page.resources
    assert all(r.startswith(origin + "/") for r in page.resources)


NAMES = "return Array.from(document.querySelectorAll('#grid .name')).map(n => n.textContent)"


def wait_for(driver: Any, condition: Any, seconds: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def search_in_page(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "go").click()


def test_the_page_keeps_its_search_in_the_url_and_holds_up(
    served: Any, trained: dict[str, Path]
) -> None:
    """The URL round trip and Back, the page size, the pager, whole names, a benchmark
    caption's identity line and the larger view, with no console error and nothing fetched
    from another origin."""
    need_browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    client, _ = served
    origin = f"http://127.0.0.1:{client.port}"
    _, [caption], _ = client.call("GET", "/examples?n=1")
    first = "a woman in a red coat"
    with chromium(1280, 900) as driver:
        driver.get(origin + "/")
        assert not any(p.is_displayed() for p in driver.find_elements(By.CLASS_NAME, "pager"))
        driver.get(origin + "/?q=a+woman+in+a+red+coat&k=5")  # searches on load
        wait_for(driver, lambda d: len(d.execute_script(NAMES)) == 5)
        names = driver.execute_script(NAMES)
        assert driver.find_element(By.ID, "text").get_attribute("value") == first
        assert [p.is_displayed() for p in driver.find_elements(By.CLASS_NAME, "pager")] == [
            True,
            True,
        ]  # above and below the grid
        search_in_page(driver, SENTENCES[1])
        wait_for(driver, lambda d: "q=a+man+with" in d.current_url)
        wait_for(driver, lambda d: d.execute_script(NAMES) != names)
        driver.back()
        wait_for(driver, lambda d: d.current_url == origin + "/?q=a+woman+in+a+red+coat&k=5")
        wait_for(driver, lambda d: d.execute_script(NAMES) == names)
        assert driver.find_element(By.ID, "text").get_attribute("value") == first
        Select(driver.find_element(By.ID, "k")).select_by_visible_text("10")  # no Search press
        wait_for(driver, lambda d: len(d.execute_script(NAMES)) == 10 and "k=10" in d.current_url)
        driver.find_element(By.CSS_SELECTOR, "#pager-top .next").click()
        wait_for(driver, lambda d: "page=2" in d.current_url)
        wait_for(
            driver, lambda d: d.find_element(By.CSS_SELECTOR, "#grid .score").text[:3] == "#11"
        )
        name = driver.find_element(By.CSS_SELECTOR, "#grid .name")
        assert name.get_attribute("title") == name.text
        nowrap = ("return Array.from(document.querySelectorAll('#grid .name, #grid .score span'))"
                  ".map(e => getComputedStyle(e).whiteSpace)")  # fmt: skip
        assert set(driver.execute_script(nowrap)) == {"nowrap"}
        driver.find_element(By.CSS_SELECTOR, "#grid a").click()
        wait_for(driver, lambda d: d.find_element(By.ID, "overlay").is_displayed())
        large = "return [document.getElementById('large').naturalHeight, " \
            "document.querySelector('#grid img').getBoundingClientRect().height]"  # fmt: skip
        wait_for(driver, lambda d: d.execute_script(large)[0] > 0)
        assert driver.find_element(By.ID, "large").size["height"] > 180  # the tile's height
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        wait_for(driver, lambda d: not d.find_element(By.ID, "overlay").is_displayed())
        search_in_page(driver, caption)
        wait_for(driver, lambda d: d.find_elements(By.ID, "described"))
        line = driver.find_element(By.ID, "described").text
        search_in_page(driver, SENTENCES[2])
        wait_for(driver, lambda d: "q=a+woman+in+blue" in d.current_url)
        wait_for(driver, lambda d: not d.find_elements(By.ID, "described"))
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    described = client.search(caption, k=1)["described"]
    assert f"identity {described['identity']}" in line
    assert f"holds {described['images']} of its images" in line
    assert f"the first at rank {described['first_rank']}." in line
    assert errors == [], errors  # the policy still allows the page's own script and style
    assert resources and all(r.startswith(origin + "/") for r in resources)


def test_the_page_says_when_the_server_is_gone_and_offers_retry(
    served: Any, trained: dict[str, Path], tmp_path: Path
) -> None:
    need_browser()
    from selenium.webdriver.common.by import By

    _, cache = served  # its embeddings: this server only hashes the images
    log = tmp_path / "serve.log"
    process = start_server(trained, cache, log)
    try:
        with chromium(1280, 900) as driver:
            origin = f"http://127.0.0.1:{wait_until_serving(process, log)}"
            driver.get(origin + "/?q=a+person+in+a+red+coat&k=10")
            wait_for(driver, lambda d: len(d.execute_script(NAMES)) == 10)
            terminate(process)
            search_in_page(driver, SENTENCES[1])
            wait_for(driver, lambda d: d.find_element(By.ID, "retry").is_displayed())
            status = driver.find_element(By.ID, "status")
            assert status.get_attribute("class") == "error"
            assert "did not answer" in status.text and "searching" not in status.text
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        terminate(process)
    assert all("ERR_CONNECTION_REFUSED" in e for e in errors), errors


def test_concurrent_queries_share_encoder_passes_and_rank_as_alone() -> None:
    """With --batch-queries 4, searches that arrive while the encoder is busy share its next
    pass (never more than 4 texts), and each ranks as it does encoded alone."""
    import threading

    texts = [f"a person in a {c} coat and {t} trousers" for c in ("red", "blue", "green", "white")
             for t in ("black", "grey")]  # fmt: skip
    alone = random_searcher(1)
    expected = {text: alone.search(text, 10) for text in texts}
    shared = random_searcher(4)
    sizes: list[int] = []
    encode_many = shared.opened.encode_many

    def slow(batch: list[str]) -> torch.Tensor:  # a busy encoder, so that searches queue
        sizes.append(len(batch))
        time.sleep(0.05)
        return encode_many(batch)

    shared.opened.encode_many = slow  # type: ignore[method-assign]
    found: dict[str, list[tuple[int, float]]] = {}
    threads = [threading.Thread(target=lambda t=t: found.__setitem__(t, shared.search(t, 10)))
               for t in texts]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sizes) == len(texts) and max(sizes) > 1 and max(sizes) <= 4, sizes
    for text in texts:
        assert [i for i, _ in found[text]] == [i for i, _ in expected[text]], text
        for (_, a), (_, b) in zip(found[text], expected[text], strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_an_encoder_failure_reaches_every_search_that_shared_the_pass() -> None:
    import threading

    searcher = random_searcher(8)

    def broken(batch: list[str]) -> torch.Tensor:
        time.sleep(0.05)
        raise RuntimeError("encoder gone")

    searcher.opened.encode_many = broken  # type: ignore[method-assign]
    errors: list[str] = []

    def search(text: str) -> None:
        try:
            searcher.search(text, 5)
        except RuntimeError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=search, args=(f"text {i}",)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == ["encoder gone"] * 5
