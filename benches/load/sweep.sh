#!/usr/bin/env bash
# How the gateway scales: clients 1k → 18k on one topic, and topics 1 → 250k with 10,000
# clients (beyond 10k topics each client reads topics/10,000 of them on one stream); at
# each point CPU µs per delivered event (server and generator) and server bytes per
# connection. Every point gets a fresh gateway, so memory freed by an earlier point
# cannot flatter a later one. Then draws docs/img/sweep-*.png.
#   benches/load/sweep.sh              # both axes (≈ 10 min)
#   AXES=topics benches/load/sweep.sh  # one axis
source "$(dirname "$0")/common.sh"
export RESULTS="$RESULTS/sweep"; mkdir -p "$RESULTS"
start_nats
AXES=${AXES:-clients topics}
[[ " $AXES " == *" clients "* ]] && for clients in 1000 2000 5000 10000 18000; do
  procs=1; [ "$clients" -gt 10000 ] && procs=2
  # Memory: idle streams.
  start_gateway
  gateway_run "clients-$clients-idle" --mode idle --clients "$clients" --procs "$procs" --hold 3s
  # CPU: 200 msg/s on one topic, i.e. 200 × clients events/s.
  stop_gateway; start_gateway
  gateway_run "clients-$clients" --clients "$clients" --procs "$procs" --topics 1 --rate 200 --duration 5s
  stop_gateway
done
[[ " $AXES " == *" topics "* ]] && for topics in 1 10 100 1000 10000 100000 250000; do
  # 10,000 clients; 1,000 msg/s spread over the topics.
  per=$(( topics > 10000 ? topics / 10000 : 1 ))
  start_gateway "max_topics = 1000000
[sse]
max_topics_per_connection = 64"
  gateway_run "topics-$topics" --clients 10000 --topics "$topics" --topics-per-client "$per" \
    --rate 1000 --duration 5s
  stop_gateway
done
python3 "$ROOT/benches/load/plot.py" "$RESULTS/results.jsonl" "$ROOT/docs/img"
