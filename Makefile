# `make run` and `make test` are the two commands the README promises: each sets up
# .venv from nothing on a machine with only Python 3.11 and pip, then does its job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/eidetica --data node-data serve --listen http://127.0.0.1:8080 --listen ws://127.0.0.1:8081

test: $(STAMP)
	$(BIN)/ruff check eidetica tests bench
	$(BIN)/ruff format --check eidetica tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node-data
