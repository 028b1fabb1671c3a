# Shared by the oha scripts: a release gateway and its own nats-server on free loopback
# ports, torn down on exit. Source it, then call `start_gateway "<extra toml>"`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

command -v oha >/dev/null || cargo install oha --locked
NATS_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url [expected status]
  for _ in $(seq 1 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
    [ "$code" = "${2:-200}" ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2; return 1
}

start_gateway() { # extra toml appended to the generated config
  cargo build --release -q -p sse-gateway --manifest-path "$ROOT/Cargo.toml"
  NATS_PORT=$(free_port); PORT=$(free_port); ADMIN=$(free_port)
  "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -l "$WORK/nats.log" & PIDS+=($!)
  cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
threads = 2
[admin]
listen = "127.0.0.1:$ADMIN"
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
$1
TOML
  RUST_LOG=warn "$ROOT/target/release/sse-gateway" --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" & PIDS+=($!)
  GATEWAY_PID=$!
  wait_http "http://127.0.0.1:$ADMIN/readyz"
  BASE="http://127.0.0.1:$PORT"
  ADMIN_URL="http://127.0.0.1:$ADMIN"
}

# oha, JSON summary to stdout.
run_oha() { oha --no-tui --output-format json "$@" 2>/dev/null || oha --no-tui -j "$@"; }

# Prints "status: count" lines of an oha JSON summary.
status_counts() { python3 -c 'import json,sys; d=json.load(sys.stdin); [print(f"{k}: {v}") for k,v in sorted(d["statusCodeDistribution"].items())]'; }

# Prints requests/s and latency percentiles (ms) of an oha JSON summary.
latency() {
  python3 -c '
import json,sys
d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]
ms=lambda v: "-" if v is None else "%.3f" % (v*1000)
print("requests/s %.0f  p50 %s ms  p90 %s ms  p99 %s ms  p99.9 %s ms" % (s["requestsPerSec"], ms(p["p50"]), ms(p["p90"]), ms(p["p99"]), ms(p.get("p99.9"))))'
}
