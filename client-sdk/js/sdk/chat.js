// @ts-check
/**
 * @file Translated chat and moderation in the browser, as pure state fed the join reply and
 * room events (protocol.md §14):
 *
 * - `ChatLog`: the comments and announcements on screen with their original text, source
 *   language and translations; a late `translation` event is merged into the comment at its
 *   `offset`, so the page replaces the text in place. `shownText` says what a reader of a
 *   language sees, with the original one tap away.
 * - `ModerationQueue`: the room's held comments for staff, from `state.held`, `comment_held`,
 *   `comment` with `held_id` (approved) and `comment_rejected`.
 * - `MyHeldComments`: the sender's own comments waiting for a moderator (the `pending` reply),
 *   resolved by the same events.
 *
 * No I/O: `client.js` sends the commands (`setLanguage`, `sendComment`, `approveComment`,
 * `rejectComment`, `moderationQueue`).
 */

/** @typedef {import('./protocol.js').RoomEvent} RoomEvent */
/** @typedef {import('./protocol.js').RoomState} RoomState */
/** @typedef {import('./protocol.js').UserRef} UserRef */
/** @typedef {import('./protocol.js').Translations} Translations */
/** @typedef {import('./protocol.js').HeldComment} HeldComment */
/** @typedef {import('./protocol.js').PendingComment} PendingComment */
/** @typedef {import('./protocol.js').RuleRef} RuleRef */
/** @typedef {import('./protocol.js').ProductView} ProductView */

/**
 * A comment or announcement as the chat keeps it.
 * @typedef {object} ChatEntry
 * @property {number} offset Its stream offset (the key of `translation` and `comment_deleted`).
 * @property {'comment' | 'announcement'} type
 * @property {UserRef} user
 * @property {string} text The original, always.
 * @property {string | null} lang Detected source language (null: unknown, or no words).
 * @property {Translations} translations Every translation received so far (with the event,
 *   then from `translation` events).
 * @property {string | null} heldId Set when a moderator approved it from the queue.
 * @property {boolean} deleted Hidden by a moderator (`comment_deleted`).
 */

/**
 * What a reader sees of a text: the translation into their language when there is one, with
 * the original a tap away.
 * @typedef {object} ShownText
 * @property {string} text What to show.
 * @property {boolean} translated Whether `text` is a translation.
 * @property {string} original The original text.
 * @property {string | null} sourceLang The original's language.
 * @property {string | null} textLang The language of `text` (for the `lang` attribute).
 */

/**
 * What a reader of `lang` sees of a text with `translations`: the translation into `lang`
 * when there is one (and the source is another language), else the original.
 * @param {{text: string, lang?: string | null, translations?: Translations | null}} item
 * @param {string | null | undefined} lang the reader's language (null: originals only)
 * @returns {ShownText}
 */
export function shownText(item, lang) {
  const sourceLang = item.lang ?? null;
  const translation = lang && lang !== sourceLang ? item.translations?.[lang] : undefined;
  if (translation !== undefined && translation !== '') {
    return { text: translation, translated: true, original: item.text, sourceLang, textLang: lang ?? null };
  }
  return { text: item.text, translated: false, original: item.text, sourceLang, textLang: sourceLang };
}

/**
 * A product's title and description in the reader's language when the server sent them
 * (`product.translations[lang]`), else the merchant's.
 * @param {ProductView} product
 * @param {string | null | undefined} lang
 * @returns {{title: string, description: string, lang: string, translated: boolean}}
 */
export function productText(product, lang) {
  const t = lang && lang !== product.lang ? product.translations?.[lang] : undefined;
  if (t && t.title) return { title: t.title, description: t.description ?? '', lang: lang ?? '', translated: true };
  return { title: product.title, description: product.description, lang: product.lang, translated: false };
}

/**
 * A change to the chat, for the page to render.
 * @typedef {{kind: 'added', entry: ChatEntry}
 *   | {kind: 'translated', entry: ChatEntry}
 *   | {kind: 'deleted', entry: ChatEntry | null, offset: number}} ChatChange
 */

/**
 * The comments and announcements of one room, in stream order, with their translations.
 * Keeps the last `maxEntries` (older ones can no longer be translated or deleted on screen,
 * which is also what the page shows).
 */
export class ChatLog {
  /** @type {Map<number, ChatEntry>} offset → entry, in insertion (stream) order */
  #entries = new Map();
  #max;

  /** @param {{maxEntries?: number}} [options] */
  constructor(options = {}) {
    this.#max = Math.max(1, options.maxEntries ?? 200);
  }

  /** Forget everything (a resume answered `recovered: false`, or a new room). */
  clear() {
    this.#entries.clear();
  }

  /** The entries, oldest first. */
  get entries() {
    return [...this.#entries.values()];
  }

  /** @param {number} offset */
  get(offset) {
    return this.#entries.get(offset) ?? null;
  }

  /**
   * Apply a room event at stream `offset`; returns what changed for the page, or null.
   * @param {RoomEvent} event
   * @param {number} offset
   * @returns {ChatChange | null}
   */
  apply(event, offset) {
    switch (event.type) {
      case 'comment':
      case 'announcement': {
        /** @type {ChatEntry} */
        const entry = {
          offset,
          type: event.type,
          user: event.user,
          text: event.text,
          lang: event.lang ?? null,
          translations: { ...(event.translations ?? {}) },
          heldId: event.type === 'comment' ? event.held_id ?? null : null,
          deleted: false,
        };
        this.#entries.set(offset, entry);
        while (this.#entries.size > this.#max) {
          const oldest = this.#entries.keys().next().value;
          if (oldest === undefined) break;
          this.#entries.delete(oldest);
        }
        return { kind: 'added', entry };
      }
      case 'translation': {
        const entry = this.#entries.get(event.offset);
        if (!entry) return null;
        let changed = false;
        for (const [lang, text] of Object.entries(event.translations ?? {})) {
          if (typeof text === 'string' && text !== '' && entry.translations[lang] !== text) {
            entry.translations[lang] = text;
            changed = true;
          }
        }
        return changed ? { kind: 'translated', entry } : null;
      }
      case 'comment_deleted': {
        const entry = this.#entries.get(event.offset) ?? null;
        if (entry) entry.deleted = true;
        return { kind: 'deleted', entry, offset: event.offset };
      }
      default:
        return null;
    }
  }
}

/**
 * The room's moderator queue as staff see it: oldest first, kept from the join reply's
 * `state.held` and the stream.
 */
export class ModerationQueue {
  /** @type {HeldComment[]} */
  held = [];

  /**
   * Reset from a join reply's state (a fresh join, or a resume answered `recovered: false`),
   * or from a `moderation_queue` reply.
   * @param {{held?: HeldComment[]}} state
   */
  reset(state) {
    this.held = [...(state.held ?? [])];
  }

  /**
   * Apply a room event; returns whether the queue changed.
   * @param {RoomEvent} event
   * @returns {boolean}
   */
  apply(event) {
    switch (event.type) {
      case 'comment_held': {
        // Viewers' connections get only the id: nothing to show a moderator.
        if (!event.held || this.held.some((h) => h.id === event.id)) return false;
        this.held.push(event.held);
        return true;
      }
      case 'comment':
        return event.held_id ? this.remove(event.held_id) : false;
      case 'comment_rejected':
        return this.remove(event.id);
      default:
        return false;
    }
  }

  /**
   * Take a comment off the queue (resolved, here or elsewhere).
   * @param {string} id
   * @returns {boolean} whether it was there
   */
  remove(id) {
    const before = this.held.length;
    this.held = this.held.filter((h) => h.id !== id);
    return this.held.length !== before;
  }

  /** @param {string} id */
  get(id) {
    return this.held.find((h) => h.id === id) ?? null;
  }
}

/**
 * One of the sender's own comments waiting for a moderator.
 * @typedef {{id: string, text: string, rule: RuleRef}} MyHeldComment
 */

/**
 * The sender's comments that were held (`pending` replies), until a moderator approves
 * (`comment` with their `held_id`) or rejects (`comment_rejected`) them. The events may
 * arrive before or after the reply; an outcome that arrives first is remembered briefly.
 */
export class MyHeldComments {
  /** @type {Map<string, MyHeldComment>} */
  #waiting = new Map();
  /** Outcomes of ids not (yet) known to be ours, most recent last (bounded). */
  /** @type {Map<string, 'approved' | 'rejected'>} */
  #early = new Map();

  /** The comments waiting, oldest first. */
  get waiting() {
    return [...this.#waiting.values()];
  }

  /**
   * Record a `pending` reply. Returns the outcome at once if the moderator was faster than
   * the reply.
   * @param {PendingComment} pending
   * @param {string} text what was sent
   * @returns {'approved' | 'rejected' | null}
   */
  add(pending, text) {
    const early = this.#early.get(pending.id) ?? null;
    if (early) {
      this.#early.delete(pending.id);
      return early;
    }
    this.#waiting.set(pending.id, { id: pending.id, text, rule: pending.rule });
    return null;
  }

  /**
   * Apply a room event; returns the resolved comment of ours and how, or null.
   * @param {RoomEvent} event
   * @returns {{comment: MyHeldComment, outcome: 'approved' | 'rejected'} | null}
   */
  apply(event) {
    /** @type {[string, 'approved' | 'rejected'] | null} */
    let resolved = null;
    if (event.type === 'comment' && event.held_id) resolved = [event.held_id, 'approved'];
    else if (event.type === 'comment_rejected') resolved = [event.id, 'rejected'];
    if (!resolved) return null;
    const [id, outcome] = resolved;
    const comment = this.#waiting.get(id);
    if (!comment) {
      this.#early.set(id, outcome);
      while (this.#early.size > 64) {
        const oldest = this.#early.keys().next().value;
        if (oldest === undefined) break;
        this.#early.delete(oldest);
      }
      return null;
    }
    this.#waiting.delete(id);
    return { comment, outcome };
  }
}

/**
 * The rule a refused or held text broke, for people:
 * `Alcoholic drinks are not allowed (rule "alcohol", market ae)`.
 * @param {RuleRef} rule
 */
export function describeRule(rule) {
  const label = rule.label || rule.rule;
  return `${label} (rule "${rule.rule}", market ${rule.market})`;
}
