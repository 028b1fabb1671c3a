#!/usr/bin/env bash
# At the global cap: CAP streams are held open, then every new stream request must be
# answered 503 with Retry-After, quickly, while the held streams keep working.
#   benches/oha/global-cap.sh [cap] [requests]
source "$(dirname "$0")/common.sh"
CAP=${1:-1000}; N=${2:-20000}
start_gateway "[limits]
max_connections = $CAP
max_connections_per_ip = $CAP
connect_rate_per_ip = 100000000
connect_burst_per_ip = 100000000"
python3 "$(dirname "$0")/hold_streams.py" "$BASE/events/held" "$CAP" "$WORK/held.ready" & PIDS+=($!)
for _ in $(seq 1 600); do [ -f "$WORK/held.ready" ] && break; sleep 0.1; done
curl -s "$ADMIN_URL/metrics" | grep -E '^sse_connections_active '
echo "new streams at the cap:"
run_oha -n "$N" -c 16 "$BASE/events/more" | tee "$WORK/c.json" | latency
status_counts < "$WORK/c.json"
curl -s -D - -o /dev/null "$BASE/events/more" | grep -i -E '^(HTTP|retry-after)'
curl -s "$ADMIN_URL/metrics" | grep -E '^sse_connections_active |over_capacity|max_connections"'
