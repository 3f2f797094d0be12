"""The report: one self-contained HTML page (works offline: images are data URIs, no scripts)
and a Markdown summary, built from a pipeline's run folders and metrics (DESIGN 6)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uit.config import ReportConfig
from uit.errors import DataError

T2I = ("R1", "R5", "R10", "mAP", "mINP")
NAMES = {"cuhk-pedes": "CUHK-PEDES", "icfg-pedes": "ICFG-PEDES", "rstpreid": "RSTPReid"}


@dataclass
class RunResult:
    """One trained model: its selection summary, training curves and test metrics."""

    benchmark: str
    selection: dict[str, Any]
    curves: list[dict[str, float]]
    tests: dict[str, dict[str, dict[str, float]]]  # test benchmark -> {"t2i": ..., "i2t": ...}


@dataclass
class Figure:
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Report:
    title: str
    runs: list[RunResult]
    figures: list[Figure] = field(default_factory=list)
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (title, md, html)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the train and evaluate stages first") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def read_curves(path: Path) -> list[dict[str, float]]:
    """``curves.csv`` as one dict per epoch (empty cells, e.g. epochs not evaluated, dropped)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(handle)]  # fmt: skip


def read_results(runs_dir: str | Path, metrics_dir: str | Path) -> list[RunResult]:
    """Every trained model under ``runs_dir`` that has a metrics file in ``metrics_dir``."""
    runs_dir, metrics_dir = Path(runs_dir), Path(metrics_dir)
    results = []
    for metrics_file in sorted(metrics_dir.glob("*.json")):
        name = metrics_file.stem
        run = runs_dir / name
        curves = read_curves(run / "curves.csv") if (run / "curves.csv").is_file() else []
        results.append(RunResult(name, _read_json(run / "selection.json"), curves,
                                 _read_json(metrics_file)))  # fmt: skip
    if not results:
        raise DataError(f"{metrics_dir}: no metrics files; run the evaluate stage first")
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def metric_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    """Per trained model, its in-domain text-to-image metrics and selection protocol."""
    rows = []
    for run in runs:
        t2i = run.tests.get(run.benchmark, {}).get("t2i", {})
        protocol = run.selection.get("protocol", "?")
        if run.selection.get("optimistic"):
            protocol += " (optimistic)"
        rows.append([NAMES.get(run.benchmark, run.benchmark), *(_fmt(t2i.get(m)) for m in T2I),
                     protocol, str(run.selection.get("best_epoch", "-"))])  # fmt: skip
    return rows


def cross_domain_rows(
    runs: Sequence[RunResult], metric: str = "R1"
) -> tuple[list[str], list[list[str]]]:
    """Trained on rows, tested on columns: text-to-image ``metric``."""
    tests = sorted({name for run in runs for name in run.tests})
    header = ["trained on \\ tested on", *(NAMES.get(t, t) for t in tests)]
    rows = [[NAMES.get(run.benchmark, run.benchmark),
             *(_fmt(run.tests.get(t, {}).get("t2i", {}).get(metric)) for t in tests)]
            for run in runs]  # fmt: skip
    return header, rows


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def curves_figure(runs: Sequence[RunResult]) -> Figure:
    """Training loss and selection R@1 per epoch, one line per trained model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110)
    for run in runs:
        epochs = [row["epoch"] for row in run.curves]
        label = NAMES.get(run.benchmark, run.benchmark)
        left.plot(epochs, [row.get("loss", float("nan")) for row in run.curves], label=label)
        scored = [row for row in run.curves if "R1" in row]
        right.plot([r["epoch"] for r in scored], [r["R1"] for r in scored], marker="o", label=label)
    left.set(title="training loss (weighted sum)", xlabel="epoch")
    right.set(title="selection-split R@1 (%)", xlabel="epoch")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return Figure("Training curves", buffer.getvalue(), "per epoch; R@1 on the selection split")


def build_report(runs: list[RunResult], cfg: ReportConfig) -> Report:
    report = Report(cfg.title, runs)
    if any(run.curves for run in runs):
        report.figures.append(curves_figure(runs))
    return report


PROTOCOL_NOTE = (
    "Model selection: each model is the epoch with the best R@1 on its selection split: `val`, "
    "held-out training identities where a benchmark has no val split, or `test` (the paper's "
    "protocol), which is marked optimistic because the test set then chooses the model."
)


def render_markdown(report: Report) -> str:
    header = ["trained on", *T2I, "selection", "epoch"]
    cross_header, cross = cross_domain_rows(report.runs)
    parts = [f"# {report.title}", "", "## In-domain test metrics (text-to-image, %)", "",
             markdown_table(header, metric_rows(report.runs)), "", PROTOCOL_NOTE, "",
             "## Cross-domain R@1 (%)", "", markdown_table(cross_header, cross), ""]  # fmt: skip
    for title, markdown, _ in report.sections:
        parts += [f"## {title}", "", markdown, ""]
    parts.append("Figures (training curves and more) are in report.html.")
    return "\n".join(parts) + "\n"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
thead{background:#f3f3f3} img{max-width:100%} figcaption{color:#555;font-size:90%}
.note{color:#555;font-size:90%;max-width:800px}
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(report: Report) -> str:
    header = ["trained on", *T2I, "selection", "epoch"]
    cross_header, cross = cross_domain_rows(report.runs)
    body = [f"<h1>{html.escape(report.title)}</h1>",
            "<h2>In-domain test metrics (text-to-image, %)</h2>",
            html_table(header, metric_rows(report.runs)),
            f"<p class='note'>{html.escape(PROTOCOL_NOTE)}</p>",
            "<h2>Cross-domain R@1 (%)</h2>", html_table(cross_header, cross)]  # fmt: skip
    for figure in report.figures:
        body.append(f"<h2>{html.escape(figure.title)}</h2><figure>"
                    f"<img src='{data_uri(figure.png)}' alt='{html.escape(figure.title)}'>"
                    f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")  # fmt: skip
    for title, _, fragment in report.sections:
        body.append(f"<h2>{html.escape(title)}</h2>{fragment}")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")  # fmt: skip
