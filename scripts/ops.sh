#!/usr/bin/env bash
# `make status` / `make verify`: `python -m ops ...` against the pipeline `make run` started
# (its private Redis unless STREAMER_REDIS_URL is set), not the default 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pipeline_env.sh
if [ "$pipeline_redis_url_set" = false ]; then
  export STREAMER_REDIS_URL=$pipeline_private_redis_url
fi
exec .venv/bin/python -m ops "$@"
