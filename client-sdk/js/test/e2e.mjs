// @ts-check
/**
 * @file End-to-end tests of Ferry's pages in a real Chromium (Debian's /usr/bin/chromium,
 * driven by playwright-core), against a real Ferry server.
 *
 * This script is started by the Rust integration test `tests/browser.rs`, which runs the
 * server on port 0, mints the tokens and plays the Rust SDK's part. The two talk over this
 * process's stdio, one JSON object per line:
 *
 * - this script asks the harness for Rust-side actions by writing `@ferry {"id":N,"op":...}`
 *   lines on stdout (`rust_comment`, `rust_wait_comment`, `rust_buy`...);
 * - the harness answers on stdin with `{"id":N,"ok":...}` or `{"id":N,"error":"..."}`.
 *
 * Everything else on stdout and stderr is log output. Any failed check throws, and the process
 * exits non-zero, which fails the Rust test.
 *
 * Usage (by the harness): `node test/e2e.mjs <scenario>` with the environment
 * FERRY_BASE (http://127.0.0.1:PORT), FERRY_ROOM, FERRY_TOKENS (JSON: {viewer, host, viewer2}),
 * FERRY_ARTIFACTS (a directory for screenshots), FERRY_CHROMIUM (default /usr/bin/chromium).
 */

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

/** @typedef {import('playwright-core').Page} Page */
/** @typedef {import('playwright-core').BrowserContext} BrowserContext */

const env = (/** @type {string} */ name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: this script is run by tests/browser.rs`);
  return v;
};

const BASE = env('FERRY_BASE');
const ROOM = env('FERRY_ROOM');
/** @type {{viewer: string, host: string, viewer2?: string}} */
const TOKENS = JSON.parse(env('FERRY_TOKENS'));
const ARTIFACTS = env('FERRY_ARTIFACTS');
const CHROMIUM = process.env.FERRY_CHROMIUM || '/usr/bin/chromium';
/** How long any single wait may take before the check fails. */
const STEP_MS = 15_000;

// ---------------------------------------------------------------------------------------------
// The harness: Rust-side actions over stdio

/** @type {Map<number, {resolve: (v: any) => void, reject: (e: Error) => void}>} */
const calls = new Map();
let nextCall = 1;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  /** @type {{id: number, ok?: any, error?: string}} */
  const reply = JSON.parse(line);
  const call = calls.get(reply.id);
  if (!call) return;
  calls.delete(reply.id);
  if (reply.error !== undefined) call.reject(new Error(`harness: ${reply.error}`));
  else call.resolve(reply.ok);
});

/**
 * Ask the Rust harness to do something and wait for its answer.
 * @param {string} op
 * @param {Record<string, unknown>} [args]
 * @returns {Promise<any>}
 */
function rust(op, args = {}) {
  const id = nextCall++;
  return new Promise((resolve, reject) => {
    calls.set(id, { resolve, reject });
    process.stdout.write(`@ferry ${JSON.stringify({ id, op, ...args })}\n`);
  });
}

/** @param {string} text */
const log = (text) => console.error(`[e2e ${new Date().toISOString().slice(11, 23)}] ${text}`);

// ---------------------------------------------------------------------------------------------
// Chromium

/** @returns {Promise<BrowserContext>} */
async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1200, height: 820 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    ],
  });
  context.on('close', () => {
    // Chromium may still be writing its profile for a moment: cleaning up is best effort.
    setTimeout(() => fs.rm(profile, { recursive: true, force: true, maxRetries: 3 }, () => {}), 200);
  });
  return context;
}

/**
 * Open a page with the token in the URL fragment, forwarding its console errors and failures
 * to the log (a page error fails the scenario at the end).
 * @param {BrowserContext} context
 * @param {string} name
 * @param {string} url
 * @param {string[]} pageErrors collects uncaught page errors
 */
async function open(context, name, url, pageErrors) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') log(`${name} console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => {
    log(`${name} page error: ${e.message}`);
    pageErrors.push(`${name}: ${e.message}`);
  });
  await page.goto(url);
  return page;
}

/**
 * Wait until the page's element `selector` has text matching `pattern`.
 * @param {Page} page
 * @param {string} selector
 * @param {RegExp} pattern
 */
async function waitText(page, selector, pattern) {
  try {
    await page.waitForFunction(
      ([sel, src, flags]) => new RegExp(src, flags).test(document.querySelector(sel)?.textContent ?? ''),
      [selector, pattern.source, pattern.flags],
      { timeout: STEP_MS },
    );
  } catch (e) {
    const now = await page.textContent(selector).catch(() => '(missing)');
    throw new Error(`${selector} never matched ${pattern}; it reads ${JSON.stringify(now)}`, { cause: e });
  }
}

/** @param {Page} page @param {string} name */
async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/**
 * Comments both ways between the viewer page and a Rust SDK client; a flash sale launched from
 * the host page, counted down and bought on the viewer page with every visible answer.
 * @param {BrowserContext} context
 * @param {string[]} pageErrors
 */
async function chatAndSales(context, pageErrors) {
  const viewer = await open(context, 'viewer', `${BASE}/watch/${ROOM}#token=${TOKENS.viewer}`, pageErrors);
  const host = await open(context, 'host', `${BASE}/host/${ROOM}#token=${TOKENS.host}`, pageErrors);
  assert.equal(new URL(viewer.url()).hash, '', 'the token is removed from the address bar');

  // Both pages connect and join.
  await viewer.waitForSelector('#status[data-state="live"]');
  await host.waitForSelector('#status[data-state="live"]');
  await viewer.waitForFunction(() => /** @type {any} */ (window).ferryPage?.client.position(document.location.pathname.split('/').pop()) !== null);
  log('both pages joined');

  // A Rust SDK client's comment shows on the viewer page.
  await rust('rust_comment', { text: 'Hello from the Rust SDK 你好' });
  await waitText(viewer, '#comments', /Hello from the Rust SDK 你好/);
  await waitText(viewer, '#comments', /name-rust-viewer/);
  log('Rust comment shown on the viewer page');

  // The viewer page's comment reaches the Rust SDK client, from the page's user.
  await viewer.fill('#comment-input', 'Ship to Macau? <b>not bold</b>');
  await viewer.press('#comment-input', 'Enter');
  const author = await rust('rust_wait_comment', { text: 'Ship to Macau? <b>not bold</b>' });
  assert.equal(author.id, 'browser-viewer');
  await waitText(viewer, '#comments', /Ship to Macau\? <b>not bold<\/b>/);
  assert.equal(await viewer.locator('#comments b').count(), 0, 'comment text is never parsed as HTML');
  log('viewer page comment reached the Rust SDK client');

  // Likes: the viewer's like is aggregated into the room's count.
  await viewer.click('#like');
  await waitText(viewer, '#likes', /^[1-9]\d* likes?$/);

  // The host pins the product from the catalog list; the viewer sees it in US dollars.
  await host.waitForSelector('#product-select option[value="basket-01"]', { state: 'attached' });
  await host.selectOption('#product-select', 'basket-01');
  await host.click('#pin-product-form button[type="submit"]');
  await waitText(viewer, '#product-title', /藤编篮/);
  await waitText(viewer, '#product-price', /^\$12\.34$/);
  await waitText(viewer, '#product-extra', /shipping \$15\.00 · rates of 2026-11-20/);
  log('pinned product shown with the US price');

  // The host launches a sale: 4 units at ¥59.00, 2 per buyer, starting in 5 s.
  await host.fill('#sale-quantity', '4');
  await host.fill('#sale-price', '59.00');
  await host.fill('#sale-limit', '2');
  await host.fill('#sale-starts-in', '5');
  await host.fill('#sale-duration', '120');
  await host.fill('#sale-hold', '60');
  await host.click('#sale-form button[type="submit"]');
  await waitText(viewer, '#sale-phase', /starts in/);
  await waitText(viewer, '#sale-countdown', /^0:0[1-5]$/);
  await waitText(viewer, '#sale-price', /^\$8\.18 · limit 2 per buyer$/);
  await waitText(viewer, '#sale-stock-text', /^4 of 4 left$/);
  assert.equal(await viewer.isDisabled('#buy'), true, 'no buying before the start');
  await screenshot(viewer, 'viewer-countdown');
  // The page counts down on a measured clock offset (a real ping sample, not the rough one).
  const rtt = await viewer.evaluate(() => /** @type {any} */ (window).ferryPage.client.clockOffset()?.rttMs);
  assert.ok(Number.isFinite(rtt) && rtt >= 0 && rtt < 1000, `clock sample RTT ${rtt}`);
  const saleId = await viewer.evaluate(() => /** @type {any} */ (window).ferryPage.showcase.sale.id);
  const rustCountdown = await rust('rust_ms_until_start', { sale: saleId });
  const pageCountdown = await viewer.evaluate(() => {
    const page = /** @type {any} */ (window).ferryPage;
    return page.client.msUntil(page.showcase.sale.starts_at);
  });
  assert.ok(Math.abs(rustCountdown - pageCountdown) < 250, `Rust ${rustCountdown} ms vs page ${pageCountdown} ms`);
  log(`countdown: Rust SDK ${Math.round(rustCountdown)} ms, page ${Math.round(pageCountdown)} ms`);

  // At the start instant the Buy button opens; the viewer reserves 2.
  await viewer.waitForSelector('#buy:not([disabled])', { timeout: 8_000 });
  await waitText(viewer, '#sale-phase', /Ends in/);
  await viewer.selectOption('#buy-quantity', '2');
  await viewer.click('#buy');
  await viewer.waitForSelector('#buy-answer[data-answer="reserved"]');
  // 2 × $8.18: the display amount is the shown unit price times the quantity.
  await waitText(viewer, '#buy-answer', /^Reserved 2 for \$16\.36\. Pay within [01]:\d\d to keep it\.$/);
  await waitText(viewer, '#reservation-text', /Your 2 reserved \(\$16\.36\): [01]:\d\d left to pay/);
  // A second press is over the per-buyer limit.
  await viewer.selectOption('#buy-quantity', '1');
  await viewer.click('#buy');
  await viewer.waitForSelector('#buy-answer[data-answer="limit_reached"]');
  log('reserved 2, then limit_reached');

  // A Rust SDK buyer takes the last 2: the viewer page shows the sale sold out.
  const reserved = await rust('rust_buy', { sale: saleId, quantity: 2 });
  assert.equal(reserved.state, 'reserved');
  await waitText(viewer, '#sale-phase', /^Sold out$/);
  await waitText(viewer, '#sale-stock-text', /^0 of 4 left$/);
  await waitText(viewer, '#buy', /^Sold out$/);
  assert.equal(await viewer.isDisabled('#buy'), true);
  await waitText(host, '#sale-stock-text', /^0 of 4 left/);
  await screenshot(viewer, 'viewer-sold-out');
  log('sold out shown');

  // Another Rust SDK client presses Buy while sold out: the answer is sold_out.
  const refused = await rust('rust_buy', { sale: saleId, quantity: 1, as: 'viewer' });
  assert.equal(refused.error, 'sold_out');

  // The viewer cancels: the units go back on sale and the page shows them.
  await viewer.click('#cancel-reservation');
  await viewer.waitForSelector('#buy-answer[data-answer="cancelled"]');
  await waitText(viewer, '#sale-stock-text', /^2 of 4 left$/);
  await viewer.waitForSelector('#buy:not([disabled])');

  // The host ends the sale: the viewer page says so and buying stops.
  await host.click('#end-sale');
  await waitText(viewer, '#sale-phase', /has ended/);
  assert.equal(await viewer.isDisabled('#buy'), true);
  // The host page lists the room's sales (GET /api/rooms/{room}/sales, a page at a time).
  await host.click('#sales-history summary');
  await waitText(host, `#sales-list li[data-sale="${saleId}"]`, /^藤编篮 · .* · 2 of 4 taken · ended$/);
  assert.equal(await host.isHidden('#sales-more'), true, 'one sale: no older page');
  await screenshot(host, 'host-sale-ended');

  // The client saw every event once: no duplicates, no gaps.
  const stats = await viewer.evaluate(() => /** @type {any} */ (window).ferryPage.client.stats);
  assert.equal(stats.duplicates, 0);
  assert.equal(stats.gaps, 0);
}

/**
 * The host page publishes Chromium's fake camera with WHIP; the viewer page plays it with
 * WHEP: frames are decoded (getStats), a screenshot is saved, and stopping on the host page
 * ends the stream on the viewer page.
 * @param {BrowserContext} context
 * @param {string[]} pageErrors
 */
async function video(context, pageErrors) {
  // The viewer arrives first: its WHEP session waits for the host.
  const viewer = await open(context, 'viewer', `${BASE}/watch/${ROOM}#token=${TOKENS.viewer}`, pageErrors);
  await viewer.waitForSelector('#status[data-state="live"]');
  await waitText(viewer, '#video-status', /Waiting for the host to go live/);
  const host = await open(context, 'host', `${BASE}/host/${ROOM}#token=${TOKENS.host}`, pageErrors);
  await host.waitForSelector('#status[data-state="live"]');

  const goLive = Date.now();
  await host.click('#go-live');
  await host.waitForSelector('body[data-live="connected"]', { timeout: 20_000 });
  log(`host page publishing after ${Date.now() - goLive} ms`);
  await waitText(viewer, '#video-status', /is live|^$/);
  await viewer.waitForSelector('#video[data-first-frame-ms]', { timeout: 20_000 });
  log(`viewer page: first frame ${await viewer.getAttribute('#video', 'data-first-frame-ms')} ms after its WHEP start, ${Date.now() - goLive} ms after Go live`);
  // Let a couple of seconds of video through (60 frames), then read the player's stats.
  /** @type {import('../sdk/video.js').VideoStats} */
  let stats;
  const deadline = Date.now() + 20_000;
  for (;;) {
    stats = await viewer.evaluate(() => /** @type {any} */ (window).ferryPage.video.player.stats());
    if (stats.framesDecoded >= 60) break;
    if (Date.now() > deadline) {
      const raw = await viewer.evaluate(async () => {
        const pc = /** @type {any} */ (window).ferryPage.video.player.pc;
        /** @type {any[]} */
        const out = [];
        (await pc.getStats()).forEach((/** @type {any} */ r) => {
          if (r.type === 'inbound-rtp' || r.type === 'candidate-pair' && r.nominated) out.push(r);
        });
        return out;
      });
      const sent = await host.evaluate(async () => {
        const pc = /** @type {any} */ (window).ferryPage.live.publisher.pc;
        /** @type {any[]} */
        const out = [];
        (await pc.getStats()).forEach((/** @type {any} */ r) => {
          if (r.type === 'outbound-rtp' || r.type === 'remote-inbound-rtp') out.push(r);
        });
        return out;
      });
      log(`viewer inbound: ${JSON.stringify(raw)}`);
      log(`host outbound: ${JSON.stringify(sent)}`);
      log(`server: ${(await rust('server_metrics', { prefix: 'ferry_sfu' })).join('\n')}`);
      throw new Error(`only ${stats.framesDecoded} frames decoded in 20 s`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  log(`viewer stats: ${JSON.stringify(stats)}`);
  assert.ok(stats.framesDecoded > 0, 'frames decoded');
  assert.ok(stats.frameWidth > 0 && stats.frameHeight > 0, 'a real picture size');
  assert.ok(stats.timeToFirstFrameMs !== null && stats.timeToFirstFrameMs > 0);
  const painted = await viewer.evaluate(() => {
    const v = /** @type {HTMLVideoElement} */ (document.getElementById('video'));
    return { width: v.videoWidth, height: v.videoHeight, time: v.currentTime };
  });
  assert.ok(painted.width > 0 && painted.time > 0, `the <video> plays: ${JSON.stringify(painted)}`);
  const sent = await host.evaluate(() => /** @type {any} */ (window).ferryPage.live.publisher.stats());
  log(`host stats: framesEncoded ${sent.framesEncoded}, packetsSent ${sent.packetsSent}`);
  assert.ok(sent.framesEncoded > 0);
  await screenshot(viewer, 'viewer-video');
  await screenshot(host, 'host-live');

  // A viewer who arrives while the host is live gets a picture fast (the SFU asks the
  // publisher for a keyframe): time to first frame from its WHEP start.
  const late = await open(context, 'late viewer', `${BASE}/watch/${ROOM}#token=${TOKENS.viewer}`, pageErrors);
  await late.waitForSelector('#video[data-first-frame-ms]', { timeout: 20_000 });
  const lateTtff = Number(await late.getAttribute('#video', 'data-first-frame-ms'));
  log(`late viewer: time to first frame ${lateTtff} ms`);
  assert.ok(lateTtff > 0 && lateTtff < 10_000, `late viewer time to first frame ${lateTtff} ms`);
  const lateStats = await late.evaluate(() => /** @type {any} */ (window).ferryPage.video.player.stats());
  assert.ok(lateStats.framesDecoded > 0);
  await late.close();

  // The host stops: the viewer page is told the stream ended.
  await host.click('#stop-live');
  await waitText(viewer, '#video-status', /The host ended the stream/);
  await host.waitForSelector('body[data-live="stopped"]');
  log('stream ended on the viewer page');
}

/**
 * The `li` of the comment list whose text (shown or original) contains `needle`, as the page
 * renders it: shown text, whether it is a translation, the original, and the item's data.
 * @param {Page} page
 * @param {string} needle
 */
async function commentItem(page, needle) {
  return page.evaluate((n) => {
    for (const li of document.querySelectorAll('#comments li')) {
      const original = li.querySelector('.original-text')?.textContent ?? '';
      const shown = li.querySelector('.text')?.textContent ?? '';
      if (!original.includes(n) && !shown.includes(n)) continue;
      const body = /** @type {HTMLElement | null} */ (li.querySelector('.body'));
      const originalBox = /** @type {HTMLElement | null} */ (li.querySelector('.original'));
      return {
        shown, original, translated: body?.dataset.translated === 'true', late: /** @type {HTMLElement} */ (li).dataset.late === 'true',
        offset: /** @type {HTMLElement} */ (li).dataset.offset ?? null, originalVisible: originalBox ? !originalBox.hidden : false,
        from: li.querySelector('.from')?.textContent ?? '', textLang: li.querySelector('.text')?.getAttribute('lang') ?? null,
      };
    }
    return null;
  }, needle);
}

/**
 * Wait until the comment containing `needle` on `page` satisfies `check`.
 * @param {Page} page
 * @param {string} needle
 * @param {(item: NonNullable<Awaited<ReturnType<typeof commentItem>>>) => boolean} check
 * @param {string} what
 */
async function waitComment(page, needle, check, what) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const item = await commentItem(page, needle);
    if (item && check(item)) return item;
    if (Date.now() > deadline) throw new Error(`comment ${JSON.stringify(needle)}: ${what}; it is ${JSON.stringify(item)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Two viewer pages in different languages and the host page in Chinese: comments arrive
 * translated (phrasebook at once; a provider translation that misses the latency budget
 * replaces the text in place when it arrives), the original a click away; a yellow comment
 * waits in the host's moderator queue and reaches the viewers when approved (or is rejected);
 * a red comment shows its rule to the sender only; the pinned product's title is in the
 * viewer's language.
 * @param {BrowserContext} context
 * @param {string[]} pageErrors
 */
async function translation(context, pageErrors) {
  assert.ok(TOKENS.viewer2, 'a second viewer token');
  // Viewer A reads English; viewer B opens in Japanese and switches to Chinese on the page;
  // the host reads Chinese.
  const a = await open(context, 'viewer A', `${BASE}/watch/${ROOM}?lang=en#token=${TOKENS.viewer}`, pageErrors);
  const b = await open(context, 'viewer B', `${BASE}/watch/${ROOM}?lang=ja#token=${TOKENS.viewer2}`, pageErrors);
  const host = await open(context, 'host', `${BASE}/host/${ROOM}?lang=zh#token=${TOKENS.host}`, pageErrors);
  for (const page of [a, b, host]) await page.waitForSelector('#status[data-state="live"]');
  for (const page of [a, b, host]) {
    await page.waitForFunction(() => /** @type {any} */ (window).ferryPage?.client.position(document.location.pathname.split('/').pop()) !== null);
  }
  assert.equal(await b.inputValue('#lang'), 'ja');
  await b.selectOption('#lang', 'zh');
  await b.waitForFunction(() => /** @type {any} */ (window).ferryPage.client.language === 'zh'
    && !(/** @type {HTMLSelectElement} */ (document.getElementById('lang'))).disabled);
  assert.equal(await b.evaluate(() => localStorage.getItem('ferry.lang')), 'zh', 'the choice is remembered');
  assert.equal(new URL(b.url()).searchParams.get('lang'), 'zh', 'and kept in the address');
  log('three pages joined; viewer B switched to Chinese');

  // A phrasebook phrase: translated at once for B and the host, the original on click.
  await a.fill('#comment-input', 'how much');
  await a.press('#comment-input', 'Enter');
  const onB = await waitComment(b, 'how much', (c) => c.translated, 'B reads it in Chinese');
  assert.equal(onB.shown, '多少钱？');
  assert.equal(onB.textLang, 'zh');
  assert.equal(onB.originalVisible, false);
  const onHost = await waitComment(host, 'how much', (c) => c.translated, 'the host reads it in Chinese');
  assert.equal(onHost.shown, '多少钱？');
  const onA = await waitComment(a, 'how much', () => true, 'A sees it');
  assert.equal(onA.translated, false, 'the sender reads their own language untranslated');
  await b.click(`#comments li[data-offset="${onB.offset}"] .original-toggle`);
  const clicked = await waitComment(b, 'how much', (c) => c.originalVisible, 'the original shows on click');
  assert.equal(clicked.original, 'how much');
  assert.match(clicked.from, /English/);
  await screenshot(b, 'viewer-b-translated');
  log('phrasebook translation shown, original on click');

  // B writes in Chinese: A reads English.
  await b.fill('#comment-input', '有货吗？');
  await b.press('#comment-input', 'Enter');
  const stock = await waitComment(a, '有货吗', (c) => c.translated, 'A reads it in English');
  assert.equal(stock.shown, 'In stock?');

  // Not in the phrasebook: the provider answers after the latency budget, so the comment
  // arrives in English first and its translation replaces the text in place.
  await a.fill('#comment-input', 'Is the rattan sturdy?');
  await a.press('#comment-input', 'Enter');
  const late = await waitComment(b, 'Is the rattan sturdy?', (c) => c.translated && c.late, 'the late translation replaces the text');
  assert.equal(late.shown, 'zh: IS THE RATTAN STURDY?');
  assert.equal(late.original, 'Is the rattan sturdy?');
  log('late translation applied in place');

  // Yellow (us: counterfeit): the sender waits, the host's queue shows it, approval publishes it.
  await a.fill('#comment-input', 'replica watch?');
  await a.press('#comment-input', 'Enter');
  await waitText(a, '#comments li.held-mine', /Waiting for a moderator: .*rule "counterfeit", market us/);
  await host.waitForSelector('#queue li[data-held]');
  await waitText(host, '#queue', /replica watch\?/);
  await waitText(host, '#queue', /counterfeit/);
  await waitText(host, '#queue-count', /^1$/);
  assert.equal(await commentItem(b, 'replica watch'), null, 'nobody sees it before approval');
  await screenshot(host, 'host-queue');
  await host.click('#queue li[data-held] button.approve');
  await waitComment(b, 'replica watch?', () => true, 'B sees the approved comment');
  await waitText(host, '#queue-count', /^0$/);
  await a.waitForSelector('#comments li.held-mine', { state: 'detached' });
  await waitComment(a, 'replica watch?', () => true, 'A sees its comment published');
  log('held comment approved from the host queue');

  // Another yellow one, rejected: the sender is told, nobody else sees it.
  await a.fill('#comment-input', 'knockoff bag?');
  await a.press('#comment-input', 'Enter');
  await waitText(host, '#queue', /knockoff bag\?/);
  await host.click('#queue li[data-held] button.reject');
  await waitText(a, '#comments li.held-mine[data-outcome="rejected"]', /did not publish/);
  await waitText(host, '#queue-count', /^0$/);

  // Red (us: drugs): refused with the rule, shown to the sender only.
  await a.fill('#comment-input', 'c o c a i n e for sale');
  await a.press('#comment-input', 'Enter');
  await waitText(a, '#comment-error', /^Not sent: Illegal drugs are not allowed \(rule "drugs", market us\)\. Nobody else saw it\.$/);
  assert.equal(await a.inputValue('#comment-input'), 'c o c a i n e for sale', 'the refused text stays for editing');
  // A later comment reaches B, the refused one never did.
  await b.fill('#comment-input', '多少钱');
  await b.press('#comment-input', 'Enter');
  await waitComment(a, '多少钱', (c) => c.translated, 'A sees the marker comment');
  assert.equal(await commentItem(b, 'c o c a i n e'), null);
  assert.equal(await commentItem(b, 'knockoff'), null);
  await screenshot(a, 'viewer-a-moderation');
  log('red comment refused with its rule');

  // The pinned product's title in each viewer's language (the merchant's glossary).
  await host.waitForSelector('#product-select option[value="basket-01"]', { state: 'attached' });
  await host.selectOption('#product-select', 'basket-01');
  await host.click('#pin-product-form button[type="submit"]');
  await waitText(a, '#product-title', /^rattan basket$/);
  await waitText(b, '#product-title', /^藤编篮$/);

  // The WHEP answer's `Link: rel="ice-server"` header (sfu.ice_servers) is on the player's
  // peer connection.
  const ice = await a.waitForFunction(() => {
    const pc = /** @type {any} */ (window).ferryPage.video.player?.pc;
    const servers = pc?.getConfiguration().iceServers ?? [];
    return servers.find((/** @type {any} */ s) => String(s.urls).includes('turn:127.0.0.1:9')) ?? null;
  });
  const turn = await ice.jsonValue();
  assert.equal(turn.username, 'e2e-user');
  assert.equal(turn.credential, 'e2e-secret');
  log(`WHEP Link ice-server applied: ${JSON.stringify(turn)}`);

  for (const page of [a, b]) {
    const stats = await page.evaluate(() => /** @type {any} */ (window).ferryPage.client.stats);
    assert.equal(stats.duplicates, 0);
    assert.equal(stats.gaps, 0);
  }
}

/** @type {Record<string, (context: BrowserContext, pageErrors: string[]) => Promise<void>>} */
const SCENARIOS = { 'chat-and-sales': chatAndSales, video, translation };

async function main() {
  const name = process.argv[2] ?? '';
  const scenario = SCENARIOS[name];
  if (!scenario) throw new Error(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(SCENARIOS).join(', ')}`);
  const started = Date.now();
  const context = await launch();
  /** @type {string[]} */
  const pageErrors = [];
  try {
    await scenario(context, pageErrors);
    assert.deepEqual(pageErrors, [], 'uncaught errors in the pages');
  } finally {
    await context.close();
  }
  log(`scenario ${name} passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
