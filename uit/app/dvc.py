"""Running DVC from the application: the environment its stages need, and its read-only
``--json`` commands (``exp show``) parsed. The one place both the CLI and the flows get them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uit.core.errors import UitError


def dvc_env(project: str | Path) -> dict[str, str]:
    """Stages call ``python``: the interpreter running this process comes first on PATH. DVC
    keeps its site cache (state, index) inside the project rather than in /var/tmp."""
    bin_dir = str(Path(sys.executable).parent)
    site_cache = str(Path(project).resolve() / ".dvc" / "tmp" / "site-cache")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": site_cache}  # fmt: skip


def dvc_json(args: Sequence[str], project: str | Path) -> Any:
    """Run a read-only ``dvc ARGS --json`` in ``project`` and parse what it prints."""
    try:
        result = subprocess.run(["dvc", *args, "--json"], cwd=project, env=dvc_env(project),
                                capture_output=True, text=True)  # fmt: skip
    except FileNotFoundError:
        raise UitError("dvc is not installed in this environment: pip install 'uit[app]'") from None
    if result.returncode != 0:
        raise UitError(f"dvc {' '.join(args)} failed in {project}: {result.stderr.strip()[-800:]}")
    return json.loads(result.stdout or "[]")
