# `make run` and `make test` are the two commands the README promises: each sets up
# .venv from nothing on a machine with only Python 3.11 and pip, then does its job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where `make run` keeps its node and the ports it listens on, set on make's command
# line (`make run HTTP_PORT=9080 WS_PORT=9081 DATA=other`), never taken from the
# environment, where a DATA of something else's could end up under `make clean`.
DATA = node-data
HTTP_PORT = 8080
WS_PORT = 8081

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/eidetica --data $(DATA) serve \
		--listen http://127.0.0.1:$(HTTP_PORT) --listen ws://127.0.0.1:$(WS_PORT)

test: $(STAMP)
	$(BIN)/ruff check eidetica tests bench
	$(BIN)/ruff format --check eidetica tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DATA)
