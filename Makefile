# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Torch first, pinned, so pip takes the builds this project is tested with.
$(STAMP): pyproject.toml requirements/torch.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/torch.txt
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# DVC stages call `python`: put the project's interpreter first on PATH.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" DVC_NO_ANALYTICS=1 dvc repro
	@echo
	@echo "Synthetic benchmarks: data/synthetic/   prepared manifests: data/prepared/"
	@for b in cuhk-pedes icfg-pedes rstpreid; do $(BIN)/uit data stats data/prepared/$$b; done

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache
