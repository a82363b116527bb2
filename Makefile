# Every target creates/updates .venv itself, so a fresh machine with Python 3.11 needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck fmt pytest bench clean venv reproduce

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/opendt run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check opendt tests bench
	$(BIN)/ruff format --check opendt tests bench

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases tests bench

pytest: $(STAMP)
	-bash .ci/install-chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

fmt: $(STAMP)
	$(BIN)/ruff format opendt tests bench
	$(BIN)/ruff check --fix opendt tests bench

# The paper's two experiments (SURF, --speed max: without, then with calibration; both at once) and their
# report, into reproduce/ (git-ignored). WORKLOAD=data/demo for a quick one.
WORKLOAD ?= ../shared/workload/SURF
reproduce: $(STAMP)
	$(BIN)/python bench/reproduce.py --workload $(WORKLOAD) --out reproduce $(REPRODUCE_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/workload_load.py
	$(BIN)/python bench/kafka_roundtrip.py
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
