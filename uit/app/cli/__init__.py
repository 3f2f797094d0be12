"""The ``uit`` command line: the front door to data, training, evaluation and search.

One module per theme, each registering its commands on the app of ``base`` (the frame: help
pages, the error boundary, shared helpers):

- ``data``: ``uit synth``, ``uit data prepare | stats | parse``;
- ``training``: ``uit train``, ``uit pretrain``, ``uit evaluate``;
- ``results``: ``uit compare``, ``uit report``, ``uit profile``;
- ``serving``: ``uit search``, ``uit serve``;
- ``galleries``: ``uit gallery add | erase``;
- ``models``: ``uit export``, ``uit weights convert``;
- ``pipeline``: ``uit run``.
"""

from __future__ import annotations

# isort: off
# the commands register in this order, which is the order of `uit --help`
from uit.app.cli import data, training, results, serving, galleries, models, pipeline  # noqa: F401

# isort: on
from uit.app.cli.base import app

__all__ = ["app", "main"]


def main() -> None:
    app()
