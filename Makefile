# Every target creates/updates .venv itself, so a fresh machine with Python 3.11 needs nothing else.
# `make run` installs only what running needs (the package and its dependencies); the other targets add the
# development tools (the `dev` dependency group of pyproject.toml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: run test lint typecheck fmt pytest bench clean venv browser asyncapi-parser apache-kafka prometheus reproduce

venv: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP) pyproject.toml
	$(BIN)/python -m pip install -q --group dev
	touch $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/opendt run $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check opendt tests bench
	$(BIN)/ruff format --check opendt tests bench

typecheck: $(DEV_STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases tests bench

# Chromium for the dashboard's browser test; the script never fails the build, except when interrupted
# (Ctrl-C stops `make test` at once, also while it installs).
browser:
	bash .ci/install-chromium

# Prometheus and promtool for the /metrics test (tests/api/test_prometheus.py); never fails the build either.
prometheus:
	bash .ci/install-prometheus

# The AsyncAPI parser (npm) for the stream contract's test; never fails the build either.
asyncapi-parser:
	bash .ci/install-asyncapi-parser

# Apache Kafka (Maven Central, into .cache/kafka) for the tests against a real Kafka; never fails the build.
apache-kafka:
	bash .ci/install-kafka

# PYTHONASYNCIODEBUG=0 (as .ci/run exports it) means off: Python takes any non-empty value as on, and debug
# mode records a traceback for every future, which slows every daemon the suite runs.
# Tests run in parallel worker processes, a test file per worker at a time (pytest-xdist; at most 4, one per
# core): PYTEST_ARGS="-p no:xdist" runs them in one process, PYTEST_ARGS="tests/x.py" one file.
PYTEST_ARGS ?= -n auto --maxprocesses 4 --dist loadfile

pytest: $(DEV_STAMP) browser prometheus asyncapi-parser apache-kafka
	PYTHONASYNCIODEBUG="$${PYTHONASYNCIODEBUG#0}" $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

fmt: $(DEV_STAMP)
	$(BIN)/ruff format opendt tests bench
	$(BIN)/ruff check --fix opendt tests bench

# The paper's two experiments (SURF, --speed max: without, then with calibration; both at once) and their
# report, into reproduce/<workload>/ (git-ignored; progress every 10 s). WORKLOAD=data/demo for a quick one.
WORKLOAD ?= data/surf
reproduce: $(DEV_STAMP)
	$(BIN)/python bench/reproduce.py --workload $(WORKLOAD) --out reproduce $(REPRODUCE_ARGS)

bench: $(DEV_STAMP)
	$(BIN)/python bench/workload_load.py
	$(BIN)/python bench/kafka_roundtrip.py
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
