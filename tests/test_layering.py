"""design §2: dependencies point one way. `uit/` never imports prefect or dvc; typer only in cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


LIBRARY = sorted((ROOT / "uit").rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_orchestration(path: Path) -> None:
    forbidden = {"prefect", "dvc", "flows", "stages"}
    if path.name == "cli.py":
        forbidden.discard("flows")  # the CLI may start a flow (`uit run`)
    else:
        forbidden.add("typer")
    assert not imported_modules(path) & forbidden


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import prefect.flows\nfrom dvc.api import params_show\nfrom . import x\n")
    assert imported_modules(sample) == {"prefect", "dvc"}


def test_layout_of_design_section_2_exists() -> None:
    for name in ("params.yaml", "dvc.yaml", "pyproject.toml", "Makefile", "README.md"):
        assert (ROOT / name).is_file(), name
    for name in ("uit", "stages", "flows", "tests", "benchmarks"):
        assert (ROOT / name).is_dir(), name
