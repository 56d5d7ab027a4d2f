# The two commands a newcomer needs:
#   make demo   run observer on its embedded example
#   make test   install everything (Python packages, real services) and run the whole suite
CACHE ?= $(HOME)/.cache/observer
VENV ?= $(CACHE)/venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint services venv

demo: venv
	$(BIN)/observer demo

test: venv services lint
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

services:
	tools/install-services.sh

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
