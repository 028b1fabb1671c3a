#!/usr/bin/env bash
# The operator API under load: what listing every stream costs, and what it costs the
# streams.   benches/load/operator.sh   (≈ 2 min)
# A gateway holds 18,000 streams (100 topics, 2 generator processes) receiving 500
# events/s for 20 s, twice: once alone (baseline), once while an operator lists every
# stream (GET /api/streams, pages of 10,000 by ?after=) and the topics in a loop. RATE
# (default 500) sets the events/s published (× 180 streams per topic). Reports
# the generator's delivery latencies for both runs and the time of each full listing.
# (18,000, not 20,000: one process may hold 20,000 files here, and the gateway needs a
# few for itself.)
source "$(dirname "$0")/common.sh"
export RESULTS="$RESULTS/operator"; mkdir -p "$RESULTS"
CLIENTS=${CLIENTS:-18000}
RATE=${RATE:-500}
RUN=(--clients "$CLIENTS" --topics 100 --rate "$RATE" --duration 20s --procs 2 --connect-concurrency 512)
start_nats
start_gateway

# list_all: every stream, page by page, then the topics; prints "<seconds> <streams>"
# where seconds is the sum of curl's time_total over the calls (the server's answer, not
# the parsing here).
list_all() {
  local after="" total=0 secs=0 n last t
  while :; do
    t=$(curl -s -o "$WORK/page.json" -w '%{time_total}' "$ADMIN_URL/api/streams?limit=10000$after")
    secs=$(python3 -c "print($secs + $t)")
    n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["streams"]))' "$WORK/page.json")
    total=$((total + n))
    [ "$n" -lt 10000 ] && break
    last=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["streams"][-1]["id"])' "$WORK/page.json")
    after="&after=$last"
  done
  t=$(curl -s -o /dev/null -w '%{time_total}' "$ADMIN_URL/api/topics")
  echo "$(python3 -c "print(round($secs + $t, 4))") $total"
}

gateway_run "baseline-$RATE" "${RUN[@]}"
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
gateway_run "listing-$RATE" "${RUN[@]}"
wait "$LISTER" || true
python3 - "$WORK/listings.txt" "$RATE" <<'PY' | tee -a "$RESULTS/listings.txt"
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
secs = sorted(float(s) for s, n in rows if int(n) >= 18000)
counts = sorted({int(n) for _, n in rows})
if secs:
    print(f"rate {sys.argv[2]}: full listings of 18,000 streams: {len(secs)}, "
          f"seconds p50 {statistics.median(secs):.3f} max {secs[-1]:.3f} "
          "(two pages of streams + the topics, curl's time_total summed)")
PY
