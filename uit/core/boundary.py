"""The one error boundary of every front door (CLI commands, DVC stages).

An expected failure (bad input: a ``UitError``, or what a library raises for a bad file, a bad
path or a full disk) becomes one message and exit code 1; Ctrl-C becomes one line and exit code
130. Anything else is a bug in uit: its traceback is shown, but only behind a line that says so.
No message renders unbounded data: each is cut by ``uit.core.errors.bounded``.
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.markup import escape

from uit.core.console import err_console
from uit.core.errors import DataError, Terminated, UitError, bounded
from uit.core.signals import terminate_as_interrupt

BUG = (
    "this is a bug in uit, not in your input; please report it to the uit maintainers with the "
    "command you ran and the traceback below"
)
INTERRUPTED = (
    "interrupted (Ctrl-C); outputs are written atomically, so nothing half-written is left"
)
TERMINATED = "terminated (SIGTERM); outputs are written atomically, so nothing half-written is left"
# Exit codes: 1 for any failure, 130 (128 + SIGINT) for Ctrl-C and 143 (128 + SIGTERM) for a
# termination, as shells report them.
FAILED, INTERRUPTED_CODE, TERMINATED_CODE = 1, 130, 143


_OS_FIXES = {
    errno.ENOENT: "not found; check the path",
    errno.EACCES: "permission denied; choose a location you can read and write, or fix its "
    "permissions",
    errno.EPERM: "operation not permitted; choose another location or fix its permissions",
    errno.EISDIR: "is a folder, where a file was expected; give the path of a file",
    errno.ENOTDIR: "a part of the path is a file, where a folder was expected",
    errno.ENOSPC: "no space left on the device; free some space and run again",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.ENAMETOOLONG: "the name is too long",
}


def describe(error: BaseException) -> str | None:
    """The user-facing message of an expected failure; ``None`` for a bug."""
    if isinstance(error, UitError):
        return str(error)
    package = type(error).__module__.split(".")[0]
    if package == "PIL":  # before OSError: PIL's UnidentifiedImageError is one
        return f"an image could not be read ({error}); replace or remove the file"
    if isinstance(error, UnicodeDecodeError):
        return f"a text file is not UTF-8 ({error}); save it as UTF-8"
    if isinstance(error, json.JSONDecodeError):
        return f"a JSON file is damaged or truncated ({error}); write it again"
    if isinstance(error, OSError):
        return _os_message(error)
    if type(error).__name__ == "SafetensorError":
        return f"a safetensors file is damaged or truncated ({error}); write or copy it again"
    if package == "polars":
        return f"a Parquet or table file could not be read ({type(error).__name__}: {error})"
    if package == "yaml":
        return f"a YAML file is not valid YAML ({error})"
    if isinstance(error, EOFError):
        return f"a file ended early, truncated or empty ({error}); write or copy it again"
    return None


def _os_message(error: OSError) -> str:
    where = error.filename if error.filename is not None else ""
    fix = _OS_FIXES.get(error.errno or 0)
    if fix is None:
        return f"{where}: {error.strerror or error}" if where else str(error)
    return f"{where}: {fix}" if where else f"{error.strerror or error}: {fix}"


def report_failure(error: BaseException) -> int:
    """Print what went wrong on stderr and return the exit code."""
    if isinstance(error, Terminated):
        err_console.print(TERMINATED, highlight=False, soft_wrap=True)
        return TERMINATED_CODE
    if isinstance(error, KeyboardInterrupt):
        err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
        return INTERRUPTED_CODE
    message = describe(error)
    if message is None:
        err_console.print(f"[bold red]error:[/] {BUG}", highlight=False, soft_wrap=True)
        traceback.print_exception(error, file=sys.stderr)
        return FAILED
    err_console.print(f"[bold red]error:[/] {escape(bounded(message))}", highlight=False,
                      soft_wrap=True)  # fmt: skip
    return FAILED


# What a damaged prepared folder is, and how to mend it, for ``reading``.
PREPARED = (
    "it should be a prepared benchmark (stats.json, images.parquet, captions.parquet)",
    "Run `uit data prepare --benchmark BENCHMARK --root RAW_ROOT --out FOLDER` to rewrite it.",
)


@contextmanager
def reading(path: str | Path, what: str, fix: str) -> Iterator[None]:
    """Turn what a reader of ``path`` raises for a damaged file into a ``DataError`` naming
    ``path``, ``what`` it should be and the ``fix``. Wrap only the read: the wrong shape of a
    file shows up as ``KeyError`` or ``TypeError``, which elsewhere would be bugs."""
    try:
        yield
    except UitError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, OSError, EOFError) as error:
        raise DataError(bounded(f"{path}: {_cause(error)}; {what}. {fix}")) from None
    except Exception as error:
        if type(error).__module__.split(".")[0] not in ("polars", "safetensors", "PIL"):
            raise
        raise DataError(bounded(f"{path}: {_cause(error)}; {what}. {fix}")) from None


def _cause(error: BaseException) -> str:
    if isinstance(error, OSError) and not type(error).__module__.startswith("PIL"):
        return _os_message(error)
    return f"damaged or of the wrong shape ({type(error).__name__}: {error})"


OWN_LOGGERS = ("uit", "stages", "__main__")  # the project's INFO lines stay


def run_stage(main: Callable[[], None]) -> None:
    """Run a DVC stage's ``main`` behind the boundary: bad input becomes a message and exit code
    1, Ctrl-C exit code 130, not a traceback. The project's log messages (``resumed ... at epoch
    3``) show on stderr; other libraries' (open_clip logs every model config it loads on the root
    logger) only from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    terminate_as_interrupt()
    try:
        main()
    except SystemExit:
        raise
    except BaseException as error:  # the boundary: every failure ends here
        sys.exit(report_failure(error))
