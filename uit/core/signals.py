"""Signals as exceptions: SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``), so that a
terminated command lets go of what it holds as on Ctrl-C (temporary files through ``finally``,
child processes, exit handlers such as the temporary Prefect server's)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from uit.core.errors import Terminated


def terminate_as_interrupt(seen: Callable[[int], None] | None = None) -> None:
    """From now on SIGTERM raises ``Terminated`` in this process; forked children that inherit
    the handler (loader workers, drawing pools) die of it as usual. ``seen`` is told first."""
    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if seen is not None:
            seen(signum)
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
