"""Captions parsed per second by the built-in spaCy pipeline and, when installed, a trained one.

One process, one thread: spaCy's blank tokenizer and the lexicon tagger are single-threaded, so
captions per second is captions per second per core (design §7 asks for at least 5,000 with the
built-in pipeline). Captions per CPU-second (process time) is the same on an idle machine and
stays fair on a busy one. Captions come from the synthetic benchmark's grammar, in the three
benchmarks' styles in turn. Usage: ``python benchmarks/parse.py [--captions N --repeats R]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import spacy

from uit.core.config import ParseConfig
from uit.parsing.parse import parse_texts
from uit.parsing.pipeline import build_pipeline, trained_available
from uit.synth.attributes import sample_identity
from uit.synth.captions import STYLES, write_caption


def make_captions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    styles = list(STYLES.values())
    return [write_caption(sample_identity(rng), styles[i % 3], rng).text for i in range(count)]


def measure(backend: str, texts: list[str], repeats: int, batch_size: int) -> dict[str, float]:
    """Median seconds to parse ``texts`` (tokens, tags, attribute words and phrases)."""
    start = time.perf_counter()
    nlp, _ = build_pipeline(ParseConfig(backend=backend, batch_size=batch_size))  # type: ignore[arg-type]
    build = time.perf_counter() - start
    for _ in parse_texts(nlp, texts[:200], batch_size):  # warm-up: memoised word forms
        pass
    walls, cpus = [], []
    tokens = 0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = sum(len(parsed.tokens) for parsed in parse_texts(nlp, texts, batch_size))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    seconds, cpu_seconds = statistics.median(walls), statistics.median(cpus)
    return {"build": build, "seconds": seconds, "captions_per_s": len(texts) / seconds,
            "captions_per_cpu_s": len(texts) / cpu_seconds,
            "tokens_per_caption": tokens / len(texts)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--captions", type=int, default=30_000)
    parser.add_argument("--trained-captions", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--trained-model", default=ParseConfig().trained_model)
    args = parser.parse_args()
    texts = make_captions(args.captions)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"spaCy {spacy.__version__}; one process on a machine with {cores} cores; "
          f"median of {args.repeats}; batch {args.batch_size}")  # fmt: skip
    print(f"{'pipeline':<28}{'captions':>9}{'tokens/cap':>11}{'build s':>9}{'seconds':>9}"
          f"{'captions/s':>12}{'captions/cpu-s':>16}")  # fmt: skip
    runs = [("builtin", "built-in (uit lexicon)", texts)]
    if trained_available(args.trained_model):
        runs.append(("trained", f"trained ({args.trained_model})", texts[: args.trained_captions]))
    for backend, name, batch in runs:
        run = measure(backend, batch, args.repeats, args.batch_size)
        print(f"{name:<28}{len(batch):>9}{run['tokens_per_caption']:>11.1f}{run['build']:>9.2f}"
              f"{run['seconds']:>9.2f}{run['captions_per_s']:>12,.0f}"
              f"{run['captions_per_cpu_s']:>16,.0f}")  # fmt: skip
    if len(runs) == 1:
        print(f"{'trained (' + args.trained_model + ')':<28}  absent: not installed "
              f"(python -m spacy download {args.trained_model})")  # fmt: skip


if __name__ == "__main__":
    main()
