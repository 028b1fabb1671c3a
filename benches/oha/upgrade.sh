#!/usr/bin/env bash
# Connection attempts during a binary swap. oha opens a new connection for every request
# (no keep-alive) to the public listener for SECS seconds; a third of the way in, the
# gateway is swapped, once by a restart (SIGTERM, then a new process on the same file:
# the baseline everyone has) and once by `--upgrade` (the new process takes the
# listening sockets over). Prints, for each, oha's answers and errors (refused or reset
# connections) and how long the swap took.
#   benches/oha/upgrade.sh [seconds] [connections]
source "$(dirname "$0")/common.sh"
SECS=${1:-12}; CONC=${2:-4}
# One client address opening connections as fast as it can: roomy buckets and caps.
LIMITS="[limits]
connect_rate_per_ip = 1000000
connect_burst_per_ip = 1000000
max_sockets_per_ip = 100000"

errors() {
  python3 -c '
import json,sys
d=json.load(sys.stdin); e=d.get("errorDistribution") or {}
total=sum(d.get("statusCodeDistribution",{}).values())+sum(e.values())
print("attempts %d, answered %d, failed %d" % (total, total-sum(e.values()), sum(e.values())))
[print("  error: %s x %d" % (k, v)) for k, v in sorted(e.items())]'
}

swap_under_load() { # restart | upgrade
  start_gateway "$LIMITS"
  run_oha -z "${SECS}s" -c "$CONC" --disable-keepalive "$BASE/probe" > "$WORK/$1.json" &
  local oha=$!
  sleep $((SECS / 3))
  local old=$GATEWAY_PID t0 t1
  t0=$(date +%s.%N)
  case $1 in
    restart)
      stop_gateway
      RUST_LOG=warn "$GATEWAY" --config "$WORK/gateway.toml" 2>>"$WORK/gateway.log" &
      GATEWAY_PID=$!; PIDS+=($GATEWAY_PID)
      wait_http "$ADMIN_URL/readyz" ;;
    upgrade)
      RUST_LOG=warn "$GATEWAY" --upgrade --config "$WORK/gateway.toml" 2>>"$WORK/gateway.log" &
      GATEWAY_PID=$!; PIDS+=($GATEWAY_PID)
      wait "$old" && echo "old process exited 0" ;;
  esac
  t1=$(date +%s.%N)
  wait "$oha" || true
  echo "== $1 (swap took $(python3 -c "print('%.1f s' % ($t1 - $t0))"))"
  status_counts < "$WORK/$1.json"
  errors < "$WORK/$1.json"
  stop_gateway
}

swap_under_load restart
swap_under_load upgrade
