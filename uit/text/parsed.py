"""Reading parsed captions (``attributes.parquet``) without loading spaCy: what training needs."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from uit.errors import DataError

PARSED_FILE = "attributes.parquet"
INFO_FILE = "parse.json"
_WORDS = pl.List(pl.String())
SCHEMA = pl.Schema({"caption_id": pl.Int64(), "tokens": _WORDS, "tags": _WORDS,
                    "attribute_words": _WORDS, "attribute_phrases": _WORDS})  # fmt: skip


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
