// @ts-check
/**
 * @file What the viewer and host pages share: the room and token from the URL, the
 * connection status line, safe DOM building (text only, never HTML from the network), and the
 * live comment list. Each page is a handful of panels, each a function that owns one part of
 * the DOM, so new panels (a language picker, a moderation queue) slot in beside them.
 *
 * Token: pass it in the URL fragment, `/watch/demo#token=<jwt>` (a fragment never reaches the
 * server or its logs), or as `?token=<jwt>`; the page then removes it from the address bar and
 * keeps it for this tab only (sessionStorage), so a reload works and a copied link carries no
 * token. Without one, the page asks for it in a form.
 */

import { isValidRoomId, tokenClaims } from '../sdk/ferry.js';

/** @typedef {import('../sdk/ferry.js').FerryClient} FerryClient */
/** @typedef {import('../sdk/protocol.js').CommentEvent} CommentEvent */
/** @typedef {import('../sdk/protocol.js').AnnouncementEvent} AnnouncementEvent */
/** @typedef {import('../sdk/protocol.js').UserRef} UserRef */

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
 * The live comment list: comments and announcements in stream order, hidden when deleted.
 * Returns functions to add an event and to mark a discontinuity.
 * @param {HTMLOListElement} list
 */
export function commentList(list) {
  /** @param {HTMLElement} item */
  const add = (item) => {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(item);
    while (list.children.length > MAX_COMMENTS) list.firstElementChild?.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  };
  return {
    /**
     * @param {CommentEvent | AnnouncementEvent} event
     * @param {number} offset the event's stream offset (to hide it on `comment_deleted`)
     */
    add(event, offset) {
      const who = el('span', { class: `who role-${event.user.role}` }, event.user.name);
      const text = el('span', { class: 'text' }, event.text);
      const item = el('li', { class: event.type, 'data-offset': String(offset) }, who, ' ', text);
      if (event.type === 'announcement') item.prepend(el('span', { class: 'badge' }, 'Announcement'), ' ');
      add(item);
    },
    /** @param {number} offset */
    remove(offset) {
      const item = list.querySelector(`li[data-offset="${offset}"]`);
      if (item) {
        item.classList.add('deleted');
        const text = item.querySelector('.text');
        if (text) text.textContent = '(comment removed by a moderator)';
      }
    },
    /** @param {string} text */
    notice(text) {
      add(el('li', { class: 'notice' }, text));
    },
    clear() {
      list.replaceChildren();
    },
  };
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
