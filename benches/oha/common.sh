# Shared by the oha scripts: a release gateway and its own nats-server on free loopback
# ports, torn down on exit. Source it, then call `start_gateway "<extra toml>"`.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

command -v oha >/dev/null || cargo install oha --locked

start_gateway() { # extra toml appended to the generated config; sets BASE, ADMIN_URL
  cargo build --release -q -p sse-gateway --manifest-path "$ROOT/Cargo.toml"
  start_nats
  launch_gateway "$1"
  BASE="$GATEWAY_URL"
}

# oha, JSON summary to stdout.
run_oha() { oha --no-tui --output-format json "$@" 2>/dev/null || oha --no-tui -j "$@"; }

# Prints "status: count" lines of an oha JSON summary.
status_counts() { python3 -c 'import json,sys; d=json.load(sys.stdin); [print(f"{k}: {v}") for k,v in sorted(d["statusCodeDistribution"].items())]'; }

# Prints requests/s and latency percentiles (ms) of an oha JSON summary.
latency() {
  python3 -c '
import json,sys
d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]
ms=lambda v: "-" if v is None else "%.3f" % (v*1000)
print("requests/s %.0f  p50 %s ms  p90 %s ms  p99 %s ms  p99.9 %s ms" % (s["requestsPerSec"], ms(p["p50"]), ms(p["p90"]), ms(p["p99"]), ms(p.get("p99.9"))))'
}
