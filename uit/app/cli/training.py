"""``uit train``, ``uit pretrain`` and ``uit evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from uit.app.cli.base import _table, app, benchmark_option, friendly_errors
from uit.core.config import INFERENCE_BATCH_SIZE, Benchmark
from uit.core.console import adder, console, progress_bars


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
    from uit.training.entry import Relaunch, train_entry

    cfg = load_config(params, set_ or [])
    out = out or Path("runs/adhoc") / benchmark.value
    prepared = prepared or Path("data/prepared") / benchmark.value
    parsed = parsed or Path("data/parsed") / benchmark.value
    argv = ["train", "--benchmark", benchmark.value, "--params", str(params),
            "--prepared", str(prepared), "--parsed", str(parsed), "--out", str(out),
            *(arg for value in set_ or [] for arg in ("--set", value))]  # fmt: skip
    result = train_entry(cfg, prepared, out, parsed, relaunch=Relaunch("uit.app.cli", argv))
    if result is not None:  # the process that reports
        console.print(f"best epoch {result.best_epoch} {result.best}; checkpoints in "
                      f"{out}/checkpoints")  # fmt: skip


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
    from uit.core.config import load_config
    from uit.retrieval.metrics import METRICS
    from uit.training.entry import pretrain_entry
    from uit.training.pretrain import WEIGHTS_FILE

    scores = pretrain_entry(load_config(params, set_ or []), corpus, out, out / "metrics.json")
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
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images or captions per batch.")
    ] = INFERENCE_BATCH_SIZE,
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
