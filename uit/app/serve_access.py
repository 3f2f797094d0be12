"""Who may use ``uit serve``: named tokens stored hashed, and the limits on how fast anyone may
ask (a per-token rate limit, and a slower and slower door for an address that keeps guessing).

A token is 32 random bytes, urlsafe base64, shown once by ``uit serve token create``; the file
keeps only its SHA-256 (a stolen token file gives no token), is written whole and renamed into
place, and is readable by its owner only (0600). A running server reads the file again when
it changes, so a token revoked while it runs is refused from the next request on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import threading
import time
from collections import defaultdict, deque
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from uit.core.errors import UitError
from uit.core.io import atomic_write_json, folder_lock

TOKENS_FILE = "tokens.json"  # in the search cache's folder unless --tokens names another
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
RATE_LIMIT = 600  # requests a minute per token (per address without tokens): a page of 50 is 51
FAILURES = 10  # wrong tokens from one address in FAILURE_WINDOW seconds before it must wait
FAILURE_WINDOW = 60.0
SWEEP_EVERY = 60.0  # seconds between sweeps of the clients a limit no longer needs to remember
LOCK_WAIT = 10.0  # seconds a token command waits for another one changing the file


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str  # of the secret; the secret itself is never stored
    created: str  # UTC, ISO 8601


def tokens_path(tokens: Path | None, cache_dir: Path) -> Path:
    """The token file: ``--tokens``, else ``tokens.json`` beside the gallery cache."""
    return tokens if tokens is not None else cache_dir / TOKENS_FILE


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def read_tokens(path: Path) -> dict[str, Token]:
    """The tokens of ``path`` by name; none when the file does not exist."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {t["name"]: Token(t["name"], t["sha256"], t["created"]) for t in raw["tokens"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UitError(
            f"{path} is not a token file of uit serve ({error}); remove it and "
            "create the tokens again: uit serve token create NAME"
        ) from None


def write_tokens(path: Path, tokens: dict[str, Token]) -> None:
    """Write the token file whole, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # a new file is created private, and the atomic writer keeps an existing file's mode
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        os.chmod(path, 0o600)
    rows = [t.__dict__ for t in sorted(tokens.values(), key=lambda t: t.name)]
    atomic_write_json(path, {"tokens": rows})


def changing(path: Path) -> AbstractContextManager[None]:
    """The token file's folder locked while one command reads, changes and writes the file:
    two ``token create`` at once would otherwise each write the file without the other's
    token (a secret shown that no server accepts)."""
    busy = f"{path} is being changed by another uit serve token command: try again"
    return folder_lock(path.parent, busy, wait=LOCK_WAIT)


def create_token(path: Path, name: str) -> str:
    """A new token called ``name``, added to ``path``; returns the secret (shown once)."""
    if not NAME.fullmatch(name):
        raise UitError(f"token name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    with changing(path):
        tokens = read_tokens(path)
        if name in tokens:
            raise UitError(f"a token called {name!r} exists in {path}: revoke it first (uit "
                           f"serve token revoke {name}) or choose another name")  # fmt: skip
        secret = secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        write_tokens(path, {**tokens, name: Token(name, digest(secret), created)})
    return secret


def revoke_token(path: Path, name: str) -> None:
    with changing(path):
        tokens = read_tokens(path)
        if name not in tokens:
            known = ", ".join(sorted(tokens)) or "none"
            raise UitError(f"no token called {name!r} in {path} (tokens there: {known})")
        del tokens[name]
        write_tokens(path, tokens)


class TokenCheck:
    """The names of the valid tokens' digests, read again whenever the file changes (one
    ``stat`` a request). A token is required while the file holds one, and always with
    ``always`` (an exposed server: revoking its last token must not open it to everyone)."""

    def __init__(self, path: Path, always: bool = False) -> None:
        self.path, self.stamp, self.always = path, (-1, -1), always
        self.names: dict[str, str] = {}
        self.lock = threading.Lock()

    def required(self) -> bool:
        self._refresh()
        return self.always or bool(self.names)

    def name_of(self, secret: str) -> str | None:
        """The token's name, or None for a wrong (or revoked) token."""
        self._refresh()
        return self.names.get(digest(secret))

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_ino)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp == self.stamp:
            return
        with self.lock:
            tokens = read_tokens(self.path)
            self.names = {t.sha256: t.name for t in tokens.values()}
            self.stamp = stamp


class RateLimit:
    """A token bucket per key (a token's name, or an address): ``per_minute`` requests a
    minute, in bursts of up to as many. ``wait`` is 0 for a request let through, else the
    seconds until the next one would be. A bucket that has filled up again is forgotten (at
    most every ``SWEEP_EVERY`` seconds): it answers as a new one would, and a server open to
    many addresses does not grow a bucket for each one it ever saw."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens left, when)
        self.lock = threading.Lock()
        self.swept = time.monotonic()

    def wait(self, key: str) -> float:
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        with self.lock:  # the clock read inside: a bucket's times never go back
            now = time.monotonic()
            if now - self.swept >= SWEEP_EVERY:
                self._sweep(now, rate)
            left, then = self.buckets.get(key, (float(self.per_minute), now))
            left = min(float(self.per_minute), left + (now - then) * rate)
            if left >= 1.0:
                self.buckets[key] = (left - 1.0, now)
                return 0.0
            self.buckets[key] = (left, now)
            return (1.0 - left) / rate

    def _sweep(self, now: float, rate: float) -> None:
        full = float(self.per_minute)
        self.buckets = {key: (left, then) for key, (left, then) in self.buckets.items()
                        if left + (now - then) * rate < full}  # fmt: skip
        self.swept = now


class Failures:
    """Wrong tokens by address: after ``FAILURES`` in a minute, the address waits until the
    oldest of them is a minute old (``wait`` > 0: answered 429 without looking at the token).
    An address whose failures are all older than the window is forgotten (at most every
    ``SWEEP_EVERY`` seconds), whether or not it comes back."""

    def __init__(self, limit: int = FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.limit, self.window = limit, window
        self.times: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()
        self.swept = time.monotonic()

    def wait(self, address: str) -> float:
        with self.lock:
            now = time.monotonic()
            self._maybe_sweep(now)
            times = self.times.get(address)
            if not times:
                return 0.0
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self.times[address]  # addresses that stopped failing are forgotten
            if len(times) < self.limit:
                return 0.0
            return times[0] + self.window - now

    def failed(self, address: str) -> None:
        with self.lock:  # the clock read inside: each address's times stay in order
            now = time.monotonic()
            self._maybe_sweep(now)
            self.times[address].append(now)

    def _maybe_sweep(self, now: float) -> None:
        if now - self.swept < SWEEP_EVERY:
            return
        for address in [a for a, t in self.times.items() if not t or t[-1] <= now - self.window]:
            del self.times[address]
        self.swept = now


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
