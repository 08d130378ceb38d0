# StreamForge: `make run` runs the main job on the embedded default; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PIPELINE ?= orders

.PHONY: run run-sessions test lint bench clean deploy-render

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/streamforge run $(PIPELINE) --config config/$(PIPELINE).yaml

run-sessions:
	$(MAKE) run PIPELINE=sessions

# The suite runs on both cores (pytest-xdist): most tests wait on subprocesses, brokers and
# stores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check dataflows recovery streamforge_ops tests bench scripts
	$(BIN)/mypy dataflows recovery streamforge_ops

bench: $(VENV)/.installed-test
	$(BIN)/python bench/patterns.py --json

clean:
	rm -rf .streamforge out

# Re-render deploy/k8s from config/orders.yaml (a test checks they are in sync).
deploy-render: $(VENV)/.installed
	$(BIN)/streamforge deploy render --config config/orders.yaml --output deploy/k8s
