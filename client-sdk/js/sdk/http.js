// @ts-check
/**
 * @file The SDK's HTTP reads of flash sales (docs/http-api.md), the browser twin of the Rust
 * SDK's `HttpClient` (`client-sdk/src/http.rs`): a sale with the server's clock, a room's
 * sales page by page (`GET /api/rooms/{room}/sales`, newest first, `limit` and `before`), a
 * reservation, and the catalog. Each call is one `fetch` with the token in
 * `Authorization: Bearer`; an error status becomes an `HttpError` with the documented code.
 */

/** @typedef {import('./protocol.js').SaleLookup} SaleLookup */
/** @typedef {import('./protocol.js').RoomSalesPage} RoomSalesPage */
/** @typedef {import('./protocol.js').SaleView} SaleView */
/** @typedef {import('./protocol.js').ReservationView} ReservationView */

/** An error answer of the HTTP API: `{"error": {"code", "message"}}` with its status. */
export class HttpError extends Error {
  /**
   * @param {number} status HTTP status (0 when the request did not complete)
   * @param {string} code the stable error code (`not_found`, `forbidden`...), or `http_<status>`
   * @param {string} message
   */
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.name = 'HttpError';
    this.status = status;
    this.code = code;
    this.serverMessage = message;
  }
}

/**
 * A catalog product as `GET /api/products` lists it (the fields the pages use).
 * @typedef {{id: string, title: string, price_cny: number, lang?: string}} CatalogProduct
 */

/**
 * The query string of a room-sales page request, or '' for the defaults; throws a
 * `RangeError` for a `limit` outside 1–100 or a `before` that is not a non-negative integer
 * (the server would answer 400).
 * @param {{limit?: number, before?: number | null}} [page]
 * @returns {string}
 */
export function roomSalesQuery(page = {}) {
  const params = new URLSearchParams();
  if (page.limit !== undefined) {
    if (!Number.isInteger(page.limit) || page.limit < 1 || page.limit > 100) {
      throw new RangeError(`limit must be 1–100, not ${page.limit}`);
    }
    params.set('limit', String(page.limit));
  }
  if (page.before !== undefined && page.before !== null) {
    if (!Number.isSafeInteger(page.before) || page.before < 0) {
      throw new RangeError(`before must be the \`next\` of a previous page, not ${page.before}`);
    }
    params.set('before', String(page.before));
  }
  const q = params.toString();
  return q ? `?${q}` : '';
}

/** HTTP reads with one token. */
export class HttpClient {
  #base;
  #token;
  #fetch;

  /**
   * @param {{base?: string, token: string, fetch?: typeof fetch}} options `base`: the node's
   *   origin (`http://127.0.0.1:8080`; the page's own origin by default)
   */
  constructor(options) {
    const fallback = typeof location !== 'undefined' ? location.origin : undefined;
    const base = options.base ?? fallback;
    if (!base) throw new TypeError('HttpClient needs `base` outside a page');
    this.#base = base.replace(/\/+$/, '');
    this.#token = options.token;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /**
   * A sale with live stock, and the server's clock (`GET /api/sales/{id}`).
   * @param {string} id
   * @returns {Promise<SaleLookup>}
   */
  sale(id) {
    return this.#get(`/api/sales/${encodeURIComponent(id)}`);
  }

  /**
   * One page of a room's sales, newest first (host, moderator or admin token). Pass the
   * previous page's `next` as `before` for older sales.
   * @param {string} room
   * @param {{limit?: number, before?: number | null}} [page]
   * @returns {Promise<RoomSalesPage>}
   */
  async roomSales(room, page = {}) {
    const body = await this.#get(`/api/rooms/${encodeURIComponent(room)}/sales${roomSalesQuery(page)}`);
    return { sales: Array.isArray(body?.sales) ? body.sales : [], next: typeof body?.next === 'number' ? body.next : null };
  }

  /**
   * Every sale of a room, newest first, fetched a page at a time as the loop asks for more.
   * ```js
   * for await (const sale of http.allRoomSales('shop-42', { limit: 50 })) console.log(sale.id);
   * ```
   * @param {string} room
   * @param {{limit?: number}} [options]
   * @returns {AsyncGenerator<SaleView, void, void>}
   */
  async *allRoomSales(room, options = {}) {
    /** @type {number | null} */
    let before = null;
    for (;;) {
      /** @type {RoomSalesPage} */
      const page = await this.roomSales(room, { limit: options.limit, before });
      yield* page.sales;
      if (page.next === null || page.next === before) return;
      before = page.next;
    }
  }

  /**
   * A reservation in its current state (its buyer, or an admin).
   * @param {string} id
   * @returns {Promise<ReservationView>}
   */
  async reservation(id) {
    return (await this.#get(`/api/reservations/${encodeURIComponent(id)}`)).reservation;
  }

  /**
   * The catalog (`GET /api/products`; a host sees their own products, an admin all).
   * @returns {Promise<CatalogProduct[]>}
   */
  async products() {
    const body = await this.#get('/api/products');
    return Array.isArray(body?.products) ? body.products : [];
  }

  /**
   * @param {string} path
   * @returns {Promise<any>}
   */
  async #get(path) {
    /** @type {Response} */
    let res;
    try {
      res = await this.#fetch(`${this.#base}${path}`, { headers: { Authorization: `Bearer ${this.#token}` } });
    } catch (e) {
      throw new HttpError(0, 'network', e instanceof Error ? e.message : String(e));
    }
    const text = await res.text();
    /** @type {any} */
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!res.ok) {
      const code = typeof body?.error?.code === 'string' ? body.error.code : `http_${res.status}`;
      const message = typeof body?.error?.message === 'string' ? body.error.message : text.slice(0, 200);
      throw new HttpError(res.status, code, message);
    }
    if (body === null) throw new HttpError(res.status, 'decode', `not JSON: ${text.slice(0, 200)}`);
    return body;
  }
}
