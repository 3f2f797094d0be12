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

# `uit run` starts the pipeline flow (Prefect's temporary server, its database in .prefect/),
# which runs the DVC stages with the project's interpreter.
demo: install
	$(BIN)/uit run
	@echo
	@echo "Report:  reports/report.html (offline, self-contained) and reports/report.md"
	@echo "Metrics: metrics/BENCHMARK.json and runs/BENCHMARK/selection.json (dvc metrics show)"
	@echo
	@cat reports/report.md

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
