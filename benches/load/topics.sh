#!/usr/bin/env bash
# Topics as cheap as streams: what a topic costs when every stream brings its own.
#   benches/load/topics.sh            # gateway runs, then Nchan (≈ 6 min)
# Every run: 18,000 idle HTTP/1.1 streams (2 generator processes), a fresh gateway, RSS
# of the server before and after the streams connected (loadgen's idle mode).
#   shared      all streams on ONE topic                 → the cost of a stream
#   fresh-1     one topic per stream (user.<i>)          → + 1 topic per stream
#   fresh-14    14 topics per stream (user.<i>.0 … .13)  → + 14 topics per stream
#   agg-14      fresh-14 with [sse] aggregate = ["user.>"]
# A topic costs (RSS of fresh-k − RSS of shared) ÷ (k × streams). Nchan, same generator:
# one channel per stream (/sub/user.<i>) against one shared channel.
# GATEWAY_BEFORE=<binary> adds the runs against an older build; RUNS picks the parts
# (default "gateway before nchan"; results accumulate, the table shows the latest run).
source "$(dirname "$0")/common.sh"
export RESULTS="$RESULTS/topics"; mkdir -p "$RESULTS"
CLIENTS=${CLIENTS:-18000}
fresh_path() { # k: a path with k topics of the connection's own
  local k=$1 path="/events?topic=user.{client}.0"
  for i in $(seq 1 $((k - 1))); do path="$path&topic=user.{client}.$i"; done
  echo "$path"
}
TOPIC_LIMITS="[limits]
max_connections = 1000000
max_connections_per_ip = 1000000
connect_rate_per_ip = 100000000
connect_burst_per_ip = 100000000
max_sockets_per_ip = 1000000
max_topics = 1000000"
gateway_topics() { # label binary extra-toml
  local label=$1 bin=$2 extra=${3:-}
  for run in shared fresh-1 fresh-14; do
    GATEWAY=$bin launch_gateway "$TOPIC_LIMITS
$extra"
    case $run in
      shared) path='/events/user.all' ;;
      fresh-1) path='/events/user.{client}' ;;
      fresh-14) path=$(fresh_path 14) ;;
    esac
    gateway_run "$label-$run" --mode idle --clients "$CLIENTS" --topics 1 --procs 2 --hold 3s --sub-path "$path"
    stop_gateway
  done
}
RUNS=${RUNS:-gateway before nchan}
has() { [[ " $RUNS " == *" $1 "* ]]; }
start_nats
if has gateway; then
gateway_topics topics "$GATEWAY"
GATEWAY=$GATEWAY launch_gateway "$TOPIC_LIMITS
[sse]
aggregate = [\"user.>\"]"
gateway_run "topics-agg-14" --mode idle --clients "$CLIENTS" --topics 1 --procs 2 --hold 3s --sub-path "$(fresh_path 14)"
stop_gateway
fi
if has before && [ -n "${GATEWAY_BEFORE:-}" ]; then
  SERVER=sse-gateway-before gateway_topics topics "$GATEWAY_BEFORE"
fi
if has nchan && command -v nginx >/dev/null; then
  start_nchan
  NCHAN_SUB_PATH='/sub/user.all' SERVER=nchan nchan_run "topics-shared" --mode idle --clients "$CLIENTS" --topics 1 --procs 2 --hold 3s
  fresh_nchan
  NCHAN_SUB_PATH='/sub/user.{client}' SERVER=nchan nchan_run "topics-fresh-1" --mode idle --clients "$CLIENTS" --topics 1 --procs 2 --hold 3s
  stop_nchan
fi
python3 - "$RESULTS/results.jsonl" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[(d.get("server"), d.get("label"))] = d
def rss(d): return d.get("server_rss_connected_bytes") or 0
print(f"{'server':22} {'run':16} {'ok':>6} {'setup/s':>9} {'B/stream':>9} {'B/topic':>8}")
for (server, label), d in runs.items():
    base = runs.get((server, label.rsplit('-', 1)[0].replace('-fresh', '').replace('-agg', '') + '-shared'))
    run = label.split('-', 1)[1]
    k = {"fresh-1": 1, "fresh-14": 14, "agg-14": 14}.get(run)
    per_topic = ""
    if k and base and d.get("ok"):
        per_topic = f"{(rss(d) - rss(base)) / (k * d['ok']):8.0f}"
    print(f"{server:22} {run:16} {d.get('clients_ok') or 0:6} {d.get('setup_rate_per_s', 0):9.0f} "
          f"{d.get('server_rss_per_conn_bytes') or 0:9.0f} {per_topic:>8}")
PY
