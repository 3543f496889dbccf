// @ts-check
/**
 * @file The Ferry wire protocol, version 1, as the browser SDK sees it: JSDoc types of every
 * frame, the error and close code ranges, and frame splitting.
 *
 * This module mirrors `client-sdk/src/protocol.rs` (the one definition of the protocol) and
 * `docs/protocol.md`; it holds no state and does no I/O. When the Rust definition changes,
 * change the types here in the same commit.
 */

/** Protocol version this SDK speaks (the `version` of the `connected` push). */
export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------------------------------------
// Shared shapes

/**
 * A position in a room's event stream: the last event seen.
 * @typedef {{epoch: string, offset: number}} StreamPosition
 */

/** @typedef {'viewer' | 'host' | 'moderator' | 'admin'} Role */

/**
 * How a user appears in room events (no personal data beyond the display name).
 * @typedef {{id: string, name: string, role: Role}} UserRef
 */

/** @typedef {{text: string, by: UserRef}} Pinned */

// ---------------------------------------------------------------------------------------------
// Translation and moderation shapes (client-sdk/src/protocol/translation.rs, protocol.md §14)

/**
 * Translations of one text, keyed by language code (`en`, `zh`...). On the wire a connection
 * receives at most the entry of its own language.
 * @typedef {Record<string, string>} Translations
 */

/** @typedef {'green' | 'yellow' | 'red'} Severity */

/**
 * The moderation rule a text matched: in `moderation_blocked` errors, `pending` replies and
 * held comments.
 * @typedef {object} RuleRef
 * @property {string} market Market whose rule set holds the rule (`ae`, `us`...).
 * @property {string} rule The rule's id (`alcohol`, `counterfeit`...).
 * @property {Severity} severity
 * @property {string} label Human-readable description, for the sender or the moderator.
 */

/**
 * A comment waiting in the moderator queue (staff see it in full).
 * @typedef {object} HeldComment
 * @property {string} id Queue id, for `approve_comment` / `reject_comment`.
 * @property {UserRef} user Who wrote it.
 * @property {string} text
 * @property {string} [lang] Detected source language.
 * @property {Translations} [translations] The translation into the staff member's language,
 *   when it was ready when the comment was held.
 * @property {RuleRef} rule Why it was held.
 * @property {number} at Server time (Unix ms) when it was held.
 */

/**
 * Where a held comment waits, as its sender sees it (the `pending` reply to `comment`).
 * @typedef {{id: string, rule: RuleRef}} PendingComment
 */

/** @typedef {{pending: PendingComment}} PendingReply */

/** Reply to `moderation_queue`: the room's held comments, oldest first. */
/** @typedef {{held: HeldComment[]}} QueueReply */

/**
 * A product's title and description in one language (server-translated through the merchant's
 * glossary).
 * @typedef {{title: string, description: string}} ProductText
 */

// ---------------------------------------------------------------------------------------------
// Commerce shapes (client-sdk/src/protocol/commerce.rs)

/**
 * An amount of money in a currency's minor units (cents, fen). Never a float.
 * @typedef {{currency: string, minor: number}} Money
 */

/**
 * What a product or sale costs in one market, in that market's display currency.
 * @typedef {object} MarketOffer
 * @property {boolean} available Whether buyers from this market may buy.
 * @property {Money} price
 * @property {Money} tax_estimate Buyer-paid tax estimate (display only).
 * @property {Money} shipping_estimate
 */

/**
 * A product as viewers see it.
 * @typedef {object} ProductView
 * @property {string} id
 * @property {string} title In the merchant's language (`lang`).
 * @property {string} description
 * @property {string} image_url
 * @property {string} lang
 * @property {number} price_cny List price in CNY fen.
 * @property {Record<string, MarketOffer>} markets One offer per configured market.
 * @property {string} fx_date Date of the FX rates (`YYYY-MM-DD`).
 * @property {Record<string, ProductText>} [translations] Title and description per language
 *   of the markets the product is sold in (absent: not translated).
 */

/** @typedef {'scheduled' | 'open' | 'sold_out' | 'ended'} SaleStatus */

/**
 * A flash sale as viewers see it. `starts_at` and `ends_at` are server time (Unix ms).
 * @typedef {object} SaleView
 * @property {string} id
 * @property {string} room
 * @property {ProductView} product
 * @property {number} quantity
 * @property {number} remaining Units neither reserved nor sold when this view was built.
 * @property {number} price_cny Sale price per unit, CNY fen.
 * @property {Record<string, MarketOffer>} markets Offers at the sale price.
 * @property {number} per_buyer_limit
 * @property {number} starts_at
 * @property {number} ends_at
 * @property {number} hold_secs
 * @property {SaleStatus} status
 * @property {number} [version] The sale's change sequence when `remaining` was read: a stock
 *   object with a lower version is older than this view (`applyStock` in sales.js). Absent
 *   (0) from servers without versions.
 */

/**
 * A sale's counters, as `sale_started`, `sale_stock`, `sale_sold_out` and `sale_ended` carry
 * them. `version` orders them: events built on different nodes can arrive out of order.
 * @typedef {{sale: string, quantity: number, remaining: number, status: SaleStatus, version?: number}} SaleStock
 */

/**
 * `GET /api/rooms/{room}/sales`: one page of a room's sales, newest first. Pass `next` as
 * `before` for the next (older) page; null on the last page.
 * @typedef {{sales: SaleView[], next: number | null}} RoomSalesPage
 */

/**
 * `GET /api/sales/{id}`: a sale with live stock, and the server's clock when it answered.
 * @typedef {{sale: SaleView, server_time: number}} SaleLookup
 */

/**
 * What a host sends to launch a sale (`start_sale`). Give `starts_at` or `starts_in_secs`, not
 * both; neither starts the sale now.
 * @typedef {object} SaleSpec
 * @property {string} product
 * @property {number} quantity
 * @property {number} price_cny Sale price per unit in CNY fen.
 * @property {number} [per_buyer_limit]
 * @property {number} [starts_at] Absolute start, server Unix ms.
 * @property {number} [starts_in_secs] Countdown in seconds.
 * @property {number} duration_secs
 * @property {number} [hold_secs]
 */

/** @typedef {'reserved' | 'confirmed' | 'released'} ReservationState */

/**
 * @typedef {object} ReservationView
 * @property {string} id
 * @property {string} sale
 * @property {number} quantity
 * @property {number} amount_cny What the buyer pays, CNY fen.
 * @property {Money} amount_display The same amount in the buyer's market currency.
 * @property {string} market
 * @property {number} deadline Server time (Unix ms) by which payment must be confirmed.
 * @property {ReservationState} state
 */

/** @typedef {{reservation: ReservationView, replayed: boolean}} ReservationReply */

/** @typedef {{product: ProductView, by: UserRef}} PinnedProduct */

/** @typedef {{sale: string, market: string, count: number}} PurchaseNotice */

// ---------------------------------------------------------------------------------------------
// Replies

/**
 * A room's state, sent on join so late joiners need no history.
 * @typedef {object} RoomState
 * @property {string} title
 * @property {number} viewers
 * @property {number} likes
 * @property {Pinned} [pinned]
 * @property {number} slow_mode_secs
 * @property {boolean} closed
 * @property {PinnedProduct} [product] The product pinned in the showcase.
 * @property {SaleView} [sale] The sale of the room's latest sale event.
 * @property {boolean} [live] The host's video is live: play it with WHEP (`POST /whep/{room}`).
 * @property {HeldComment[]} [held] The moderator queue, oldest first: staff only (absent for
 *   viewers, and when empty).
 */

/**
 * Reply to `join`. With `recovered: true` the `missed` events follow, in order.
 * @typedef {object} JoinReply
 * @property {string} room
 * @property {StreamPosition} position
 * @property {boolean} [recovered] Present when the join carried `since`.
 * @property {number} missed
 * @property {RoomState} state
 */

/** @typedef {{position: StreamPosition}} PublishReply */

/** @typedef {{t?: number, server_recv: number, server_send: number}} PongReply */

/**
 * A command error. `retry_after_ms` is present exactly for temporary errors (1500–1999);
 * `rule` for `moderation_blocked` (1019): the rule the text broke.
 * @typedef {{code: number, name: string, message: string, retry_after_ms?: number, rule?: RuleRef}} ErrorBody
 */

// ---------------------------------------------------------------------------------------------
// Room events (the `event` of an `event` push)

/**
 * @typedef {{type: 'comment', user: UserRef, text: string, lang?: string, translations?: Translations, held_id?: string}} CommentEvent
 * @typedef {{type: 'likes', count: number}} LikesEvent
 * @typedef {{type: 'joined', count: number, sample: UserRef[]}} JoinedEvent
 * @typedef {{type: 'left', count: number, sample: UserRef[]}} LeftEvent
 * @typedef {{type: 'announcement', user: UserRef, text: string, lang?: string, translations?: Translations}} AnnouncementEvent
 * @typedef {{type: 'pinned', pinned: Pinned}} PinnedEvent
 * @typedef {{type: 'unpinned', by: UserRef}} UnpinnedEvent
 * @typedef {{type: 'comment_deleted', offset: number, by: UserRef}} CommentDeletedEvent
 * @typedef {{type: 'user_muted', user: string, until?: number, by: UserRef}} UserMutedEvent
 * @typedef {{type: 'user_unmuted', user: string, by: UserRef}} UserUnmutedEvent
 * @typedef {{type: 'user_banned', user: string, by: UserRef}} UserBannedEvent
 * @typedef {{type: 'slow_mode', seconds: number, by: UserRef}} SlowModeEvent
 * @typedef {{type: 'room_closed'}} RoomClosedEvent
 * @typedef {{type: 'product_pinned', pinned: PinnedProduct}} ProductPinnedEvent
 * @typedef {{type: 'product_unpinned', by: UserRef}} ProductUnpinnedEvent
 * @typedef {{type: 'sale_scheduled', sale: SaleView}} SaleScheduledEvent
 * @typedef {{type: 'sale_started', stock: SaleStock}} SaleStartedEvent
 * @typedef {{type: 'sale_stock', stock: SaleStock}} SaleStockEvent
 * @typedef {{type: 'sale_sold_out', stock: SaleStock}} SaleSoldOutEvent
 * @typedef {{type: 'sale_ended', stock: SaleStock}} SaleEndedEvent
 * @typedef {{type: 'purchase', notice: PurchaseNotice}} PurchaseEvent
 * @typedef {{type: 'stream_started', by: UserRef}} StreamStartedEvent
 * @typedef {'left' | 'timeout' | 'replaced' | 'shutdown'} StreamEndReason
 * @typedef {{type: 'stream_ended', reason: StreamEndReason}} StreamEndedEvent
 * @typedef {{type: 'translation', offset: number, translations: Translations}} TranslationEvent
 * @typedef {{type: 'comment_held', id: string, held?: HeldComment}} CommentHeldEvent
 * @typedef {{type: 'comment_rejected', id: string, by: UserRef}} CommentRejectedEvent
 */

/**
 * Every room event this SDK knows. Events of a newer server that this list lacks still reach
 * `'event'` handlers, with their `type`.
 * @typedef {CommentEvent | LikesEvent | JoinedEvent | LeftEvent | AnnouncementEvent | PinnedEvent
 *   | UnpinnedEvent | CommentDeletedEvent | UserMutedEvent | UserUnmutedEvent | UserBannedEvent
 *   | SlowModeEvent | RoomClosedEvent | ProductPinnedEvent | ProductUnpinnedEvent
 *   | SaleScheduledEvent | SaleStartedEvent | SaleStockEvent | SaleSoldOutEvent | SaleEndedEvent
 *   | PurchaseEvent | StreamStartedEvent | StreamEndedEvent | TranslationEvent | CommentHeldEvent
 *   | CommentRejectedEvent} RoomEvent
 */

/** @typedef {RoomEvent['type']} RoomEventType */

// ---------------------------------------------------------------------------------------------
// Server frames

/**
 * @typedef {{push: 'connected', version: number, node: string, user: UserRef, server_time: number, lang?: string}} ConnectedPush
 * @typedef {{push: 'event', room: string, epoch: string, offset: number, event: RoomEvent}} EventPush
 * @typedef {{push: 'viewers', room: string, count: number}} ViewersPush
 * @typedef {{push: 'left', room: string, code: number, reason: string}} LeftPush
 * @typedef {ConnectedPush | EventPush | ViewersPush | LeftPush} Push
 * @typedef {{id: number, ok?: any, error?: ErrorBody}} Reply
 */

// ---------------------------------------------------------------------------------------------
// Codes

/** Error codes by wire name (docs/protocol.md section 9). */
export const ErrorCode = Object.freeze({
  bad_request: 1000,
  unknown_command: 1001,
  not_joined: 1002,
  forbidden: 1003,
  room_not_found: 1004,
  invalid_comment: 1005,
  muted: 1006,
  too_many_rooms: 1007,
  already_joined: 1008,
  room_closed: 1009,
  internal: 1010,
  sold_out: 1011,
  limit_reached: 1012,
  sale_ended: 1013,
  not_in_market: 1014,
  not_found: 1015,
  idempotency_conflict: 1016,
  reservation_final: 1017,
  unsupported_language: 1018,
  moderation_blocked: 1019,
  not_held: 1020,
  rate_limited: 1500,
  slow_mode: 1501,
  join_rate_limited: 1502,
  unavailable: 1503,
  sale_not_started: 1504,
  moderation_queue_full: 1505,
});

/**
 * Temporary errors (1500–1999): the same command may succeed after `retry_after_ms`.
 * @param {number} code
 */
export function isTemporaryError(code) {
  return code >= 1500 && code < 2000;
}

/** Close codes by meaning (docs/protocol.md section 10). */
export const CloseCode = Object.freeze({
  shutdown: 3000,
  slow_consumer: 3001,
  heartbeat_timeout: 3002,
  write_timeout: 3003,
  stream_gap: 3004,
  node_full: 3005,
  internal_error: 3006,
  invalid_token: 3500,
  token_expired: 3501,
  bad_request: 3502,
  forbidden: 3503,
  message_too_big: 3504,
  flood: 3505,
  banned: 3506,
});

/**
 * Whether a client should reconnect (and resume) after the server closed with `code`:
 * 3000–3499 and 4000–4499 yes, 3500–3999 and 4500–4999 never (terminal), and of the
 * standard codes all but 1002, 1003, 1007, 1008, 1009 and 1010. `null` (no close frame: the
 * network dropped, browsers report 1006) reconnects.
 * @param {number | null} code
 * @returns {boolean}
 */
export function closeCodeReconnects(code) {
  if (code === null) return true;
  if ((code >= 3000 && code <= 3499) || (code >= 4000 && code <= 4499)) return true;
  if ((code >= 3500 && code <= 3999) || (code >= 4500 && code <= 4999)) return false;
  return ![1002, 1003, 1007, 1008, 1009, 1010].includes(code);
}

/**
 * Split a server text frame into its JSON objects (one per line, blank lines skipped).
 * @param {string} text
 * @returns {string[]}
 */
export function splitFrame(text) {
  return text.split('\n').filter((line) => line.trim() !== '');
}

/**
 * Whether a room id is valid: `[A-Za-z0-9_.:-]{1,64}`.
 * @param {string} room
 */
export function isValidRoomId(room) {
  return /^[A-Za-z0-9_.:-]{1,64}$/.test(room);
}

/**
 * Normalize a BCP 47 language tag the way the server does: its primary subtag, lowercase
 * (`en-US` → `en`, `zh_Hant_TW` → `zh`); null when the tag is not well-formed (primary subtag
 * of 2–3 letters, other subtags of 1–8 letters or digits). Mirrors `normalize_lang` in
 * `client-sdk/src/protocol/translation.rs`.
 * @param {string} tag
 * @returns {string | null}
 */
export function normalizeLang(tag) {
  const parts = tag.trim().split(/[-_]/);
  const primary = parts[0] ?? '';
  if (!/^[A-Za-z]{2,3}$/.test(primary)) return null;
  if (!parts.slice(1).every((p) => /^[A-Za-z0-9]{1,8}$/.test(p))) return null;
  return primary.toLowerCase();
}
