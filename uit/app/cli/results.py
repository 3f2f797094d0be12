"""``uit compare``, ``uit report`` and ``uit profile``: results side by side, the report, and
the params profiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from uit.app.cli.base import app, benchmark_option, friendly_errors
from uit.core.config import Benchmark
from uit.core.console import console, err_console
from uit.core.errors import UitError


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
    from uit.app.collect import read_provenance
    from uit.app.report import report_pipeline
    from uit.core.config import load_config
    from uit.core.io import check_new_file

    if screenshot is not None:
        check_new_file(screenshot, "--screenshot", overwrite=overwrite, suffixes=(".png",))

    cfg = load_config(project / params).report
    frame = _experiment_frame(project, baseline) if experiments else None
    html, markdown = report_pipeline(cfg, project / "runs", project / "metrics",
                                     project / "evals", project / "data/prepared", project / out,
                                     experiments=frame,
                                     provenance=read_provenance(project, project / params,
                                                                "`uit report`"))  # fmt: skip
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
