# Sourced by scripts/run.sh (`make run`, `make demo`) and scripts/ops.sh (`make status`,
# `make verify`), so that both agree on where the pipeline lives: the private redis-server of
# `make run` unless STREAMER_REDIS_URL is set (in the environment, or non-empty in .env).
export PIPELINE_HOME=${PIPELINE_HOME:-$PWD}
export PIPELINE_VAR=${PIPELINE_VAR:-$PIPELINE_HOME/var}
export PIPELINE_REDIS_PORT=${PIPELINE_REDIS_PORT:-6390}
pipeline_env_file=${STREAMER_ENV_FILE:-.env}
pipeline_redis_url_set=false
if [ -n "${STREAMER_REDIS_URL:-}" ] \
  || { [ -f "$pipeline_env_file" ] && grep -q '^STREAMER_REDIS_URL=.' "$pipeline_env_file"; }; then
  pipeline_redis_url_set=true
fi
pipeline_private_redis_url="redis://127.0.0.1:${PIPELINE_REDIS_PORT}/0"
