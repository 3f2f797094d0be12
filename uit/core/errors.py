"""The library's own error types.

Every error a user can cause with bad input (config, data, paths) is a ``UitError`` whose message
names the file, record or key and says how to fix it. The CLI prints these without a traceback.
"""

MAX_MESSAGE = 4000  # characters: no error message may render unbounded data


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to ``limit`` characters, saying how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit:,} more characters cut)"


class UitError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ConfigError(UitError, ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


class DataError(UitError, ValueError):
    """A dataset on disk is missing, malformed or inconsistent."""


class WeightsError(UitError, ValueError):
    """A pretrained-weights file is missing, unreadable, unsafe or not the CLIP that was asked."""


class CheckpointError(UitError, ValueError):
    """A checkpoint or exported model folder is missing, damaged or does not fit its config."""


class TrainingError(UitError):
    """Training cannot go on (a loss became NaN or Inf, or a run cannot be resumed)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interruption (``uit.core.boundary.terminate_as_interrupt``) so
    that what a command holds is let go as on Ctrl-C: temporary files, child processes, the
    temporary Prefect server of ``uit run``. Exit code 143 (128 + SIGTERM)."""
