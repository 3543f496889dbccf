// @ts-check
/**
 * @file The room client: one WebSocket to Ferry, with the same behaviour as the Rust SDK
 * (`client-sdk/src/client.rs`).
 *
 * - Connects with the token in `?token=` (browsers cannot set headers on a WebSocket).
 * - Reconnects after a drop or a close code in 3000–3499 (and 4000–4499, 1000, 1001, 1006...)
 *   with exponential backoff and jitter, rotating through its URLs; stops for good on a
 *   terminal code (3500–3999...) and tells why (`'closed'`).
 * - Rejoins every room after a reconnect with `since` = the last position seen, so missed
 *   events are replayed (`recovered: true`) or the app is told to reset (`recovered: false`).
 * - Drops duplicate events and counts gaps (`stats`; both stay 0 against a correct server).
 * - Keeps a clock offset from NTP-style `ping` samples (a burst of 5 after connecting, then one
 *   per `pingIntervalMs`; the lowest-RTT of the last 8): `serverNow()`, `msUntil()`.
 *
 * The bookkeeping lives in the pure modules `stream.js`, `clock.js` and `backoff.js`; this
 * class only moves frames between the socket, the application and them.
 */

import { backoffDelay } from './backoff.js';
import { ClockSync } from './clock.js';
import { Emitter } from './emitter.js';
import { ErrorCode, closeCodeReconnects, isTemporaryError, splitFrame } from './protocol.js';
import { StreamTracker } from './stream.js';

/** @typedef {import('./protocol.js').StreamPosition} StreamPosition */
/** @typedef {import('./protocol.js').JoinReply} JoinReply */
/** @typedef {import('./protocol.js').RoomEvent} RoomEvent */
/** @typedef {import('./protocol.js').RoomEventType} RoomEventType */
/** @typedef {import('./protocol.js').UserRef} UserRef */
/** @typedef {import('./protocol.js').ErrorBody} ErrorBody */
/** @typedef {import('./protocol.js').SaleSpec} SaleSpec */
/** @typedef {import('./protocol.js').SaleView} SaleView */
/** @typedef {import('./protocol.js').ReservationReply} ReservationReply */
/** @typedef {import('./protocol.js').ReservationView} ReservationView */
/** @typedef {import('./protocol.js').PongReply} PongReply */
/** @typedef {import('./protocol.js').RuleRef} RuleRef */
/** @typedef {import('./protocol.js').PendingComment} PendingComment */
/** @typedef {import('./protocol.js').HeldComment} HeldComment */
/** @typedef {import('./clock.js').ClockEstimate} ClockEstimate */

/**
 * How a client connects and behaves. Only `url` (or `urls`) and `token` are required.
 * @typedef {object} FerryClientOptions
 * @property {string} [url] The WebSocket URL (`ws://host:port/ws`).
 * @property {string[]} [urls] Several URLs: reconnects rotate through them.
 * @property {string} token The JWT.
 * @property {string | null} [lang] The language to read comments in (BCP 47, e.g. `es`), sent
 *   as `?lang=` on every (re)connect; `setLanguage` changes it for the session and later
 *   reconnects. Null (the default): the token's `lang` claim, if any.
 * @property {number} [minBackoffMs] First reconnect delay (100 ms); doubles per failed attempt.
 * @property {number} [maxBackoffMs] Largest reconnect delay (10 s).
 * @property {number | null} [maxReconnectAttempts] Give up after this many consecutive failed
 *   attempts (`null`, the default: never).
 * @property {number} [requestTimeoutMs] How long a command waits for its reply (10 s).
 * @property {number} [pingIntervalMs] Clock-sync ping interval after the first burst (15 s).
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (the global by default).
 * @property {() => number} [now] Local clock in Unix ms (`performance.timeOrigin +
 *   performance.now()` by default: sub-millisecond and monotonic within the page).
 */

/**
 * What the client emits. `'event'` carries every room event, in stream order, exactly once.
 * @typedef {object} ClientEvents
 * @property {{node: string, user: UserRef, serverTime: number, version: number, lang: string | null}} connected
 *   `lang`: the language the server will translate into for this connection (null: originals
 *   only).
 * @property {{room: string, reply: JoinReply}} joined A room was joined or rejoined. A
 *   `reply.recovered === false` means events were missed and cannot be replayed: reset the
 *   room's view from `reply.state`.
 * @property {{room: string, position: StreamPosition, event: RoomEvent}} event
 * @property {{room: string, count: number}} viewers
 * @property {{room: string, code: number, reason: string}} removed The server removed us from
 *   a room (closed), or a rejoin was refused for good.
 * @property {{code: number | null, reason: string, reconnecting: boolean}} disconnected
 * @property {{code: number | null, reason: string}} closed The client stopped for good.
 */

/** @typedef {'server' | 'held' | 'disconnected' | 'closed' | 'timeout' | 'protocol'} FerryErrorKind */

/**
 * What became of a comment: published at a stream position, or held for a moderator.
 * @typedef {{kind: 'published', position: StreamPosition} | {kind: 'held', pending: PendingComment}} CommentOutcome
 */

/** Why a command failed. */
export class FerryError extends Error {
  /**
   * @param {FerryErrorKind} kind `server`: the server refused (see `code`); `held`: `comment()`
   *   was held for a moderator (see `pending`); `disconnected`: the connection was lost before
   *   the reply; `closed`: the client has stopped; `timeout`: no reply in time; `protocol`: an
   *   unexpected reply.
   * @param {string} message
   * @param {ErrorBody | null} [body] the server's error, for `server`
   * @param {PendingComment | null} [pending] for `held`
   */
  constructor(kind, message, body = null, pending = null) {
    super(message);
    this.name = 'FerryError';
    /** @type {FerryErrorKind} */
    this.kind = kind;
    /** The server's error code (1000–1999), or null when the server did not answer. */
    this.code = body ? body.code : null;
    /** The server's stable error name (`sold_out`...), or null. */
    this.errorName = body ? body.name : null;
    /** For temporary errors: how long to wait before retrying. */
    this.retryAfterMs = body?.retry_after_ms ?? null;
    /** The server's message for people (`limit of 2 per buyer reached (you hold 2)`), or `message`. */
    this.serverMessage = body ? body.message : message;
    /**
     * For `moderation_blocked` (1019): the rule the text broke (`{market, rule, severity,
     * label}`), or null.
     * @type {RuleRef | null}
     */
    this.rule = body?.rule ?? null;
    /**
     * For `held`: where the comment waits (`{id, rule}`), or null.
     * @type {PendingComment | null}
     */
    this.pending = pending;
  }

  /** Whether the same command may succeed later (temporary server error, lost connection, timeout). */
  get retryable() {
    if (this.kind === 'server') return this.code !== null && isTemporaryError(this.code);
    return this.kind === 'disconnected' || this.kind === 'timeout';
  }
}

/**
 * A command waiting for its reply.
 * @typedef {object} InFlight
 * @property {'user' | 'join' | 'rejoin' | 'clock'} kind
 * @property {string} [room] for joins
 * @property {StreamPosition | null} [since] for joins
 * @property {number} [sent] local time the ping left, for clock samples
 * @property {((value: any) => void) | null} resolve null for the SDK's own commands
 * @property {((error: FerryError) => void) | null} reject
 * @property {ReturnType<typeof setTimeout> | null} timer
 */

/** A command sent before the socket was ready. */
/** @typedef {{command: Record<string, unknown>, entry: InFlight}} Queued */

const defaultNow = () =>
  typeof performance !== 'undefined' ? performance.timeOrigin + performance.now() : Date.now();

/**
 * A connected (and reconnecting) client.
 *
 * ```js
 * const client = new FerryClient({ url: 'ws://127.0.0.1:8080/ws', token });
 * client.onEvent('comment', (e, { room }) => console.log(room, e.user.name, e.text));
 * client.connect();
 * await client.join('demo');
 * await client.comment('demo', 'Hello');
 * ```
 * @extends {Emitter<ClientEvents>}
 */
export class FerryClient extends Emitter {
  /** @type {Required<Omit<FerryClientOptions, 'url' | 'WebSocket' | 'lang'>> & {WebSocket: typeof WebSocket}} */
  #opts;
  /** The language asked for on (re)connect: the option, then the last `setLanguage`. */
  /** @type {string | null} */
  #lang = null;
  /** @type {WebSocket | null} */
  #ws = null;
  /** Whether the socket is open (commands go out at once). */
  #open = false;
  /** Whether a reconnect delay is running (commands fail fast with `disconnected`). */
  #backingOff = false;
  /** Whether `close()` was called or a terminal close happened. */
  #stopped = false;
  #started = false;
  #attempt = 0;
  #urlIndex = 0;
  #nextId = 1;
  /** @type {Map<number, InFlight>} */
  #inFlight = new Map();
  /** @type {Queued[]} */
  #queue = [];
  /** @type {ReturnType<typeof setTimeout> | null} */
  #pingTimer = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #reconnectTimer = null;
  #tracker = new StreamTracker();
  #clock = new ClockSync();
  /** @type {{node: string, user: UserRef} | null} */
  #identity = null;
  /** Connections established (the `connected` push received). */
  #connects = 0;

  /** @param {FerryClientOptions} options */
  constructor(options) {
    super();
    const urls = options.urls ?? (options.url ? [options.url] : []);
    if (urls.length === 0) throw new TypeError('FerryClient needs `url` or `urls`');
    if (!options.token) throw new TypeError('FerryClient needs a `token`');
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new TypeError('no WebSocket implementation: pass `WebSocket`');
    this.#opts = {
      urls,
      token: options.token,
      minBackoffMs: options.minBackoffMs ?? 100,
      maxBackoffMs: options.maxBackoffMs ?? 10_000,
      maxReconnectAttempts: options.maxReconnectAttempts ?? null,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 15_000,
      WebSocket: WS,
      now: options.now ?? defaultNow,
    };
    this.#lang = options.lang || null;
  }

  /** Open the connection. Commands sent before it is up wait for it. Attach handlers first. */
  connect() {
    if (this.#started) return this;
    this.#started = true;
    this.#dial();
    return this;
  }

  /** Stop for good: close the socket, fail pending commands with `closed`. */
  close() {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#stopSession();
    const ws = this.#ws;
    this.#ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000, 'client closed');
    this.#failAll(new FerryError('closed', 'client closed'));
  }

  /** Whether the socket is open and `connected` has arrived. */
  get connected() {
    return this.#open && this.#identity !== null;
  }

  /**
   * The language this client asks for (its `lang` option, or the last `setLanguage`); null:
   * the token's claim decides.
   */
  get language() {
    return this.#lang;
  }

  /** Who this connection is (from the `connected` push), or null before the first. */
  get identity() {
    return this.#identity;
  }

  /**
   * Counters a test or a status line can read: `duplicates` and `gaps` must stay 0.
   * @returns {{connects: number, events: number, duplicates: number, gaps: number, unrecovered: number}}
   */
  get stats() {
    const t = this.#tracker;
    return {
      connects: this.#connects,
      events: t.events,
      duplicates: t.duplicates,
      gaps: t.gaps,
      unrecovered: t.unrecovered,
    };
  }

  /**
   * The last position seen in `room` (what a resume sends as `since`).
   * @param {string} room
   */
  position(room) {
    return this.#tracker.position(room);
  }

  // -------------------------------------------------------------------------------------------
  // Clock

  /** @returns {ClockEstimate | null} the best clock-offset estimate so far */
  clockOffset() {
    return this.#clock.estimate();
  }

  /** The server's clock now (Unix ms), per the estimate. */
  serverNow() {
    return this.#clock.serverNow(this.#opts.now());
  }

  /**
   * Milliseconds until the server instant `serverTimeMs` (a sale's `starts_at`), on the
   * server's clock: every viewer counts down to the same instant. Negative once passed.
   * @param {number} serverTimeMs
   */
  msUntil(serverTimeMs) {
    return this.#clock.msUntil(serverTimeMs, this.#opts.now());
  }

  /**
   * Take one clock sample now and return the resulting estimate.
   * @returns {Promise<ClockEstimate>}
   */
  async syncClock() {
    await this.#send({ cmd: 'ping', t: this.#opts.now() }, { kind: 'clock' });
    const estimate = this.#clock.estimate();
    if (!estimate) throw new FerryError('protocol', 'no clock sample');
    return estimate;
  }

  // -------------------------------------------------------------------------------------------
  // Typed room-event subscription

  /**
   * Subscribe to one type of room event. The handler gets the event, narrowed to its type,
   * and where it happened.
   * @template {RoomEventType} K
   * @param {K} type
   * @param {(event: Extract<RoomEvent, {type: K}>, meta: {room: string, position: StreamPosition}) => void} handler
   * @returns {() => void} unsubscribe
   */
  onEvent(type, handler) {
    return this.on('event', ({ room, position, event }) => {
      if (event.type === type) handler(/** @type {Extract<RoomEvent, {type: K}>} */ (event), { room, position });
    });
  }

  // -------------------------------------------------------------------------------------------
  // Commands

  /**
   * Send any command (`{cmd: 'comment', room, text}`) and wait for its `ok` body.
   * @param {Record<string, unknown> & {cmd: string}} command
   * @returns {Promise<any>}
   */
  request(command) {
    if (command.cmd === 'join') return this.join(String(command.room));
    return this.#send(command, { kind: command.cmd === 'ping' ? 'clock' : 'user' });
  }

  /**
   * Join a room. The client rejoins it after every reconnect, resuming where it was.
   * @param {string} room
   * @returns {Promise<JoinReply>}
   */
  join(room) {
    return this.#send({ cmd: 'join', room }, { kind: 'join', room, since: null });
  }

  /**
   * Leave a room (forgotten at once: a reconnect will not rejoin it).
   * @param {string} room
   * @returns {Promise<void>}
   */
  async leave(room) {
    this.#tracker.forget(room);
    await this.#send({ cmd: 'leave', room }, { kind: 'user' });
  }

  /**
   * Post a comment. A comment held for a moderator rejects with a `FerryError` of kind `held`
   * (its `pending` says where it waits); a red one with `moderation_blocked` and `rule`. Use
   * `sendComment` to get both outcomes as values.
   * @param {string} room
   * @param {string} text
   * @returns {Promise<StreamPosition>} where the comment landed in the stream
   */
  async comment(room, text) {
    const outcome = await this.sendComment(room, text);
    if (outcome.kind === 'held') {
      throw new FerryError('held', `held for a moderator: ${outcome.pending.rule.label || outcome.pending.rule.rule}`, null, outcome.pending);
    }
    return outcome.position;
  }

  /**
   * Post a comment and learn whether it was published or held for a moderator (a yellow
   * rule of a market in the room). A red one rejects with `moderation_blocked` (1019), the
   * error's `rule` naming the rule; nobody else saw it.
   * @param {string} room
   * @param {string} text
   * @returns {Promise<CommentOutcome>}
   */
  async sendComment(room, text) {
    const body = await this.#send({ cmd: 'comment', room, text }, { kind: 'user' });
    if (body && typeof body === 'object' && body.pending) return { kind: 'held', pending: body.pending };
    return { kind: 'published', position: this.#expect(body, 'position') };
  }

  /**
   * Read comments in `lang` from now on: every room of this connection, and every reconnect
   * (sent as `?lang=`). Events already received keep their language. Rejects with
   * `unsupported_language` (1018) for a tag that is not a language or one the server does not
   * translate into (the message lists those it does).
   * @param {string} lang BCP 47 tag (`es`, `zh-CN`...)
   * @returns {Promise<void>}
   */
  async setLanguage(lang) {
    await this.#send({ cmd: 'set_language', lang }, { kind: 'user' });
    this.#lang = lang;
  }

  /**
   * Publish a held comment from the room's moderator queue (staff). Rejects with `not_held`
   * (1020) when it was already resolved.
   * @param {string} room
   * @param {string} held the queue id
   * @returns {Promise<StreamPosition>} where the published comment landed
   */
  async approveComment(room, held) {
    return this.#expect(await this.#send({ cmd: 'approve_comment', room, held }, { kind: 'user' }), 'position');
  }

  /**
   * Drop a held comment from the room's moderator queue (staff); `comment_rejected` is
   * published. Rejects with `not_held` (1020) when it was already resolved.
   * @param {string} room
   * @param {string} held the queue id
   * @returns {Promise<StreamPosition>}
   */
  async rejectComment(room, held) {
    return this.#expect(await this.#send({ cmd: 'reject_comment', room, held }, { kind: 'user' }), 'position');
  }

  /**
   * The room's moderator queue, oldest first (staff).
   * @param {string} room
   * @returns {Promise<HeldComment[]>}
   */
  async moderationQueue(room) {
    return this.#expect(await this.#send({ cmd: 'moderation_queue', room }, { kind: 'user' }), 'held');
  }

  /**
   * @param {string} room
   * @param {number} [count] 1–100
   * @returns {Promise<void>}
   */
  async like(room, count = 1) {
    await this.#send({ cmd: 'like', room, count }, { kind: 'user' });
  }

  /**
   * Host announcement (hosts and admins).
   * @param {string} room
   * @param {string} text
   * @returns {Promise<StreamPosition>}
   */
  async announce(room, text) {
    return (await this.#send({ cmd: 'announce', room, text }, { kind: 'user' })).position;
  }

  /**
   * Pin a message above the chat (staff).
   * @param {string} room
   * @param {string} text
   * @returns {Promise<StreamPosition>}
   */
  async pin(room, text) {
    return (await this.#send({ cmd: 'pin', room, text }, { kind: 'user' })).position;
  }

  /**
   * @param {string} room
   * @returns {Promise<StreamPosition>}
   */
  async unpin(room) {
    return (await this.#send({ cmd: 'unpin', room }, { kind: 'user' })).position;
  }

  /**
   * Hide the comment at stream `offset` (staff).
   * @param {string} room
   * @param {number} offset
   * @returns {Promise<StreamPosition>}
   */
  async deleteComment(room, offset) {
    return (await this.#send({ cmd: 'delete_comment', room, offset }, { kind: 'user' })).position;
  }

  /**
   * Mute a user for `seconds` (staff; omitted or 0 = until unmuted).
   * @param {string} room
   * @param {string} user user id
   * @param {number} [seconds]
   * @returns {Promise<StreamPosition>}
   */
  async mute(room, user, seconds) {
    /** @type {Record<string, unknown> & {cmd: string}} */
    const command = { cmd: 'mute', room, user };
    if (seconds !== undefined) command.seconds = seconds;
    return (await this.#send(command, { kind: 'user' })).position;
  }

  /**
   * @param {string} room
   * @param {string} user
   * @returns {Promise<StreamPosition>}
   */
  async unmute(room, user) {
    return (await this.#send({ cmd: 'unmute', room, user }, { kind: 'user' })).position;
  }

  /**
   * Ban a user from the room: their connections in it are closed with 3506 (staff).
   * @param {string} room
   * @param {string} user
   * @returns {Promise<StreamPosition>}
   */
  async ban(room, user) {
    return (await this.#send({ cmd: 'ban', room, user }, { kind: 'user' })).position;
  }

  /**
   * Slow mode: each viewer may comment once per `seconds` (0 turns it off; staff).
   * @param {string} room
   * @param {number} seconds 0–3600
   * @returns {Promise<StreamPosition>}
   */
  async slowMode(room, seconds) {
    return (await this.#send({ cmd: 'slow_mode', room, seconds }, { kind: 'user' })).position;
  }

  /**
   * Show a catalog product in the room's showcase (hosts and admins).
   * @param {string} room
   * @param {string} product product id
   * @returns {Promise<void>}
   */
  async pinProduct(room, product) {
    await this.#send({ cmd: 'pin_product', room, product }, { kind: 'user' });
  }

  /**
   * @param {string} room
   * @returns {Promise<void>}
   */
  async unpinProduct(room) {
    await this.#send({ cmd: 'unpin_product', room }, { kind: 'user' });
  }

  /**
   * Launch a flash sale (hosts and admins).
   * @param {string} room
   * @param {SaleSpec} sale
   * @returns {Promise<SaleView>}
   */
  async startSale(room, sale) {
    return this.#expect(await this.#send({ cmd: 'start_sale', room, sale }, { kind: 'user' }), 'sale');
  }

  /**
   * End a sale now (hosts and admins).
   * @param {string} room
   * @param {string} sale sale id
   * @returns {Promise<SaleView>}
   */
  async endSale(room, sale) {
    return this.#expect(await this.#send({ cmd: 'end_sale', room, sale }, { kind: 'user' }), 'sale');
  }

  /**
   * Reserve `quantity` units. Make one `key` per Buy press (`newIdempotencyKey()`) and pass
   * the same key when retrying that press: a retried key is answered with the original
   * reservation (`replayed: true`), never a second one. Refusals throw a `FerryError` whose
   * `errorName` says why (`sold_out`, `limit_reached`, `sale_not_started` with
   * `retryAfterMs`...). `BuyPress` (sales.js) does the retries and maps every answer.
   * @param {string} room
   * @param {string} sale
   * @param {number} quantity 1–1000
   * @param {string} key idempotency key, 1–128 bytes
   * @returns {Promise<ReservationReply>}
   */
  async buy(room, sale, quantity, key) {
    const body = await this.#send({ cmd: 'buy', room, sale, quantity, key }, { kind: 'user' });
    this.#expect(body, 'reservation');
    return { reservation: body.reservation, replayed: body.replayed === true };
  }

  /**
   * Give a reservation back before paying (its buyer only).
   * @param {string} room
   * @param {string} reservation reservation id
   * @returns {Promise<ReservationView>}
   */
  async cancelReservation(room, reservation) {
    return this.#expect(
      await this.#send({ cmd: 'cancel_reservation', room, reservation }, { kind: 'user' }),
      'reservation',
    );
  }

  // -------------------------------------------------------------------------------------------
  // Internals

  /**
   * @param {any} body
   * @param {string} field
   */
  #expect(body, field) {
    if (!body || typeof body !== 'object' || !(field in body)) {
      throw new FerryError('protocol', `expected \`${field}\` in the reply, got ${JSON.stringify(body)}`);
    }
    return body[field];
  }

  /**
   * Queue or send a command; the promise settles with its reply.
   * @param {Record<string, unknown> & {cmd: string}} command
   * @param {{kind: InFlight['kind'], room?: string, since?: StreamPosition | null}} how
   * @returns {Promise<any>}
   */
  #send(command, how) {
    if (this.#stopped) return Promise.reject(new FerryError('closed', 'client closed'));
    if (this.#backingOff) {
      return Promise.reject(new FerryError('disconnected', 'not connected (reconnecting)'));
    }
    return new Promise((resolve, reject) => {
      /** @type {InFlight} */
      const entry = { kind: how.kind, room: how.room, since: how.since ?? null, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        entry.timer = null;
        // The entry stays in flight: a late reply still updates the SDK's bookkeeping.
        this.#settle(entry, new FerryError('timeout', `no reply to \`${command.cmd}\` in time`));
      }, this.#opts.requestTimeoutMs);
      if (this.#open) this.#transmit(command, entry);
      else this.#queue.push({ command, entry });
    });
  }

  /**
   * @param {Record<string, unknown>} command
   * @param {InFlight} entry
   */
  #transmit(command, entry) {
    const id = this.#nextId++;
    if (entry.kind === 'clock') entry.sent = this.#opts.now();
    // A room is tracked from the moment its join is sent, so a reconnect rejoins it.
    if (entry.kind === 'join' && entry.room) this.#tracker.joining(entry.room);
    this.#inFlight.set(id, entry);
    try {
      this.#ws?.send(JSON.stringify({ id, ...command }));
    } catch {
      // The socket is closing: its close handler fails this entry.
    }
  }

  /**
   * Resolve or reject an entry's promise, once.
   * @param {InFlight} entry
   * @param {FerryError | {ok: any}} outcome
   */
  #settle(entry, outcome) {
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = null;
    const { resolve, reject } = entry;
    entry.resolve = null;
    entry.reject = null;
    if (outcome instanceof FerryError) reject?.(outcome);
    else resolve?.(outcome.ok);
  }

  /** @param {FerryError} error */
  #failAll(error) {
    for (const entry of this.#inFlight.values()) {
      if (entry.kind === 'join' && entry.room) this.#tracker.joinFailed(entry.room);
      this.#settle(entry, error);
    }
    this.#inFlight.clear();
    for (const { entry } of this.#queue) this.#settle(entry, error);
    this.#queue = [];
  }

  #dial() {
    const base = this.#opts.urls[this.#urlIndex % this.#opts.urls.length];
    let url = `${base}${base.includes('?') ? '&' : '?'}token=${encodeURIComponent(this.#opts.token)}`;
    if (this.#lang) url += `&lang=${encodeURIComponent(this.#lang)}`;
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this.#opts.WebSocket(url);
    } catch (e) {
      this.#ended(null, `cannot open ${base}: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#ws === ws) this.#startSession();
    };
    ws.onmessage = (ev) => {
      if (this.#ws === ws && typeof ev.data === 'string') this.#onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      // 1005 (no status) and 1006 (no close frame) mean the server gave no code.
      const code = ev.code === 1005 || ev.code === 1006 ? null : ev.code;
      this.#ended(code, ev.reason || (code === null ? 'connection lost' : 'closed'));
    };
    ws.onerror = () => {
      // A close event always follows.
    };
  }

  #startSession() {
    this.#open = true;
    // Rejoin every room from its last position.
    for (const [room, since] of this.#tracker.rooms()) {
      /** @type {Record<string, unknown>} */
      const command = { cmd: 'join', room };
      if (since) command.since = since;
      this.#transmit(command, { kind: 'rejoin', room, since, resolve: null, reject: null, timer: null });
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const { command, entry } of queued) {
      if (entry.resolve === null) continue; // timed out while queued: never sent
      this.#transmit(command, entry);
    }
    // A quick burst of clock samples, then one per interval.
    let burstLeft = 4;
    const sample = () => {
      if (!this.#open) return;
      this.#transmit({ cmd: 'ping', t: this.#opts.now() }, {
        kind: 'clock', resolve: null, reject: null, timer: null,
      });
      const delay = burstLeft > 0 ? 50 : this.#opts.pingIntervalMs;
      burstLeft -= 1;
      this.#pingTimer = setTimeout(sample, delay);
    };
    this.#pingTimer = setTimeout(sample, 20);
  }

  #stopSession() {
    this.#open = false;
    if (this.#pingTimer) clearTimeout(this.#pingTimer);
    this.#pingTimer = null;
  }

  /**
   * The connection ended (or could not be opened): reconnect or stop.
   * @param {number | null} code
   * @param {string} reason
   */
  #ended(code, reason) {
    this.#stopSession();
    if (this.#stopped) return;
    this.#failAll(new FerryError('disconnected', `connection lost before the reply: ${reason}`));
    if (!closeCodeReconnects(code)) {
      this.#stopped = true;
      this.emit('closed', { code, reason });
      return;
    }
    this.#attempt += 1;
    const max = this.#opts.maxReconnectAttempts;
    const giveUp = max !== null && this.#attempt > max;
    this.emit('disconnected', { code, reason, reconnecting: !giveUp });
    if (giveUp) {
      this.#stopped = true;
      this.emit('closed', { code, reason });
      return;
    }
    this.#urlIndex += 1;
    this.#backingOff = true;
    const delay = backoffDelay(this.#attempt, this.#opts.minBackoffMs, this.#opts.maxBackoffMs);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#backingOff = false;
      if (!this.#stopped) this.#dial();
    }, delay);
  }

  /** @param {string} text */
  #onFrame(text) {
    for (const line of splitFrame(text)) {
      /** @type {any} */
      let frame;
      try {
        frame = JSON.parse(line);
      } catch {
        console.warn('ferry: unparseable server frame', line.slice(0, 200));
        continue;
      }
      if (frame && typeof frame === 'object' && typeof frame.id === 'number') this.#onReply(frame);
      else if (frame && typeof frame === 'object' && typeof frame.push === 'string') this.#onPush(frame);
      if (!this.#open) return; // a handler ended the session
    }
  }

  /** @param {import('./protocol.js').Reply} frame */
  #onReply(frame) {
    const entry = this.#inFlight.get(frame.id);
    if (!entry) return;
    this.#inFlight.delete(frame.id);
    const error = frame.error ?? null;
    switch (entry.kind) {
      case 'clock': {
        const received = this.#opts.now();
        const ok = frame.ok;
        if (ok && typeof ok.server_recv === 'number' && entry.sent !== undefined) {
          this.#clock.addSample(entry.sent, ok.server_recv, ok.server_send, received);
        }
        break;
      }
      case 'join': {
        if (!error && frame.ok) {
          /** @type {JoinReply} */
          const reply = frame.ok;
          this.#tracker.joined(reply, entry.since ?? null, false);
          this.emit('joined', { room: reply.room, reply });
        } else if (error && error.code !== ErrorCode.already_joined && entry.room) {
          this.#tracker.joinFailed(entry.room);
        }
        break;
      }
      case 'rejoin': {
        const room = entry.room ?? '';
        if (!error && frame.ok) {
          /** @type {JoinReply} */
          const reply = frame.ok;
          this.#tracker.joined(reply, entry.since ?? null, true);
          this.emit('joined', { room, reply });
        } else if (error && isTemporaryError(error.code)) {
          this.#restart(`rejoin ${room}: ${error.message}`);
          return;
        } else if (error) {
          this.#tracker.forget(room);
          this.emit('removed', { room, code: error.code, reason: error.message });
        }
        return;
      }
      default:
        break;
    }
    if (error) this.#settle(entry, new FerryError('server', `server error ${error.code}: ${error.message}`, error));
    else this.#settle(entry, { ok: frame.ok });
  }

  /**
   * End this connection and reconnect (a rejoin got a temporary refusal).
   * @param {string} reason
   */
  #restart(reason) {
    const ws = this.#ws;
    this.#ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000, 'reconnecting');
    this.#ended(null, reason);
  }

  /** @param {import('./protocol.js').Push} push */
  #onPush(push) {
    switch (push.push) {
      case 'connected':
        this.#attempt = 0;
        this.#connects += 1;
        this.#identity = { node: push.node, user: push.user };
        this.#clock.addRough(push.server_time, this.#opts.now());
        this.emit('connected', {
          node: push.node,
          user: push.user,
          serverTime: push.server_time,
          version: push.version,
          lang: push.lang ?? null,
        });
        break;
      case 'event': {
        const verdict = this.#tracker.event(push.room, push.epoch, push.offset);
        if (verdict === 'deliver' || verdict === 'gap') {
          this.emit('event', {
            room: push.room,
            position: { epoch: push.epoch, offset: push.offset },
            event: push.event,
          });
        }
        break;
      }
      case 'viewers':
        this.emit('viewers', { room: push.room, count: push.count });
        break;
      case 'left':
        this.#tracker.forget(push.room);
        this.emit('removed', { room: push.room, code: push.code, reason: push.reason });
        break;
      default:
        break;
    }
  }
}
