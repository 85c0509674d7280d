# Every set-up step a fresh Debian 12 machine needs (run as root). See README.md.
SHELL := /bin/bash
# Debian's own interpreter, the one the appliance runs (the Ansible role builds its venv with python3-venv):
# it measured 20-30% less CPU per tools/call than a source build that may come first in PATH (pyenv's here:
# configured without --enable-optimizations or --with-lto, libpython shared). Elsewhere, the first python3.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Debian packages the service and its tests use: ODBC drivers, the test database engine, and the
# real nginx / Prometheus / certbot / pebble the integration tests start on loopback, and the chromium
# that the record-page browser test drives through Playwright.
APT_PACKAGES := unixodbc libsqliteodbc odbc-postgresql postgresql nginx prometheus certbot pebble \
	openssl curl logrotate chromium redis-server python3-venv
APT_STAMP := $(VENV)/.apt-stamp
PIP_STAMP := $(VENV)/.pip-stamp

.PHONY: run test test-unit lint deps system-deps clean ci-extra

run: deps ## serve the embedded demo database on http://127.0.0.1:8008
	$(BIN)/mssql-mcp demo

test: deps lint ## install everything and run the test suite
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: deps ## only the fast unit tests: no server, no database process, no subprocess
	$(BIN)/pytest -q -p no:cacheprovider -m unit

lint: deps
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy

deps: system-deps $(PIP_STAMP)

system-deps: $(APT_STAMP)

$(APT_STAMP): Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

$(PIP_STAMP): pyproject.toml $(VENV)/bin/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

# Areas add their own targets (molecule, bench, observability checks) in mk/*.mk.
ci-extra::
	@true

-include mk/*.mk
