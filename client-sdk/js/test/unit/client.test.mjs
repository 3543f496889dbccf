// Unit tests of the room client's driver logic (sdk/client.js) against a scripted socket:
// resume after reconnect, close-code handling, duplicates, clock sampling, command life cycle.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { FerryClient, FerryError } from '../../sdk/client.js';
import { FakeWebSocket, until, sleep } from './fake-websocket.mjs';

const user = { id: 'u1', name: 'Mei', role: 'viewer' };
const state = { title: 't', viewers: 1, likes: 0, slow_mode_secs: 0, closed: false };
const connected = { push: 'connected', version: 1, node: 'n1', user, server_time: 1000 };
/** @param {number} offset @param {string} text */
const comment = (offset, text, epoch = 'e1') => ({
  push: 'event', room: 'r', epoch, offset, event: { type: 'comment', user, text },
});

/** @param {Partial<import('../../sdk/client.js').FerryClientOptions>} [extra] */
function newClient(extra = {}) {
  return new FerryClient({
    url: 'ws://ferry.test/ws', token: 'tok en', WebSocket: /** @type {any} */ (FakeWebSocket),
    minBackoffMs: 5, maxBackoffMs: 10, requestTimeoutMs: 500, ...extra,
  });
}

/** Open the latest socket and send `connected`. */
function accept() {
  const ws = FakeWebSocket.created.at(-1);
  assert.ok(ws);
  ws.open();
  ws.receive(connected);
  return ws;
}

beforeEach(() => FakeWebSocket.reset());

test('connects with the token in the query, joins, delivers events once and in order', async () => {
  const client = newClient();
  /** @type {string[]} */
  const texts = [];
  client.onEvent('comment', (e, meta) => texts.push(`${meta.position.offset}:${e.text}`));
  client.connect();
  assert.equal(FakeWebSocket.created[0].url, 'ws://ferry.test/ws?token=tok%20en');
  const joining = client.join('r'); // queued until the socket opens
  const ws = accept();
  const [join] = ws.commands('join');
  assert.deepEqual(join, { id: join.id, cmd: 'join', room: 'r' });
  ws.receive({ id: join.id, ok: { room: 'r', position: { epoch: 'e1', offset: 2 }, missed: 0, state } });
  const reply = await joining;
  assert.equal(reply.position.offset, 2);
  // A batched frame with a duplicate in it.
  ws.receive(comment(3, 'a'), comment(4, 'b'), comment(4, 'b'), comment(5, 'c'));
  assert.deepEqual(texts, ['3:a', '4:b', '5:c']);
  assert.equal(client.stats.duplicates, 1);
  assert.equal(client.stats.gaps, 0);
  assert.deepEqual(client.position('r'), { epoch: 'e1', offset: 5 });
  client.close();
});

test('after a reconnect close code it rejoins with since and delivers the missed events', async () => {
  const client = newClient();
  /** @type {number[]} */
  const offsets = [];
  /** @type {any[]} */
  const disconnects = [];
  client.on('event', (e) => offsets.push(e.position.offset));
  client.on('disconnected', (d) => disconnects.push(d));
  client.connect();
  let ws = accept();
  const joining = client.join('r');
  const [join] = ws.commands('join');
  ws.receive({ id: join.id, ok: { room: 'r', position: { epoch: 'e1', offset: 0 }, missed: 0, state } });
  await joining;
  ws.receive(comment(1, 'a'), comment(2, 'b'));
  const pending = client.comment('r', 'in flight');
  ws.serverClose(3001, 'slow consumer, reconnect');
  await assert.rejects(pending, (e) => e instanceof FerryError && e.kind === 'disconnected');
  assert.deepEqual(disconnects, [{ code: 3001, reason: 'slow consumer, reconnect', reconnecting: true }]);
  // Commands during the backoff fail fast.
  await assert.rejects(client.like('r'), (e) => e instanceof FerryError && e.kind === 'disconnected');
  await until(() => FakeWebSocket.created.length === 2);
  ws = FakeWebSocket.created[1];
  ws.open();
  const [rejoin] = ws.commands('join');
  assert.deepEqual(rejoin.since, { epoch: 'e1', offset: 2 });
  ws.receive(
    connected,
    { id: rejoin.id, ok: { room: 'r', position: { epoch: 'e1', offset: 4 }, recovered: true, missed: 2, state } },
    comment(3, 'c'), comment(4, 'd'), comment(4, 'd'),
  );
  ws.receive(comment(5, 'e'));
  assert.deepEqual(offsets, [1, 2, 3, 4, 5]);
  assert.deepEqual(client.stats, { connects: 2, events: 5, duplicates: 1, gaps: 0, unrecovered: 0 });
  client.close();
});

test('an unrecovered resume is reported and restarts from the reply position', async () => {
  const client = newClient();
  /** @type {any[]} */
  const joins = [];
  client.on('joined', (j) => joins.push(j.reply));
  client.connect();
  let ws = accept();
  const joining = client.join('r');
  ws.receive({ id: ws.commands('join')[0].id, ok: { room: 'r', position: { epoch: 'e1', offset: 7 }, missed: 0, state } });
  await joining;
  ws.serverClose(1006, '');
  await until(() => FakeWebSocket.created.length === 2);
  ws = accept();
  const [rejoin] = ws.commands('join');
  ws.receive({ id: rejoin.id, ok: { room: 'r', position: { epoch: 'e9', offset: 1 }, recovered: false, missed: 0, state } });
  assert.equal(joins.at(-1).recovered, false);
  assert.equal(client.stats.unrecovered, 1);
  ws.receive(comment(2, 'x', 'e9'));
  assert.deepEqual(client.position('r'), { epoch: 'e9', offset: 2 });
  assert.equal(client.stats.gaps, 0);
  client.close();
});

test('a terminal close code stops the client for good', async () => {
  const client = newClient();
  /** @type {any[]} */
  const closed = [];
  client.on('closed', (c) => closed.push(c));
  client.connect();
  const ws = FakeWebSocket.created[0];
  ws.open();
  ws.serverClose(3500, 'invalid token');
  assert.deepEqual(closed, [{ code: 3500, reason: 'invalid token' }]);
  await sleep(40);
  assert.equal(FakeWebSocket.created.length, 1, 'no reconnect after 3500');
  await assert.rejects(client.comment('r', 'x'), (e) => e instanceof FerryError && e.kind === 'closed');
});

test('gives up after maxReconnectAttempts', async () => {
  const client = newClient({ maxReconnectAttempts: 2 });
  /** @type {any[]} */
  const events = [];
  client.on('disconnected', (d) => events.push(['disconnected', d.reconnecting]));
  client.on('closed', () => events.push(['closed']));
  client.connect();
  for (let i = 0; i < 3; i++) {
    await until(() => FakeWebSocket.created.length === i + 1);
    FakeWebSocket.created[i].serverClose(1006, '');
  }
  assert.deepEqual(events, [['disconnected', true], ['disconnected', true], ['disconnected', false], ['closed']]);
});

test('a temporary error on a rejoin reconnects; a permanent one drops the room', async () => {
  const client = newClient();
  /** @type {any[]} */
  const removed = [];
  client.on('removed', (r) => removed.push(r));
  client.connect();
  let ws = accept();
  for (const room of ['a', 'b']) {
    const joining = client.join(room);
    const join = ws.commands('join').find((j) => j.room === room);
    ws.receive({ id: join.id, ok: { room, position: { epoch: 'e', offset: 1 }, missed: 0, state } });
    await joining;
  }
  ws.serverClose(3000, 'shutdown, reconnect');
  await until(() => FakeWebSocket.created.length === 2);
  ws = accept();
  let rejoins = ws.commands('join');
  assert.deepEqual(rejoins.map((j) => j.room).sort(), ['a', 'b']);
  const ra = rejoins.find((j) => j.room === 'a');
  ws.receive({ id: ra.id, error: { code: 1502, name: 'join_rate_limited', message: 'slow down', retry_after_ms: 10 } });
  await until(() => FakeWebSocket.created.length === 3);
  ws = accept();
  rejoins = ws.commands('join');
  assert.equal(rejoins.length, 2, 'both rooms rejoined again');
  const rb = rejoins.find((j) => j.room === 'b');
  ws.receive({ id: rb.id, error: { code: 1009, name: 'room_closed', message: 'the room was closed' } });
  assert.deepEqual(removed, [{ room: 'b', code: 1009, reason: 'the room was closed' }]);
  assert.equal(client.position('b'), null);
  client.close();
});

test('clock samples: a burst after connecting, and msUntil on the server clock', async () => {
  let local = 10_000;
  const client = newClient({ now: () => local });
  client.connect();
  const ws = accept();
  // The rough estimate from `connected` (server_time 1000 at local 10000).
  assert.equal(client.clockOffset()?.offsetMs, -9000);
  const ping = await until(() => ws.commands('ping')[0]);
  assert.equal(ping.t, 10_000);
  local = 10_040; // 40 ms round trip, server clock 2 s ahead of local
  ws.receive({ id: ping.id, ok: { t: ping.t, server_recv: 12_020, server_send: 12_020 } });
  assert.deepEqual(client.clockOffset(), { offsetMs: 2000, rttMs: 40 });
  assert.equal(client.serverNow(), 12_040);
  assert.equal(client.msUntil(13_040), 1000);
  await until(() => ws.commands('ping').length >= 3, 1000);
  client.close();
});

test('server refusals reject with the error code, name and retry delay', async () => {
  const client = newClient();
  client.connect();
  const ws = accept();
  const buying = client.buy('r', 's1', 1, 'k1');
  const [buy] = ws.commands('buy');
  assert.deepEqual(buy, { id: buy.id, cmd: 'buy', room: 'r', sale: 's1', quantity: 1, key: 'k1' });
  ws.receive({ id: buy.id, error: { code: 1504, name: 'sale_not_started', message: 'soon', retry_after_ms: 42 } });
  await assert.rejects(buying, (e) => {
    assert.ok(e instanceof FerryError);
    assert.equal(e.kind, 'server');
    assert.equal(e.code, 1504);
    assert.equal(e.errorName, 'sale_not_started');
    assert.equal(e.retryAfterMs, 42);
    assert.equal(e.retryable, true);
    return true;
  });
  client.close();
});

test('a command without a reply times out; a late reply is ignored', async () => {
  const client = newClient({ requestTimeoutMs: 30 });
  client.connect();
  const ws = accept();
  const p = client.comment('r', 'hello');
  await assert.rejects(p, (e) => e instanceof FerryError && e.kind === 'timeout');
  const [c] = ws.commands('comment');
  ws.receive({ id: c.id, ok: { position: { epoch: 'e', offset: 1 } } });
  client.close();
});

test('the room-closed `left` push forgets the room: a reconnect does not rejoin it', async () => {
  const client = newClient();
  client.connect();
  let ws = accept();
  const joining = client.join('r');
  ws.receive({ id: ws.commands('join')[0].id, ok: { room: 'r', position: { epoch: 'e', offset: 1 }, missed: 0, state } });
  await joining;
  ws.receive({ push: 'left', room: 'r', code: 1009, reason: 'the room was closed' });
  ws.serverClose(3000, 'bye');
  await until(() => FakeWebSocket.created.length === 2);
  ws = accept();
  assert.equal(ws.commands('join').length, 0);
  client.close();
});

test('language: ?lang= on connect, set_language, and the new language on every reconnect', async () => {
  const client = newClient({ lang: 'es' });
  /** @type {Array<string | null>} */
  const langs = [];
  client.on('connected', (c) => langs.push(c.lang));
  client.connect();
  assert.equal(FakeWebSocket.created[0].url, 'ws://ferry.test/ws?token=tok%20en&lang=es');
  let ws = FakeWebSocket.created[0];
  ws.open();
  ws.receive({ ...connected, lang: 'es' });
  assert.equal(client.language, 'es');
  // A refused language leaves the old one in place.
  const refused = client.setLanguage('tlh');
  const [bad] = ws.commands('set_language');
  assert.deepEqual(bad, { id: bad.id, cmd: 'set_language', lang: 'tlh' });
  ws.receive({ id: bad.id, error: { code: 1018, name: 'unsupported_language', message: 'unsupported language `tlh`' } });
  await assert.rejects(refused, (e) => e instanceof FerryError && e.errorName === 'unsupported_language' && !e.retryable);
  assert.equal(client.language, 'es');
  const switching = client.setLanguage('ja');
  ws.receive({ id: ws.commands('set_language')[1].id, ok: {} });
  await switching;
  assert.equal(client.language, 'ja');
  ws.serverClose(3000, 'draining');
  await until(() => FakeWebSocket.created.length === 2);
  ws = FakeWebSocket.created[1];
  assert.equal(ws.url, 'ws://ferry.test/ws?token=tok%20en&lang=ja');
  ws.open();
  ws.receive({ ...connected, lang: 'ja' }, { ...connected });
  assert.deepEqual(langs, ['es', 'ja', null]);
  client.close();
});

test('comments: published, held for a moderator, or refused naming the rule', async () => {
  const client = newClient();
  client.connect();
  const ws = accept();
  const rule = { market: 'us', rule: 'counterfeit', severity: 'yellow', label: 'Replicas are held for review' };
  // sendComment: both outcomes as values.
  const published = client.sendComment('r', 'hello');
  ws.receive({ id: ws.commands('comment')[0].id, ok: { position: { epoch: 'e1', offset: 9 } } });
  assert.deepEqual(await published, { kind: 'published', position: { epoch: 'e1', offset: 9 } });
  const held = client.sendComment('r', 'replica watch?');
  ws.receive({ id: ws.commands('comment')[1].id, ok: { pending: { id: 'h1', rule } } });
  assert.deepEqual(await held, { kind: 'held', pending: { id: 'h1', rule } });
  // comment(): a held comment is an error of kind `held`, like the Rust SDK's ClientError::Held.
  const heldToo = client.comment('r', 'replica bag?');
  ws.receive({ id: ws.commands('comment')[2].id, ok: { pending: { id: 'h2', rule } } });
  await assert.rejects(heldToo, (e) => e instanceof FerryError && e.kind === 'held' && e.pending?.id === 'h2'
    && !e.retryable);
  // Red: moderation_blocked with the rule.
  const red = { market: 'us', rule: 'drugs', severity: 'red', label: 'Illegal drugs are not allowed' };
  const blocked = client.comment('r', 'c0caine');
  ws.receive({ id: ws.commands('comment')[3].id, error: { code: 1019, name: 'moderation_blocked', message: 'blocked in market us by rule `drugs`', rule: red } });
  await assert.rejects(blocked, (e) => e instanceof FerryError && e.code === 1019 && e.rule?.rule === 'drugs'
    && e.rule.label === 'Illegal drugs are not allowed');
  client.close();
});

test('moderator commands: queue, approve, reject (not_held when already resolved)', async () => {
  const client = newClient();
  client.connect();
  const ws = accept();
  const held = [{ id: 'h1', user, text: 'replica?', rule: { market: 'us', rule: 'counterfeit', severity: 'yellow', label: '' }, at: 5 }];
  const queue = client.moderationQueue('r');
  const [q] = ws.commands('moderation_queue');
  assert.deepEqual(q, { id: q.id, cmd: 'moderation_queue', room: 'r' });
  ws.receive({ id: q.id, ok: { held } });
  assert.deepEqual(await queue, held);
  const approving = client.approveComment('r', 'h1');
  const [a] = ws.commands('approve_comment');
  assert.deepEqual(a, { id: a.id, cmd: 'approve_comment', room: 'r', held: 'h1' });
  ws.receive({ id: a.id, ok: { position: { epoch: 'e1', offset: 12 } } });
  assert.deepEqual(await approving, { epoch: 'e1', offset: 12 });
  const rejecting = client.rejectComment('r', 'h1');
  const [rj] = ws.commands('reject_comment');
  assert.deepEqual(rj, { id: rj.id, cmd: 'reject_comment', room: 'r', held: 'h1' });
  ws.receive({ id: rj.id, error: { code: 1020, name: 'not_held', message: 'no such held comment' } });
  await assert.rejects(rejecting, (e) => e instanceof FerryError && e.errorName === 'not_held');
  client.close();
});
