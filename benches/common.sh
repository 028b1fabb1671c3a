# Shared by the benchmark scripts (benches/load, benches/oha): a work directory and the
# processes started in it, torn down on exit; free loopback ports; a nats-server and a
# release gateway on them. Source it (the sourcing script builds what it runs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
PIDS=()
# GATEWAY may name another build (e.g. an earlier commit, for a before/after run).
GATEWAY="${GATEWAY:-$ROOT/target/release/sse-gateway}"
NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"

# on_exit: extra teardown; a sourcing script may redefine it.
on_exit() { :; }
cleanup() {
  on_exit
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url [expected status, default 200]
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = "${2:-200}" ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2; return 1
}

# start_nats: a nats-server on a free port (NATS_PORT).
start_nats() {
  NATS_PORT=$(free_port)
  "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -l "$WORK/nats.log" & PIDS+=($!)
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break; sleep 0.05; done
}

# launch_gateway [extra toml]: the release gateway on free ports, on the running
# nats-server, with the extra TOML appended to its config; waits until it is ready.
# Sets GATEWAY_PID, PORT, ADMIN, GATEWAY_URL, ADMIN_URL.
launch_gateway() {
  PORT=$(free_port); ADMIN=$(free_port)
  cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
threads = 2
[admin]
listen = "127.0.0.1:$ADMIN"
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
${1:-}
TOML
  RUST_LOG=warn "$GATEWAY" --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" & GATEWAY_PID=$!
  PIDS+=($GATEWAY_PID)
  GATEWAY_URL="http://127.0.0.1:$PORT"
  ADMIN_URL="http://127.0.0.1:$ADMIN"
  wait_http "$ADMIN_URL/readyz"
}

# stop_gateway: ends the running gateway (SIGTERM, then waits for it).
stop_gateway() {
  kill "$GATEWAY_PID" 2>/dev/null || true
  wait "$GATEWAY_PID" 2>/dev/null || true
}
