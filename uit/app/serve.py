"""``uit serve``: one loaded model and gallery behind a web page and a JSON API (FastAPI).

The model, the gallery embeddings and the index are loaded once (``load_searcher``); each
request encodes its sentence, asks the index, and answers. Routes: ``GET /`` the page (one
self-contained HTML file: inline style and script, nothing fetched from elsewhere), ``POST
/search``, ``GET /healthz``, ``GET /examples`` (captions of a prepared benchmark),
``GET /images/{name}`` (only the gallery's own files, looked up by name, never opened by a path
the client gives, and opened only while they are regular files inside the gallery), ``GET
/metrics`` (Prometheus), ``POST /admin/reload`` (the gallery read again and swapped in,
after ``uit gallery add`` or ``erase``) and FastAPI's ``/openapi.json``. A ``Policy`` adds tokens
(``serve_access``), the audit log (``serve_audit``) and CORS origins.

A loopback server is still reachable from any web page the user opens: ``Guard`` answers only
requests addressed to a loopback name (no DNS rebinding), bounds the body and the time it takes
to arrive, and marks every answer not to be sniffed, framed or stored; ``run_server`` bounds the
headers, the time they take to arrive and the connections held. Nothing a client sees names a
path of the server's file system: the model and gallery are shown by their folders' names.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import hashlib
import html
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import Headers, MutableHeaders

from uit.app.serve_access import (
    RATE_LIMIT,
    Failures,
    RateLimit,
    TokenCheck,
    read_tokens,
    retry_after,
)
from uit.app.serve_audit import AuditError, AuditLog, now_iso
from uit.app.serve_metrics import CONTENT_TYPE, ServeMetrics, log_access
from uit.core.config import INFERENCE_BATCH_SIZE
from uit.core.errors import UitError
from uit.data.images import ImageError, open_image_file
from uit.raw.prepare import clean_caption
from uit.retrieval.search import Gallery, normalise, shown

if TYPE_CHECKING:
    import torch
    from spacy.language import Language
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from uit.core.config import IndexChoice
    from uit.core.console import NewBar
    from uit.data.dataset import Tokenizer
    from uit.model.encoder import DualEncoder
    from uit.retrieval.evaluate import EvalOptions
    from uit.retrieval.gallery import OpenGallery

log = logging.getLogger(__name__)

MAX_K = 100  # results per page
MAX_RANK = 1000  # offset + k: how deep paging goes
MAX_TEXT = 2000  # characters, as prepared captions
MAX_BODY = 64 << 10  # bytes: a search request is a few hundred (2,000 escaped characters: 12 KB)
MAX_HEADERS = 16 << 10  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0  # seconds a client has to send its headers, and again its body
KEEP_ALIVE = 5  # seconds an idle connection is kept open
MAX_CONNECTIONS = 64  # beyond it a request is answered 503 at once
SCORE_BLOCK = 1 << 16  # gallery rows scored at once for a caption's identity (no float32 copy)
EXAMPLE = '{"text": "a woman in a red coat", "k": 10, "offset": 0}'
# What every answer carries: not to be sniffed as another type, framed, or stored by a cache.
CLOSED = "default-src 'none'; frame-ancestors 'none'"  # what an answer but the page may load
ANSWER_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
                  "referrer-policy": "no-referrer", "cache-control": "no-store",
                  "content-security-policy": CLOSED}  # fmt: skip
OPEN_ROUTES = {"/healthz", "/"}  # answered without a token: the page asks for one itself
ROUTES = {"/", "/search", "/healthz", "/examples", "/metrics", "/openapi.json", "/admin/reload"}


@dataclass(frozen=True)
class Policy:
    """Who may ask and what is written down: the token file (tokens required while it holds
    any), the audit log, the rate limit (0: none) and the origins CORS lets read answers."""

    tokens: Path | None = None
    audit: AuditLog | None = None
    rate_limit: int = RATE_LIMIT
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    reload: Callable[[Searcher], Searcher] | None = None  # POST /admin/reload (None: 404)


def describe_model(checkpoint: Path, *, public: bool = False) -> str:
    """One line for the page: the folder, export or checkpoint, and the architecture. ``public``
    names folders by their last part only (what a client of the server may see)."""
    from uit.model.checkpoint import read_state
    from uit.model.export import exported_from, is_export

    def where(path: Any) -> str:
        return shown(Path(os.path.abspath(path)).name) if public and path != "?" else str(path)

    state = read_state(checkpoint)
    name = state["config"].get("model", {}).get("name", "?")
    if is_export(state):
        return f"{where(checkpoint)} (export of {where(exported_from(state) or '?')}, {name})"
    return f"{where(checkpoint)} (training checkpoint, epoch {state.get('epoch', '?')}, {name})"


@dataclass(frozen=True)
class Segment:
    text: str
    attribute: bool


@dataclass
class _Query:
    """One search's text waiting for the encoder, and what became of it."""

    text: str
    done: threading.Event
    feats: torch.Tensor | None = None
    error: BaseException | None = None


class QueryBatcher:
    """Encodes the texts of concurrent searches together, at most ``limit`` in one forward pass.

    Each search queues its text, then waits for the encoder (``lock``); whoever holds it encodes
    every text queued by then (up to ``limit``), so a lone search waits for nothing and searches
    that arrive while the encoder is busy share its next pass. A ViT-B-16 text tower on 2 CPU
    cores takes about 30 ms for one text and 46 ms for four: under load, batching pays.
    ``limit`` 1 encodes each text alone, as ``uit search`` does, to the last bit; with a larger
    limit a search that shares a pass may score differently in the last float digits (matrix
    products of another shape)."""

    def __init__(self, lock: threading.Lock, limit: int = 1) -> None:
        if limit < 1:
            raise UitError(f"--batch-queries {limit}: give 1 (no batching) or more")
        self.lock, self.limit = lock, limit
        self.queue: list[_Query] = []
        self.queued = threading.Lock()

    def encode(self, opened: OpenGallery, text: str) -> torch.Tensor:
        """``text``'s embedding (1, D), encoded by ``opened``'s model, alone or with others."""
        query = _Query(text, threading.Event())
        with self.queued:
            self.queue.append(query)
        while not query.done.is_set():
            with self.lock:  # taking, encoding and answering a batch happen under the lock
                if query.done.is_set():
                    break
                with self.queued:
                    batch = self.queue[: self.limit]
                    del self.queue[: self.limit]
                self._run(opened, batch)
        if query.error is not None:
            raise query.error
        assert query.feats is not None
        return query.feats

    @staticmethod
    def _run(opened: OpenGallery, batch: list[_Query]) -> None:
        try:
            feats = opened.encode_many([q.text for q in batch])
        except BaseException as error:  # each search that shared the pass raises it
            for q in batch:
                q.error = error
                q.done.set()
            return
        for i, q in enumerate(batch):
            q.feats = feats[i : i + 1]
            q.done.set()


class Searcher:
    """A gallery opened for the server (``uit.retrieval.gallery.OpenGallery``), with the parser
    that marks attribute words and the model's description; ``search`` is safe to call from many
    threads (one query at a time: two cores gain nothing from running encoders side by side)."""

    def __init__(self, opened: OpenGallery, nlp: Language, model: str,
                 public_model: str | None = None,
                 checkpoint: Path | None = None, batch_queries: int = 1) -> None:  # fmt: skip
        self.opened, self.gallery, self.index = opened, opened.gallery, opened.index
        self.checkpoint = checkpoint  # what reload_searcher keys the cache by
        self.nlp, self.model = nlp, model
        self.public_model = public_model or model
        self.files = dict(zip(self.gallery.names, self.gallery.paths, strict=True))
        # where the gallery really is now: a link to it changed later leads nowhere new
        self.root = Path(os.path.realpath(self.gallery.root))
        self.lock = threading.Lock()
        self.batcher = QueryBatcher(self.lock, batch_queries)  # the encoder: under self.lock

    def search(self, text: str, k: int, offset: int = 0) -> list[tuple[int, float]]:
        """(gallery index, score) of ranks ``offset + 1`` to ``offset + k``."""
        return self.timed_search(text, k, offset)[0]

    def timed_search(self, text: str, k: int,
                     offset: int = 0) -> tuple[list[tuple[int, float]], float, float]:  # fmt: skip
        """``search``, and the seconds it took to encode the text and to rank the gallery."""
        ranked, encode_s, index_s, _ = self.described_search(text, k, offset)
        return ranked, encode_s, index_s

    def described_search(
        self, text: str, k: int, offset: int = 0
    ) -> tuple[list[tuple[int, float]], float, float, Described | None]:
        """``timed_search``, and for a benchmark caption the identity it describes
        (``describe``)."""
        start = time.perf_counter()
        query = self.batcher.encode(self.opened, text)
        encoded = time.perf_counter()
        with self.lock:
            ranked = self.opened.rank(query, k, offset)
            ranked_s = time.perf_counter() - encoded
            pid = self.query_pid(text)
            described = None if pid is None else self.describe(pid, query)
        return ranked, encoded - start, ranked_s, described

    def describe(self, pid: int, query: torch.Tensor) -> Described:
        """Identity ``pid``: how many gallery images it has and the rank of the best of them
        for the encoded ``query`` (1, D) in the whole gallery."""
        pids = self.gallery.pids or []
        members = [i for i, p in enumerate(pids) if p == pid]
        rank = first_rank(self.opened.feats, query, members) if members else None
        return Described(identity=pid, images=len(members), first_rank=rank)

    def segments(self, text: str) -> list[Segment]:
        """``text`` cut into pieces, the parser's attribute words marked (whitespace kept)."""
        from uit.text.parsed import is_attribute_tag

        with self.lock:
            doc = self.nlp(text)
        marks = [False] * len(text)  # per character
        for token in doc:
            if is_attribute_tag(token.tag_):
                marks[token.idx : token.idx + len(token.text)] = [True] * len(token.text)
        pieces, start = [], 0
        for mark, run in itertools.groupby(marks):
            length = len(list(run))
            pieces.append(Segment(text[start : start + length], mark))
            start += length
        return pieces

    def query_pid(self, text: str) -> int | None:
        """The identity of a benchmark caption typed (or pasted) as the query."""
        return self.gallery.captions.get(normalise(text))


def first_rank(feats: torch.Tensor, query: torch.Tensor, members: list[int]) -> int:
    """The rank among all ``feats`` (N, D) for ``query`` (1, D) of the best-scoring of
    ``members`` (ascending gallery indices): one more than the images scoring higher, ties to
    the lower index as the index breaks them. One product with the gallery, no sort."""
    import torch

    query = query.float().flatten()  # (D,)
    scores = torch.cat([block.float() @ query for block in feats.split(SCORE_BLOCK)])  # (N,)
    best = members[int(scores[members].argmax())]  # the first of equal maxima: lower index
    higher = int((scores > scores[best]).sum()) + int((scores[:best] == scores[best]).sum())
    return higher + 1


def load_searcher(
    checkpoint: Path,
    gallery_source: Path,
    *,
    split: str = "test",
    index_kind: IndexChoice = "auto",
    cache_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: NewBar | None = None,
    batch_queries: int = 1,
) -> Searcher:
    """Everything a server needs, loaded once: model, gallery embeddings (cached), index."""
    from uit.retrieval.gallery import open_gallery

    model = describe_model(checkpoint)  # a missing checkpoint fails here, before the gallery
    opened = open_gallery(checkpoint, gallery_source, split=split, index_kind=index_kind,
                          cache_dir=cache_dir, device=device, batch_size=batch_size,
                          progress=progress)  # fmt: skip
    return Searcher(opened, _parser(), model, describe_model(checkpoint, public=True), checkpoint,
                    batch_queries)  # fmt: skip


def assemble_searcher(
    loaded: tuple[DualEncoder, Tokenizer, EvalOptions],
    gallery: Gallery,
    feats: torch.Tensor,
    *,
    index_kind: IndexChoice = "auto",
    cache_dir: Path | None = None,
    progress: NewBar | None = None,
    model: str,
    public_model: str | None = None,
    batch_queries: int = 1,
) -> Searcher:
    """A searcher over ``gallery``'s embeddings ``feats`` already at hand, the index chosen for
    them as ``uit serve`` chooses it (``benchmarks/search.py`` times this with its own
    embeddings)."""
    from uit.retrieval.gallery import OpenGallery
    from uit.retrieval.index import build_index

    index = build_index(feats, index_kind, cache_dir, progress)
    return Searcher(OpenGallery(*loaded, gallery, feats, index), _parser(), model, public_model,
                    batch_queries=batch_queries)  # fmt: skip


def reload_searcher(old: Searcher, gallery_source: Path, **options: Any) -> Searcher:
    """``old``'s model and parser over the gallery read again (``open_gallery``'s
    ``options``): what ``POST /admin/reload`` swaps in after ``uit gallery add`` or ``erase``."""
    from uit.retrieval.gallery import open_gallery

    if old.checkpoint is None:
        raise UitError("this searcher was not loaded from a checkpoint: it cannot reload")
    loaded = (old.opened.encoder, old.opened.tokenizer, old.opened.options)
    opened = open_gallery(old.checkpoint, gallery_source, loaded=loaded, **options)
    new = Searcher(opened, old.nlp, old.model, old.public_model, old.checkpoint)
    new.lock, new.batcher = old.lock, old.batcher  # one encoder and its queue across both
    return new


class Live:
    """The searcher requests use now, with what the handlers derive from it; ``swap`` replaces
    them in one assignment: a request takes ``now()`` once and finishes on what it took."""

    def __init__(self, searcher: Searcher) -> None:
        self.swap(searcher)

    def swap(self, searcher: Searcher) -> None:
        gallery = searcher.gallery
        names = [shown(name) for name in gallery.names]  # what JSON can carry
        urls = [image_url(name) for name in gallery.names]
        self.view = (searcher, gallery, names, urls, page_info(searcher))

    def now(self) -> tuple[Searcher, Gallery, list[str], list[str], dict[str, Any]]:
        return self.view


def _parser() -> Language:
    """The attribute parser that marks the query's attribute words on the page."""
    from uit.core.config import ParseConfig
    from uit.parsing.pipeline import build_pipeline

    nlp, _ = build_pipeline(ParseConfig())
    return nlp


def check_host(host: str, expose: bool) -> None:
    """Loopback unless the user says otherwise: anyone who reaches the port gets the API and
    every gallery image."""
    if host == "localhost" or expose:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UitError(
            f"--host {host} is not a loopback address: anyone who can reach this machine on "
            "that port could search the gallery and download every image in it. Add --expose "
            "to mean it, or leave --host at 127.0.0.1"
        )


def check_exposure(expose: bool, tokens: Path, audit_log: Path | None) -> None:
    """An exposed server wants a token to answer and an audit log to write."""
    if not expose:
        return
    if not read_tokens(tokens):
        raise UitError(f"--expose needs at least one access token and {tokens} holds none: "
                       "create one with `uit serve token create NAME` (--tokens FILE for "
                       "another file), then start again")  # fmt: skip
    if audit_log is None:
        raise UitError("--expose needs --audit-log FILE: every search and image served is "
                       "written there")  # fmt: skip


def is_loopback_name(host: str | None) -> bool:
    """Whether a Host header names this machine's loopback: ``localhost``, ``127.x.x.x`` or
    ``[::1]``, each with or without a port. A page on another site that rebinds its own name
    to 127.0.0.1 sends its own name, and is refused."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 address: [::1] or [::1]:8000
        name, _, port = host[1:].partition("]")
        if port and not port.startswith(":"):
            return False
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SearchRequest(BaseModel):
    text: str = Field(max_length=MAX_TEXT, examples=["a woman in a red coat"],
                      description="The sentence (cleaned as captions are: invisible characters "
                                  "dropped, spaces collapsed).")  # fmt: skip
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="Results in this page.")
    offset: int = Field(0, ge=0, le=MAX_RANK - 1, strict=True,
                        description="Ranks skipped (paging).")  # fmt: skip

    @field_validator("text")
    @classmethod
    def _cleaned(cls, text: str) -> str:
        """As captions are prepared; nothing visible left (zero-width characters, NUL) is empty."""
        cleaned = clean_caption(text)
        if not cleaned:
            raise ValueError('the text is empty: give a sentence, e.g. "a woman in a red coat"')
        return cleaned


class Word(BaseModel):
    text: str
    attribute: bool = Field(description="An attribute word of the project's parser.")


class Hit(BaseModel):
    rank: int
    name: str = Field(description="The image's path inside the gallery.")
    url: str
    score: float = Field(description="Cosine similarity.")
    pid: int | None = Field(None, description="Identity (a prepared benchmark's gallery).")
    correct: bool | None = Field(None, description="Same identity as the query's caption.")


class Described(BaseModel):
    identity: int = Field(description="The identity (pid) the query's benchmark caption is of.")
    images: int = Field(description="Its images in the gallery.")
    first_rank: int | None = Field(description="The rank of the first of them (none: no image).")


class SearchResponse(BaseModel):
    text: str = Field(description="The sentence searched, cleaned.")
    k: int
    offset: int
    gallery_size: int
    query_pid: int | None = Field(None, description="The identity of a benchmark caption.")
    described: Described | None = Field(
        None, description="A benchmark caption's identity, its images and its first rank."
    )
    words: list[Word] = Field(description="The text in pieces, attribute words marked.")
    hits: list[Hit]


class _AnyPath(Convertor[str]):
    """An image name as it is, newlines included (Starlette's ``path`` stops at one)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


def build_app(searcher: Searcher, *, expose: bool = False, timeout: float = REQUEST_TIMEOUT,
              policy: Policy | None = None) -> FastAPI:  # fmt: skip
    """The FastAPI application over a loaded ``searcher``, behind ``Guard`` (and CORS for the
    origins ``policy`` names)."""
    policy = policy or Policy()
    live = Live(searcher)
    searcher, gallery, _, _, info = live.now()
    if expose and policy.tokens is None:
        raise UitError("an exposed server needs a token file (--tokens)")
    tokens = TokenCheck(policy.tokens, always=expose) if policy.tokens is not None else None
    metrics = ServeMetrics(len(gallery.paths), searcher.index.kind)
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is enough.
    app = FastAPI(title="uit serve", version="1", docs_url=None, redoc_url=None,
                  description=f"Text-to-image person search: {info['model']} on "
                              f"{info['gallery']}.")  # fmt: skip
    app.add_middleware(Guard, expose=expose, timeout=timeout, tokens=tokens,
                       rate_limit=policy.rate_limit, metrics=metrics)  # fmt: skip
    if policy.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(policy.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    reloading = threading.Lock()

    def audit(request: Request, record: dict[str, Any]) -> None:
        """Write ``record`` down before the answer leaves; no record, no answer."""
        if policy.audit is None:
            return
        try:
            policy.audit.write({"token": _token_name(request), "client": _client(request.scope),
                                **record})  # fmt: skip
        except AuditError as error:
            log.error("refusing %s: %s", request.url.path, error)
            raise HTTPException(503, "the server cannot write its audit log, so it answers "
                                     "nothing; tell its operator") from None  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _one_line(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in error.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse,
                   include_in_schema=False)  # fmt: skip
    def page() -> HTMLResponse:
        info = live.now()[4]
        text = render_page({**info, "auth": tokens is not None and tokens.required()})
        return HTMLResponse(text, headers={"content-security-policy": page_policy(text)})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        info = live.now()[4]
        return {"status": "ok", **info}

    @app.post("/search", response_model=SearchResponse)
    def search(request: SearchRequest, http: Request) -> SearchResponse:
        """Rank the gallery for ``text``; ranks ``offset + 1`` to ``offset + k``."""
        searcher, gallery, names, urls, _ = live.now()  # one gallery for the whole request
        if request.offset + request.k > MAX_RANK:
            raise HTTPException(422, f"offset + k must be at most {MAX_RANK}")
        query_pid = searcher.query_pid(request.text)
        hits = []
        ranked, encode_s, index_s, described = searcher.described_search(
            request.text, request.k, request.offset
        )
        metrics.encode.observe(encode_s)
        metrics.index.observe(index_s)
        for rank, (i, score) in enumerate(ranked, request.offset + 1):
            pid = gallery.pids[i] if gallery.pids is not None else None
            hits.append(Hit(rank=rank, name=names[i], url=urls[i], score=score, pid=pid,
                            correct=None if query_pid is None else pid == query_pid))  # fmt: skip
        words = [Word(text=s.text, attribute=s.attribute) for s in searcher.segments(request.text)]
        audit(http, {"route": "/search", "query": request.text, "k": request.k,
                     "offset": request.offset,
                     "results": [{"name": h.name, "score": h.score} for h in hits]})  # fmt: skip
        return SearchResponse(text=request.text, k=request.k, offset=request.offset,
                              gallery_size=len(gallery.paths), query_pid=query_pid,
                              described=described, words=words, hits=hits)  # fmt: skip

    @app.get("/examples")
    def examples(n: int = 5) -> list[str]:
        """Captions of the gallery's benchmark split (none for a folder), drawn at random."""
        gallery = live.now()[1]
        return random.sample(gallery.examples, min(max(n, 0), len(gallery.examples), 50))

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/images/{name:anypath}", response_class=Response)
    def image(name: str, request: Request) -> Response:
        """A gallery image by its name; any other path is not found."""
        name = _requested_name(request, name)
        served = functools.partial(audit, request, {"route": "/images", "image": shown(name)})
        return _image_response(live.now()[0], name, request.method, served)

    app.add_api_route("/images/{name:anypath}", image, methods=["HEAD"], include_in_schema=False)

    @app.post("/admin/reload", include_in_schema=False)
    def reload(request: Request) -> dict[str, Any]:
        """Read the gallery again (after ``uit gallery add`` or ``erase``) and swap it in."""
        _check_admin(request, tokens)
        if policy.reload is None:
            raise HTTPException(404, "this server cannot reload its gallery")
        if not reloading.acquire(blocking=False):
            raise HTTPException(409, "a reload is under way; ask again when it is done")
        try:
            before = live.now()[0]
            try:
                after = policy.reload(before)
            except UitError as error:
                log.error("reload failed: %s", error)
                raise HTTPException(500, f"the reload failed, the previous gallery is still "
                                         f"served: {shown(str(error))}") from None  # fmt: skip
            audit(request, {"route": "/admin/reload", "images": len(after.gallery.paths)})
            live.swap(after)
            metrics.set_gallery(len(after.gallery.paths), after.index.kind)
        finally:
            reloading.release()
        return {"status": "reloaded", "images": len(after.gallery.paths),
                "index": after.index.kind, "was": len(before.gallery.paths)}  # fmt: skip

    return app


def _check_admin(request: Request, tokens: TokenCheck | None) -> None:
    """An admin route wants a token where tokens are in use (``Guard`` has checked it), and a
    loopback client where they are not."""
    if tokens is not None and tokens.required():
        return
    try:
        loopback = ipaddress.ip_address(_client(request.scope)).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise HTTPException(403, "without access tokens, /admin/reload answers loopback "
                                 "clients only: create a token (uit serve token create "
                                 "NAME)")  # fmt: skip


def _token_name(request: Request) -> str | None:
    return request.scope.get("state", {}).get("token")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def page_policy(page: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style by their hashes,
    its API and images from its own origin (images of a token's page as blob: URLs), and
    nothing else."""

    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        sums = [base64.b64encode(hashlib.sha256(part.encode()).digest()).decode() for part in found]
        return " ".join(f"'sha256-{digest}'" for digest in sums)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")  # fmt: skip


def _requested_name(request: Request, name: str) -> str:
    """The name exactly as the client encoded it: the server decodes the path as UTF-8, which
    loses a file name's bytes that are not (``image_url`` sends them percent-encoded)."""
    raw = request.scope.get("raw_path")
    if not raw or not raw.startswith(b"/images/"):
        return name
    return os.fsdecode(unquote_to_bytes(raw[len(b"/images/") :]))


def _image_response(searcher: Searcher, name: str, method: str,
                    served: Callable[[], None] = lambda: None) -> Response:  # fmt: skip
    """The file of the gallery image ``name``, opened now: one deleted, replaced by a folder, a
    FIFO or a device, or by a link out of the gallery since the server started is not found.
    ``served`` is called (the audit log) once it is open, before a GET sends it."""
    path = searcher.files.get(name)
    if path is None:
        raise HTTPException(404, f"{shown(name)!r} is not an image of this gallery")
    try:
        handle = open_image_file(path, searcher.root)
    except ImageError as error:
        log.warning("not serving %s: %s", shown(name), error)
        detail = f"{shown(name)!r} is not an image of this gallery any more: it was deleted, " \
            "moved or replaced since uit serve started"  # fmt: skip
        raise HTTPException(404, detail) from None
    size = os.fstat(handle.fileno()).st_size
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"content-length": str(size)}
    if method == "HEAD":
        handle.close()
        return Response(headers=headers, media_type=media)
    try:
        served()
    except BaseException:
        handle.close()
        raise
    return StreamingResponse(_blocks(handle, size), media_type=media, headers=headers)


def _blocks(handle: IO[bytes], size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``handle`` (its size when opened), then it is closed."""
    with handle:
        while size > 0:
            block = handle.read(min(size, 1 << 16))
            if not block:
                return
            size -= len(block)
            yield block


def _problem(error: Any) -> str:
    """One validation error as ``field: message`` (pydantic's "Value error, " prefix off)."""
    kind, where = error.get("type"), ".".join(str(part) for part in error["loc"][1:]) or "body"
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        return f"body: not valid JSON ({reason} at character {error['loc'][-1]}); send a JSON " \
            f"object such as {EXAMPLE}"  # fmt: skip
    if where == "body" and kind in ("missing", "model_attributes_type", "dict_type"):
        return f"body: expected a JSON object such as {EXAMPLE}, sent with Content-Type: " \
            "application/json"  # fmt: skip
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def image_url(name: str) -> str:
    """The path of an image: every byte of its name percent-encoded that is not plain, so the
    name comes back exactly (a newline, bytes that are not UTF-8)."""
    return "/images/" + quote(os.fsencode(name))


def page_info(searcher: Searcher) -> dict[str, Any]:
    gallery = searcher.gallery
    return {"model": searcher.public_model, "gallery": gallery.source,
            "images": len(gallery.paths), "index": searcher.index.kind,
            "benchmark": gallery.pids is not None, "max_k": MAX_K}  # fmt: skip


def render_page(info: dict[str, Any]) -> str:
    from uit.app.serve_page import PAGE

    data = json.dumps(info).replace("<", "\\u003c")  # safe inside <script>
    return PAGE.replace("{{TITLE}}", html.escape(f"uit serve: {info['gallery']}")).replace(
        "{{INFO}}", data
    )


class Guard:
    """ASGI middleware in front of the application.

    Before: the Host header must name the loopback (unless ``expose``), the body must be at most
    ``MAX_BODY`` bytes and arrive within ``timeout`` seconds; while ``tokens`` holds any, every
    route but the page and ``/healthz`` wants ``Authorization: Bearer TOKEN`` (an address that
    sent ``FAILURES`` wrong ones in a minute waits, 429), and each token (each address, without
    tokens) gets ``rate_limit`` requests a minute (429 and ``Retry-After`` beyond). After: every
    answer carries ``ANSWER_HEADERS`` (an endpoint's own kept), is counted in ``metrics`` and
    written to the access log."""

    def __init__(self, app: ASGIApp, expose: bool = False, timeout: float = REQUEST_TIMEOUT,
                 tokens: TokenCheck | None = None, rate_limit: int = RATE_LIMIT,
                 metrics: ServeMetrics | None = None) -> None:  # fmt: skip
        self.app, self.expose, self.timeout = app, expose, timeout
        self.tokens, self.metrics = tokens, metrics
        self.rate, self.failures = RateLimit(rate_limit), Failures()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), [500]
        send = _with_headers(send, status)
        try:
            await self._guarded(scope, receive, send)
        finally:
            self._record(scope, status[0], time.perf_counter() - began)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        refused = self._refusal(headers) or self._admission(scope, headers)
        if refused is not None:
            await _answer(scope, receive, send, *refused)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _bounded(receive, self.timeout), sending)
        except HTTPException as error:  # from the body's receive, outside an endpoint
            if started:
                raise
            await _answer(scope, receive, send, error.status_code, str(error.detail))

    def _refusal(self, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host")
        if not self.expose and not is_loopback_name(host):
            return 400, (f"the Host header {host!r} is not a loopback name (localhost, "
                         "127.0.0.1, [::1]): this server answers only pages opened on this "
                         "machine; start it with --expose to serve other names")  # fmt: skip
        length = headers.get("content-length", "").strip()  # h11 refuses one that is no number
        if length.isdigit() and int(length) > MAX_BODY:
            return 413, (f"the request body is {int(length):,} bytes, over the limit of "
                         f"{MAX_BODY:,}; a search is a JSON object such as {EXAMPLE}")  # fmt: skip
        return None

    def _admission(self, scope: Scope, headers: Headers) -> tuple[int, str, dict[str, str]] | None:
        """The token's check and the rate limit; the token's name goes to ``scope["state"]``."""
        if scope["path"] in OPEN_ROUTES or scope["method"] == "OPTIONS":
            return None
        address, name = _client(scope), None
        if self.tokens is not None and self.tokens.required():
            wait = self.failures.wait(address)
            if wait > 0:
                after = retry_after(wait)
                return 429, f"too many wrong tokens from {address}: wait {after} s", {
                    "retry-after": after}  # fmt: skip
            scheme, _, secret = headers.get("authorization", "").partition(" ")
            name = self.tokens.name_of(secret.strip()) if scheme.lower() == "bearer" else None
            if name is None:
                self.failures.failed(address)
                return 401, ("a valid token is required: send the header Authorization: "
                             "Bearer TOKEN (uit serve token create NAME makes one)"), {
                    "www-authenticate": "Bearer"}  # fmt: skip
            scope.setdefault("state", {})["token"] = name
        wait = self.rate.wait(name or address)
        if wait > 0:
            after = retry_after(wait)
            return 429, (f"over the limit of {self.rate.per_minute} requests a minute; retry "
                         f"in {after} s"), {"retry-after": after}  # fmt: skip
        return None

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = _route_label(scope)
        if self.metrics is not None:
            self.metrics.observe(route, scope["method"], status, seconds)
        log_access({"time": now_iso(), "client": _client(scope), "method": scope["method"],
                    "route": route, "status": status, "ms": round(seconds * 1000, 2),
                    "token": scope.get("state", {}).get("token")})  # fmt: skip


def _route_label(scope: Scope) -> str:
    """The route's pattern (never an image's name: metrics' labels stay few)."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return "/images/{name}" if route.path.startswith("/images/") else str(route.path)
    path = scope["path"]
    return "/images/{name}" if path.startswith("/images/") else path if path in ROUTES else "other"


def _with_headers(send: Send, status: list[int]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
            headers = MutableHeaders(scope=message)
            for key, value in ANSWER_HEADERS.items():
                if key not in headers:
                    headers[key] = value
        await send(message)

    return sending


def _bounded(receive: Receive, timeout: float) -> Receive:
    """``receive`` that fails with 413 past ``MAX_BODY`` bytes and 408 past ``timeout`` seconds
    until the body has arrived (then it is passed on untouched: a streaming answer waits on it
    for the client to leave)."""
    deadline = asyncio.get_running_loop().time() + timeout
    size, done = 0, False

    async def receiving() -> Message:
        nonlocal size, done
        if done:
            return await receive()
        left = deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(receive(), max(left, 0.0))
        except TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {timeout:g} s",
                                headers={"connection": "close"}) from None  # fmt: skip
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            raise HTTPException(413, f"the request body is over the limit of {MAX_BODY:,} "
                                     f"bytes; a search request is a JSON object such as {EXAMPLE}",
                                headers={"connection": "close"})  # fmt: skip
        done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receiving


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:  # fmt: skip
    response = JSONResponse({"detail": detail}, status_code=status,
                            headers={"connection": "close", **(headers or {})})  # fmt: skip
    await response(scope, receive, send)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, opened before anything is loaded: a port in use
    fails in a second, not after the whole gallery is encoded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS * 2)
    except socket.gaierror as error:
        raise UitError(f"--host {host}: not an address of this machine ({error.strerror}); "
                       "use 127.0.0.1 or localhost") from None  # fmt: skip
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UitError(
                f"--port {port}: {host}:{port} is already in use (another uit "
                "serve?): stop what listens there, or choose another --port"
            ) from None
        raise UitError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); "
                       "choose another --port (1024 or above) or --host") from None  # fmt: skip


def run_server(app: FastAPI, sock: socket.socket, timeout: float = REQUEST_TIMEOUT) -> None:
    """Serve ``app`` on the listening ``sock`` until Ctrl-C, which then raises
    ``KeyboardInterrupt`` (uvicorn's own ``run`` swallows it, and the command would exit 0)."""
    import uvicorn

    from uit.app.serve_metrics import send_access_log_to_stderr

    send_access_log_to_stderr()  # one JSON line a request, in place of uvicorn's access log
    config = uvicorn.Config(app, log_level="info", http=_headers_in_time(timeout), ws="none",
                            access_log=False,
                            timeout_keep_alive=KEEP_ALIVE, limit_concurrency=MAX_CONNECTIONS,
                            h11_max_incomplete_event_size=MAX_HEADERS,
                            timeout_graceful_shutdown=3)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


def _headers_in_time(timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol, but a connection whose request line and headers have not
    all arrived ``timeout`` seconds after it opened (or after its last answer) is closed:
    uvicorn times out only idle keep-alive connections, so a client sending one header byte a
    second would hold a connection as long as it liked."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadersInTime(H11Protocol):
        late: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.late is not None:
                self.late.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.late is not None:
                self.late.cancel()
            self.late = self.loop.call_later(timeout, self._close_if_waiting)

        def _close_if_waiting(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadersInTime
