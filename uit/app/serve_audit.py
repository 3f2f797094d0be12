"""The audit log of ``uit serve``: every search and every image served, one JSON line each
(UTC time, token name, client address, route, what was asked and what was answered; never the
token itself), in a file the operator names.

A line is written whole under a lock, appended, flushed and fsynced before the answer leaves,
so lines of requests answered at once never interleave and none is lost in a crash; a line
that cannot be written refuses the request (``AuditError``: the server answers 503). The file
is opened again for every line, so a log moved away by the operator is started anew. Past
``max_bytes`` it is rotated (``FILE.1`` the newest old file, up to ``keep`` of them); lines
and old files older than ``retention_days`` are dropped at start and at each rotation. Only a
file whose first line is an audit record is ever rewritten, rotated away or deleted: an existing
file of anything else is refused at start, and a foreign ``FILE.n`` is left alone.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from uit.core.errors import UitError
from uit.core.io import atomic_write_bytes


class AuditError(UitError):
    """The audit log could not be written: the request it records must not be answered."""


NEVER_ROTATE = 2**62  # max_bytes of a writer that leaves rotation to the server


@dataclass(frozen=True)
class AuditPolicy:
    path: Path
    max_bytes: int = 100 << 20
    keep: int = 5  # rotated files kept
    retention_days: int = 0  # 0: lines are kept however old


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self, policy: AuditPolicy) -> None:
        self.policy, self.path = policy, policy.path
        self.lock = threading.Lock()
        try:
            if self.path.is_file() and self.path.stat().st_size and not is_audit_file(self.path):
                raise UitError(f"--audit-log {self.path} holds something other than an audit "
                               "log of uit serve: give a new file (uit never rewrites or "
                               "rotates a file it did not write)")  # fmt: skip
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prune()
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as error:
            raise UitError(f"--audit-log {self.path} cannot be written ({error.strerror}): "
                           "give a file in a folder you can write") from None  # fmt: skip

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line, on disk before this returns (``AuditError`` if not)."""
        line = (json.dumps({"time": now_iso(), **record}, ensure_ascii=False) + "\n").encode()
        with self.lock:
            try:
                self._rotate_if_full(len(line))
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)  # one write of a whole line, O_APPEND: never interleaved
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as error:
                raise AuditError(f"the audit log {self.path} cannot be written "
                                 f"({error.strerror})") from None  # fmt: skip

    def _rotate_if_full(self, adding: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + adding <= self.policy.max_bytes:
            return
        slots = 0  # the rotated files this log may use: a foreign FILE.n ends them
        while slots < self.policy.keep and not _foreign(rotated(self.path, slots + 1)):
            slots += 1
        if self.policy.keep > 0 and slots == 0:
            raise AuditError(f"the audit log {self.path} is full and {rotated(self.path, 1)} "
                             "is not an audit log: move that file away")  # fmt: skip
        for n in range(slots, 0, -1):
            older = rotated(self.path, n)
            if n == slots:
                older.unlink(missing_ok=True)  # the oldest of this log's own files
            elif older.exists():
                older.rename(rotated(self.path, n + 1))
        if slots > 0:
            self.path.rename(rotated(self.path, 1))
        else:
            self.path.unlink()
        self._prune()

    def _prune(self) -> None:
        """Drop what is older than the retention: old files whole, the current file's lines."""
        if self.policy.retention_days <= 0:
            return
        cutoff = datetime.now(UTC) - timedelta(days=self.policy.retention_days)
        for n in range(1, self.policy.keep + 2):
            old = rotated(self.path, n)
            if is_audit_file(old) and datetime.fromtimestamp(old.stat().st_mtime, UTC) < cutoff:
                old.unlink()
        if not self.path.exists():
            return
        lines = self.path.read_bytes().splitlines(keepends=True)  # bytes: the rest kept as is
        kept = [line for line in lines if not _older(line, cutoff)]
        if len(kept) < len(lines):
            atomic_write_bytes(self.path, b"".join(kept))


def is_audit_file(path: Path) -> bool:
    """Whether ``path`` is a file whose first line is an audit record (a JSON object with a
    time): what rotation and retention may rewrite or delete."""
    try:
        with path.open("rb") as file:
            first = json.loads(file.readline())
        return isinstance(first, dict) and isinstance(first.get("time"), str)
    except (OSError, ValueError):
        return False


def _foreign(path: Path) -> bool:
    return path.exists() and not is_audit_file(path)


def rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _older(line: bytes, cutoff: datetime) -> bool:
    try:
        return parse_time(json.loads(line)["time"]) < cutoff
    except (ValueError, KeyError, TypeError):
        return False  # a line it cannot read is kept, not silently dropped


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def read_audit(path: Path, *, since: datetime | None = None, token: str | None = None,
               query: str | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The records of ``path`` and its rotated files, oldest first, that match: at or after
    ``since``, by the token named ``token``, with ``query`` in the query text (any case)."""
    files = [p for n in range(99, 0, -1) if is_audit_file(p := rotated(path, n))]
    if not path.exists() and not files:
        raise UitError(f"{path}: no audit log there (uit serve --audit-log writes one)")
    for file in [*files, path] if path.exists() else files:
        with file.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("time"), str):
                        raise ValueError
                    if since is not None:
                        parse_time(record["time"])
                except ValueError:
                    raise UitError(f"{file}, line {number}: not a line of an audit log") from None
                if _matches(record, since, token, query):
                    yield record


def _matches(record: dict[str, Any], since: datetime | None, token: str | None,
             query: str | None) -> bool:  # fmt: skip
    if since is not None and parse_time(record["time"]) < since:
        return False
    if token is not None and record.get("token") != token:
        return False
    return query is None or query.lower() in str(record.get("query") or "").lower()
