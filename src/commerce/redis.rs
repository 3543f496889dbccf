//! The Redis sale store: the rules of [`super::book`] as one Lua script per step, every key
//! of a sale under the hash tag `{sale:<id>}` so each step runs atomically on one shard
//! (standalone Redis or Redis Cluster). Time is the caller's `now` (passed in ARGV), never
//! Redis `TIME`, so the store behaves exactly like the embedded one under the same inputs.
//!
//! # Keys
//! Per sale (`<p>` is the configured prefix, `<t>` = `{sale:<id>}`):
//! - `<p>:<t>:def`        HASH  `json` (the [`SaleRecord`] as created), `starts_at`, `ends_at`,
//!   `ended_at` (absent = not ended early), `quantity`, `price_cny`, `limit`, `hold_ms`,
//!   `m:<market>` = 1 per admitted market (`ended_at` and `m:*` override the JSON), and
//!   `a:started` / `a:ended`: an announcement's lease (until when, caller's Unix ms) or
//!   `done` once it was published and recorded (never claimed again).
//! - `<p>:<t>:stock`      HASH  `remaining`, `confirmed` (reserved = quantity − both).
//! - `<p>:<t>:res`        HASH  reservation id → [`Reservation`] JSON (current state).
//! - `<p>:<t>:keys`       HASH  `<len(buyer)>:<buyer>|<key>` → reservation id (idempotency).
//! - `<p>:<t>:held`       HASH  buyer → units held (active + confirmed; per-buyer limit).
//! - `<p>:<t>:deadlines`  ZSET  active reservation id scored by its payment deadline.
//! - `<p>:<t>:orders`     STREAM order events, field `event` = the [`OrderEvent`] JSON;
//!   consumer groups (consumer `ferry`) on it.
//! - `<p>:<t>:g:<group>`  HASH  stream id → `now` of its last delivery to `<group>`
//!   (redelivery runs on the caller's clock, not Redis idle times).
//!
//! Outside any sale's slot (not part of a sale's atomic step): `<p>:products` HASH product
//! id → JSON; the listings, under one hash tag of their own so one script updates them
//! together: `<p>:{sales}:all` ZSET every sale scored by its position (creation sequence),
//! `<p>:{sales}:live` ZSET the sales the sweep still visits (same scores; a sale leaves it
//! when retired), `<p>:{sales}:room:<room>` ZSET a room's sales (same scores);
//! `<p>:claim:<what>` strings (`SET NX PX`, throttles). `<p>:sales` is the listing of earlier
//! versions, folded into the new ones once at connect (`<p>:{sales}:migrated`).
//!
//! # Scripts
//! [`BUY_SCRIPT`] (idempotency key → sale window → market → per-buyer limit → stock, then
//! reserve and `XADD` the `reserved` event), `CONFIRM`, `RELEASE`, `EXPIRE` (pop due ids
//! from the deadline ZSET and release each), `END`, `MARKETS`, `CREATE`, `SNAPSHOT`,
//! `READ` (redeliveries via `XPENDING` + `XCLAIM`, then new events via `XREADGROUP`),
//! `ACK`, and `INDEX` (the sale list). Every key a script touches is passed in KEYS.
//!
//! A reservation's JSON is built by Rust (serde) with its mutable fields last
//! (`,"state":…,"ended_at":…,"payment_ref":…,"release_reason":…}`); scripts that end a
//! reservation keep everything before `,"state":"` and write a new tail. The sale price and
//! hold time are immutable, so Rust caches them to compute the amount and deadline exactly
//! (u64/i64 arithmetic); the buy script checks the cached values against the sale and asks
//! for a refresh if they differ. Integers compared inside Lua are doubles: exact below 2^53
//! (Unix ms until the year 287,000; any real stock, limit or price).
//!
//! Durability is Redis's: with `appendonly yes` + `appendfsync always` an answered step is
//! on disk before the answer (a test kills Redis mid-sale and checks nothing answered is
//! lost). A sale's throughput is bounded by its one shard's core: `examples/sale_buy_bench.rs`
//! measures it against `redis-benchmark` EVALSHA of [`BUY_SCRIPT`].
//!
//! Failures reaching Redis (connection, timeout, unexpected reply) are
//! [`StoreError::Unavailable`]; every call is bounded by the command timeout, and while a
//! background ping fails, calls fail fast instead of queueing on a dead connection.

use super::{
    Announced, Announcement, Bought, BuyRefusal, BuyRequest, DeliveredOrderEvent, OrderEvent,
    OrderEventKind, Product, ReleaseReason, Reservation, SalePosition, SaleRecord, SaleSnapshot,
    SaleStore, Settled, StoreError,
};
use crate::engine::redis::RedisEngineOptions;
use crate::redis_conn::{RedisConn, RedisHealth, RedisStartError, RedisTarget};
use async_trait::async_trait;
use dashmap::DashMap;
use ferry_client::protocol::commerce::{ProductId, ReservationId, ReservationState, SaleId};
use ferry_client::protocol::RoomId;
use redis::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// How to reach Redis (mirrors the room engine's options).
#[derive(Clone, Debug)]
pub struct RedisSaleStoreOptions {
    /// Where Redis is; its command timeout bounds every call (a script with its reload after
    /// a restart included).
    pub redis: RedisTarget,
    /// Prefix of every key.
    pub prefix: String,
}

impl From<&RedisEngineOptions> for RedisSaleStoreOptions {
    fn from(o: &RedisEngineOptions) -> Self {
        Self {
            redis: o.redis.clone(),
            prefix: o.prefix.clone(),
        }
    }
}

/// The buy step. KEYS: def stock res keys held deadlines orders. ARGV: now buyer market
/// quantity index new_id reservation_json price_cny hold_ms deadline.
///
/// Public so benchmarks can run the exact script with `redis-benchmark` (`EVALSHA`).
pub const BUY_SCRIPT: &str = r#"
local d = redis.call('HMGET', KEYS[1], 'starts_at', 'ends_at', 'ended_at', 'limit', 'price_cny', 'hold_ms', 'm:' .. ARGV[3])
if not d[1] then return {'missing'} end
local qty = tonumber(ARGV[4])
local prior = redis.call('HGET', KEYS[4], ARGV[5])
if prior then
  local json = redis.call('HGET', KEYS[3], prior)
  if not json then return redis.error_reply('reservation ' .. prior .. ' is indexed but missing') end
  if tonumber(cjson.decode(json).quantity) ~= qty then return {'conflict'} end
  return {'replay', json}
end
if qty < 1 then return {'bad_quantity'} end
local now = tonumber(ARGV[1])
if (d[3] and tonumber(d[3]) <= now) or now >= tonumber(d[2]) then return {'ended'} end
if now < tonumber(d[1]) then return {'not_started', d[1]} end
if not d[7] then return {'not_in_market'} end
local held = tonumber(redis.call('HGET', KEYS[5], ARGV[2]) or '0')
-- the book adds held + quantity as u32, saturating
if math.min(held + qty, 4294967295) > tonumber(d[4]) then return {'limit', d[4], held} end
local remaining = tonumber(redis.call('HGET', KEYS[2], 'remaining'))
if remaining < qty then return {'sold_out', remaining} end
if d[5] ~= ARGV[8] or d[6] ~= ARGV[9] then return {'stale'} end
redis.call('HINCRBY', KEYS[2], 'remaining', -qty)
redis.call('HINCRBY', KEYS[5], ARGV[2], qty)
redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('ZADD', KEYS[6], ARGV[10], ARGV[6])
redis.call('XADD', KEYS[7], '*', 'event', '{"type":"reserved","reservation":' .. ARGV[7] .. ',"at":' .. ARGV[1] .. '}')
return {'new'}
"#;

/// Shared by the scripts that end reservations. KEYS: def stock res held deadlines orders.
const SETTLE_PRELUDE: &str = r#"
local function core_of(json)
  local i = string.find(json, ',"state":"', 1, true)
  if not i then error('reservation JSON without a state') end
  return string.sub(json, 1, i - 1)
end
local function append(kind, json, now)
  redis.call('XADD', KEYS[6], '*', 'event', '{' .. kind .. ',"reservation":' .. json .. ',"at":' .. now .. '}')
end
local function release(id, json, r, reason, now)
  local new = core_of(json) .. ',"state":"released","ended_at":' .. now .. ',"payment_ref":null,"release_reason":' .. reason .. '}'
  redis.call('HSET', KEYS[3], id, new)
  redis.call('ZREM', KEYS[5], id)
  redis.call('HINCRBY', KEYS[2], 'remaining', r.quantity)
  local h = redis.call('HGET', KEYS[4], r.buyer)
  if h then
    local left = tonumber(h) - r.quantity
    if left > 0 then redis.call('HSET', KEYS[4], r.buyer, left) else redis.call('HDEL', KEYS[4], r.buyer) end
  end
  append('"type":"released","reason":' .. reason, new, now)
  return new
end
"#;

/// ARGV: id now payment_ref_json.
const CONFIRM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local json = redis.call('HGET', KEYS[3], ARGV[1])
if not json then return {'none'} end
local r = cjson.decode(json)
if r.state ~= 'reserved' then return {'already', json} end
if tonumber(ARGV[2]) > tonumber(r.deadline) then
  return {'now', release(ARGV[1], json, r, '"expired"', ARGV[2])}
end
local new = core_of(json) .. ',"state":"confirmed","ended_at":' .. ARGV[2] .. ',"payment_ref":' .. ARGV[3] .. ',"release_reason":null}'
redis.call('HSET', KEYS[3], ARGV[1], new)
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'confirmed', r.quantity)
append('"type":"confirmed"', new, ARGV[2])
return {'now', new}
"#;

/// ARGV: id now reason_json.
const RELEASE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local json = redis.call('HGET', KEYS[3], ARGV[1])
if not json then return {'none'} end
local r = cjson.decode(json)
if r.state ~= 'reserved' then return {'already', json} end
return {'now', release(ARGV[1], json, r, ARGV[3], ARGV[2])}
"#;

/// ARGV: now max. Releases (reason `expired`) reservations whose deadline < now.
const EXPIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[3], id)
  local r = json and cjson.decode(json)
  if r and r.state == 'reserved' then
    out[#out + 1] = release(id, json, r, '"expired"', ARGV[1])
  else
    redis.call('ZREM', KEYS[5], id)
  end
end
return out
"#;

/// Reads a sale's definition, counters and number of order events (its version is that
/// number, plus one if `ended_at` is set). KEYS: def stock orders.
const SNAPSHOT_FN: &str = r#"
local function snapshot()
  return {redis.call('HGETALL', KEYS[1]), redis.call('HMGET', KEYS[2], 'remaining', 'confirmed'),
    redis.call('XLEN', KEYS[3])}
end
"#;

/// KEYS: def stock orders.
const SNAPSHOT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return snapshot()
"#;

/// KEYS: def stock orders. ARGV: now. Buys are refused from `now` (unless the sale already
/// ended).
const END: &str = r#"
local d = redis.call('HMGET', KEYS[1], 'ends_at', 'ended_at')
if not d[1] then return false end
if not d[2] and tonumber(ARGV[1]) < tonumber(d[1]) then
  redis.call('HSET', KEYS[1], 'ended_at', ARGV[1])
end
return snapshot()
"#;

/// KEYS: def. ARGV: markets...
const MARKETS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'm:' then redis.call('HDEL', KEYS[1], f) end
end
for i = 1, #ARGV do redis.call('HSET', KEYS[1], 'm:' .. ARGV[i], 1) end
return 1
"#;

/// KEYS: def stock. ARGV: json starts_at ends_at ended_at('' = none) quantity price_cny
/// limit hold_ms markets...
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3],
  'quantity', ARGV[5], 'price_cny', ARGV[6], 'limit', ARGV[7], 'hold_ms', ARGV[8])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'ended_at', ARGV[4]) end
for i = 9, #ARGV do redis.call('HSET', KEYS[1], 'm:' .. ARGV[i], 1) end
redis.call('HSET', KEYS[2], 'remaining', ARGV[5], 'confirmed', 0)
return 1
"#;

/// KEYS: all live room. ARGV: id live(1/0). Lists the sale (once) with the next position:
/// in every sale, the live sales (when `live` is 1) and its room's sales; returns the
/// position. Listing again (a retried create) changes nothing.
const INDEX: &str = r#"
local n = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not n then
  local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  n = 1
  if top[2] then n = tonumber(top[2]) + 1 end
  redis.call('ZADD', KEYS[1], n, ARGV[1])
  if ARGV[2] == '1' then redis.call('ZADD', KEYS[2], n, ARGV[1]) end
end
redis.call('ZADD', KEYS[3], n, ARGV[1])
return tonumber(n)
"#;

/// KEYS: def. ARGV: field(`a:started`/`a:ended`) now until. 1: the lease is the caller's;
/// 0: recorded already, or another caller's lease runs; -1: no such sale.
const CLAIM_ANNOUNCEMENT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v == 'done' then return 0 end
if v and tonumber(v) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// KEYS: def. ARGV: field. Records the announcement as made. -1: no such sale.
const MARK_ANNOUNCED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 'done')
return 1
"#;

/// KEYS: def orders delivered. ARGV: group consumer count redeliver_after_ms now.
/// Pending events whose last delivery (caller's clock) is old enough come first, in stream
/// order, re-claimed with `XCLAIM` (which counts the delivery); then never-delivered ones.
const READ: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
local count = tonumber(ARGV[3])
local after = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local out = {}
if count < 1 then return {'ok', out} end
local function event_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'event' then return fields[i + 1] end
  end
  return ''
end
local start = '-'
while #out < count do
  local pending = redis.call('XPENDING', KEYS[2], ARGV[1], start, '+', 100)
  for _, p in ipairs(pending) do
    if #out >= count then break end
    local last = tonumber(redis.call('HGET', KEYS[3], p[1]) or '0')
    if after == 0 or now - last >= after then
      local entry = redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, p[1])[1]
      if entry then
        redis.call('HSET', KEYS[3], p[1], ARGV[5])
        out[#out + 1] = {p[1], p[4] + 1, event_of(entry[2])}
      else
        redis.call('XACK', KEYS[2], ARGV[1], p[1])
        redis.call('HDEL', KEYS[3], p[1])
      end
    end
  end
  if #pending < 100 then break end
  start = '(' .. pending[#pending][1]
end
if #out < count then
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count - #out, 'STREAMS', KEYS[2], '>')
  if got then
    for _, e in ipairs(got[1][2]) do
      redis.call('HSET', KEYS[3], e[1], ARGV[5])
      out[#out + 1] = {e[1], 1, event_of(e[2])}
    end
  end
end
return {'ok', out}
"#;

/// KEYS: def orders delivered. ARGV: group ids...
const ACK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if #ARGV < 2 then return 0 end
local n = redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, 2))
redis.call('HDEL', KEYS[3], unpack(ARGV, 2))
return n
"#;

/// The consumer name used inside every group (the trait has groups, not consumers).
const CONSUMER: &str = "ferry";
/// Ids acknowledged per `ACK` call (Lua's `unpack` has a stack limit).
const ACK_CHUNK: usize = 500;
/// Entries per `XRANGE` page in [`SaleStore::all_orders`].
const RANGE_PAGE: usize = 1000;
struct Scripts {
    buy: redis::Script,
    confirm: redis::Script,
    release: redis::Script,
    expire: redis::Script,
    snapshot: redis::Script,
    end: redis::Script,
    markets: redis::Script,
    create: redis::Script,
    index: redis::Script,
    read: redis::Script,
    ack: redis::Script,
    claim_announcement: redis::Script,
    mark_announced: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let settle = |body: &str| redis::Script::new(&format!("{SETTLE_PRELUDE}{body}"));
        let snap = |body: &str| redis::Script::new(&format!("{SNAPSHOT_FN}{body}"));
        Self {
            buy: redis::Script::new(BUY_SCRIPT),
            confirm: settle(CONFIRM),
            release: settle(RELEASE),
            expire: settle(EXPIRE),
            snapshot: snap(SNAPSHOT),
            end: snap(END),
            markets: redis::Script::new(MARKETS),
            create: redis::Script::new(CREATE),
            index: redis::Script::new(INDEX),
            read: redis::Script::new(READ),
            ack: redis::Script::new(ACK),
            claim_announcement: redis::Script::new(CLAIM_ANNOUNCEMENT),
            mark_announced: redis::Script::new(MARK_ANNOUNCED),
        }
    }
}

/// A sale's immutable terms, cached to compute amounts and deadlines exactly in Rust.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Terms {
    price_cny: i64,
    hold_ms: u64,
}

struct Inner {
    conn: RedisConn,
    /// Whether Redis is answering; while not, calls fail fast with `Unavailable`.
    health: Arc<RedisHealth>,
    opts: RedisSaleStoreOptions,
    scripts: Scripts,
    terms: DashMap<SaleId, Terms>,
}

/// Catalog, sales, reservations and order events in Redis (standalone or Redis Cluster).
#[derive(Clone)]
pub struct RedisSaleStore {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn bad_reply(what: &str, v: &impl std::fmt::Debug) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis to {what}: {v:?}"))
}

/// The bytes of a string-like reply.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn array(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad_reply(what, &other)),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(s)
        .map_err(|e| StoreError::Unavailable(format!("undecodable {what} in Redis: {e}")))
}

/// The JSON stored for a reservation: serde's fields with the mutable ones moved last, in
/// the layout the scripts rewrite (`…,"state":…,"ended_at":…,"payment_ref":…,
/// "release_reason":…}`).
fn reservation_json(r: &Reservation) -> Result<String, StoreError> {
    let encode = |e: serde_json::Error| StoreError::Unavailable(format!("cannot encode: {e}"));
    let mut value = serde_json::to_value(r).map_err(encode)?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| StoreError::Unavailable("a reservation is not a JSON object".into()))?;
    for k in ["state", "ended_at", "payment_ref", "release_reason"] {
        map.remove(k);
    }
    let mut json = serde_json::to_string(map).map_err(encode)?;
    json.pop(); // the closing brace
    let tail = format!(
        ",\"state\":{},\"ended_at\":{},\"payment_ref\":{},\"release_reason\":{}}}",
        serde_json::to_string(&r.state).map_err(encode)?,
        serde_json::to_string(&r.ended_at).map_err(encode)?,
        serde_json::to_string(&r.payment_ref).map_err(encode)?,
        serde_json::to_string(&r.release_reason).map_err(encode)?,
    );
    json.push_str(&tail);
    Ok(json)
}

/// The idempotency index field of (buyer, key): length-prefixed, so no two pairs collide.
fn key_index(buyer: &str, key: &str) -> String {
    format!("{}:{buyer}|{key}", buyer.len())
}

/// Whether `id` looks like a stream id (`<ms>-<seq>`), so `XACK` will accept it.
fn is_stream_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next())
}

/// The event an ended reservation produced (what the script appended to the stream).
fn settle_event(r: &Reservation, now: u64) -> OrderEvent {
    let kind = match r.state {
        ReservationState::Confirmed => OrderEventKind::Confirmed,
        _ => OrderEventKind::Released(r.release_reason.unwrap_or(ReleaseReason::Expired)),
    };
    OrderEvent::of(kind, r, now)
}

/// `[HGETALL def, HMGET stock remaining confirmed, XLEN orders]` → snapshot.
fn parse_snapshot(v: Value) -> Result<Option<SaleSnapshot>, StoreError> {
    if matches!(v, Value::Nil) {
        return Ok(None);
    }
    let mut parts = array(v, "a sale snapshot")?.into_iter();
    let (Some(def), Some(stock), Some(events)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_reply("a sale snapshot", &"too short"));
    };
    let events = int(&events)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| bad_reply("a sale snapshot (XLEN)", &events))?;
    let def = array(def, "a sale snapshot")?;
    let mut json = None;
    let mut ended_at = None;
    let mut markets = BTreeSet::new();
    let mut announced = Announced::default();
    for kv in def.chunks(2) {
        let (Some(k), Some(val)) = (kv.first().and_then(text), kv.get(1)) else {
            continue;
        };
        if k == "json" {
            json = bytes(val);
        } else if k == "ended_at" {
            ended_at = int(val).and_then(|t| u64::try_from(t).ok());
        } else if let Some(m) = k.strip_prefix("m:") {
            markets.insert(m.to_owned());
        } else if text(val) == Some("done") {
            match k {
                "a:started" => announced.started = true,
                "a:ended" => announced.ended = true,
                _ => {}
            }
        }
    }
    let json = json.ok_or_else(|| bad_reply("a sale snapshot (no json)", &def))?;
    let mut sale: SaleRecord = parse_json("sale", json)?;
    sale.ended_at = ended_at;
    sale.markets = markets;
    let stock = array(stock, "a sale snapshot")?;
    let counter = |i: usize| {
        stock
            .get(i)
            .and_then(int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad_reply("a sale's counters", &stock))
    };
    let (remaining, confirmed) = (counter(0)?, counter(1)?);
    Ok(Some(SaleSnapshot {
        reserved: sale
            .quantity
            .saturating_sub(remaining)
            .saturating_sub(confirmed),
        version: events + u64::from(sale.ended_at.is_some()),
        announced,
        sale,
        remaining,
        confirmed,
    }))
}

impl RedisSaleStore {
    /// Connect to Redis (or the cluster) and start the health check.
    pub async fn connect(opts: RedisSaleStoreOptions) -> Result<RedisSaleStore, RedisStartError> {
        let conn = RedisConn::connect(&opts.redis, None).await?;
        let health = RedisHealth::start(&opts.redis, "sale store").await?;
        let inner = Arc::new(Inner {
            conn,
            health,
            opts,
            scripts: Scripts::new(),
            terms: DashMap::new(),
        });
        inner.preload().await;
        let store = RedisSaleStore { inner };
        match store.migrate(crate::unix_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sales = n,
                "sale store: listings of an earlier version migrated"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "sale store: cannot migrate the listings of an earlier version; retried at the next start")
            }
        }
        Ok(store)
    }

    /// Fold the sale list of earlier versions (`<p>:sales`) into the listings, once per Redis
    /// (then `<p>:{sales}:migrated` is set; nodes racing here do the same idempotent steps).
    /// Announcements made under the claims of earlier versions (`<p>:claim:started:<id>`,
    /// `…ended:<id>`, 7-day keys) are recorded as made, and so are both announcements of a
    /// sale that ended before now (its end was announced, or is of no use to anyone now).
    /// A sale is live unless it ended and holds nothing.
    async fn migrate(&self, now: u64) -> Result<usize, StoreError> {
        let i = &self.inner;
        let done = i
            .cmd(redis::cmd("EXISTS").arg(i.listing("migrated")))
            .await?;
        if int(&done) == Some(1) {
            return Ok(0);
        }
        let v = i
            .cmd(redis::cmd("ZRANGE").arg(i.global("sales")).arg(0).arg(-1))
            .await?;
        let legacy = array(v, "ZRANGE")?;
        let mut migrated = 0;
        for id in &legacy {
            let id = SaleId(
                text(id)
                    .ok_or_else(|| bad_reply("ZRANGE", &legacy))?
                    .to_owned(),
            );
            let Some(snap) = self.sale(&id).await? else {
                continue;
            };
            let sale = &snap.sale;
            let ended = sale.ended_at.is_some_and(|t| t <= now) || now >= sale.ends_at;
            for what in [Announcement::Started, Announcement::Ended] {
                let claimed = i
                    .cmd(redis::cmd("EXISTS").arg(i.global(&format!("claim:{}:{id}", what.name()))))
                    .await?;
                if ended || int(&claimed) == Some(1) {
                    self.mark_announced(&id, what).await?;
                }
            }
            i.index(&id, &sale.room, !ended || snap.reserved > 0)
                .await?;
            migrated += 1;
        }
        i.cmd(redis::cmd("SET").arg(i.listing("migrated")).arg(1))
            .await?;
        Ok(migrated)
    }
}

impl Inner {
    /// Load every script (on every master of a cluster), so the first burst of calls does
    /// not all meet `NOSCRIPT` at once. Best effort: a call that meets `NOSCRIPT` later
    /// (Redis restarted) loads its script and retries by itself.
    async fn preload(&self) {
        let s = &self.scripts;
        for script in [
            &s.buy,
            &s.confirm,
            &s.release,
            &s.expire,
            &s.snapshot,
            &s.end,
            &s.markets,
            &s.create,
            &s.index,
            &s.read,
            &s.ack,
            &s.claim_announcement,
            &s.mark_announced,
        ] {
            let mut conn = self.conn.clone();
            let loaded =
                tokio::time::timeout(self.opts.redis.command_timeout, conn.load(script)).await;
            if !matches!(loaded, Ok(Ok(_))) {
                tracing::debug!("sale store: could not preload a script");
            }
        }
    }

    fn key(&self, sale: &SaleId, part: &str) -> String {
        format!("{}:{{sale:{}}}:{}", self.opts.prefix, sale, part)
    }

    fn global(&self, part: &str) -> String {
        format!("{}:{}", self.opts.prefix, part)
    }

    /// A listing key: `<p>:{sales}:<part>` (one slot for all of them).
    fn listing(&self, part: &str) -> String {
        format!("{}:{{sales}}:{}", self.opts.prefix, part)
    }

    fn room_listing(&self, room: &RoomId) -> String {
        self.listing(&format!("room:{room}"))
    }

    /// List a sale (every sale, live when `live`, its room's); returns its position.
    async fn index(&self, id: &SaleId, room: &RoomId, live: bool) -> Result<u64, StoreError> {
        let keys = [
            self.listing("all"),
            self.listing("live"),
            self.room_listing(room),
        ];
        let args = [id.0.clone(), if live { "1" } else { "0" }.to_owned()];
        let v = self.eval(&self.scripts.index, &keys, &args).await?;
        int(&v)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad_reply("index", &v))
    }

    /// `(position, id)` pairs of a `… WITHSCORES` reply.
    fn positions(v: Value, what: &str) -> Result<Vec<(SalePosition, SaleId)>, StoreError> {
        // RESP2 gives member, score, member, score...; RESP3 gives [member, score] pairs.
        let items: Vec<Value> = array(v, what)?
            .into_iter()
            .flat_map(|item| match item {
                Value::Array(pair) => pair,
                other => vec![other],
            })
            .collect();
        let mut out = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let (Some(id), Some(score)) = (pair.first().and_then(text), pair.get(1)) else {
                return Err(bad_reply(what, &items));
            };
            let position = match score {
                Value::Double(d) => *d as u64,
                other => text(other)
                    .and_then(|t| t.parse::<f64>().ok())
                    .map(|d| d as u64)
                    .ok_or_else(|| bad_reply(what, &items))?,
            };
            out.push((position, SaleId(id.to_owned())));
        }
        Ok(out)
    }

    /// def stock res held deadlines orders: the keys of the settle scripts.
    fn settle_keys(&self, sale: &SaleId) -> Vec<String> {
        ["def", "stock", "res", "held", "deadlines", "orders"]
            .iter()
            .map(|p| self.key(sale, p))
            .collect()
    }

    fn live_conn(&self) -> Result<RedisConn, StoreError> {
        if self.health.is_healthy() {
            Ok(self.conn.clone())
        } else {
            Err(StoreError::Unavailable("Redis is unreachable".into()))
        }
    }

    async fn eval(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, StoreError> {
        let mut conn = self.live_conn()?;
        match tokio::time::timeout(
            self.opts.redis.command_timeout,
            conn.script(script, keys, args),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::Unavailable(
                "Redis did not answer in time".into(),
            )),
        }
    }

    async fn cmd(&self, cmd: &redis::Cmd) -> Result<Value, StoreError> {
        let mut conn = self.live_conn()?;
        match tokio::time::timeout(self.opts.redis.command_timeout, conn.cmd(cmd)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::Unavailable(
                "Redis did not answer in time".into(),
            )),
        }
    }

    /// The sale's price and hold time (cached; immutable once the sale exists).
    async fn terms(&self, sale: &SaleId, refresh: bool) -> Result<Terms, StoreError> {
        if !refresh {
            if let Some(t) = self.terms.get(sale) {
                return Ok(*t);
            }
        }
        let v = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(self.key(sale, "def"))
                    .arg("price_cny")
                    .arg("hold_ms"),
            )
            .await?;
        let parts = array(v, "HMGET")?;
        let (Some(price), Some(hold)) = (parts.first(), parts.get(1)) else {
            return Err(bad_reply("HMGET", &parts));
        };
        if matches!(price, Value::Nil) {
            self.terms.remove(sale);
            return Err(StoreError::SaleNotFound);
        }
        let terms = Terms {
            price_cny: int(price).ok_or_else(|| bad_reply("HMGET", &parts))?,
            hold_ms: int(hold)
                .and_then(|h| u64::try_from(h).ok())
                .ok_or_else(|| bad_reply("HMGET", &parts))?,
        };
        self.terms.insert(sale.clone(), terms);
        Ok(terms)
    }

    /// Run a settle script (confirm or release) and read its answer.
    async fn settle(
        &self,
        script: &redis::Script,
        sale: &SaleId,
        args: &[String],
        now: u64,
    ) -> Result<Option<Settled>, StoreError> {
        let v = self.eval(script, &self.settle_keys(sale), args).await?;
        let parts = array(v, "a settle script")?;
        match parts.first().and_then(text) {
            Some("missing") => Err(StoreError::SaleNotFound),
            Some("none") => Ok(None),
            Some(tag @ ("already" | "now")) => {
                let json = parts
                    .get(1)
                    .and_then(bytes)
                    .ok_or_else(|| bad_reply("a settle script", &parts))?;
                let r: Reservation = parse_json("reservation", json)?;
                if tag == "already" {
                    Ok(Some(Settled::Already(r)))
                } else {
                    let event = settle_event(&r, now);
                    Ok(Some(Settled::Now(r, Box::new(event))))
                }
            }
            _ => Err(bad_reply("a settle script", &parts)),
        }
    }
}

#[async_trait]
impl SaleStore for RedisSaleStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn put_product(&self, product: Product) -> Result<(), StoreError> {
        let i = &self.inner;
        let json = serde_json::to_string(&product).map_err(unavailable)?;
        i.cmd(
            redis::cmd("HSET")
                .arg(i.global("products"))
                .arg(product.id.as_str())
                .arg(json),
        )
        .await?;
        Ok(())
    }

    async fn product(&self, id: &ProductId) -> Result<Option<Product>, StoreError> {
        let i = &self.inner;
        let v = i
            .cmd(
                redis::cmd("HGET")
                    .arg(i.global("products"))
                    .arg(id.as_str()),
            )
            .await?;
        match v {
            Value::Nil => Ok(None),
            other => {
                let b = bytes(&other).ok_or_else(|| bad_reply("HGET", &other))?;
                Ok(Some(parse_json("product", b)?))
            }
        }
    }

    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let i = &self.inner;
        let v = i.cmd(redis::cmd("HVALS").arg(i.global("products"))).await?;
        let items = array(v, "HVALS")?;
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            let b = bytes(item).ok_or_else(|| bad_reply("HVALS", &items))?;
            out.push(parse_json::<Product>("product", b)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn create_sale(&self, sale: SaleRecord) -> Result<(), StoreError> {
        let i = &self.inner;
        let json = serde_json::to_string(&sale).map_err(unavailable)?;
        let mut args = vec![
            json,
            sale.starts_at.to_string(),
            sale.ends_at.to_string(),
            sale.ended_at.map(|t| t.to_string()).unwrap_or_default(),
            sale.quantity.to_string(),
            sale.price_cny.to_string(),
            sale.per_buyer_limit.to_string(),
            sale.hold_ms.to_string(),
        ];
        args.extend(sale.markets.iter().cloned());
        let keys = [i.key(&sale.id, "def"), i.key(&sale.id, "stock")];
        let created = i.eval(&i.scripts.create, &keys, &args).await?;
        // The listings are outside the sale's slot: added after the sale exists, and again
        // on a duplicate create, so a crash between the two steps heals on retry.
        i.index(&sale.id, &sale.room, true).await?;
        match int(&created) {
            Some(1) => {
                i.terms.insert(
                    sale.id.clone(),
                    Terms {
                        price_cny: sale.price_cny,
                        hold_ms: sale.hold_ms,
                    },
                );
                Ok(())
            }
            Some(0) => Err(StoreError::SaleExists),
            _ => Err(bad_reply("create", &created)),
        }
    }

    async fn sale(&self, id: &SaleId) -> Result<Option<SaleSnapshot>, StoreError> {
        let i = &self.inner;
        let keys = [i.key(id, "def"), i.key(id, "stock"), i.key(id, "orders")];
        parse_snapshot(i.eval(&i.scripts.snapshot, &keys, &[]).await?)
    }

    async fn live_sales(
        &self,
        after: SalePosition,
        limit: usize,
    ) -> Result<Vec<(SalePosition, SaleId)>, StoreError> {
        let i = &self.inner;
        let v = i
            .cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(i.listing("live"))
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        Inner::positions(v, "ZRANGEBYSCORE")
    }

    async fn retire_sale(&self, id: &SaleId) -> Result<(), StoreError> {
        let i = &self.inner;
        i.cmd(redis::cmd("ZREM").arg(i.listing("live")).arg(id.as_str()))
            .await?;
        Ok(())
    }

    async fn room_sales(
        &self,
        room: &RoomId,
        before: Option<SalePosition>,
        limit: usize,
    ) -> Result<Vec<(SalePosition, SaleId)>, StoreError> {
        let i = &self.inner;
        let max = before.map_or_else(|| "+inf".to_owned(), |b| format!("({b}"));
        let v = i
            .cmd(
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(i.room_listing(room))
                    .arg(max)
                    .arg("-inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        Inner::positions(v, "ZREVRANGEBYSCORE")
    }

    async fn sales(&self) -> Result<Vec<SaleId>, StoreError> {
        let i = &self.inner;
        let v = i
            .cmd(redis::cmd("ZRANGE").arg(i.listing("all")).arg(0).arg(-1))
            .await?;
        let items = array(v, "ZRANGE")?;
        items
            .iter()
            .map(|x| {
                text(x)
                    .map(|s| SaleId(s.to_owned()))
                    .ok_or_else(|| bad_reply("ZRANGE", &items))
            })
            .collect()
    }

    async fn end_sale(&self, id: &SaleId, now: u64) -> Result<SaleSnapshot, StoreError> {
        let i = &self.inner;
        let keys = [i.key(id, "def"), i.key(id, "stock"), i.key(id, "orders")];
        parse_snapshot(i.eval(&i.scripts.end, &keys, &[now.to_string()]).await?)?
            .ok_or(StoreError::SaleNotFound)
    }

    async fn set_sale_markets(
        &self,
        id: &SaleId,
        markets: BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let i = &self.inner;
        let args: Vec<String> = markets.into_iter().collect();
        let v = i
            .eval(&i.scripts.markets, &[i.key(id, "def")], &args)
            .await?;
        match int(&v) {
            Some(1) => Ok(()),
            Some(0) => Err(StoreError::SaleNotFound),
            _ => Err(bad_reply("set markets", &v)),
        }
    }

    async fn buy(
        &self,
        sale: &SaleId,
        req: BuyRequest,
    ) -> Result<Result<Bought, BuyRefusal>, StoreError> {
        let i = &self.inner;
        let keys: Vec<String> = ["def", "stock", "res", "keys", "held", "deadlines", "orders"]
            .iter()
            .map(|p| i.key(sale, p))
            .collect();
        let mut refresh = false;
        loop {
            let terms = i.terms(sale, refresh).await?;
            let r = Reservation {
                id: req.new_id.clone(),
                sale: sale.clone(),
                buyer: req.buyer.clone(),
                market: req.market.clone(),
                quantity: req.quantity,
                amount_cny: terms.price_cny.saturating_mul(i64::from(req.quantity)),
                amount_display: req.amount_display.clone(),
                deadline: req.now.saturating_add(terms.hold_ms),
                key: req.key.clone(),
                state: ReservationState::Reserved,
                created_at: req.now,
                ended_at: None,
                payment_ref: None,
                release_reason: None,
            };
            let args = [
                req.now.to_string(),
                req.buyer.0.clone(),
                req.market.clone(),
                req.quantity.to_string(),
                key_index(req.buyer.as_str(), &req.key),
                req.new_id.0.clone(),
                reservation_json(&r)?,
                terms.price_cny.to_string(),
                terms.hold_ms.to_string(),
                r.deadline.to_string(),
            ];
            let v = i.eval(&i.scripts.buy, &keys, &args).await?;
            let parts = array(v, "buy")?;
            let num = |n: usize| {
                parts
                    .get(n)
                    .and_then(int)
                    .ok_or_else(|| bad_reply("buy", &parts))
            };
            let refusal = match parts.first().and_then(text) {
                Some("new") => {
                    let event = OrderEvent::of(OrderEventKind::Reserved, &r, req.now);
                    return Ok(Ok(Bought::New(r, Box::new(event))));
                }
                Some("replay") => {
                    let json = parts
                        .get(1)
                        .and_then(bytes)
                        .ok_or_else(|| bad_reply("buy", &parts))?;
                    return Ok(Ok(Bought::Replayed(parse_json("reservation", json)?)));
                }
                Some("stale") if !refresh => {
                    refresh = true;
                    continue;
                }
                Some("missing") => {
                    i.terms.remove(sale);
                    return Err(StoreError::SaleNotFound);
                }
                Some("conflict") => BuyRefusal::KeyConflict,
                Some("bad_quantity") => BuyRefusal::BadQuantity,
                Some("ended") => BuyRefusal::Ended,
                Some("not_started") => BuyRefusal::NotStarted {
                    starts_at: u64::try_from(num(1)?).map_err(|_| bad_reply("buy", &parts))?,
                },
                Some("not_in_market") => BuyRefusal::NotInMarket,
                Some("limit") => BuyRefusal::LimitReached {
                    limit: u32::try_from(num(1)?).map_err(|_| bad_reply("buy", &parts))?,
                    held: u32::try_from(num(2)?).map_err(|_| bad_reply("buy", &parts))?,
                },
                Some("sold_out") => BuyRefusal::SoldOut {
                    remaining: u64::try_from(num(1)?).map_err(|_| bad_reply("buy", &parts))?,
                },
                _ => return Err(bad_reply("buy", &parts)),
            };
            return Ok(Err(refusal));
        }
    }

    async fn confirm(
        &self,
        sale: &SaleId,
        id: &ReservationId,
        payment_ref: &str,
        now: u64,
    ) -> Result<Option<Settled>, StoreError> {
        let i = &self.inner;
        let args = [
            id.0.clone(),
            now.to_string(),
            serde_json::to_string(payment_ref).map_err(unavailable)?,
        ];
        i.settle(&i.scripts.confirm, sale, &args, now).await
    }

    async fn release(
        &self,
        sale: &SaleId,
        id: &ReservationId,
        reason: ReleaseReason,
        now: u64,
    ) -> Result<Option<Settled>, StoreError> {
        let i = &self.inner;
        let args = [
            id.0.clone(),
            now.to_string(),
            serde_json::to_string(&reason).map_err(unavailable)?,
        ];
        i.settle(&i.scripts.release, sale, &args, now).await
    }

    async fn reservation(
        &self,
        sale: &SaleId,
        id: &ReservationId,
    ) -> Result<Option<Reservation>, StoreError> {
        let i = &self.inner;
        let v = i
            .cmd(redis::cmd("HGET").arg(i.key(sale, "res")).arg(id.as_str()))
            .await?;
        match v {
            Value::Nil => Ok(None),
            other => {
                let b = bytes(&other).ok_or_else(|| bad_reply("HGET", &other))?;
                Ok(Some(parse_json("reservation", b)?))
            }
        }
    }

    async fn expire_due(
        &self,
        sale: &SaleId,
        now: u64,
        max: usize,
    ) -> Result<Vec<Reservation>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let i = &self.inner;
        let args = [now.to_string(), max.to_string()];
        let v = i
            .eval(&i.scripts.expire, &i.settle_keys(sale), &args)
            .await?;
        let items = array(v, "expire")?;
        items
            .iter()
            .map(|x| {
                let b = bytes(x).ok_or_else(|| bad_reply("expire", &items))?;
                parse_json("reservation", b)
            })
            .collect()
    }

    async fn read_orders(
        &self,
        sale: &SaleId,
        group: &str,
        count: usize,
        redeliver_after_ms: u64,
        now: u64,
    ) -> Result<Vec<DeliveredOrderEvent>, StoreError> {
        let i = &self.inner;
        let keys = [
            i.key(sale, "def"),
            i.key(sale, "orders"),
            i.key(sale, &format!("g:{group}")),
        ];
        let args = [
            group.to_owned(),
            CONSUMER.to_owned(),
            count.to_string(),
            redeliver_after_ms.to_string(),
            now.to_string(),
        ];
        let v = i.eval(&i.scripts.read, &keys, &args).await?;
        let parts = array(v, "read orders")?;
        match parts.first().and_then(text) {
            Some("ok") => {}
            Some("missing") => return Err(StoreError::SaleNotFound),
            _ => return Err(bad_reply("read orders", &parts)),
        }
        let entries = parts
            .get(1)
            .cloned()
            .map(|e| array(e, "read orders"))
            .ok_or_else(|| bad_reply("read orders", &parts))??;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let e = array(entry, "read orders")?;
            let (Some(id), Some(n), Some(json)) = (
                e.first().and_then(text),
                e.get(1).and_then(int),
                e.get(2).and_then(bytes),
            ) else {
                return Err(bad_reply("read orders", &parts));
            };
            out.push(DeliveredOrderEvent {
                id: id.to_owned(),
                deliveries: u64::try_from(n).map_err(|_| bad_reply("read orders", &parts))?,
                event: parse_json("order event", json)?,
            });
        }
        Ok(out)
    }

    async fn ack_orders(
        &self,
        sale: &SaleId,
        group: &str,
        ids: &[String],
    ) -> Result<u64, StoreError> {
        let i = &self.inner;
        let keys = [
            i.key(sale, "def"),
            i.key(sale, "orders"),
            i.key(sale, &format!("g:{group}")),
        ];
        let valid: Vec<&String> = ids.iter().filter(|id| is_stream_id(id)).collect();
        let mut acked = 0u64;
        let mut chunks: Vec<&[&String]> = valid.chunks(ACK_CHUNK).collect();
        if chunks.is_empty() {
            chunks.push(&[]); // still tell a missing sale apart
        }
        for chunk in chunks {
            let mut args = vec![group.to_owned()];
            args.extend(chunk.iter().map(|s| (*s).clone()));
            let v = i.eval(&i.scripts.ack, &keys, &args).await?;
            match int(&v) {
                Some(-1) => return Err(StoreError::SaleNotFound),
                Some(n) if n >= 0 => acked += n as u64,
                _ => return Err(bad_reply("ack", &v)),
            }
        }
        Ok(acked)
    }

    async fn all_orders(&self, sale: &SaleId) -> Result<Vec<OrderEvent>, StoreError> {
        let i = &self.inner;
        let key = i.key(sale, "orders");
        let mut out = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let v = i
                .cmd(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(RANGE_PAGE),
                )
                .await?;
            let entries = array(v, "XRANGE")?;
            let page = entries.len();
            let mut last = None;
            for entry in entries {
                let mut e = array(entry, "XRANGE")?.into_iter();
                let (Some(id), Some(fields)) = (e.next(), e.next()) else {
                    return Err(bad_reply("XRANGE", &"an entry without fields"));
                };
                let id = text(&id)
                    .ok_or_else(|| bad_reply("XRANGE", &id))?
                    .to_owned();
                let fields = array(fields, "XRANGE")?;
                let json = fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text) == Some("event"))
                    .and_then(|kv| kv.get(1))
                    .and_then(bytes)
                    .ok_or_else(|| bad_reply("XRANGE", &fields))?;
                out.push(parse_json("order event", json)?);
                last = Some(id);
            }
            match last {
                Some(id) if page == RANGE_PAGE => start = format!("({id}"),
                _ => return Ok(out),
            }
        }
    }

    async fn claim(&self, what: &str, ttl_ms: u64, _now: u64) -> Result<bool, StoreError> {
        if ttl_ms == 0 {
            // A claim that lapses at once: every caller gets it (as in the embedded store).
            return Ok(true);
        }
        let i = &self.inner;
        let v = i
            .cmd(
                redis::cmd("SET")
                    .arg(i.global(&format!("claim:{what}")))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await?;
        Ok(!matches!(v, Value::Nil))
    }

    async fn claim_announcement(
        &self,
        sale: &SaleId,
        what: Announcement,
        lease_ms: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let i = &self.inner;
        let args = [
            format!("a:{}", what.name()),
            now.to_string(),
            now.saturating_add(lease_ms).to_string(),
        ];
        let v = i
            .eval(&i.scripts.claim_announcement, &[i.key(sale, "def")], &args)
            .await?;
        match int(&v) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            Some(-1) => Err(StoreError::SaleNotFound),
            _ => Err(bad_reply("claim announcement", &v)),
        }
    }

    async fn mark_announced(&self, sale: &SaleId, what: Announcement) -> Result<(), StoreError> {
        let i = &self.inner;
        let args = [format!("a:{}", what.name())];
        let v = i
            .eval(&i.scripts.mark_announced, &[i.key(sale, "def")], &args)
            .await?;
        match int(&v) {
            Some(1) => Ok(()),
            Some(-1) => Err(StoreError::SaleNotFound),
            _ => Err(bad_reply("mark announced", &v)),
        }
    }

    async fn ready(&self) -> bool {
        self.inner.health.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::protocol::commerce::Money;
    use ferry_client::protocol::UserId;

    fn reservation() -> Reservation {
        Reservation {
            id: ReservationId("r1".into()),
            sale: SaleId("s1".into()),
            buyer: UserId("b\"uyer,\"state\":\"x".into()),
            market: "us".into(),
            quantity: 2,
            amount_cny: 11_800,
            amount_display: Money {
                currency: "USD".into(),
                minor: 1636,
            },
            deadline: u64::MAX,
            key: "k".into(),
            state: ReservationState::Reserved,
            created_at: 2_000,
            ended_at: None,
            payment_ref: None,
            release_reason: None,
        }
    }

    #[test]
    fn reservation_json_round_trips_with_the_mutable_tail_last() {
        let r = reservation();
        let json = reservation_json(&r).expect("encodes");
        assert!(json.ends_with(
            ",\"state\":\"reserved\",\"ended_at\":null,\"payment_ref\":null,\"release_reason\":null}"
        ));
        // The scripts cut at the first `,"state":"`: a buyer id spelling it stays escaped.
        let cut = json.find(",\"state\":\"").expect("has a state");
        assert_eq!(&json[cut..], ",\"state\":\"reserved\",\"ended_at\":null,\"payment_ref\":null,\"release_reason\":null}");
        let back: Reservation = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, r);
        // What the confirm script writes decodes to the confirmed reservation.
        let confirmed = format!(
            "{},\"state\":\"confirmed\",\"ended_at\":3000,\"payment_ref\":{},\"release_reason\":null}}",
            &json[..cut],
            serde_json::to_string("pay\"1").expect("encodes")
        );
        let c: Reservation = serde_json::from_str(&confirmed).expect("decodes");
        assert_eq!(c.state, ReservationState::Confirmed);
        assert_eq!(c.payment_ref.as_deref(), Some("pay\"1"));
        // And the event around it decodes as an order event.
        let event = format!(
            "{{\"type\":\"released\",\"reason\":\"expired\",\"reservation\":{confirmed},\"at\":5}}"
        );
        let e: OrderEvent = serde_json::from_str(&event).expect("decodes");
        assert_eq!(e.kind, OrderEventKind::Released(ReleaseReason::Expired));
        assert_eq!(e.at, 5);
    }

    #[test]
    fn key_index_and_stream_ids() {
        assert_ne!(key_index("a|b", "c"), key_index("a", "b|c"));
        assert!(is_stream_id("1795314073363-0"));
        assert!(!is_stream_id("0-"));
        assert!(!is_stream_id("abc"));
        assert!(!is_stream_id("1795314073363"));
    }
}
