# `make run` starts the service (gunicorn, as in production) and its worker on SQLite with zero
# configuration; `make test` runs the tests.
# Both create a virtual environment in .venv and install what they need into it, at exactly the
# versions in requirements.lock (the ones the tests passed with); `make lock` refreshes that file
# from the compatible ranges in pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
LOCK = requirements.lock
# a stamp of pyproject.toml's dependency ranges, kept in the lock (tests/test_lock.py compares)
export RANGES_STAMP = import hashlib, json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(hashlib.sha256(json.dumps([p["dependencies"], p.get("optional-dependencies", {})], sort_keys=True).encode()).hexdigest()[:16])
# every pip install (build dependencies in pip's isolated build environments too) takes the lock's
# versions
PIP_INSTALL = PIP_CONSTRAINT=$(CURDIR)/$(LOCK) $(BIN)/python -m pip install --quiet
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint format bench clean install install-dev translations lock

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[dev]'
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
	@echo "  The worker (webhooks, emails, maturing rewards) runs beside it; Ctrl-C stops both."
	@echo
	@$(BIN)/referral-service worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT; \
	trap 'exit 130' INT TERM; \
	$(BIN)/referral-service serve --host $(HOST) --port $(PORT)

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

# `make bench` runs the benchmark suite (bench/suite.py: every target of the service, SQLite and
# PostgreSQL, sync and gthread workers, one table at the end; about 15 minutes; needs wrk and
# Redis, and BENCH_DATABASE_URL or TEST_DATABASE_URL for PostgreSQL); pass options in BENCH_ARGS,
# e.g. `make bench BENCH_ARGS=--quick` (about 5 minutes) or `BENCH_ARGS=--check`.
bench: install-dev
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

# Re-resolve every dependency (with [dev]) within pyproject.toml's ranges in a fresh virtual
# environment and write the versions it got to requirements.lock; run `make test` after it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	{ echo "# The exact versions \`make run\`, \`make test\` and CI install (as pip constraints)."; \
	  echo "# Made by \`make lock\` from the ranges in pyproject.toml; do not edit by hand."; \
	  echo "# pyproject.toml ranges: $$($(PYTHON) -c "$$RANGES_STAMP")"; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable \
	    | grep -v -i '^referral[-_]service' | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .lock-venv build referral_service.egg-info
	@echo "$(LOCK) written: $$(grep -c '==' $(LOCK)) packages pinned"

clean:
	rm -rf $(VENV) .lock-venv build dist *.egg-info .pytest_cache .ruff_cache
