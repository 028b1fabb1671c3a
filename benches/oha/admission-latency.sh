#!/usr/bin/env bash
# Latency of admission itself: requests that admission answers without streaming.
#   - a refused stream (bad topic, 400): token bucket + request parsing in the front;
#   - a non-stream path (404): the front hands the connection to Pingora's proxy.
#   benches/oha/admission-latency.sh [requests]
source "$(dirname "$0")/common.sh"
N=${1:-50000}
start_gateway "[limits]
connect_rate_per_ip = 100000000
connect_burst_per_ip = 100000000"
echo "400 (refused by the front, keep-alive):"
run_oha -n "$N" -c 16 "$BASE/events/bad..topic" | tee "$WORK/a.json" | latency
status_counts < "$WORK/a.json"
echo "404 (through Pingora's proxy, keep-alive):"
run_oha -n "$N" -c 16 "$BASE/nowhere" | tee "$WORK/b.json" | latency
status_counts < "$WORK/b.json"
