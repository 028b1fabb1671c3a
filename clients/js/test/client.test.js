import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../sse-gateway.js";
import { fakeGateway, waitFor, tick } from "./fake-gateway.js";

const BASE = "http://gw.test";

function setup(gwOpts, clientOpts = {}) {
  const gw = fakeGateway(gwOpts);
  const client = connect({ base: BASE, shared: "none", fetch: gw.fetch, ...clientOpts });
  return { gw, client };
}

function collector() {
  const got = [];
  const resets = [];
  const closes = [];
  const errors = [];
  const handlers = {
    onReset: (r) => resets.push(r),
    onClose: (r) => closes.push(r),
    onError: (e) => errors.push(e),
  };
  return { got, resets, closes, errors, handlers, cb: (e) => got.push(e) };
}

test("opens one stream with every topic and routes events by topic", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  assert.equal(client.mode, "none");
  const a = collector();
  const b = collector();
  client.subscribe("orders.*", a.cb, a.handlers);
  client.subscribe("users.7", b.cb, b.handlers);
  const s = await waitFor(() => gw.streams[0], "stream");
  assert.deepEqual(s.topics, ["orders.*", "users.7"]);
  assert.equal(s.req.headers.get("accept"), "text/event-stream");
  assert.equal(s.req.headers.get("last-event-id"), null);
  await waitFor(() => client.state === "open", "open");
  s.event("orders.42", "e-1", "o42");
  s.event("users.7", "e-2", "u7", "upd");
  s.event(null, "e-3", "to all");
  s.event("users.8", "e-4", "nobody");
  await waitFor(() => b.got.length === 2, "events");
  assert.deepEqual(a.got, [
    { id: "e-1", event: "message", data: "o42", topic: "orders.42" },
    { id: "e-3", event: "message", data: "to all", topic: null },
  ]);
  assert.deepEqual(b.got, [
    { id: "e-2", event: "upd", data: "u7", topic: "users.7" },
    { id: "e-3", event: "message", data: "to all", topic: null },
  ]);
  await waitFor(() => client.lastId === "e-4", "last id");
  assert.equal(gw.opens().length, 1);
});

test("topic changes in one tick are one POST; the last unsubscribe closes the stream", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  const states = [];
  client.onStateChange = (s) => states.push(s);
  const first = client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  await waitFor(() => client.state === "open", "open");
  await tick();
  const b = client.subscribe("b", () => {});
  const c = client.subscribe("c.*", () => {});
  await waitFor(() => gw.posts().length === 1, "post");
  await tick();
  assert.equal(gw.posts().length, 1);
  const post = gw.posts()[0];
  assert.equal(post.url.pathname, `/streams/${s.id}`);
  assert.equal(post.headers.get("content-type"), "application/json");
  assert.deepEqual(post.body, { add: ["b", "c.*"], remove: [] });
  b.unsubscribe();
  await waitFor(() => gw.posts().length === 2, "remove post");
  assert.deepEqual(gw.posts()[1].body, { add: [], remove: ["b"] });
  first.unsubscribe();
  c.unsubscribe();
  await waitFor(() => client.state === "idle", "idle");
  assert.ok(s.aborted, "the stream is aborted when no topic is wanted");
  assert.deepEqual(states, ["connecting", "open", "idle"]);
  client.subscribe("d", () => {});
  await waitFor(() => gw.streams.length === 2, "reopen");
  assert.deepEqual(gw.streams[1].topics, ["d"]);
});

test("events of an added topic reach it as soon as they come on the stream, before the POST's 200", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  const wild = collector();
  const exact = collector();
  client.subscribe("orders.*", wild.cb);
  const s = await waitFor(() => gw.streams[0], "stream");
  await waitFor(() => client.state === "open", "open");
  let release;
  gw.postHandler = () => new Promise((r) => (release = r));
  client.subscribe("orders.42", exact.cb);
  await waitFor(() => release, "post in flight");
  s.event("orders.42", "e-1", "before");
  await waitFor(() => wild.got.length === 1 && exact.got.length === 1, "both got it");
  assert.equal(exact.got[0].data, "before");
  gw.postHandler = null;
  release(undefined);
  // the handler answered nothing: the default 200 path runs
  await waitFor(() => gw.streams[0].topics.includes("orders.42"), "added");
  await tick();
  s.event("orders.42", "e-2", "after");
  await waitFor(() => exact.got.length === 2, "exact got it");
  assert.equal(exact.got[1].data, "after");
});

test("gateway.reset goes to every subscription and moves the last id", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  const a = collector();
  const b = collector();
  client.subscribe("a", a.cb, a.handlers);
  client.subscribe("b", b.cb, b.handlers);
  const s = await waitFor(() => gw.streams[0], "stream");
  s.push('id: r-9\nevent: gateway.reset\ndata: {"reason":"history_expired"}\n\n');
  await waitFor(() => a.resets.length && b.resets.length, "resets");
  assert.deepEqual(a.resets, ["history_expired"]);
  assert.deepEqual(b.resets, ["history_expired"]);
  assert.equal(a.got.length, 0);
  assert.equal(client.lastId, "r-9");
});

test("a clean end reconnects with Last-Event-ID after the server's retry", async (t) => {
  const { gw, client } = setup({ retry: 10 }, { getToken: async () => "jwt-1" });
  t.after(() => client.close());
  client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  assert.equal(s.ticket, "T1");
  s.event("a", "e-5", "x");
  await waitFor(() => client.lastId === "e-5", "id");
  s.end();
  const s2 = await waitFor(() => gw.streams[1], "reconnect");
  assert.equal(s2.lastEventId, "e-5");
  assert.equal(s2.ticket, "T2", "a fresh ticket for every connect");
  const ticketReqs = gw.requests.filter((r) => r.url.pathname === "/tickets");
  assert.equal(ticketReqs.length, 2);
  assert.equal(ticketReqs[0].headers.get("authorization"), "Bearer jwt-1");
  for (const r of gw.opens()) {
    assert.ok(!r.url.search.includes("jwt"), "the JWT never goes in a URL");
    assert.equal(r.headers.get("authorization"), null);
  }
});

test("token_expired: reconnect at once with a fresh ticket, resuming", async (t) => {
  const { gw, client } = setup({ retry: 60000 }, { getToken: async () => "jwt" });
  t.after(() => client.close());
  client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  s.event("a", "e-1", "x");
  s.push('event: gateway.close\ndata: {"reason":"token_expired"}\n\nretry: 60000\n\n');
  s.end();
  const s2 = await waitFor(() => gw.streams[1], "reconnect (no 60 s wait)");
  assert.equal(s2.lastEventId, "e-1");
  assert.equal(s2.ticket, "T2");
});

test("revoked: onClose on every subscription, state closed, no reconnect", async (t) => {
  const { gw, client } = setup({ retry: 10 });
  t.after(() => client.close());
  const a = collector();
  const b = collector();
  client.subscribe("a", a.cb, a.handlers);
  client.subscribe("b", b.cb, b.handlers);
  const s = await waitFor(() => gw.streams[0], "stream");
  s.push('event: gateway.close\ndata: {"reason":"revoked"}\n\nretry: 10\n\n');
  s.end();
  await waitFor(() => client.state === "closed", "closed");
  assert.deepEqual(a.closes, ["revoked"]);
  assert.deepEqual(b.closes, ["revoked"]);
  await tick(100);
  assert.equal(gw.streams.length, 1);
  client.reconnect();
  await waitFor(() => gw.streams.length === 2, "explicit reconnect");
});

test("tickets disabled (404): the JWT goes in the Authorization header", async (t) => {
  const { gw, client } = setup({}, { getToken: async () => "jwt-h" });
  t.after(() => client.close());
  gw.ticketStatus = 404;
  client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  assert.equal(s.req.headers.get("authorization"), "Bearer jwt-h");
  assert.equal(s.ticket, null);
  await waitFor(() => client.state === "open", "open");
  client.subscribe("b", () => {});
  await waitFor(() => gw.posts().length === 1, "post");
  assert.equal(gw.posts()[0].headers.get("authorization"), "Bearer jwt-h");
});

test("401 twice: onError, then state error until a topic change", async (t) => {
  const { gw, client } = setup({}, { getToken: async () => "jwt" });
  t.after(() => client.close());
  gw.streamStatus = [401, 401];
  const a = collector();
  client.subscribe("a", a.cb, a.handlers);
  await waitFor(() => client.state === "error", "error");
  assert.equal(gw.opens().length, 2);
  assert.equal(a.errors.length, 2);
  assert.equal(a.errors[0].status, 401);
  await tick(50);
  assert.equal(gw.opens().length, 2);
  client.subscribe("b", () => {});
  await waitFor(() => client.state === "open", "open after a topic change");
});

test("429/503 on open: come back after Retry-After", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  gw.streamStatus = [503];
  client.subscribe("a", () => {});
  await waitFor(() => gw.opens().length === 1, "first try");
  const t0 = Date.now();
  await waitFor(() => client.state === "open", "open", 3000);
  assert.ok(Date.now() - t0 >= 900, "waited Retry-After: 1");
});

test("POST 404: the stream is gone, reconnect with the full topic set", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  client.subscribe("a", () => {});
  await waitFor(() => client.state === "open", "open");
  await tick();
  gw.postHandler = () => new Response('{"error":"not_found"}', { status: 404 });
  client.subscribe("b", () => {});
  const s2 = await waitFor(() => gw.streams[1], "reconnect");
  assert.deepEqual(s2.topics, ["a", "b"]);
});

test("a refused add is isolated: onError for that topic only, dropped from the wanted set", async (t) => {
  const { gw, client } = setup();
  t.after(() => client.close());
  client.subscribe("a", () => {});
  await waitFor(() => client.state === "open", "open");
  await tick();
  gw.postHandler = (s, body) => {
    if (body.add.includes("secret")) return new Response('{"error":"forbidden","message":"no"}', { status: 403 });
    return undefined;
  };
  const ok = collector();
  const bad = collector();
  client.subscribe("ok", ok.cb, ok.handlers);
  client.subscribe("secret", bad.cb, bad.handlers);
  await waitFor(() => bad.errors.length === 1, "error");
  await waitFor(() => gw.streams[0].topics.includes("ok"), "ok added");
  assert.equal(bad.errors[0].status, 403);
  assert.equal(bad.errors[0].code, "forbidden");
  assert.equal(bad.errors[0].topic, "secret");
  assert.equal(ok.errors.length, 0);
  client.subscribe("other", () => {});
  await waitFor(() => gw.streams[0].topics.includes("other"), "other added");
  assert.ok(!gw.posts().at(-1).body.add.includes("secret"), "the refused topic is not retried");
});

test("a gateway without live topic changes: reconnect with the full set", async (t) => {
  const { gw, client } = setup({ streamControl: false });
  t.after(() => client.close());
  client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  s.push(": heartbeat\n");
  await waitFor(() => client.state === "open", "open");
  await tick();
  client.subscribe("b", () => {});
  const s2 = await waitFor(() => gw.streams[1], "reopen");
  assert.deepEqual(s2.topics, ["a", "b"]);
  assert.equal(gw.posts().length, 0);
});

test("invalid topics are refused at subscribe", () => {
  const { client } = setup();
  assert.throws(() => client.subscribe("a..b", () => {}), TypeError);
  assert.throws(() => client.subscribe("a", null), TypeError);
  client.close();
  assert.throws(() => client.subscribe("a", () => {}), /closed/);
});

test("close() aborts the stream and leaves nothing running", async () => {
  const { gw, client } = setup();
  client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  client.close();
  assert.equal(client.state, "closed");
  await waitFor(() => s.aborted, "aborted");
});

test("the last id is stored in sessionStorage and resumes a reloaded page", async (t) => {
  const store = new Map([["sse-gateway:last-id:http://gw.test", "e-77"]]);
  globalThis.sessionStorage = {
    getItem: (k) => (store.has(k) ? store.get(k) : null),
    setItem: (k, v) => store.set(k, String(v)),
    removeItem: (k) => store.delete(k),
  };
  const { gw, client } = setup();
  t.after(() => {
    client.close();
    delete globalThis.sessionStorage;
  });
  assert.equal(client.lastId, "e-77");
  client.subscribe("a", () => {});
  const s = await waitFor(() => gw.streams[0], "stream");
  assert.equal(s.lastEventId, "e-77");
  s.event("a", "e-78", "x");
  await waitFor(() => store.get("sse-gateway:last-id:http://gw.test") === "e-78", "stored");
});

test("a callback that throws does not stop delivery to the others", async (t) => {
  const { gw, client } = setup();
  const errors = [];
  const prev = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e);
  t.after(() => {
    client.close();
    if (prev) globalThis.reportError = prev;
    else delete globalThis.reportError;
  });
  const got = [];
  client.subscribe("a", () => {
    throw new Error("boom");
  });
  client.subscribe("a", (e) => got.push(e));
  const s = await waitFor(() => gw.streams[0], "stream");
  s.event("a", "e-1", "x");
  await waitFor(() => got.length === 1, "delivery");
  assert.equal(errors[0].message, "boom");
  assert.ok(Object.isFrozen(got[0]));
});

test("403 on open: the forbidden topic is refused alone, the others stream", async (t) => {
  const { gw, client } = setup({}, { getToken: async () => "jwt" });
  t.after(() => client.close());
  gw.forbidden = ["secret.1", "secret.2"];
  const ok = collector();
  const bad1 = collector();
  const bad2 = collector();
  client.subscribe("orders.42", ok.cb, ok.handlers);
  client.subscribe("secret.1", bad1.cb, bad1.handlers);
  client.subscribe("secret.2", bad2.cb, bad2.handlers);
  const s = await waitFor(() => gw.live()[0], "a stream");
  await waitFor(() => bad1.errors.length === 1 && bad2.errors.length === 1, "errors");
  assert.deepEqual(s.topics, ["orders.42"]);
  assert.equal(bad1.errors[0].status, 403);
  assert.equal(bad1.errors[0].topic, "secret.1");
  assert.equal(ok.errors.length, 0);
  assert.equal(client.state, "open");
  s.event("orders.42", "e-1", "x");
  await waitFor(() => ok.got.length === 1, "event");
});

test("403 on open for a single topic: that topic only, then idle", async (t) => {
  const { gw, client } = setup({}, { getToken: async () => "jwt" });
  t.after(() => client.close());
  gw.forbidden = ["secret.1"];
  const bad = collector();
  client.subscribe("secret.1", bad.cb, bad.handlers);
  await waitFor(() => bad.errors.length === 1, "error");
  await waitFor(() => client.state === "idle", "idle");
  assert.equal(gw.opens().length, 1);
});
