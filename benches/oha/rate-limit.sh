#!/usr/bin/env bash
# Connect-rate limiting under load: one client address hammers the gateway for T
# seconds; the share of requests let through must match the token bucket
# (burst + rate × T) within 10 %.
#   benches/oha/rate-limit.sh [rate] [burst] [seconds]
source "$(dirname "$0")/common.sh"
RATE=${1:-100}; BURST=${2:-100}; SECS=${3:-10}
start_gateway "[limits]
connect_rate_per_ip = $RATE
connect_burst_per_ip = $BURST"
# /probe is not a route: a passing request is a 404, a limited one a 429.
OUT=$(run_oha -z "${SECS}s" -c 8 "$BASE/probe")
echo "$OUT" | status_counts
PASSED=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("404",0))')
LIMITED=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("429",0))')
EXPECTED=$((BURST + RATE * SECS))
python3 - "$PASSED" "$LIMITED" "$EXPECTED" <<'PY'
import sys
passed, limited, expected = map(int, sys.argv[1:])
total = passed + limited
err = (passed - expected) / expected * 100
print(f"requests {total}: passed {passed} ({passed/total*100:.2f} %), 429 {limited} ({limited/total*100:.2f} %)")
print(f"expected to pass: burst + rate x seconds = {expected}; measured {passed} ({err:+.1f} %)")
sys.exit(0 if abs(err) <= 10 else 1)
PY
