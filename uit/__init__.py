"""uit: text-to-image person retrieval with the UIT method (library layer).

The library is plain Python and torch. It never imports prefect or dvc; typer lives only in
``uit.cli``. See ``docs/design.md`` §2 for the layering (code cites it as "design §N").
"""

__version__ = "0.1.0"
