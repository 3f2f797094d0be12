"""uit: text-to-image person retrieval with the UIT method.

The front door: the handful of names a user needs, importable from ``uit`` itself (loaded on
first use, so ``import uit`` stays cheap)::

    from uit import ModelConfig, EvalOptions, build_model, build_tokenizer, load_encoder
    from uit import encode_images, encode_texts, rank, retrieval_metrics

The library (everything here but ``uit.app``) is plain Python, torch, open_clip, spaCy and
polars: build or load a model, encode, rank, score, train. It never imports the application's
dependencies (typer, dvc, prefect, matplotlib, ruamel.yaml, selenium); ``uit.app`` (the command
line, the report, the comparison of experiments, profiles) does, and needs the ``app`` extra.
See ``docs/design.md`` §2 for the layering (code cites it as "design §N").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_FRONT_DOOR = {
    "ModelConfig": "uit.core.config",
    "DualEncoder": "uit.model.encoder",
    "build_model": "uit.model.build",
    "build_tokenizer": "uit.model.build",
    "load_encoder": "uit.model.build",
    "EvalOptions": "uit.retrieval.evaluate",
    "encode_images": "uit.retrieval.evaluate",
    "encode_texts": "uit.retrieval.evaluate",
    "rank": "uit.retrieval.search",
    "retrieval_metrics": "uit.retrieval.metrics",
}
__all__ = [
    "DualEncoder",
    "EvalOptions",
    "ModelConfig",
    "__version__",
    "build_model",
    "build_tokenizer",
    "encode_images",
    "encode_texts",
    "load_encoder",
    "rank",
    "retrieval_metrics",
]

if TYPE_CHECKING:
    from uit.core.config import ModelConfig
    from uit.model.build import build_model, build_tokenizer, load_encoder
    from uit.model.encoder import DualEncoder
    from uit.retrieval.evaluate import EvalOptions, encode_images, encode_texts
    from uit.retrieval.metrics import retrieval_metrics
    from uit.retrieval.search import rank


def __getattr__(name: str) -> Any:
    """A front-door name, imported from its module on first use."""
    if name not in _FRONT_DOOR:
        raise AttributeError(f"module 'uit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_FRONT_DOOR[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_FRONT_DOOR})
