#!/usr/bin/env bash
# The headline scenarios, sse-gateway and Nchan side by side in one run, same generator
# (sse-loadgen, on the same 2 cores):
#   idle        18,000 idle streams: RSS per connection, connection setup rate (3 trials
#               each, alternating servers, fresh servers every trial)
#   throughput  1,000 clients on 1 topic: the gateway at 20,000 msg/s (20 M events/s),
#               Nchan at rising rates to find what it sustains without loss;
#               10,000 clients on 1 topic: the gateway at 500 msg/s (5 M events/s), Nchan
#               at rising rates
#   latency     10,000 clients over 100 topics at 250, 500, 750 and 1,000 msg/s in all,
#               3 trials per rate and server, alternating; Nchan with both publisher
#               patterns (see below) so that each rate shows its best
# Nchan is given its best set-up: 2 workers (one per core), and its publishers either as
# the generator's default (4 keep-alive connections, each tick's requests pipelined) or
# as a plain HTTP client does (16 connections, one request in flight each); the tables
# show both. Nchan is restarted before each of its stream runs: a run it fell behind in
# can leave gigabytes held (seen: 14 GB after 10,000 clients at 25 msg/s) or crash its
# workers, and the next run should not pay for that. The gateway is restarted per
# scenario. With GATEWAY_BEFORE=/path/to/an/earlier/sse-gateway the gateway runs are
# repeated with that build (server "sse-gateway-before"): before/after in one session.
# Results: one JSON line per run in benches/load/results/results.jsonl (a run that does
# not finish within RUN_TIMEOUT s is recorded as timed out).
#   benches/load/scenarios.sh [idle|throughput|latency|all]
source "$(dirname "$0")/common.sh"
WHAT=${1:-all}
start_nats
# A client may be up to 16,384 frames behind while its socket is full (default 256):
# at 20,000 events/s per client that is 0.8 s, and the generator, sharing the 2 cores
# with the gateway at that rate, falls behind by a few hundred ms at times (with 4,096
# frames, 0.2 s, one trial in three saw ~200 of 1,000 clients cut as slow consumers).
# The setting matters only while a socket is full: idle and latency runs never get there.
fresh_gateway() {
  [ -n "${GATEWAY_PID:-}" ] && stop_gateway
  start_gateway "[sse]
client_buffer = 16384"
}
# The gateway builds to run: this one, and GATEWAY_BEFORE when set.
BUILDS=("sse-gateway=$GATEWAY")
[ -n "${GATEWAY_BEFORE:-}" ] && BUILDS+=("sse-gateway-before=$GATEWAY_BEFORE")
# each_gateway <command…>: runs the command once per build, on a fresh gateway of it.
each_gateway() {
  local SERVER GATEWAY build
  for build in "${BUILDS[@]}"; do
    SERVER=${build%%=*}; GATEWAY=${build#*=}
    fresh_gateway
    "$@"
  done
}
NCHAN_16X1=(--publish-conns 16 --publish-inflight 1)
start_nats
fresh_gateway
start_nchan

if [[ $WHAT == idle || $WHAT == all ]]; then
  for trial in 1 2 3; do
    each_gateway gateway_run "idle-18k-$trial" --mode idle --clients 18000 --procs 2 --hold 5s --connect-concurrency 512
    fresh_nchan
    nchan_run "idle-18k-$trial" --mode idle --clients 18000 --procs 2 --hold 5s --connect-concurrency 512
  done
fi
if [[ $WHAT == throughput || $WHAT == all ]]; then
  for trial in 1 2 3; do
    each_gateway gateway_run "throughput-1k-20000-$trial" --clients 1000 --topics 1 --rate 20000 --duration 10s
  done
  for rate in 250 500 1000 2000; do
    fresh_nchan
    nchan_run "throughput-1k-$rate" --clients 1000 --topics 1 --rate "$rate" --duration 10s
  done
  for trial in 1 2 3; do
    each_gateway gateway_run "throughput-10k-500-$trial" --clients 10000 --topics 1 --rate 500 --duration 10s
  done
  for rate in 25 50 100; do
    fresh_nchan
    nchan_run "throughput-10k-$rate" --clients 10000 --topics 1 --rate "$rate" --duration 10s
  done
fi
if [[ $WHAT == latency || $WHAT == all ]]; then
  for rate in 250 500 750 1000; do
    for trial in 1 2 3; do
      each_gateway gateway_run "latency-$rate-$trial" --clients 10000 --topics 100 --rate "$rate" --duration 10s --threads 1
      fresh_nchan
      nchan_run "latency-$rate-$trial" --clients 10000 --topics 100 --rate "$rate" --duration 10s --threads 1
      fresh_nchan
      SERVER=nchan-16x1 nchan_run "latency-$rate-$trial" --clients 10000 --topics 100 --rate "$rate" --duration 10s --threads 1 "${NCHAN_16X1[@]}"
    done
  done
fi
