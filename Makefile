# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint typecheck docs docs-build pytest browser paper-path clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Torch first, pinned, so pip takes the builds this project is tested with.
$(STAMP): pyproject.toml requirements/torch.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/torch.txt
	$(BIN)/python -m pip install --quiet -e '.[app,serve,dev]'
	touch $(STAMP)

install: $(STAMP)

# `uit run` starts the pipeline flow (Prefect's temporary server, its database in .prefect/),
# which runs the DVC stages with the project's interpreter.
demo: install
	$(BIN)/uit run
	@echo
	@echo "Metrics: metrics/BENCHMARK.json and runs/BENCHMARK/selection.json (dvc metrics show)"
	@echo
	@cat reports/pipeline/report.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The report's browser test drives Debian's chromium through chromedriver: install both when
# this machine lets us (root or password-less sudo); otherwise that one test is skipped, or
# fails where UIT_REQUIRE_BROWSER=1 (as .ci/run sets it).
APT_INSTALL = apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ($(APT_INSTALL) || sudo -n sh -c '$(APT_INSTALL)') >/dev/null 2>&1; then \
	  echo "installed chromium and chromium-driver for the report's browser test"; \
	else echo "note: could not install chromium; the report's browser test will be skipped" \
	  "(or fail, with UIT_REQUIRE_BROWSER=1)"; fi

# The suite on every core, a test file per process at a time (its fixtures built once there).
PYTEST_JOBS ?= auto
pytest: install browser
	$(BIN)/pytest --numprocesses $(PYTEST_JOBS) --dist loadfile

test: lint typecheck docs-build pytest

# The documentation site (mkdocs.yml, docs/): a broken link or a page left out of the nav fails.
docs-build: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The edit-run loop: everything but the slow tests (pipelines, flows, servers, training runs),
# without lint and type checks; CI runs `make test`, everything.
test-fast: install
	$(BIN)/pytest --numprocesses $(PYTEST_JOBS) --dist loadfile -m "not slow" -q

# The paper recipe end to end on this CPU (ViT-B-16 at 384x128, random weights, two steps per
# benchmark, through dvc repro to metrics and the report): several minutes, so not in `test`.
paper-path: install
	UIT_PAPER_PATH=1 $(BIN)/pytest tests/test_paper_path.py -v

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache
