# Shared by ./run-tests and .ci/run: message-queue brokers for the source tests
# (tests/sources_nats.rs). Source it, then call `ensure_nats_server` and
# `start_private_nats DIR`: a private nats-server with JetStream (-js) on a free loopback port,
# its store in DIR; it sets NATS_PORT, NATS_URL, NATS_PID and NATS_STORE.
# `restart_private_nats` is what the broker-restart test does by itself; `stop_private_nats`
# stops it. Nothing here touches a broker already running on the machine (:4222).

ensure_nats_server() {
  if command -v nats-server >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "nats-server is missing: installing it with apt-get" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    return 0
  fi
  echo "nats-server is missing. Install it first:" >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y nats-server" >&2
  return 1
}

# The nats-server binary (Debian installs it in /usr/sbin, not always on a user's PATH).
nats_server_bin() {
  command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server
}

start_private_nats() {
  local dir=$1 tries=0
  NATS_STORE="$dir/nats"
  mkdir -p "$NATS_STORE"
  while [ $tries -lt 20 ]; do
    tries=$((tries + 1))
    NATS_PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    "$(nats_server_bin)" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$NATS_STORE" >"$dir/nats.log" 2>&1 &
    NATS_PID=$!
    for _ in $(seq 1 50); do
      if grep -q "Server is ready" "$dir/nats.log" 2>/dev/null; then
        NATS_URL="nats://127.0.0.1:$NATS_PORT"
        export NATS_PORT NATS_URL NATS_PID NATS_STORE
        return 0
      fi
      kill -0 "$NATS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
  done
  echo "could not start a private nats-server (see $dir/nats.log)" >&2
  return 1
}

stop_private_nats() {
  if [ -n "${NATS_PID:-}" ]; then
    kill "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
  fi
}

# RabbitMQ for tests/sources_amqp.rs: the machine's broker on 127.0.0.1:5672 (guest/guest) when
# it answers; else rabbitmq-server is installed when missing and started as a service (it is too
# heavy to run privately per test run). Sets AMQP_URL. Each test uses queues of its own.
# tests/sources_chaos.rs (ignored; a .ci/run step of its own), which restarts its broker, starts
# a private node instead (its own node name, ports, epmd, Mnesia directory): it needs only
# rabbitmq-server and epmd (erlang-base) installed, which `ensure_rabbitmq` sees to.
amqp_answers() {
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
  AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
  export AMQP_URL
  if amqp_answers; then
    return 0
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "rabbitmq-server is missing: installing it with apt-get" >&2
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    else
      echo "rabbitmq-server is missing. Install it first: sudo apt-get install -y rabbitmq-server" >&2
      return 1
    fi
  fi
  echo "starting rabbitmq-server" >&2
  if command -v service >/dev/null 2>&1; then
    service rabbitmq-server start >/dev/null 2>&1 || true
  fi
  if ! amqp_answers; then
    (PATH="$PATH:/usr/sbin"; rabbitmq-server -detached >/dev/null 2>&1 || true)
  fi
  for _ in $(seq 1 120); do
    if amqp_answers; then
      return 0
    fi
    sleep 0.5
  done
  echo "RabbitMQ does not answer on 127.0.0.1:5672" >&2
  return 1
}
