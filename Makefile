# The two set-up commands of the README:  `make serve`  and  `make test`.
# Each makes its own virtual environment and installs what it needs.
# torch==2.13.0 is installed first and on its own: the project's torch>=2.3 range is then
# already satisfied, so no resolver can pull a multi-GB CUDA build (pass TORCH_INDEX to choose
# a wheel index, e.g. https://download.pytorch.org/whl/cpu on a machine without that file).

PYTHON ?= python3
VENV ?= .venv
# `make serve PORT=8080`: another port (default: DDPM_PORT, else 8000).
PORT ?=
# `make test SYSTEM_PACKAGES=0`: do not try to install the Debian packages some suites need.
SYSTEM_PACKAGES ?= 1
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: serve sample test lint install install-test system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PIP) install --quiet -e '.[train,test]'
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

## Start the server on the embedded model (http://127.0.0.1:8000).
serve: $(VENV)/.runtime
	$(BIN)/ddpm serve $(if $(PORT),--port $(PORT))

## Write 16 samples of the embedded model to ./samples.
sample: $(VENV)/.runtime
	$(BIN)/ddpm sample --n 16 --scale 8 --out samples

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/mypy

## Debian's nginx, Prometheus, Chromium and redis-server for the suites that drive them, where
## this machine allows (root, or sudo without a password); never fails.
system-packages:
	$(if $(filter 1,$(SYSTEM_PACKAGES)),bash .ci/system-packages.sh,@echo "system packages: not installing (SYSTEM_PACKAGES=$(SYSTEM_PACKAGES))")

## Lint, type-check and run the whole test suite (its last lines name any skipped suite).
test: lint system-packages
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
