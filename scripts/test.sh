#!/usr/bin/env bash
# The whole check: lint, format, types, then every test (pure, redis, e2e). -rs lists every
# skipped test with its reason; a real-capture test that skips while the captures are there
# (../shared/testdata/bybit) fails the run instead (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -q -rs "$@"
