"""``uit synth`` and ``uit data prepare | stats | parse``: the benchmarks, made and read."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from uit.app.cli.base import (
    IMAGES,
    app,
    benchmark_option,
    data_app,
    default,
    friendly_errors,
    image_bytes,
)
from uit.core.config import (
    BENCHMARKS,
    Benchmark,
    DataConfig,
    ImageCheck,
    ParseBackend,
    ParseConfig,
    SynthConfig,
    SynthSize,
)
from uit.core.console import adder, console, progress_bars


def _split_table(title: str, splits: dict[str, dict[str, int]]) -> Table:
    table = Table(title=title)
    for column in ("split", "identities", "images", "captions"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in splits.items():
        table.add_row(split, *(f"{counts[k]:,}" for k in ("identities", "images", "captions")))
    return table


@app.command()
@friendly_errors
def synth(
    root: Annotated[
        Path, typer.Option(help="Folder to write CUHK-PEDES/, ICFG-PEDES/, RSTPReid/ into.")
    ],
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    size: Annotated[
        SynthSize, typer.Option(help="tiny is for tests; demo fits make demo.")
    ] = default(SynthConfig, "size"),
    benchmark: Annotated[
        list[Benchmark] | None, benchmark_option("Only this benchmark", "all")
    ] = None,
    image_height: int = default(SynthConfig, "image_height"),
    image_width: int = default(SynthConfig, "image_width"),
    workers: Annotated[int, typer.Option(min=1, help="Processes drawing images.")] = 1,
    contact_sheet: Annotated[
        Path | None, typer.Option(help="Also save a PNG of samples here.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --contact-sheet file.")
    ] = False,
) -> None:
    """Generate the synthetic benchmark in the exact formats of the three real ones.

    A benchmark folder under ROOT is replaced only if this command wrote it; a real benchmark
    (or any folder holding other files) is refused."""
    from uit.core.config import parse_config
    from uit.core.io import check_new_file
    from uit.raw.formats import get_spec
    from uit.synth.generate import synthesize

    if contact_sheet is not None:
        check_new_file(contact_sheet, "--contact-sheet", overwrite=overwrite, suffixes=IMAGES)
    names = tuple(b.value for b in benchmark) if benchmark else BENCHMARKS
    options = {"seed": seed, "size": size, "image_height": image_height, "image_width": image_width}
    cfg = parse_config({"synth": options}, source="options").synth
    start = time.perf_counter()
    with progress_bars() as progress:
        add = adder(progress)
        summaries = synthesize(
            root,
            cfg,
            names,
            workers=workers,
            progress=add,
        )
    for name, splits in summaries.items():
        console.print(_split_table(f"{get_spec(name).title} (synthetic, {size})", splits))
    console.print(f"wrote {', '.join(names)} under {root} in {time.perf_counter() - start:.1f} s")
    if contact_sheet is not None:
        _save_contact_sheet(root, names, contact_sheet)


def _save_contact_sheet(root: Path, names: tuple[str, ...], out: Path) -> None:
    from uit.app.synth_sheet import synthetic_contact_sheet
    from uit.core.io import atomic_write_bytes

    atomic_write_bytes(out, image_bytes(synthetic_contact_sheet(root, names), out))
    console.print(f"contact sheet: {out}")


@data_app.command("prepare")
@friendly_errors
def data_prepare(
    benchmark: Annotated[
        Benchmark,
        benchmark_option("The format to read"),
    ],
    root: Annotated[Path, typer.Option(help="Folder holding the benchmark's folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the manifests and stats.json.")],
    drop_missing: Annotated[
        bool, typer.Option(help="Drop (and count) missing or corrupt images instead of failing.")
    ] = False,
    check_images: Annotated[ImageCheck, typer.Option(help="decode opens every image.")] = default(
        DataConfig, "check_images"
    ),
) -> None:
    """Validate a benchmark and write its Parquet manifests and stats.json."""
    from uit.raw.prepare import prepare_benchmark

    with progress_bars() as progress:
        add = adder(progress)
        stats = prepare_benchmark(
            benchmark.value, root, out, drop_missing=drop_missing, check_images=check_images,
            progress=add,
        )  # fmt: skip
    _print_stats(stats)
    console.print(f"wrote {out}")


def _print_stats(stats: dict[str, Any]) -> None:
    from uit.raw.formats import get_spec

    console.print(_split_table(get_spec(stats["benchmark"]).title, stats["splits"]))
    dropped = {k: v for k, v in stats["dropped"].items() if v}
    notes = {k: v for k, v in stats["notes"].items() if v}
    if dropped:
        console.print(
            "dropped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items())
        )
    if notes:
        console.print("notes: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in notes.items()))


@data_app.command("stats")
@friendly_errors
def data_stats(
    prepared: Annotated[Path, typer.Argument(help="A folder written by `uit data prepare`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as is.")] = False,
) -> None:
    """Identities, images and captions per split of a prepared benchmark."""
    from uit.core.boundary import PREPARED, reading
    from uit.data.prepared import read_stats

    with reading(prepared, *PREPARED):
        stats = read_stats(prepared)
        if as_json:
            sys.stdout.write(json.dumps(stats, indent=2) + "\n")
            return
        _print_stats(stats)  # reads its keys: a stats.json of the wrong shape fails here


@data_app.command("parse")
@friendly_errors
def data_parse(
    prepared: Annotated[Path, typer.Argument(help="A folder written by `uit data prepare`.")],
    out: Annotated[Path, typer.Option(help="Folder for attributes.parquet and parse.json.")],
    backend: Annotated[
        ParseBackend,
        typer.Option(help="auto: the trained pipeline when installed, else the built-in one."),
    ] = default(ParseConfig, "backend"),
    trained_model: Annotated[
        str, typer.Option(help="spaCy pipeline (package or folder) of the trained backend.")
    ] = default(ParseConfig, "trained_model"),
    batch_size: Annotated[int, typer.Option(help="Captions per nlp.pipe batch.")] = default(
        ParseConfig, "batch_size"
    ),
) -> None:
    """Tag every caption with spaCy and write its attribute words and phrases."""
    from uit.core.config import parse_config
    from uit.parsing.parse import parse_benchmark

    options = {"backend": backend, "trained_model": trained_model, "batch_size": batch_size}
    cfg = parse_config({"parse": options}, source="options").parse
    start = time.perf_counter()
    with progress_bars() as progress:
        add = adder(progress)
        info = parse_benchmark(prepared, out, cfg, progress=add)
    seconds = time.perf_counter() - start
    table = Table(title=f"{info['pipeline']} {info['pipeline_version']} ({info['backend']}, "
                  f"spaCy {info['spacy_version']})")  # fmt: skip
    table.add_column("count")
    table.add_column("value", justify="right")
    for key, value in info["counts"].items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    console.print(table)
    console.print(f"wrote {out} in {seconds:.1f} s")
