// Unit tests of stream positions, duplicates and gaps (sdk/stream.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamTracker } from '../../sdk/stream.js';

/** @param {string} room @param {{epoch: string, offset: number}} position @param {boolean} [recovered] */
const reply = (room, position, recovered) => ({
  room, position, recovered, missed: 0,
  state: { title: '', viewers: 0, likes: 0, slow_mode_secs: 0, closed: false },
});

test('events after a fresh join are delivered in order; repeats are duplicates', () => {
  const t = new StreamTracker();
  assert.equal(t.event('r', 'e1', 1), 'not_joined');
  t.joining('r');
  t.joined(reply('r', { epoch: 'e1', offset: 41 }), null, false);
  assert.equal(t.event('r', 'e1', 42), 'deliver');
  assert.equal(t.event('r', 'e1', 43), 'deliver');
  assert.equal(t.event('r', 'e1', 43), 'duplicate');
  assert.equal(t.event('r', 'e1', 40), 'duplicate');
  assert.deepEqual(t.position('r'), { epoch: 'e1', offset: 43 });
  assert.equal(t.duplicates, 2);
  assert.equal(t.gaps, 0);
  assert.equal(t.events, 2);
});

test('a skipped offset is delivered and counted as a gap', () => {
  const t = new StreamTracker();
  t.joining('r');
  t.joined(reply('r', { epoch: 'e1', offset: 5 }), null, false);
  assert.equal(t.event('r', 'e1', 8), 'gap');
  assert.equal(t.gaps, 1);
  assert.equal(t.event('r', 'e1', 9), 'deliver');
});

test('a recovered resume keeps the since position so the missed events are delivered', () => {
  const t = new StreamTracker();
  t.joining('r');
  t.joined(reply('r', { epoch: 'e1', offset: 10 }), null, false);
  // Reconnect: rejoin with since = 10; the room is at 13 and recovered.
  t.joined(reply('r', { epoch: 'e1', offset: 13 }, true), { epoch: 'e1', offset: 10 }, true);
  assert.equal(t.event('r', 'e1', 11), 'deliver');
  assert.equal(t.event('r', 'e1', 12), 'deliver');
  assert.equal(t.event('r', 'e1', 13), 'deliver');
  assert.equal(t.event('r', 'e1', 14), 'deliver');
  assert.equal(t.duplicates + t.gaps + t.unrecovered, 0);
});

test('an unrecovered resume starts from the reply position and is counted', () => {
  const t = new StreamTracker();
  t.joining('r');
  t.joined(reply('r', { epoch: 'e1', offset: 10 }), null, false);
  t.joined(reply('r', { epoch: 'e2', offset: 3 }, false), { epoch: 'e1', offset: 10 }, true);
  assert.equal(t.unrecovered, 1);
  assert.deepEqual(t.position('r'), { epoch: 'e2', offset: 3 });
  assert.equal(t.event('r', 'e2', 4), 'deliver');
  assert.equal(t.gaps, 0);
});

test('a new epoch in an event is delivered, not a gap', () => {
  const t = new StreamTracker();
  t.joining('r');
  t.joined(reply('r', { epoch: 'e1', offset: 10 }), null, false);
  assert.equal(t.event('r', 'e2', 1), 'deliver');
  assert.equal(t.gaps, 0);
  assert.deepEqual(t.position('r'), { epoch: 'e2', offset: 1 });
});

test('a failed first join forgets the room; a refused join of a joined room does not', () => {
  const t = new StreamTracker();
  t.joining('a');
  t.joinFailed('a');
  assert.equal(t.has('a'), false);
  t.joining('b');
  t.joined(reply('b', { epoch: 'e', offset: 0 }), null, false);
  t.joinFailed('b');
  assert.equal(t.has('b'), true);
  t.forget('b');
  assert.deepEqual(t.rooms(), []);
});
