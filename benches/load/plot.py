"""Draws the sweep (benches/load/sweep.sh results) as PNGs with gnuplot.

python3 benches/load/plot.py <results.jsonl> <output dir>
"""
import json, os, subprocess, sys, tempfile

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]
os.makedirs(out, exist_ok=True)

def series(prefix, key_fn):
    # The latest run of each point (results accumulate across sessions).
    latest = {}
    for r in rows:
        label = r.get("label", "")
        if label.startswith(prefix) and not label.endswith("-idle"):
            latest[label] = r
    return sorted(((key_fn(label), r) for label, r in latest.items()), key=lambda p: p[0])

def data_file(points):
    f = tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False)
    for x, cols in points:
        f.write(" ".join(str(v) for v in (x, *cols)) + "\n")
    f.close()
    return f.name

def plot(png, title, xlabel, ylabel, dat, curves, logx=False, logy=False, xrange=None):
    script = f"""
set terminal pngcairo size 900,540 font ",11"
set output "{png}"
set title "{title}"
set xlabel "{xlabel}"
set ylabel "{ylabel}"
set grid
set key top left
{"set logscale x" if logx else ""}
{"set logscale y" if logy else ""}
{f"set xrange [{xrange[0]}:{xrange[1]}]" if xrange else ""}
plot {", ".join(f'"{dat}" using 1:{c} with linespoints lw 2 pt 7 title "{t}"' for c, t in curves)}
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)

def streaming_rss(r):
    """Bytes per connection at the end of a streaming run: rings, batches and sockets
    that filled up included."""
    if r.get("server_rss_end_bytes") and r.get("server_rss_before_bytes") and r.get("clients_ok"):
        return (r["server_rss_end_bytes"] - r["server_rss_before_bytes"]) / r["clients_ok"]
    return 0

# Clients sweep: CPU per event and bytes per idle connection.
clients = series("clients-", lambda l: int(l.split("-")[1]))
idle = {int(r["label"].split("-")[1]): r for r in rows if r.get("label", "").endswith("-idle")}
pts = [(c, (r["server_cpu_us_per_event"] or 0, r["gen_cpu_us_per_event"] or 0,
            (idle.get(c) or {}).get("server_rss_per_conn_bytes") or 0,
            streaming_rss(r))) for c, r in clients]
dat = data_file(pts)
plot(f"{out}/sweep-clients-cpu.png", "One topic, 200 msg/s: CPU per delivered event",
     "clients", "µs per delivered event", dat, [(2, "sse-gateway"), (3, "load generator")], logx=True,
     xrange=(800, 25000))
plot(f"{out}/sweep-clients-memory.png", "Gateway RSS per connection",
     "clients", "bytes per connection", dat, [(4, "idle"), (5, "streaming 200 msg/s")], logx=True,
     xrange=(800, 25000))

# Topics sweep.
topics = series("topics-", lambda l: int(l.split("-")[1]))
pts = [(t, (r["server_cpu_us_per_event"] or 0, r["gen_cpu_us_per_event"] or 0,
            r["latency_p99_ms"] or 0, streaming_rss(r))) for t, r in topics]
dat = data_file(pts)
plot(f"{out}/sweep-topics-cpu.png", "10,000 clients, 1,000 msg/s over N topics: CPU per delivered event",
     "topics", "µs per delivered event", dat, [(2, "sse-gateway"), (3, "load generator")], logx=True, logy=True)
plot(f"{out}/sweep-topics-latency.png", "10,000 clients, 1,000 msg/s over N topics: p99 latency",
     "topics", "p99 publish → client (ms)", dat, [(4, "sse-gateway")], logx=True)
plot(f"{out}/sweep-topics-memory.png", "10,000 clients, 1,000 msg/s over N topics: RSS per connection",
     "topics", "bytes per connection", dat, [(5, "sse-gateway")], logx=True)
print("\n".join(sorted(os.listdir(out))))
