"""Matplotlib for files, not screens: the Agg backend, and its font cache kept in the project
(``.cache/matplotlib``) instead of the home folder unless ``MPLCONFIGDIR`` says otherwise."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    os.environ.setdefault("MPLCONFIGDIR", str(Path(".cache/matplotlib").resolve()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot().close(figure)
    return buffer.getvalue()
