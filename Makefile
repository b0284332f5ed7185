# One command per chore, the same on a laptop and in CI.
#   make run    create .venv if missing, install, serve the whole stack (Ctrl-C stops it)
#   make test   create .venv if missing, install with test extras, run the whole suite
#   make lint   ruff + mypy
#   make bench  the benchmark scenarios in benchmarks/
#   make docs   regenerate the generated parts of docs/ (settings table, HTTP routes)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml 2>/dev/null | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: help install run test lint format bench docs clean

help:
	@sed -n 's/^#   //p' Makefile

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "OpsMantik Stream needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

# pip prints each package as it goes (the first install downloads Ray, PostgreSQL and the
# test tools: a few minutes); later runs only re-install when pyproject.toml changed.
$(STAMP): pyproject.toml | $(BIN)/python
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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy opsmantik_stream actors gateway tests benchmarks

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m benchmarks

docs: install
	$(BIN)/python -m opsmantik_stream.docgen
	$(BIN)/python -m gateway.api_doc

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
