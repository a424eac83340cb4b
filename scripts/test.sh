#!/usr/bin/env bash
# The whole check: lint, format, types, then every test (pure, redis, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest -q "$@"
