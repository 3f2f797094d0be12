"""design §2: dependencies point one way, and the library stands without the application.

The library (``uit`` without ``uit.app``) never imports the application's dependencies (typer,
dvc, prefect, matplotlib, ruamel.yaml, selenium, fastapi, uvicorn), nor ``uit.app``, ``flows`` or
``stages``; FAISS (the ``serve`` extra) only inside the functions of the approximate index;
only the command line (``uit/app/cli/``) imports typer and starts the flows (``uit/app/flows/``),
and the wheel holds ``uit`` alone. Checked twice: statically, on every
import statement of the library, and at run time, in a fresh interpreter that runs the README's
library snippet and then imports every library module. Within the library no import circle
exists, imports inside functions included; an export is written by ``uit/model/export.py``
alone; the one unpickler lives in ``uit/model/torchscript.py``.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP_DEPENDENCIES = {"typer", "click", "dvc", "prefect", "matplotlib", "ruamel", "selenium",
                    "fastapi", "uvicorn"}  # fmt: skip
LAYERS_ABOVE = {"flows", "stages"}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports are within its package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def tops(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


LIBRARY = sorted(p for p in (ROOT / "uit").rglob("*.py") if "app" not in p.relative_to(ROOT).parts)
APP = sorted((ROOT / "uit" / "app").rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_imports_nothing_of_the_application(path: Path) -> None:
    imported = imported_modules(path)
    assert not tops(imported) & (APP_DEPENDENCIES | LAYERS_ABOVE)
    assert not any(name == "uit.app" or name.startswith("uit.app.") for name in imported)


# The library's folders in dependency order (design §2): each imports only those before it.
ORDER = ("core", "data", "raw", "synth", "text", "parsing", "model", "retrieval", "training")


def runtime_tree(path: Path) -> ast.Module:
    """``path``'s syntax tree without what runs only under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    return tree


def runtime_imports(path: Path) -> set[str]:
    """``imported_modules`` without the imports under ``if TYPE_CHECKING:`` (annotations only)."""
    tree = runtime_tree(path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_layer_folders_are_the_whole_library() -> None:
    folders = {p.name for p in (ROOT / "uit").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {*ORDER, "app"}
    assert {p.name for p in (ROOT / "uit").glob("*.py")} == {"__init__.py"}


@pytest.mark.parametrize("path", [p for p in LIBRARY if p.parent != ROOT / "uit"],
                         ids=lambda p: str(p.relative_to(ROOT)))  # fmt: skip
def test_each_layer_imports_only_the_layers_before_it(path: Path) -> None:
    own = ORDER.index(path.relative_to(ROOT / "uit").parts[0])
    for name in runtime_imports(path):
        parts = name.split(".")
        if parts[0] == "uit" and len(parts) > 1 and parts[1] in ORDER:
            assert ORDER.index(parts[1]) <= own, f"{path.relative_to(ROOT)} imports {name}"


CLI, FLOWS = ROOT / "uit" / "app" / "cli", ROOT / "uit" / "app" / "flows"


@pytest.mark.parametrize("path", APP, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_cli_imports_typer_and_starts_flows(path: Path) -> None:
    imported = imported_modules(path)
    assert not tops(imported) & ({"stages", "flows"} | ({"typer"} if CLI not in path.parents
                                                         else set()))  # fmt: skip
    if CLI not in path.parents and FLOWS not in path.parents:
        assert not any(name.startswith("uit.app.flows") for name in imported), path
    if CLI not in path.parents and path != ROOT / "uit" / "app" / "__init__.py":  # the script
        assert not any(name.startswith("uit.app.cli") for name in imported), path


def test_the_wheel_holds_the_package_alone() -> None:
    """``stages/`` are a clone's DVC scripts and the flows live in ``uit.app.flows``: no generic
    top-level package (``stages``, ``flows``) is installed beside ``uit``."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["uit*"]
    assert not (ROOT / "flows").exists()
    assert (FLOWS / "pipeline.py").is_file() and (CLI / "__init__.py").is_file()


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import prefect.flows\nfrom uit.app import cli\nfrom . import x\n")
    assert imported_modules(sample) == {"prefect.flows", "uit.app"}


def readme_snippet() -> str:
    """The README's library example: the python block after its marker comment."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- library snippet -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its library snippet"
    return found.group(1)


CLOSURE = """
import json, sys
from pathlib import Path
after_snippet = sorted(sys.modules)
import importlib
for path in sorted(Path({root!r}, "uit").rglob("*.py")):
    parts = path.relative_to({root!r}).with_suffix("").parts
    if "app" in parts:
        continue
    importlib.import_module(".".join(p for p in parts if p != "__init__"))
print(json.dumps({{"snippet": after_snippet, "library": sorted(sys.modules)}}))
"""


@pytest.mark.slow
def test_the_readme_snippet_runs_on_the_library_alone(tmp_path: Path) -> None:
    """Build uit-tiny, encode two captions and two images, rank: no application module loads.
    spaCy (a library dependency, for parsing) itself imports typer and click, so the whole
    library's closure is checked against the rest."""
    code = readme_snippet() + CLOSURE.format(root=str(ROOT))
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["1", "2"], result.stdout
    loaded = json.loads(lines[-1])
    snippet, library = set(loaded["snippet"]), set(loaded["library"])
    assert not tops(snippet) & (APP_DEPENDENCIES | LAYERS_ABOVE), sorted(tops(snippet))
    optional = {"faiss", "pymilvus", "milvus_lite"}  # the serve extra: imported inside functions
    assert not tops(library) & (APP_DEPENDENCIES - {"typer", "click"} | LAYERS_ABOVE | optional)
    assert not any(name.startswith("uit.app") for name in snippet | library)


def design_layout(text: str) -> dict[str, list[str]]:
    """The layout block of design §2: each entry (a layer as ``uit/core/``) and the ``.py``
    files its description names (a bare name is inside the entry, one with a ``/`` is from the
    project's root)."""
    found = re.search(r"## 2\. Layout and layers\s*```\n(.*?)```", text, re.S)
    assert found, "the design lost its layout block"
    entries: dict[str, list[str]] = {}
    current = ""
    for line in found.group(1).splitlines():
        entry = re.match(r"( {0,2})(\S+) {2,}", line)  # a name, then its description
        if entry:
            current = ("uit/" if entry[1] else "") + entry[2]
            entries[current] = []
        described = line[len(entry[0]) :] if entry else line
        entries[current] += re.findall(r"(?<![\w/.])[\w/]+\.py\b", described)
    return entries


def missing_from_layout(entries: dict[str, list[str]], root: Path) -> list[str]:
    missing = [entry for entry in entries if not (root / entry).exists()]
    for entry, names in entries.items():
        paths = [root / name if "/" in name else root / entry / name for name in names]
        missing += [f"{entry}: {name}" for name, path in zip(names, paths, strict=True)
                    if not path.is_file()]  # fmt: skip
    return missing


def test_the_layout_of_design_section_2_is_the_layout_on_disk() -> None:
    """Every folder and module the design's layout names is where it says, and its layers are
    the folders, in the order, that the layering tests above enforce."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    entries = design_layout(text)
    assert missing_from_layout(entries, ROOT) == []
    layers = [e for e in entries if e.startswith("uit/") and e != "uit/"]
    assert layers == [f"uit/{n}/" for n in (*ORDER, "app")]
    assert sum(map(len, entries.values())) > 40  # the modules were read, not skipped
    stated = re.search(r"inside\s+the\s+library\s+`([^`]+)`", text)
    assert stated and tuple(stated.group(1).split(", ")) == ORDER


def test_the_layout_check_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "uit" / "core").mkdir(parents=True)
    (tmp_path / "uit" / "core" / "io.py").touch()
    (tmp_path / "params.yaml").touch()
    block = ("params.yaml   knobs; uit/core/config.py mirrors it\n"
             "uit/          the package\n"
             "  core/       io.py (writes), errors.py,\n"
             "              device.py (CUDA)\n"
             "  data/       images.py\n")  # fmt: skip
    entries = design_layout(f"## 2. Layout and layers\n\n```\n{block}```\n")
    assert entries == {"params.yaml": ["uit/core/config.py"], "uit/": [],
                       "uit/core/": ["io.py", "errors.py", "device.py"],
                       "uit/data/": ["images.py"]}  # fmt: skip
    assert missing_from_layout(entries, tmp_path) == [
        "uit/data/", "params.yaml: uit/core/config.py", "uit/core/: errors.py",
        "uit/core/: device.py", "uit/data/: images.py",
    ]  # fmt: skip


@pytest.mark.slow
def test_the_wheel_carries_every_file_of_the_packages(tmp_path: Path) -> None:
    """A non-editable install gets exactly the tracked files of uit (its flows included; not
    the clone's stages): the model configs (uit-tiny's JSON) included, which open_clip reads at
    run time."""
    import zipfile

    source = tmp_path / "source"
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    source.mkdir()
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("uit-*.whl")
    packed = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("uit-")}
    tracked = subprocess.run(["git", "ls-files", "uit"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert packed == set(tracked)


def test_the_front_door_names_are_importable_documented_and_cheap() -> None:
    """``from uit import X`` for each name of ``uit.__all__``, the object of the module that
    defines it, each named on the library page; ``import uit`` alone loads no torch."""
    import uit

    page = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    names = [name for name in uit.__all__ if name != "__version__"]
    assert sorted(names) == sorted(uit._FRONT_DOOR)
    for name in names:
        module = importlib.import_module(uit._FRONT_DOOR[name])
        assert getattr(uit, name) is getattr(module, name)
        assert f"`{name}" in page, f"docs/library.md does not document uit.{name}"
    code = "import sys, uit; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)  # fmt: skip
    assert result.stdout.strip() == "False", result.stderr


def test_the_readme_snippet_imports_the_library_only_through_its_front_door() -> None:
    imports = [line for line in readme_snippet().splitlines() if "import" in line]
    assert all(not line.startswith(("from uit.", "import uit.")) for line in imports), imports
    assert any(line.startswith("from uit import") for line in imports)


def imported_names(path: Path) -> set[str]:
    """Every name imported by ``from X import name`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            for alias in node.names}  # fmt: skip


@pytest.mark.parametrize("name", ["cli/serving.py", "serve.py"])
def test_search_and_serve_open_galleries_through_one_door(name: str) -> None:
    """Reading a gallery, encoding it through the cache and choosing its index happen in
    ``uit.retrieval.gallery.open_gallery`` alone."""
    names = imported_names(ROOT / "uit" / "app" / name)
    assert "open_gallery" in names
    # serve's assemble_searcher indexes embeddings a benchmark brings: that is all it may do
    forbidden = {"read_gallery", "gallery_embeddings", "EmbeddingCache"}
    assert not names & (forbidden | ({"build_index"} if name.startswith("cli") else set()))


@pytest.mark.parametrize("path", [*LIBRARY, *sorted((ROOT / "stages").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))  # fmt: skip
def test_the_library_and_the_stages_never_use_the_front_door(path: Path) -> None:
    """``from uit import X`` is for users: code inside imports X's module, so that a DVC stage
    depends only on the modules it declares (tests/test_pipeline.py)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "uit" and node.level == 0:
            assert {a.name for a in node.names} <= {"__version__"}, path


DOORS = [*sorted((ROOT / "stages").glob("*.py")), *sorted(CLI.glob("*.py"))]


@pytest.mark.parametrize("path", DOORS, ids=lambda p: str(p.relative_to(ROOT)))
def test_training_has_one_entry_point(path: Path) -> None:
    """The torchrun relaunch, the progress bars of a run and the metrics file belong to
    ``uit.training.entry``: a command or a stage calls ``train_entry`` or ``pretrain_entry``,
    never the pieces they are made of."""
    pieces = {"launch", "should_launch", "launched_world", "train_benchmark", "pretrain",
              "prepared_batch_problems", "ProgressReporter"}  # fmt: skip
    assert not imported_names(path) & pieces, path


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_cli_restates_no_choice_of_the_library(path: Path) -> None:
    """An option's choices are the library's literal types (``uit.core.config``), and its
    defaults the library's: no ``Literal[...]`` of its own, no bare number or cache path that
    the library states too."""
    source = path.read_text(encoding="utf-8")
    assert "Literal[" not in source
    for restated in ('".cache/uit/search"', "= 256", '"en_core_web_sm"'):
        assert restated not in source, (path.name, restated)


def test_the_test_map_names_every_test_module_and_every_part_of_the_code() -> None:
    """``tests/README.md`` maps each library folder (and the command line, the flows and the
    stages) to its test files: every test module is in it, every file it names exists."""
    text = (ROOT / "tests" / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([^|]+) \| (.+) \|$", text, re.M)
    parts = {found[1] for code, _ in rows if (found := re.match(r"`([^`]+)`", code))}
    named = {name for _, files in rows for name in re.findall(r"`(test_\w+\.py)`", files)}
    assert {f"uit/{folder}/" for folder in ORDER} | {"uit/app/cli/", "uit/app/flows/",
                                                    "stages/"} <= parts  # fmt: skip
    assert all((ROOT / part).exists() for part in parts)
    on_disk = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    assert named <= on_disk, named - on_disk  # no file named that is not there
    assert on_disk <= named, on_disk - named  # no test module left out


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another(path: Path) -> None:
    """Helpers that several modules share live in ``conftest.py`` (or ``pipeline_repo.py``),
    so a test module can be moved or deleted without breaking another."""
    for name in imported_modules(path):
        assert not name.startswith("tests.test_"), (path.name, name)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    assert not any((m or "").startswith("test_") for m in relative), path.name


# --- One writer of an export, no import circle, the unpickler apart ------------------------------

SOURCES = [*LIBRARY, *APP, *sorted(ROOT.glob("stages/*.py")),
           *sorted(ROOT.glob("benchmarks/*.py"))]  # fmt: skip
EXPORT_MODULE = ROOT / "uit" / "model" / "export.py"
# save_checkpoint's callers: the export writer and the training loop (training checkpoints)
CHECKPOINT_WRITERS = {EXPORT_MODULE, ROOT / "uit" / "training" / "train.py"}


def calls_to(tree: ast.AST, name: str) -> int:
    """Calls of ``name`` or ``X.name`` in ``tree``."""
    return sum(isinstance(node, ast.Call) and name in (getattr(node.func, "id", None),
               getattr(node.func, "attr", None)) for node in ast.walk(tree))  # fmt: skip


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_export_module_writes_an_export(path: Path) -> None:
    """An export's folder and ``state.json`` come from ``uit.model.export.write_export`` alone:
    no other module spells its kind, defines or imports ``EXPORT_KIND`` from elsewhere, or
    writes a checkpoint folder unless it is the training loop."""
    if path == EXPORT_MODULE:
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        assert not (isinstance(node, ast.Constant) and node.value == "dual-encoder"), (
            f"{path.relative_to(ROOT)}:{node.lineno} spells an export's kind: use EXPORT_KIND "
            "or is_export from uit.model.export"
        )
        if isinstance(node, ast.ImportFrom) and "EXPORT_KIND" in {a.name for a in node.names}:
            assert node.module == "uit.model.export", path
        if isinstance(node, ast.Assign):
            assert "EXPORT_KIND" not in {getattr(t, "id", None) for t in node.targets}, path
    if path not in CHECKPOINT_WRITERS:
        assert not calls_to(tree, "save_checkpoint"), f"{path.relative_to(ROOT)} writes a folder"


def test_the_export_writer_is_found() -> None:
    """The checks above look at the right module: it writes, and spells the kind once."""
    tree = ast.parse(EXPORT_MODULE.read_text(encoding="utf-8"))
    assert calls_to(tree, "save_checkpoint") == 1
    assert calls_to(tree, "write_export") == 2  # export_encoder and released_to_export
    kinds = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "dual-encoder"]
    assert len(kinds) == 1


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__")


def import_graph(paths: list[Path], root: Path) -> dict[str, set[str]]:
    """Which of ``paths``' modules each one imports when it runs: imports inside functions
    count (they still make the two modules need each other), imports under ``if
    TYPE_CHECKING:`` do not; ``from package import module`` is an import of the module."""
    modules = {module_name(path, root) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        tree = runtime_tree(path)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names} & modules
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    inner = f"{node.module}.{alias.name}"
                    edges |= {inner if inner in modules else node.module} & modules
        name = module_name(path, root)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports (its first module repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done and (found := visit(target)):
                return found
        done.add(path.pop())
        return None

    for node in sorted(graph):
        if node not in done and (found := visit(node)):
            return found
    return None


def test_the_library_has_no_import_circle() -> None:
    """No two modules of the library need each other, directly or round a longer loop, even
    through an import inside a function (house rule: the shared part becomes a third module)."""
    graph = import_graph(LIBRARY, ROOT)
    assert {"uit.model.build", "uit.model.weights", "uit.model.export"} <= set(graph)
    assert "uit.model.registry" in graph["uit.model.weights"]  # the edges were read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_circle_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import f\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nimport pkg.b\n"
    )
    graph = import_graph(sorted(package.glob("*.py")), tmp_path)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({**graph, "pkg.b": set()}) is None


TORCHSCRIPT_MODULE = ROOT / "uit" / "model" / "torchscript.py"


def unpicklers(path: Path) -> list[str]:
    """Classes in ``path`` that subclass an ``Unpickler`` (pickle's or another's)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            and any(ast.unparse(base).endswith("Unpickler") for base in node.bases)]  # fmt: skip


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_restricted_unpickler_lives_in_its_own_module(path: Path) -> None:
    """The TorchScript reader's unpickler, the one piece of the library that unpickles, stays in
    uit/model/torchscript.py, which the weights readers import."""
    if path == TORCHSCRIPT_MODULE:
        assert unpicklers(path) == ["_TorchScriptUnpickler"]
    else:
        assert unpicklers(path) == []
    if path.name == "weights.py":
        assert "uit.model.torchscript" in runtime_imports(path)
