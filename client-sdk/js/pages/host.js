// @ts-check
/**
 * @file The host page (`/host/{room}`): go live from the camera (WHIP) and stop, the live
 * comments with replies, announcements and a pinned message, the showcase (pin a catalog
 * product), and flash sales (launch with quantity, price, per-buyer limit, countdown,
 * duration and payment window; watch the stock; end early). Needs a host or admin token.
 */

import {
  FerryClient, Showcase, WhipPublisher, formatCountdown, formatMoney, parseYuan, salePhase, tokenClaims,
} from '../sdk/ferry.js';
import {
  askForToken, byId, commentList, connectionStatus, forgetToken, roomFromPath, takeToken, textForm,
  wsUrl,
} from './common.js';

/** @typedef {import('../sdk/protocol.js').JoinReply} JoinReply */
/** @typedef {import('../sdk/protocol.js').RoomEvent} RoomEvent */

/**
 * A catalog product as `GET /api/products` lists it.
 * @typedef {{id: string, title: string, price_cny: number}} CatalogProduct
 */

async function main() {
  const room = roomFromPath();
  if (!room) {
    byId('status').textContent = 'This address names no valid room.';
    return;
  }
  document.title = `${room} · Ferry host`;
  byId('room-title').textContent = `Host: ${room}`;
  const token = takeToken(room) ?? (await askForToken(`Enter a host token for ${room}.`));
  const claims = tokenClaims(token);
  const client = new FerryClient({ url: wsUrl(), token });
  connectionStatus(client, byId('status'), {
    onTerminal: (code) => {
      if (code === 3500 || code === 3501) forgetToken(room);
    },
  });
  if (claims && claims.role !== 'host' && claims.role !== 'admin') {
    byId('shop-error').textContent = `This token is a ${claims.role}'s: going live, pinning products and sales need a host token.`;
  }
  const chat = chatPanel(client, room);
  const shop = shopPanel(client, room, token);
  const live = livePanel(room, token);

  client.on('joined', ({ room: r, reply }) => {
    if (r !== room) return;
    chat.reset(reply);
    shop.reset(reply);
  });
  client.on('event', ({ room: r, position, event }) => {
    if (r !== room) return;
    chat.event(event, position.offset);
    shop.event(event);
  });
  client.on('viewers', ({ room: r, count }) => {
    if (r === room) byId('viewers').textContent = String(count);
  });

  // A hook for tests and debugging: the page's client, showcase and publisher.
  Object.assign(window, { ferryPage: { client, showcase: shop.showcase, live } });

  client.connect();
  try {
    await client.join(room);
  } catch (e) {
    chat.notice(`Could not join ${room}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * Comments, replies, announcements and the pinned message.
 * @param {FerryClient} client
 * @param {string} room
 */
function chatPanel(client, room) {
  const list = commentList(/** @type {HTMLOListElement} */ (byId('comments')));
  const pinned = byId('pinned');
  const error = byId('chat-error');
  /** @param {import('../sdk/protocol.js').Pinned | null | undefined} pin */
  const showPin = (pin) => {
    pinned.hidden = !pin;
    pinned.textContent = pin ? `📌 ${pin.text}` : '';
  };
  textForm(/** @type {HTMLFormElement} */ (byId('comment-form')), /** @type {HTMLInputElement} */ (byId('comment-input')), error,
    (text) => client.comment(room, text));
  textForm(/** @type {HTMLFormElement} */ (byId('announce-form')), /** @type {HTMLInputElement} */ (byId('announce-input')), error,
    (text) => client.announce(room, text));
  textForm(/** @type {HTMLFormElement} */ (byId('pin-form')), /** @type {HTMLInputElement} */ (byId('pin-input')), error,
    (text) => client.pin(room, text));
  byId('unpin').addEventListener('click', () => {
    client.unpin(room).catch((e) => {
      error.textContent = e.message;
    });
  });
  return {
    /** @param {JoinReply} reply */
    reset(reply) {
      if (reply.recovered === false) list.notice('Reconnected: some comments were missed.');
      byId('viewers').textContent = String(reply.state.viewers);
      showPin(reply.state.pinned);
    },
    /** @param {RoomEvent} event @param {number} offset */
    event(event, offset) {
      switch (event.type) {
        case 'comment':
        case 'announcement':
          list.add(event, offset);
          break;
        case 'comment_deleted':
          list.remove(event.offset);
          break;
        case 'pinned':
          showPin(event.pinned);
          break;
        case 'unpinned':
          showPin(null);
          break;
        case 'joined':
          if (event.count > 0) list.notice(`${event.count} joined`);
          break;
        default:
          break;
      }
    },
    /** @param {string} text */
    notice(text) {
      list.notice(text);
    },
  };
}

/**
 * The catalog, pinning, and flash sales.
 * @param {FerryClient} client
 * @param {string} room
 * @param {string} token
 */
function shopPanel(client, room, token) {
  const showcase = new Showcase();
  const error = byId('shop-error');
  const select = /** @type {HTMLSelectElement} */ (byId('product-select'));
  const idInput = /** @type {HTMLInputElement} */ (byId('product-id'));
  const saleBox = byId('sale-box');
  /** @type {Map<string, CatalogProduct>} */
  const catalog = new Map();

  /** @param {unknown} e */
  const fail = (e) => {
    error.textContent = e instanceof Error ? e.message : String(e);
  };
  /** The product the host chose: the id typed, else the one selected, else the pinned one. */
  const chosenProduct = () => idInput.value.trim() || select.value || showcase.pinned?.product.id || '';

  const loadCatalog = async () => {
    try {
      const res = await fetch('/api/products', { headers: { Authorization: `Bearer ${token}` } });
      if (!res.ok) throw new Error(`the catalog answered ${res.status}`);
      /** @type {{products: CatalogProduct[]}} */
      const body = await res.json();
      catalog.clear();
      for (const p of body.products) catalog.set(p.id, p);
      const options = body.products.map((p) =>
        new Option(`${p.title} (${p.id}) · ${formatMoney({ currency: 'CNY', minor: p.price_cny }, 'zh-CN')}`, p.id));
      select.replaceChildren(new Option(options.length ? 'Choose a product…' : 'The catalog is empty', ''), ...options);
    } catch (e) {
      select.replaceChildren(new Option('Catalog unavailable: type an id', ''));
      fail(e);
    }
  };

  byId('pin-product-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const id = chosenProduct();
    if (!id) {
      error.textContent = 'Choose a product or type its id.';
      return;
    }
    try {
      await client.pinProduct(room, id);
      idInput.value = '';
    } catch (e) {
      fail(e);
    }
  });
  byId('unpin-product').addEventListener('click', () => {
    error.textContent = '';
    client.unpinProduct(room).catch(fail);
  });

  byId('sale-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const product = chosenProduct();
    const price = parseYuan(/** @type {HTMLInputElement} */ (byId('sale-price')).value);
    /** @param {string} id */
    const int = (id) => Math.trunc(Number(/** @type {HTMLInputElement} */ (byId(id)).value));
    if (!product) {
      error.textContent = 'Pin or choose the product to sell first.';
      return;
    }
    if (price === null) {
      error.textContent = 'The price must be an amount in yuan, like 59.00.';
      return;
    }
    const button = /** @type {HTMLButtonElement} */ (ev.submitter ?? byId('sale-form').querySelector('button'));
    button.disabled = true;
    try {
      const sale = await client.startSale(room, {
        product,
        quantity: int('sale-quantity'),
        price_cny: price,
        per_buyer_limit: int('sale-limit'),
        starts_in_secs: int('sale-starts-in'),
        duration_secs: int('sale-duration'),
        hold_secs: int('sale-hold'),
      });
      showcase.setSale(sale);
      render();
    } catch (e) {
      fail(e);
    } finally {
      button.disabled = false;
    }
  });

  byId('end-sale').addEventListener('click', async () => {
    const sale = showcase.sale;
    if (!sale) return;
    error.textContent = '';
    try {
      showcase.setSale(await client.endSale(room, sale.id));
      render();
    } catch (e) {
      fail(e);
    }
  });

  const render = () => {
    const pinned = showcase.pinned?.product;
    byId('pinned-product').textContent = pinned
      ? `Pinned: ${pinned.title} (${pinned.id}) · list price ${formatMoney({ currency: 'CNY', minor: pinned.price_cny }, 'zh-CN')}`
      : 'No product pinned.';
    const sale = showcase.sale;
    saleBox.hidden = !sale;
    if (!sale) return;
    const phase = salePhase(sale, client.serverNow());
    const labels = {
      scheduled: `Sale of ${sale.product.title} starts in`,
      open: `Sale of ${sale.product.title} is open; ends in`,
      sold_out: `Sale of ${sale.product.title}: sold out`,
      ended: `Sale of ${sale.product.title} has ended`,
    };
    byId('sale-phase').textContent = labels[phase.phase];
    const countdown = phase.phase === 'scheduled' ? phase.msToStart : phase.phase === 'open' ? phase.msToEnd : null;
    byId('sale-countdown').textContent = countdown === null ? '' : formatCountdown(countdown);
    const stock = /** @type {HTMLProgressElement} */ (byId('sale-stock'));
    stock.max = Math.max(1, sale.quantity);
    stock.value = sale.remaining;
    byId('sale-stock-text').textContent = `${sale.remaining} of ${sale.quantity} left · ${formatMoney({ currency: 'CNY', minor: sale.price_cny }, 'zh-CN')} each`;
    /** @type {HTMLButtonElement} */ (byId('end-sale')).disabled = phase.phase === 'ended';
  };

  void loadCatalog();
  setInterval(render, 250);
  return {
    showcase,
    /** @param {JoinReply} reply */
    reset(reply) {
      showcase.reset(reply.state);
      render();
    },
    /** @param {RoomEvent} event */
    event(event) {
      if (event.type === 'purchase') {
        byId('sale-proof').textContent = `${event.notice.count} new reservation${event.notice.count === 1 ? '' : 's'}, latest from ${event.notice.market.toUpperCase()}`;
        return;
      }
      if (showcase.apply(event)) render();
    },
  };
}

/**
 * Going live from the camera with WHIP.
 * @param {string} room
 * @param {string} token
 */
function livePanel(room, token) {
  const preview = /** @type {HTMLVideoElement} */ (byId('preview'));
  const status = byId('live-status');
  const goLive = /** @type {HTMLButtonElement} */ (byId('go-live'));
  const stop = /** @type {HTMLButtonElement} */ (byId('stop-live'));
  const statsLine = byId('live-stats');
  /** @type {WhipPublisher | null} */
  let publisher = null;
  /** @type {ReturnType<typeof setInterval> | null} */
  let statsTimer = null;

  goLive.addEventListener('click', async () => {
    goLive.disabled = true;
    status.hidden = false;
    status.textContent = 'Starting the camera…';
    const p = new WhipPublisher({ endpoint: `/whip/${encodeURIComponent(room)}`, token });
    publisher = p;
    p.onstatechange = (state) => {
      if (publisher !== p) return;
      status.textContent = state === 'connected' ? 'You are live.' : `Connection: ${state}`;
      status.hidden = state === 'connected';
      document.body.dataset.live = state;
    };
    try {
      await p.startCamera(preview);
      status.textContent = 'Connecting…';
      stop.disabled = false;
      let lastBytes = 0;
      statsTimer = setInterval(async () => {
        if (!publisher) return;
        const s = await publisher.stats().catch(() => null);
        if (!s) return;
        const kbps = Math.round(((s.bytesSent - lastBytes) * 8) / 1000);
        lastBytes = s.bytesSent;
        statsLine.textContent = `${s.framesEncoded} frames sent · ${kbps} kbit/s`;
      }, 1000);
    } catch (e) {
      publisher = null;
      status.textContent = `Could not go live: ${e instanceof Error ? e.message : String(e)}`;
      goLive.disabled = false;
    }
  });

  stop.addEventListener('click', async () => {
    stop.disabled = true;
    if (statsTimer) clearInterval(statsTimer);
    const p = publisher;
    publisher = null;
    await p?.stop();
    preview.srcObject = null;
    status.hidden = false;
    status.textContent = 'Not live.';
    document.body.dataset.live = 'stopped';
    statsLine.textContent = '';
    goLive.disabled = false;
  });

  return {
    /** The current publisher (tests read its stats). */
    get publisher() {
      return publisher;
    },
  };
}

void main();
