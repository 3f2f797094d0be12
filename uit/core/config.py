"""Typed configuration mirroring ``params.yaml``.

Each top-level section of ``params.yaml`` is a frozen pydantic model that forbids unknown keys, so
a typo fails loudly instead of being ignored. Functions take the narrowest section they need.
Dotted overrides (``synth.seed=3``) go through the same loader; their values are parsed as YAML
and then coerced by pydantic, so ``-S train.lr=3e-05`` (a string on arrival) becomes a float.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from uit.core.errors import ConfigError, bounded

MAX_PARAMS_BYTES = 1_000_000  # a params file is a few KB; anything this big is the wrong file
MAX_INPUT_REPR = 200  # characters of a bad value shown in an error message
MAX_YAML_DEPTH = 20  # levels of nesting in a YAML file or value: params files use 4


class Benchmark(StrEnum):
    """The three built-in benchmarks by the names the CLI, params.yaml and metrics files use; a
    member is a ``str`` (``Benchmark.rstpreid == "rstpreid"``). Everything else about them, their
    titles included, is their format's spec in ``uit.raw.formats``."""

    cuhk_pedes = "cuhk-pedes"
    icfg_pedes = "icfg-pedes"
    rstpreid = "rstpreid"


BENCHMARKS: tuple[Benchmark, ...] = tuple(Benchmark)
SynthSize = Literal["tiny", "demo", "small", "medium"]
ImageCheck = Literal["decode", "exists"]
ParseBackend = Literal["auto", "builtin", "trained"]  # auto: the trained pipeline when installed
# a gallery's index: exact, FAISS IVF, by its size, or a Milvus collection (Milvus Lite)
IndexKind = Literal["flat", "ann", "auto", "milvus"]
IndexChoice = str  # an IndexKind, or milvus://HOST:PORT: a Milvus server (``check_index_choice``)
# What inference (evaluate, search, serve) takes unless told otherwise; the command line shows
# these same values as its defaults.
INFERENCE_BATCH_SIZE = 256
TOP_K = 10
SEARCH_CACHE_DIR = ".cache/uit/search"
MILVUS_URI = re.compile(r"milvus://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):([0-9]{1,5})")


def check_index_choice(value: str) -> IndexChoice:
    """``value`` when it is an ``IndexKind`` or ``milvus://HOST:PORT``; ConfigError otherwise."""
    address = MILVUS_URI.fullmatch(value)
    if value in get_args(IndexKind) or (address and 0 < int(address[2]) < 65536):
        return value
    kinds = ", ".join(get_args(IndexKind))
    raise ConfigError(f"--index {_short_repr(value)} is not an index: give one of {kinds}, or "
                      "milvus://HOST:PORT for a Milvus server")  # fmt: skip


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(Section):
    """Where the raw benchmarks live and how strictly they are read."""

    source: Literal["synthetic", "real"] = "synthetic"
    root: str = "data/synthetic"  # SYNTHETIC_ROOT: where the synth stage draws
    benchmarks: tuple[Benchmark, ...] = BENCHMARKS
    drop_missing: bool = False
    check_images: ImageCheck = "decode"

    @field_validator("benchmarks")
    @classmethod
    def _each_benchmark_once(cls, benchmarks: tuple[Benchmark, ...]) -> tuple[Benchmark, ...]:
        if not benchmarks:
            raise ValueError(
                f"data.benchmarks is empty: list at least one of {', '.join(BENCHMARKS)}, "
                f"e.g. data.benchmarks: [{BENCHMARKS[-1]}]"
            )
        twice = sorted({name for name in benchmarks if benchmarks.count(name) > 1})
        if twice:
            raise ValueError(
                f"data.benchmarks names {', '.join(twice)} more than once: list each benchmark once"
            )
        return benchmarks


class SynthConfig(Section):
    """The procedural benchmark (design §3.4)."""

    seed: int = 0
    size: SynthSize = "demo"
    image_height: int = Field(128, ge=32, le=1024)
    image_width: int = Field(64, ge=16, le=512)


class ParseConfig(Section):
    """Attribute parsing of captions with spaCy (design §3.3)."""

    backend: ParseBackend = "auto"
    trained_model: str = "en_core_web_sm"
    batch_size: int = Field(1000, ge=1)


class AugmentConfig(Section):
    """Training-time text augmentation (design §4)."""

    keep_attributes_p: float = Field(0.2, ge=0.0, le=1.0)
    # The released code's in-place caption token masking (BERT-style): off here, on in the paper
    # profile. Attribute tokens (nouns, adjectives) are masked with one rate, other words with
    # another; docs/differences.md says how it maps onto open_clip's tokenizer.
    mask_tokens: bool = False
    mask_attribute_p: float = Field(0.3, ge=0.0, le=1.0)
    mask_other_p: float = Field(0.05, ge=0.0, le=1.0)


class ModelConfig(Section):
    """The open_clip dual encoder (design §4)."""

    name: str = "ViT-B-16"  # any open_clip model name, or uit-tiny
    pretrained: str = ""  # "" random init | an open_clip tag such as openai | a weights file
    image_height: int = Field(384, ge=8)
    image_width: int = Field(128, ge=8)
    context_length: int = Field(77, ge=8)
    # QuickGELU (OpenAI's activation) or GELU. auto: what the pretrained tag says, or what a
    # weights file written by `uit weights convert` records; GELU for random init and other files.
    quick_gelu: Literal["auto"] | bool = "auto"
    # How pretrained image position embeddings are resized to this grid (e.g. 14x14 -> 24x8):
    # bicubic with antialiasing, as open_clip's load_checkpoint does, or bilinear without it, as
    # the released code's resize_pos_embed does. Used only when weights are loaded at another grid.
    pos_embed_resize: Literal["bicubic", "bilinear"] = "bicubic"
    cache_dir: str = ""  # where open_clip keeps downloaded weights ("" = its default)


class LossConfig(Section):
    """One weight per loss term; a weight of 0 switches the term (and its head) off."""

    sdm: float = Field(1.0, ge=0.0)
    id: float = Field(1.0, ge=0.0)
    cmt: float = Field(10.0, ge=0.0)
    itc: float = Field(0.0, ge=0.0)
    cmt_margin: float = Field(0.05, ge=0.0)
    # CMT's weight ramps up linearly over this many epochs (0: full weight from the start, as
    # released). Training from scratch needs a ramp: at full weight the hardest-negative hinge
    # is cheapest to satisfy by collapsing every feature onto one point.
    cmt_warmup_epochs: float = Field(0.0, ge=0.0)
    logit_scale: float = Field(50.0, gt=0.0)  # fixed 1 / temperature 0.02
    tir: float = Field(10.0, ge=0.0)  # 0: no restoration decoder, no second image pass
    # With several processes, SDM, CMT and ITC see the all-gathered global batch (the maths of
    # one process); false: each process's own slice, as the released code does.
    gather: bool = True


class TIRConfig(Section):
    """Text-guided image restoration (training only)."""

    mask_ratio: float = Field(0.7, gt=0.0, lt=1.0)
    decoder_layers: int = Field(4, ge=1)
    cross_attn_residual: bool = False  # the released code feeds only the attention output on
    # The decoder blocks' activation: open_clip's GELU, or QuickGELU as the released decoder's
    # OpenAI blocks use.
    activation: Literal["gelu", "quick_gelu"] = "gelu"
    # default: PyTorch's initialisation, mask token drawn from N(0, 0.02) (MAE's); clip: as the
    # released decoder, CLIP's normal initialisation of the attention and MLP weights and a mask
    # token at zeros.
    init: Literal["default", "clip"] = "default"


class OptimConfig(Section):
    """Adam with per-group learning rates (design §4)."""

    lr: float = Field(1e-5, gt=0.0)
    weight_decay: float = Field(4e-5, ge=0.0)
    eps: float = Field(1e-3, gt=0.0)
    new_module_lr_factor: float = Field(5.0, gt=0.0)  # TIR decoder, cross-attention, ID head
    bias_lr_factor: float = Field(2.0, gt=0.0)  # biases: this factor and no weight decay


class TrainConfig(Section):
    """The fit loop, schedule and model selection (design §4)."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=2)
    instances_per_id: int = Field(2, ge=1)
    # The released sampler: each identity brings 1 to instances_per_id captions per epoch, drawn
    # at random (85 to 115 identities per batch of 128), instead of always instances_per_id.
    random_instances: bool = False
    warmup_epochs: float = Field(5.0, ge=0.0)
    warmup_factor: float = Field(0.1, gt=0.0, le=1.0)
    grad_clip: float = Field(0.0, ge=0.0)  # 0: no clipping
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    selection: Literal["val", "test", "last"] = "val"
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # train ids held out where no val split
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    max_steps_per_epoch: int = Field(0, ge=0)  # 0: every batch; else a cap (smoke runs)
    compile: bool = False  # torch.compile the objective (README: its speed on an H200)
    # The paper's image augmentation (flip, pad and crop, random erasing); false: resize only,
    # as CLIP-style pretraining on the synthetic corpus uses (pretrain.image_augment).
    image_augment: bool = True
    # Processes (GPUs) on this machine: above 1, the train stage and `uit train` start torchrun
    # themselves. Not part of a run's identity: a run resumes on any number of processes.
    nproc_per_node: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _whole_identities_per_batch(self) -> TrainConfig:
        if self.batch_size % self.instances_per_id:
            lower = self.batch_size - self.batch_size % self.instances_per_id
            raise ValueError(
                f"train.batch_size {self.batch_size} is not a multiple of train.instances_per_id "
                f"{self.instances_per_id} (each identity brings that many captions to a batch): "
                f"use {max(lower, self.instances_per_id)} or {lower + self.instances_per_id}"
            )
        share = self.instances_per_id * self.nproc_per_node
        if self.batch_size % share:
            lower = self.batch_size - self.batch_size % share
            raise ValueError(
                f"train.batch_size {self.batch_size} cannot be split over train.nproc_per_node "
                f"{self.nproc_per_node} processes in whole identities of train.instances_per_id "
                f"{self.instances_per_id}: use a batch size that is a multiple of {share} "
                f"({max(lower, share)} or {lower + share}), or another number of processes"
            )
        return self


class PretrainConfig(Section):
    """CLIP-style pretraining of the dual encoder on a synthetic corpus (the ``pretrain`` stage,
    design §4): what a user with real data gets from ``model.pretrained: openai``, drawn here.
    The stage runs when ``model.pretrained`` names its output (``PRETRAINED_WEIGHTS``)."""

    identities: int = Field(3000, ge=2)  # corpus identities, disjoint from every benchmark's
    images_per_id: int = Field(1, ge=1)
    captions_per_image: int = Field(2, ge=1)
    heldout: int = Field(200, ge=1)  # identities held out to score the pretraining itself
    seed: int = 0
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    # Adam's L2 term (not AdamW's decoupled decay): CLIP's 0.1 to 0.2 would outweigh the loss
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    logit_scale: float = Field(10.0, gt=0.0)  # CLIP's contrastive loss at 1 / temperature
    image_augment: bool = False  # resize only: erasing 40% of a 64x32 figure erases attributes


# What the pretrain stage writes, and the value of model.pretrained that fine-tunes from it.
PRETRAINED_WEIGHTS = "runs/pretrain/model.safetensors"


class ReportConfig(Section):
    """What the report shows besides the metrics (design §6)."""

    title: str = "uit report"
    queries: tuple[str, ...] = ()  # sentences always shown, searched in each test gallery
    random_queries: int = Field(4, ge=0)  # test queries drawn at random per benchmark
    top_k: int = Field(10, ge=1, le=50)
    restorations: int = Field(4, ge=0)  # TIR restorations shown per benchmark
    seed: int = 0


class Config(Section):
    """The whole of ``params.yaml``."""

    data: DataConfig = DataConfig()
    synth: SynthConfig = SynthConfig()
    parse: ParseConfig = ParseConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    tir: TIRConfig = TIRConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    report: ReportConfig = ReportConfig()


# The sections that decide a trained model; saved in every checkpoint and compared on resume.
TRAINING_SECTIONS = ("augment", "model", "loss", "tir", "optim", "train")


# Keys that say how a run is executed, not what it trains: left out of a run's identity.
EXECUTION_KEYS = {"train": ("nproc_per_node",)}


def training_config(cfg: Config) -> dict[str, Any]:
    """The training sections of ``cfg`` as plain JSON values (less ``EXECUTION_KEYS``)."""
    return {
        name: getattr(cfg, name).model_dump(mode="json", exclude=set(EXECUTION_KEYS.get(name, ())))
        for name in TRAINING_SECTIONS
    }


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` override applied.

    Values are parsed as YAML (``true``, ``[a, b]``, ``3``); types are checked later by the model.
    """
    result: dict[str, Any] = _deep_copy(raw)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
            node = child
        if not all(part.strip() for part in parts):
            raise ConfigError(f"override {override!r}: {key!r} has an empty part; use section.key")
        node[parts[-1]] = _override_value(override, text)
    return result


def _override_value(override: str, text: str) -> Any:
    """An override's value parsed as YAML (``""`` for nothing); no aliases, no tags."""
    if not text.strip():
        return ""
    try:
        return _load(text)
    except yaml.YAMLError as error:
        raise ConfigError(
            bounded(
                f"override {_short_repr(override)}: the value is not valid YAML "
                f"({_first_line(error)}); "
                "quote a string that holds brackets or colons, e.g. --set 'report.title=\"a: b\"'"
            )
        ) from None


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


# Keys that moved, old -> new: refused with a message that names the new one.
RENAMED = {"tir.weight": "loss.tir"}  # every loss weight lives under loss
REMOVED = {  # keys of older params files, and what replaced them
    "synth.benchmarks": "the synth stage draws data.benchmarks when data.source is synthetic; "
    "delete the line",
}
# Where the synth stage draws the synthetic benchmarks: data.root when data.source is synthetic.
SYNTHETIC_ROOT = "data/synthetic"


def parse_config(raw: Mapping[str, Any], source: str = "params") -> Config:
    """Validate a mapping into a ``Config``; errors name every offending key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if not key or item["type"] == "value_error":  # a rule across keys names them itself
            lines.append(f"  {item['msg'].removeprefix('Value error, ')}")
        elif item["type"] == "extra_forbidden" and key in RENAMED:
            lines.append(f"  {key}: renamed to {RENAMED[key]}; move the value there")
        elif item["type"] == "extra_forbidden" and key in REMOVED:
            lines.append(f"  {key}: no longer a key: {REMOVED[key]}")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check its spelling; see params.yaml)")
        else:
            lines.append(f"  {key}: {item['msg']} (got {_short_repr(item.get('input'))})")
    return bounded("\n".join(lines))


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxstring, _REPR.maxother = 80, 80


def _short_repr(value: Any) -> str:
    """A bounded repr: a config value may be huge (a YAML alias bomb expands to gigabytes)."""
    return bounded(_REPR.repr(value), MAX_INPUT_REPR)


def _first_line(error: yaml.YAMLError) -> str:
    """What went wrong and where, on one line."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        return f"{error.problem} at character {error.problem_mark.column + 1}"
    return " ".join(str(error).split())


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases (``*name``) and nesting deeper than
    ``MAX_YAML_DEPTH``: a params file needs neither, a few nested aliases expand into gigabytes
    (the "billion laughs"), and thousands of nested brackets exhaust Python's stack."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}; params files take no YAML aliases, "
                "write the value out", event.start_mark,
            )  # fmt: skip
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep (params need at most "
                "4); close the brackets or indent less", self.peek_event().start_mark,
            )  # fmt: skip
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_MERGE = "tag:yaml.org,2002:merge"  # the ``<<`` key, which is not a key of the mapping


def _refuse_keys_twice(loader: _PlainLoader, node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    """Refuse a mapping under ``node`` that holds a key twice: PyYAML keeps the last silently,
    DVC refuses the file. The error points at the second one and names the first's line."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_keys_twice(loader, item, path)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[Any, yaml.Mark] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark)
        except TypeError:  # an unhashable key: the constructor refuses it in its own words
            continue
        if first is not key_node.start_mark:
            where = f" in {'.'.join(path)}" if path else ""
            raise yaml.constructor.ConstructorError(
                None, None, f'duplicate key "{key}"{where} (first on line {first.line + 1}); '
                "keep one of them (DVC refuses a key written twice)",
                key_node.start_mark,
            )  # fmt: skip
        _refuse_keys_twice(loader, value_node, (*path, str(key)))


def _load(text: str) -> Any:
    """The plain values of the YAML ``text``: no aliases, no tags, no deep nesting, no key
    written twice (each raises a ``yaml.YAMLError`` that points at the place)."""
    loader = _PlainLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_keys_twice(loader, node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_params_text(path: Path) -> str:
    """The text of a params file, refused (naming the file and the fix) when it is missing, a
    folder, too big or not UTF-8."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; give --params PATH of a params file")
    if not path.is_file():
        raise ConfigError(f"{path} is a folder, not a params file; give the path of a YAML file")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise ConfigError(
            f"{path}: {path.stat().st_size:,} bytes; a params file is at most "
            f"{MAX_PARAMS_BYTES:,} bytes. Is it the right file?"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 YAML"
        ) from None


def parse_yaml(text: str, path: str | Path) -> Any:
    """The plain values of the YAML ``text`` read from ``path`` (no aliases, no tags): every
    reader of a params file or a profile goes through here, so a syntax error, a key written twice
    or nesting too deep is always one line that names the file, line and column and the fix."""
    try:
        return _load(text)
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(path, error, text)) from None


def read_yaml(path: str | Path) -> Any:
    """The plain values of the YAML file ``path`` (see ``parse_yaml``)."""
    return parse_yaml(read_params_text(Path(path)), path)


def yaml_error_line(path: str | Path, error: Exception, text: str = "") -> str:
    """What a YAML parser (PyYAML's or ruamel's) found wrong in ``path``, on one line."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        start = f"line {context_mark.line + 1}, column {context_mark.column + 1}"
        problem += f" ({context} started at {start})"
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines) and lines[mark.line].strip():
        problem += f", in {_short_repr(lines[mark.line].strip(' '))}"
    return bounded(
        f"{where}: not valid YAML: {problem}; fix the file or restore it with "
        f"`git checkout -- {path}`"
    )


def load_config(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Config:
    """Load ``params.yaml`` (or another file) and apply dotted overrides."""
    path = Path(path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data:, train:, ...) at the top level, "
            f"found a {type(raw).__name__}"
        )
    return parse_config(apply_overrides(raw, overrides), source=str(path))
