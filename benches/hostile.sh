#!/usr/bin/env bash
# Hostile memory (protocol §10): peak RSS of the release gateway (embedded bus, default
# budgets unless overridden) in the scenarios of issue 11, against the promised bound
#   max_ring_bytes + client_buffer_bytes × open streams + a fixed base.
#   newlines   30 POSTs of 1,000,000 newlines to one topic (a 7 MB frame each once
#              framed: over the default budgets, so each is refused with 413)
#   stalled    40 streams that never read, then two 1 MB publishes to their topic
#   thousand   1,000 streams that never read on one topic, then 64 MB published in
#              1 MB events
# Budgets can be set with the environment, e.g.
#   REPLAY_BYTES=16777216 CLIENT_BUFFER_BYTES=8388608 MAX_RING_BYTES=33554432 \
#   benches/hostile.sh
# (then the newline events are taken: 16 MiB rings hold two of them).
# A build without byte budgets (an earlier commit, for the "before" column) runs with
#   GATEWAY=/path/to/old/sse-gateway BUDGETS=0 benches/hostile.sh
#   benches/hostile.sh [newlines|stalled|thousand|all]
source "$(dirname "$0")/common.sh"
WHAT=${1:-all}
[ "$GATEWAY" = "$ROOT/target/release/sse-gateway" ] &&
  cargo build --release -q -p sse-gateway --manifest-path "$ROOT/Cargo.toml"
BUDGETS=${BUDGETS:-1}
NATS_PORT=1 # unused: embedded bus

REPLAY_BYTES=${REPLAY_BYTES:-8388608}
CLIENT_BUFFER_BYTES=${CLIENT_BUFFER_BYTES:-4194304}
MAX_RING_BYTES=${MAX_RING_BYTES:-1073741824}

fresh_gateway() {
  [ -n "${GATEWAY_PID:-}" ] && stop_gateway
  local sse_budgets="" ring_budget=""
  if [ "$BUDGETS" = 1 ]; then
    sse_budgets="replay_bytes = $REPLAY_BYTES
client_buffer_bytes = $CLIENT_BUFFER_BYTES"
    ring_budget="max_ring_bytes = $MAX_RING_BYTES"
  fi
  launch_gateway "[bus]
kind = \"memory\"
[sse]
$sse_budgets
write_timeout = \"60s\"
[limits]
$ring_budget
connect_rate_per_ip = 100000
connect_burst_per_ip = 100000
max_connections_per_ip = 100000"
}

kib() { awk -v f="$1" '$1 == f":" { print $2 }' "/proc/$GATEWAY_PID/status"; }
metric() { curl -s "$ADMIN_URL/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

# stall N TOPIC: N streams that read their response head and then nothing (4 KiB
# receive buffers), held by a background python process until the scenario ends.
stall() {
  python3 - "$PORT" "$1" "$2" <<'PY' &
import socket, sys, time
port, n, topic = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /events/{topic} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    got = b""
    while b"connected" not in got:
        got += s.recv(256)
    socks.append(s)
print(f"  {n} stalled streams open", flush=True)
time.sleep(3600)
PY
  STALLER=$!
  PIDS+=($STALLER)
  until [ "$(metric sse_connections_active)" = "$1" ]; do sleep 0.1; done
}

report() { # name streams
  local hwm rss promise
  hwm=$(( $(kib VmHWM) * 1024 )); rss=$(( $(kib VmRSS) * 1024 ))
  promise=$(( MAX_RING_BYTES + CLIENT_BUFFER_BYTES * $2 ))
  mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
  printf '%-9s peak RSS %s MB (before the scenario %s MB, after %s MB); bound %s MB + base; rings %s MB; cut %s; too_large %s\n' \
    "$1" "$(mb "$hwm")" "$(mb "$BASE")" "$(mb "$rss")" "$(mb "$promise")" \
    "$(mb "$(metric sse_ring_bytes)")" "$(metric sse_slow_consumer_disconnects_total)" \
    "$(curl -s "$ADMIN_URL/metrics" | awk '/reason="too_large"/ { print $2 }')"
}

publish_file() { # topic file → status code
  curl -s -o /dev/null -w '%{http_code}' --data-binary @"$2" "$GATEWAY_URL/publish/$1"
}

python3 -c 'import sys; sys.stdout.write("\n" * 1000000)' > "$WORK/newlines"
python3 -c 'import sys; sys.stdout.write("x" * 1000000)' > "$WORK/plain"

if [[ $WHAT == newlines || $WHAT == all ]]; then
  fresh_gateway; BASE=$(( $(kib VmRSS) * 1024 ))
  codes=$(for _ in $(seq 1 30); do publish_file mem1 "$WORK/newlines"; echo; done | sort | uniq -c | xargs)
  echo "  newline publishes answered: $codes"
  report newlines 0
fi

if [[ $WHAT == stalled || $WHAT == all ]]; then
  fresh_gateway
  stall 40 stall
  BASE=$(( $(kib VmRSS) * 1024 ))
  for _ in 1 2; do publish_file stall "$WORK/newlines" >/dev/null; publish_file stall "$WORK/plain" >/dev/null; done
  sleep 1
  report stalled 40
  kill "$STALLER" 2>/dev/null || true
fi

if [[ $WHAT == thousand || $WHAT == all ]]; then
  fresh_gateway
  stall 1000 one
  BASE=$(( $(kib VmRSS) * 1024 ))
  for _ in $(seq 1 64); do publish_file one "$WORK/plain" >/dev/null; done
  sleep 1
  report thousand 1000
  kill "$STALLER" 2>/dev/null || true
fi
