// Unit tests of the protocol helpers, tokens, the WHIP/WHEP trickle fragment and the
// `Link: rel="ice-server"` headers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeCodeReconnects, splitFrame, isTemporaryError, isValidRoomId, ErrorCode } from '../../sdk/protocol.js';
import { tokenClaims } from '../../sdk/token.js';
import { trickleFragment, IceSessionResource, VideoSessionError, iceServersFromLink } from '../../sdk/video.js';

test('close codes: 3000–3499 and 4000–4499 reconnect, 3500–3999 and 4500–4999 are terminal', () => {
  for (const code of [3000, 3001, 3004, 3005, 3006, 3499, 4000, 4499, 1000, 1001, 1011, null]) {
    assert.equal(closeCodeReconnects(code), true, String(code));
  }
  for (const code of [3500, 3501, 3503, 3506, 3999, 4500, 4999, 1002, 1003, 1007, 1008, 1009, 1010]) {
    assert.equal(closeCodeReconnects(code), false, String(code));
  }
});

test('error codes: 1500–1999 are temporary', () => {
  assert.equal(isTemporaryError(ErrorCode.sale_not_started), true);
  assert.equal(isTemporaryError(ErrorCode.unavailable), true);
  assert.equal(isTemporaryError(ErrorCode.sold_out), false);
});

test('frames split on newlines, skipping blank lines', () => {
  assert.deepEqual(splitFrame('{"a":1}\n{"b":2}\n\n'), ['{"a":1}', '{"b":2}']);
  assert.equal(isValidRoomId('shop-42'), true);
  assert.equal(isValidRoomId('a/b'), false);
  assert.equal(isValidRoomId(''), false);
});

test('token claims are decoded (base64url, UTF-8) without verification', () => {
  const payload = Buffer.from(JSON.stringify({ sub: 'u1', name: '美', role: 'viewer', room: 'r', exp: 1, market: 'hk' }))
    .toString('base64url');
  const claims = tokenClaims(`e30.${payload}.sig`);
  assert.equal(claims?.market, 'hk');
  assert.equal(claims?.name, '美');
  assert.equal(tokenClaims('not a token'), null);
  assert.equal(tokenClaims('a.!!!.c'), null);
});

const offer = [
  'v=0', 'o=- 1 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0 1',
  'm=video 9 UDP/TLS/RTP/SAVPF 96 97', 'c=IN IP4 0.0.0.0', 'a=ice-ufrag:EsAw', 'a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y',
  'a=mid:0', 'a=sendonly', 'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:1', '',
].join('\r\n');

test('trickle fragments carry the credentials, the first m-line and mid, and end-of-candidates', () => {
  const frag = trickleFragment(offer, ['candidate:1 1 udp 2122 192.0.2.1 5000 typ host'], true);
  assert.equal(frag, [
    'a=ice-ufrag:EsAw', 'a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y', 'm=video 9 UDP/TLS/RTP/SAVPF 96 97', 'a=mid:0',
    'a=candidate:1 1 udp 2122 192.0.2.1 5000 typ host', 'a=end-of-candidates', '',
  ].join('\r\n'));
  assert.doesNotMatch(trickleFragment(offer, [], false), /end-of-candidates/);
});

/** A fetch stand-in recording requests and answering from a script. */
function scriptedFetch(/** @type {Array<(url: string, init: any) => Response>} */ script) {
  /** @type {Array<{url: string, init: any}>} */
  const calls = [];
  const fetch = async (/** @type {any} */ url, /** @type {any} */ init) => {
    calls.push({ url: String(url), init });
    const next = script.shift();
    if (!next) throw new Error('unexpected request');
    return next(String(url), init);
  };
  return { calls, fetch: /** @type {typeof globalThis.fetch} */ (/** @type {unknown} */ (fetch)) };
}

test('WHIP/WHEP resource: POST offer, Location resolved, ETag sent as If-Match, DELETE', async () => {
  const { calls, fetch } = scriptedFetch([
    () => new Response('v=0 answer', { status: 201, headers: { Location: '/whep/r/sessions/abc', ETag: '"e1"' } }),
    () => new Response(null, { status: 204 }),
    () => new Response(null, { status: 200 }),
  ]);
  const res = new IceSessionResource('http://ferry.test/whep/r', 'tok', fetch);
  assert.equal(await res.create('v=0 offer'), 'v=0 answer');
  assert.equal(res.location, 'http://ferry.test/whep/r/sessions/abc');
  assert.equal(calls[0].init.method, 'POST');
  assert.equal(calls[0].init.headers['Content-Type'], 'application/sdp');
  assert.equal(calls[0].init.headers.Authorization, 'Bearer tok');
  assert.equal(await res.patch('a=end-of-candidates\r\n'), true);
  assert.equal(calls[1].url, 'http://ferry.test/whep/r/sessions/abc');
  assert.equal(calls[1].init.headers['If-Match'], '"e1"');
  assert.equal(calls[1].init.headers['Content-Type'], 'application/trickle-ice-sdpfrag');
  await res.delete();
  assert.equal(calls[2].init.method, 'DELETE');
  assert.equal(res.location, null);
});

test('WHIP/WHEP resource: errors carry the status and Ferry\'s message; 405 disables trickle', async () => {
  const { fetch } = scriptedFetch([
    () => new Response('{"error":{"code":"unauthorized","message":"token expired"}}', { status: 401 }),
    () => new Response('answer', { status: 201, headers: { Location: 'http://ferry.test/s/1' } }),
    () => new Response(null, { status: 405 }),
  ]);
  const res = new IceSessionResource('http://ferry.test/whip/r', 'tok', fetch);
  await assert.rejects(res.create('offer'), (e) => {
    assert.ok(e instanceof VideoSessionError);
    assert.equal(e.status, 401);
    assert.match(e.message, /unauthorized: token expired/);
    return true;
  });
  await res.create('offer');
  assert.equal(await res.patch('x'), false);
  assert.equal(res.trickleSupported, false);
  assert.equal(await res.patch('x'), false, 'no further PATCH');
});

test('Link headers: rel="ice-server" entries become RTCIceServers (RFC 9725 §4.6)', () => {
  // The shape Ferry sends (one header per sfu.ice_servers entry), as fetch joins them.
  const joined = '<stun:stun.example.net:3478>; rel="ice-server", '
    + '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"; username="user 1"; '
    + 'credential="p;a,s\\"s"; credential-type="password"';
  assert.deepEqual(iceServersFromLink(joined), [
    { urls: 'stun:stun.example.net:3478' },
    { urls: 'turn:turn.example.net:3478?transport=udp', username: 'user 1', credential: 'p;a,s"s' },
  ]);
  // Separate values, other relations, other schemes, OAuth credentials and junk are skipped.
  assert.deepEqual(iceServersFromLink([
    '<https://ferry.test/docs>; rel="help"',
    '<turns:t.example:5349>;rel=ice-server;username=u;credential=c',
    '<turn:t.example>; rel="ice-server"; credential-type="oauth"; username="u"; credential="c"',
    '<http://x>; rel="ice-server"',
    'not a link',
    '<stun:a.example>; REL="preload ice-server"',
  ]), [
    { urls: 'turns:t.example:5349', username: 'u', credential: 'c' },
    { urls: 'stun:a.example' },
  ]);
  assert.deepEqual(iceServersFromLink(null), []);
  assert.deepEqual(iceServersFromLink(''), []);
});

test('WHIP/WHEP resource: the 201 Link headers are kept as the session ICE servers', async () => {
  const { fetch } = scriptedFetch([
    () => new Response('answer', {
      status: 201,
      headers: [['Location', '/whip/r/s1'], ['Link', '<stun:stun.example.net:3478>; rel="ice-server"'],
        ['Link', '<turn:turn.example.net>; rel="ice-server"; username="u"; credential="c"; credential-type="password"']],
    }),
  ]);
  const res = new IceSessionResource('http://ferry.test/whip/r', 'tok', fetch);
  await res.create('offer');
  assert.deepEqual(res.iceServers, [
    { urls: 'stun:stun.example.net:3478' },
    { urls: 'turn:turn.example.net', username: 'u', credential: 'c' },
  ]);
  assert.equal(res.endpoint, 'http://ferry.test/whip/r');
});

test('error codes of translation and moderation', () => {
  assert.equal(ErrorCode.unsupported_language, 1018);
  assert.equal(ErrorCode.moderation_blocked, 1019);
  assert.equal(ErrorCode.not_held, 1020);
  assert.equal(ErrorCode.moderation_queue_full, 1505);
  assert.equal(isTemporaryError(ErrorCode.moderation_queue_full), true);
});
