"""``uit serve`` with tokens, an audit log, limits and metrics: a real server on 127.0.0.1 (the
`uit` command in a subprocess) whose token file holds a token per test (each has its own rate
limit), and the CLI that makes tokens and reads the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import (
    Answer,
    need_browser,
    random_searcher,
    request,
    searched_page,
    terminate,
    wait_until_serving,
)
from uit.app.browser import chromium
from uit.app.cli import app
from uit.app.serve_access import create_token, read_tokens, revoke_token
from uit.app.serve_audit import AuditLog, AuditPolicy, read_audit
from uit.core.errors import UitError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("alice", "burst", "flood", "page", "crowded", "metrics", "revoked")
RATE = 60  # --rate-limit of the server here: requests a minute per token
ALLOWED = "http://allowed.example"


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    return result.exit_code, result.stdout, result.output


@dataclass
class Served:
    port: int
    secrets: dict[str, str]
    tokens: Path
    audit: Path
    log: Path

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None, source: str = "") -> Answer:  # fmt: skip
        """One request on its own connection, from ``source`` (a loopback address) if given."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.secrets.get(token, token)}"
        return request(self.port, method, path, body, sent, source=source)

    def search(self, text: str, token: str, k: int = 5) -> Answer:
        return self.call("POST", "/search", {"text": text, "k": k}, token=token)


def create(tokens: Path, name: str) -> str:
    code, secret, output = cli("serve", "token", "create", name, "--tokens", tokens)
    assert code == 0 and "shown this once" in output, output
    return secret.strip()


@pytest.fixture(scope="module")
def served(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("serve-access")
    tokens, audit, log = base / "tokens.json", base / "audit" / "audit.jsonl", base / "serve.log"
    secrets = {name: create(tokens, name) for name in NAMES}
    assert cli("serve", "token", "revoke", "revoked", "--tokens", tokens)[0] == 0
    command = [sys.executable, "-c", "from uit.app import main; main()", "serve",
               str(trained["best"]), "--gallery", str(trained["prepared"]), "--port", "0",
               "--cache-dir", str(base / "cache"), "--device", "cpu", "--tokens", str(tokens),
               "--audit-log", str(audit), "--rate-limit", str(RATE),
               "--cors-origin", ALLOWED]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        process = subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Served(wait_until_serving(process, log), secrets, tokens, audit, log)
    finally:
        terminate(process)


def test_the_token_file_keeps_digests_only_and_is_private(served: Served) -> None:
    text = served.tokens.read_text()
    assert not any(secret in text for secret in served.secrets.values())
    assert oct(served.tokens.stat().st_mode & 0o777) == "0o600"
    code, listed, _ = cli("serve", "token", "list", "--tokens", served.tokens)
    assert code == 0 and [line.split("\t")[0] for line in listed.splitlines()] == sorted(
        set(NAMES) - {"revoked"}
    )


def test_token_commands_at_once_lose_no_token(tmp_path: Path) -> None:
    """Eight creates and a revoke at the same moment: each reads, changes and writes the whole
    file, so without the lock the last writer drops the others' tokens."""
    path = tmp_path / "tokens.json"
    create_token(path, "old")
    names = [f"t{i}" for i in range(8)]
    with ThreadPoolExecutor(len(names) + 1) as pool:
        revoked = pool.submit(revoke_token, path, "old")
        made = [pool.submit(create_token, path, name) for name in names]
        revoked.result()
    assert sorted(read_tokens(path)) == names and len({m.result() for m in made}) == len(names)


def test_an_exposed_server_wants_a_token_when_its_last_is_revoked(tmp_path: Path) -> None:
    """--expose refuses to start without a token; revoking (or deleting) every token while it
    runs must not open it to anyone, as a loopback server without tokens is."""
    from starlette.testclient import TestClient

    from uit.app.serve import Policy, build_app

    tokens, body = tmp_path / "tokens.json", {"text": "a woman in a red coat", "k": 3}

    def answers(expose: bool) -> list[int]:
        """Statuses without a token: while one exists, once it is revoked, once the file
        is gone."""
        create_token(tokens, "only")
        app = build_app(random_searcher(), expose=expose, policy=Policy(tokens=tokens))
        statuses = []
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for change in (lambda: None, lambda: revoke_token(tokens, "only"), tokens.unlink):
                change()
                statuses.append(client.post("/search", json=body).status_code)
        return statuses

    assert answers(expose=True) == [401, 401, 401]
    assert answers(expose=False) == [401, 200, 200]  # the control: loopback opens again


def test_no_token_wrong_or_revoked_is_401_and_a_valid_one_200(served: Served) -> None:
    for token in (None, "not-a-token", "revoked"):
        answer = served.search("a man in a blue shirt", token=token)  # type: ignore[arg-type]
        assert answer.status == 401, (token, answer)
        assert "Authorization: Bearer TOKEN" in answer.json()["detail"]
        assert answer.body.count(b"\n") == 0
    answer = served.search("a man in a blue shirt", "alice")
    assert answer.status == 200
    url = answer.json()["hits"][0]["url"]
    assert served.call("GET", url).status == 401  # images are covered like /search
    assert served.call("GET", url, token="alice").status == 200
    assert served.call("GET", "/metrics").status == 401
    assert served.call("GET", "/healthz").status == 200  # open: for load balancers
    page = served.call("GET", "/")  # open: it asks for the token itself
    assert page.status == 200 and b'"auth": true' in page.body


def test_a_token_revoked_while_serving_is_refused_at_once(served: Served) -> None:
    secret = create(served.tokens, "later")
    assert served.search("a woman", secret).status == 200
    assert cli("serve", "token", "revoke", "later", "--tokens", served.tokens)[0] == 0
    assert served.search("a woman", secret).status == 401


def test_an_address_that_keeps_guessing_is_slowed(served: Served) -> None:
    guesser = "127.0.0.9"  # its own loopback address: the other tests' address is not slowed
    statuses = [served.call("GET", "/examples", token=f"guess-{i}", source=guesser).status
                for i in range(12)]  # fmt: skip
    assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
    slowed = served.call("GET", "/examples", token="alice", source=guesser)
    assert slowed.status == 429 and int(slowed.headers["retry-after"]) >= 1
    assert served.call("GET", "/examples", token="alice").status == 200


def test_the_rate_limit_answers_429_with_retry_after(served: Served) -> None:
    statuses = [served.call("GET", "/examples?n=1", token="flood") for _ in range(RATE + 5)]
    refused = [a for a in statuses if a.status == 429]
    assert statuses[0].status == 200 and len(refused) >= 5
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "requests a minute" in refused[0].json()["detail"]
    assert served.call("GET", "/examples?n=1", token="alice").status == 200  # per token


def audit_records(served: Served) -> list[dict[str, Any]]:
    return [json.loads(line) for line in served.audit.read_text().splitlines()]


def test_the_audit_log_holds_each_request_of_a_burst_once_and_no_token(served: Served) -> None:
    texts = [f"a person number {i} in a red coat" for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda text: served.search(text, "burst"), texts))
    assert [a.status for a in answers] == [200] * 20
    hit = answers[0].json()["hits"][0]
    assert served.call("GET", hit["url"], token="burst").status == 200
    assert served.call("GET", "/images/nothing.png", token="burst").status == 404  # not served
    records = [r for r in audit_records(served) if r["token"] == "burst"]
    searches = [r for r in records if r["route"] == "/search"]
    assert sorted(r["query"] for r in searches) == sorted(texts)  # each exactly once
    first = next(r for r in searches if r["query"] == texts[0])
    assert first["k"] == 5 and first["offset"] == 0 and first["client"] == "127.0.0.1"
    assert first["results"] == [{"name": h["name"], "score": h["score"]}
                                for h in answers[0].json()["hits"]]  # fmt: skip
    assert [r["image"] for r in records if r["route"] == "/images"] == [hit["name"]]
    datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    whole = served.audit.read_text() + served.log.read_text()  # the access log too
    assert not any(secret in whole for secret in served.secrets.values())


def test_the_audit_cli_reads_and_filters_the_log(served: Served) -> None:
    served.search("a girl with a green umbrella", "alice")
    code, out, _ = cli("serve", "audit", served.audit, "--query", "GREEN umbrella", "--json")
    [record] = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and record["token"] == "alice" and record["route"] == "/search"
    code, out, _ = cli("serve", "audit", served.audit, "--token", "alice", "--query", "umbrella")
    header, *rows = out.splitlines()  # not a terminal: tab-separated under a header
    assert code == 0 and header.split("\t")[:4] == ["time", "token", "client", "route"]
    assert len(rows) == 1 and "a girl with a green umbrella" in rows[0].split("\t")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert cli("serve", "audit", served.audit, "--since", future, "--json")[1] == ""
    code, _, output = cli("serve", "audit", served.audit, "--since", "yesterday")
    assert code == 1 and "not an ISO 8601 time" in output


def test_a_failed_audit_write_refuses_the_request(served: Served) -> None:
    moved = served.audit.with_name("kept.jsonl")
    served.audit.rename(moved)
    served.audit.mkdir()  # the log's path is now a folder: no line can be written
    try:
        answer = served.search("a man with a black backpack", "alice")
        assert answer.status == 503 and "audit log" in answer.json()["detail"]
        hit_url = "/images/" + "x.png"
        assert served.call("GET", hit_url, token="alice").status == 404  # not an image: no line
    finally:
        served.audit.rmdir()
        moved.rename(served.audit)
    assert served.search("a man with a black backpack", "alice").status == 200


def test_answers_carry_security_headers_and_cors_is_closed(served: Served) -> None:
    page = served.call("GET", "/")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert "style-src 'sha256-" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy
    answer = served.search("a man", "alice")
    for headers in (page.headers, answer.headers):
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    other = served.call(
        "GET", "/examples", token="alice", headers={"Origin": "http://evil.example"}
    )
    assert other.status == 200 and "access-control-allow-origin" not in other.headers
    allowed = served.call("GET", "/examples", token="alice", headers={"Origin": ALLOWED})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    big = served.call("POST", "/search", {"text": "x" * 70000}, token="alice")
    assert big.status == 413 and "over the limit" in big.json()["detail"]


def test_metrics_parse_as_prometheus_text(served: Served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    served.search("a person in a red coat", "metrics")
    answer = served.call("GET", "/metrics", token="metrics")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
    samples = families["uit_requests"].samples
    requests = {(s.labels["route"], s.labels["status"]): s.value
                for s in samples if s.name == "uit_requests_total"}  # fmt: skip
    assert requests[("/search", "200")] >= 1 and requests[("/search", "401")] >= 1
    assert not any(route.startswith("/images/") and route != "/images/{name}"
                   for route, _ in requests)  # fmt: skip
    latency = [s for s in families["uit_request_seconds"].samples if s.name.endswith("_count")]
    assert latency and all(s.value >= 1 for s in latency)
    encoded = [s for s in families["uit_encode_seconds"].samples if s.name.endswith("_count")]
    assert encoded[0].value >= 1 and "uit_index_seconds" in families
    images = served.call("GET", "/healthz").json()["images"]
    assert families["uit_gallery_images"].samples[0].value == images
    [kind] = families["uit_index_info"].samples
    assert kind.labels == {"kind": "flat"} and kind.value == 1


def test_the_access_log_is_a_json_line_per_request(served: Served) -> None:
    served.search("a man in a grey coat", "alice")
    lines = [json.loads(line) for line in served.log.read_text().splitlines()
             if line.startswith("{")]  # fmt: skip
    search = [r for r in lines if r["route"] == "/search" and r["token"] == "alice"]
    assert search and search[-1]["status"] == 200 and search[-1]["ms"] > 0
    assert {r["status"] for r in lines if r["route"] == "/search"} >= {200, 401}


def test_expose_refuses_to_start_without_a_token_or_an_audit_log(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    base = ["serve", trained["best"], "--gallery", trained["gallery"], "--host", "0.0.0.0",
            "--expose", "--cache-dir", tmp_path, "--port", "0"]  # fmt: skip
    code, _, output = cli(*base)
    message = " ".join(output.split())
    assert code == 1 and "--expose needs at least one access token" in message, output
    assert "uit serve token create NAME" in message and "Traceback" not in output
    create(tmp_path / "tokens.json", "ops")
    code, _, output = cli(*base)
    assert code == 1 and "--expose needs --audit-log FILE" in " ".join(output.split())


def test_the_audit_log_rotates_by_size_and_drops_old_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditPolicy(path, max_bytes=400, keep=2))
    for i in range(30):
        log.write({"route": "/search", "query": f"sentence {i}"})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    kept = [r["query"] for r in read_audit(path)]
    assert kept == [f"sentence {i}" for i in range(30 - len(kept), 30)]  # oldest first, in order
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    new = datetime.now(UTC).isoformat()
    path.write_text("".join(json.dumps({"time": t, "query": q}) + "\n"
                            for t, q in ((old, "old"), (new, "new"))))  # fmt: skip
    os.utime(tmp_path / "audit.jsonl.2", (0, 0))
    AuditLog(AuditPolicy(path, max_bytes=400, keep=2, retention_days=7))
    assert [json.loads(line)["query"] for line in path.read_text().splitlines()] == ["new"]
    assert not (tmp_path / "audit.jsonl.2").exists()


def test_the_audit_log_touches_no_file_it_did_not_write(tmp_path: Path) -> None:
    """Another program's log given as --audit-log is refused whole, unchanged; a FILE.n that
    is not an audit log (logrotate's) survives rotation and retention; lines the reader
    cannot take are one line, not a traceback."""
    foreign, path = tmp_path / "app.log", tmp_path / "audit.jsonl"
    foreign.write_bytes(b'{"level": "info"}\ncaf\xe9 2019\n')
    with pytest.raises(UitError, match="something other than an audit log"):
        AuditLog(AuditPolicy(foreign, retention_days=1))
    assert foreign.read_bytes() == b'{"level": "info"}\ncaf\xe9 2019\n'
    (tmp_path / "audit.jsonl.2").write_text("logrotate's\n")
    os.utime(tmp_path / "audit.jsonl.2", (0, 0))
    log = AuditLog(AuditPolicy(path, max_bytes=200, keep=2, retention_days=1))
    for i in range(12):
        log.write({"route": "/search", "query": f"sentence {i}"})
    assert (tmp_path / "audit.jsonl.2").read_text() == "logrotate's\n"
    path.write_text('{"time": "2026-12-04T00:00:00Z", "route": "/search"}\n[1, 2]\n')
    with pytest.raises(UitError, match=r"audit.jsonl, line 2: not a line of an audit log"):
        list(read_audit(path))
    code, _, output = cli("serve", "audit", path, "--since", "2026-01-01")
    assert code == 1 and "line 2: not a line of an audit log" in output
    assert "Traceback" not in output


def test_the_page_asks_for_a_token_and_searches_in_headless_chromium(served: Served) -> None:
    need_browser()
    from selenium.webdriver.common.by import By

    origin = f"http://127.0.0.1:{served.port}"
    shown = min(20, served.call("GET", "/healthz").json()["images"])
    with chromium(1280, 900) as driver:
        driver.get(origin + "/")
        assert driver.find_element(By.ID, "login").is_displayed()
        driver.find_element(By.ID, "token").send_keys(served.secrets["page"])
        driver.find_element(By.ID, "use").click()
        driver.find_element(By.ID, "text").send_keys("a woman in a red coat")
        driver.find_element(By.ID, "go").click()
        page = searched_page(driver, shown)
        kept = driver.execute_script("return sessionStorage.getItem('uit-token')")
    assert len(page.widths) == shown and min(page.widths) > 0
    assert kept == served.secrets["page"]
    assert page.errors == [], page.errors  # the policy blocks none of the page's own code
    assert page.resources
    assert all(r.startswith((origin + "/", f"blob:{origin}/")) for r in page.resources)


def test_the_page_says_too_many_requests_and_offers_a_retry(served: Served) -> None:
    """A search URL opened without a token waits for it (no request that can only be refused;
    its late 401 used to clear the token just entered). A token over its rate limit: the
    page's search says so (429's detail) with a Retry button, rather than a spinner or
    nothing. The limit refills one request a second, so a thread keeps the token over it
    while the page searches (and the page searches again in the rare case that its request
    takes the refill first)."""
    need_browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stop = threading.Event()

    def crowd() -> None:
        while not stop.is_set():
            served.call("GET", "/examples?n=1", token="crowded")

    with chromium(1280, 900) as driver, ThreadPoolExecutor(1) as pool:
        crowding = pool.submit(crowd)
        try:
            driver.get(f"http://127.0.0.1:{served.port}/?q=a+woman+in+a+red+coat&k=10")
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "login").is_displayed())
            before = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            kept = driver.find_element(By.ID, "text").get_attribute("value")
            driver.find_element(By.ID, "token").send_keys(served.secrets["crowded"])
            driver.find_element(By.ID, "use").click()  # the URL's search, with the token
            answered = ("return document.getElementById('status').className === 'error'"
                        " || document.querySelectorAll('#grid img').length > 0")  # fmt: skip
            for _ in range(3):
                WebDriverWait(driver, 30).until(lambda d: d.execute_script(answered))
                if driver.find_element(By.ID, "retry").is_displayed():
                    break
                driver.find_element(By.ID, "go").click()
            status = driver.find_element(By.ID, "status")
            shown = status.text, status.get_attribute("class")
            retry = driver.find_element(By.ID, "retry").is_displayed()
        finally:
            stop.set()
            crowding.result()
    assert before == [] and kept == "a woman in a red coat"  # no search sent without the token
    assert shown[1] == "error" and retry, shown
    assert "Too many requests" in shown[0] and "requests a minute" in shown[0]


class _Clock:
    """``time`` for uit.app.serve_access, read from ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_limits_forget_clients_they_no_longer_need_and_answer_as_if_they_had_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server open to the internet meets addresses once and never again: the rate limit and
    the wrong-token counter forget them once they could not matter (a bucket full again, every
    failure out of the window). Invariant: on the same random traffic, limits that sweep answer
    exactly as limits that never do, and hold hundreds of clients instead of thousands."""
    import random

    from uit.app import serve_access

    clock = _Clock()
    monkeypatch.setattr(serve_access, "time", clock)
    limits = {every: (serve_access.RateLimit(30), serve_access.Failures(limit=3, window=60.0))
              for every in (60.0, float("inf"))}  # fmt: skip
    rng, limited = random.Random(0), 0
    for step in range(20_000):
        clock.now += rng.expovariate(20.0)  # 20 requests a second
        # three addresses that come back: in turns faster than the limit and idle a while
        regular = rng.random() < (0.3 if clock.now % 100 < 50 else 0.01)
        address = f"10.0.0.{rng.randrange(3)}" if regular else f"2001:db8::{step:x}"
        wrong_token = rng.random() < (0.05 if regular else 0.5)
        answers = {}
        for every, (rate, failures) in limits.items():
            monkeypatch.setattr(serve_access, "SWEEP_EVERY", every)
            answers[every] = (rate.wait(address), failures.wait(address))
            if answers[every] == (0.0, 0.0) and wrong_token:
                failures.failed(address)
        assert answers[60.0] == answers[float("inf")], (step, address)
        limited += answers[60.0][0] > 0
    (swept_rate, swept_failures), (kept_rate, kept_failures) = limits.values()
    assert len(kept_rate.buckets) > 13_000 and len(swept_rate.buckets) < 1_500
    assert len(kept_failures.times) > 6_000 and len(swept_failures.times) < 1_500
    assert limited > 1_000  # the regulars come faster than the limit, and are held to it
