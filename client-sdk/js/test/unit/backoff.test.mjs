// Unit tests of the reconnect backoff (sdk/backoff.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay } from '../../sdk/backoff.js';

test('doubles per attempt from the minimum, within [d/2, d]', () => {
  for (let attempt = 1; attempt < 20; attempt++) {
    const ceiling = Math.min(100 * 2 ** Math.min(attempt - 1, 16), 2000);
    for (const r of [0, 0.25, 0.999999]) {
      const d = backoffDelay(attempt, 100, 2000, () => r);
      assert.ok(d >= ceiling / 2 && d <= ceiling, `attempt ${attempt}, r ${r}: ${d}`);
    }
  }
  assert.equal(backoffDelay(1, 100, 10_000, () => 0), 50);
  assert.equal(backoffDelay(1, 100, 10_000, () => 1), 100);
  assert.equal(backoffDelay(4, 100, 10_000, () => 1), 800);
});

test('caps at the maximum, even for huge attempt counts', () => {
  assert.equal(backoffDelay(1000, 100, 10_000, () => 1), 10_000);
  assert.equal(backoffDelay(1000, 100, 10_000, () => 0), 5_000);
  assert.equal(backoffDelay(0, 100, 10_000, () => 1), 100, 'attempt 0 is the first');
});

test('jitter spreads clients that dropped together', () => {
  const delays = new Set();
  for (let i = 0; i < 50; i++) delays.add(Math.round(backoffDelay(3, 100, 10_000)));
  assert.ok(delays.size > 10, `only ${delays.size} distinct delays`);
});
