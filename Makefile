# Two commands matter: `make demo` and `make test`. Both set up what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tributary-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages demo test test-unit test-integration bench lint format clean dashboard-shot

setup: $(STAMP) system-packages

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { \
	  echo "installing python3-venv with apt"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# redis-server runs the online store; prometheus (with promtool, which tests the alert
# rules) and prometheus-alertmanager run with `tributary up`; chromium renders the dashboard
# in its test.
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
	  || missing="$$missing prometheus-alertmanager"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing with apt"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing. Run: sudo apt-get update && sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/tributary demo

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m "not integration"

test-integration: setup
	$(PY) -m pytest -m integration

bench: setup
	@$(PY) -m tests.benchmarks

# A PNG of the monitoring dashboard in headless Chromium: over a sample incident by default,
# or a running API's: make dashboard-shot DASHBOARD_URL=http://127.0.0.1:8000/dashboard DASHBOARD_KEY=...
DASHBOARD_SHOT ?= .tributary/dashboard.png
dashboard-shot: setup
	$(PY) -m tests.dashboard_shot --out $(DASHBOARD_SHOT) \
	  $(if $(DASHBOARD_URL),--url $(DASHBOARD_URL)) $(if $(DASHBOARD_KEY),--key $(DASHBOARD_KEY))

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy infra flows training serving monitoring tests

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	-$(VENV)/bin/tributary down
	rm -rf $(VENV) .tributary .pytest_cache .mypy_cache .ruff_cache
