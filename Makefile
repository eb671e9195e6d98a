# The two commands of the README: `make up` runs fabriek, `make test` runs the whole suite.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: up test lint bench clean

$(VENV)/.stamp-run: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[examples]'
	@touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-run
	$(BIN)/python -m pip install -q -e '.[examples,dev]'
	@touch $@

## up: run API, controller and local backend on this machine (SQLite under FABRIEK_HOME)
up: $(VENV)/.stamp-run
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fabriek up $(ARGS)

## test: lint, type-check and run the whole suite (SQLite and PostgreSQL)
test: $(VENV)/.stamp-dev lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

## bench: the benchmarks of BENCHMARKS.md, full size (about 15 minutes; needs PostgreSQL too)
bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/launch_latency.py --databases sqlite,postgres
	$(BIN)/python benchmarks/controller_pass.py
	$(BIN)/python benchmarks/submit_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
