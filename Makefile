# Every target bootstraps .venv itself: a fresh clone needs only Python >= 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

# The Dagster UI runs on the built-in simulator unless a real CINNOX app is configured.
ifeq ($(strip $(CINNOX_APP_TOKEN)),)
DEV_ENV := CAMPAIGN_SOURCE=$${CAMPAIGN_SOURCE:-simulator}
endif

.PHONY: demo test dev lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

demo: $(STAMP)  ## backfill the last 7 days from the built-in simulator and print the report
	$(BIN)/campaign-pipeline demo

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest

dev: $(STAMP)  ## the Dagster UI on http://127.0.0.1:3000
	mkdir -p .dagster_home
	test -f .dagster_home/dagster.yaml || cp deploy/dagster.local.yaml .dagster_home/dagster.yaml
	$(DEV_ENV) DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -w dagster_workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check campaign_pipeline tests benchmarks

bench: $(BENCH_STAMP)  ## benchmarks, results in benchmarks/RESULTS.md
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .dagster_home data/demo data/simulator
