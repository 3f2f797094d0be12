"""``uit serve``: one loaded model and gallery behind a web page and a JSON API (FastAPI).

The model, the gallery embeddings and the index are loaded once (``load_searcher``); each
request encodes its sentence, asks the index, and answers. Routes: ``GET /`` the page (one
self-contained HTML file: inline style and script, nothing fetched from elsewhere), ``POST
/search``, ``GET /healthz``, ``GET /examples`` (captions of a prepared benchmark),
``GET /images/{name}`` (only the gallery's own files, looked up by name, never opened by a path
the client gives), and FastAPI's ``/openapi.json``.
"""

from __future__ import annotations

import html
import ipaddress
import itertools
import json
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator

from uit.core.boundary import PREPARED, reading
from uit.core.errors import UitError

if TYPE_CHECKING:
    from spacy.language import Language

    from uit.core.console import NewBar
    from uit.data.dataset import Tokenizer
    from uit.model.encoder import DualEncoder
    from uit.retrieval.evaluate import EvalOptions
    from uit.retrieval.index import AnnIndex, FlatIndex, IndexKind

MAX_K = 100  # results per page
MAX_RANK = 1000  # offset + k: how deep paging goes
MAX_TEXT = 2000  # characters, as prepared captions


@dataclass(frozen=True)
class Gallery:
    """The images served: where they came from, their names (paths relative to ``root``) and,
    for a prepared benchmark, their identities and the split's captions by identity."""

    source: str
    root: Path
    paths: list[Path]
    names: list[str]
    pids: list[int] | None = None
    captions: dict[str, int] = field(default_factory=dict)  # normalised caption -> pid
    examples: list[str] = field(default_factory=list)  # the captions as written


def normalise(text: str) -> str:
    """What a caption is matched by: lower case, single spaces, no final full stop."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .")


def read_gallery(source: Path, split: str = "test") -> Gallery:
    """A folder of images (searched recursively) or a prepared benchmark's ``split``."""
    from uit.retrieval.search import list_gallery

    paths = list_gallery(source, split)
    if not (source / "images.parquet").is_file():
        names = [p.relative_to(source).as_posix() for p in paths]
        return Gallery(str(source), source, paths, names)
    from uit.data.prepared import read_manifests

    with reading(source, *PREPARED):
        manifests = read_manifests(source).split(split)
    captions = manifests.captions.select("text", "pid").rows()
    return Gallery(f"{source} ({manifests.benchmark} {split})", manifests.imgs_dir, paths,
                   manifests.images["path"].to_list(), manifests.images["pid"].to_list(),
                   {normalise(text): pid for text, pid in captions},
                   [text for text, _ in captions])  # fmt: skip


def describe_model(checkpoint: Path) -> str:
    """One line for the page: the folder, export or checkpoint, and the architecture."""
    from uit.model.checkpoint import read_state

    state = read_state(checkpoint)
    name = state["config"].get("model", {}).get("name", "?")
    if state.get("kind") == "dual-encoder":
        return f"{checkpoint} (export of {state.get('exported_from', '?')}, {name})"
    return f"{checkpoint} (training checkpoint, epoch {state.get('epoch', '?')}, {name})"


@dataclass(frozen=True)
class Segment:
    text: str
    attribute: bool


class Searcher:
    """The loaded model, gallery and index; ``search`` is safe to call from many threads (one
    query at a time: two cores gain nothing from running encoders side by side)."""

    def __init__(self, encoder: DualEncoder, tokenizer: Tokenizer, options: EvalOptions,
                 gallery: Gallery, index: FlatIndex | AnnIndex, nlp: Language,
                 model: str) -> None:  # fmt: skip
        self.encoder, self.tokenizer, self.options = encoder, tokenizer, options
        self.gallery, self.index, self.nlp, self.model = gallery, index, nlp, model
        self.files = dict(zip(gallery.names, gallery.paths, strict=True))
        self.lock = threading.Lock()

    def search(self, text: str, k: int, offset: int = 0) -> list[tuple[int, float]]:
        """(gallery index, score) of ranks ``offset + 1`` to ``offset + k``."""
        from uit.retrieval.evaluate import encode_texts

        with self.lock:
            query = encode_texts(self.encoder, [text], self.tokenizer, self.options)  # (1, D)
            scores, indices = self.index.search(query, offset + k)
        pairs = zip(indices[0].tolist(), scores[0].tolist(), strict=True)
        return list(pairs)[offset:]

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


def load_searcher(
    checkpoint: Path,
    gallery_source: Path,
    *,
    split: str = "test",
    index_kind: IndexKind = "auto",
    cache_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
    progress: NewBar | None = None,
) -> Searcher:
    """Everything a server needs, loaded once: model, gallery embeddings (cached), index."""
    from uit.core.config import ParseConfig
    from uit.parsing.pipeline import build_pipeline
    from uit.retrieval.evaluate import load_for_inference
    from uit.retrieval.index import build_index
    from uit.retrieval.search import EmbeddingCache, checkpoint_digest, gallery_embeddings

    model = describe_model(checkpoint)  # a missing checkpoint fails here, before the gallery
    gallery = read_gallery(gallery_source, split)
    encoder, tokenizer, options = load_for_inference(checkpoint, device, batch_size)
    cache = EmbeddingCache(cache_dir, checkpoint_digest(checkpoint)) if cache_dir else None
    bar = progress("encoding the gallery (cached images are only hashed)",
                   len(gallery.paths)) if progress else None  # fmt: skip
    feats, _ = gallery_embeddings(encoder, gallery.paths, options, cache, bar)
    index = build_index(feats, index_kind, cache_dir, progress)
    nlp, _ = build_pipeline(ParseConfig())
    return Searcher(encoder, tokenizer, options, gallery, index, nlp, model)


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


class SearchRequest(BaseModel):
    text: str = Field(max_length=MAX_TEXT, examples=["a woman in a red coat"])
    k: int = Field(10, ge=1, le=MAX_K, description="Results in this page.")
    offset: int = Field(0, ge=0, le=MAX_RANK - 1, description="Ranks skipped (paging).")

    @field_validator("text")
    @classmethod
    def _not_empty(cls, text: str) -> str:
        if not text.strip():
            raise ValueError('the text is empty: give a sentence, e.g. "a woman in a red coat"')
        return text


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


class SearchResponse(BaseModel):
    text: str
    k: int
    offset: int
    gallery_size: int
    query_pid: int | None = Field(None, description="The identity of a benchmark caption.")
    words: list[Word] = Field(description="The text in pieces, attribute words marked.")
    hits: list[Hit]


def build_app(searcher: Searcher) -> FastAPI:
    """The FastAPI application over a loaded ``searcher``."""
    gallery, info = searcher.gallery, page_info(searcher)
    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; the schema is enough.
    app = FastAPI(title="uit serve", version="1", docs_url=None, redoc_url=None,
                  description=f"Text-to-image person search: {info['model']} on "
                              f"{info['gallery']}.")  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _one_line(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in error.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return render_page(info)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", **info}

    @app.post("/search", response_model=SearchResponse)
    def search(request: SearchRequest) -> SearchResponse:
        """Rank the gallery for ``text``; ranks ``offset + 1`` to ``offset + k``."""
        if request.offset + request.k > MAX_RANK:
            raise HTTPException(422, f"offset + k must be at most {MAX_RANK}")
        query_pid = searcher.query_pid(request.text)
        hits = []
        ranked = searcher.search(request.text, request.k, request.offset)
        for rank, (i, score) in enumerate(ranked, request.offset + 1):
            pid = gallery.pids[i] if gallery.pids is not None else None
            hits.append(Hit(rank=rank, name=gallery.names[i], url=image_url(gallery.names[i]),
                            score=score, pid=pid,
                            correct=None if query_pid is None else pid == query_pid))  # fmt: skip
        words = [Word(text=s.text, attribute=s.attribute) for s in searcher.segments(request.text)]
        return SearchResponse(text=request.text, k=request.k, offset=request.offset,
                              gallery_size=len(gallery.paths), query_pid=query_pid,
                              words=words, hits=hits)  # fmt: skip

    @app.get("/examples")
    def examples(n: int = 5) -> list[str]:
        """Captions of the gallery's benchmark split (none for a folder), drawn at random."""
        return random.sample(gallery.examples, min(max(n, 0), len(gallery.examples), 50))

    @app.get("/images/{name:path}", response_class=FileResponse)
    def image(name: str) -> FileResponse:
        """A gallery image by its name; any other path is not found."""
        path = searcher.files.get(name)
        if path is None:
            raise HTTPException(404, f"{name!r} is not an image of this gallery")
        return FileResponse(path)

    return app


def _problem(error: Any) -> str:
    """One validation error as ``field: message`` (pydantic's "Value error, " prefix off)."""
    where = ".".join(str(part) for part in error["loc"][1:]) or "body"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def image_url(name: str) -> str:
    from urllib.parse import quote

    return "/images/" + quote(name)


def page_info(searcher: Searcher) -> dict[str, Any]:
    gallery = searcher.gallery
    return {"model": searcher.model, "gallery": gallery.source, "images": len(gallery.paths),
            "index": searcher.index.kind, "benchmark": gallery.pids is not None,
            "max_k": MAX_K}  # fmt: skip


def render_page(info: dict[str, Any]) -> str:
    from uit.app.serve_page import PAGE

    data = json.dumps(info).replace("<", "\\u003c")  # safe inside <script>
    return PAGE.replace("{{TITLE}}", html.escape(f"uit serve: {info['gallery']}")).replace(
        "{{INFO}}", data
    )


def run_server(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
