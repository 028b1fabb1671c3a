// The sharing modes, driven in one Node process: the worker side through MessageChannel
// ports (as a SharedWorker's onconnect gives them), the leader election through Node's
// BroadcastChannel (no Web Locks in Node 20: the heartbeat election runs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, serveWorker } from "../sse-gateway.js";
import { fakeGateway, waitFor, tick } from "./fake-gateway.js";

const BASE = "http://gw.test";

function installFakeSharedWorker(scope) {
  const ports = [];
  globalThis.SharedWorker = class {
    constructor(url, opts) {
      this.url = url;
      this.opts = opts;
      const { port1, port2 } = new MessageChannel();
      this.port = port1;
      ports.push(port1, port2);
      scope.onconnect({ ports: [port2] });
    }
  };
  return () => {
    delete globalThis.SharedWorker;
    for (const p of ports) p.close();
  };
}

test("worker mode: one stream for two tabs, events only to matching ports, tokens from a tab", async (t) => {
  const gw = fakeGateway();
  const scope = { location: { origin: BASE } };
  const hub = serveWorker(scope, { fetch: gw.fetch });
  const uninstall = installFakeSharedWorker(scope);
  const tabA = connect({ base: BASE, getToken: async () => "jwt-A" });
  const tabB = connect({ base: BASE });
  t.after(async () => {
    tabA.close();
    tabB.close();
    await waitFor(() => hub.ports.size === 0, "bye reaches the worker");
    await waitFor(() => hub.conn.state === "idle", "worker idle");
    uninstall();
  });
  assert.equal(tabA.mode, "worker");
  const gotA = [];
  const gotB = [];
  tabA.subscribe("orders.*", (e) => gotA.push(e));
  const s = await waitFor(() => gw.streams[0], "stream");
  assert.equal(s.ticket, "T1");
  const ticketReq = gw.requests.find((r) => r.url.pathname === "/tickets");
  assert.equal(ticketReq.headers.get("authorization"), "Bearer jwt-A");
  await waitFor(() => tabA.state === "open" && tabB.state === "open", "both tabs see open");
  tabB.subscribe("users.1", (e) => gotB.push(e));
  await waitFor(() => s.topics.includes("users.1"), "topic added by POST");
  assert.equal(gw.opens().length, 1, "still one stream");
  s.event("orders.9", "e-1", "o");
  s.event("users.1", "e-2", "u");
  await waitFor(() => gotA.length === 1 && gotB.length === 1, "delivery");
  assert.equal(gotA[0].data, "o");
  assert.equal(gotB[0].data, "u");
  await waitFor(() => tabA.lastId === "e-2" && tabB.lastId === "e-2", "last id reaches every tab");
  // a tab leaving removes its topics
  tabB.close();
  await waitFor(() => !s.topics.includes("users.1"), "topic removed");
  assert.equal(hub.ports.size, 1);
});

test("worker mode: dead ports are dropped after two unanswered pings", async (t) => {
  const gw = fakeGateway();
  const scope = { location: { origin: BASE } };
  const hub = serveWorker(scope, { fetch: gw.fetch });
  const { port1, port2 } = new MessageChannel();
  scope.onconnect({ ports: [port2] });
  port1.postMessage({ t: "hello", base: BASE, lastId: "e-3", auth: false });
  port1.postMessage({ t: "sub", id: "x.1", topic: "a" });
  const s = await waitFor(() => gw.streams[0], "stream");
  assert.equal(s.lastEventId, "e-3", "the first tab's stored id resumes");
  t.after(() => port1.close());
  // the tab never answers pings (it is frozen or gone)
  const rec = [...hub.ports][0];
  hub._pingAll();
  hub._pingAll();
  assert.equal(hub.ports.size, 1);
  hub._pingAll();
  assert.equal(hub.ports.size, 0);
  assert.equal(rec.missed, 2);
  await waitFor(() => s.aborted, "no topic left: stream closed");
});

test("broadcast mode: a leader holds the stream, followers get its events, a new leader resumes", async (t) => {
  const gw = fakeGateway();
  const tabA = connect({ base: BASE, shared: "broadcast", fetch: gw.fetch });
  await waitFor(() => tabA.isLeader, "A leads", 2000);
  const tabB = connect({ base: BASE, shared: "broadcast", fetch: gw.fetch });
  t.after(() => {
    tabA.close();
    tabB.close();
  });
  assert.equal(tabB.mode, "broadcast");
  const gotA = [];
  const gotB = [];
  tabA.subscribe("a", (e) => gotA.push(e));
  tabB.subscribe("b.*", (e) => gotB.push(e));
  await waitFor(() => gw.live().some((s) => s.topics.includes("a") && s.topics.includes("b.*")), "both topics");
  const s = gw.live()[0];
  await waitFor(() => tabB.state === "open", "B sees open");
  s.event("b.1", "e-1", "for B");
  s.event("a", "e-2", "for A");
  await waitFor(() => gotA.length === 1 && gotB.length === 1, "delivery");
  assert.equal(gotB[0].data, "for B");
  assert.equal(gotA[0].data, "for A");
  await waitFor(() => tabB.lastId === "e-2", "B tracks the last id");
  assert.equal(tabB.isLeader, false);
  // the leader leaves: B takes over after the heartbeat timeout and resumes from e-2
  tabA.close();
  await waitFor(() => tabB.isLeader, "B leads", 6000);
  const s2 = await waitFor(() => gw.live()[0], "B's stream", 3000);
  assert.equal(s2.lastEventId, "e-2");
  assert.deepEqual(s2.topics, ["b.*"]);
  // a replayed duplicate is dropped
  s2.event("b.1", "e-1", "for B");
  s2.event("b.2", "e-3", "new");
  await waitFor(() => gotB.length === 2, "new event");
  await tick(30);
  assert.deepEqual(gotB.map((e) => e.id), ["e-1", "e-3"]);
});
