// Unit tests of the flash-sale logic (sdk/sales.js): showcase updates, the sale's phase on the
// server clock, money, and the Buy press (one key per press, every answer).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Showcase, salePhase, formatMoney, formatCountdown, offerFor, minorDigits, BuyPress, buyAnswerOf,
  describeBuyAnswer, newIdempotencyKey, parseYuan, compareStock, applyStock,
} from '../../sdk/sales.js';
import { FerryError } from '../../sdk/client.js';

/** @param {string} currency @param {number} minor */
const money = (currency, minor) => ({ currency, minor });
/** @param {boolean} available @param {string} currency @param {number} minor */
const offer = (available, currency, minor) => ({
  available, price: money(currency, minor), tax_estimate: money(currency, 0), shipping_estimate: money(currency, 1500),
});
const product = {
  id: 'basket-01', title: '藤编篮', description: '', image_url: '', lang: 'zh', price_cny: 8900,
  markets: { us: offer(true, 'USD', 1234), mo: offer(false, 'MOP', 9895) }, fx_date: '2026-11-20',
};
/** @returns {import('../../sdk/protocol.js').SaleView} */
const sale = (over = {}) => ({
  id: 's1', room: 'r', product, quantity: 100, remaining: 100, price_cny: 5900,
  markets: { us: offer(true, 'USD', 818), hk: offer(true, 'HKD', 6369) }, per_buyer_limit: 2,
  starts_at: 10_000, ends_at: 70_000, hold_secs: 300, status: 'scheduled', ...over,
});
/** @type {import('../../sdk/protocol.js').UserRef} */
const by = { id: 'h', name: 'Host', role: 'host' };

test('showcase: state on join, pins, and sale counters patched into the sale', () => {
  const s = new Showcase();
  s.reset({ title: '', viewers: 0, likes: 0, slow_mode_secs: 0, closed: false, product: { product, by } });
  assert.equal(s.pinned?.product.id, 'basket-01');
  assert.equal(s.sale?.id, undefined);
  assert.equal(s.apply({ type: 'sale_scheduled', sale: sale() }), true);
  assert.equal(s.apply({ type: 'sale_started', stock: { sale: 's1', quantity: 100, remaining: 100, status: 'open' } }), true);
  assert.equal(s.sale?.status, 'open');
  s.apply({ type: 'sale_stock', stock: { sale: 's1', quantity: 100, remaining: 37, status: 'open', version: 63 } });
  assert.equal(s.sale?.remaining, 37);
  s.apply({ type: 'sale_sold_out', stock: { sale: 's1', quantity: 100, remaining: 0, status: 'sold_out', version: 100 } });
  assert.equal(s.sale?.status, 'sold_out');
  assert.equal(s.sale?.product.title, '藤编篮', 'the view is kept, only counters change');
  assert.equal(s.apply({ type: 'comment', user: by, text: 'x' }), false);
  s.apply({ type: 'product_unpinned', by });
  assert.equal(s.pinned, null);
});

test('showcase: counters of an unknown sale ask for its view', () => {
  const s = new Showcase();
  s.reset({ title: '', viewers: 0, likes: 0, slow_mode_secs: 0, closed: false, sale: sale({ id: 'old' }) });
  assert.equal(s.apply({ type: 'sale_started', stock: { sale: 's1', quantity: 5, remaining: 5, status: 'open' } }), false);
  assert.equal(s.missingSale, 's1');
  s.setSale(sale({ status: 'open', quantity: 5, remaining: 5 }));
  assert.equal(s.sale?.id, 's1');
  assert.equal(s.missingSale, null);
});

test('sale phase follows the server clock, not the events', () => {
  const sv = sale();
  assert.deepEqual(salePhase(sv, 4_000), { phase: 'scheduled', msToStart: 6_000, msToEnd: 66_000, canBuy: false });
  // Past starts_at before `sale_started` arrived: open already.
  assert.equal(salePhase(sv, 10_000).phase, 'open');
  assert.equal(salePhase(sv, 10_000).canBuy, true);
  assert.equal(salePhase({ ...sv, status: 'sold_out', remaining: 0 }, 20_000).phase, 'sold_out');
  assert.equal(salePhase({ ...sv, status: 'open', remaining: 0 }, 20_000).phase, 'sold_out');
  assert.equal(salePhase(sv, 70_000).phase, 'ended');
  assert.equal(salePhase({ ...sv, status: 'ended' }, 20_000).phase, 'ended');
});

test('money is formatted from integer minor units in the currency', () => {
  assert.equal(formatMoney(money('USD', 818), 'en-US'), '$8.18');
  assert.equal(formatMoney(money('USD', 1637), 'en-US'), '$16.37');
  assert.equal(formatMoney(money('HKD', 6369), 'en-US'), 'HK$63.69');
  assert.equal(formatMoney(money('CNY', 5900), 'zh-CN'), '¥59.00');
  assert.equal(formatMoney(money('JPY', 1200), 'en-US'), '¥1,200');
  assert.equal(minorDigits('USD'), 2);
  assert.equal(minorDigits('JPY'), 0);
  assert.equal(formatMoney(money('ZZ!', 123), 'en-US'), '1.23 ZZ!', 'an unknown currency still shows');
});

test('offers: available or not; none for an unknown market', () => {
  assert.equal(offerFor(product, 'us')?.price.minor, 1234);
  assert.equal(offerFor(product, 'mo')?.available, false);
  assert.equal(offerFor(product, 'zz'), null);
  assert.equal(offerFor(product, undefined), null);
  assert.equal(offerFor(product, 'toString'), null);
});

test('countdowns round up to whole seconds', () => {
  assert.equal(formatCountdown(9_000), '0:09');
  assert.equal(formatCountdown(8_001), '0:09');
  assert.equal(formatCountdown(65_000), '1:05');
  assert.equal(formatCountdown(3_723_000), '1:02:03');
  assert.equal(formatCountdown(-5), '0:00');
});

test('idempotency keys are 128 random bits in hex', () => {
  const a = newIdempotencyKey();
  assert.match(a, /^[0-9a-f]{32}$/);
  assert.notEqual(a, newIdempotencyKey());
});

/** A stand-in for FerryClient.buy that answers from a script and records the keys used. */
function scriptedClient(/** @type {Array<() => any>} */ script) {
  /** @type {any[]} */
  const calls = [];
  return {
    calls,
    /** @param {string} room @param {string} saleId @param {number} quantity @param {string} key */
    async buy(room, saleId, quantity, key) {
      calls.push({ room, saleId, quantity, key });
      const next = script.shift();
      if (!next) throw new Error('script exhausted');
      return next();
    },
  };
}
/** @param {number} code @param {string} name @param {number} [retry] */
const refusal = (code, name, retry) => () => {
  throw new FerryError('server', name, { code, name, message: name, retry_after_ms: retry });
};
/** @type {import('../../sdk/protocol.js').ReservationView} */
const reservation = {
  id: 's1.ab', sale: 's1', quantity: 2, amount_cny: 11800, amount_display: money('USD', 1637),
  market: 'us', deadline: 400_000, state: 'reserved',
};

test('a press retries with the same key after a drop, unavailable and a slightly early start', async () => {
  const client = scriptedClient([
    refusal(1504, 'sale_not_started', 5),
    () => { throw new FerryError('disconnected', 'connection lost'); },
    refusal(1503, 'unavailable', 5),
    () => ({ reservation, replayed: true }),
  ]);
  /** @type {string[]} */
  const retries = [];
  const press = new BuyPress(/** @type {any} */ (client), 'r', 's1', { quantity: 2, onRetry: (a) => retries.push(a.kind) });
  const answer = await press.send();
  assert.equal(answer.kind, 'reserved');
  assert.equal(answer.kind === 'reserved' && answer.replayed, true);
  assert.deepEqual(retries, ['sale_not_started', 'error', 'unavailable']);
  assert.equal(new Set(client.calls.map((c) => c.key)).size, 1, 'one key for every retry of the press');
  assert.equal(client.calls[0].key, press.key);
  assert.ok(client.calls.every((c) => c.quantity === 2));
});

test('final answers are returned at once, each as its own kind', async () => {
  /** @type {Array<[number, string]>} */
  const cases = [
    [1011, 'sold_out'], [1012, 'limit_reached'], [1013, 'sale_ended'], [1014, 'not_in_market'],
    [1016, 'idempotency_conflict'],
  ];
  for (const [code, name] of cases) {
    const client = scriptedClient([refusal(code, name)]);
    const answer = await new BuyPress(/** @type {any} */ (client), 'r', 's1').send();
    assert.equal(answer.kind, name);
    assert.equal(client.calls.length, 1, `${name} is not retried`);
    assert.ok(describeBuyAnswer(answer).length > 0);
  }
  // A start further away than maxNotStartedWaitMs is reported, not waited out.
  const early = scriptedClient([refusal(1504, 'sale_not_started', 60_000)]);
  const answer = await new BuyPress(/** @type {any} */ (early), 'r', 's1').send();
  assert.equal(answer.kind, 'sale_not_started');
  assert.equal(answer.kind === 'sale_not_started' && answer.retryAfterMs, 60_000);
  assert.match(describeBuyAnswer(answer), /1:00/);
  // Permanent errors without a dedicated kind (e.g. not_found) are 'error'.
  const gone = scriptedClient([refusal(1015, 'not_found')]);
  assert.equal((await new BuyPress(/** @type {any} */ (gone), 'r', 's1').send()).kind, 'error');
});

test('attempts are bounded: an unavailable store is reported after maxAttempts', async () => {
  const client = scriptedClient([refusal(1503, 'unavailable', 1), refusal(1503, 'unavailable', 1), refusal(1503, 'unavailable', 1)]);
  const answer = await new BuyPress(/** @type {any} */ (client), 'r', 's1', { maxAttempts: 3 }).send();
  assert.equal(answer.kind, 'unavailable');
  assert.equal(client.calls.length, 3);
});

test('answers read well', () => {
  const text = describeBuyAnswer({ kind: 'reserved', reservation, replayed: false }, { locale: 'en-US', msUntil: () => 299_000 });
  assert.equal(text, 'Reserved 2 for $16.37. Pay within 4:59 to keep it.');
  assert.equal(buyAnswerOf(new Error('boom')).kind, 'error');
});

test('yuan typed by a host become fen without floating point', () => {
  assert.equal(parseYuan('59'), 5900);
  assert.equal(parseYuan('59.9'), 5990);
  assert.equal(parseYuan(' 59.90 '), 5990);
  assert.equal(parseYuan('0.29'), 29, '0.29 * 100 is 28.999... in floating point');
  assert.equal(parseYuan('59,5'), 5950);
  assert.equal(parseYuan('5.999'), null);
  assert.equal(parseYuan('-1'), null);
  assert.equal(parseYuan('abc'), null);
});

test('stock objects apply in version order only (the rule of SaleView::apply_stock)', () => {
  /** @param {number} remaining @param {import('../../sdk/protocol.js').SaleStatus} status @param {number} version */
  const stock = (remaining, status, version) => ({ sale: 's1', quantity: 100, remaining, status, version });
  // The same sequence as the Rust test `stock_patches_apply_in_version_order_only`.
  let v = sale({ status: 'scheduled', version: 0 });
  const step = (/** @type {ReturnType<typeof stock>} */ st) => {
    const next = applyStock(v, st);
    if (next) v = next;
    return next !== null;
  };
  assert.equal(step(stock(10, 'open', 0)), true, 'started: same version, later phase');
  assert.equal(step(stock(0, 'sold_out', 12)), true);
  assert.equal(step(stock(4, 'open', 7)), false, 'an older version delivered late is ignored');
  assert.deepEqual([v.remaining, v.status, v.version], [0, 'sold_out', 12]);
  assert.equal(step(stock(0, 'scheduled', 12)), false, 'same version, earlier phase: older');
  assert.equal(step(stock(0, 'sold_out', 12)), false, 'a duplicate');
  assert.equal(step(stock(0, 'ended', 12)), true, 'same version, later phase: newer');
  assert.equal(step(stock(5, 'open', 40)), false, 'ended is final, whatever the version');
  assert.equal(applyStock(v, { ...stock(1, 'ended', 99), sale: 'other' }), null, "another sale's stock never applies");
  assert.deepEqual([v.remaining, v.status, v.version], [0, 'ended', 12]);
  // Objects from a server without versions compare as version 0.
  assert.equal(compareStock({ status: 'open' }, { status: 'scheduled', version: 0 }) > 0, true);
  assert.equal(compareStock({ status: 'ended', version: 1 }, { status: 'open', version: 9 }) > 0, true);
});

test('showcase: an older stock event never overwrites a newer one; setSale keeps newer counters', () => {
  const s = new Showcase();
  s.reset({ title: '', viewers: 0, likes: 0, slow_mode_secs: 0, closed: false, sale: sale({ status: 'open', remaining: 50, version: 50 }) });
  assert.equal(s.apply({ type: 'sale_stock', stock: { sale: 's1', quantity: 100, remaining: 30, status: 'open', version: 70 } }), true);
  // Built earlier on another node, delivered later: ignored.
  assert.equal(s.apply({ type: 'sale_stock', stock: { sale: 's1', quantity: 100, remaining: 40, status: 'open', version: 60 } }), false);
  assert.equal(s.sale?.remaining, 30);
  // A view fetched over HTTP that is older than the events keeps the newer counters.
  s.setSale(sale({ status: 'open', remaining: 45, version: 55, per_buyer_limit: 3 }));
  assert.deepEqual([s.sale?.remaining, s.sale?.version, s.sale?.per_buyer_limit], [30, 70, 3]);
  s.setSale(sale({ status: 'open', remaining: 20, version: 80 }));
  assert.deepEqual([s.sale?.remaining, s.sale?.version], [20, 80]);
  assert.equal(s.apply({ type: 'sale_ended', stock: { sale: 's1', quantity: 100, remaining: 20, status: 'ended', version: 80 } }), true);
  assert.equal(s.apply({ type: 'sale_stock', stock: { sale: 's1', quantity: 100, remaining: 10, status: 'open', version: 90 } }), false);
  assert.equal(s.sale?.status, 'ended');
});
