"""Opens N SSE streams to URL, touches READY_FILE once all are open, holds them."""
import asyncio, sys
from urllib.parse import urlparse

async def one(host, port, path):
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"stream refused: {head[:80]!r}")
    return r, w

async def main(url, n, ready):
    u = urlparse(url)
    streams = []
    for i in range(0, n, 100):
        streams += await asyncio.gather(*(one(u.hostname, u.port, u.path) for _ in range(min(100, n - i))))
    open(ready, "w").close()
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
