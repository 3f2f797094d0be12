"""The application on top of the library: the ``uit`` command line (``cli``), the report
(``report``, ``plotting``, ``browser``), the comparison of DVC experiments (``compare``) and the
profile switcher (``profiles``). It needs the ``app`` extra (typer, matplotlib, ruamel.yaml,
selenium, dvc, prefect); the library under ``uit`` needs none of them (design §2).
"""

from __future__ import annotations

import importlib.util
import signal
import sys

# What the application imports beyond the library, by import name -> distribution name.
EXTRA = {"typer": "typer", "matplotlib": "matplotlib", "ruamel": "ruamel.yaml",
         "selenium": "selenium", "dvc": "dvc", "prefect": "prefect"}  # fmt: skip


def missing_extra() -> list[str]:
    """The application's dependencies this environment lacks (distribution names)."""
    return [dist for module, dist in EXTRA.items() if importlib.util.find_spec(module) is None]


def main() -> None:
    """The ``uit`` console script: the command line, or one line saying what to install.

    Ctrl-C (and SIGTERM) end in one line and exit code 130 (143) however early they come: while
    the command line's modules are still importing, or while click parses the arguments (click
    would print "Aborted!" and exit 1), not only inside a command."""
    from uit.core.errors import Terminated
    from uit.core.signals import terminate_as_interrupt

    signal.signal(signal.SIGINT, _on_interrupt)
    terminate_as_interrupt(_seen.append)
    try:
        _run()
    except Terminated:
        _stopped(signal.SIGTERM)
    except KeyboardInterrupt:
        _stopped(signal.SIGINT)
    except SystemExit as exit:
        if _seen and exit.code not in (0, None, *CODES.values()):
            _stopped(_seen[-1])
        raise


# Exit codes and lines of a stop by signal (uit.core.boundary prints the same in a command).
CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
LINES: dict[int, str] = {
    signal.SIGINT: "interrupted (Ctrl-C)",
    signal.SIGTERM: "terminated (SIGTERM)",
}
_seen: list[int] = []  # the signals received


def _on_interrupt(signum: int, frame: object) -> None:
    _seen.append(signum)
    raise KeyboardInterrupt


def _stopped(signum: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this line
    sys.stderr.write(f"{LINES[signum]}; outputs are written atomically, so nothing "
                     "half-written is left\n")  # fmt: skip
    raise SystemExit(CODES[signum])


def _run() -> None:
    missing = missing_extra()
    if missing:
        sys.stderr.write(f"error: the uit command needs the application extra (missing: "
                         f"{', '.join(missing)}): pip install 'uit[app]', or `make install` "
                         "in a clone\n")  # fmt: skip
        raise SystemExit(1)
    from uit.app.cli import main as cli_main

    cli_main()
