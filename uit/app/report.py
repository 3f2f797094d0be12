"""The report: one self-contained HTML page (works offline: images are data URIs, no scripts)
and a Markdown summary, rendered from a pipeline's results (design §6). Reading and checking the
results, and where the report comes from, is ``uit.app.collect``'s; this module renders."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uit.app.collect import Provenance, RunResult, read_results
from uit.core.config import ReportConfig
from uit.core.errors import UitError
from uit.raw.formats import SPECS
from uit.retrieval.evaluate import top_k_file
from uit.retrieval.metrics import METRICS

if TYPE_CHECKING:
    import polars as pl

    from uit.data.prepared import Manifests


def benchmark_title(benchmark: str) -> str:
    """The benchmark as it names itself (its format's title), read when asked: a format
    registered after this module was imported has its title too."""
    spec = SPECS.get(benchmark)
    return spec.title if spec is not None else benchmark


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
    provenance: Provenance | None = None  # the header: what built it, when, from what


def provenance_lines(found: Provenance) -> list[str]:
    """The report's header, as Markdown prose: who built it and when, from which commit, and
    which params differ from the commit's; then where the other report lives."""
    commit = "outside a git repository" if found.commit is None else f"from commit `{found.commit}`"
    if found.uncommitted:
        commit += " with uncommitted changes"
    lines = [f"Built by {found.built_by} on {found.built_at}, {commit}."]
    if found.commit is not None:
        lines.append("Params as committed." if not found.changed_params else
                     "Params that differ from the commit's: "
                     + "; ".join(f"`{c}`" for c in found.changed_params) + ".")  # fmt: skip
    lines.append(STALE_NOTE)
    return lines


STALE_NOTE = (
    "Each run of the pipeline (`uit run`, `dvc repro`) rebuilds `reports/pipeline/report.html`; "
    "`uit report` builds `reports/report.html` with the comparison of experiments added. Either "
    "shows the results as of the date above: after a newer run, rebuild it."
)


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
        rows.append([benchmark_title(run.benchmark), *(_fmt(t2i.get(m)) for m in METRICS),
                     protocol, str(run.selection.get("best_epoch", "-"))])  # fmt: skip
    return rows


def zero_shot_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    """Per benchmark, the weights fine-tuned from scored zero-shot beside the fine-tuned model
    (text-to-image R@1 and mAP on its test split); none where nothing was pretrained."""
    rows = []
    for run in runs:
        tested: Mapping[str, Any] = run.tests.get(run.benchmark, {})
        zero = tested.get("zero_shot")
        if not zero:
            continue
        before, after = zero.get("t2i", {}), tested.get("t2i", {})
        rows.append([benchmark_title(run.benchmark), _fmt(before.get("R1")),
                     _fmt(after.get("R1")), _fmt(before.get("mAP")), _fmt(after.get("mAP")),
                     str(zero.get("from", "?"))])  # fmt: skip
    return rows


ZERO_SHOT_HEADER = ["benchmark", "zero-shot R1", "fine-tuned R1", "zero-shot mAP",
                    "fine-tuned mAP", "fine-tuned from"]  # fmt: skip


CLEAR_GAIN = 1.0  # 0-255: how much lower the own caption's error must be for TIR to read it


def restoration_line(scores: Mapping[str, float] | None) -> str:
    """TIR's colour error on the masked test patches against the mean-colour baseline and the
    true-grayscale oracle, and from another identity's caption, in two sentences."""
    if not scores:
        return ""
    tir, gray, mean = (scores.get(k, float("nan")) for k in ("tir", "grayscale", "mean_colour"))
    verdict = "beats" if tir < mean else "does not beat"
    line = (f"Colour error on the masked patches of the test images (mean absolute, 0-255 per "
            f"channel, {int(scores.get('patches', 0)):,} patches): TIR {tir:.1f}, the mean "
            f"colour {mean:.1f} (TIR {verdict} it); the true grayscale, an oracle that knows the "
            f"masked patches' luminance (TIR does not), {gray:.1f}.")  # fmt: skip
    other = scores.get("tir_other")
    if other is None:
        return line
    reads = "reads the caption" if other - tir >= CLEAR_GAIN else "does not clearly read it"
    return (f"{line} From another identity's caption, on the same masks: {other:.1f} against "
            f"{tir:.1f} from the image's own: TIR {reads} (a gain of {other - tir:.1f}; "
            f"{CLEAR_GAIN:.0f} or more counts).")  # fmt: skip


BINDING_HEADER = ["diagnostic", "what", "score (%)", "chance (%)", "count"]


def diagnostics_rows(tested: Mapping[str, Any]) -> list[list[str]]:
    """A benchmark's diagnostics as table rows: attribute binding per kind (the share of
    counterfactual pairs whose image prefers the true caption), then look-alike R@1, then R@1
    with the queries written in each other benchmark's style."""
    binding = tested.get("binding", {})
    rows = [["attribute binding", kind, _fmt(row.get("score")), "50.0",
             f"{row.get('pairs', 0):.0f}"] for kind, row in binding.items()]  # fmt: skip
    found = tested.get("lookalike")
    if found:
        rows.append(["look-alikes", f"R@1 in the family (margin {found.get('margin', 0):.3f})",
                     _fmt(found.get("R1")), _fmt(found.get("chance")),
                     f"{found.get('queries', 0):.0f}"])  # fmt: skip
    for style, row in tested.get("paraphrase", {}).items():
        rows.append(
            [
                "paraphrase",
                f"R@1 in the {style} style (drop {row.get('drop', 0):+.1f})",
                _fmt(row.get("R1")),
                "-",
                f"{found.get('queries', 0):.0f}" if found else "-",
            ]
        )
    return rows


DIAGNOSTICS_NOTE = (
    "Attribute binding: each test caption against the same caption with one colour, garment, "
    "shoe, carried object or gender word changed into another of its kind; the score is the "
    "share of pairs where the caption's own image scores the true caption higher (a tie counts "
    "half). Look-alikes: each query ranked only against its identity's family (people who "
    "differ in one or two attributes; synthetic ground truth, absent on real data); chance is "
    "a random ranking's R@1. Paraphrase: the same test people described in another "
    "benchmark's caption style (synthetic ground truth); the drop is from the split's own R@1."
)


def diagnostics_section(
    benchmark: str, tested: Mapping[str, Any], pairs_file: Path | None, test: Manifests | None,
    seed: int = 0,
) -> tuple[str, str, str] | None:  # fmt: skip
    """The diagnostics table of the benchmark a model was trained on, and where the evaluate
    stage wrote its binding pairs, one counterfactual pair with both scores."""
    rows = diagnostics_rows(tested)
    if not rows:
        return None
    name = benchmark_title(benchmark)
    markdown = markdown_table(BINDING_HEADER, rows) + "\n\n" + DIAGNOSTICS_NOTE
    fragment = (html_table(BINDING_HEADER, rows)
                + f"<p class='note'>{prose(DIAGNOSTICS_NOTE)}</p>")  # fmt: skip
    if pairs_file is not None and test is not None and pairs_file.is_file():
        fragment += _counterfactual_figure(pairs_file, test, seed)
    return f"Diagnostics of UIT's ideas ({name} test)", markdown, fragment


def _counterfactual_figure(pairs_file: Path, test: Manifests, seed: int) -> str:
    """One counterfactual pair drawn at random (seeded): the image, both captions and scores."""
    import random

    import polars as pl

    from uit.app.contact_sheet import Tile

    pairs = pl.read_parquet(pairs_file)
    if not pairs.height:
        return ""
    row = pairs.row(random.Random(seed).randrange(pairs.height), named=True)
    true, counter = row["true_score"], row["counter_score"]
    tile = Tile(test.imgs_dir / row["path"], f"{true:.3f} vs {counter:.3f}",
                (30, 160, 60) if true > counter else (210, 40, 40))  # fmt: skip
    strip = _strip(row["text"], [tile], "")
    caption = (f"True caption ({true:.3f}): {row['text']} | changed {row['word']} -> "
               f"{row['substitute']} ({counter:.3f}): {row['counterfactual']}")  # fmt: skip
    return (
        f"<figure><img src='{data_uri(strip.webp, 'image/webp')}' alt='a counterfactual "
        f"pair'><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def cross_domain_rows(
    runs: Sequence[RunResult], metric: str = "R1"
) -> tuple[list[str], list[list[str]]]:
    """Trained on rows, tested on columns: text-to-image ``metric``."""
    tests = sorted({name for run in runs for name in run.tests})
    header = ["trained on \\ tested on", *(benchmark_title(t) for t in tests)]
    rows = [[benchmark_title(run.benchmark),
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
    from uit.app.plotting import png

    return Figure(
        "Training curves", png(curves_plot(runs)), "per epoch; R@1 on the selection split"
    )


def curves_plot(runs: Sequence[RunResult]) -> Any:
    """The matplotlib figure of ``curves_figure``: every epoch a marker, so that a one-epoch
    run (a single point, which a line alone does not draw) shows too."""
    from uit.app.plotting import pyplot

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 3.4), dpi=110)
    for run in runs:
        epochs = [row["epoch"] for row in run.curves]
        label = benchmark_title(run.benchmark)
        loss = [row.get("loss", float("nan")) for row in run.curves]
        left.plot(epochs, loss, marker="o", markersize=4, label=label)
        scored = [row for row in run.curves if "R1" in row]
        right.plot([r["epoch"] for r in scored], [r["R1"] for r in scored], marker="o",
                   markersize=4, label=label)  # fmt: skip
    left.set(title="training loss (weighted sum)", xlabel="epoch")
    right.set(title="selection-split R@1 (%)", xlabel="epoch")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    return fig


def build_report(
    runs: list[RunResult],
    cfg: ReportConfig,
    *,
    evals_dir: str | Path | None = None,
    prepared_dir: str | Path | None = None,
    checkpoints: Mapping[str, Path] | None = None,
    experiments: pl.DataFrame | None = None,
) -> Report:
    """Tables and curves always; with the evaluation outputs and prepared test sets, the
    qualitative retrievals; with the training checkpoints, TIR restorations and the chosen
    sentences; with a comparison of experiments, its table."""
    report = Report(cfg.title, runs)
    if any(run.curves for run in runs):
        report.figures.append(curves_figure(runs))
    if experiments is not None and experiments.height:
        report.sections.append(experiments_section(experiments))
    for run in runs:
        test = None if prepared_dir is None else _test_split(Path(prepared_dir) / run.benchmark)
        pairs = None if evals_dir is None else _pairs_file(evals_dir, run.benchmark)
        section = diagnostics_section(run.benchmark, run.tests.get(run.benchmark, {}), pairs,
                                      test, cfg.seed)  # fmt: skip
        if section is not None:
            report.sections.append(section)
    if evals_dir is None or prepared_dir is None:
        return report
    for run in runs:
        test = _test_split(Path(prepared_dir) / run.benchmark)
        # the evaluate stage ran evaluate_across into evals_dir/<trained on>
        top_k = top_k_file(Path(evals_dir) / run.benchmark, run.benchmark)
        strips = random_query_strips(top_k, test, cfg) if top_k.is_file() else []
        checkpoint = (checkpoints or {}).get(run.benchmark)
        restorations = None
        if checkpoint is not None and (cfg.queries or cfg.restorations):
            objective, encoder = _load_once(checkpoint, cfg)  # the weights are read once
            if cfg.restorations:  # on the CPU, before the encoder moves to the search device
                restorations = restoration_section(run.benchmark, objective, checkpoint, test, cfg,
                                                   run.tests.get(run.benchmark, {}).get(
                                                       "restoration"))  # fmt: skip
            if cfg.queries:
                strips += chosen_query_strips(encoder, checkpoint, test, cfg)
        if strips:
            report.sections.append(_strips_section(run.benchmark, strips))
        if restorations is not None:
            report.sections.append(restorations)
    return report


def _pairs_file(evals_dir: str | Path, benchmark: str) -> Path:
    """Where the evaluate stage put the binding pairs of a model on its own benchmark."""
    from uit.retrieval.evaluate import BINDING_FILE

    return top_k_file(Path(evals_dir) / benchmark, benchmark).with_name(BINDING_FILE)


def _load_once(checkpoint: Path, cfg: ReportConfig) -> tuple[Any, Any]:
    """The whole training model (for restorations) and its dual encoder (for the free
    sentences) from one read of the weights; an exported model has only the encoder."""
    from uit.model.build import load_encoder
    from uit.model.objective import load_objective

    if cfg.restorations:
        try:
            objective = load_objective(checkpoint)
            return objective, objective.encoder
        except (ValueError, UitError) as error:
            return error, (load_encoder(checkpoint)[0] if cfg.queries else None)
    return None, load_encoder(checkpoint)[0]


def _test_split(prepared: Path) -> Manifests:
    from uit.data.prepared import read_manifests

    return read_manifests(prepared).split("test")


@dataclass
class Strip:
    """One query: its sentence, a picture of its top k (and ground truth), and a text line."""

    sentence: str
    webp: bytes
    summary: str


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _webp(image: Any) -> bytes:
    """Lossless WebP: the same pixels as PNG, in fewer bytes for rows of photos."""
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


STRIP_WIDTH = 1020  # px: the page's 1100 less a figure's margins; a wider picture is shrunk
STRIP_THUMB = (64, 128)  # (width, height): person crops are tall and narrow
RESTORATION_HEIGHT = 192  # px: the least height of a TIR restoration's tiles


def _strip(sentence: str, tiles: list[Any], summary: str) -> Strip:
    """One row of thumbnails at their full size on the page (a row wider than the page wraps,
    rather than being shrunk by the browser until the people are a few pixels high)."""
    from uit.app.contact_sheet import build_contact_sheet

    sheet = build_contact_sheet(tiles, columns=len(tiles), thumb_size=STRIP_THUMB, text_lines=2,
                                font_size=12, title=sentence[:300], min_cell_width=STRIP_THUMB[0],
                                max_width=STRIP_WIDTH)  # fmt: skip
    return Strip(sentence, _webp(sheet), summary)


def random_query_strips(top_k_file: Path, test: Manifests, cfg: ReportConfig) -> list[Strip]:
    """Test captions drawn at random (seeded): the ground truth image, then the top k with hits
    outlined green and misses red."""
    import random

    import polars as pl

    from uit.app.contact_sheet import Tile

    table = pl.read_parquet(top_k_file)
    rows = random.Random(cfg.seed).sample(
        range(table.height), min(cfg.random_queries, table.height)
    )
    strips = []
    for row in (table.row(i, named=True) for i in sorted(rows)):
        image_id = test.captions.filter(pl.col("caption_id") == row["caption_id"])["image_id"][0]
        truth = test.images.filter(pl.col("image_id") == image_id)["path"][0]  # its own image
        tiles = [Tile(test.imgs_dir / truth, "ground truth", (40, 90, 220))]
        ranked = list(zip(row["paths"], row["scores"], row["hits"], strict=True))[: cfg.top_k]
        for rank, (path, score, hit) in enumerate(ranked, 1):
            tiles.append(Tile(test.imgs_dir / path, f"#{rank} {score:.2f}",
                              (30, 160, 60) if hit else (210, 40, 40)))  # fmt: skip
        marks = "".join("+" if hit else "." for hit in row["hits"][: cfg.top_k])
        strips.append(_strip(row["text"], tiles, f"{row['text']}  [{marks}]"))
    return strips


def chosen_query_strips(
    encoder: Any, checkpoint: Path, test: Manifests, cfg: ReportConfig
) -> list[Strip]:
    """``report.queries``, free sentences, searched in the test gallery (no ground truth), with
    ``checkpoint``'s encoder in the precision it was trained in (as ``uit search`` does)."""
    from uit.app.contact_sheet import Tile
    from uit.model.build import build_tokenizer
    from uit.retrieval.evaluate import encode_texts, inference_options
    from uit.retrieval.search import gallery_embeddings, rank

    options = inference_options(checkpoint)
    encoder = encoder.to(options.device).eval()
    tokenizer = build_tokenizer(_model_config(checkpoint))
    paths = test.paths()
    feats, _ = gallery_embeddings(encoder, paths, options)
    texts = encode_texts(encoder, list(cfg.queries), tokenizer, options)
    strips = []
    for sentence, text in zip(cfg.queries, texts, strict=True):
        hits = rank(text, feats, paths, cfg.top_k)
        tiles = [Tile(hit.path, f"#{hit.rank} {hit.score:.2f}") for hit in hits]
        strips.append(_strip(sentence, tiles, f"{sentence}  (free sentence: no ground truth)"))
    return strips


def _strips_section(benchmark: str, strips: list[Strip]) -> tuple[str, str, str]:
    name = benchmark_title(benchmark)
    markdown = "\n".join(f"- {strip.summary}" for strip in strips)
    markdown += "\n\n`+` a hit, `.` a miss, in rank order."
    fragment = "".join(
        f"<figure><img src='{data_uri(s.webp, 'image/webp')}' alt='{html.escape(s.sentence)}'>"
        "</figure>"
        for s in strips
    )
    note = ("<p class='note'>Blue: the ground-truth image; green: a correct identity; red: "
            "another identity.</p>")  # fmt: skip
    return f"Retrievals on {name} test (model trained on {name})", markdown, note + fragment


def restoration_section(
    benchmark: str, objective: Any, checkpoint: Path, test: Manifests, cfg: ReportConfig,
    scores: Mapping[str, float] | None = None,
) -> tuple[str, str, str]:  # fmt: skip
    """TIR restorations of a few test images: masked grayscale input, restoration, original,
    with ``scores`` (the evaluate stage's colour errors) above them.
    ``objective`` is ``checkpoint``'s training model, or why it could not be loaded."""
    import random

    import torch

    from uit.data.transforms import build_eval_transform
    from uit.model.build import build_tokenizer
    from uit.model.objective import restore

    name = benchmark_title(benchmark)
    if isinstance(objective, Exception):
        error = str(objective)
        return f"TIR restorations ({name})", f"Not available: {error}", prose(error)
    if objective.tir_decoder is None:  # an experiment with loss.tir 0 trains no decoder
        note = "the model was trained without TIR (loss.tir 0): nothing to restore"
        return f"TIR restorations ({name})", f"Not available: {note}", html.escape(note)
    encoder = objective.encoder
    chosen = random.Random(cfg.seed).sample(range(test.images.height),
                                            min(cfg.restorations, test.images.height))  # fmt: skip
    rows = [test.images.row(i, named=True) for i in sorted(chosen)]
    captions = [_first_caption(test, row["image_id"]) for row in rows]
    transform = build_eval_transform(encoder.image_size, encoder.image_mean, encoder.image_std)
    from uit.data.images import load_rgb

    images = torch.stack([transform(load_rgb(test.imgs_dir / row["path"])) for row in rows])
    text = build_tokenizer(_model_config(checkpoint))(captions)
    generator = torch.Generator().manual_seed(cfg.seed)
    shown, restored = restore(objective, images, text, generator)
    grid = _restoration_grid([shown, restored, images], encoder.image_mean, encoder.image_std)
    line = restoration_line(scores)
    markdown = "\n".join([*([line, ""] if line else []), *(f"- {c}" for c in captions)])
    fragment = (
        (f"<p>{prose(line)}</p>" if line else "")
        + f"<figure><img src='{data_uri(_png(grid))}' alt='TIR restorations'>"
        "<figcaption>Each row: masked grayscale input, restoration from the caption, "
        f"original. Captions: {html.escape(' | '.join(captions))}</figcaption></figure>"
    )
    return f"TIR restorations ({name})", markdown, fragment


def _first_caption(test: Manifests, image_id: int) -> str:
    import polars as pl

    return str(test.captions.filter(pl.col("image_id") == image_id)["text"][0])


def _model_config(checkpoint: Path) -> Any:
    from uit.model.build import inference_config
    from uit.model.checkpoint import read_state

    return inference_config(read_state(checkpoint), checkpoint)


def _restoration_grid(columns: list[Any], mean: Sequence[float], std: Sequence[float]) -> Any:
    """Rows of (input, restoration, original) tiles, each scaled up by a whole factor (NEAREST,
    so pixels stay sharp) to at least ``RESTORATION_HEIGHT`` px high."""
    import torch
    from PIL import Image

    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    pictures = [((c.float() * s + m).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
                for c in columns]  # fmt: skip
    count, height, width = pictures[0].shape[:3]
    scale, gap = max(1, -(-RESTORATION_HEIGHT // height)), 6  # 3x for 64 px, 1x for 384 px
    grid = Image.new("RGB", (3 * (width * scale + gap), count * (height * scale + gap)), "white")
    for r in range(count):
        for c, picture in enumerate(pictures):
            tile = Image.fromarray(picture[r]).resize((width * scale, height * scale),
                                                     Image.Resampling.NEAREST)  # fmt: skip
            grid.paste(tile, (c * (width * scale + gap), r * (height * scale + gap)))
    return grid


def experiments_section(frame: pl.DataFrame) -> tuple[str, str, str]:
    """The comparison of DVC experiments (``uit compare``): seeds grouped, deltas if asked."""
    from uit.app.compare import format_cell

    metric_columns = [c for c in frame.columns if "/" in c and not c.endswith((" std", " delta"))]
    params = [
        c for c in frame.columns if "/" not in c and c not in {"experiment", "status", "seeds"}
    ]
    header = ["experiment", "seeds", *params, *metric_columns]
    rows = [
        [str(row["experiment"]), str(row["seeds"]), *(str(row[p]) for p in params),
         *(format_cell(row, c) for c in metric_columns)]
        for row in frame.to_dicts()
    ]  # fmt: skip
    note = "Experiments that differ only by `train.seed` are one row: mean ± std over seeds."
    if any(c.endswith(" delta") for c in frame.columns):
        note += " In brackets, the difference from the baseline experiment."
    return (
        "Experiments",
        markdown_table(header, rows) + "\n\n" + note,
        html_table(header, rows) + f"<p class='note'>{prose(note)}</p>",
    )


PROTOCOL_NOTE = (
    "Model selection: each model is the epoch with the best R@1 on its selection split: `val`, "
    "held-out training identities where a benchmark has no val split, or `test` (the paper's "
    "protocol), which is marked optimistic because the test set then chooses the model."
)


ZERO_SHOT_NOTE = (
    "Zero-shot: the weights each model was fine-tuned from (model.pretrained), on the same test "
    "split, before any fine-tuning; as the paper compares CLIP before and after."
)


def render_markdown(report: Report) -> str:
    header = ["trained on", *METRICS, "selection", "epoch"]
    cross_header, cross = cross_domain_rows(report.runs)
    parts = [f"# {report.title}", ""]
    if report.provenance is not None:
        parts += [" ".join(provenance_lines(report.provenance)), ""]
    parts += ["## In-domain test metrics (text-to-image, %)", "",
             markdown_table(header, metric_rows(report.runs)), "", PROTOCOL_NOTE, "",
             "## Cross-domain R@1 (%)", "", markdown_table(cross_header, cross), ""]  # fmt: skip
    zero = zero_shot_rows(report.runs)
    if zero:
        parts += ["## Before and after fine-tuning (text-to-image, %)", "", ZERO_SHOT_NOTE, "",
                  markdown_table(ZERO_SHOT_HEADER, zero), ""]  # fmt: skip
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


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def prose(text: str) -> str:
    """Markdown prose as HTML: escaped, with each `code` span set as code rather than shown
    with its backticks."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(report: Report) -> str:
    header = ["trained on", *METRICS, "selection", "epoch"]
    cross_header, cross = cross_domain_rows(report.runs)
    body = [f"<h1>{html.escape(report.title)}</h1>"]
    if report.provenance is not None:
        body += [
            f"<p class='note'>{prose(line)}</p>" for line in provenance_lines(report.provenance)
        ]
    body += ["<h2>In-domain test metrics (text-to-image, %)</h2>",
            html_table(header, metric_rows(report.runs)),
            f"<p class='note'>{prose(PROTOCOL_NOTE)}</p>",
            "<h2>Cross-domain R@1 (%)</h2>", html_table(cross_header, cross)]  # fmt: skip
    zero = zero_shot_rows(report.runs)
    if zero:
        body += ["<h2>Before and after fine-tuning (text-to-image, %)</h2>",
                 f"<p class='note'>{prose(ZERO_SHOT_NOTE)}</p>",
                 html_table(ZERO_SHOT_HEADER, zero)]  # fmt: skip
    for figure in report.figures:
        body.append(f"<h2>{html.escape(figure.title)}</h2><figure>"
                    f"<img src='{data_uri(figure.png)}' alt='{html.escape(figure.title)}'>"
                    f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")  # fmt: skip
    for title, _, fragment in report.sections:
        body.append(f"<h2>{html.escape(title)}</h2>{fragment}")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")  # fmt: skip


def report_pipeline(
    cfg: ReportConfig,
    runs_dir: str | Path,
    metrics_dir: str | Path,
    evals_dir: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    *,
    experiments: pl.DataFrame | None = None,
    provenance: Provenance | None = None,
) -> tuple[Path, Path]:
    """The one way a pipeline's report is built (the DVC stage and ``uit report``): the train
    stage's run folders and best checkpoints, the evaluate stage's metrics and top 10s, the
    prepared test sets, and with ``experiments`` the comparison of DVC experiments."""
    results = read_results(runs_dir, metrics_dir)
    best = {r.benchmark: Path(runs_dir) / r.benchmark / "checkpoints/best" for r in results}
    report = build_report(results, cfg, evals_dir=evals_dir, prepared_dir=prepared_dir,
                          checkpoints={k: v for k, v in best.items() if v.is_dir()},
                          experiments=experiments)  # fmt: skip
    report.provenance = provenance
    return write_report(report, out_dir)


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """``report.html`` and ``report.md`` in ``out_dir``, each written atomically."""
    from uit.core.io import atomic_write_text

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.html", render_html(report))
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    return out_dir / "report.html", out_dir / "report.md"
