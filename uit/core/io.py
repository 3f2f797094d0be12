"""Atomic writes: a reader never sees a half-written file; a failure leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from uit.core.errors import UitError


def _file_mode(path: Path) -> int:
    """The mode an ordinary ``open(path, "w")`` would leave: an existing file keeps its own, a
    new one gets 0666 less the umask (mkstemp, and safetensors' writer, make files private)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def save_tensors(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` with ``metadata``, the same bytes for the same
    input. safetensors writes its metadata map in an order that changes from one process to
    the next (a Rust HashMap), so two runs of one stage wrote files of different hashes; the
    header is written again with the metadata's keys sorted (the same content, so it fits)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # not the same content after all: keep safetensors' own bytes
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    A failure to start names ``path``, the file the user asked for, never the temporary one."""
    path = Path(path)
    ensure_parent(path)
    if path.is_dir():
        raise UitError(f"{path} is a folder; give the path of a file to write")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise UitError(f"{path} cannot be written: {_reason(error)}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_parent(path: Path) -> None:
    """Create the folders above ``path``; a part of the way that is a file is named."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UitError(f"{path} cannot be written: {parent} is a file, not a folder; "
                               "give a path whose folders are folders")  # fmt: skip
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UitError(f"{path} cannot be written: {_reason(error)}") from None


def _reason(error: OSError) -> str:
    """Why a write failed, without the temporary name the OS error carries."""
    reasons = {
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EPERM: "permission denied; choose a folder you can write to",
        errno.EROFS: "the file system is read-only; choose a writable location",
        errno.ENOSPC: "no space left on the device; free some space and run again",
        errno.ENOTDIR: "a part of the path is a file, where a folder was expected",
    }
    return reasons.get(error.errno or 0, error.strerror or str(error))


def check_new_file(
    path: str | Path,
    option: str,
    *,
    overwrite: bool = False,
    suffixes: Collection[str] = (),
    error: type[UitError] = UitError,
) -> Path:
    """The one rule for a single-file output (``--sheet``, ``--plot``, ``weights convert``'s
    OUT...): a new file, or an existing one only when the user said ``--overwrite``; never a
    folder; its name ending in one of ``suffixes`` (the format written follows the name)."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise error(f"{option} {path}: the name must end in {' or '.join(sorted(suffixes))}, "
                    "the format that is written")  # fmt: skip
    if path.is_dir():
        raise error(f"{option} {path} is a folder; give the path of a file to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise error(f"{option} {path} already exists; choose another file name, or add "
                    "--overwrite to replace it")  # fmt: skip
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


# Folders that replaced_dir leaves beside its output only when killed: ".NAME.uit-tmp-PID-TOKEN"
# (being written) and ".NAME.uit-old-PID-TOKEN" (the previous output, between two renames).
_STAGING, _RETIRED = "uit-tmp", "uit-old"


# Says whether a non-empty folder is an earlier output of the command about to replace it.
Ours = Callable[[Path], bool]


def ready_output_dir(
    out_dir: str | Path,
    owned: Collection[str],
    error: type[UitError] = UitError,
    ours: Ours | None = None,
) -> Path:
    """Check ``out_dir`` can be replaced, after tidying up after killed runs; return its real path.

    A previous output that a kill caught between the two renames is put back, killed runs'
    temporary folders are deleted, and a folder holding anything but the ``owned`` file names
    (or a file) is refused: replacing it would delete what this command did not write. Where the
    owned names alone cannot tell (a real benchmark has the file names the synthetic one has),
    ``ours`` must also recognise a non-empty folder as this command's."""
    out_dir = Path(os.path.realpath(out_dir))
    if out_dir.parent.is_dir():
        _clean_leftovers(out_dir)
    _check_replaceable(out_dir, owned, error, ours)
    return out_dir


def _check_replaceable(
    out_dir: Path, owned: Collection[str], error: type[UitError], ours: Ours | None
) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise error(f"{out_dir} is a file; give a folder (new or existing) for the output")
    found = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    foreign = [name for name in found if name not in owned]
    if foreign:
        raise error(
            f"{out_dir} holds {len(foreign)} file(s) or folder(s) that this command did not write "
            f"(e.g. {foreign[0]}), and the whole folder would be replaced: give a new folder, "
            f"or one holding only {', '.join(sorted(owned))}"
        )
    if found and ours is not None and not ours(out_dir):
        raise error(
            f"{out_dir} holds files that this command did not write (no sign of an earlier run "
            "of it), and the whole folder would be replaced: give a new or empty folder, or "
            "move this one away yourself"
        )


@contextmanager
def replaced_dir(
    out_dir: str | Path,
    owned: Collection[str],
    error: type[UitError] = UitError,
    ours: Ours | None = None,
) -> Iterator[Path]:
    """Yield an empty folder beside ``out_dir``; on success it replaces ``out_dir`` as a whole.

    Publishing is two renames (``out_dir`` aside, the new folder in) and then deleting the old
    one, so a reader finds the old folder or the new one, never a mix; on failure ``out_dir`` is
    untouched. A symlinked ``out_dir`` has its target replaced. Leftovers of a killed run are
    deleted on the next run (a previous output caught between the renames is put back first).
    ``ready_output_dir`` says which folders may be replaced (``owned``, ``ours``).
    """
    out_dir = ready_output_dir(out_dir, owned, error, ours)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out_dir, _leftover_name(out_dir, _STAGING))
    try:
        yield tmp
        _normal_modes(tmp)
        _check_replaceable(out_dir, owned, error, ours)  # files added while this one ran
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staging_dir(out_dir: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty folder beside ``out_dir``, to be renamed onto it: with the mode ``out_dir``
    has, or else the one ``mkdir`` would give (mkdtemp makes folders private)."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=prefix, suffix=suffix))
    try:
        mode = stat.S_IMODE(out_dir.stat().st_mode)
    except OSError:
        mode = 0o777 & ~_umask()
    os.chmod(tmp, mode)
    return tmp


def _normal_modes(folder: Path) -> None:
    """Give what was written into ``folder`` the modes of ordinary writes: writers that stage
    their files (safetensors' ``save_file``) leave them private."""
    umask = _umask()
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            if not os.path.islink(path := os.path.join(parent, name)):
                os.chmod(path, 0o777 & ~umask)
        for name in files:
            if not os.path.islink(path := os.path.join(parent, name)):  # chmod follows links
                os.chmod(path, 0o666 & ~umask)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting and putting
    it back would give files that other threads create meanwhile the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # the narrowest window, and private meanwhile
    os.umask(umask)
    return umask


def _leftover_name(out_dir: Path, kind: str) -> str:
    return f".{out_dir.name}.{kind}-{os.getpid()}-"


def _publish(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=_leftover_name(out_dir, _RETIRED)))
    os.rename(out_dir, old)  # replaces the empty placeholder folder
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _clean_leftovers(out_dir: Path) -> None:
    """Delete what killed runs left beside ``out_dir``; live runs' folders are left alone."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.({_STAGING}|{_RETIRED})-(\d+)-\w+")
    found = [(p, m) for p in out_dir.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    for path, match in sorted(found, key=lambda item: -_mtime(item[0])):
        if not path.is_dir() or path.is_symlink() or _alive(int(match[2])):
            continue
        if match[1] == _RETIRED and not out_dir.exists():
            os.rename(path, out_dir)  # killed between the two renames: the old output comes back
        else:
            shutil.rmtree(path, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:  # deleted meanwhile by another run
        return 0.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_lock(
    folder: str | Path, busy: str, error: type[UitError] = UitError, wait: float = 0.0
) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if need be) while the block runs; another
    holder makes this raise ``error(busy)``, at once or after ``wait`` seconds. The lock is
    the folder's own (``flock`` on its descriptor): no lock file to leave behind, and the
    kernel drops it with its holder, so a killed writer never leaves the folder locked."""
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    ensure_parent(folder / "x")
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise error(busy) from None
                time.sleep(0.02)
        yield
    finally:
        if created:  # made for the lock alone, and left empty (the work failed early): gone
            with suppress(OSError):
                folder.rmdir()
        os.close(descriptor)
