# chatbridge — the fixed targets of DESIGN.md. `make install && make test` works on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-fast lint services services-stop demo bench image clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

## The whole suite: unit, integration (real SQLite files), end to end (the installed command).
test: install
	$(BIN)/pytest

## Unit tests only: the quick check before a commit.
test-fast: install
	$(BIN)/pytest tests/unit -q

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports

## Kafka (127.0.0.1:9092), PostgreSQL (127.0.0.1:5432) and Synapse (127.0.0.1:8008) as local processes.
services:
	scripts/services/all.sh start

services-stop:
	scripts/services/all.sh stop

## The whole product in one run: services (only those not running are started, and only those stopped after),
## a sample HiOrg stream, the worker, the reconciler moved through the chats' lives, and a report. DEMO_ARGS=--short
demo: install
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

## Benchmarks, each beside its baseline measured in the same run (bench/README.md): bench/results/latest.{json,md}.
## QUICK=1: small sizes (minutes); ONLY=name,name: some figures. Starts the local services itself.
bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

## The worker's image chatbridge:local (docker/build-image.sh). LOCAL_BASE=1: on a base made from Debian's packages
## (docker/make-local-base.sh), for machines where no image registry answers.
image:
	docker/build-image.sh $(if $(LOCAL_BASE),--local-base)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
