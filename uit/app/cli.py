"""The ``uit`` command line: the front door to data, training, evaluation and search.

Every command goes through one error boundary (``uit.core.boundary``): bad input of any kind (a
``UitError``, a damaged file, a bad path) becomes a one-paragraph message and exit code 1, Ctrl-C
exit code 130; only a bug shows a traceback, behind a line that says it is one.

Help pages read like click's: arguments in capitals (CHECKPOINT), values by kind (PATH, INTEGER,
TEXT, a|b), switches without a value, and every default shown (``UitCommand``).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

import click
import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table
from typer._click.core import Context  # the click that typer runs on (vendored)
from typer._click.formatting import HelpFormatter
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from uit.core.boundary import report_failure
from uit.core.config import BENCHMARKS, Benchmark, ImageCheck, SynthSize
from uit.core.console import ProgressReporter, adder, console, err_console, progress_bars
from uit.core.errors import UitError

if TYPE_CHECKING:
    from rich.console import Console

    from uit.retrieval.search import Gallery, Hit

F = TypeVar("F", bound=Callable[..., Any])
ONE_OF = f"one of {', '.join(BENCHMARKS)}"  # the names, for the help of --benchmark


def benchmark_option(what: str, default: str | None = None) -> Any:
    """``--benchmark/-b``, shaped the same in every command: one of the registry's names,
    repeatable where ``default`` says what none means."""
    repeat = " (repeatable)" if default is not None else ""
    return typer.Option("--benchmark", "-b", metavar="BENCHMARK", show_default=default or False,
                        help=f"{what}: {ONE_OF}{repeat}.")  # fmt: skip


TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _type_name(param: TyperArgument | TyperOption) -> str:
    """A value's kind as click writes it: PATH, INTEGER, TEXT, or the choices ``[a|b]``."""
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ()) + "]"
    if descriptor.is_path:
        return "PATH"
    kind = get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
    return TYPE_NAMES.get(kind, "TEXT")


class _Argument(TyperArgument):
    """An argument shown as click shows one: ``CHECKPOINT`` (``[OUT]`` when optional)."""

    def display_type_rich(self, ctx: Any) -> str:
        return _type_name(self)

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]


def _readable(params: list[Any]) -> list[Any]:
    """Give ``params`` the labels click would. This typer labels a value by its annotation
    (``<bool>``, ``<list[str]>``, ``{checkpoint}``) unless it has a metavar, and it builds the
    parameters itself (no class to pass), so every command and group sets them here."""
    for param in params:
        if isinstance(param, TyperArgument) and not isinstance(param, _Argument):
            param.__class__ = _Argument
            param.metavar = param.metavar or (param.name or "").upper()
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else _type_name(param)
    return params


RICH_HELP_COLUMNS = 100  # narrower terminals get click's plain help: rich's boxes cut names
_KEEP = "\u2011"  # a non-breaking hyphen: what a hyphen is while click wraps the help


class _HelpFormatter(HelpFormatter):
    """click's help layout, except that a line never breaks at a hyphen: ``icfg-pedes`` and
    ``--no-drop-missing`` stay whole, so they can be read and copied."""

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        start = len(self.buffer)
        super().write_dl([(term, text.replace("-", _KEEP)) for term, text in rows],
                         col_max, col_spacing)  # fmt: skip
        self.buffer[start:] = [piece.replace(_KEEP, "-") for piece in self.buffer[start:]]

    def write_text(self, text: str) -> None:
        start = len(self.buffer)
        super().write_text(text.replace("-", _KEEP))
        self.buffer[start:] = [piece.replace(_KEEP, "-") for piece in self.buffer[start:]]


class _Context(Context):
    formatter_class = _HelpFormatter


def _plain_help(command: TyperCommand | TyperGroup) -> None:
    """Help text without the reStructuredText markup of the docstring it comes from."""
    if command.help:
        command.help = command.help.replace("``", "'")


def _format_help(command: Any, ctx: Any, formatter: Any, rich_help: Callable[..., None]) -> None:
    """Rich's boxed help on a wide terminal; click's plain layout (whole option names, help
    wrapped beside them) where a box would cut names and squeeze the help into a sliver."""
    if shutil.get_terminal_size(fallback=(80, 24)).columns >= RICH_HELP_COLUMNS:
        return rich_help(ctx, formatter)
    mode, command.rich_markup_mode = command.rich_markup_mode, None
    try:
        return rich_help(ctx, formatter)  # typer falls back to click's formatter
    finally:
        command.rich_markup_mode = mode


class UitCommand(TyperCommand):
    context_class = _Context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _format_help(self, ctx, formatter, super().format_help)


class UitGroup(TyperGroup):
    context_class = _Context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _format_help(self, ctx, formatter, super().format_help)


class UitTyper(typer.Typer):
    """A typer app of ``UitCommand``s whose help reads well (see ``_readable``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=UitGroup, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        kwargs.setdefault("cls", UitCommand)
        return super().command(*args, **kwargs)


app = UitTyper(help="Text-to-image person retrieval with UIT.", no_args_is_help=True)
data_app = UitTyper(help="Prepare and inspect benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
weights_app = UitTyper(help="Pretrained and released weights files.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("uit")
        except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
            from uit import __version__ as number
        console.print(f"uit {number}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                     help="Print the version of uit and exit."),
    ] = False,
) -> None:  # fmt: skip
    """Text-to-image person retrieval with UIT."""


def friendly_errors(command: F) -> F:
    """Run ``command`` behind the error boundary: a message and an exit code, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as error:  # the boundary: every failure ends here
            raise typer.Exit(report_failure(error)) from None

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
        list[Benchmark] | None, benchmark_option("Only this benchmark", "all")
    ] = None,
    image_height: int = 128,
    image_width: int = 64,
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


IMAGES = (".png", ".jpg", ".jpeg", ".webp")  # what a picture output may be; its name says which


def image_bytes(image: Any, out: Path) -> bytes:
    """``image`` (PIL) encoded in the format ``out``'s name ends in (one of ``IMAGES``)."""
    buffer = io.BytesIO()
    kind = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[out.suffix.lower()]
    options = {"optimize": True} if kind == "PNG" else {"quality": 90}
    image.convert("RGB").save(buffer, format=kind, **options)
    return buffer.getvalue()


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
    check_images: Annotated[ImageCheck, typer.Option(help="decode opens every image.")] = "decode",
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
        Literal["auto", "builtin", "trained"],
        typer.Option(help="auto: the trained pipeline when installed, else the built-in one."),
    ] = "auto",
    trained_model: Annotated[
        str, typer.Option(help="spaCy pipeline (package or folder) of the trained backend.")
    ] = "en_core_web_sm",
    batch_size: Annotated[int, typer.Option(help="Captions per nlp.pipe batch.")] = 1000,
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


@app.command()
@friendly_errors
def train(
    benchmark: Annotated[
        Benchmark,
        benchmark_option("The benchmark to train on"),
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: section.key=value (repeatable).")
    ] = None,
    params: Annotated[Path, typer.Option(help="The params file.")] = Path("params.yaml"),
    prepared: Annotated[
        Path | None, typer.Option(help="Prepared folder.", show_default="data/prepared/BENCHMARK")
    ] = None,
    parsed: Annotated[
        Path | None, typer.Option(help="Parsed folder.", show_default="data/parsed/BENCHMARK")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder.", show_default="runs/adhoc/BENCHMARK")
    ] = None,
) -> None:
    """Train (or resume) a model on one benchmark with params.yaml plus overrides.

    Under torchrun (``torchrun --nproc-per-node N -m uit.app.cli train ...``) each process
    trains on its share of every batch; ``train.nproc_per_node`` above 1 starts torchrun itself.
    """
    from uit.core.config import load_config
    from uit.training.benchmark import train_benchmark
    from uit.training.distributed import launch, launched_world, should_launch

    cfg = load_config(params, set_ or [])
    out = out or Path("runs/adhoc") / benchmark.value
    prepared = prepared or Path("data/prepared") / benchmark.value
    parsed = parsed or Path("data/parsed") / benchmark.value
    if should_launch(cfg.train.nproc_per_node):
        argv = ["train", "--benchmark", benchmark.value, "--params", str(params),
                "--prepared", str(prepared), "--parsed", str(parsed), "--out", str(out),
                *(arg for value in set_ or [] for arg in ("--set", value))]  # fmt: skip
        launch("uit.app.cli", argv, cfg.train.nproc_per_node)
        return
    main_rank = launched_world().is_main
    with progress_bars() as progress:  # one set of bars: rank 0's
        reporter = ProgressReporter(progress) if main_rank else None
        result = train_benchmark(cfg, prepared, out, parsed_dir=parsed, reporter=reporter)
    if main_rank:
        where = f"checkpoints in {out}/checkpoints"
        console.print(f"best epoch {result.best_epoch} {result.best}; {where}")


@app.command()
@friendly_errors
def pretrain(
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: section.key=value (repeatable).")
    ] = None,
    params: Annotated[Path, typer.Option(help="The params file.")] = Path("params.yaml"),
    corpus: Annotated[Path, typer.Option(help="Folder to draw the pretraining corpus in.")] = Path(
        "runs/adhoc/pretrain-corpus"
    ),
    out: Annotated[
        Path, typer.Option(help="Folder for the run, model.safetensors and model.json.")
    ] = Path("runs/adhoc/pretrain"),
) -> None:
    """Pretrain the dual encoder with CLIP's contrastive loss on a synthetic corpus (params
    ``pretrain``), as the pipeline's pretrain stage does; then fine-tune from it: ``uit train``
    with model.pretrained=OUT/model.safetensors."""
    import os

    from uit.core.config import load_config
    from uit.core.io import atomic_write_json
    from uit.retrieval.metrics import METRICS
    from uit.training.pretrain import WEIGHTS_FILE
    from uit.training.pretrain import pretrain as run_pretraining

    cfg = load_config(params, set_ or [])
    with progress_bars() as progress:
        scores = run_pretraining(cfg, corpus, out, reporter=ProgressReporter(progress),
                                 progress=adder(progress), workers=os.cpu_count() or 1)  # fmt: skip
    atomic_write_json(out / "metrics.json", scores)
    table = Table(title=f"held-out corpus pairs (best epoch {scores['best_epoch']})")
    for column in ("direction", *METRICS):
        table.add_column(column, justify="right")
    for direction in ("t2i", "i2t"):
        row = scores["heldout"][direction]
        table.add_row(direction, *(f"{row[k]:.2f}" if k in row else "-" for k in METRICS))
    console.print(table)
    console.print(f"wrote {out / WEIGHTS_FILE}: fine-tune from it with "
                  f"`uit train --set model.pretrained={out / WEIGHTS_FILE}`")  # fmt: skip


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
    batch_size: Annotated[int, typer.Option(min=1, help="Images or captions per batch.")] = 256,
    parsed: Annotated[
        Path | None,
        typer.Option(help="The benchmark's parsed captions (uit data parse): attribute binding."),
    ] = None,
) -> None:
    """Text-to-image (and image-to-text) retrieval metrics of a checkpoint on a split, with the
    diagnostics of UIT's ideas: attribute binding (with --parsed) and, on synthetic data,
    retrieval among look-alikes."""
    from uit.retrieval.evaluate import evaluate_checkpoint
    from uit.retrieval.metrics import METRICS

    with progress_bars() as progress:
        metrics = evaluate_checkpoint(
            checkpoint,
            prepared,
            out,
            split=split,
            device=device,
            batch_size=batch_size,
            progress=adder(progress),
            parsed_dir=parsed,
        )
    table = Table(title=f"{metrics['benchmark']} {split}: {checkpoint}")
    for column in ("direction", *METRICS):
        table.add_column(column, justify="right")
    for direction in ("t2i", "i2t"):
        row = metrics[direction]
        table.add_row(
            direction,
            *(f"{row[k]:.2f}" if k in row else "-" for k in METRICS),
        )
    console.print(table)
    for diagnostic in diagnostics_tables(metrics):
        console.print(diagnostic)
    console.print(f"wrote {out}")


def diagnostics_tables(metrics: dict[str, Any]) -> list[Table]:
    """``binding``, ``lookalike`` and ``paraphrase`` of an evaluation's metrics as tables,
    those it has."""
    tables = []
    if metrics.get("binding"):
        rows = [(kind, f"{row['pairs']:.0f}", f"{row['score']:.1f}")
                for kind, row in metrics["binding"].items()]  # fmt: skip
        tables.append(_table("attribute binding: true caption above its counterfactual "
                             "(chance 50%)", ("kind", "pairs", "score %"), rows))  # fmt: skip
    if "lookalike" in metrics:
        found = metrics["lookalike"]
        row = (f"{found['R1']:.1f}", f"{found['chance']:.1f}", f"{found['margin']:.3f}",
               f"{found['queries']:.0f}")  # fmt: skip
        title = "look-alikes: each query ranked within its family (synthetic truth)"
        tables.append(_table(title, ("R1 %", "chance %", "margin", "queries"), [row]))
    if metrics.get("paraphrase"):
        rows = [(style, f"{row['R1']:.1f}", f"{row['drop']:+.1f}")
                for style, row in metrics["paraphrase"].items()]  # fmt: skip
        tables.append(_table("paraphrase: the same people described in another benchmark's "
                             "style", ("style", "R1 %", "drop"), rows))  # fmt: skip
    return tables


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
@friendly_errors
def compare(
    benchmark: Annotated[
        list[Benchmark] | None, benchmark_option("Only this benchmark", "all with metrics")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help="Metrics to show, in this order (repeatable).", show_default="R1 R5 R10 mAP mINP"
        ),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(
            help="Sort by a metric (first benchmark) or BENCHMARK/METRIC.",
            show_default="as dvc exp show lists them",
        ),
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Show differences from this experiment (or commit).")
    ] = None,
    group: Annotated[
        bool, typer.Option(help="Experiments that differ only by train.seed: mean ± std.")
    ] = True,
    wide: Annotated[
        bool, typer.Option("--wide", help="Everything in one table, however wide.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a bar chart (PNG) here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --plot file.")] = False,
    project: Annotated[Path, typer.Option(help="The project (git + DVC) folder.")] = Path("."),
) -> None:
    """Every DVC experiment (workspace, branches, queued and finished runs) side by side.

    The params that differ, then a table per benchmark that fits the terminal (--wide: one).
    """
    from uit.core.io import check_new_file

    if plot is not None:
        check_new_file(plot, "--plot", overwrite=overwrite, suffixes=(".png",))
    from uit.app.compare import (
        METRICS,
        comparison,
        plot_comparison,
        read_experiments,
        to_csv,
        wide_table,
    )

    experiments = read_experiments(project)
    _warn_left_out(experiments)
    if not any(e.kind == "experiment" for e in experiments):
        err_console.print("No DVC experiments yet (`uit run --set key=value` or `dvc exp run -S "
                          "key=value` makes one); showing the workspace and commits.")  # fmt: skip
    if not any(e.metrics for e in experiments):
        err_console.print("Nothing has metrics yet: run the pipeline first (`uit run`).")
        return
    metrics = tuple(metric or METRICS)
    names = [b.value for b in benchmark] if benchmark else []
    frame = comparison(experiments, benchmarks=names, metrics=metrics, baseline=baseline,
                       sort=sort, group=group)  # fmt: skip
    chosen = names or sorted({c.split("/")[0] for c in frame.columns if "/" in c})
    if plot:
        from uit.core.io import atomic_write_bytes

        atomic_write_bytes(plot, plot_comparison(frame, metrics[0], chosen))
        err_console.print(f"wrote {plot}")
    if json_:
        console.print_json(json.dumps(frame.to_dicts()))
    elif csv:
        sys.stdout.write(to_csv(frame))
    elif wide:
        console.print(wide_table(frame, chosen, metrics, baseline))
    else:
        _print_compact(frame, chosen, metrics, baseline)


def _warn_left_out(experiments: list[Any]) -> None:
    """One line on stderr per metrics file of an experiment that could not be compared."""
    for e in experiments:
        name = e.name if e.kind == "workspace" else f"{e.kind} {e.name}"
        for why in e.left_out:
            err_console.print(f"warning: {name}: {why} is left out of the comparison", markup=False,
                              highlight=False, soft_wrap=True)  # fmt: skip


def _print_compact(frame: Any, benchmarks: list[str], metrics: tuple[str, ...],
                   baseline: str | None) -> None:  # fmt: skip
    from uit.app.compare import compact_view

    view = compact_view(frame, benchmarks, metrics, baseline, console.width)
    for table in view.tables:
        console.print(table)
    if view.hidden:
        err_console.print(f"Left out to fit {console.width} columns: {', '.join(view.hidden)}. "
                          f"`--metric {view.hidden[0]}` (repeatable) picks the metrics to show, "
                          "`--wide` shows every benchmark and metric in one table, `--json` "
                          "and `--csv` print them all.")  # fmt: skip


def _gallery_source(gallery: str) -> Path:
    """A benchmark name means its prepared folder; anything else is a path."""
    return Path("data/prepared") / gallery if gallery in BENCHMARKS else Path(gallery)


@app.command()
@friendly_errors
def search(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint or an exported model folder.")],
    query: Annotated[str, typer.Argument(help='The sentence, e.g. "a woman in a red coat".')],
    gallery: Annotated[
        str, typer.Option(help="A folder of images, a prepared benchmark folder or a name.")
    ],
    top_k: Annotated[int, typer.Option(min=1, help="How many results.")] = 10,
    split: Annotated[str, typer.Option(help="The split of a prepared benchmark.")] = "test",
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    sheet: Annotated[
        Path | None, typer.Option(help="Write a contact sheet here (.png, .jpg or .webp).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --sheet file.")] = False,
    cache_dir: Annotated[Path, typer.Option(help="Where gallery embeddings are cached.")] = Path(
        ".cache/uit/search"
    ),
    use_cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache", help="Reuse and keep gallery embeddings in --cache-dir."
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images or captions per batch.")] = 256,
) -> None:
    """Rank the images of a gallery for a sentence (the gallery is encoded once, then cached)."""
    from uit.core.device import resolve_device
    from uit.raw.prepare import clean_caption

    query = clean_caption(query)  # as captions are: no zero-width characters, NUL or controls
    if not query:
        raise UitError('the query is empty: give a sentence, e.g. "a woman in a red coat"')
    resolve_device(device, "--device")  # a wrong --device fails before anything is loaded
    if sheet is not None:  # and an output that would replace a file, unasked
        from uit.core.io import check_new_file

        check_new_file(sheet, "--sheet", overwrite=overwrite, suffixes=IMAGES)
    from uit.retrieval.gallery import open_gallery

    with progress_bars() as progress:
        opened = open_gallery(checkpoint, _gallery_source(gallery), split=split, index_kind="flat",
                              cache_dir=cache_dir if use_cache else None, device=device,
                              batch_size=batch_size, progress=adder(progress))  # fmt: skip
    hits, found, encoded = opened.hits(query, top_k), opened.gallery, opened.encoded
    paths = found.paths
    if sheet:
        _search_sheet(query, hits, sheet)
    if json_:  # a file name that is not UTF-8 is kept as \udcXX escapes, as os.fsdecode reads it
        sys.stdout.write(json.dumps({"query": query, "gallery": str(gallery),
                                     "encoded_now": encoded, "cached": len(paths) - encoded,
                                     "results": [{"rank": h.rank, "path": str(h.path),
                                                  "score": h.score} for h in hits]},
                                    indent=2) + "\n")  # fmt: skip
        return
    err_console.print(f"{len(paths)} gallery images ({len(paths) - encoded} from the cache)")
    print_hits(query, *hit_rows(hits, found), console)


def hit_rows(hits: Sequence[Hit], gallery: Gallery) -> tuple[list[str], list[tuple[str, ...]]]:
    """The columns and a row per hit: rank, score, the identity where the gallery is a prepared
    benchmark, and the image named relative to the gallery, as ``uit serve`` names it."""
    from uit.retrieval.search import shown

    index = {path: i for i, path in enumerate(gallery.paths)}
    identities = gallery.pids is not None
    rows = []
    for hit in hits:
        i = index[hit.path]
        identity = (str(gallery.pids[i]),) if gallery.pids is not None else ()
        rows.append((str(hit.rank), f"{hit.score:.3f}", *identity, shown(gallery.names[i])))
    return ["rank", "score", *(["identity"] if identities else []), "image"], rows


def print_hits(
    query: str, columns: Sequence[str], rows: Sequence[tuple[str, ...]], out: Console
) -> None:
    """The hits as a table on a terminal; as tab-separated lines with a header elsewhere (a pipe,
    a file), for ``cut`` and ``awk``. Names are never cut: on a terminal too narrow for a name,
    it folds onto the next line whole."""
    if not out.is_terminal:
        out.file.write("\n".join("\t".join(row) for row in [tuple(columns), *rows]) + "\n")
        return
    table = Table(title=f"top {len(rows)}: {query}", title_justify="left", box=SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)  # fmt: skip
    for column in columns[:-1]:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("image", overflow="fold")  # the only column that gives way
    for row in rows:
        table.add_row(*row)
    out.print(table)


@app.command()
@friendly_errors
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint or an exported model folder.")],
    gallery: Annotated[
        str, typer.Option(help="A folder of images, a prepared benchmark folder or a name.")
    ],
    host: Annotated[
        str, typer.Option(help="The address to listen on (loopback only, unless --expose).")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="The port to listen on (0: a free one, printed)."),
    ] = 8000,
    expose: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host: anyone who reaches it can search.")
    ] = False,
    index: Annotated[
        Literal["flat", "ann", "auto"],
        typer.Option(help="Exact scan, approximate FAISS index, or by gallery size (auto)."),
    ] = "auto",
    split: Annotated[str, typer.Option(help="The split of a prepared benchmark.")] = "test",
    cache_dir: Annotated[
        Path, typer.Option(help="Where gallery embeddings and the index are cached.")
    ] = Path(".cache/uit/search"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 256,
    timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client has to send a request's headers, and "
                                   "again its body."),
    ] = 10.0,
) -> None:  # fmt: skip
    """Search a gallery from a web page and a JSON API (model and embeddings loaded once)."""
    try:
        from uit.app.serve import build_app, check_host, listen, load_searcher, run_server
    except ImportError as error:
        raise UitError(f"uit serve needs the serve extra ({error.name} is missing): pip install "
                       "'uit[serve]' (make install does it)") from None  # fmt: skip
    from uit.core.device import resolve_device

    check_host(host, expose)
    resolve_device(device, "--device")  # a wrong --device fails before anything is loaded
    with listen(host, port) as sock:  # a port in use fails now, not after the gallery
        port = sock.getsockname()[1]  # the one the system chose for --port 0
        with progress_bars() as progress:
            searcher = load_searcher(checkpoint, _gallery_source(gallery), split=split,
                                     index_kind=index, cache_dir=cache_dir, device=device,
                                     batch_size=batch_size, progress=adder(progress))  # fmt: skip
        address = f"[{host}]" if ":" in host else host
        err_console.print(f"serving {searcher.model} on {gallery} (shown as "
                          f"{searcher.gallery.source}: {len(searcher.gallery.paths)} images, "
                          f"{searcher.index.describe()}) at http://{address}:{port}/ (API: "
                          "/openapi.json); Ctrl-C stops", markup=False, highlight=False,
                          soft_wrap=True)  # fmt: skip
        run_server(build_app(searcher, expose=expose, timeout=timeout), sock, timeout)


def _search_sheet(query: str, hits: list[Any], out: Path) -> None:
    from uit.app.contact_sheet import Tile, build_contact_sheet
    from uit.core.io import atomic_write_bytes

    tiles = [Tile(hit.path, f"#{hit.rank} {hit.score:.3f} {hit.path.name}") for hit in hits]
    image = build_contact_sheet(tiles, columns=min(5, len(tiles)), text_lines=3,
                                title=f'"{query}"')  # fmt: skip
    atomic_write_bytes(out, image_bytes(image, out))
    err_console.print(f"wrote {out}")


@app.command()
@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint folder.")],
    out: Annotated[Path, typer.Argument(help="Folder for the exported dual encoder.")],
) -> None:
    """Write just the dual encoder (no ID head, no TIR decoder) plus its model config."""
    from uit.model.export import export_encoder

    kept, dropped = export_encoder(checkpoint, out)
    console.print(f"wrote {out}: {kept} tensors of the dual encoder ({dropped} training-only "
                  "tensors left out); `uit search` and `uit evaluate` accept it")  # fmt: skip


@weights_app.command("convert")
@friendly_errors
def weights_convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="OpenAI's .pt, open_clip's .bin or .safetensors, or a released best.pth."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="OUT.safetensors, or a folder for a best.pth.")],
    model: Annotated[str, typer.Option(help="The architecture of a released best.pth.")] = (
        "ViT-B-16"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT file.")] = False,
    image_height: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Image height a released best.pth was trained at, where its position "
            "embeddings do not tell (with --image-width).",
            show_default="read from the weights",
        ),
    ] = None,
    image_width: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Image width a released best.pth was trained at.",
            show_default="read from the weights",
        ),
    ] = None,
) -> None:
    """Convert weights once, offline, without running any code from the file.

    Pretrained CLIP weights (OpenAI's TorchScript ViT-B-16.pt included) become one open_clip
    safetensors file for model.pretrained, recording the activation they need (QuickGELU for
    OpenAI's). A released fine-tuned checkpoint (IRRA's or the UIT authors' best.pth) becomes an
    exported model folder that `uit evaluate` and `uit search` take directly.
    """
    from uit.model.export import released_to_export
    from uit.model.weights import RELEASED, convert_weights, detect_format

    if (image_height is None) != (image_width is None):
        raise UitError("--image-height and --image-width go together: give both, the size the "
                       "released best.pth was trained at")  # fmt: skip
    size = (image_height, image_width) if image_height and image_width else None
    if detect_format(src) == RELEASED:
        info = released_to_export(src, out, model, image_size=size)
        console.print(f"wrote {out}: the dual encoder of {src} as {model}, QuickGELU "
                      f"({info.dropped} training-only entries left out). Score it with `uit "
                      f"evaluate {out} data/prepared/cuhk-pedes --out evals/released`")  # fmt: skip
        return
    if size is not None:
        raise UitError(f"--image-height/--image-width are for a released best.pth; {src} holds "
                       "pretrained weights, which training resizes to model.image_height and "
                       "model.image_width: leave them out")  # fmt: skip
    info = convert_weights(src, out, overwrite=overwrite)
    activation = {True: "QuickGELU", False: "GELU", None: "unknown (set model.quick_gelu)"}
    console.print(f"wrote {out} ({info.format}; activation {activation[info.quick_gelu]}). "
                  f"Train from it with `--set model.pretrained={out}`")  # fmt: skip


@app.command()
@friendly_errors
def report(
    project: Annotated[Path, typer.Option(help="The project (git + DVC) folder.")] = Path("."),
    out: Annotated[Path, typer.Option(help="Folder for report.html and report.md.")] = Path(
        "reports"
    ),
    params: Annotated[Path, typer.Option(help="The params file (section report).")] = Path(
        "params.yaml"
    ),
    experiments: Annotated[
        bool, typer.Option(help="Add the comparison of DVC experiments (dvc exp show).")
    ] = True,
    baseline: Annotated[
        str | None, typer.Option(help="Experiment the comparison shows differences from.")
    ] = None,
    screenshot: Annotated[
        Path | None, typer.Option(help="Also check the page in headless Chromium, save a PNG.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --screenshot file.")] = False,
) -> None:
    """Build the report (self-contained HTML that works offline, and Markdown).

    From the pipeline's outputs; the DVC report stage builds it without the experiments.
    """
    from uit.app.report import report_pipeline
    from uit.core.config import load_config
    from uit.core.io import check_new_file

    if screenshot is not None:
        check_new_file(screenshot, "--screenshot", overwrite=overwrite, suffixes=(".png",))

    cfg = load_config(project / params).report
    frame = _experiment_frame(project, baseline) if experiments else None
    html, markdown = report_pipeline(cfg, project / "runs", project / "metrics",
                                     project / "evals", project / "data/prepared", project / out,
                                     experiments=frame)  # fmt: skip
    console.print(f"wrote {html} and {markdown}")
    if screenshot:
        from uit.app.browser import check_page

        check = check_page(html, screenshot)
        problems = check.console_errors + check.broken_images + check.remote_resources
        console.print(f"wrote {screenshot}: {check.images} images, {len(problems)} problems")
        if problems:
            raise UitError(f"{html} does not render cleanly: {problems}")


def _experiment_frame(project: Path, baseline: str | None) -> Any:
    from uit.app.compare import comparison, read_experiments

    try:
        found = read_experiments(project)
    except UitError as error:  # not a DVC repository, or DVC failed: the report goes on
        err_console.print(f"no experiments in the report: {error}", markup=False,
                          highlight=False, soft_wrap=True)  # fmt: skip
        return None
    _warn_left_out(found)
    with_metrics = [e for e in found if e.metrics]
    if not any(e.kind == "experiment" for e in with_metrics):
        return None
    return comparison(with_metrics, metrics=("R1", "mAP"), baseline=baseline)


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
    from uit.app.profiles import apply_profile, missing_benchmarks
    from uit.core.config import load_config

    overrides = {"data.root": data_root} if data_root else {}
    changed = apply_profile(params, profiles / f"{name}.yaml", overrides)
    console.print(f"{params}: profile {name}; {len(changed)} values changed")
    for key in changed:
        console.print(f"  {key}")
    for message in missing_benchmarks(load_config(params), params.parent):
        err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
    console.print("Then `dvc repro` (or `uit run`) re-runs what these values affect.")


class _KnownFailures(logging.Filter):
    """Drops the records that Prefect's engines log, with a traceback, for a failure whose
    one-line message ``uit run`` prints itself; a bug's traceback still shows."""

    def __init__(self, known: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.known))


class _DrainNotices(logging.Filter):
    """Drops Prefect's "Still processing items" warnings: its events worker draining its queue
    at shutdown on a busy machine, which says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


def quiet_drain_notices() -> None:
    """For the rest of the process (the drain runs as Prefect shuts down, after the flow)."""
    worker = logging.getLogger("EventsWorker")  # Prefect's services log under their class name
    if not any(isinstance(f, _DrainNotices) for f in worker.filters):
        worker.addFilter(_DrainNotices())


@contextmanager
def quiet_tracebacks(known: tuple[type[BaseException], ...]) -> Iterator[None]:
    """While the flow runs, Prefect's task and flow run loggers skip ``known`` failures."""
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    quiet = _KnownFailures(known)
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


@app.command("run")
@friendly_errors
def run_pipeline(
    benchmark: Annotated[
        list[Benchmark] | None, benchmark_option("Run only this benchmark", "all")
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
    from uit.core.config import load_config

    # a broken file or --set value fails here in one line, before Prefect's server starts
    load_config(project / "params.yaml", set_ or [])
    # Prefect's temporary server keeps its database under the project, not in the home folder.
    os.environ.setdefault("PREFECT_HOME", str(project / ".prefect"))
    from flows.pipeline import DvcError, check_listed, pipeline

    quiet_drain_notices()
    names = [b.value for b in benchmark] if benchmark else None
    if names:  # one the stages do not run on fails here too, not after Prefect has started
        check_listed(names, str(project), set_ or [])
    started = time.perf_counter()
    try:
        with quiet_tracebacks((DvcError, UitError)):
            # a flow called directly raises its failure; what returns is the report's path
            html = str(pipeline(names, set_ or None, name, str(project)))
    except DvcError as error:
        raise UitError(str(error)) from None
    minutes, seconds = divmod(time.perf_counter() - started, 60)
    console.print(f"\nPipeline done in {int(minutes)} min {seconds:.0f} s.")
    console.print(f"Report: {html} (and report.md beside it)")
    if set_ or name:
        exp = Path(html).parent.name  # reports/experiments/NAME/report.html
        console.print(f"Experiment {exp} ran in DVC's temporary workspace, so this one is "
                      f"unchanged; `dvc exp apply {exp}` brings it in")  # fmt: skip
    console.print("Experiments and their metrics: `uit compare`; curves: `uit report`")


def main() -> None:
    app()


if __name__ == "__main__":  # torchrun -m uit.app.cli train ...
    main()
