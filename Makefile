# Every target does its own set-up on a fresh machine (through `install`, which is idempotent).
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: install test lint format run demo bench bench-smoke soak status verify clean

install:
	@scripts/install.sh

test: install
	@scripts/test.sh

lint: install
	$(VENV)/ruff check . && $(VENV)/ruff format --check . && $(VENV)/mypy

format: install
	$(VENV)/ruff format . && $(VENV)/ruff check --fix .

run: install
	@scripts/run.sh

demo: install
	@scripts/run.sh --demo

bench: install
	$(VENV)/python -m bench

bench-smoke: install
	$(VENV)/python -m bench --smoke

soak: install
	$(VENV)/pytest -q -s -m slow tests

status: install
	$(VENV)/python -m ops status

verify: install
	$(VENV)/python -m ops verify

clean:
	rm -rf .venv var .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
