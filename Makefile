# Every target does its own set-up on a fresh machine (through `install`, which is idempotent).
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: install test lint format run demo bench bench-smoke bench-peers soak compose-test status \
	verify clean clean-data chart-screenshot

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

# Peer engines on the core's workload (issue 9). The peers live under var/peers/ only, never in
# .venv nor in the project's dependencies; a peer that cannot be installed is reported as not
# measured by the runner.
bench-peers: install
	@mkdir -p var/peers
	@grep -qs '"version": "13.35.3"' var/peers/node/node_modules/tardis-dev/package.json \
		|| npm install --prefix var/peers/node --no-audit --no-fund tardis-dev@13.35.3 \
		|| echo "bench-peers: could not install tardis-dev 13.35.3"
	@var/peers/venv/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("nautilus_trader") != "1.221.0")' 2>/dev/null \
		|| { $(VENV)/python -m venv var/peers/venv && var/peers/venv/bin/pip install -q nautilus_trader==1.221.0; } \
		|| echo "bench-peers: could not install nautilus_trader 1.221.0 in var/peers/venv"
	$(VENV)/python -m bench.peers

# docs/protocol.md's picture of GET /chart (docs/chart.png), taken by the chart's browser test.
chart-screenshot: install
	STREAMER_CHART_SCREENSHOT=docs/chart.png $(VENV)/pytest -q -s tests/publish/test_chart_browser.py

soak: install
	$(VENV)/pytest -q -s -m slow tests

# The image built and the scaled stack run in a private Docker engine (tests/deploy/
# test_compose_stack.py; also part of `make test`, where it skips on a machine that cannot run
# dockerd; here that is a failure).
compose-test: install
	COMPOSE_TEST_REQUIRED=1 $(VENV)/pytest -q -s -m compose tests/deploy

# Against the pipeline `make run` started (its private Redis unless STREAMER_REDIS_URL is set).
status: install
	@scripts/ops.sh status

verify: install
	@scripts/ops.sh verify

# Keeps the private Redis' data (var/redis): `make clean-data` deletes it.
clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
	if [ -d var ]; then find var -mindepth 1 -maxdepth 1 ! -name redis -exec rm -rf {} +; fi
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-data:
	rm -rf var/redis
