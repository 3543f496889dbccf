// @ts-check
/**
 * @file The viewer page (`/watch/{room}`): the live video (WHEP) beside the live comments in
 * the viewer's language (picked on the page, original a tap away), a like button, the pinned
 * product with the price in the viewer's currency, the flash sale's countdown on the server
 * clock, stock left, and a Buy button that shows every answer.
 *
 * The viewer's market (which price to show) is the token's `market` claim; the language is
 * `?lang=`, else the one picked before on this device, else the token's `lang` claim, else the
 * browser's.
 */

import {
  BuyPress, FerryClient, HttpClient, Showcase, WhepPlayer, describeBuyAnswer,
  formatCountdown, formatMoney, offerFor, productText, salePhase, tokenClaims,
} from '../sdk/ferry.js';
import {
  askForToken, byId, chatCore, connectionStatus, forgetToken, initialLanguage, languagePicker,
  roomFromPath, takeToken, wirePanels, wsUrl,
} from './common.js';

/** @typedef {import('../sdk/protocol.js').SaleView} SaleView */
/** @typedef {import('../sdk/protocol.js').ProductView} ProductView */
/** @typedef {import('../sdk/protocol.js').ReservationView} ReservationView */
/** @typedef {import('../sdk/protocol.js').JoinReply} JoinReply */

/** Market codes as buyers read them in "someone in … just bought this". */
const MARKET_NAMES = /** @type {Record<string, string>} */ ({
  us: 'the US', hk: 'Hong Kong', mo: 'Macau', cn: 'mainland China', jp: 'Japan', sg: 'Singapore',
  ae: 'the UAE', sa: 'Saudi Arabia', my: 'Malaysia', th: 'Thailand',
});

async function main() {
  const room = roomFromPath();
  if (!room) {
    byId('status').textContent = 'This address names no valid room.';
    return;
  }
  document.title = `${room} · Ferry live`;
  byId('room-title').textContent = room;
  const token = takeToken(room) ?? (await askForToken(`Enter your access token to watch ${room}.`));
  const market = tokenClaims(token)?.market ?? null;
  let lang = initialLanguage(token);
  const client = new FerryClient({ url: wsUrl(), token, lang });
  connectionStatus(client, byId('status'), {
    onTerminal: (code) => {
      if (code === 3500 || code === 3501) {
        forgetToken(room);
        byId('status').textContent = `The server refused the token (${code === 3501 ? 'expired' : 'invalid'}): reload with a new one.`;
      }
    },
  });
  const chat = chatPanel(client, room, () => lang);
  const shop = shopPanel(client, room, token, market, () => lang);
  const video = videoPanel(room, token);
  languagePicker(client, /** @type {HTMLSelectElement} */ (byId('lang')), byId('comment-error'), lang, (l) => {
    lang = l;
    shop.render();
  });

  wirePanels(client, room, [chat, shop, video]);
  client.on('removed', ({ room: r, reason }) => {
    if (r !== room) return;
    chat.notice(`You left the room: ${reason}`);
    shop.stop();
    void video.stop();
  });

  // A hook for tests and debugging: the page's client, showcase and player.
  Object.assign(window, { ferryPage: { client, showcase: shop.showcase, video } });

  client.connect();
  try {
    await client.join(room);
  } catch (e) {
    chat.notice(`Could not join ${room}: ${e instanceof Error ? e.message : String(e)}`);
    return;
  }
  video.start();
}

/**
 * Comments (in the viewer's language), likes, the pinned message and the comment form.
 * @param {FerryClient} client
 * @param {string} room
 * @param {() => string | null} readerLang
 */
function chatPanel(client, room, readerLang) {
  const core = chatCore(client, room, readerLang, {
    missedNotice: 'You were offline for a while: some comments were missed.',
  });
  const likesLine = byId('likes');
  let likes = 0;
  const showLikes = () => {
    likesLine.textContent = `${likes} ${likes === 1 ? 'like' : 'likes'}`;
  };
  const likeButton = /** @type {HTMLButtonElement} */ (byId('like'));
  likeButton.addEventListener('click', () => {
    // Shown at once; the room's aggregated `likes` events count everyone's.
    client.like(room).catch(() => {});
    likeButton.classList.remove('pop');
    void likeButton.offsetWidth; // restart the animation
    likeButton.classList.add('pop');
  });

  return {
    /** @param {JoinReply} reply */
    reset(reply) {
      core.reset(reply);
      if (reply.state.title) byId('room-title').textContent = reply.state.title;
      likes = reply.state.likes;
      showLikes();
    },
    /**
     * @param {import('../sdk/protocol.js').RoomEvent} event
     * @param {number} offset
     */
    event(event, offset) {
      core.event(event, offset);
      switch (event.type) {
        case 'likes':
          likes += event.count;
          showLikes();
          break;
        case 'slow_mode':
          core.list.notice(event.seconds > 0 ? `Slow mode: one comment every ${event.seconds} s.` : 'Slow mode is off.');
          break;
        case 'room_closed':
          core.list.notice('The host closed the room.');
          break;
        default:
          break;
      }
    },
    /** @param {string} text */
    notice(text) {
      core.list.notice(text);
    },
  };
}

/**
 * The pinned product, the sale's countdown and stock, the Buy button and its answers.
 * @param {FerryClient} client
 * @param {string} room
 * @param {string} token
 * @param {string | null} market
 * @param {() => string | null} readerLang
 */
function shopPanel(client, room, token, market, readerLang) {
  const showcase = new Showcase();
  const http = new HttpClient({ token });
  const shop = byId('shop');
  const saleBox = byId('sale');
  const buyButton = /** @type {HTMLButtonElement} */ (byId('buy'));
  const quantity = /** @type {HTMLSelectElement} */ (byId('buy-quantity'));
  const answerLine = byId('buy-answer');
  const reservationBox = byId('reservation');
  const cancelButton = /** @type {HTMLButtonElement} */ (byId('cancel-reservation'));
  /** A press being sent: the button stays disabled, so a double click is one press. */
  let pressing = false;
  /** @type {ReservationView | null} */
  let reservation = null;
  /** Which product the card shows, to rebuild it only when it changes. */
  let shownProduct = '';
  let shownLimit = 0;

  /** @param {ProductView} product @param {SaleView | null} sale */
  const renderProduct = (product, sale) => {
    const text = productText(product, readerLang());
    const key = `${product.id}|${text.title}|${text.description}|${product.image_url}|${product.price_cny}`;
    if (key !== shownProduct) {
      shownProduct = key;
      byId('product-title').textContent = text.title;
      byId('product-title').setAttribute('lang', text.lang || 'zh');
      byId('product-title').dataset.translated = String(text.translated);
      byId('product-description').textContent = text.description;
      byId('product-description').setAttribute('lang', text.lang || 'zh');
      const img = /** @type {HTMLImageElement} */ (byId('product-image'));
      img.hidden = !product.image_url;
      if (product.image_url) {
        img.src = product.image_url;
        img.alt = text.title;
      }
    }
    const offer = offerFor(product, market);
    const priceLine = byId('product-price');
    const extra = byId('product-extra');
    if (!offer || !offer.available) {
      priceLine.textContent = market ? 'Not available in your market.' : 'Your token names no market: prices are not shown.';
      extra.textContent = '';
      return;
    }
    const saleOffer = sale ? offerFor(sale, market) : null;
    priceLine.textContent = saleOffer && saleOffer.available
      ? `List price ${formatMoney(offer.price)}`
      : formatMoney(offer.price);
    const shown = saleOffer && saleOffer.available ? saleOffer : offer;
    extra.textContent = `+ est. tax ${formatMoney(shown.tax_estimate)}, shipping ${formatMoney(shown.shipping_estimate)} · rates of ${product.fx_date}`;
  };

  const render = () => {
    const sale = showcase.sale;
    const serverNow = client.serverNow();
    const phase = sale ? salePhase(sale, serverNow) : null;
    const product = sale && phase && phase.phase !== 'ended' ? sale.product : showcase.pinned?.product ?? sale?.product ?? null;
    shop.hidden = !product;
    if (!product) return;
    renderProduct(product, sale && phase?.phase !== 'ended' ? sale : null);
    saleBox.hidden = !sale;
    if (!sale || !phase) return;
    const offer = offerFor(sale, market);
    const labels = {
      scheduled: 'Flash sale starts in',
      open: 'Flash sale! Ends in',
      sold_out: 'Sold out',
      ended: 'This sale has ended',
    };
    byId('sale-phase').textContent = labels[phase.phase];
    const countdown = phase.phase === 'scheduled' ? phase.msToStart : phase.phase === 'open' ? phase.msToEnd : null;
    byId('sale-countdown').textContent = countdown === null ? '' : formatCountdown(countdown);
    byId('sale-price').textContent = offer && offer.available
      ? `${formatMoney(offer.price)} · limit ${sale.per_buyer_limit} per buyer`
      : 'Not available in your market.';
    const stock = /** @type {HTMLProgressElement} */ (byId('sale-stock'));
    stock.max = Math.max(1, sale.quantity);
    stock.value = sale.remaining;
    byId('sale-stock-text').textContent = `${sale.remaining} of ${sale.quantity} left`;
    const limit = Math.max(1, Math.min(sale.per_buyer_limit, 10));
    if (limit !== shownLimit) {
      shownLimit = limit;
      quantity.replaceChildren(...Array.from({ length: limit }, (_, i) => new Option(String(i + 1), String(i + 1))));
    }
    const buyable = phase.canBuy && !!offer && offer.available;
    buyButton.disabled = pressing || !buyable;
    buyButton.textContent = pressing ? 'Buying…' : phase.phase === 'sold_out' ? 'Sold out' : 'Buy';
    if (reservation) {
      const left = client.msUntil(reservation.deadline);
      byId('reservation-text').textContent = reservation.state === 'reserved'
        ? left > 0
          ? `Your ${reservation.quantity} reserved (${formatMoney(reservation.amount_display)}): ${formatCountdown(left)} left to pay.`
          : 'The time to pay has passed: the units go back on sale.'
        : `Your reservation was ${reservation.state}.`;
      reservationBox.hidden = false;
      cancelButton.hidden = reservation.state !== 'reserved' || left <= 0;
    } else {
      reservationBox.hidden = true;
    }
  };

  buyButton.addEventListener('click', async () => {
    const sale = showcase.sale;
    if (!sale || pressing) return;
    pressing = true;
    answerLine.textContent = 'Buying…';
    render();
    const press = new BuyPress(client, room, sale.id, {
      quantity: Number(quantity.value) || 1,
      onRetry: (answer) => {
        answerLine.textContent = answer.kind === 'sale_not_started' ? 'Starting… retrying' : 'Retrying…';
      },
    });
    const answer = await press.send();
    pressing = false;
    answerLine.dataset.answer = answer.kind;
    answerLine.textContent = describeBuyAnswer(answer, { msUntil: (t) => client.msUntil(t) });
    if (answer.kind === 'reserved') reservation = answer.reservation;
    render();
  });

  cancelButton.addEventListener('click', async () => {
    if (!reservation) return;
    cancelButton.disabled = true;
    try {
      reservation = await client.cancelReservation(room, reservation.id);
      answerLine.dataset.answer = 'cancelled';
      answerLine.textContent = 'Reservation cancelled: the units are back on sale.';
    } catch (e) {
      answerLine.textContent = `Could not cancel: ${e instanceof Error ? e.message : String(e)}`;
    } finally {
      cancelButton.disabled = false;
      render();
    }
  });

  /** Fetch the view of a sale this page only has counters for. */
  const fetchMissing = async () => {
    const id = showcase.missingSale;
    if (!id) return;
    try {
      showcase.setSale((await http.sale(id)).sale);
      render();
    } catch {
      // The next sale event tries again.
    }
  };

  // The countdown ticks on the server clock.
  const ticker = setInterval(render, 200);
  return {
    showcase,
    render,
    /** @param {JoinReply} reply */
    reset(reply) {
      showcase.reset(reply.state);
      render();
    },
    /** @param {import('../sdk/protocol.js').RoomEvent} event */
    event(event) {
      if (event.type === 'purchase') {
        const where = MARKET_NAMES[event.notice.market] ?? event.notice.market.toUpperCase();
        byId('social-proof').textContent = event.notice.count > 1
          ? `${event.notice.count} people just bought this, most recently in ${where}.`
          : `Someone in ${where} just bought this.`;
        return;
      }
      if (showcase.apply(event)) render();
      if (showcase.missingSale) void fetchMissing();
    },
    stop() {
      clearInterval(ticker);
      shop.hidden = true;
    },
  };
}

/**
 * The video: play the room's stream with WHEP. A WHEP session may start before the host is
 * live (it waits for the stream); `stream_started` and `stream_ended` room events say when the
 * host goes live or stops. A failed session is retried after a few seconds.
 * @param {string} room
 * @param {string} token
 */
function videoPanel(room, token) {
  const video = /** @type {HTMLVideoElement} */ (byId('video'));
  const status = byId('video-status');
  const unmute = /** @type {HTMLButtonElement} */ (byId('unmute'));
  /** @type {WhepPlayer | null} */
  let player = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let retry = null;
  let stopped = false;
  /** Whether the room says the host is live. */
  let live = false;

  unmute.addEventListener('click', () => {
    video.muted = false;
    void video.play();
    unmute.hidden = true;
  });

  /** @param {string | null} text null hides the overlay */
  const say = (text) => {
    status.hidden = text === null;
    status.textContent = text ?? '';
  };

  /** @param {string} text */
  const retryLater = (text) => {
    say(text);
    if (retry || stopped) return;
    retry = setTimeout(() => {
      retry = null;
      void start();
    }, 3000);
  };

  const start = async () => {
    if (stopped) return;
    if (retry) clearTimeout(retry);
    retry = null;
    const old = player;
    player = null;
    await old?.stop();
    const p = new WhepPlayer({ endpoint: `/whep/${encodeURIComponent(room)}`, token });
    player = p;
    p.onstatechange = (state) => {
      if (player !== p) return;
      video.dataset.connection = state;
      if (state === 'failed' || state === 'closed') {
        player = null;
        void p.stop();
        retryLater('The video connection was lost: reconnecting…');
      }
    };
    try {
      if (!live) say('Waiting for the host to go live…');
      await p.play(video);
      const ms = await p.firstFrame();
      if (player === p) {
        say(null);
        unmute.hidden = !video.muted;
        video.dataset.firstFrameMs = String(Math.round(ms));
      }
    } catch (e) {
      if (player !== p) return;
      player = null;
      retryLater(`Video unavailable (${e instanceof Error ? e.message : String(e)}); retrying…`);
    }
  };

  return {
    start: () => void start(),
    /** @param {JoinReply} reply */
    reset(reply) {
      live = reply.state.live === true;
      if (!live) say('Waiting for the host to go live…');
    },
    /** @param {import('../sdk/protocol.js').RoomEvent} event */
    event(event) {
      if (event.type === 'stream_started') {
        live = true;
        video.dataset.stream = 'live';
        say(`${event.by.name} is live: starting the video…`);
        if (!player && !stopped) void start();
      } else if (event.type === 'stream_ended') {
        live = false;
        video.dataset.stream = event.reason;
        const why = {
          left: 'The host ended the stream.',
          timeout: 'The host\'s connection was lost; waiting for them to come back…',
          replaced: 'The host is reconnecting…',
          shutdown: 'The server is restarting; the video will resume.',
        };
        say(why[event.reason] ?? 'The stream ended.');
      }
    },
    async stop() {
      stopped = true;
      if (retry) clearTimeout(retry);
      const p = player;
      player = null;
      await p?.stop();
    },
    /** The current player (tests read its stats). */
    get player() {
      return player;
    },
  };
}

void main();
