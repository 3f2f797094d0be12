"""The ``uit`` command line: the front door to data, training, evaluation and search.

Every command turns a library ``UitError`` into a one-paragraph message and exit code 1; no
traceback reaches the user for bad input.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.table import Table

from uit.config import BENCHMARKS, BenchmarkName, ImageCheck, SynthSize
from uit.console import ProgressReporter, adder, console, err_console, progress_bars
from uit.errors import UitError

app = typer.Typer(help="Text-to-image person retrieval with UIT.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare and inspect benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
F = TypeVar("F", bound=Callable[..., Any])


class Benchmark(StrEnum):
    """Benchmark names for options that repeat (typer takes no lists of Literals)."""

    cuhk_pedes = "cuhk-pedes"
    icfg_pedes = "icfg-pedes"
    rstpreid = "rstpreid"


def friendly_errors(command: F) -> F:
    """Print a ``UitError`` as a message and exit 1 instead of showing a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UitError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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
    ] = "demo",
    benchmark: Annotated[
        list[Benchmark] | None, typer.Option(help="Only these (repeatable).")
    ] = None,
    image_height: int = 128,
    image_width: int = 64,
    workers: Annotated[int, typer.Option(help="Processes drawing images.")] = 1,
    contact_sheet: Annotated[
        Path | None, typer.Option(help="Also save a PNG of samples here.")
    ] = None,
) -> None:
    """Generate the synthetic benchmark in the exact formats of the three real ones."""
    from uit.config import parse_config
    from uit.data.formats import get_spec
    from uit.data.synth import synthesize

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
            progress=lambda name, total: add(f"drawing {name}", total),
        )
    for name, splits in summaries.items():
        console.print(_split_table(f"{get_spec(name).title} (synthetic, {size})", splits))
    console.print(f"wrote {', '.join(names)} under {root} in {time.perf_counter() - start:.1f} s")
    if contact_sheet is not None:
        _save_contact_sheet(root, names, contact_sheet)


def _save_contact_sheet(root: Path, names: tuple[str, ...], out: Path) -> None:
    import io

    from uit.data.synth.sheet import synthetic_contact_sheet
    from uit.io import atomic_write_bytes

    buffer = io.BytesIO()
    synthetic_contact_sheet(root, names).save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(out, buffer.getvalue())
    console.print(f"contact sheet: {out}")


@data_app.command("prepare")
@friendly_errors
def data_prepare(
    benchmark: Annotated[BenchmarkName, typer.Argument(help="Which format to read.")],
    root: Annotated[Path, typer.Option(help="Folder holding the benchmark's folder.")],
    out: Annotated[Path, typer.Option(help="Folder for the manifests and stats.json.")],
    drop_missing: Annotated[
        bool, typer.Option(help="Drop (and count) missing or corrupt images instead of failing.")
    ] = False,
    check_images: Annotated[ImageCheck, typer.Option(help="decode opens every image.")] = "decode",
) -> None:
    """Validate a benchmark and write its Parquet manifests and stats.json."""
    from uit.data.prepare import prepare_benchmark

    with progress_bars() as progress:
        add = adder(progress)
        stats = prepare_benchmark(
            benchmark, root, out, drop_missing=drop_missing, check_images=check_images,
            progress=lambda total: add("checking images", total),
        )  # fmt: skip
    _print_stats(stats)
    console.print(f"wrote {out}")


def _print_stats(stats: dict[str, Any]) -> None:
    from uit.data.formats import get_spec

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
    from uit.data.prepare import read_stats

    stats = read_stats(prepared)
    if as_json:
        sys.stdout.write(json.dumps(stats, indent=2) + "\n")
    else:
        _print_stats(stats)


@data_app.command("parse")
@friendly_errors
def data_parse(
    prepared: Annotated[Path, typer.Argument(help="A folder written by `uit data prepare`.")],
    out: Annotated[Path, typer.Option(help="Folder for attributes.parquet and parse.json.")],
    backend: Annotated[
        Literal["auto", "builtin", "trained"],
        typer.Option(help="auto: the trained pipeline when installed, else the built-in one."),
    ] = "auto",
    trained_model: Annotated[
        str, typer.Option(help="spaCy pipeline (package or folder) of the trained backend.")
    ] = "en_core_web_sm",
    batch_size: Annotated[int, typer.Option(help="Captions per nlp.pipe batch.")] = 1000,
) -> None:
    """Tag every caption with spaCy and write its attribute words and phrases."""
    from uit.config import parse_config
    from uit.text.parse import parse_benchmark

    options = {"backend": backend, "trained_model": trained_model, "batch_size": batch_size}
    cfg = parse_config({"parse": options}, source="options").parse
    start = time.perf_counter()
    with progress_bars() as progress:
        add = adder(progress)
        info = parse_benchmark(
            prepared, out, cfg, progress=lambda total: add("parsing captions", total)
        )
    seconds = time.perf_counter() - start
    table = Table(title=f"{info['pipeline']} {info['pipeline_version']} ({info['backend']}, "
                  f"spaCy {info['spacy_version']})")  # fmt: skip
    table.add_column("count")
    table.add_column("value", justify="right")
    for key, value in info["counts"].items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    console.print(table)
    console.print(f"wrote {out} in {seconds:.1f} s")


@app.command()
@friendly_errors
def train(
    benchmark: Annotated[BenchmarkName, typer.Option(help="Which benchmark to train on.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: section.key=value (repeatable).")
    ] = None,
    params: Annotated[Path, typer.Option(help="The params file.")] = Path("params.yaml"),
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder [data/prepared/BENCHMARK].")
    ] = None,
    parsed: Annotated[
        Path | None, typer.Option(help="Parsed folder [data/parsed/BENCHMARK].")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder [runs/adhoc/BENCHMARK].")] = None,
) -> None:
    """Train (or resume) a model on one benchmark with params.yaml plus overrides."""
    from uit.config import load_config
    from uit.runs import train_benchmark

    cfg = load_config(params, set_ or [])
    out = out or Path("runs/adhoc") / benchmark
    with progress_bars() as progress:
        result = train_benchmark(
            cfg,
            prepared or Path("data/prepared") / benchmark,
            out,
            parsed_dir=parsed or Path("data/parsed") / benchmark,
            reporter=ProgressReporter(progress),
        )
    console.print(f"best epoch {result.best_epoch} {result.best}; checkpoints in {out}/checkpoints")


@app.command()
@friendly_errors
def evaluate(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint folder (e.g. runs/B/checkpoints/best).")
    ],
    prepared: Annotated[
        Path, typer.Argument(help="A prepared benchmark (any: cross-domain works).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and top_k.parquet.")],
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: int = 256,
) -> None:
    """Text-to-image (and image-to-text) retrieval metrics of a checkpoint on a split."""
    from uit.runs import evaluate_checkpoint

    with progress_bars() as progress:
        metrics = evaluate_checkpoint(
            checkpoint,
            prepared,
            out,
            split=split,
            device=device,
            batch_size=batch_size,
            progress=adder(progress),
        )
    table = Table(title=f"{metrics['benchmark']} {split}: {checkpoint}")
    for column in ("direction", "R1", "R5", "R10", "mAP", "mINP"):
        table.add_column(column, justify="right")
    for direction in ("t2i", "i2t"):
        row = metrics[direction]
        table.add_row(
            direction,
            *(f"{row[k]:.2f}" if k in row else "-" for k in ("R1", "R5", "R10", "mAP", "mINP")),
        )
    console.print(table)
    console.print(f"wrote {out}")


@app.command()
@friendly_errors
def profile(
    name: Annotated[str, typer.Argument(help="demo (synthetic, CPU) or paper (real data, GPU).")],
    params: Annotated[Path, typer.Option(help="The params file to switch.")] = Path("params.yaml"),
    data_root: Annotated[
        str | None, typer.Option(help="Where the real benchmarks are (sets data.root).")
    ] = None,
    profiles: Annotated[Path, typer.Option(help="Folder of profiles.")] = Path("profiles"),
) -> None:
    """Switch params.yaml to a profile (comments and other keys are kept)."""
    from uit.profiles import apply_profile

    overrides = {"data.root": data_root} if data_root else {}
    changed = apply_profile(params, profiles / f"{name}.yaml", overrides)
    console.print(f"{params}: profile {name}; {len(changed)} values changed")
    for key in changed:
        console.print(f"  {key}")
    console.print("Then `dvc repro` (or `uit run`) re-runs what these values affect.")


@app.command("run")
@friendly_errors
def run_pipeline(
    benchmark: Annotated[
        list[Benchmark] | None, typer.Option(help="Benchmarks to run [all three].")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override section.key=value; runs as a DVC experiment."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the DVC experiment.")] = None,
    project: Annotated[Path, typer.Option(help="The project (git + DVC) folder.")] = Path("."),
) -> None:
    """Run the pipeline flow (Prefect): preprocess, train and evaluate, report."""
    import os

    project = project.resolve()
    if not (project / "dvc.yaml").is_file():
        raise UitError(f"{project} has no dvc.yaml: run `uit run` in the project folder")
    # Prefect's temporary server keeps its database under the project, not in the home folder.
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    from flows.pipeline import DvcError, pipeline

    names = [b.value for b in benchmark] if benchmark else None
    started = time.perf_counter()
    try:
        html = pipeline(names, set_ or None, name, str(project))
    except DvcError as error:
        raise UitError(str(error)) from None
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    console.print(f"\nPipeline done in {int(minutes)} min {seconds:.0f} s.")
    console.print(f"Report: {html} (and report.md beside it)")
    console.print("Metrics: `dvc metrics show`; experiments: `dvc exp show`; curves: `uit report`")


def main() -> None:
    app()
