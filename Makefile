# acme-ra: `make dev` runs everything on this machine, `make test` runs make lint and the whole suite.
# Both create .venv (Python 3.11, 3.12 or 3.13) and install the project into it first when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml or the lock changes.
INSTALLED := $(VENV)/.installed
# The lock's pins (no hashes): make install tests what the image ships, whatever PyPI released since.
CONSTRAINTS := $(VENV)/constraints.txt
PYTEST_ARGS ?=
# make lab VALIDATORS=N: how many validator processes the lab runs.
VALIDATORS ?= 2
# make lab PERSPECTIVES=N: remote network perspectives the validators ask (0: off; docs/perspectives.md).
PERSPECTIVES ?= 3
# make bench BENCH_ARGS='--smoke' (or --targets, --levels, --count, --profile DIR; same-run comparisons:
# --history N [--purge], --baseline-ref REV; see docs/performance.md).
BENCH_ARGS ?=

# What make lint checks (ruff with pyproject.toml's settings, then strict mypy).
LINT_PATHS := libs services tools bench tests

.PHONY: dev install test-packages test lint clean lab bench bench-upstream dist image-lock

dev: install
	$(BIN)/python -m acme_ra_tools.cli dev

install: $(INSTALLED)

# The docker-compose topology as processes (needs: apt-get install -y pebble haproxy postgresql).
lab: install
	$(BIN)/python -m acme_ra_tools.lab --validators $(VALIDATORS) --perspectives $(PERSPECTIVES)

# Debian packages the tests drive for real (Pebble, lego, dehydrated, uacme, HAProxy, promtool,
# Chromium, wrk): installed when missing.
test-packages:
	scripts/install-test-packages

# ruff and strict mypy, zero findings (make test runs it before the tests).
lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

test: install lint test-packages
	$(BIN)/python -m pytest -p no:cacheprovider --durations=25 $(PYTEST_ARGS) tests

# acme-ra (lab CA; Pebble upstream) against Pebble alone, on this machine's PostgreSQL (needs: pebble).
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Upstream validation time (p50/p95) per method against a Pebble validating for real (BIND9 for dns-01).
bench-upstream: install
	$(BIN)/python -m bench --upstream-validation $(BENCH_ARGS)

# The wheel and the sdist, in dist/ (what pip installs: see docs/install.md).
dist: install
	$(BIN)/python -m build --outdir dist .

# requirements/image.lock: the newest versions pyproject's bounds allow, installed here (so the suite
# tests them) and pinned with hashes (deploy/Dockerfile installs it with --require-hashes).
image-lock: install
	$(BIN)/python -m pip install --upgrade --upgrade-strategy eager -e '.[test]'
	$(BIN)/python -m acme_ra_tools.imagelock --write
	touch $(INSTALLED)

clean:
	rm -rf var build dist .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "acme-ra needs Python 3.11, 3.12 or 3.13 (python3.11 or python3 on PATH)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
		{ echo "acme-ra needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1). Run: make PYTHON=/path/to/python3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml requirements/image.lock | $(BIN)/python
	sed -n 's/^\([A-Za-z0-9][^ ]*==[^ ]*\) .*/\1/p' requirements/image.lock > $(CONSTRAINTS)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[test]'
	touch $@
