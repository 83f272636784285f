# `make run` starts the service on SQLite with zero configuration; `make test` runs the tests.
# Both create a virtual environment in .venv and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint format bench clean install install-dev translations

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# the share and welcome pages' catalogs: .po (kept in git) compiled to .mo (the build does it too)
translations: install
	$(BIN)/pybabel -q compile -d referral_service/translations

run: install translations
	$(BIN)/referral-service db upgrade
	@echo
	@echo "The referral service is starting on http://$(HOST):$(PORT)"
	@echo "  API docs:       http://$(HOST):$(PORT)/api/docs"
	@echo "  Create a key:   $(BIN)/referral-service api-keys create my-shop --scope shop"
	@echo "  An admin key:   $(BIN)/referral-service api-keys create ops --scope admin"
	@echo "  First admin:    $(BIN)/referral-service admins create you@example.com  (asks for a password),"
	@echo "                  then sign in at http://$(HOST):$(PORT)/admin"
	@echo
	$(BIN)/referral-service run --host $(HOST) --port $(PORT)

test: install-dev translations
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install-dev
	$(BIN)/python bench/bench_public.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
