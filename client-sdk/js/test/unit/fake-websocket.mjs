// A scripted stand-in for the browser WebSocket, for unit tests of the client's driver logic
// (what it sends, how it reacts to replies, pushes and close codes). The real socket path is
// covered by the Chromium end-to-end test against the real server.

export class FakeWebSocket {
  /** @type {FakeWebSocket[]} every socket created, in order */
  static created = [];
  static reset() {
    FakeWebSocket.created = [];
  }

  /** @param {string} url */
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    /** @type {any[]} parsed frames the client sent */
    this.sent = [];
    /** @type {null | (() => void)} */ this.onopen = null;
    /** @type {null | ((ev: {data: string}) => void)} */ this.onmessage = null;
    /** @type {null | ((ev: {code: number, reason: string}) => void)} */ this.onclose = null;
    /** @type {null | (() => void)} */ this.onerror = null;
    FakeWebSocket.created.push(this);
  }

  /** @param {string} text */
  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code = 1000, reason = '') {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  // --- the "server" side ---

  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  /** @param {...any} objects sent as one frame, newline-separated */
  receive(...objects) {
    this.onmessage?.({ data: objects.map((o) => (typeof o === 'string' ? o : JSON.stringify(o))).join('\n') });
  }

  /** @param {number} code @param {string} [reason] */
  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** @param {string} cmd @returns {any[]} frames the client sent with this `cmd` */
  commands(cmd) {
    return this.sent.filter((f) => f.cmd === cmd);
  }
}

/** @param {number} ms */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Wait until `pred()` is truthy (polling), or fail after `ms`.
 * @template T
 * @param {() => T} pred
 * @param {number} [ms]
 * @returns {Promise<NonNullable<T>>}
 */
export async function until(pred, ms = 2000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return /** @type {NonNullable<T>} */ (v);
    if (Date.now() > deadline) throw new Error(`condition not met in ${ms} ms: ${pred}`);
    await sleep(2);
  }
}
