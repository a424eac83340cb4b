#!/usr/bin/env bash
# Installs everything the pipeline and its tests need, idempotently: a virtual environment in
# .venv with the package and its dev extras (versions pinned by constraints.txt; pip builds the
# candle core's C helper, aggregate/_speedups.c, with the system's C compiler), and from the
# system's packages a redis-server binary when none is on PATH, PostgreSQL's server (initdb,
# pg_ctl: the postgres consumer's tests start a private one) when none is on PATH nor in
# /usr/lib/postgresql, gcc when no C compiler is there; the chart's JavaScript library with npm;
# and, best effort (only the tests that need them use them; they skip without), chromium for the
# chart's browser test, docker-compose, and docker.io plus debootstrap for the test that builds
# the image and runs the scaled stack.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

apt_install() {  # quiet apt-get install of the packages given; fails where apt-get is missing
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null 2>&1
}

if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  apt_install gcc libc6-dev || echo "note: no C compiler could be installed" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stale=0
for f in pyproject.toml constraints.txt setup.py aggregate/_speedups.c; do
  [ -f .venv/.installed ] && [ ! "$f" -nt .venv/.installed ] || stale=1
done
if [ "$stale" = 1 ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
  touch .venv/.installed
fi
if ! .venv/bin/python -c "import aggregate.speedups as s; raise SystemExit(not s.SPEEDUPS)"; then
  echo "note: the candle core's C helper was not built (no C compiler?); the core runs in pure Python, slower" >&2
fi

if ! command -v redis-server >/dev/null 2>&1 && ! apt_install redis-server; then
  echo "error: redis-server is not installed and apt-get could not install it; install Redis >= 6.2" >&2
  exit 1
fi
pg_bin() { command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin initdb)" ] && ! apt_install postgresql; then
  echo "error: PostgreSQL is not installed and apt-get could not install it; install PostgreSQL >= 13" >&2
  exit 1
fi
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  apt_install docker-compose \
    || echo "note: docker-compose not installed; the compose-file test will be skipped" >&2
fi
missing=""
command -v dockerd >/dev/null 2>&1 || missing="docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086  # one word per package
  apt_install $missing \
    || echo "note: $missing not installed; the compose stack test (make compose-test) will be skipped" >&2
fi
# The chart page's JavaScript library (publish/static/package.json, pinned; never in the repo).
stamp=publish/static/node_modules/.installed
if [ ! -f "$stamp" ] || [ publish/static/package-lock.json -nt "$stamp" ]; then
  if command -v npm >/dev/null 2>&1; then
    { npm ci --prefix publish/static --no-audit --no-fund --loglevel=error >/dev/null && touch "$stamp"; } \
      || echo "note: npm could not install the chart library; GET /chart will say so" >&2
  else
    echo "note: no npm: the chart library is not installed; GET /chart will say so" >&2
  fi
fi
# Headless Chromium for the chart's browser test (best effort; the test skips without it).
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium || echo "note: chromium not installed; the chart's browser test will be skipped" >&2
fi
echo "installed: $(.venv/bin/python --version), $(redis-server --version | cut -d' ' -f1-3), $("$(pg_bin pg_ctl)" --version)"
