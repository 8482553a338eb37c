# opsloop: `make demo` runs the back office with demo data, `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PORT := $(or $(OPSLOOP_PORT),8000)
GATEWAY_PORT := $(or $(OPSLOOP_DEMO_GATEWAY_PORT),8099)
WITH_ENV := set -a; [ -f .run/env ] && . .run/env; set +a;
ADMIN_USER := $(or $(OPSLOOP_ADMIN_USER),admin)
ADMIN_PASSWORD := $(or $(OPSLOOP_ADMIN_PASSWORD),opsloop-admin)
export OPSLOOP_ADMIN_USER := $(ADMIN_USER)
export OPSLOOP_ADMIN_PASSWORD := $(ADMIN_PASSWORD)

.PHONY: help venv services migrate up demo down test lint bench-ingest

help:
	@echo "make demo   run the back office with demo data (admin at http://127.0.0.1:$(PORT)/admin/)"
	@echo "            DEMO_ARGS='--users 2000' for a smaller world"
	@echo "make up     the same without demo data"
	@echo "make down   stop everything make up started"
	@echo "make test   run the whole test suite"
	@echo "make lint   ruff"

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

services:
	@scripts/services.sh start

migrate: venv services
	@$(WITH_ENV) $(PY) manage.py migrate --noinput -v 0
	@$(WITH_ENV) $(PY) manage.py collectstatic --noinput -v 0

up: migrate
	@$(WITH_ENV) $(PY) manage.py ensure_admin
	@OPSLOOP_PORT=$(PORT) scripts/processes.sh start
	@echo
	@echo "opsloop is up:  http://127.0.0.1:$(PORT)/admin/   login: $(ADMIN_USER) / $(ADMIN_PASSWORD)"
	@echo "API docs:       http://127.0.0.1:$(PORT)/api/docs/"
	@echo "Shell:          set -a; . .run/env; set +a; $(PY) manage.py shell"
	@echo "Logs:           .run/worker.log, .run/beat.log, .run/gunicorn.log"
	@echo "Health:         $(PY) manage.py opsloop_health (Monitoring > Health in the admin)"
	@echo "Stop:           make down"

demo: up
	@OPSLOOP_DEMO_GATEWAY_PORT=$(GATEWAY_PORT) scripts/processes.sh start-gateway
	@$(WITH_ENV) $(PY) manage.py load_demo $(DEMO_ARGS) --api-url http://127.0.0.1:$(PORT) \
		--gateway-url http://127.0.0.1:$(GATEWAY_PORT)
	@echo
	@echo "Demo loaded:    http://127.0.0.1:$(PORT)/admin/   login: $(ADMIN_USER) / $(ADMIN_PASSWORD)"

down:
	@scripts/processes.sh stop
	@scripts/services.sh stop

test: venv services
	@scripts/ensure-chromium.sh
	@scripts/ensure-gettext.sh
	@scripts/ensure-segment-sdks.sh
	@$(WITH_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
