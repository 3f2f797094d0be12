"""How far the synthetic caption grammar is from real annotators' language.

Compares the captions of real CUHK-PEDES annotations (a ``reid_raw.json``-format file, such as
the official validation annotations) with the synthetic benchmarks and the pretraining corpus:
length in words and in CLIP tokens (and how many captions ``model.context_length`` cuts),
sentences per caption, vocabulary (distinct words in the same number of captions), how much of
the real running text the synthetic vocabulary covers, the share of attribute words as the
project's own parser tags them (``parse`` params), and sentence shapes (how captions start,
pronouns, a missing final period). Prints a Markdown table and writes it to ``--out``.

Usage: ``python experiments/caption_gap.py REAL_JSON [--synthetic data/synthetic]
[--corpus data/pretrain] [--out docs/caption-gap.md] [--sample 2000]``. The real file is read,
never copied: its captions stay where they are.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from uit.core.config import load_config
from uit.model.build import build_tokenizer
from uit.parsing.parse import parse_texts
from uit.parsing.pipeline import build_pipeline
from uit.raw.readers import read_benchmark
from uit.text.parsed import is_attribute_tag

WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
PRONOUNS = {"he", "she", "his", "her", "him", "they", "their"}
SYNTHETIC = {"cuhk-pedes": "CUHK-PEDES", "icfg-pedes": "ICFG-PEDES", "rstpreid": "RSTPReid"}


@dataclass(frozen=True)
class Corpus:
    name: str
    captions: list[str]


def read_real(path: Path) -> Corpus:
    """Every caption of a ``reid_raw.json``-format file (a list of records with ``captions``);
    a file that is not one ends the script with a one-line message."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        captions = [str(text).strip() for record in records for text in record["captions"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(
            f"{path}: not a readable reid_raw.json-format file, a JSON list of records each with "
            f"a 'captions' list ({type(error).__name__}: {error})"
        ) from None
    return Corpus(f"real CUHK-PEDES ({path.stem})", [c for c in captions if c])


def read_synthetic(root: Path) -> list[Corpus]:
    found = []
    for name, folder in SYNTHETIC.items():
        if (root / folder).is_dir():
            records = read_benchmark(name, root).records
            found.append(Corpus(f"synthetic {folder}", [c for r in records for c in r.captions]))
    return found


def read_corpus(folder: Path) -> list[Corpus]:
    path = folder / "captions.parquet"
    if not path.is_file():
        return []
    import polars as pl

    return [Corpus("pretraining corpus", pl.read_parquet(path)["text"].to_list())]


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def sample(captions: Sequence[str], count: int, seed: int = 0) -> list[str]:
    if len(captions) <= count:
        return list(captions)
    return random.Random(seed).sample(list(captions), count)


def describe(
    corpus: Corpus,
    real_vocabulary: Counter[str],
    count: int,
    tokens: Callable[[str], int],
    attribute_share: Callable[[list[str]], float],
    context_length: int,
) -> dict[str, str]:
    """One column of the table."""
    texts = sample(corpus.captions, count)
    lengths = [len(words(t)) for t in texts]
    token_counts = [tokens(t) for t in texts]
    deciles = statistics.quantiles(lengths, n=10)
    vocabulary = Counter(w for t in texts for w in words(t))
    everything = {w for t in corpus.captions for w in words(t)}
    covered = sum(n for w, n in real_vocabulary.items() if w in everything)
    starts = Counter((words(t) or [""])[0] for t in texts)
    common = [(w, n) for w, n in starts.most_common(3) if w and n >= len(texts) / 100]
    first = ", ".join(f"{w} {100 * n / len(texts):.0f}%" for w, n in common)
    pronoun = sum(bool(PRONOUNS & set(words(t))) for t in texts)
    no_period = sum(not t.rstrip().endswith((".", "!", "?")) for t in texts)
    sentences = [max(1, len(SENTENCE_END.findall(t.strip() + " "))) for t in texts]
    return {
        "captions (all / compared)": f"{len(corpus.captions):,} / {len(texts):,}",
        "words per caption: mean (10th-90th pct)": (
            f"{statistics.mean(lengths):.1f} ({deciles[0]:.0f}-{deciles[-1]:.0f})"
        ),
        "CLIP tokens per caption: mean": f"{statistics.mean(token_counts):.1f}",
        f"cut by context_length {context_length}": (
            f"{100 * sum(n > context_length for n in token_counts) / len(texts):.1f}%"
        ),
        "sentences per caption": f"{statistics.mean(sentences):.2f}",
        "distinct words in the compared captions": f"{len(vocabulary):,}",
        "real running words its vocabulary covers": (
            f"{100 * covered / max(1, sum(real_vocabulary.values())):.1f}%"
        ),
        "attribute words (nouns, adjectives) of all words": f"{100 * attribute_share(texts):.1f}%",
        "most common first words": first,
        "captions with a pronoun (he, she, his, her, ...)": f"{100 * pronoun / len(texts):.0f}%",
        "captions without a final period": f"{100 * no_period / len(texts):.0f}%",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("real", type=Path, help="a reid_raw.json-format file of real captions")
    parser.add_argument("--synthetic", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--corpus", type=Path, default=Path("data/pretrain"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--sample", type=int, default=2000, help="captions compared per corpus")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cfg = load_config(args.params, [])
    nlp, backend = build_pipeline(cfg.parse)
    tokenizer = build_tokenizer(cfg.model)
    context = cfg.model.context_length

    def tokens(text: str) -> int:  # SOT and EOT included, before any cut
        return len(tokenizer.encode(text)) + 2  # type: ignore[attr-defined]

    def attribute_share(texts: list[str]) -> float:
        tags = [tag for p in parse_texts(nlp, texts) for tag in p.tags if tag[:1].isalpha()]
        return sum(is_attribute_tag(tag) for tag in tags) / max(1, len(tags))

    real = read_real(args.real)
    corpora = [real, *read_synthetic(args.synthetic), *read_corpus(args.corpus)]
    real_vocabulary = Counter(w for t in real.captions for w in words(t))
    columns = [
        describe(c, real_vocabulary, args.sample, tokens, attribute_share, context) for c in corpora
    ]
    lines = [
        "| | " + " | ".join(c.name for c in corpora) + " |",
        "|---|" + "---|" * len(corpora),
    ]
    for row in columns[0]:
        lines.append(f"| {row} | " + " | ".join(column[row] for column in columns) + " |")
    table = "\n".join(lines)
    print(f"parsed with the {backend.name} pipeline {backend.pipeline} {backend.pipeline_version}")
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
