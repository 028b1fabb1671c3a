#!/usr/bin/env bash
# What traces cost the fan-out: the same load with tracing off, on at 1 % sampling and on
# at 100 %, in one session, alternating (a fresh gateway per run). The "on" gateways
# export over OTLP/HTTP to a local receiver that reads each POST and answers 200 (a few
# lines of Python below), so the export's own cost is on the machine too. The generator
# publishes straight to NATS without a traceparent: every message starts a new trace at
# the configured ratio.
#   fanout  1,000 clients on 1 topic at 5,000 msg/s (5 M events/s) for 10 s
#   topics  10,000 clients over 100 topics at 500 msg/s in all (100 streams per message)
# TRIALS (default 3) runs of each; SCENARIOS (default "fanout topics") picks. Results: one JSON line per run in
# benches/load/results/tracing/results.jsonl (label <scenario>-<variant>-<trial>); the
# summary table is printed at the end.
#   benches/load/tracing.sh            (≈ 10 min)
source "$(dirname "$0")/common.sh"
export RESULTS="$RESULTS/tracing"; mkdir -p "$RESULTS"
TRIALS=${TRIALS:-3}
SCENARIOS=${SCENARIOS:-fanout topics}

# The OTLP receiver: accepts POST /v1/traces, counts the bodies and bytes, discards them.
OTLP_PORT=$(free_port)
python3 - "$OTLP_PORT" "$WORK/otlp.count" <<'PY' & PIDS+=($!)
import http.server, socketserver, sys
port, out = int(sys.argv[1]), sys.argv[2]
stats = {"posts": 0, "bytes": 0}
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        stats["posts"] += 1; stats["bytes"] += n
        open(out, "w").write(f'{stats["posts"]} {stats["bytes"]}\n')
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
Server(("127.0.0.1", port), Sink).serve_forever()
PY
start_nats

tracing_toml() { # variant
  case $1 in
    off) echo "" ;;
    1pct) printf '[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsampling_ratio = 0.01\n' "$OTLP_PORT" ;;
    100pct) printf '[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsampling_ratio = 1.0\n' "$OTLP_PORT" ;;
  esac
}

run() { # scenario variant trial loadgen-args…
  local scenario=$1 variant=$2 trial=$3; shift 3
  [ -n "${GATEWAY_PID:-}" ] && stop_gateway
  start_gateway "[sse]
client_buffer = 16384
$(tracing_toml "$variant")"
  gateway_run "$scenario-$variant-$trial" "$@"
  echo "otlp receiver (posts, bytes so far): $(cat "$WORK/otlp.count" 2>/dev/null || echo '0 0')" >&2
}

for trial in $(seq 1 "$TRIALS"); do
  for variant in off 1pct 100pct; do
    [[ " $SCENARIOS " == *" fanout "* ]] &&
      run fanout "$variant" "$trial" --clients 1000 --topics 1 --rate 5000 --duration 10s
  done
done
for trial in $(seq 1 "$TRIALS"); do
  for variant in off 1pct 100pct; do
    [[ " $SCENARIOS " == *" topics "* ]] &&
      run topics "$variant" "$trial" --clients 10000 --topics 100 --rate 500 --duration 10s --threads 1
  done
done

python3 - "$RESULTS/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    parts = r.get("label", "").split("-")
    if len(parts) == 3 and not r.get("timed_out"):
        groups.setdefault((parts[0], parts[1]), []).append(r)
print("| scenario | tracing | runs | loss | server µs/event (median, range) | p50 ms | p99 ms (median, range) |")
print("|---|---|---|---|---|---|---|")
for scenario in ("fanout", "topics"):
    for variant in ("off", "1pct", "100pct"):
        rs = groups.get((scenario, variant))
        if not rs:
            continue
        cpu = sorted(r["server_cpu_us_per_event"] for r in rs if r.get("server_cpu_us_per_event"))
        p99 = sorted(r["latency_p99_ms"] for r in rs)
        p50 = statistics.median(r["latency_p50_ms"] for r in rs)
        loss = sum(r["loss"] or 0 for r in rs)
        print(f"| {scenario} | {variant} | {len(rs)} | {loss} | {statistics.median(cpu):.3f} ({cpu[0]:.3f}–{cpu[-1]:.3f}) "
              f"| {p50:.2f} | {statistics.median(p99):.2f} ({p99[0]:.2f}–{p99[-1]:.2f}) |")
PY
