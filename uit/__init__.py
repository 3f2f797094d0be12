"""uit: text-to-image person retrieval with the UIT method.

The library (everything here but ``uit.app``) is plain Python, torch, open_clip, spaCy and
polars: build or load a model, encode, rank, score, train. It never imports the application's
dependencies (typer, dvc, prefect, matplotlib, ruamel.yaml, selenium); ``uit.app`` (the command
line, the report, the comparison of experiments, profiles) does, and needs the ``app`` extra.
See ``docs/design.md`` §2 for the layering (code cites it as "design §N").
"""

__version__ = "0.1.0"
