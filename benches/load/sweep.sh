#!/usr/bin/env bash
# How the gateway scales: clients 1k → 18k on one topic, and topics 1 → 10k with 10,000
# clients; at each point CPU µs per delivered event (server and generator) and server
# bytes per connection. Every point gets a fresh gateway, so memory freed by an earlier
# point cannot flatter a later one. Then draws docs/img/sweep-*.png (gnuplot).
#   benches/load/sweep.sh
source "$(dirname "$0")/common.sh"
export RESULTS="$RESULTS/sweep"; mkdir -p "$RESULTS"
start_nats
for clients in 1000 2000 5000 10000 18000; do
  procs=1; [ "$clients" -gt 10000 ] && procs=2
  # Memory: idle streams.
  start_gateway
  gateway_run "clients-$clients-idle" --mode idle --clients "$clients" --procs "$procs" --hold 3s
  # CPU: 200 msg/s on one topic, i.e. 200 × clients events/s.
  stop_gateway; start_gateway
  gateway_run "clients-$clients" --clients "$clients" --procs "$procs" --topics 1 --rate 200 --duration 5s
  stop_gateway
done
for topics in 1 10 100 1000 10000; do
  # 10,000 clients; 1,000 msg/s spread over the topics.
  start_gateway
  gateway_run "topics-$topics" --clients 10000 --topics "$topics" --rate 1000 --duration 5s
  stop_gateway
done
python3 "$ROOT/benches/load/plot.py" "$RESULTS/results.jsonl" "$ROOT/docs/img"
