# Every target bootstraps .venv itself: a fresh clone needs only Python >= 3.11 and make.
# Each target installs only what it needs (pip shows what it downloads): `make demo` the package,
# `make notebook` JupyterLab and matplotlib, `make sql` the DuckDB CLI, `make test` and `make dev`
# the dev extra (UI, dg, test tools, deployment extras).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar on

.PHONY: demo test dev notebook sql lint bench clean

$(BIN)/python:
	@echo "== creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

# One stamp per extra; each is redone when pyproject.toml changes.
$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	@echo "== installing campaign_pipeline and its runtime dependencies into $(VENV) (first time: about a minute)"
	$(PIP) -e .
	@touch $@

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	@echo "== installing the '$*' extra into $(VENV)"
	$(PIP) -e '.[$*]'
	@touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core  ## backfill the last 7 days from the built-in simulator and print the report
	$(BIN)/campaign-pipeline demo

test: $(VENV)/.installed-dev  ## `dg check defs`, then the whole test suite
	CAMPAIGN_SOURCE=simulator VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs
	$(BIN)/python -m pytest

dev: $(VENV)/.installed-dev  ## the Dagster UI on http://127.0.0.1:3000 (the demo's data after make demo)
	$(BIN)/campaign-pipeline ui

notebook: $(VENV)/.installed-notebook  ## JupyterLab on the delivery-rates notebook
	$(BIN)/jupyter-lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/delivery_rates.ipynb

sql: $(VENV)/.installed-sql  ## the DuckDB CLI, read-only on the analysts' database
	$(BIN)/campaign-pipeline sql

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check campaign_pipeline tests benchmarks

bench: $(VENV)/.installed-dev $(VENV)/.installed-bench  ## benchmarks, results in benchmarks/RESULTS.md
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .dagster_home data/demo data/simulator data/.last-data-dir
