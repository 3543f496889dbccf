// Unit tests of translated chat and moderation (sdk/chat.js): what a reader of a language
// sees, late `translation` events applied to the comment already shown, the moderator queue,
// and the sender's held comments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatLog, ModerationQueue, MyHeldComments, shownText, productText, describeRule,
} from '../../sdk/chat.js';
import { normalizeLang } from '../../sdk/protocol.js';

/** @type {import('../../sdk/protocol.js').UserRef} */
const ana = { id: 'u-2001', name: 'Ana', role: 'viewer' };
/** @type {import('../../sdk/protocol.js').UserRef} */
const host = { id: 'h-7', name: 'Lena', role: 'host' };
/** @type {import('../../sdk/protocol.js').RuleRef} */
const gambling = { market: 'ae', rule: 'gambling', severity: 'yellow', label: 'Gambling is held for review' };

test('a reader sees the translation into their language, the original a tap away', () => {
  const c = { text: '¿Cuánto cuesta?', lang: 'es', translations: { zh: '多少钱？' } };
  assert.deepEqual(shownText(c, 'zh'), {
    text: '多少钱？', translated: true, original: '¿Cuánto cuesta?', sourceLang: 'es', textLang: 'zh',
  });
  // No translation for the reader's language, the reader's own language, or no language.
  assert.equal(shownText(c, 'ja').translated, false);
  assert.equal(shownText(c, 'ja').text, '¿Cuánto cuesta?');
  assert.equal(shownText({ ...c, translations: { es: 'x' } }, 'es').text, '¿Cuánto cuesta?');
  assert.equal(shownText(c, null).text, '¿Cuánto cuesta?');
  assert.equal(shownText({ text: '👍👍' }, 'en').sourceLang, null);
});

test('late translation events replace the text of the comment already shown', () => {
  const log = new ChatLog();
  const added = log.apply({ type: 'comment', user: ana, text: '¿Hay stock?', lang: 'es' }, 57);
  assert.equal(added?.kind, 'added');
  assert.equal(shownText(/** @type {any} */ (added).entry, 'en').translated, false, 'the original first');
  // The translation arrives later as its own stream event pointing at offset 57.
  const change = log.apply({ type: 'translation', offset: 57, translations: { en: 'In stock?' } }, 58);
  assert.equal(change?.kind, 'translated');
  const entry = log.get(57);
  assert.ok(entry);
  assert.equal(shownText(entry, 'en').text, 'In stock?');
  assert.equal(shownText(entry, 'en').original, '¿Hay stock?');
  // An update for other languages reaches this connection with `{}`: nothing changes.
  assert.equal(log.apply({ type: 'translation', offset: 57, translations: {} }, 59), null);
  // The same translation twice, or one for a comment no longer kept: nothing to do.
  assert.equal(log.apply({ type: 'translation', offset: 57, translations: { en: 'In stock?' } }, 60), null);
  assert.equal(log.apply({ type: 'translation', offset: 3, translations: { en: 'x' } }, 61), null);
  // Announcements are translated too; deletions mark the entry.
  log.apply({ type: 'announcement', user: host, text: '五分钟后开抢', lang: 'zh', translations: { en: 'Sale in five minutes' } }, 62);
  assert.equal(shownText(/** @type {any} */ (log.get(62)), 'en').text, 'Sale in five minutes');
  const del = log.apply({ type: 'comment_deleted', offset: 57, by: host }, 63);
  assert.equal(del?.kind, 'deleted');
  assert.equal(log.get(57)?.deleted, true);
  assert.equal(log.apply({ type: 'likes', count: 3 }, 64), null);
});

test('the chat log keeps the last maxEntries comments', () => {
  const log = new ChatLog({ maxEntries: 3 });
  for (let i = 1; i <= 5; i++) log.apply({ type: 'comment', user: ana, text: `c${i}` }, i);
  assert.deepEqual(log.entries.map((e) => e.offset), [3, 4, 5]);
  assert.equal(log.apply({ type: 'translation', offset: 1, translations: { en: 'x' } }, 6), null);
  log.clear();
  assert.equal(log.entries.length, 0);
});

test('the moderator queue follows state.held, comment_held, approvals and rejections', () => {
  const q = new ModerationQueue();
  /** @type {import('../../sdk/protocol.js').HeldComment} */
  const h1 = { id: 'h1', user: ana, text: 'any lottery tickets?', lang: 'en', translations: { zh: '有彩票吗？' }, rule: gambling, at: 1 };
  q.reset({ held: [h1] });
  assert.deepEqual(q.held.map((h) => h.id), ['h1']);
  const h2 = { ...h1, id: 'h2', text: 'casino link?' };
  assert.equal(q.apply({ type: 'comment_held', id: 'h2', held: h2 }), true);
  assert.equal(q.apply({ type: 'comment_held', id: 'h2', held: h2 }), false, 'a duplicate');
  assert.equal(q.apply({ type: 'comment_held', id: 'h3' }), false, "a viewer's connection gets only the id");
  assert.deepEqual(q.held.map((h) => h.id), ['h1', 'h2']);
  // Approved (here or by another moderator): the comment is published with held_id.
  assert.equal(q.apply({ type: 'comment', user: ana, text: h1.text, held_id: 'h1' }), true);
  assert.equal(q.apply({ type: 'comment', user: ana, text: 'plain' }), false);
  assert.equal(q.apply({ type: 'comment_rejected', id: 'h2', by: host }), true);
  assert.deepEqual(q.held, []);
  assert.equal(q.apply({ type: 'comment_rejected', id: 'h2', by: host }), false);
  q.reset({});
  assert.deepEqual(q.held, []);
});

test("the sender's held comments resolve by approval or rejection, in either order", () => {
  const mine = new MyHeldComments();
  assert.equal(mine.add({ id: 'h1', rule: gambling }, 'any lottery tickets?'), null);
  assert.deepEqual(mine.waiting.map((w) => w.text), ['any lottery tickets?']);
  assert.equal(mine.apply({ type: 'comment_held', id: 'h1' }), null);
  const approved = mine.apply({ type: 'comment', user: ana, text: 'any lottery tickets?', held_id: 'h1' });
  assert.equal(approved?.outcome, 'approved');
  assert.equal(approved?.comment.rule.rule, 'gambling');
  assert.deepEqual(mine.waiting, []);
  // The rejection event overtakes the `pending` reply: the outcome is known at once.
  assert.equal(mine.apply({ type: 'comment_rejected', id: 'h9', by: host }), null);
  assert.equal(mine.add({ id: 'h9', rule: gambling }, 'casino?'), 'rejected');
  assert.deepEqual(mine.waiting, []);
});

test('product texts in the reader language when the server sent them', () => {
  const product = {
    id: 'b', title: '藤编篮', description: '手工', image_url: '', lang: 'zh', price_cny: 1, markets: {}, fx_date: '',
    translations: { en: { title: 'Rattan basket', description: 'Handmade' } },
  };
  assert.deepEqual(productText(product, 'en'), { title: 'Rattan basket', description: 'Handmade', lang: 'en', translated: true });
  assert.equal(productText(product, 'ja').title, '藤编篮');
  assert.equal(productText(product, 'zh').translated, false);
  assert.equal(productText({ ...product, translations: undefined }, 'en').title, '藤编篮');
});

test('rules are named for people; language tags normalize like the server', () => {
  assert.equal(describeRule({ market: 'us', rule: 'drugs', severity: 'red', label: 'Illegal drugs are not allowed' }),
    'Illegal drugs are not allowed (rule "drugs", market us)');
  assert.equal(normalizeLang('en-US'), 'en');
  assert.equal(normalizeLang('zh_Hant_TW'), 'zh');
  assert.equal(normalizeLang(' ES '), 'es');
  assert.equal(normalizeLang('fil'), 'fil');
  for (const bad of ['e', 'english', 'en-', '日本', '']) assert.equal(normalizeLang(bad), null, bad);
});
