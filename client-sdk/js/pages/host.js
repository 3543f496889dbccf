// @ts-check
/**
 * @file The host page (`/host/{room}`): go live from the camera (WHIP) and stop, the live
 * comments in the host's language (original a tap away) with replies, announcements and a
 * pinned message, the moderator queue (approve or reject held comments), the showcase (pin a
 * catalog product), flash sales (launch with quantity, price, per-buyer limit, countdown,
 * duration and payment window; watch the stock; end early) and the room's past sales, page by
 * page. Needs a host or admin token (a moderator's token works for the chat and the queue).
 */

import {
  FerryClient, FerryError, HttpClient, ModerationQueue, Showcase, WhipPublisher, describeRule,
  formatCountdown, formatMoney, parseYuan, productText, salePhase, tokenClaims,
} from '../sdk/ferry.js';
import {
  askForToken, byId, chatCore, commentRefusal, connectionStatus, el, forgetToken, initialLanguage,
  languagePicker, roomFromPath, takeToken, textForm, translatedText, wirePanels, wsUrl,
} from './common.js';

/** @typedef {import('../sdk/protocol.js').JoinReply} JoinReply */
/** @typedef {import('../sdk/protocol.js').RoomEvent} RoomEvent */

/** @typedef {import('../sdk/http.js').CatalogProduct} CatalogProduct */

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
  let lang = initialLanguage(token);
  const client = new FerryClient({ url: wsUrl(), token, lang });
  connectionStatus(client, byId('status'), {
    onTerminal: (code) => {
      if (code === 3500 || code === 3501) forgetToken(room);
    },
  });
  if (claims && claims.role !== 'host' && claims.role !== 'admin') {
    byId('shop-error').textContent = `This token is a ${claims.role}'s: going live, pinning products and sales need a host token.`;
  }
  const chat = chatPanel(client, room, () => lang);
  const moderation = queuePanel(client, room, () => lang);
  const shop = shopPanel(client, room, token, () => lang);
  const live = livePanel(room, token);
  languagePicker(client, /** @type {HTMLSelectElement} */ (byId('lang')), byId('comment-error'), lang, (l) => {
    lang = l;
    moderation.render();
  });

  wirePanels(client, room, [chat, moderation, shop]);

  // A hook for tests and debugging: the page's client, showcase and publisher.
  Object.assign(window, { ferryPage: { client, showcase: shop.showcase, queue: moderation.queue, live } });

  client.connect();
  try {
    await client.join(room);
  } catch (e) {
    chat.notice(`Could not join ${room}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * Comments (in the host's language), replies, announcements and the pinned message.
 * @param {FerryClient} client
 * @param {string} room
 * @param {() => string | null} readerLang
 */
function chatPanel(client, room, readerLang) {
  const core = chatCore(client, room, readerLang, { missedNotice: 'Reconnected: some comments were missed.' });
  const { error } = core;
  textForm(/** @type {HTMLFormElement} */ (byId('announce-form')), /** @type {HTMLInputElement} */ (byId('announce-input')), error,
    (text) => client.announce(room, text).catch((e) => {
      throw new Error(commentRefusal(e));
    }));
  textForm(/** @type {HTMLFormElement} */ (byId('pin-form')), /** @type {HTMLInputElement} */ (byId('pin-input')), error,
    (text) => client.pin(room, text));
  byId('unpin').addEventListener('click', () => {
    client.unpin(room).catch((e) => {
      error.textContent = e.message;
    });
  });
  return {
    reset: core.reset,
    /** @param {RoomEvent} event @param {number} offset */
    event(event, offset) {
      core.event(event, offset);
      if (event.type === 'joined' && event.count > 0) core.list.notice(`${event.count} joined`);
    },
    /** @param {string} text */
    notice(text) {
      core.list.notice(text);
    },
  };
}

/**
 * The moderator queue: comments held by a market's yellow rules, in the host's language with
 * the original a tap away, the rule that held them, and Approve / Reject. Kept live from the
 * join state and the room's events, so a decision taken by another moderator removes the
 * comment here too.
 * @param {FerryClient} client
 * @param {string} room
 * @param {() => string | null} readerLang
 */
function queuePanel(client, room, readerLang) {
  const queue = new ModerationQueue();
  const list = byId('queue');
  const error = byId('queue-error');

  const render = () => {
    byId('queue-count').textContent = String(queue.held.length);
    byId('queue-empty').hidden = queue.held.length > 0;
    list.replaceChildren(...queue.held.map((held) => {
      const approve = el('button', { type: 'button', class: 'approve' }, 'Approve');
      const reject = el('button', { type: 'button', class: 'reject' }, 'Reject');
      /** @param {'approve' | 'reject'} action */
      const decide = async (action) => {
        approve.disabled = true;
        reject.disabled = true;
        error.textContent = '';
        try {
          if (action === 'approve') await client.approveComment(room, held.id);
          else await client.rejectComment(room, held.id);
          // The stream's `comment` (with held_id) or `comment_rejected` takes it off the list.
        } catch (e) {
          if (e instanceof FerryError && e.errorName === 'not_held') {
            error.textContent = 'Another moderator already decided on that comment.';
            if (queue.remove(held.id)) render();
            return;
          }
          error.textContent = `Could not ${action}: ${e instanceof Error ? e.message : String(e)}`;
          approve.disabled = false;
          reject.disabled = false;
        }
      };
      approve.addEventListener('click', () => void decide('approve'));
      reject.addEventListener('click', () => void decide('reject'));
      const at = new Date(held.at).toLocaleTimeString();
      return el('li', { 'data-held': held.id, class: `severity-${held.rule.severity}` },
        el('p', {}, el('span', { class: `who role-${held.user.role}` }, held.user.name), ' ', translatedText(held, readerLang())),
        el('p', { class: 'muted small rule' }, `${describeRule(held.rule)} · held at ${at}`),
        el('div', { class: 'row' }, approve, reject));
    }));
  };

  byId('queue-refresh').addEventListener('click', async () => {
    error.textContent = '';
    try {
      queue.reset({ held: await client.moderationQueue(room) });
      render();
    } catch (e) {
      error.textContent = `Could not read the queue: ${e instanceof Error ? e.message : String(e)}`;
    }
  });

  render();
  return {
    queue,
    render,
    /** @param {JoinReply} reply */
    reset(reply) {
      queue.reset(reply.state);
      render();
    },
    /** @param {RoomEvent} event */
    event(event) {
      if (queue.apply(event)) render();
    },
  };
}

/**
 * The catalog, pinning, flash sales, and the room's past sales.
 * @param {FerryClient} client
 * @param {string} room
 * @param {string} token
 * @param {() => string | null} readerLang
 */
function shopPanel(client, room, token, readerLang) {
  const showcase = new Showcase();
  const http = new HttpClient({ token });
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
      const products = await http.products();
      catalog.clear();
      for (const p of products) catalog.set(p.id, p);
      const options = products.map((p) =>
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
      ? `Pinned: ${productText(pinned, readerLang()).title} (${pinned.id}) · list price ${formatMoney({ currency: 'CNY', minor: pinned.price_cny }, 'zh-CN')}`
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

  // The room's sales, newest first, a page at a time (GET /api/rooms/{room}/sales).
  const history = /** @type {HTMLDetailsElement} */ (byId('sales-history'));
  const salesList = byId('sales-list');
  const more = /** @type {HTMLButtonElement} */ (byId('sales-more'));
  /** @type {number | null} the `next` of the last page read; null: no more */
  let before = null;
  /** @param {boolean} fromStart */
  const loadSales = async (fromStart) => {
    more.disabled = true;
    try {
      const page = await http.roomSales(room, { limit: 10, before: fromStart ? null : before });
      if (fromStart) salesList.replaceChildren();
      for (const sale of page.sales) {
        const when = new Date(sale.starts_at).toLocaleString();
        salesList.append(el('li', { 'data-sale': sale.id },
          `${productText(sale.product, readerLang()).title} · ${when} · ${sale.quantity - sale.remaining} of ${sale.quantity} taken · ${sale.status}`));
      }
      if (fromStart && page.sales.length === 0) salesList.append(el('li', { class: 'muted' }, 'No sales yet.'));
      before = page.next;
      more.hidden = before === null;
    } catch (e) {
      fail(e);
    } finally {
      more.disabled = false;
    }
  };
  history.addEventListener('toggle', () => {
    if (history.open) void loadSales(true);
  });
  more.addEventListener('click', () => void loadSales(false));

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
