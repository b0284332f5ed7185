# One command per chore, the same on a laptop and in CI.
#   make run    create .venv if missing, install, serve the whole stack (Ctrl-C stops it)
#   make test   create .venv if missing, install with test extras, run the whole suite
#   make lint   ruff (lint, format, complexity) + mypy (strict on opsmantik_stream, gateway, actors)
#   make fuzz   >= 10,000 property-based requests against a served stack; prints counts by status
#   make bench  the benchmark scenarios in benchmarks/
#   make soak   half the ingest peak for SOAK_MINUTES (30): memory and latency over time
#   make docs   regenerate the generated parts of docs/ (settings table, HTTP routes)
SHELL := /bin/bash
# The interpreter .venv is made from (`make PYTHON=... install` picks another; remove .venv
# first). The operating system's /usr/bin/python3 comes first when it is 3.11 or newer and can
# make a venv: distributions build CPython with profile-guided and link-time optimisation, a
# version manager's default build (pyenv's) has neither, and the gateway and the partitions
# are Python on the ingest path (docs/operations.md has the measurements). Else the python3
# first on the PATH.
PYTHON ?= $(or $(shell for p in /usr/bin/python3 python3; do \
	$$p -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done),python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml, setup.py or the C extension's source changes (the
# install builds the extension; a stale one would keep running the old code).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py opsmantik_stream/ingest/_pgrows.c 2>/dev/null | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
SOAK_MINUTES ?= 30

FUZZ_REQUESTS ?= 10000
FUZZ_SEED ?= $(shell date +%s)

.PHONY: help install run test fuzz lint format bench soak docs clean

help:
	@sed -n 's/^#   //p' Makefile

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "OpsMantik Stream needs Python 3.11 or newer (set PYTHON=...)")'
	@echo "creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	$(PYTHON) -m venv $(VENV)

# pip prints each package as it goes (the first install downloads Ray, PostgreSQL and the
# test tools: a few minutes); later runs only re-install when the STAMP above changed.
$(STAMP): pyproject.toml setup.py opsmantik_stream/ingest/_pgrows.c | $(BIN)/python
	@echo "installing OpsMantik Stream and its dependencies into $(VENV) (the first time takes a few minutes) ..."
	$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "installed into $(VENV)"

install: $(STAMP)

run: install
	$(BIN)/opsmantik serve

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the same suite make test runs briefly (tests/fuzz), at full length, with its counts printed
fuzz: install
	OPSMANTIK_TEST_FUZZ_REQUESTS=$(FUZZ_REQUESTS) OPSMANTIK_TEST_FUZZ_SEED=$(FUZZ_SEED) \
		$(BIN)/python -m pytest tests/fuzz -q -s --durations=0

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy opsmantik_stream actors gateway tests benchmarks
	$(BIN)/mypy --strict opsmantik_stream gateway actors

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m benchmarks

soak: install
	$(BIN)/python -m benchmarks --only soak --minutes $(SOAK_MINUTES)

docs: install
	$(BIN)/python -m opsmantik_stream.docgen
	$(BIN)/python -m gateway.api_doc

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
