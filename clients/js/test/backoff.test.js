import { test } from "node:test";
import assert from "node:assert/strict";
import { backoff } from "../sse-gateway.js";

const top = () => 1 - Number.EPSILON; // random() is in [0, 1)
const bottom = () => 0;

test("doubles per attempt from the default retry of 1 s", () => {
  assert.equal(Math.round(backoff(0, { random: top })), 1000);
  assert.equal(Math.round(backoff(1, { random: top })), 2000);
  assert.equal(Math.round(backoff(2, { random: top })), 4000);
  assert.equal(Math.round(backoff(4, { random: top })), 16000);
});

test("is capped at max (30 s by default)", () => {
  assert.equal(Math.round(backoff(5, { random: top })), 30000);
  assert.equal(Math.round(backoff(50, { random: top })), 30000);
  assert.equal(Math.round(backoff(3, { random: top, max: 5000 })), 5000);
});

test("jitter stays within [50 %, 100 %] of the value", () => {
  assert.equal(backoff(0, { random: bottom }), 500);
  assert.equal(backoff(2, { random: bottom }), 2000);
  assert.equal(backoff(0, { random: () => 0.5 }), 750);
  let i = 0;
  const seq = [0, 0.1, 0.5, 0.9, 0.999999];
  for (let attempt = 0; attempt < 8; attempt++) {
    for (let k = 0; k < seq.length; k++) {
      const d = backoff(attempt, { random: () => seq[i++ % seq.length] });
      const full = Math.min(30000, 1000 * 2 ** attempt);
      assert.ok(d >= full / 2 && d <= full, `${attempt}: ${d}`);
    }
  }
  for (let n = 0; n < 1000; n++) {
    const d = backoff(3);
    assert.ok(d >= 4000 && d <= 8000);
  }
});

test("honours the server's retry", () => {
  assert.equal(Math.round(backoff(0, { retry: 3000, random: top })), 3000);
  assert.equal(Math.round(backoff(1, { retry: 3000, random: top })), 6000);
  assert.equal(backoff(0, { retry: 3000, random: bottom }), 1500);
  assert.equal(Math.round(backoff(3, { retry: 5000, random: top })), 30000);
  // base is the start when the server sent no retry
  assert.equal(Math.round(backoff(1, { base: 200, random: top })), 400);
});

test("retry: 0 reconnects at once after a clean end but not in a failure loop", () => {
  assert.equal(backoff(0, { retry: 0, random: top }), 0);
  assert.ok(backoff(1, { retry: 0, random: bottom }) >= 100);
});
