"""Markdown tables from benches/load results (scenarios.sh).

python3 benches/load/report.py benches/load/results/results.jsonl
"""
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1 else f"{v:,.{digits}f}"
    return f"{v:,}"

def rounded(v, digits=3):
    """None stays None (shown as —): the loadgen leaves out figures it could not measure,
    e.g. the CPU of a server whose worker crashed and was replaced during the run."""
    return None if v is None else round(v, digits)

def table(title, prefix, cols):
    picked = [r for r in rows if r.get("label", "").startswith(prefix)]
    if not picked:
        return
    print(f"\n### {title}\n")
    print("| " + " | ".join(["server", "run"] + [c[0] for c in cols]) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for r in picked:
        if r.get("timed_out"):
            print(f"| {r['server']} | {r['label']} | " + " | ".join(["timed out"] + [""] * (len(cols) - 1)) + " |")
            continue
        print(f"| {r['server']} | {r['label']} | " + " | ".join(fmt(f(r)) for _, f in cols) + " |")

table("Idle connections", "idle-", [
    ("connected", lambda r: r["clients_ok"]),
    ("setup /s", lambda r: round(r["setup_rate_per_s"] or 0)),
    ("RSS per conn (B)", lambda r: rounded(r.get("server_rss_per_conn_bytes"), None)),
])
stream_cols = [
    ("msg/s", lambda r: round(r["rate"])),
    ("clients failed", lambda r: r["clients_failed"]),
    ("delivered /s", lambda r: round(r["delivered_per_s"] or 0)),
    ("loss", lambda r: r["loss"]),
    ("cut", lambda r: r["closed_early_total"]),
    ("p50 ms", lambda r: r["latency_p50_ms"]),
    ("p99 ms", lambda r: r["latency_p99_ms"]),
    ("server µs/event", lambda r: rounded(r.get("server_cpu_us_per_event"))),
    ("generator µs/event", lambda r: rounded(r.get("gen_cpu_us_per_event"))),
]
table("Throughput: 1,000 clients, 1 topic", "throughput-1k", stream_cols)
table("Throughput: 10,000 clients, 1 topic", "throughput-10k", stream_cols)
table("Latency: 10,000 clients, 100 topics, 1,000 msg/s", "latency-10k", stream_cols)
table("Latency against rate: 10,000 clients, 100 topics", "latency-rate", stream_cols)
table("Latency ladder: 10,000 clients, 100 topics (every run)", "latency-", stream_cols)

# The ladder (labels latency-<rate>-<trial>): medians per rate and server.
ladder = {}
for r in rows:
    parts = r.get("label", "").split("-")
    if len(parts) == 3 and parts[0] == "latency" and parts[1].isdigit() and not r.get("timed_out"):
        ladder.setdefault((int(parts[1]), r["server"]), []).append(r)
if ladder:
    print("\n### Latency ladder, medians per rate and server\n")
    print("| msg/s | server | p50 | p99 (median) | p99 range | server µs/event | runs |")
    print("|---|---|---|---|---|---|---|")
    for (rate, server), rs in sorted(ladder.items()):
        p99 = sorted(r["latency_p99_ms"] for r in rs)
        p50 = statistics.median(r["latency_p50_ms"] for r in rs)
        cpu = statistics.median(r["server_cpu_us_per_event"] for r in rs if r.get("server_cpu_us_per_event"))
        print(f"| {rate:,} | {server} | {p50:.1f} ms | {statistics.median(p99):.1f} ms | {p99[0]:.1f}–{p99[-1]:.1f} | {cpu:.1f} | {len(rs)} |")

lat = {}
for r in rows:
    if r.get("label", "").startswith("latency-10k") and not r.get("timed_out"):
        lat.setdefault(r["server"], []).append(r["latency_p99_ms"])
if lat:
    print("\nMedian p99 over the latency trials: " + ", ".join(
        f"{s} {statistics.median(v):.2f} ms ({len(v)} runs)" for s, v in sorted(lat.items())))
