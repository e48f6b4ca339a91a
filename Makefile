# One-command entry points. `make demo` and `make test` set up .venv from scratch when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned (2.13.0, CPU build): an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install -q -e ".[dev]"

.PHONY: setup demo test test-fast clean
setup: $(BIN)/python

demo: setup  ## the main job end to end on this machine's executables (local Ray, Parquet, DuckDB file)
	$(BIN)/python -m jobs.demo

test: setup  ## the whole test suite, a real local Ray cluster included
	$(BIN)/python -m pytest -q

test-fast: setup  ## everything but the end-to-end Ray runs
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
