import { test } from "node:test";
import assert from "node:assert/strict";
import { Router } from "../sse-gateway.js";

test("topics() is the union of patterns, reference-counted", () => {
  const r = new Router();
  r.add("s1", "orders.42", "tabA");
  r.add("s2", "orders.42", "tabB");
  r.add("s3", "users.*", "tabA");
  assert.deepEqual([...r.topics()].sort(), ["orders.42", "users.*"]);
  r.remove("s1");
  assert.deepEqual([...r.topics()].sort(), ["orders.42", "users.*"]);
  r.remove("s2");
  assert.deepEqual([...r.topics()], ["users.*"]);
  assert.equal(r.remove("s2"), null);
  assert.deepEqual(r.remove("s3"), { pattern: "users.*", owner: "tabA" });
  assert.equal(r.topics().size, 0);
  assert.equal(r.size, 0);
});

test("re-adding a subscription id replaces it", () => {
  const r = new Router();
  r.add("s1", "a", "o");
  r.add("s1", "b", "o");
  assert.deepEqual([...r.topics()], ["b"]);
  assert.equal(r.size, 1);
});

test("a topical event goes only to matching owners, grouped per owner", () => {
  const r = new Router();
  r.add("a1", "orders.42", "tabA");
  r.add("a2", "orders.*", "tabA");
  r.add("b1", "orders.>", "tabB");
  r.add("c1", "users.1", "tabC");
  r.add("c2", "orders.43", "tabC");
  assert.deepEqual(r.route({ topic: "orders.42" }), [
    { owner: "tabA", subIds: ["a1", "a2"] },
    { owner: "tabB", subIds: ["b1"] },
  ]);
  assert.deepEqual(r.route({ topic: "users.1" }), [{ owner: "tabC", subIds: ["c1"] }]);
  assert.deepEqual(r.route({ topic: "nothing" }), []);
});

test("a topic-less event goes to every subscription", () => {
  const r = new Router();
  r.add("a1", "orders.42", "tabA");
  r.add("b1", "users.*", "tabB");
  r.add("b2", "x", "tabB");
  assert.deepEqual(r.route({ topic: null }), [
    { owner: "tabA", subIds: ["a1"] },
    { owner: "tabB", subIds: ["b1", "b2"] },
  ]);
});

test("route() routes a topical event by its topic alone; the active set limits topic-less ones", () => {
  const r = new Router();
  r.add("a1", "orders.*", "tabA");
  r.add("b1", "orders.42", "tabB");
  // It came on the stream, so its topic is there, confirmed or not yet.
  assert.deepEqual(r.route({ topic: "orders.42" }, new Set(["orders.*"])), [
    { owner: "tabA", subIds: ["a1"] },
    { owner: "tabB", subIds: ["b1"] },
  ]);
  assert.deepEqual(r.route({ topic: null }, new Set(["orders.*"])), [{ owner: "tabA", subIds: ["a1"] }]);
});

test("removeOwner() drops every subscription of an owner", () => {
  const r = new Router();
  const portA = {};
  const portB = {};
  r.add("a1", "x", portA);
  r.add("a2", "y", portA);
  r.add("b1", "y", portB);
  assert.deepEqual(r.removeOwner(portA), ["a1", "a2"]);
  assert.deepEqual([...r.topics()], ["y"]);
  assert.deepEqual(r.route({ topic: "y" }), [{ owner: portB, subIds: ["b1"] }]);
});

test("byPattern() selects by exact pattern, or all with null", () => {
  const r = new Router();
  r.add("a1", "x.*", "A");
  r.add("b1", "x.1", "B");
  assert.deepEqual(r.byPattern("x.*"), [{ owner: "A", subIds: ["a1"] }]);
  assert.equal(r.byPattern(null).length, 2);
});
