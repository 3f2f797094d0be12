"""The project's own architectures (``uit-tiny``), made known to open_clip by name.

A module of its own because both the model factory (``uit.model.build``) and the weights
readers (``uit.model.weights``) look architectures up, and the readers come first."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).with_name("configs")


@cache
def register_configs() -> None:
    """Make the project's architectures (``uit-tiny``) known to open_clip by name."""
    open_clip.add_model_config(CONFIG_DIR)
