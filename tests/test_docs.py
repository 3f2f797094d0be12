"""The documentation agrees with the tree: the site's home page is the README, and the layout
on the library page names every module of the library (a stale layout fails here). The site's
own build (`mkdocs build --strict`: broken links, pages left out of the nav) runs in `make
test` before pytest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_home_is_the_readme() -> None:
    """docs/index.md is README.md with its links made relative to docs/: edit the README and
    copy it (`sed 's|](docs/|](|g' README.md > docs/index.md`)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert home == readme.replace("](docs/", "](")


def test_the_readme_is_a_front_page() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


LAYOUTS = [("library.md", "## Layout"), ("design.md", "## 2. Layout and layers")]


def layout_entries(page_name: str, heading: str) -> dict[str, str]:
    """Each folder of the layout block under ``heading`` and the text that describes it."""
    page = (ROOT / "docs" / page_name).read_text(encoding="utf-8")
    block = page.split(heading, 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        found = re.match(r"^( {0,2})([\w.]+/)\s", line + " ")
        if found:
            current = ("uit/" if found.group(1) else "") + found.group(2)
            entries[current] = line[found.end() :]
        elif current:
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("page, heading", LAYOUTS)
def test_the_layout_names_every_module_of_the_library(page: str, heading: str) -> None:
    entries = layout_entries(page, heading)
    for package in sorted(p.parent for p in (ROOT / "uit").glob("*/__init__.py")):
        key = f"uit/{package.name}/"
        assert key in entries, f"the layout of docs/{page} has no {key}"
        words = set(re.findall(r"[\w]+", entries[key]))
        for module in sorted(package.glob("*.py")):
            if module.stem != "__init__":
                assert module.stem in words, f"docs/{page}: {key} does not name {module.name}"


@pytest.mark.parametrize("page, heading", LAYOUTS)
def test_the_layout_names_every_top_level_folder(page: str, heading: str) -> None:
    entries = layout_entries(page, heading)
    for folder in (
        "uit",
        "stages",
        "profiles",
        "tests",
        "benchmarks",
        "experiments",
        "docs",
    ):
        assert (ROOT / folder).is_dir() and f"{folder}/" in entries, folder
