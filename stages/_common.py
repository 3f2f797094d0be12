"""What every stage shares with the CLI: friendly errors and progress bars on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from uit.boundary import report_failure
from uit.console import adder, progress_bars

OWN_LOGGERS = ("uit", "stages", "__main__")  # the project's INFO lines stay


def run(main: Callable[[], None]) -> None:
    """Run a stage behind the error boundary (``uit.boundary``): bad input becomes a message
    and exit code 1, Ctrl-C exit code 130, not a traceback. The
    library's log messages (``resumed ... at epoch 3``) show on stderr; other libraries' (open_clip
    logs every model config it loads on the root logger) only from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        main()
    except SystemExit:
        raise
    except BaseException as error:  # the boundary: every failure ends here
        sys.exit(report_failure(error))


@contextmanager
def bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield ``bar(description, total)``, which adds a bar and returns its advance callback."""
    with progress_bars() as progress:
        yield adder(progress)
