"""Stage ``parse`` (design §3.3): prepared captions -> tokens, tags, attribute words and phrases.

``attributes.parquet``: one row per caption, joinable on ``caption_id`` with the prepared
``captions.parquet``; list columns ``tokens``, ``tags`` (Penn Treebank), ``attribute_words``
(tokens tagged PRP*, NN*, JJ*) and ``attribute_phrases`` (adjectives with their noun: "long black
hair"). ``parse.json``: which spaCy backend produced it, and counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from spacy.language import Language
from spacy.tokens import Doc

from uit.core.config import ParseConfig
from uit.core.errors import DataError
from uit.core.io import atomic_write_json, replaced_dir
from uit.data.prepared import CAPTIONS_FILE, MAX_CAPTION_CHARS
from uit.parsing.pipeline import Backend, build_pipeline
from uit.text.parsed import INFO_FILE, PARSED_FILE, SCHEMA, is_attribute_tag, read_table

if TYPE_CHECKING:
    from uit.core.console import Advance, NewBar


@dataclass(frozen=True)
class ParsedCaption:
    tokens: list[str]
    tags: list[str]
    attribute_words: list[str]
    attribute_phrases: list[str]


def attribute_phrases(doc: Doc, tags: Sequence[str] | None = None) -> list[str]:
    """Each run of adjectives (JJ*, "and"/"or" between two of them) ending in nouns (NN*).

    "a short-sleeved red t-shirt and long black hair" -> ["short-sleeved red t-shirt",
    "long black hair"]. The text is the caption's own, so split hyphens ("t - shirt" from a
    trained pipeline) read as written. ``tags``: the doc's tags when already at hand.
    """
    tags = [token.tag_ for token in doc] if tags is None else tags
    phrases: list[str] = []
    i = 0
    while i < len(tags):
        end = _adjectives_end(tags, i)
        nouns_end = _run_end(tags, end, "NN")
        if end > i and nouns_end > end:
            phrases.append(doc[i:nouns_end].text)
            i = nouns_end
        else:
            i = max(end, i + 1)
    return phrases


def _run_end(tags: Sequence[str], start: int, prefix: str) -> int:
    """End of the run of ``prefix`` tags from ``start``; a hyphen inside a run joins it."""
    end = start
    while end < len(tags) and (
        tags[end].startswith(prefix)
        or (tags[end] == "HYPH" and end > start and end + 1 < len(tags)
            and tags[end + 1].startswith(prefix))
    ):  # fmt: skip
        end += 1
    return end


def _adjectives_end(tags: Sequence[str], start: int) -> int:
    end = _run_end(tags, start, "JJ")
    while end > start and end + 1 < len(tags) and tags[end] == "CC" and tags[end + 1][:2] == "JJ":
        end = _run_end(tags, end + 1, "JJ")
    return end


def parse_doc(doc: Doc) -> ParsedCaption:
    tokens: list[str] = []
    tags: list[str] = []
    for token in doc:  # one pass: each step through a Doc builds Token objects
        tokens.append(token.text)
        tags.append(token.tag_)
    words = [text for text, tag in zip(tokens, tags, strict=True) if is_attribute_tag(tag)]
    return ParsedCaption(tokens, tags, words, attribute_phrases(doc, tags))


def parse_texts(
    nlp: Language, texts: Iterable[str], batch_size: int = 1000, progress: Advance | None = None
) -> Iterator[ParsedCaption]:
    """Parse with ``nlp.pipe``; ``progress`` is advanced once per batch."""
    done = 0
    for done, doc in enumerate(nlp.pipe(texts, batch_size=batch_size), start=1):
        yield parse_doc(doc)
        if progress is not None and done % batch_size == 0:
            progress(batch_size)
    if progress is not None and done % batch_size:
        progress(done % batch_size)


def read_captions(prepared_dir: str | Path) -> pl.DataFrame:
    """``caption_id`` and ``text`` of a prepared benchmark, checked."""
    path = Path(prepared_dir) / CAPTIONS_FILE
    command = "uit data prepare --benchmark BENCHMARK --root RAW_ROOT --out OUT_DIR"
    captions = read_table(path, "prepared benchmark", command)
    for column, dtype in (("caption_id", pl.Int64), ("text", pl.String)):
        if captions.schema.get(column) != dtype:
            raise DataError(f"{path}: column {column!r} of type {dtype} is missing")
    missing = captions.filter(pl.col("text").is_null())
    if missing.height:
        raise DataError(f"{path}: caption_id {missing['caption_id'][0]} has no text")
    long = captions.filter(pl.col("text").str.len_chars() > MAX_CAPTION_CHARS)
    if long.height:
        raise DataError(
            f"{path}: {long.height} caption(s) longer than {MAX_CAPTION_CHARS:,} characters "
            f"(caption_id {long['caption_id'][0]} first); prepare drops those: re-run "
            f"`{command}`"
        )
    return captions.select("caption_id", "text")


def parse_captions(
    nlp: Language, captions: pl.DataFrame, batch_size: int = 1000, progress: Advance | None = None
) -> pl.DataFrame:
    """The parsed table (``SCHEMA``) of a ``caption_id``, ``text`` table, in its order."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA}
    columns["caption_id"] = captions["caption_id"].to_list()
    for parsed in parse_texts(nlp, captions["text"].to_list(), batch_size, progress):
        columns["tokens"].append(parsed.tokens)
        columns["tags"].append(parsed.tags)
        columns["attribute_words"].append(parsed.attribute_words)
        columns["attribute_phrases"].append(parsed.attribute_phrases)
    return pl.DataFrame(columns, schema=SCHEMA)


def describe(parsed: pl.DataFrame, backend: Backend, source: str) -> dict[str, Any]:
    """The ``parse.json`` record: backend and counts."""
    words = parsed["attribute_words"].list.len()
    return {
        **backend.to_dict(),
        "source": source,
        "counts": {
            "captions": parsed.height,
            "tokens": int(parsed["tokens"].list.len().sum()),
            "attribute_words": int(words.sum()),
            "attribute_phrases": int(parsed["attribute_phrases"].list.len().sum()),
            "captions_without_attribute_words": int((words == 0).sum()),
        },
    }


def write_parsed(parsed: pl.DataFrame, info: dict[str, Any], out_dir: str | Path) -> None:
    """Replace ``out_dir`` with a folder of both files: readers see both old or both new."""
    with replaced_dir(out_dir, (PARSED_FILE, INFO_FILE)) as tmp:
        parsed.write_parquet(tmp / PARSED_FILE)
        atomic_write_json(tmp / INFO_FILE, info)


def parse_benchmark(
    prepared_dir: str | Path,
    out_dir: str | Path,
    cfg: ParseConfig,
    *,
    progress: NewBar | None = None,
) -> dict[str, Any]:
    """Parse every caption of a prepared benchmark, write the two files, return ``parse.json``.

    ``progress`` (``uit.core.console.NewBar``) shows the captions being parsed.
    """
    captions = read_captions(prepared_dir)
    nlp, backend = build_pipeline(cfg)
    label = f"parsing {Path(prepared_dir).name} captions"
    advance = progress(label, captions.height) if progress is not None else None
    parsed = parse_captions(nlp, captions, cfg.batch_size, advance)
    info = describe(parsed, backend, str(Path(prepared_dir) / CAPTIONS_FILE))
    write_parsed(parsed, info, out_dir)
    return info
