// @ts-check
/**
 * @file Flash sales in the browser: the room's showcase (pinned product and current sale, kept
 * up to date from the join state and sale events), the sale's phase and countdown on the
 * server's clock, money formatting, per-market offers, and the Buy press (one idempotency key
 * per press, reused on every retry, with every answer mapped to a value).
 *
 * Everything here except `BuyPress.send` is pure: fed state, events and the server time.
 */

import { FerryError } from './client.js';

/** @typedef {import('./protocol.js').Money} Money */
/** @typedef {import('./protocol.js').MarketOffer} MarketOffer */
/** @typedef {import('./protocol.js').ProductView} ProductView */
/** @typedef {import('./protocol.js').SaleView} SaleView */
/** @typedef {import('./protocol.js').SaleStock} SaleStock */
/** @typedef {import('./protocol.js').PinnedProduct} PinnedProduct */
/** @typedef {import('./protocol.js').RoomState} RoomState */
/** @typedef {import('./protocol.js').RoomEvent} RoomEvent */
/** @typedef {import('./protocol.js').ReservationView} ReservationView */

/**
 * A fresh idempotency key for one Buy press: 128 random bits in hex, like the Rust SDK's
 * `new_idempotency_key()`.
 * @returns {string}
 */
export function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------------------------------------
// Offers and money

/**
 * The offer of `market` for a product or sale, available or not; null when the server has no
 * currency for the market (or the token has no market).
 * @param {{markets: Record<string, MarketOffer>}} view a ProductView or SaleView
 * @param {string | null | undefined} market
 * @returns {MarketOffer | null}
 */
export function offerFor(view, market) {
  if (!market) return null;
  return Object.prototype.hasOwnProperty.call(view.markets, market) ? view.markets[market] : null;
}

/**
 * How many minor units a currency has per major unit, per the browser's currency data
 * (USD 2, JPY 0, KWD 3). The server converts with the digits configured per market, which
 * should agree.
 * @param {string} currency ISO 4217 code
 */
export function minorDigits(currency) {
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions()
      .maximumFractionDigits ?? 2;
  } catch {
    return 2;
  }
}

/**
 * Format an amount for people: `{currency: 'USD', minor: 818}` → `$8.18` (in `locale`).
 * Integer arithmetic up to the final division, so no price is ever rounded wrong.
 * @param {Money} money
 * @param {string | string[]} [locale] BCP 47 locale(s); the browser's by default
 * @returns {string}
 */
export function formatMoney(money, locale) {
  const digits = minorDigits(money.currency);
  const value = money.minor / 10 ** digits;
  try {
    return new Intl.NumberFormat(locale, {
      style: 'currency',
      currency: money.currency,
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    }).format(value);
  } catch {
    return `${value.toFixed(digits)} ${money.currency}`;
  }
}

/**
 * Parse a CNY amount typed by a person (`59`, `59.9`, `59.90`, `59,90`) into fen, without
 * floating point; null if it is not one.
 * @param {string} text
 * @returns {number | null}
 */
export function parseYuan(text) {
  const m = /^\s*(\d{1,9})(?:[.,](\d{0,2}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] ?? '').padEnd(2, '0'));
}

/**
 * Milliseconds as a countdown: `9` → `0:09`, `65_000` → `1:05`, `3_723_000` → `1:02:03`.
 * Rounds up, so "0:00" is shown only once the instant has passed.
 * @param {number} ms
 */
export function formatCountdown(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

// ---------------------------------------------------------------------------------------------
// The sale's phase on the server clock

/**
 * @typedef {object} SalePhase
 * @property {'scheduled' | 'open' | 'sold_out' | 'ended'} phase
 * @property {number} msToStart until `starts_at` (≤ 0 once started)
 * @property {number} msToEnd until `ends_at` (≤ 0 once past)
 * @property {boolean} canBuy whether a Buy press makes sense now
 */

/**
 * Where a sale is at server time `serverNow`. The start and end are derived from `starts_at`
 * and `ends_at` with the clock offset (the events may arrive after the instant: buys are
 * admitted from `starts_at` exactly); `sold_out` and an early `ended` come from the sale's
 * status as the latest event reported it.
 * @param {SaleView} sale
 * @param {number} serverNow server time, Unix ms (`client.serverNow()`)
 * @returns {SalePhase}
 */
export function salePhase(sale, serverNow) {
  const msToStart = sale.starts_at - serverNow;
  const msToEnd = sale.ends_at - serverNow;
  /** @type {SalePhase['phase']} */
  let phase;
  if (sale.status === 'ended' || msToEnd <= 0) phase = 'ended';
  else if (msToStart > 0) phase = 'scheduled';
  else if (sale.status === 'sold_out' || sale.remaining === 0) phase = 'sold_out';
  else phase = 'open';
  return { phase, msToStart, msToEnd, canBuy: phase === 'open' };
}

// ---------------------------------------------------------------------------------------------
// Stock objects: which is newer (protocol.md "Applying stock objects")

/**
 * Where a status sits in a sale's life: `scheduled` (0) before `open`/`sold_out` (1) before
 * `ended` (2).
 * @param {SaleView['status']} status
 */
function statusPhase(status) {
  return status === 'scheduled' ? 0 : status === 'ended' ? 2 : 1;
}

/**
 * Compare two stock objects of one sale by age: `ended` is final; otherwise a higher
 * `version` is newer; at the same version (same counters) the later status in the sale's life
 * is newer. Mirrors `stock_order` in `client-sdk/src/protocol/commerce.rs`.
 * @param {{version?: number, status: SaleView['status']}} a
 * @param {{version?: number, status: SaleView['status']}} b
 * @returns {number} > 0 when `a` is newer than `b`, 0 when the same, < 0 when older
 */
export function compareStock(a, b) {
  const endedA = a.status === 'ended' ? 1 : 0;
  const endedB = b.status === 'ended' ? 1 : 0;
  if (endedA !== endedB) return endedA - endedB;
  const versionA = a.version ?? 0;
  const versionB = b.version ?? 0;
  if (versionA !== versionB) return versionA - versionB;
  return statusPhase(a.status) - statusPhase(b.status);
}

/**
 * Apply a stock object (`sale_started`, `sale_stock`, `sale_sold_out`, `sale_ended`) to a
 * sale view: only one of this sale, and only when it is newer than what the view holds
 * (`compareStock`); an older one delivered late (built on another node) is ignored. Returns
 * the updated view, or null when nothing changes. Mirrors `SaleView::apply_stock`.
 * @param {SaleView} view
 * @param {SaleStock} stock
 * @returns {SaleView | null}
 */
export function applyStock(view, stock) {
  if (stock.sale !== view.id || compareStock(stock, view) <= 0) return null;
  return { ...view, remaining: stock.remaining, status: stock.status, version: stock.version ?? 0 };
}

// ---------------------------------------------------------------------------------------------
// The showcase: what a room shows above the chat

/**
 * A room's pinned product and current sale, kept up to date from the join reply's state and
 * the room's events. Sale events after `sale_scheduled` carry only the counters
 * (`sale_started`, `sale_stock`, `sale_sold_out`, `sale_ended`): they are patched into the
 * known sale when they are newer (`applyStock`: an older update never overwrites a newer
 * one). Counters of a sale this showcase has no view of (it was scheduled before this
 * client joined, and another sale's event replaced it in the state) set `missingSale`: fetch
 * `GET /api/sales/{id}` and pass the view to `setSale`.
 */
export class Showcase {
  /** @type {PinnedProduct | null} */
  pinned = null;
  /** @type {SaleView | null} */
  sale = null;
  /** @type {string | null} a sale id whose view is needed (see the class doc) */
  missingSale = null;

  /**
   * Reset from a join reply's state (a fresh join, or a resume answered `recovered: false`).
   * @param {RoomState} state
   */
  reset(state) {
    this.pinned = state.product ?? null;
    this.sale = state.sale ? { ...state.sale } : null;
    this.missingSale = null;
  }

  /**
   * Apply a room event; returns whether the showcase changed.
   * @param {RoomEvent} event
   * @returns {boolean}
   */
  apply(event) {
    switch (event.type) {
      case 'product_pinned':
        this.pinned = event.pinned;
        return true;
      case 'product_unpinned':
        this.pinned = null;
        return true;
      case 'sale_scheduled':
        this.sale = { ...event.sale };
        if (this.missingSale === event.sale.id) this.missingSale = null;
        return true;
      case 'sale_started':
      case 'sale_stock':
      case 'sale_sold_out':
      case 'sale_ended':
        return this.#patch(event.stock);
      default:
        return false;
    }
  }

  /**
   * Set a sale view fetched over HTTP (after `missingSale`) or returned by `startSale` /
   * `endSale`. For the sale already held, counters newer than the view's are kept.
   * @param {SaleView} sale
   */
  setSale(sale) {
    if (this.sale && this.sale.id !== sale.id && this.missingSale !== sale.id) return;
    const held = this.sale;
    this.sale = held && held.id === sale.id && compareStock(held, sale) > 0
      ? { ...sale, remaining: held.remaining, status: held.status, version: held.version ?? 0 }
      : { ...sale };
    if (this.missingSale === sale.id) this.missingSale = null;
  }

  /** @param {SaleStock} stock */
  #patch(stock) {
    if (!this.sale || this.sale.id !== stock.sale) {
      this.missingSale = stock.sale;
      return false;
    }
    const next = applyStock(this.sale, stock);
    if (!next) return false;
    this.sale = { ...next, quantity: stock.quantity };
    return true;
  }
}

// ---------------------------------------------------------------------------------------------
// Buying

/**
 * Every answer a Buy press can get, as a value.
 * @typedef {{kind: 'reserved', reservation: ReservationView, replayed: boolean}
 *   | {kind: 'sold_out', message: string}
 *   | {kind: 'limit_reached', message: string}
 *   | {kind: 'sale_not_started', message: string, retryAfterMs: number}
 *   | {kind: 'sale_ended', message: string}
 *   | {kind: 'not_in_market', message: string}
 *   | {kind: 'idempotency_conflict', message: string}
 *   | {kind: 'unavailable', message: string, retryAfterMs: number}
 *   | {kind: 'error', message: string, error: FerryError}} BuyAnswer
 */

/**
 * Map a `buy` refusal to a `BuyAnswer`.
 * @param {unknown} error what `client.buy` threw
 * @returns {BuyAnswer}
 */
export function buyAnswerOf(error) {
  const e = error instanceof FerryError
    ? error
    : new FerryError('protocol', error instanceof Error ? error.message : String(error));
  const message = e.serverMessage;
  switch (e.errorName) {
    case 'sold_out':
    case 'limit_reached':
    case 'sale_ended':
    case 'not_in_market':
    case 'idempotency_conflict':
      return { kind: e.errorName, message };
    case 'sale_not_started':
      return { kind: 'sale_not_started', message, retryAfterMs: e.retryAfterMs ?? 1000 };
    case 'unavailable':
      return { kind: 'unavailable', message, retryAfterMs: e.retryAfterMs ?? 1000 };
    default:
      return { kind: 'error', message, error: e };
  }
}

/**
 * @typedef {object} BuyPressOptions
 * @property {number} [quantity] units (1 by default)
 * @property {number} [maxAttempts] sends in all, retries included (5)
 * @property {number} [maxNotStartedWaitMs] wait out `sale_not_started` and retry when the start
 *   is at most this far away (3 s): a press a few milliseconds early still buys, with the
 *   same key
 * @property {(answer: BuyAnswer, attempt: number) => void} [onRetry] called before each retry
 */

/**
 * One press of a Buy button. It holds one idempotency key, used for every retry of this
 * press, so a retried request (after `unavailable`, a dropped connection or a timeout) can
 * never reserve twice. Make a new `BuyPress` for each press; disable the button while one is
 * being sent, so a double click is one press.
 */
export class BuyPress {
  /** The idempotency key of this press. */
  key = newIdempotencyKey();
  #client;
  #room;
  #sale;
  #opts;

  /**
   * @param {import('./client.js').FerryClient} client
   * @param {string} room
   * @param {string} sale sale id
   * @param {BuyPressOptions} [options]
   */
  constructor(client, room, sale, options = {}) {
    this.#client = client;
    this.#room = room;
    this.#sale = sale;
    this.#opts = {
      quantity: options.quantity ?? 1,
      maxAttempts: Math.max(1, options.maxAttempts ?? 5),
      maxNotStartedWaitMs: options.maxNotStartedWaitMs ?? 3000,
      onRetry: options.onRetry ?? (() => {}),
    };
  }

  get quantity() {
    return this.#opts.quantity;
  }

  /**
   * Send the press, retrying with the same key while the answer is temporary, and resolve
   * with the final answer (never rejects).
   * @returns {Promise<BuyAnswer>}
   */
  async send() {
    /** @type {BuyAnswer} */
    let answer = { kind: 'error', message: 'not sent', error: new FerryError('protocol', 'not sent') };
    for (let attempt = 1; attempt <= this.#opts.maxAttempts; attempt++) {
      try {
        const reply = await this.#client.buy(this.#room, this.#sale, this.#opts.quantity, this.key);
        return { kind: 'reserved', reservation: reply.reservation, replayed: reply.replayed };
      } catch (error) {
        answer = buyAnswerOf(error);
      }
      const wait = this.#retryDelay(answer, attempt);
      if (wait === null || attempt === this.#opts.maxAttempts) return answer;
      this.#opts.onRetry(answer, attempt);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    return answer;
  }

  /**
   * How long to wait before retrying after `answer`, or null when it is final.
   * @param {BuyAnswer} answer
   * @param {number} attempt
   * @returns {number | null}
   */
  #retryDelay(answer, attempt) {
    switch (answer.kind) {
      case 'sale_not_started':
        return answer.retryAfterMs <= this.#opts.maxNotStartedWaitMs ? answer.retryAfterMs : null;
      case 'unavailable':
        return answer.retryAfterMs;
      case 'error':
        // A lost connection or a timeout: the outcome is unknown, so retry with the same key
        // (a replay returns the reservation if the first attempt made one).
        return answer.error.retryable ? Math.min(200 * 2 ** (attempt - 1), 2000) : null;
      default:
        return null;
    }
  }
}

/**
 * What a buyer should read for an answer: one short sentence.
 * @param {BuyAnswer} answer
 * @param {{locale?: string | string[], msUntil?: (serverTimeMs: number) => number}} [how]
 * @returns {string}
 */
export function describeBuyAnswer(answer, how = {}) {
  switch (answer.kind) {
    case 'reserved': {
      const r = answer.reservation;
      const left = how.msUntil ? ` within ${formatCountdown(how.msUntil(r.deadline))}` : '';
      return `Reserved ${r.quantity} for ${formatMoney(r.amount_display, how.locale)}${answer.replayed ? ' (already reserved by this press)' : ''}. Pay${left} to keep it.`;
    }
    case 'sold_out':
      return 'Sold out. Units may come back if a hold lapses.';
    case 'limit_reached':
      return `You have reached this sale's limit per buyer: ${answer.message}.`;
    case 'sale_not_started':
      return `The sale has not started yet: try again in ${formatCountdown(answer.retryAfterMs)}.`;
    case 'sale_ended':
      return 'This sale has ended.';
    case 'not_in_market':
      return 'This product is not sold in your market.';
    case 'idempotency_conflict':
      return 'This press was already used for a different quantity.';
    case 'unavailable':
      return 'The shop is busy: please try again in a moment.';
    default:
      return `Could not buy: ${answer.message}`;
  }
}
