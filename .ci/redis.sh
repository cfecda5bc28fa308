# Shared by ./run-tests, ./quickstart and .ci/run: make sure redis-server exists, and start a
# private one on a free loopback port. Source it, then call `start_private_redis DIR`; it sets
# REDIS_PORT, REDIS_URL and REDIS_PID. `stop_private_redis` stops it.

ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing: installing it with apt-get" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    return 0
  fi
  echo "redis-server is missing. Install it first:" >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y redis-server    macOS: brew install redis" >&2
  return 1
}

start_private_redis() {
  local dir=$1 tries=0
  mkdir -p "$dir"
  while [ $tries -lt 20 ]; do
    tries=$((tries + 1))
    REDIS_PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$dir" --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 50); do
      if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
        export REDIS_PORT REDIS_URL REDIS_PID
        return 0
      fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$REDIS_PID" 2>/dev/null || true
  done
  echo "could not start a private redis-server (see $dir/redis.log)" >&2
  return 1
}

stop_private_redis() {
  if [ -n "${REDIS_PID:-}" ]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
}
