# Two set-up commands: `make run` and `make test`. Each bootstraps .venv on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: run test lint typecheck pytest bench services clean help

help:
	@echo "make run    - start SendFlowr on http://127.0.0.1:8001 (embedded backends, demo brand)"
	@echo "make test   - ruff, mypy --strict and pytest (starts PostgreSQL/Redis if they are down)"
	@echo "make bench  - benchmarks; JSON results under bench/results/"

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sendflowr run

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src tests bench

services:
	@bash scripts/ensure-services.sh
	@bash scripts/ensure-browser.sh

pytest: $(STAMP) services
	$(VENV)/bin/pytest

test: lint typecheck pytest

bench: $(STAMP)
	@mkdir -p bench/results
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_simulate.py
	$(PY) bench/bench_identity.py
	$(PY) bench/bench_evaluate.py
	$(PY) bench/bench_backfill.py
	$(PY) bench/bench_planner.py
	$(PY) bench/bench_schedule.py
	$(PY) bench/bench_kafka.py
	$(PY) bench/bench_decisions.py
	$(PY) bench/bench_http_decide.py
	$(PY) bench/bench_rebuild.py
	$(PY) bench/bench_calibration.py
	$(PY) bench/bench_archive_erasure.py
	$(PY) bench/bench_soak.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
