// @ts-check
/**
 * @file Stream positions per room: which rooms the client is in, where it is in each room's
 * stream, and the duplicate/gap bookkeeping. Pure, and the same rules as the Rust SDK:
 *
 * - a join without `since`, or answered `recovered: false`, starts at the reply's position;
 * - a join answered `recovered: true` keeps the `since` position: the missed events follow
 *   and move it on;
 * - an event at or below the last offset of the same epoch is a duplicate and is dropped;
 * - an event that skips offsets in the same epoch is delivered and counted as a gap (both
 *   counters must stay 0 against a correct server);
 * - an event of another epoch is delivered and starts the new epoch.
 */

/** @typedef {import('./protocol.js').StreamPosition} StreamPosition */
/** @typedef {import('./protocol.js').JoinReply} JoinReply */

/** @typedef {'deliver' | 'duplicate' | 'gap' | 'not_joined'} EventVerdict */

export class StreamTracker {
  /**
   * Rooms the client is in (or joining), with the last position seen (null while the first
   * join is in flight).
   * @type {Map<string, StreamPosition | null>}
   */
  #rooms = new Map();
  /** Events dropped because their offset was already seen (should stay 0). */
  duplicates = 0;
  /** Offsets skipped without a `recovered: false` (should stay 0). */
  gaps = 0;
  /** Rejoins answered `recovered: false`. */
  unrecovered = 0;
  /** Events delivered. */
  events = 0;

  /**
   * The application asked to join `room`: track it from now on (a reconnect rejoins it).
   * @param {string} room
   */
  joining(room) {
    if (!this.#rooms.has(room)) this.#rooms.set(room, null);
  }

  /**
   * A join reply arrived. `since` is the position the join resumed from, if any.
   * @param {JoinReply} reply
   * @param {StreamPosition | null} since
   * @param {boolean} rejoin true for the SDK's own rejoin after a reconnect
   */
  joined(reply, since, rejoin) {
    if (reply.recovered === true && since) {
      this.#rooms.set(reply.room, { ...since });
      return;
    }
    if (rejoin && reply.recovered === false) this.unrecovered += 1;
    this.#rooms.set(reply.room, { ...reply.position });
  }

  /**
   * A join failed: forget the room unless a position was already known for it (an
   * `already_joined` refusal, for example, must not drop a room we are in).
   * @param {string} room
   */
  joinFailed(room) {
    if (this.#rooms.get(room) === null) this.#rooms.delete(room);
  }

  /**
   * The room was left, or the server removed us: forget it (a reconnect will not rejoin it).
   * @param {string} room
   */
  forget(room) {
    this.#rooms.delete(room);
  }

  /**
   * Classify an `event` push and, unless it is a duplicate, advance the room's position.
   * `gap` events are delivered too.
   * @param {string} room
   * @param {string} epoch
   * @param {number} offset
   * @returns {EventVerdict}
   */
  event(room, epoch, offset) {
    if (!this.#rooms.has(room)) return 'not_joined';
    const last = this.#rooms.get(room) ?? null;
    /** @type {EventVerdict} */
    let verdict = 'deliver';
    if (last && last.epoch === epoch) {
      if (offset <= last.offset) {
        this.duplicates += 1;
        return 'duplicate';
      }
      if (offset !== last.offset + 1) {
        this.gaps += 1;
        verdict = 'gap';
      }
    }
    this.#rooms.set(room, { epoch, offset });
    this.events += 1;
    return verdict;
  }

  /**
   * @param {string} room
   * @returns {StreamPosition | null} the last position seen in `room`
   */
  position(room) {
    const p = this.#rooms.get(room);
    return p ? { ...p } : null;
  }

  /** @param {string} room */
  has(room) {
    return this.#rooms.has(room);
  }

  /** @returns {Array<[string, StreamPosition | null]>} every tracked room and its position */
  rooms() {
    return [...this.#rooms.entries()].map(([r, p]) => [r, p ? { ...p } : null]);
  }
}
