"""The application on top of the library: the ``uit`` command line (``cli``), the report
(``report``, ``plotting``, ``browser``), the comparison of DVC experiments (``compare``) and the
profile switcher (``profiles``). It needs the ``app`` extra (typer, matplotlib, ruamel.yaml,
selenium, dvc, prefect); the library under ``uit`` needs none of them (design §2).
"""

from __future__ import annotations

import importlib.util
import sys

# What the application imports beyond the library, by import name -> distribution name.
EXTRA = {"typer": "typer", "matplotlib": "matplotlib", "ruamel": "ruamel.yaml",
         "selenium": "selenium", "dvc": "dvc", "prefect": "prefect"}  # fmt: skip


def missing_extra() -> list[str]:
    """The application's dependencies this environment lacks (distribution names)."""
    return [dist for module, dist in EXTRA.items() if importlib.util.find_spec(module) is None]


def main() -> None:
    """The ``uit`` console script: the command line, or one line saying what to install."""
    missing = missing_extra()
    if missing:
        sys.stderr.write(f"error: the uit command needs the application extra (missing: "
                         f"{', '.join(missing)}): pip install 'uit[app]', or `make install` "
                         "in a clone\n")  # fmt: skip
        raise SystemExit(1)
    from uit.app.cli import main as cli_main

    cli_main()
