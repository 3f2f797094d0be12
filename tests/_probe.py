"""Run a stage module as DVC would, recording which params it reads and which project modules
it imports (tests/test_pipeline.py compares both with what dvc.yaml declares).

Usage (in a pipeline's dvc.yaml, in place of ``python -m stages.X``):
``python -m _probe stages.X ARGS...``; the record goes to ``$UIT_PROBE_DIR``.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import uit.core.config

SEEN: set[str] = set()


class Tracked:
    """Wraps a config section; records each leaf read (``model.name``) and each whole-section
    use (``model_dump`` and friends record the section's path)."""

    def __init__(self, target: BaseModel, path: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        target, path = (
            object.__getattribute__(self, "_target"),
            object.__getattribute__(self, "_path"),
        )
        value = getattr(target, name)
        key = f"{path}.{name}" if path else name
        if isinstance(value, BaseModel):
            return Tracked(value, key)
        if name in type(target).model_fields:
            SEEN.add(key)
            return value
        SEEN.add(path or "*")  # a method such as model_dump reads the whole section
        return value


_load = uit.core.config.load_config


def tracked_load_config(*args: Any, **kwargs: Any) -> Any:
    return Tracked(_load(*args, **kwargs), "")


def _dump(stage: str) -> None:
    root = Path.cwd()
    names = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
    files = [Path(name) for name in names if name and Path(name).is_absolute()]
    files.append(Path(stage.replace(".", "/") + ".py").resolve())  # run as __main__, then gone
    modules = sorted({str(f.relative_to(root)) for f in files if f.is_relative_to(root)})
    out = Path(os.environ["UIT_PROBE_DIR"]) / f"{uuid.uuid4().hex}.json"
    record = {"stage": stage, "argv": sys.argv[1:], "params": sorted(SEEN), "modules": modules}
    out.write_text(json.dumps(record))


if __name__ == "__main__":
    stage = sys.argv[1]
    uit.core.config.load_config = tracked_load_config  # stages import it by name at import time
    sys.argv = [stage, *sys.argv[2:]]
    atexit.register(_dump, stage)
    runpy.run_module(stage, run_name="__main__", alter_sys=True)
