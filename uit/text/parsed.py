"""Reading parsed captions (``attributes.parquet``) without loading spaCy: what training needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from uit.core.errors import DataError

ATTRIBUTE_TAG_PREFIXES = ("PRP", "NN", "JJ")  # design §3.3: pronouns, nouns, adjectives


def is_attribute_tag(tag: str) -> bool:
    """True for the Penn tags of attribute words: PRP*, NN*, JJ*."""
    return tag.startswith(ATTRIBUTE_TAG_PREFIXES)


PARSED_FILE = "attributes.parquet"
INFO_FILE = "parse.json"
_WORDS = pl.List(pl.String())
SCHEMA = pl.Schema({"caption_id": pl.Int64(), "tokens": _WORDS, "tags": _WORDS,
                    "attribute_words": _WORDS, "attribute_phrases": _WORDS})  # fmt: skip


@dataclass(frozen=True)
class TaggedWords:
    """A caption's words and their Penn Treebank tags, as ``uit data parse`` wrote them."""

    words: tuple[str, ...]
    tags: tuple[str, ...]

    def attributes_only(self) -> TaggedWords:
        """The words the attribute-keeping augmentation keeps (PRP*, NN*, JJ*), with their tags."""
        kept = [(w, t) for w, t in zip(self.words, self.tags, strict=True) if is_attribute_tag(t)]
        return TaggedWords(tuple(w for w, _ in kept), tuple(t for _, t in kept))


def read_table(path: Path, what: str, command: str) -> pl.DataFrame:
    """Read a Parquet file of a ``what`` folder, or say which command makes it."""
    if not path.is_file():
        raise DataError(f"{path} not found: {path.parent} is not a {what}. Run `{command}` first.")
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None


def read_parsed(parsed_dir: str | Path) -> pl.DataFrame:
    """``attributes.parquet`` of a parsed benchmark, with a clear error when it is absent."""
    path = Path(parsed_dir) / PARSED_FILE
    parsed = read_table(path, "parsed benchmark", "uit data parse PREPARED_DIR --out PARSED_DIR")
    if parsed.schema != SCHEMA:
        raise DataError(f"{path}: expected the columns {dict(SCHEMA)}, found {dict(parsed.schema)}")
    return parsed


def read_attribute_words(parsed_dir: str | Path) -> dict[int, list[str]]:
    """caption_id -> its attribute words, as the training dataset's augmentation takes them."""
    parsed = read_parsed(parsed_dir)
    ids, words = parsed["caption_id"].to_list(), parsed["attribute_words"].to_list()
    return dict(zip(ids, words, strict=True))


def read_tagged_words(parsed_dir: str | Path) -> dict[int, TaggedWords]:
    """caption_id -> its words and tags, as the training dataset's token masking takes them."""
    parsed = read_parsed(parsed_dir)
    rows = zip(parsed["caption_id"].to_list(), parsed["tokens"].to_list(),
               parsed["tags"].to_list(), strict=True)  # fmt: skip
    return {cid: TaggedWords(tuple(words), tuple(tags)) for cid, words, tags in rows}
