// A scripted stand-in for the gateway, used as `fetch` by the client tests.
// (Loaded by `node --test` as a file without tests, too.)

const enc = new TextEncoder();

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}

function abortError() {
  const e = new Error("aborted");
  e.name = "AbortError";
  return e;
}

export function fakeGateway({ streamControl = true, retry = 20 } = {}) {
  const gw = {
    requests: [],
    streams: [],
    ticketStatus: 201,
    ticketCount: 0,
    streamStatus: [], // statuses to answer the next stream requests with (then 200)
    postHandler: null, // async (stream, body, req) => Response | undefined
    streamControl,
    retry,
  };

  gw.fetch = async (url, init = {}) => {
    const u = new URL(url);
    const req = {
      url: u,
      method: init.method || "GET",
      headers: new Headers(init.headers),
      body: init.body ? JSON.parse(init.body) : undefined,
    };
    gw.requests.push(req);
    if (init.signal && init.signal.aborted) throw abortError();
    if (u.pathname === "/tickets") return tickets(req);
    if (u.pathname === "/events") return open(req, init.signal);
    if (u.pathname.startsWith("/streams/")) return change(req, u.pathname.slice(9));
    return json(404, { error: "not_found", message: "no route" });
  };

  function tickets(req) {
    if (gw.ticketStatus !== 201) return json(gw.ticketStatus, { error: "x", message: "ticket refused" });
    if (!req.headers.get("authorization")) return json(401, { error: "unauthorized", message: "no token" });
    return json(201, { ticket: `T${++gw.ticketCount}`, expires_in: 30 });
  }

  function open(req, signal) {
    let status = gw.streamStatus.length ? gw.streamStatus.shift() : 200;
    if (gw.forbidden && req.url.searchParams.getAll("topic").some((t) => gw.forbidden.includes(t))) status = 403;
    if (status !== 200) return json(status, { error: "refused", message: "refused" }, status === 503 ? { "Retry-After": "1" } : {});
    const s = {
      req,
      topics: req.url.searchParams.getAll("topic"),
      id: (gw.streams.length + 1).toString(16).padStart(32, "0"),
      closed: false,
      lastEventId: req.headers.get("last-event-id"),
      ticket: req.url.searchParams.get("ticket"),
    };
    const body = new ReadableStream({
      start(controller) {
        s.controller = controller;
      },
    });
    s.push = (text) => {
      if (!s.closed) s.controller.enqueue(enc.encode(text));
    };
    s.end = () => {
      if (s.closed) return;
      s.closed = true;
      s.controller.close();
    };
    s.event = (topic, id, data, event) =>
      s.push(`${topic ? `: topic ${topic}\n` : ""}${id ? `id: ${id}\n` : ""}${event ? `event: ${event}\n` : ""}data: ${data}\n\n`);
    if (signal)
      signal.addEventListener("abort", () => {
        if (s.closed) return;
        s.closed = true;
        s.aborted = true;
        try {
          s.controller.error(abortError());
        } catch {
          // already closed
        }
      });
    gw.streams.push(s);
    s.push(`retry: ${gw.retry}\n: connected\n\n`);
    if (gw.streamControl)
      s.push(`event: gateway.stream\ndata: ${JSON.stringify({ stream: s.id, topics: s.topics })}\n\n`);
    return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
  }

  async function change(req, id) {
    const s = gw.streams.find((x) => x.id === id && !x.closed);
    if (!s || !gw.streamControl) return json(404, { error: "not_found", message: "no such stream" });
    if (gw.forbidden && (req.body.add || []).some((t) => gw.forbidden.includes(t)))
      return json(403, { error: "forbidden", message: "topic not allowed" });
    if (gw.postHandler) {
      const res = await gw.postHandler(s, req.body, req);
      if (res) return res;
    }
    const { add = [], remove = [] } = req.body;
    s.topics = s.topics.filter((t) => !remove.includes(t));
    for (const t of add) if (!s.topics.includes(t)) s.topics.push(t);
    return json(200, { topics: s.topics });
  }

  gw.posts = () => gw.requests.filter((r) => r.url.pathname.startsWith("/streams/"));
  gw.opens = () => gw.requests.filter((r) => r.url.pathname === "/events");
  gw.live = () => gw.streams.filter((s) => !s.closed);
  return gw;
}

export async function waitFor(pred, what = "condition", timeout = 3000) {
  const start = Date.now();
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));
