#!/usr/bin/env bash
# The operator API under load: what listing every stream costs, and what it costs the
# streams.   benches/load/operator.sh   (≈ 2 min)
# A gateway holds 18,000 streams (100 topics, 2 generator processes) receiving 500
# events/s for 20 s, twice: once alone (baseline), once while an operator lists every
# stream (GET /api/streams, pages of 10,000 by ?after=) and the topics in a loop. Reports
# the generator's delivery latencies for both runs and the time of each full listing.
# (18,000, not 20,000: one process may hold 20,000 files here, and the gateway needs a
# few for itself.)
source "$(dirname "$0")/common.sh"
export RESULTS="$RESULTS/operator"; mkdir -p "$RESULTS"
CLIENTS=${CLIENTS:-18000}
RUN=(--clients "$CLIENTS" --topics 100 --rate 500 --duration 20s --procs 2 --connect-concurrency 512)
start_nats
start_gateway

# list_all: every stream, page by page; prints "<seconds> <streams>".
list_all() {
  local after="" total=0 start end page n last
  start=$(date +%s.%N)
  while :; do
    page=$(curl -s "$ADMIN_URL/api/streams?limit=10000$after")
    n=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["streams"]))' <<<"$page")
    total=$((total + n))
    [ "$n" -lt 10000 ] && break
    last=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["streams"][-1]["id"])' <<<"$page")
    after="&after=$last"
  done
  curl -s -o /dev/null "$ADMIN_URL/api/topics"
  end=$(date +%s.%N)
  echo "$(python3 -c "print(round($end - $start, 3))") $total"
}

gateway_run "baseline" "${RUN[@]}"
# The listing loop starts once the streams are open (it lists nothing before).
(
  for _ in $(seq 1 400); do
    line=$(list_all)
    [ "${line#* }" -ge "$CLIENTS" ] && break
    sleep 0.1
  done
  for _ in $(seq 1 40); do list_all; done > "$WORK/listings.txt"
) &
LISTER=$!
gateway_run "listing" "${RUN[@]}"
wait "$LISTER" || true
python3 - "$WORK/listings.txt" <<'PY' | tee -a "$RESULTS/listings.txt"
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
secs = sorted(float(s) for s, n in rows if int(n) > 0)
counts = sorted({int(n) for _, n in rows})
if secs:
    print(f"full listings: {len(secs)}, streams listed {counts[0]}..{counts[-1]}, "
          f"seconds p50 {statistics.median(secs):.3f} max {secs[-1]:.3f} "
          "(two pages of streams + the topics, curl + python parsing included)")
PY
