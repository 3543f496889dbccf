// @ts-check
/**
 * @file A small typed event emitter: `on(type, handler)` returns an unsubscribe function. A
 * handler that throws is reported (`reportError`, or the console) and does not stop the
 * others or the SDK.
 */

/**
 * @template {Record<string, any>} M map from event name to payload type
 */
export class Emitter {
  /** @type {Map<keyof M, Set<(payload: any) => void>>} */
  #handlers = new Map();

  /**
   * @template {keyof M} K
   * @param {K} type
   * @param {(payload: M[K]) => void} handler
   * @returns {() => void} unsubscribe
   */
  on(type, handler) {
    let set = this.#handlers.get(type);
    if (!set) {
      set = new Set();
      this.#handlers.set(type, set);
    }
    set.add(handler);
    return () => this.off(type, handler);
  }

  /**
   * @template {keyof M} K
   * @param {K} type
   * @param {(payload: M[K]) => void} handler
   */
  off(type, handler) {
    this.#handlers.get(type)?.delete(handler);
  }

  /**
   * @template {keyof M} K
   * @param {K} type
   * @param {M[K]} payload
   */
  emit(type, payload) {
    const set = this.#handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(payload);
      } catch (e) {
        if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
        else console.error(e);
      }
    }
  }
}
