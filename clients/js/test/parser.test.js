import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser } from "../sse-gateway.js";

const events = (items) => items.filter((i) => i.type === "event");

test("LF, CR and CRLF all end lines", () => {
  for (const eol of ["\n", "\r", "\r\n"]) {
    const p = new SseParser();
    const items = p.feed(`id: 1${eol}data: a${eol}${eol}data: b${eol}${eol}`);
    assert.deepEqual(events(items), [
      { type: "event", id: "1", event: "message", data: "a", topic: null },
      { type: "event", id: null, event: "message", data: "b", topic: null },
    ]);
  }
});

test("mixed line ends in one chunk", () => {
  const p = new SseParser();
  const items = p.feed("data: a\rdata: b\r\ndata: c\n\r\n");
  assert.deepEqual(events(items).map((e) => e.data), ["a\nb\nc"]);
});

test("a CRLF split across two chunks is one line end", () => {
  const p = new SseParser();
  assert.deepEqual(p.feed("data: x\r"), []);
  // The LF completes the CRLF; only the next CRLF is the blank line.
  assert.deepEqual(events(p.feed("\n")), []);
  assert.deepEqual(events(p.feed("\r\n")), [{ type: "event", id: null, event: "message", data: "x", topic: null }]);
});

test("a CR at the end of a chunk followed by another line", () => {
  const p = new SseParser();
  p.feed("data: x\r");
  const items = p.feed("data: y\r\r");
  assert.deepEqual(events(items).map((e) => e.data), ["x\ny"]);
});

test("a partial line is kept across chunks, even byte by byte", () => {
  const text = "event: upd\nid: 7-1\ndata: hello\ndata: world\n\n";
  const p = new SseParser();
  const items = [];
  for (const ch of text) items.push(...p.feed(ch));
  assert.deepEqual(events(items), [{ type: "event", id: "7-1", event: "upd", data: "hello\nworld", topic: null }]);
});

test("multi-line data is joined with LF, empty data lines count", () => {
  const p = new SseParser();
  const items = p.feed("data: a\ndata:\ndata: b\n\ndata\n\n");
  assert.deepEqual(events(items).map((e) => e.data), ["a\n\nb", ""]);
});

test("one optional space after the colon is stripped, not more", () => {
  const p = new SseParser();
  const items = p.feed("data:no-space\ndata:  two\n\n");
  assert.equal(events(items)[0].data, "no-space\n two");
});

test("an id containing NUL is ignored", () => {
  const p = new SseParser();
  const items = p.feed("id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n");
  const [a, b] = events(items);
  assert.equal(a.id, "1");
  assert.equal(b.id, null);
  assert.equal(p.lastEventId, "1");
});

test("retry accepts ASCII digits only", () => {
  const p = new SseParser();
  const items = p.feed("retry: 2500\nretry: 12a\nretry: -1\nretry: 1.5\nretry:\nretry: 0\n\n");
  assert.deepEqual(
    items.filter((i) => i.type === "retry"),
    [
      { type: "retry", ms: 2500 },
      { type: "retry", ms: 0 },
    ],
  );
});

test("comments are reported and never dispatch", () => {
  const p = new SseParser();
  const items = p.feed(": connected\n:heartbeat\n:\n\n");
  assert.deepEqual(items, [
    { type: "comment", text: "connected" },
    { type: "comment", text: "heartbeat" },
    { type: "comment", text: "" },
  ]);
});

test("the `: topic` comment is attached to the next event and reset after dispatch", () => {
  const p = new SseParser();
  const items = p.feed(
    ": topic orders.42\nid: 1-1\ndata: a\n\n" + // topical
      "id: 1-2\ndata: b\n\n" + // no comment: no topic
      ": topic users.7\n\n" + // a blank line resets the pending topic
      "data: c\n\n",
  );
  assert.deepEqual(
    events(items).map((e) => [e.id, e.topic]),
    [
      ["1-1", "orders.42"],
      ["1-2", null],
      [null, null],
    ],
  );
});

test("blocks without data lines are not dispatched", () => {
  const p = new SseParser();
  const items = p.feed("event: x\n\nid: 5-1\n\n: topic a\nevent: y\n\ndata: z\n\n");
  assert.deepEqual(events(items), [{ type: "event", id: null, event: "message", data: "z", topic: null }]);
  // The id-only block still updates the last event id.
  assert.deepEqual(items.filter((i) => i.type === "id"), [{ type: "id", id: "5-1" }]);
  assert.equal(p.lastEventId, "5-1");
});

test("unknown fields are ignored, a field without colon has an empty value", () => {
  const p = new SseParser();
  const items = p.feed("foo: bar\nevent\ndata: d\n\n");
  assert.deepEqual(events(items), [{ type: "event", id: null, event: "message", data: "d", topic: null }]);
});

test("a leading BOM is stripped once", () => {
  const p = new SseParser();
  const items = p.feed("\uFEFFdata: a\n\n");
  assert.equal(events(items)[0].data, "a");
});

test("an incomplete block at the end is not dispatched", () => {
  const p = new SseParser();
  assert.deepEqual(events(p.feed("data: a\n")), []);
  assert.deepEqual(events(p.feed("data: b")), []);
});

test("the gateway's first bytes", () => {
  const p = new SseParser();
  const items = p.feed(
    'retry: 3000\n: connected\n\nevent: gateway.stream\ndata: {"stream":"0123456789abcdef0123456789abcdef","topics":["a"]}\n\n',
  );
  assert.deepEqual(items.slice(0, 2), [
    { type: "retry", ms: 3000 },
    { type: "comment", text: "connected" },
  ]);
  assert.equal(items[2].event, "gateway.stream");
  assert.equal(items[2].id, null);
});

test("the `: topic` comment may also follow the id line (the gateway's order)", () => {
  const p = new SseParser();
  const items = p.feed("id: 9-1\n: topic orders.42\nevent: upd\ndata: a\n\nid: 9-2\ndata: b\n\n");
  assert.deepEqual(
    events(items).map((e) => [e.id, e.event, e.topic]),
    [
      ["9-1", "upd", "orders.42"],
      ["9-2", "message", null],
    ],
  );
});
