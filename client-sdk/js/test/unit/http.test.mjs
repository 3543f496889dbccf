// Unit tests of the HTTP reads (sdk/http.js) against a scripted fetch: room-sales pagination
// with `limit` and `before`, error answers, and the query rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HttpClient, HttpError, roomSalesQuery } from '../../sdk/http.js';

/**
 * A fetch that serves a room of `n` sales (ids s1..sn, newest = sn) the way the server pages
 * them, and records every URL asked for.
 * @param {number} n
 */
function salesServer(n) {
  /** @type {string[]} */
  const urls = [];
  /** @type {typeof fetch} */
  const fakeFetch = async (input, init) => {
    const url = new URL(String(input));
    urls.push(`${url.pathname}${url.search}`);
    assert.equal(/** @type {any} */ (init?.headers)?.Authorization, 'Bearer tok');
    if (url.pathname !== '/api/rooms/shop%2042/sales') {
      return new Response(JSON.stringify({ error: { code: 'not_found', message: 'no such sale' } }), { status: 404 });
    }
    const limit = Number(url.searchParams.get('limit') ?? 20);
    const before = url.searchParams.has('before') ? Number(url.searchParams.get('before')) : n + 1;
    const ids = [];
    for (let i = Math.min(before - 1, n); i >= 1 && ids.length < limit; i--) ids.push(i);
    const last = ids.at(-1);
    const next = last !== undefined && last > 1 ? last : null;
    return new Response(JSON.stringify({ sales: ids.map((i) => ({ id: `s${i}` })), next }), { status: 200 });
  };
  return { urls, fakeFetch };
}

test('room sales page by page: limit, before = the previous next, until next is null', async () => {
  const { urls, fakeFetch } = salesServer(5);
  const http = new HttpClient({ base: 'http://ferry.test/', token: 'tok', fetch: fakeFetch });
  const first = await http.roomSales('shop 42', { limit: 2 });
  assert.deepEqual(first.sales.map((s) => s.id), ['s5', 's4']);
  assert.equal(first.next, 4);
  const second = await http.roomSales('shop 42', { limit: 2, before: first.next });
  assert.deepEqual(second.sales.map((s) => s.id), ['s3', 's2']);
  /** @type {string[]} */
  const all = [];
  for await (const sale of http.allRoomSales('shop 42', { limit: 2 })) all.push(sale.id);
  assert.deepEqual(all, ['s5', 's4', 's3', 's2', 's1']);
  assert.deepEqual(urls.slice(2), [
    '/api/rooms/shop%2042/sales?limit=2',
    '/api/rooms/shop%2042/sales?limit=2&before=4',
    '/api/rooms/shop%2042/sales?limit=2&before=2',
  ]);
  // A room without sales: one empty page.
  const empty = salesServer(0);
  const none = new HttpClient({ base: 'http://ferry.test', token: 'tok', fetch: empty.fakeFetch });
  /** @type {string[]} */
  const got = [];
  for await (const sale of none.allRoomSales('shop 42')) got.push(sale.id);
  assert.deepEqual(got, []);
  assert.deepEqual(empty.urls, ['/api/rooms/shop%2042/sales']);
});

test('error answers become HttpError with the documented code', async () => {
  const { fakeFetch } = salesServer(1);
  const http = new HttpClient({ base: 'http://ferry.test', token: 'tok', fetch: fakeFetch });
  await assert.rejects(http.sale('s1'), (e) => e instanceof HttpError && e.status === 404 && e.code === 'not_found'
    && e.serverMessage === 'no such sale');
  const down = new HttpClient({
    base: 'http://ferry.test', token: 'tok', fetch: async () => { throw new TypeError('connection refused'); },
  });
  await assert.rejects(down.products(), (e) => e instanceof HttpError && e.status === 0 && e.code === 'network');
  const plain = new HttpClient({
    base: 'http://ferry.test', token: 'tok', fetch: async () => new Response('bad gateway', { status: 502 }),
  });
  await assert.rejects(plain.reservation('r1'), (e) => e instanceof HttpError && e.code === 'http_502');
});

test('the room-sales query refuses what the server would', () => {
  assert.equal(roomSalesQuery(), '');
  assert.equal(roomSalesQuery({ limit: 100, before: 0 }), '?limit=100&before=0');
  assert.equal(roomSalesQuery({ before: null }), '');
  assert.throws(() => roomSalesQuery({ limit: 0 }), RangeError);
  assert.throws(() => roomSalesQuery({ limit: 101 }), RangeError);
  assert.throws(() => roomSalesQuery({ limit: 2.5 }), RangeError);
  assert.throws(() => roomSalesQuery({ before: -1 }), RangeError);
});
