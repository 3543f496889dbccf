// Unit tests of the clock-sync estimator (sdk/clock.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClockSync, CLOCK_SAMPLES } from '../../sdk/clock.js';

test('one symmetric sample gives the exact offset and RTT', () => {
  const c = new ClockSync();
  // Server is 500 ms ahead; 20 ms each way; 2 ms in the server.
  const s = c.addSample(1000, 1520, 1522, 1042);
  assert.deepEqual(s, { offsetMs: 500, rttMs: 40 });
  assert.equal(c.serverNow(2000), 2500);
  assert.equal(c.msUntil(3000, 2000), 500);
});

test('the lowest-RTT sample wins over later, noisier ones', () => {
  const c = new ClockSync();
  c.addSample(0, 510, 510, 20); // rtt 20, offset 500
  c.addSample(100, 700, 700, 400); // rtt 300, asymmetric: offset 450
  c.addSample(500, 1100, 1100, 700); // rtt 200, offset 500
  assert.deepEqual(c.estimate(), { offsetMs: 500, rttMs: 20 });
});

test('only the last 8 samples are kept', () => {
  const c = new ClockSync();
  c.addSample(0, 100, 100, 2); // rtt 2: best, but will fall out of the window
  for (let i = 1; i <= CLOCK_SAMPLES; i++) c.addSample(i * 1000, i * 1000 + 60, i * 1000 + 60, i * 1000 + 100);
  assert.equal(c.size, CLOCK_SAMPLES);
  assert.equal(c.estimate()?.rttMs, 100);
  assert.equal(c.estimate()?.offsetMs, 10);
});

test('a rough estimate from `connected` is used only until a real sample arrives', () => {
  const c = new ClockSync();
  assert.equal(c.estimate(), null);
  assert.equal(c.serverNow(1234), 1234, 'no estimate: local time');
  c.addRough(5000, 1000);
  assert.equal(c.estimate()?.offsetMs, 4000);
  c.addSample(2000, 5990, 5990, 2020);
  assert.deepEqual(c.estimate(), { offsetMs: 3980, rttMs: 20 });
  c.addRough(99999, 0); // ignored once samples exist
  assert.equal(c.estimate()?.offsetMs, 3980);
});

test('samples with a negative RTT or non-finite values are ignored', () => {
  const c = new ClockSync();
  assert.equal(c.addSample(1000, 1000, 1200, 1050), null); // server time longer than the round trip
  assert.equal(c.addSample(NaN, 1, 2, 3), null);
  assert.equal(c.estimate(), null);
});

test('two clients with different local clocks count down to the same instant', () => {
  const startsAt = 1_000_000;
  const ny = new ClockSync();
  const macau = new ClockSync();
  // The real server time is T. New York's clock is 3 s behind, Macau's 7.2 s ahead.
  const T = 990_000;
  ny.addSample(T - 3000 - 40, T - 10, T - 10, T - 3000 + 20); // 30 ms out, 30 ms back
  macau.addSample(T + 7200 - 100, T - 50, T - 50, T + 7200); // 50 ms out, 50 ms back
  assert.equal(Math.round(ny.msUntil(startsAt, T - 3000)), 10_000);
  assert.equal(Math.round(macau.msUntil(startsAt, T + 7200)), 10_000);
});
