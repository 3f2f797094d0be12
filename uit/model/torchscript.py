"""OpenAI's TorchScript archives (``ViT-B-16.pt``), read without running them.

A restricted unpickler reads the archive's ``data.pkl``: it knows tensors (their storages read
from the archive, each checked to be a weight before it is copied out), plain containers and
inert records of TorchScript modules; any other global is refused before anything is called.
The archive's code is parsed, never run, for each class's parameters and buffers, so that the
state dict is the one ``torch.jit.load(path).state_dict()`` would give.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import operator
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import torch
from torch import Tensor

from uit.core.errors import WeightsError
from uit.model.limits import (
    DAMAGED_ARCHIVE,
    UNSAFE_VIEW_FIX,
    byte_budget,
    check_unpacked_sizes,
    read_entry,
    view_problem,
)

log = logging.getLogger(__name__)

_STORAGE_DTYPES = {
    f"{name}Storage": dtype
    for name, dtype in (
        ("Float", torch.float32),
        ("Half", torch.float16),
        ("BFloat16", torch.bfloat16),
        ("Double", torch.float64),
        ("Long", torch.int64),
        ("Int", torch.int32),
        ("Short", torch.int16),
        ("Char", torch.int8),
        ("Byte", torch.uint8),
        ("Bool", torch.bool),
    )
}


class _Forbidden(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list."""


class _Unsafe(Exception):
    """The archive declares a tensor that reading would blow up (the message says which, how)."""


class _ScriptObject:
    """Stands in for an instance of a TorchScript class (``__torch__.*``): it records the state
    the pickle hands it and has no behaviour, so nothing in the archive runs."""

    qualified_name: ClassVar[str] = ""
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.state = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _same(value: Any, *_: Any) -> Any:
    return value


MAX_CODE_BYTES = 256 << 10  # a TorchScript class's code file: OpenAI's are a few kB each
_REBUILD_TENSOR = (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"))
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    # typed lists and dicts of module attributes: the value is kept, the type tag dropped
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
    ("torch.jit._pickle", "restore_type_tag"): _same,
}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors (storages from the archive), containers and
    inert ``_ScriptObject`` records; any other global is refused before anything is called."""

    def __init__(
        self,
        file: IO[bytes],
        read_storage: Callable[[str, torch.dtype, int], Tensor],
        root: str,
        budget: int,
    ) -> None:
        super().__init__(file)
        self._root = root
        self._read_storage = read_storage
        self._classes: dict[str, type[_ScriptObject]] = {}
        self._entries: dict[int, str] = {}  # id of a storage -> the archive entry it came from
        self._budget = budget  # bytes the tensors copied out of their storages may still take

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                attributes = {"qualified_name": qualified}
                self._classes[qualified] = type(name, (_ScriptObject,), attributes)
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _REBUILD_TENSOR:
            return self._rebuild_tensor
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Forbidden(f"{module}.{name}")
        return _ALLOWED_GLOBALS[module, name]

    def persistent_load(self, pid: Any) -> Tensor:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], torch.dtype)
        ):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid  # any device: read onto the CPU
        storage = self._read_storage(str(key), dtype, operator.index(numel))
        self._entries[id(storage)] = f"{self._root}/data/{key}"
        return storage

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Tensor:
        """The view torch's ``_rebuild_tensor_v2`` makes, as a copy of its own, once it is known
        to be a weight (``view_problem``) that fits what is left of the byte budget;
        requires_grad, hooks and metadata are ignored."""
        if not isinstance(storage, Tensor):
            raise pickle.UnpicklingError("a tensor whose storage is not in the archive")
        shape = tuple(map(operator.index, size))
        steps, start = tuple(map(operator.index, stride)), operator.index(offset)
        where = f"the tensor stored in {self._entries.get(id(storage), 'an unnamed entry')}"
        problem = view_problem(shape, steps, start, storage.numel())
        if problem:
            raise _Unsafe(f"{where} {problem}; {UNSAFE_VIEW_FIX}")
        self._budget -= math.prod(shape) * storage.element_size()
        if self._budget < 0:
            raise _Unsafe(
                f"its tensors (up to {where}) add up to more than twice the file's size: they "
                f"share their bytes many times over, which copying them out would multiply; "
                f"{UNSAFE_VIEW_FIX}"
            )
        return storage.as_strided(shape, steps, start).clone(memory_format=torch.contiguous_format)


def _storage_reader(
    archive: zipfile.ZipFile, root: str
) -> Callable[[str, torch.dtype, int], Tensor]:
    """Reads ``root/data/<key>`` as a flat tensor of ``numel`` elements, once per key."""
    storages: dict[str, Tensor] = {}

    def read(key: str, dtype: torch.dtype, numel: int) -> Tensor:
        if key not in storages:
            name, itemsize = f"{root}/data/{key}", torch.empty((), dtype=dtype).element_size()
            declared = archive.getinfo(name).file_size  # checked before reading, as sizes are
            if numel < 0 or declared < numel * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {declared:,} bytes, fewer than its {numel:,} elements"
                )
            data = bytearray(read_entry(archive, name, numel * itemsize))
            if len(data) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} is shorter than its {numel} elements")
            storages[key] = (
                torch.frombuffer(data, dtype=dtype, count=numel)
                if numel
                else torch.empty(0, dtype=dtype)
            )
        return storages[key]

    return read


@dataclass(frozen=True)
class _ScriptClass:
    """A TorchScript class as its archived source declares it."""

    is_module: bool
    tensors: tuple[str, ...]  # __parameters__ then __buffers__: what state_dict() holds


def _declared_names(node: ast.ClassDef, name: str) -> tuple[str, ...]:
    for statement in node.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in statement.targets
        ):
            return tuple(str(value) for value in ast.literal_eval(statement.value))
    return ()


def _script_classes(archive: zipfile.ZipFile, root: str) -> dict[str, _ScriptClass]:
    """Each class in the archive's ``code/`` folder, parsed (never run) for its parameters and
    buffers; a class that cannot be parsed is left out (all its tensors are then kept)."""
    classes: dict[str, _ScriptClass] = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix) : -len(".py")].replace("/", ".")
        if archive.getinfo(name).file_size > MAX_CODE_BYTES:  # its syntax tree would be GBs
            log.warning("%s: left out %s, larger than any class's code", archive.filename, name)
            continue
        try:
            tree = ast.parse(read_entry(archive, name).decode("utf-8"))
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    bases = {base.id for base in node.bases if isinstance(base, ast.Name)}
                    tensors = _declared_names(node, "__parameters__")
                    tensors += _declared_names(node, "__buffers__")
                    classes[f"{module}.{node.name}"] = _ScriptClass("Module" in bases, tensors)
        except (SyntaxError, UnicodeDecodeError, ValueError, TypeError, RecursionError) as error:
            log.warning("%s: could not parse %s (%s)", archive.filename, name, error)
    return classes


def _flatten(
    obj: _ScriptObject, classes: dict[str, _ScriptClass], prefix: str, out: dict[str, Tensor]
) -> None:
    """Add a module's parameters and buffers, then its submodules', as ``state_dict()`` does."""
    state = obj.state if isinstance(obj.state, dict) else {}
    declared = classes.get(obj.qualified_name)
    names = declared.tensors if declared else [k for k, v in state.items() if isinstance(v, Tensor)]
    for name in names:
        if isinstance(state.get(name), Tensor):  # a parameter may be None (a Linear without bias)
            out[prefix + name] = state[name]
    for name, value in state.items():
        child = classes.get(value.qualified_name) if isinstance(value, _ScriptObject) else None
        if isinstance(value, _ScriptObject) and (child is None or child.is_module):
            _flatten(value, classes, f"{prefix}{name}.", out)


def torchscript_root(names: Iterable[str]) -> str | None:
    """The archive's top folder when it is TorchScript (``data.pkl`` beside ``code/`` or
    ``constants.pkl``); torch.save archives have neither."""
    names = list(names)
    roots = sorted(
        {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    )
    for root in roots:
        if f"{root}/constants.pkl" in names or any(n.startswith(f"{root}/code/") for n in names):
            return root
    return None


def _unpickle_archive(path: Path) -> tuple[Any, dict[str, _ScriptClass]]:
    """The object tree of a TorchScript archive's ``data.pkl`` and its declared classes."""
    with zipfile.ZipFile(path) as archive:
        check_unpacked_sizes(path, archive.infolist())  # before anything is read
        names = archive.namelist()
        root = torchscript_root(names)
        assert root is not None  # _container saw it
        if (
            f"{root}/byteorder" in names
            and read_entry(archive, f"{root}/byteorder").strip() == b"big"
        ):
            raise pickle.UnpicklingError("tensors stored big-endian")
        classes = _script_classes(archive, root)
        data = io.BytesIO(read_entry(archive, f"{root}/data.pkl"))  # pickle asks for any size
        read_storage = _storage_reader(archive, root)
        unpickler = _TorchScriptUnpickler(data, read_storage, root, byte_budget(path))
        return unpickler.load(), classes


def read_torchscript(path: Path) -> dict[str, Tensor]:
    """The state dict of a TorchScript archive, equal to ``torch.jit.load(path).state_dict()``,
    read without executing or unpickling anything but tensors and module records."""
    state: dict[str, Tensor] = {}
    try:
        top, classes = _unpickle_archive(path)
        if isinstance(top, _ScriptObject):
            _flatten(top, classes, "", state)  # a cyclic or absurdly deep tree: RecursionError
    except _Forbidden as error:
        raise WeightsError(
            f"{path}: refused to load it: its data.pkl asks for {error}, which is neither a tensor "
            "nor a TorchScript module, so the file is not an OpenAI CLIP archive and loading it "
            "could run code. Use OpenAI's original file, or a state dict saved as safetensors."
        ) from None
    except WeightsError:
        raise
    except _Unsafe as error:
        raise WeightsError(f"{path}: {error}") from None
    except DAMAGED_ARCHIVE as error:
        raise WeightsError(
            f"{path} is a TorchScript archive whose weights cannot be read ({type(error).__name__}:"
            f" {error}): it is probably truncated or damaged; download or copy it again."
        ) from None
    if not isinstance(top, _ScriptObject):
        raise WeightsError(
            f"{path} is a TorchScript archive that holds a {type(top).__name__}, not a module; "
            "give OpenAI's CLIP file (ViT-B-16.pt) or a state dict."
        )
    return state
