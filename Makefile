# The two commands a newcomer needs:
#   make demo   run observer on its embedded example
#   make test   install everything (Python packages, real services) and run the whole suite
CACHE ?= $(HOME)/.cache/observer
VENV ?= $(CACHE)/venv
PYTHON ?= python3
BIN := $(VENV)/bin
# The trace core (native/) is built by cargo when the package is installed; its build
# directory is kept with the other caches so that a second install is quick.
export CARGO_TARGET_DIR ?= $(CACHE)/cargo-target
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO := cargo --quiet
NATIVE := --manifest-path native/Cargo.toml

.PHONY: demo test lint native-test services venv

demo: venv
	$(BIN)/observer demo

test: venv services lint native-test
	$(BIN)/python -m pytest

# The trace core's own tests, without the Python binding (its tests are under tests/).
native-test:
	$(CARGO) test $(NATIVE) --release --no-default-features

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(CARGO) fmt $(NATIVE) --check
	$(CARGO) clippy $(NATIVE) --release --all-targets --no-default-features -- -D warnings
	$(CARGO) clippy $(NATIVE) --release -- -D warnings

services:
	tools/install-services.sh

venv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
