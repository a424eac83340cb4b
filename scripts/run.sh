#!/usr/bin/env bash
# `make run` / `make demo`: the whole pipeline under supervisord in the foreground; Ctrl-C stops
# it all cleanly. A private redis-server (data in var/redis) unless STREAMER_REDIS_URL is set.
# --demo: offline, against the simulator, candles on the console and on ws://127.0.0.1:9500.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIPELINE_HOME=$PWD
mkdir -p var/log var/redis

demo=false
[ "${1:-}" = "--demo" ] && demo=true
export PIPELINE_DEMO=$demo
export PIPELINE_INGEST_PROCS=${PIPELINE_INGEST_PROCS:-1}
export PIPELINE_AGGREGATE_PROCS=${PIPELINE_AGGREGATE_PROCS:-1}
export PIPELINE_REDIS_PORT=${PIPELINE_REDIS_PORT:-6390}

redis_url_set=false
if [ -n "${STREAMER_REDIS_URL:-}" ] || { [ -f .env ] && grep -q '^STREAMER_REDIS_URL=.' .env; }; then
  redis_url_set=true
fi
if [ "$redis_url_set" = true ] && [ "$demo" = false ]; then
  export PIPELINE_PRIVATE_REDIS=false
else
  export PIPELINE_PRIVATE_REDIS=true
  export STREAMER_REDIS_URL="redis://127.0.0.1:${PIPELINE_REDIS_PORT}/0"
fi

if [ "$demo" = true ]; then
  # The demo is self-contained: it ignores .env and uses the simulator and a private Redis.
  export STREAMER_ENV_FILE=/dev/null
  export STREAMER_BYBIT_WS_URL=ws://127.0.0.1:8765/v5/public/linear
  export STREAMER_BYBIT_REST_URL=http://127.0.0.1:8765
  export STREAMER_BYBIT_LOAD_ALL_SYMBOLS=true
  export STREAMER_BYBIT_SYMBOLS_LIMIT=${STREAMER_BYBIT_SYMBOLS_LIMIT:-5}
  export STREAMER_KLINE_INTERVALS=${STREAMER_KLINE_INTERVALS:-1s,1m}
  export STREAMER_ENABLED_CONSUMERS=console,websocket
  export STREAMER_WSS_AUTH_USER=${STREAMER_WSS_AUTH_USER:-demo}
  export STREAMER_WSS_AUTH_KEY=${STREAMER_WSS_AUTH_KEY:-demo}
  echo "demo: candles below; WebSocket feed at ws://demo:demo@127.0.0.1:9500/"
fi

.venv/bin/supervisord -c supervisord.conf &
sup=$!
stop() {
  kill -TERM "$sup" 2>/dev/null || true
}
trap stop INT TERM
# Show the candles (console consumer) and lifecycle lines as they come.
tail -F -n 0 var/log/publish.log 2>/dev/null &
tailer=$!
wait "$sup" || true
kill "$tailer" 2>/dev/null || true
