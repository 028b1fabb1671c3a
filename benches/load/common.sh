# Shared by the load scenarios: release builds, a nats-server, the gateway and (when
# asked) Nchan, all on free loopback ports, torn down on exit. Source it.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RESULTS="${RESULTS:-$ROOT/benches/load/results}"
mkdir -p "$RESULTS"
on_exit() {
  [ -f "$WORK/nchan/nginx.pid" ] && kill -QUIT "$(cat "$WORK/nchan/nginx.pid")" 2>/dev/null || true
}
ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p sse-gateway -p sse-loadgen --manifest-path "$ROOT/Cargo.toml"
LOADGEN="$ROOT/target/release/sse-loadgen"

# start_gateway [extra toml]: the release gateway with limits out of the way.
start_gateway() {
  launch_gateway "[limits]
max_connections = 1000000
max_connections_per_ip = 1000000
connect_rate_per_ip = 100000000
connect_burst_per_ip = 100000000
max_sockets_per_ip = 1000000
${1:-}"
}

# start_nchan: nginx + nchan with 2 workers (benches/nchan).
start_nchan() {
  NCHAN_PORT=$(free_port)
  NCHAN_PID=$("$ROOT/benches/nchan/start.sh" "$NCHAN_PORT" "$WORK/nchan")
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$NCHAN_PORT") 2>/dev/null && break; sleep 0.05; done
  NCHAN_URL="http://127.0.0.1:$NCHAN_PORT"
}

# stop_nchan: ends the running Nchan (graceful quit of the master, then waits for it).
stop_nchan() {
  kill -QUIT "$NCHAN_PID" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$NCHAN_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$NCHAN_PID" 2>/dev/null || true
  rm -rf "$WORK/nchan"
}

# fresh_nchan: a new Nchan, so that one run's state (memory held by a run that fell
# behind, workers that crashed) does not weigh on the next.
fresh_nchan() { stop_nchan; start_nchan; }

# gateway_run <label> <loadgen args…>: one JSON line tagged with server and label.
# A run that does not finish within RUN_TIMEOUT seconds (a server that buffers without
# bound) is recorded as {"timed_out": true}.
RUN_TIMEOUT=${RUN_TIMEOUT:-120}

tagged() { # server label: tag the JSON line read on stdin (or a timeout marker)
  python3 -c '
import json,sys
text=sys.stdin.read().strip()
d=json.loads(text) if text else {"timed_out": True}
d["server"]=sys.argv[1]; d["label"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2"
}

# gateway_run <label> <loadgen args…>: the server name is $SERVER (default sse-gateway).
gateway_run() {
  local label=$1; shift
  timeout "$RUN_TIMEOUT" "$LOADGEN" run --url "$GATEWAY_URL" --nats "nats://127.0.0.1:$NATS_PORT" \
    --server-pid "$GATEWAY_PID" "$@" 2>"$WORK/last.txt" \
    | tagged "${SERVER:-sse-gateway}" "$label" | tee -a "$RESULTS/results.jsonl" || true
  tail -n 22 "$WORK/last.txt" >&2
}

# nchan_run <label> <loadgen args…>: the server name is $SERVER (default nchan), the
# subscriber path $NCHAN_SUB_PATH (default /sub/{topic}).
nchan_run() {
  local label=$1; shift
  timeout "$RUN_TIMEOUT" "$LOADGEN" run --url "$NCHAN_URL" --sub-path "${NCHAN_SUB_PATH:-/sub/{topic\}}" \
    --publish-http "$NCHAN_URL/pub/{topic}" --server-pid "$NCHAN_PID" "$@" 2>"$WORK/last.txt" \
    | tagged "${SERVER:-nchan}" "$label" | tee -a "$RESULTS/results.jsonl" || true
  tail -n 22 "$WORK/last.txt" >&2
}
