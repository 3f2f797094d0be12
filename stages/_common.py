"""What every stage shares with the CLI: friendly errors and progress bars on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from uit.console import adder, err_console, progress_bars
from uit.errors import UitError


def run(main: Callable[[], None]) -> None:
    """Run a stage; a user error becomes a message and exit code 1, not a traceback. The
    library's log messages (``resumed ... at epoch 3``) show on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        main()
    except UitError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)


@contextmanager
def bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield ``bar(description, total)``, which adds a bar and returns its advance callback."""
    with progress_bars() as progress:
        yield adder(progress)
