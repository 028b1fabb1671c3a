import { test } from "node:test";
import assert from "node:assert/strict";
import { matches, isValidTopic } from "../sse-gateway.js";

test("exact topics", () => {
  assert.equal(matches("orders.42", "orders.42"), true);
  assert.equal(matches("orders.42", "orders.43"), false);
  assert.equal(matches("orders", "orders.42"), false);
  assert.equal(matches("orders.42", "orders"), false);
});

test("* matches exactly one token", () => {
  assert.equal(matches("orders.*", "orders.42"), true);
  assert.equal(matches("orders.*", "orders"), false);
  assert.equal(matches("orders.*", "orders.42.items"), false);
  assert.equal(matches("*.42", "orders.42"), true);
  assert.equal(matches("*.*", "a.b"), true);
  assert.equal(matches("a.*.c", "a.b.c"), true);
  assert.equal(matches("a.*.c", "a.b.d"), false);
});

test("> matches one or more trailing tokens", () => {
  assert.equal(matches("orders.>", "orders.42"), true);
  assert.equal(matches("orders.>", "orders.42.items.7"), true);
  assert.equal(matches("orders.>", "orders"), false);
  assert.equal(matches("orders.>", "users.1"), false);
  assert.equal(matches(">", "a"), true);
  assert.equal(matches(">", "a.b.c"), true);
  assert.equal(matches("*.>", "a"), false);
  assert.equal(matches("*.>", "a.b"), true);
});

test("> is a wildcard only as the last token", () => {
  assert.equal(matches("a.>.c", "a.b.c"), false);
});

test("topic syntax", () => {
  for (const t of ["a", "orders.42", "a_b-C.9", "orders.*", "orders.>", "*.x.>", ">"]) assert.equal(isValidTopic(t), true, t);
  for (const t of ["", "a..b", ".a", "a.", "a b", "a.>.b", "a*", "é", "x".repeat(257), null]) assert.equal(isValidTopic(t), false, String(t));
});
