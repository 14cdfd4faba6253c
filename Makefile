# Two commands matter: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format bench clean demo

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; run e.g. 'make test PYTHON=python3'"; exit 2; }
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The whole SpeechGPT built from nothing on this machine (about 14 min on 2 CPU cores); DEMO_ARGS e.g. "--size tiny".
demo: $(STAMP)
	$(BIN)/speechgpt demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/units.py
	$(BIN)/python benchmarks/vocoder.py
	$(BIN)/python benchmarks/vocoder_fast.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
