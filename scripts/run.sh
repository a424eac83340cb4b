#!/usr/bin/env bash
# `make run` / `make demo`: the whole pipeline under supervisord in the foreground; Ctrl-C stops
# it all cleanly. A private redis-server (data in var/redis) unless STREAMER_REDIS_URL is set.
# --demo: offline, against the simulator, candles on the console and on ws://127.0.0.1:9500.
# Every stage logs to this console (supervisord.conf); PIPELINE_* variables: see supervisord.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pipeline_env.sh
mkdir -p "$PIPELINE_VAR/log" "$PIPELINE_VAR/redis"

demo=false
[ "${1:-}" = "--demo" ] && demo=true
export PIPELINE_DEMO=$demo
export PIPELINE_INGEST_PROCS=${PIPELINE_INGEST_PROCS:-1}
export PIPELINE_AGGREGATE_PROCS=${PIPELINE_AGGREGATE_PROCS:-1}
export PIPELINE_METRICS_PORT=${PIPELINE_METRICS_PORT:-9100}
export PIPELINE_SIMULATOR_PORT=${PIPELINE_SIMULATOR_PORT:-8765}

if [ "$pipeline_redis_url_set" = true ] && [ "$demo" = false ]; then
  export PIPELINE_PRIVATE_REDIS=false
else
  export PIPELINE_PRIVATE_REDIS=true
  export STREAMER_REDIS_URL=$pipeline_private_redis_url
fi

if [ "$demo" = true ]; then
  # The demo is self-contained: it ignores .env and uses the simulator and a private Redis.
  export STREAMER_ENV_FILE=/dev/null
  export STREAMER_BYBIT_WS_URL=ws://127.0.0.1:${PIPELINE_SIMULATOR_PORT}/v5/public/linear
  export STREAMER_BYBIT_REST_URL=http://127.0.0.1:${PIPELINE_SIMULATOR_PORT}
  export STREAMER_BYBIT_LOAD_ALL_SYMBOLS=true
  export STREAMER_BYBIT_SYMBOLS_LIMIT=${STREAMER_BYBIT_SYMBOLS_LIMIT:-5}
  export STREAMER_KLINE_INTERVALS=${STREAMER_KLINE_INTERVALS:-1s,1m}
  export STREAMER_ENABLED_CONSUMERS=console,websocket
  export STREAMER_WSS_AUTH_USER=${STREAMER_WSS_AUTH_USER:-demo}
  export STREAMER_WSS_AUTH_KEY=${STREAMER_WSS_AUTH_KEY:-demo}
  export STREAMER_WEBSOCKET_PORT=${STREAMER_WEBSOCKET_PORT:-9500}
  echo "demo: candles below; WebSocket feed at ws://demo:demo@127.0.0.1:${STREAMER_WEBSOCKET_PORT}/"
  echo "demo: live chart at http://127.0.0.1:${STREAMER_WEBSOCKET_PORT}/chart (user demo, key demo)"
fi
echo "Redis: $STREAMER_REDIS_URL"
if [ "$PIPELINE_METRICS_PORT" != 0 ]; then
  first_aggregate=$((PIPELINE_METRICS_PORT + PIPELINE_INGEST_PROCS))
  echo "metrics: http://127.0.0.1:PORT/metrics (and /health) with PORT = ingest" \
    "$PIPELINE_METRICS_PORT.., aggregate $first_aggregate.., publish" \
    "$((first_aggregate + PIPELINE_AGGREGATE_PROCS))"
fi

# supervisord in the foreground: every stage's lines on this console; Ctrl-C (SIGINT) stops all.
exec .venv/bin/supervisord -c supervisord.conf
