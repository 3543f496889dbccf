// @ts-check
/**
 * @file What the viewer and host pages share: the room and token from the URL, the
 * connection status line, safe DOM building (text only, never HTML from the network), the
 * language picker, and the live chat (comments in the reader's language with the original a
 * tap away, late translations replaced in place, the pinned message, the comment form with
 * held and refused comments explained). Each page is a handful of panels, each a function that
 * owns one part of the DOM.
 *
 * Token: pass it in the URL fragment, `/watch/demo#token=<jwt>` (a fragment never reaches the
 * server or its logs), or as `?token=<jwt>`; the page then removes it from the address bar and
 * keeps it for this tab only (sessionStorage), so a reload works and a copied link carries no
 * token. Without one, the page asks for it in a form.
 */

import {
  ChatLog, FerryError, MyHeldComments, describeRule, formatCountdown, isValidRoomId, normalizeLang,
  shownText, tokenClaims,
} from '../sdk/ferry.js';

/** @typedef {import('../sdk/ferry.js').FerryClient} FerryClient */
/** @typedef {import('../sdk/protocol.js').UserRef} UserRef */
/** @typedef {import('../sdk/protocol.js').RoomEvent} RoomEvent */
/** @typedef {import('../sdk/protocol.js').JoinReply} JoinReply */
/** @typedef {import('../sdk/protocol.js').RuleRef} RuleRef */
/** @typedef {import('../sdk/chat.js').ChatEntry} ChatEntry */
/** @typedef {import('../sdk/chat.js').ShownText} ShownText */

/**
 * The room id from the page's path (`/watch/{room}`, `/host/{room}`).
 * @returns {string | null}
 */
export function roomFromPath() {
  const last = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() ?? '');
  return isValidRoomId(last) ? last : null;
}

/**
 * The WebSocket URL of the server that served this page.
 * @returns {string}
 */
export function wsUrl() {
  const url = new URL('/ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/**
 * Find the token: URL fragment, query, then this tab's storage. A token found in the URL is
 * removed from the address bar and stored for the tab.
 * @param {string} room
 * @returns {string | null}
 */
export function takeToken(room) {
  const key = `ferry.token.${room}`;
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  const query = new URLSearchParams(location.search);
  const fromQuery = query.get('token');
  const found = fromHash || fromQuery;
  if (found) {
    query.delete('token');
    const rest = query.toString();
    history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}`);
    try {
      sessionStorage.setItem(key, found);
    } catch {
      // Storage may be disabled: the token still works for this page view.
    }
    return found;
  }
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

/**
 * Forget the tab's stored token (after the server refused it).
 * @param {string} room
 */
export function forgetToken(room) {
  try {
    sessionStorage.removeItem(`ferry.token.${room}`);
  } catch {
    // nothing stored
  }
}

/**
 * Show the token form and resolve with what the user enters.
 * @param {string} why a sentence saying why a token is needed
 * @returns {Promise<string>}
 */
export function askForToken(why) {
  const form = /** @type {HTMLFormElement} */ (byId('token-form'));
  const input = /** @type {HTMLInputElement} */ (byId('token-input'));
  byId('token-why').textContent = why;
  form.hidden = false;
  input.focus();
  return new Promise((resolve) => {
    form.addEventListener('submit', function onSubmit(ev) {
      ev.preventDefault();
      const token = input.value.trim();
      if (!tokenClaims(token)) {
        byId('token-why').textContent = 'That does not look like a token (three dot-separated parts).';
        return;
      }
      form.removeEventListener('submit', onSubmit);
      form.hidden = true;
      input.value = '';
      resolve(token);
    });
  });
}

/**
 * The element with `id`, which the page's HTML must have.
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el;
}

/**
 * Build an element with text children only (strings become text nodes: nothing from the
 * network is ever parsed as HTML).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string>} [attrs] attributes (`class`, `lang`, `aria-*`, `data-*`...)
 * @param {...(Node | string | null | undefined)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/**
 * The connection status line: connecting, live, reconnecting, or stopped (and why).
 * @param {FerryClient} client
 * @param {HTMLElement} line
 * @param {{onTerminal?: (code: number | null, reason: string) => void}} [how]
 */
export function connectionStatus(client, line, how = {}) {
  /** @param {string} text @param {string} state */
  const set = (text, state) => {
    line.textContent = text;
    line.dataset.state = state;
  };
  set('Connecting…', 'connecting');
  client.on('connected', ({ user }) => set(`Connected as ${user.name}`, 'live'));
  client.on('disconnected', ({ reconnecting, reason }) =>
    set(reconnecting ? `Reconnecting… (${reason})` : `Disconnected: ${reason}`, reconnecting ? 'connecting' : 'stopped'));
  client.on('closed', ({ code, reason }) => {
    set(`Stopped: ${reason}${code ? ` (${code})` : ''}`, 'stopped');
    how.onTerminal?.(code, reason);
  });
}

/** Most comments kept on screen; older ones are removed. */
const MAX_COMMENTS = 200;

/**
 * The languages the pages offer (the server's default `translation.languages`), each named in
 * itself. A language the server does not serve is refused by `set_language`, and the picker
 * says so.
 */
export const LANGUAGES = Object.freeze([
  { code: 'en', name: 'English' },
  { code: 'zh', name: '中文' },
  { code: 'es', name: 'Español' },
  { code: 'ja', name: '日本語' },
  { code: 'ar', name: 'العربية' },
]);

/** Where the chosen language is kept across visits (all rooms of this origin). */
const LANG_KEY = 'ferry.lang';

/** @param {string | null} code */
function languageName(code) {
  return LANGUAGES.find((l) => l.code === code)?.name ?? (code ? code.toUpperCase() : '?');
}

/**
 * The language to read comments in: `?lang=` in the address, else the one chosen earlier on
 * this device (localStorage), else the token's `lang` claim, else the browser's languages;
 * null when none of them is offered.
 * @param {string} token
 * @returns {string | null}
 */
export function initialLanguage(token) {
  const offered = (/** @type {string | null | undefined} */ tag) => {
    const code = tag ? normalizeLang(tag) : null;
    return code && LANGUAGES.some((l) => l.code === code) ? code : null;
  };
  const fromUrl = offered(new URLSearchParams(location.search).get('lang'));
  if (fromUrl) {
    rememberLanguage(fromUrl);
    return fromUrl;
  }
  let stored = null;
  try {
    stored = offered(localStorage.getItem(LANG_KEY));
  } catch {
    // Storage may be disabled.
  }
  const claim = tokenClaims(token)?.lang;
  return stored ?? offered(typeof claim === 'string' ? claim : null)
    ?? (navigator.languages ?? []).map(offered).find((c) => c !== null) ?? null;
}

/** @param {string} code */
function rememberLanguage(code) {
  try {
    localStorage.setItem(LANG_KEY, code);
  } catch {
    // Storage may be disabled: the choice lasts for this page view.
  }
  const url = new URL(location.href);
  if (url.searchParams.has('lang')) {
    url.searchParams.set('lang', code);
    history.replaceState(null, '', `${url.pathname}${url.search}`);
  }
}

/**
 * The language picker: a `<select>` of `LANGUAGES`. A change is sent with `setLanguage` (the
 * next comments arrive in it; those already shown keep theirs), remembered on this device, and
 * reported to `onChange`. The page's language follows the server's word: the `connected`
 * push says which language each connection got.
 * @param {FerryClient} client
 * @param {HTMLSelectElement} select
 * @param {HTMLElement} status where a refusal is shown
 * @param {string | null} initial
 * @param {(lang: string | null) => void} onChange
 */
export function languagePicker(client, select, status, initial, onChange) {
  select.replaceChildren(
    new Option('Original language', ''),
    ...LANGUAGES.map((l) => new Option(l.name, l.code)),
  );
  select.value = initial ?? '';
  let current = initial;
  /** The reader chose originals: the server still translates, the page shows originals. */
  let originalsOnly = false;
  client.on('connected', ({ lang }) => {
    current = lang;
    if (originalsOnly) return;
    select.value = lang ?? '';
    onChange(lang);
  });
  select.addEventListener('change', async () => {
    const code = select.value;
    status.textContent = '';
    originalsOnly = !code;
    if (!code) {
      // The server has no "no language": keep the current one, show originals from now on.
      onChange(null);
      return;
    }
    select.disabled = true;
    try {
      await client.setLanguage(code);
      current = code;
      rememberLanguage(code);
      onChange(code);
    } catch (e) {
      select.value = current ?? '';
      onChange(current);
      status.textContent = `Cannot read comments in ${languageName(code)}: ${e instanceof Error ? e.message : String(e)}`;
    } finally {
      select.disabled = false;
    }
  });
}

/**
 * Fill `holder` with a text in the reader's language and, when it is a translation, a button
 * that shows (and hides) the original below it, with its language.
 * @param {HTMLElement} holder the element to fill
 * @param {ShownText} shown
 */
function fillTranslated(holder, shown) {
  const text = el('span', { class: 'text' }, shown.text);
  if (shown.textLang) text.setAttribute('lang', shown.textLang);
  holder.replaceChildren(text);
  holder.dataset.translated = String(shown.translated);
  if (!shown.translated) return;
  const from = languageName(shown.sourceLang);
  const originalText = el('span', { class: 'original-text' }, shown.original);
  if (shown.sourceLang) originalText.setAttribute('lang', shown.sourceLang);
  const original = el('span', { class: 'original', hidden: '' }, el('span', { class: 'from' }, `${from}: `), originalText);
  const toggle = el('button', { type: 'button', class: 'original-toggle', 'aria-expanded': 'false' }, 'Original');
  const flip = () => {
    const show = original.hidden;
    original.hidden = !show;
    toggle.setAttribute('aria-expanded', String(show));
    toggle.textContent = show ? 'Hide original' : 'Original';
  };
  toggle.addEventListener('click', flip);
  text.addEventListener('click', flip);
  holder.append(' ', toggle, original);
}

/**
 * A comment or held comment's text in the reader's language, with the original a tap away.
 * @param {{text: string, lang?: string | null, translations?: Record<string, string> | null}} item
 * @param {string | null} lang the reader's language
 */
export function translatedText(item, lang) {
  const holder = el('span', { class: 'body' });
  fillTranslated(holder, shownText(item, lang));
  return holder;
}

/**
 * The live chat: comments and announcements in stream order in the reader's language (late
 * `translation` events replace the text in place), hidden when deleted; the sender's own
 * comments held for a moderator ("waiting for a moderator", then published or not); notices.
 * @param {HTMLOListElement} list
 * @param {() => string | null} readerLang
 */
export function commentList(list, readerLang) {
  const log = new ChatLog({ maxEntries: MAX_COMMENTS });
  const mine = new MyHeldComments();
  /** @param {HTMLElement} item */
  const add = (item) => {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(item);
    while (list.children.length > MAX_COMMENTS) list.firstElementChild?.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  };
  /** @param {number} offset */
  const itemAt = (offset) => /** @type {HTMLElement | null} */ (list.querySelector(`li[data-offset="${offset}"]`));
  /** @param {ChatEntry} entry */
  const render = (entry) => {
    const who = el('span', { class: `who role-${entry.user.role}` }, entry.user.name);
    const body = translatedText(entry, readerLang());
    const item = el('li', { class: entry.type, 'data-offset': String(entry.offset) }, who, ' ', body);
    if (entry.lang) item.dataset.lang = entry.lang;
    if (entry.type === 'announcement') item.prepend(el('span', { class: 'badge' }, 'Announcement'), ' ');
    return item;
  };
  /**
   * @param {string} id
   * @param {'approved' | 'rejected'} outcome
   */
  const resolveMine = (id, outcome) => {
    const item = /** @type {HTMLElement | null} */ (list.querySelector(`li[data-held="${CSS.escape(id)}"]`));
    if (!item) return;
    item.dataset.outcome = outcome;
    const state = item.querySelector('.held-state');
    if (outcome === 'approved') item.remove();
    else if (state) state.textContent = 'A moderator did not publish this comment.';
  };
  return {
    /**
     * Apply a room event at `offset` (comments, announcements, translations, deletions, and
     * the moderator's decisions on the sender's held comments).
     * @param {RoomEvent} event
     * @param {number} offset
     */
    event(event, offset) {
      const decided = mine.apply(event);
      if (decided) resolveMine(decided.comment.id, decided.outcome);
      const change = log.apply(event, offset);
      if (!change) return;
      if (change.kind === 'added') {
        add(render(change.entry));
      } else if (change.kind === 'translated') {
        const item = itemAt(change.entry.offset);
        const body = item?.querySelector('.body');
        if (item && body instanceof HTMLElement && !change.entry.deleted) {
          fillTranslated(body, shownText(change.entry, readerLang()));
          item.dataset.late = 'true';
        }
      } else {
        const item = itemAt(change.offset);
        if (item) {
          item.classList.add('deleted');
          const body = item.querySelector('.body');
          if (body) body.textContent = '(comment removed by a moderator)';
        }
      }
    },
    /**
     * The sender's comment was held: show it as waiting until a moderator decides.
     * @param {import('../sdk/protocol.js').PendingComment} pending
     * @param {string} text
     */
    held(pending, text) {
      const early = mine.add(pending, text);
      const item = el('li', { class: 'held-mine', 'data-held': pending.id },
        el('span', { class: 'text' }, text), ' ',
        el('span', { class: 'held-state' }, `Waiting for a moderator: ${describeRule(pending.rule)}.`));
      add(item);
      if (early) resolveMine(pending.id, early);
    },
    /** @param {string} text */
    notice(text) {
      add(el('li', { class: 'notice' }, text));
    },
    clear() {
      log.clear();
      list.replaceChildren();
    },
  };
}

/**
 * What a sender should read when a comment is refused: the rule for a red one, the wait for
 * limits.
 * @param {unknown} e
 * @returns {string}
 */
export function commentRefusal(e) {
  if (!(e instanceof FerryError)) return String(e);
  if (e.rule) return `Not sent: ${describeRule(e.rule)}. Nobody else saw it.`;
  switch (e.errorName) {
    case 'slow_mode':
    case 'rate_limited':
      return `Too fast: you can comment again in ${formatCountdown(e.retryAfterMs ?? 1000)}.`;
    case 'muted':
      return 'A moderator muted you in this room.';
    case 'moderation_queue_full':
      return `Moderators are busy: try again in ${formatCountdown(e.retryAfterMs ?? 5000)}.`;
    default:
      return `Not sent: ${e.serverMessage}`;
  }
}

/**
 * The chat panel both pages share: the comment list in the reader's language, the pinned
 * message, and the comment form (`sendComment`: held comments wait visibly, red ones show the
 * rule). Returns `reset` and `event` for the page's `joined` and `event` callbacks, which
 * handle what both pages show; each page adds its own on top.
 * @param {FerryClient} client
 * @param {string} room
 * @param {() => string | null} readerLang
 * @param {{missedNotice: string}} how
 */
export function chatCore(client, room, readerLang, how) {
  const list = commentList(/** @type {HTMLOListElement} */ (byId('comments')), readerLang);
  const pinned = byId('pinned');
  const error = byId('comment-error');
  /** @param {import('../sdk/protocol.js').Pinned | null | undefined} pin */
  const showPin = (pin) => {
    pinned.hidden = !pin;
    pinned.textContent = pin ? `📌 ${pin.text}` : '';
  };
  textForm(/** @type {HTMLFormElement} */ (byId('comment-form')), /** @type {HTMLInputElement} */ (byId('comment-input')), error,
    async (text) => {
      let outcome;
      try {
        outcome = await client.sendComment(room, text);
      } catch (e) {
        throw new Error(commentRefusal(e));
      }
      if (outcome.kind === 'held') list.held(outcome.pending, text);
    });
  return {
    list,
    error,
    /** @param {JoinReply} reply */
    reset(reply) {
      if (reply.recovered === false) list.notice(how.missedNotice);
      byId('viewers').textContent = String(reply.state.viewers);
      showPin(reply.state.pinned);
    },
    /**
     * @param {RoomEvent} event
     * @param {number} offset
     */
    event(event, offset) {
      list.event(event, offset);
      if (event.type === 'pinned') showPin(event.pinned);
      else if (event.type === 'unpinned') showPin(null);
    },
  };
}

/**
 * A panel of a page: what it does when the room is (re)joined and on each room event.
 * @typedef {{reset?: (reply: JoinReply) => void, event?: (event: RoomEvent, offset: number) => void}} Panel
 */

/**
 * Feed the page's panels the client's `joined` and `event` callbacks for `room`, in order,
 * and keep the viewer count line (`#viewers`) current.
 * @param {FerryClient} client
 * @param {string} room
 * @param {Panel[]} panels
 */
export function wirePanels(client, room, panels) {
  client.on('joined', ({ room: r, reply }) => {
    if (r === room) for (const panel of panels) panel.reset?.(reply);
  });
  client.on('event', ({ room: r, position, event }) => {
    if (r === room) for (const panel of panels) panel.event?.(event, position.offset);
  });
  client.on('viewers', ({ room: r, count }) => {
    if (r === room) byId('viewers').textContent = String(count);
  });
}

/**
 * Wire a text form (input + submit) to an async action; the input is cleared on success and
 * errors are shown in `status`.
 * @param {HTMLFormElement} form
 * @param {HTMLInputElement | HTMLTextAreaElement} input
 * @param {HTMLElement} status
 * @param {(text: string) => Promise<unknown>} action
 */
export function textForm(form, input, status, action) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const button = form.querySelector('button');
    if (button) button.disabled = true;
    status.textContent = '';
    try {
      await action(text);
      input.value = '';
    } catch (e) {
      status.textContent = e instanceof Error ? e.message : String(e);
    } finally {
      if (button) button.disabled = false;
      input.focus();
    }
  });
}
