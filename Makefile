# layertap — `make run` serves, `make test` tests. Both create or refresh .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint clean

install: $(STAMP)  ## create or refresh .venv (a no-op when pyproject.toml has not changed)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: install  ## serve on LAYERTAP_HOST:LAYERTAP_PORT (default 0.0.0.0:8080) until SIGTERM or Ctrl-C
	exec $(BIN)/gunicorn -c python:service.gunicorn_conf

test: install  ## the whole test suite, offline
	$(BIN)/pytest

lint: install  ## ruff, then hadolint on the Dockerfile
	$(BIN)/ruff check service tests
	$(BIN)/ruff format --check service tests
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
