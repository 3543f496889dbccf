// @ts-check
/**
 * @file The Ferry browser SDK: import everything from here.
 *
 * ```js
 * import { FerryClient, Showcase, BuyPress, WhepPlayer } from '/sdk/ferry.js';
 * ```
 *
 * Modules: `client.js` (the room client), `chat.js` (translated chat, moderator queue),
 * `sales.js` (showcase, countdown, money, Buy, the stock version rule), `http.js` (sale and
 * room-sales reads over HTTP), `video.js` (WHIP publish, WHEP play, stats, `Link` ICE
 * servers), `protocol.js` (wire types and codes), and the
 * pure helpers `clock.js`, `stream.js`, `backoff.js`, `token.js`. docs/browser-sdk.md is the
 * reference.
 */

export { FerryClient, FerryError } from './client.js';
export { Emitter } from './emitter.js';
export {
  PROTOCOL_VERSION, ErrorCode, CloseCode, closeCodeReconnects, isTemporaryError, splitFrame,
  isValidRoomId, normalizeLang,
} from './protocol.js';
export { ChatLog, ModerationQueue, MyHeldComments, shownText, productText, describeRule } from './chat.js';
export { HttpClient, HttpError, roomSalesQuery } from './http.js';
export { ClockSync, CLOCK_SAMPLES } from './clock.js';
export { StreamTracker } from './stream.js';
export { backoffDelay } from './backoff.js';
export { tokenClaims } from './token.js';
export {
  newIdempotencyKey, offerFor, minorDigits, formatMoney, parseYuan, formatCountdown, salePhase, Showcase,
  buyAnswerOf, BuyPress, describeBuyAnswer, compareStock, applyStock,
} from './sales.js';
export {
  WhipPublisher, WhepPlayer, IceSessionResource, VideoSessionError, trickleFragment,
  readVideoStats, iceServersFromLink,
} from './video.js';
