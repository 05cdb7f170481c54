# corral's two front doors: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install services lint typecheck pytest clean

$(BIN)/.installed: pyproject.toml setup.py src/corral/runtime/_clone.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# PostgreSQL and Redis are expected on 127.0.0.1; start them when they are down.
# bubblewrap (the sandbox runtime) and chromium (the dashboard's browser tests) come from
# Debian's packages; install them if missing.
services:
	scripts/ensure-services
	scripts/ensure-packages

demo: install services
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/demo

lint: install
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

pytest: install services
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
