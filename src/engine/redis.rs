//! The Redis engine: rooms shared by every node pointed at the same Redis (standalone or
//! Redis Cluster).
//!
//! Keys of one room share the hash tag `{<room>}` so every script runs on one shard:
//! - `<prefix>:{r}:meta`     HASH  epoch, offset, title, created_at, pinned, slow, likes, closed,
//!   product (pinned showcase product, JSON), sale (the room's latest sale view, JSON),
//!   sale_id (that sale's id), sale_stock (the newest stock counters of that sale, JSON;
//!   patches `sale` on read; another sale's stock, or an older one, is not stored),
//!   sale_rank (the order key of what `sale`/`sale_stock` hold, see `stock_rank`) and
//!   live ("1" while a publisher streams video into the room) and its lease: live_node,
//!   live_url (the hosting node and its public URL), live_until (Redis time, ms)
//! - `<prefix>:{r}:stream`   STREAM history, entry id `<offset>-1`, field `d` = event body
//! - `<prefix>:{r}:muted`    HASH  user → until (Unix ms, 0 = until unmuted)
//! - `<prefix>:{r}:banned`   SET   users
//! - `<prefix>:{r}:viewers`  HASH  node → viewer count;  `…:viewers:exp` ZSET node → expiry
//! - `<prefix>:{r}:uniq`     HLL   unique viewers of the stream
//! - `<prefix>:{r}:held`     HASH  moderator queue: held comment id → JSON
//! - `<prefix>:{r}:aud`      HASH  `<node>\x1f<key>` → members (audience reports: `lang:en`,
//!   `market:ae`...); `…:aud:exp` ZSET node → expiry
//! - channel `<prefix>:{r}:ch`: each publication as `<offset>:<epoch>:<body>`
//!
//! One key outside the rooms' slots: `<prefix>:live`, a ZSET room → live lease expiry (Redis
//! time, ms), the index the lapse sweep reads. It is only an index: the room's meta hash
//! decides, atomically with the `stream_ended` it publishes.
//!
//! One script per publish assigns the next offset, applies the state change, appends to the
//! capped stream and publishes (SPUBLISH on a cluster, so a room's traffic touches one shard).
//! Subscriptions use RESP3 pushes with redis-rs's automatic resubscription; when a room's
//! subscription is (re)confirmed, the engine reads the room's position and replays what was
//! missed from the stream, and if Redis came back *behind* what this node already delivered
//! (writes lost in a crash) it moves the room to a new epoch so no client trusts a reused
//! offset.

use super::{
    Engine, EngineError, History, LiveHost, Publication, RoomRecord, StateChange, Subscription,
};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use ferry_client::protocol::commerce::{stock_order, SaleStatus};
use ferry_client::protocol::translation::HeldComment;
use ferry_client::protocol::{Epoch, Offset, Pinned, RoomId, UserId};
use redis::{PushKind, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use crate::redis_conn::RedisStartError;
use crate::redis_conn::{RedisConn, RedisHealth, RedisTarget};

/// How to reach Redis and how the engine behaves.
#[derive(Clone, Debug)]
pub struct RedisEngineOptions {
    /// Where Redis is and how long to wait for it.
    pub redis: RedisTarget,
    /// Prefix of every key and channel.
    pub prefix: String,
    pub history_size: usize,
    pub history_ttl: Duration,
    /// A node's viewer-count report counts for this long unless renewed.
    pub presence_ttl: Duration,
    /// Capacity of each room's local broadcast.
    pub broadcast_capacity: usize,
    /// Comments one room's moderator queue holds at most.
    pub max_held: usize,
}

const PUBLISH: &str = r#"
-- KEYS: meta stream muted banned held ; ARGV: body size ttl_ms channel publish_cmd op a1 a2 a3 max_held
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {0} end
if redis.call('HGET', KEYS[1], 'closed') == '1' then return {-1} end
local op = ARGV[6]
if op == 'resolve' then
  if redis.call('HDEL', KEYS[5], ARGV[7]) == 0 then return {-2} end
elseif op == 'hold' then
  if redis.call('HLEN', KEYS[5]) >= tonumber(ARGV[10]) then return {-3} end
  redis.call('HSET', KEYS[5], ARGV[7], ARGV[8])
elseif op == 'liveend' or op == 'lapse' then
  if redis.call('HGET', KEYS[1], 'live') ~= '1' then return {-5} end
  if op == 'liveend' then
    local holder = redis.call('HGET', KEYS[1], 'live_node')
    if holder and holder ~= ARGV[7] then return {-4} end
  else
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if tonumber(redis.call('HGET', KEYS[1], 'live_until') or '0') > now then return {-4} end
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
if op == 'pin' then redis.call('HSET', KEYS[1], 'pinned', ARGV[7])
elseif op == 'unpin' then redis.call('HDEL', KEYS[1], 'pinned')
elseif op == 'mute' then redis.call('HSET', KEYS[3], ARGV[7], ARGV[8])
elseif op == 'unmute' then redis.call('HDEL', KEYS[3], ARGV[7])
elseif op == 'ban' then redis.call('SADD', KEYS[4], ARGV[7])
elseif op == 'slow' then redis.call('HSET', KEYS[1], 'slow', ARGV[7])
elseif op == 'likes' then redis.call('HINCRBY', KEYS[1], 'likes', ARGV[7])
elseif op == 'product' then redis.call('HSET', KEYS[1], 'product', ARGV[7])
elseif op == 'unproduct' then redis.call('HDEL', KEYS[1], 'product')
elseif op == 'sale' then
  redis.call('HSET', KEYS[1], 'sale', ARGV[7], 'sale_id', ARGV[8], 'sale_rank', ARGV[9])
  redis.call('HDEL', KEYS[1], 'sale_stock')
elseif op == 'salestock' then
  -- Only the room's latest sale is patched (a room may run several sales at once), and only
  -- by a newer patch (stock events from several nodes may arrive out of order).
  local current = redis.call('HGET', KEYS[1], 'sale_id')
  if not current then
    -- A room whose sale view was stored before `sale_id` existed.
    local view = redis.call('HGET', KEYS[1], 'sale')
    if view then current = cjson.decode(view).id end
  end
  local held = tonumber(redis.call('HGET', KEYS[1], 'sale_rank') or '-1')
  if current == ARGV[8] and tonumber(ARGV[9]) > held then
    redis.call('HSET', KEYS[1], 'sale_stock', ARGV[7], 'sale_rank', ARGV[9])
  end
elseif op == 'live' then
  redis.call('HSET', KEYS[1], 'live', ARGV[7])
  if ARGV[7] == '0' then redis.call('HDEL', KEYS[1], 'live_node', 'live_url', 'live_until') end
elseif op == 'liveend' or op == 'lapse' then
  redis.call('HSET', KEYS[1], 'live', '0')
  redis.call('HDEL', KEYS[1], 'live_node', 'live_url', 'live_until')
elseif op == 'close' then
  redis.call('HSET', KEYS[1], 'closed', '1')
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-1', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[5], ARGV[4], offset .. ':' .. epoch .. ':' .. ARGV[1])
return {1, offset, epoch}
"#;

const CREATE: &str = r#"
-- KEYS: meta stream ; ARGV: epoch title now_ms
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'offset', 0, 'title', ARGV[2], 'created_at', ARGV[3])
return 1
"#;

const SNAPSHOT: &str = r#"
-- KEYS: meta muted banned held ; the last item is Redis time in ms (for the live lease)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('SMEMBERS', KEYS[3]), redis.call('HGETALL', KEYS[4]), now}
"#;

const LIVE_CLAIM: &str = r#"
-- KEYS: meta ; ARGV: node url ttl_ms ; returns the lease's expiry (0: no such room)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
local untl = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'live_node', ARGV[1], 'live_url', ARGV[2], 'live_until', untl)
return untl
"#;

const LIVE_RENEW: &str = r#"
-- KEYS: meta ; ARGV: node ttl_ms ; returns the new expiry, or 0 when the node does not hold it
-- (or the room was closed: closing ended the stream)
if redis.call('HGET', KEYS[1], 'live_node') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'closed') == '1' then return 0 end
local t = redis.call('TIME')
local untl = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'live_until', untl)
return untl
"#;

const LIVE_DUE: &str = r#"
-- KEYS: live index ; ARGV: limit ; rooms whose lease expiry has passed (Redis time)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"#;

const HISTORY: &str = r#"
-- KEYS: meta stream ; ARGV: after until
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] then return {false} end
local top = tonumber(meta[2])
local untl = math.min(tonumber(ARGV[2]), top)
if tonumber(ARGV[1]) >= untl then return {meta[1], top, {}} end
return {meta[1], top, redis.call('XRANGE', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-1', untl .. '-1')}
"#;

const POSITION: &str = r#"
-- KEYS: meta stream ; ARGV: expected_epoch delivered_offset new_epoch
-- Moves the room to a new epoch when Redis is behind what a node delivered (lost writes).
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] then return {false} end
if meta[1] == ARGV[1] and tonumber(meta[2]) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[3], 'offset', ARGV[2])
  redis.call('DEL', KEYS[2])
  return {ARGV[3], tonumber(ARGV[2])}
end
return {meta[1], tonumber(meta[2])}
"#;

const PRESENCE: &str = r#"
-- KEYS: viewers viewers_exp uniq ; ARGV: node count ttl_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"#;

const COUNT: &str = r#"
-- KEYS: viewers viewers_exp
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, node in ipairs(dead) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('ZREM', KEYS[2], node)
end
local sum = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do sum = sum + tonumber(v) end
return sum
"#;

const AUDIENCE_REPORT: &str = r#"
-- KEYS: aud aud_exp ; ARGV: node ttl_ms key1 count1 key2 count2 ...
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1] .. '\31'
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], prefix .. ARGV[i], ARGV[i + 1])
  n = n + 1
end
if n > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 6)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 6)
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return n
"#;

const AUDIENCE_READ: &str = r#"
-- KEYS: aud aud_exp ; returns the live fields
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  dead[node .. '\31'] = true
  redis.call('ZREM', KEYS[2], node)
end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f = all[i]
  local sep = string.find(f, '\31', 1, true)
  local node = sep and string.sub(f, 1, sep) or ''
  if dead[node] then
    redis.call('HDEL', KEYS[1], f)
  elseif sep then
    table.insert(out, string.sub(f, sep + 1))
    table.insert(out, all[i + 1])
  end
end
return out
"#;

/// A command connection to standalone Redis or a cluster.
#[derive(Clone)]
/// A room this node is subscribed to.
struct RoomSub {
    live: broadcast::Sender<Publication>,
    /// Live subscriptions handed out (the Redis subscription is dropped at zero).
    holders: usize,
    /// The last position sent to local subscribers (to detect Redis coming back behind).
    last: Option<(Epoch, Offset)>,
    /// While a catch-up after a resubscription reads history: live publications wait here,
    /// so they go out after the missed ones, in order, each once.
    held_back: Option<Vec<Publication>>,
}

/// Live publications held back during one catch-up, at most (beyond, they flow and the
/// hub's gap detection fills from history).
const HOLD_BACK_MAX: usize = 10_000;

impl RoomSub {
    /// Send `p` to local subscribers unless it is not newer than what they already have.
    fn deliver(&mut self, p: Publication) {
        let newer = match &self.last {
            Some((e, o)) => e != &p.epoch || *o < p.offset,
            None => true,
        };
        if newer {
            self.last = Some((p.epoch.clone(), p.offset));
            let _ = self.live.send(p);
        }
    }

    /// A live publication arrived from Redis.
    fn arrived(&mut self, p: Publication) {
        match self.held_back.as_mut() {
            Some(held) if held.len() < HOLD_BACK_MAX => held.push(p),
            Some(_) => {
                // Catch-up is taking too long: stop holding back.
                for q in self.held_back.take().unwrap_or_default() {
                    self.deliver(q);
                }
                self.deliver(p);
            }
            None => self.deliver(p),
        }
    }
}

struct Inner {
    conn: RedisConn,
    /// Whether Redis is answering; while not, commands fail fast with `Unavailable`.
    health: Arc<RedisHealth>,
    opts: RedisEngineOptions,
    rooms: DashMap<RoomId, RoomSub>,
    scripts: Scripts,
}

struct Scripts {
    publish: redis::Script,
    create: redis::Script,
    snapshot: redis::Script,
    history: redis::Script,
    position: redis::Script,
    presence: redis::Script,
    count: redis::Script,
    audience_report: redis::Script,
    audience_read: redis::Script,
    live_claim: redis::Script,
    live_renew: redis::Script,
    live_due: redis::Script,
}

/// The Redis engine.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
    sub_tx: mpsc::UnboundedSender<SubCmd>,
}

enum SubCmd {
    Hold(
        RoomId,
        oneshot::Sender<Result<broadcast::Receiver<Publication>, EngineError>>,
    ),
    Release(RoomId),
}

fn unavailable(e: redis::RedisError) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

fn new_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisEngine {
    /// Connect (commands and pushes) and start the subscription tasks.
    pub async fn connect(opts: RedisEngineOptions) -> Result<RedisEngine, RedisStartError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<redis::PushInfo>();
        let conn = RedisConn::connect(&opts.redis, Some(push_tx)).await?;
        let health = RedisHealth::start(&opts.redis, "engine").await?;
        let inner = Arc::new(Inner {
            conn,
            health,
            opts,
            rooms: DashMap::new(),
            scripts: Scripts {
                publish: redis::Script::new(PUBLISH),
                create: redis::Script::new(CREATE),
                snapshot: redis::Script::new(SNAPSHOT),
                history: redis::Script::new(HISTORY),
                position: redis::Script::new(POSITION),
                presence: redis::Script::new(PRESENCE),
                count: redis::Script::new(COUNT),
                audience_report: redis::Script::new(AUDIENCE_REPORT),
                audience_read: redis::Script::new(AUDIENCE_READ),
                live_claim: redis::Script::new(LIVE_CLAIM),
                live_renew: redis::Script::new(LIVE_RENEW),
                live_due: redis::Script::new(LIVE_DUE),
            },
        });
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_subscriptions(inner.clone(), sub_rx));
        tokio::spawn(route_pushes(inner.clone(), push_rx));
        Ok(RedisEngine { inner, sub_tx })
    }
}

impl Inner {
    fn key(&self, room: &RoomId, part: &str) -> String {
        format!("{}:{{{}}}:{}", self.opts.prefix, room, part)
    }

    /// The live-lease index (one key for all rooms; see the module doc).
    fn live_index(&self) -> String {
        format!("{}:live", self.opts.prefix)
    }

    /// Index a room's lease expiry, or drop it from the index (`None`). Best effort: the
    /// index only finds candidates; the room's meta hash decides.
    async fn index_live(&self, room: &RoomId, until: Option<i64>) {
        let Ok(mut conn) = self.live_conn() else {
            return;
        };
        let cmd = match until {
            Some(u) => redis::cmd("ZADD")
                .arg(self.live_index())
                .arg(u)
                .arg(&room.0)
                .to_owned(),
            None => redis::cmd("ZREM")
                .arg(self.live_index())
                .arg(&room.0)
                .to_owned(),
        };
        if let Err(e) = conn.cmd::<i64>(&cmd).await {
            tracing::warn!(%room, error = %e, "cannot update the live-lease index");
        }
    }

    fn channel(&self, room: &RoomId) -> String {
        self.key(room, "ch")
    }

    /// The room a channel belongs to.
    fn room_of(&self, channel: &str) -> Option<RoomId> {
        let rest = channel
            .strip_prefix(&self.opts.prefix)?
            .strip_prefix(":{")?;
        let room = rest.strip_suffix("}:ch")?;
        Some(RoomId(room.to_owned()))
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// A connection for a command, or `Unavailable` at once while Redis is unreachable.
    fn live_conn(&self) -> Result<RedisConn, EngineError> {
        if self.health.is_healthy() {
            Ok(self.conn.clone())
        } else {
            Err(EngineError::Unavailable("Redis is unreachable".into()))
        }
    }

    /// Read the room's position (fixing the epoch if Redis is behind what we delivered),
    /// then replay missed events into the local broadcast.
    async fn catch_up(&self, room: &RoomId) {
        let missed = self.missed_since_last(room).await;
        // Missed publications first, then those held back meanwhile, each once, in order.
        if let Some(mut r) = self.rooms.get_mut(room) {
            for p in missed {
                r.deliver(p);
            }
            for p in r.held_back.take().unwrap_or_default() {
                r.deliver(p);
            }
        }
    }

    /// What local subscribers missed while the subscription was down (or a marker telling
    /// the hub to resync: an empty publication).
    async fn missed_since_last(&self, room: &RoomId) -> Vec<Publication> {
        let last = self.rooms.get(room).and_then(|r| r.last.clone());
        let Some((epoch, delivered)) = last else {
            return Vec::new();
        };
        let mut conn = self.conn();
        let keys = [self.key(room, "meta"), self.key(room, "stream")];
        let args = [epoch.0.clone(), delivered.0.to_string(), new_epoch()];
        let pos: Vec<Value> = match conn.script(&self.scripts.position, &keys, &args).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%room, error = %e, "catch-up: cannot read the room's position");
                return Vec::new();
            }
        };
        let (Some(Value::BulkString(e)), Some(top)) = (pos.first(), pos.get(1)) else {
            // The room is gone from Redis (restarted without persistence): an empty
            // publication from no epoch makes the hub resync, find no room, and let its
            // members go (they rejoin: viewers learn it is gone, hosts recreate it).
            tracing::warn!(%room, "room vanished from Redis");
            return vec![Publication {
                epoch: Epoch(String::new()),
                offset: Offset(0),
                body: Bytes::new(),
            }];
        };
        let now_epoch = Epoch(String::from_utf8_lossy(e).into_owned());
        let top = Offset(redis::from_redis_value::<u64>(top.clone()).unwrap_or(0));
        if now_epoch != epoch {
            tracing::warn!(%room, old = %epoch, new = %now_epoch, "room history was lost in Redis; new epoch");
            // An empty publication at the top of the new epoch: the hub resyncs its members.
            return vec![Publication {
                epoch: now_epoch,
                offset: top,
                body: Bytes::new(),
            }];
        }
        if top <= delivered {
            return Vec::new();
        }
        match self.history(room, &epoch, delivered, top).await {
            Ok(History::Events(events)) => {
                tracing::info!(%room, missed = events.len(), "caught up after resubscribe");
                events
            }
            _ => {
                tracing::warn!(%room, "catch-up: history unavailable; the next event shows the gap");
                Vec::new()
            }
        }
    }

    async fn history(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        after: Offset,
        until: Offset,
    ) -> Result<History, EngineError> {
        let mut conn = self.live_conn()?;
        let keys = [self.key(room, "meta"), self.key(room, "stream")];
        let args = [after.0.to_string(), until.0.to_string()];
        let v: Vec<Value> = conn
            .script(&self.scripts.history, &keys, &args)
            .await
            .map_err(unavailable)?;
        let Some(Value::BulkString(e)) = v.first() else {
            return Err(EngineError::RoomNotFound);
        };
        if e.as_slice() != epoch.0.as_bytes() {
            return Ok(History::NotRecoverable);
        }
        let top = v
            .get(1)
            .and_then(|t| redis::from_redis_value::<u64>(t.clone()).ok())
            .unwrap_or(0);
        if after.0 > top {
            return Ok(History::NotRecoverable);
        }
        let until = until.0.min(top);
        let entries = match v.get(2) {
            Some(Value::Array(entries)) => entries.clone(),
            _ => Vec::new(),
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some((offset, body)) = parse_entry(entry) else {
                return Ok(History::NotRecoverable);
            };
            out.push(Publication {
                epoch: epoch.clone(),
                offset: Offset(offset),
                body,
            });
        }
        let complete = out.len() as u64 == until.saturating_sub(after.0)
            && out.first().is_none_or(|p| p.offset == after.next());
        if complete {
            Ok(History::Events(out))
        } else {
            Ok(History::NotRecoverable)
        }
    }
}

/// A stream entry `[id, [field, value, ...]]` → (offset, body).
fn parse_entry(entry: Value) -> Option<(u64, Bytes)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id: String = redis::from_redis_value(parts.next()?).ok()?;
    let offset = id.split('-').next()?.parse().ok()?;
    let fields = match parts.next()? {
        Value::Array(f) => f,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if matches!(&k, Value::BulkString(b) if b == b"d") {
            if let Value::BulkString(b) = v {
                return Some((offset, Bytes::from(b)));
            }
        }
    }
    None
}

/// Parse `<offset>:<epoch>:<body>`.
fn parse_payload(payload: &[u8]) -> Option<(Offset, Epoch, Bytes)> {
    let first = payload.iter().position(|b| *b == b':')?;
    let offset: u64 = std::str::from_utf8(&payload[..first]).ok()?.parse().ok()?;
    let rest = &payload[first + 1..];
    let second = rest.iter().position(|b| *b == b':')?;
    let epoch = std::str::from_utf8(&rest[..second]).ok()?.to_owned();
    Some((
        Offset(offset),
        Epoch(epoch),
        Bytes::copy_from_slice(&rest[second + 1..]),
    ))
}

/// Serializes (un)subscriptions so a room's SUBSCRIBE/UNSUBSCRIBE never reorder.
async fn run_subscriptions(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<SubCmd>) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            SubCmd::Hold(room, reply) => {
                let existing = inner.rooms.get_mut(&room).map(|mut r| {
                    r.holders += 1;
                    r.live.subscribe()
                });
                if let Some(rx) = existing {
                    let _ = reply.send(Ok(rx));
                    continue;
                }
                if !inner.health.is_healthy() {
                    let _ =
                        reply.send(Err(EngineError::Unavailable("Redis is unreachable".into())));
                    continue;
                }
                let (live, rx) = broadcast::channel(inner.opts.broadcast_capacity);
                inner.rooms.insert(
                    room.clone(),
                    RoomSub {
                        live,
                        holders: 1,
                        last: None,
                        held_back: None,
                    },
                );
                let mut conn = inner.conn();
                match conn.subscribe(&inner.channel(&room), true).await {
                    Ok(()) => {
                        let _ = reply.send(Ok(rx));
                    }
                    Err(e) => {
                        inner.rooms.remove(&room);
                        let _ = reply.send(Err(unavailable(e)));
                    }
                }
            }
            SubCmd::Release(room) => {
                let last = match inner.rooms.get_mut(&room) {
                    Some(mut r) => {
                        r.holders = r.holders.saturating_sub(1);
                        r.holders == 0
                    }
                    None => false,
                };
                if last {
                    inner.rooms.remove(&room);
                    let mut conn = inner.conn();
                    if let Err(e) = conn.subscribe(&inner.channel(&room), false).await {
                        tracing::debug!(%room, error = %e, "unsubscribe failed");
                    }
                }
            }
        }
    }
}

/// Drains Redis pushes as fast as they come and routes them to rooms; never blocks on a room.
async fn route_pushes(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<redis::PushInfo>) {
    while let Some(push) = rx.recv().await {
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    continue;
                };
                let Some(room) = inner.room_of(&String::from_utf8_lossy(&ch)) else {
                    continue;
                };
                let Some((offset, epoch, body)) = parse_payload(&payload) else {
                    tracing::warn!(%room, "undecodable publication");
                    continue;
                };
                let p = Publication {
                    epoch,
                    offset,
                    body,
                };
                if let Some(mut r) = inner.rooms.get_mut(&room) {
                    r.arrived(p);
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                // (Re)confirmed subscription: replay what may have been missed meanwhile.
                let Some(Value::BulkString(ch)) = push.data.first() else {
                    continue;
                };
                if let Some(room) = inner.room_of(&String::from_utf8_lossy(ch)) {
                    // Nothing delivered yet (first subscription): nothing can have been
                    // missed. Otherwise hold live publications back until the catch-up.
                    let resumed = inner.rooms.get_mut(&room).is_some_and(|mut r| {
                        if r.last.is_some() && r.held_back.is_none() {
                            r.held_back = Some(Vec::new());
                            true
                        } else {
                            false
                        }
                    });
                    if resumed {
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.catch_up(&room).await });
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("lost the Redis connection; reconnecting and resubscribing");
            }
            _ => {}
        }
    }
}

/// The state change as script arguments: op, a1, a2, a3.
fn state_args(change: Option<&StateChange>) -> [String; 4] {
    let s = |v: &str| v.to_owned();
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    match change {
        None => [s(""), s(""), s(""), s("")],
        Some(StateChange::Pin(p)) => [s("pin"), json(p), s(""), s("")],
        Some(StateChange::Unpin) => [s("unpin"), s(""), s(""), s("")],
        Some(StateChange::Mute { user, until }) => [
            s("mute"),
            user.0.clone(),
            until.unwrap_or(0).to_string(),
            s(""),
        ],
        Some(StateChange::Unmute { user }) => [s("unmute"), user.0.clone(), s(""), s("")],
        Some(StateChange::Ban { user }) => [s("ban"), user.0.clone(), s(""), s("")],
        Some(StateChange::SlowMode(secs)) => [s("slow"), secs.to_string(), s(""), s("")],
        Some(StateChange::Likes(n)) => [s("likes"), n.to_string(), s(""), s("")],
        Some(StateChange::Close) => [s("close"), s(""), s(""), s("")],
        Some(StateChange::Product(Some(p))) => [s("product"), json(p), s(""), s("")],
        Some(StateChange::Product(None)) => [s("unproduct"), s(""), s(""), s("")],
        Some(StateChange::SaleStock(stock)) => [
            s("salestock"),
            json(stock),
            stock.sale.0.clone(),
            stock_rank(stock.version, stock.status).to_string(),
        ],
        Some(StateChange::Live(live)) => {
            [s("live"), s(if *live { "1" } else { "0" }), s(""), s("")]
        }
        Some(StateChange::LiveEnd { node }) => [s("liveend"), node.clone(), s(""), s("")],
        Some(StateChange::LiveLapsed) => [s("lapse"), s(""), s(""), s("")],
        Some(StateChange::Sale(sale)) => [
            s("sale"),
            json(sale),
            sale.id.0.clone(),
            stock_rank(sale.version, sale.status).to_string(),
        ],
        Some(StateChange::Hold(h)) => [
            s("hold"),
            h.id.clone(),
            serde_json::to_string(h).unwrap_or_default(),
            s(""),
        ],
        Some(StateChange::Resolve(id)) => [s("resolve"), id.clone(), s(""), s("")],
    }
}

/// [`stock_order`] as one integer the publish script compares (exact as a Lua double: below
/// 2^53): ended flag, then version (capped at 2^49 − 1), then phase.
fn stock_rank(version: u64, status: SaleStatus) -> u64 {
    let (ended, version, phase) = stock_order(version, status);
    (u64::from(ended) << 51) | (version.min((1 << 49) - 1) << 2) | u64::from(phase)
}

fn flat_map(v: &Value) -> Vec<(String, String)> {
    let items: Vec<Value> = match v {
        Value::Array(a) => a.clone(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        _ => Vec::new(),
    };
    items
        .chunks(2)
        .filter_map(|kv| {
            let k: String = redis::from_redis_value(kv.first()?.clone()).ok()?;
            let v: String = redis::from_redis_value(kv.get(1)?.clone()).ok()?;
            Some((k, v))
        })
        .collect()
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn create_room(
        &self,
        room: &RoomId,
        title: &str,
    ) -> Result<(RoomRecord, bool), EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [i.key(room, "meta"), i.key(room, "stream")];
        let args = [new_epoch(), title.to_owned(), unix_ms().to_string()];
        let created: i64 = conn
            .script(&i.scripts.create, &keys, &args)
            .await
            .map_err(unavailable)?;
        let record = self.room(room).await?.ok_or(EngineError::RoomNotFound)?;
        Ok((record, created == 1))
    }

    async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [
            i.key(room, "meta"),
            i.key(room, "muted"),
            i.key(room, "banned"),
            i.key(room, "held"),
        ];
        let v: Vec<Value> = conn
            .script(&i.scripts.snapshot, &keys, &[])
            .await
            .map_err(unavailable)?;
        let meta = v.first().map(flat_map).unwrap_or_default();
        if meta.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let mut record = RoomRecord {
            epoch: Epoch(get("epoch").unwrap_or_default().to_owned()),
            offset: Offset(num("offset")),
            title: get("title").unwrap_or_default().to_owned(),
            pinned: get("pinned").and_then(|p| serde_json::from_str::<Pinned>(p).ok()),
            slow_mode_secs: num("slow"),
            likes: num("likes"),
            closed: get("closed") == Some("1"),
            created_at: num("created_at"),
            product: get("product").and_then(|p| serde_json::from_str(p).ok()),
            sale: get("sale").and_then(|p| serde_json::from_str(p).ok()),
            live: get("live") == Some("1"),
            ..RoomRecord::default()
        };
        // The lease counts while its expiry (Redis time) is ahead of Redis's clock.
        let now = v
            .get(4)
            .and_then(|n| redis::from_redis_value::<i64>(n.clone()).ok())
            .unwrap_or(i64::MAX);
        let until = get("live_until").and_then(|u| u.parse::<i64>().ok());
        if let (true, Some(node), Some(until)) = (record.live, get("live_node"), until) {
            if until > now {
                record.live_host = Some(LiveHost {
                    node: node.to_owned(),
                    url: get("live_url").unwrap_or_default().to_owned(),
                });
            }
        }
        // Stock updates are stored apart from the (larger) sale view they patch.
        if let Some(stock) = get("sale_stock").and_then(|p| serde_json::from_str(p).ok()) {
            record.apply(&StateChange::SaleStock(stock));
        }
        if let Some(muted) = v.get(1) {
            for (user, until) in flat_map(muted) {
                let until = until.parse::<u64>().ok().filter(|u| *u > 0);
                record.muted.insert(UserId(user), until);
            }
        }
        if let Some(banned) = v.get(2) {
            let users: Vec<String> = redis::from_redis_value(banned.clone()).unwrap_or_default();
            record.banned.extend(users.into_iter().map(UserId));
        }
        if let Some(held) = v.get(3) {
            let mut items: Vec<HeldComment> = flat_map(held)
                .into_iter()
                .filter_map(|(_, json)| serde_json::from_str(&json).ok())
                .collect();
            items.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
            record.held = items;
        }
        Ok(Some(record))
    }

    async fn publish(
        &self,
        room: &RoomId,
        body: Bytes,
        change: Option<StateChange>,
    ) -> Result<Publication, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [
            i.key(room, "meta"),
            i.key(room, "stream"),
            i.key(room, "muted"),
            i.key(room, "banned"),
            i.key(room, "held"),
        ];
        let body_text = String::from_utf8_lossy(&body).into_owned();
        let [op, a1, a2, a3] = state_args(change.as_ref());
        let publish_cmd = if i.opts.redis.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let args = [
            body_text,
            i.opts.history_size.to_string(),
            i.opts.history_ttl.as_millis().to_string(),
            i.channel(room),
            publish_cmd.to_owned(),
            op,
            a1,
            a2,
            a3,
            i.opts.max_held.to_string(),
        ];
        let v: Vec<Value> = conn
            .script(&i.scripts.publish, &keys, &args)
            .await
            .map_err(unavailable)?;
        let lapse = matches!(change, Some(StateChange::LiveLapsed));
        match v.first() {
            Some(Value::Int(1)) => {}
            Some(Value::Int(-1)) => {
                // A closed room's lease never ends by a publish: drop it from the index, or
                // every sweep would find it again (and enough of them would hide real lapses).
                if lapse {
                    i.index_live(room, None).await;
                }
                return Err(EngineError::RoomClosed);
            }
            Some(Value::Int(-2)) => return Err(EngineError::NotHeld),
            Some(Value::Int(-3)) => return Err(EngineError::HeldQueueFull),
            Some(Value::Int(-4)) => return Err(EngineError::LiveElsewhere),
            Some(Value::Int(-5)) => {
                // A lapse found the room not live: its index entry is stale.
                if lapse {
                    i.index_live(room, None).await;
                }
                return Err(EngineError::NotLive);
            }
            _ => {
                // The room's keys expired: so did its lease.
                if lapse {
                    i.index_live(room, None).await;
                }
                return Err(EngineError::RoomNotFound);
            }
        }
        if matches!(
            change,
            Some(StateChange::Live(false) | StateChange::LiveEnd { .. } | StateChange::LiveLapsed)
        ) {
            i.index_live(room, None).await;
        }
        let offset = v
            .get(1)
            .and_then(|o| redis::from_redis_value::<u64>(o.clone()).ok())
            .unwrap_or(0);
        let epoch = v
            .get(2)
            .and_then(|e| redis::from_redis_value::<String>(e.clone()).ok())
            .unwrap_or_default();
        Ok(Publication {
            epoch: Epoch(epoch),
            offset: Offset(offset),
            body,
        })
    }

    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.sub_tx
            .send(SubCmd::Hold(room.clone(), reply))
            .map_err(|_| EngineError::Unavailable("engine stopped".into()))?;
        let live = rx
            .await
            .map_err(|_| EngineError::Unavailable("engine stopped".into()))??;
        Ok(Subscription {
            rx: live,
            _guard: Box::new(ReleaseGuard {
                room: room.clone(),
                tx: self.sub_tx.clone(),
            }),
        })
    }

    async fn history(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        after: Offset,
        until: Offset,
    ) -> Result<History, EngineError> {
        self.inner.history(room, epoch, after, until).await
    }

    async fn report_presence(
        &self,
        room: &RoomId,
        node: &str,
        count: u64,
    ) -> Result<(), EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [
            i.key(room, "viewers"),
            i.key(room, "viewers:exp"),
            i.key(room, "uniq"),
        ];
        let args = [
            node.to_owned(),
            count.to_string(),
            i.opts.presence_ttl.as_millis().to_string(),
        ];
        let _: i64 = conn
            .script(&i.scripts.presence, &keys, &args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn viewer_count(&self, room: &RoomId) -> Result<u64, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [i.key(room, "viewers"), i.key(room, "viewers:exp")];
        conn.script(&i.scripts.count, &keys, &[])
            .await
            .map_err(unavailable)
    }

    async fn record_viewer(&self, room: &RoomId, user: &UserId) -> Result<(), EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let _: i64 = conn
            .cmd(
                redis::cmd("PFADD")
                    .arg(i.key(room, "uniq"))
                    .arg(user.as_str()),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn unique_viewers(&self, room: &RoomId) -> Result<u64, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        conn.cmd(redis::cmd("PFCOUNT").arg(i.key(room, "uniq")))
            .await
            .map_err(unavailable)
    }

    async fn ready(&self) -> bool {
        self.inner.health.is_healthy()
    }

    async fn report_audience(
        &self,
        room: &RoomId,
        node: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Result<(), EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [i.key(room, "aud"), i.key(room, "aud:exp")];
        let mut args = vec![node.to_owned(), i.opts.presence_ttl.as_millis().to_string()];
        for (k, n) in counts.iter().filter(|(_, n)| **n > 0) {
            args.push(k.clone());
            args.push(n.to_string());
        }
        let _: i64 = conn
            .script(&i.scripts.audience_report, &keys, &args)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn audience(&self, room: &RoomId) -> Result<BTreeMap<String, u64>, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let keys = [i.key(room, "aud"), i.key(room, "aud:exp")];
        let v: Value = conn
            .script(&i.scripts.audience_read, &keys, &[])
            .await
            .map_err(unavailable)?;
        let mut out = BTreeMap::new();
        for (k, n) in flat_map(&v) {
            let n: u64 = n.parse().unwrap_or(0);
            if n > 0 {
                *out.entry(k).or_insert(0) += n;
            }
        }
        Ok(out)
    }

    async fn claim_live(
        &self,
        room: &RoomId,
        host: &LiveHost,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let args = [
            host.node.clone(),
            host.url.clone(),
            ttl.as_millis().to_string(),
        ];
        let until: i64 = conn
            .script(&i.scripts.live_claim, &[i.key(room, "meta")], &args)
            .await
            .map_err(unavailable)?;
        if until == 0 {
            return Err(EngineError::RoomNotFound);
        }
        i.index_live(room, Some(until)).await;
        Ok(())
    }

    async fn renew_live(
        &self,
        room: &RoomId,
        node: &str,
        ttl: Duration,
    ) -> Result<bool, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let args = [node.to_owned(), ttl.as_millis().to_string()];
        let until: i64 = conn
            .script(&i.scripts.live_renew, &[i.key(room, "meta")], &args)
            .await
            .map_err(unavailable)?;
        if until == 0 {
            return Ok(false);
        }
        i.index_live(room, Some(until)).await;
        Ok(true)
    }

    async fn lapsed_live(&self, limit: usize) -> Result<Vec<RoomId>, EngineError> {
        let i = &self.inner;
        let mut conn = i.live_conn()?;
        let rooms: Vec<String> = conn
            .script(&i.scripts.live_due, &[i.live_index()], &[limit.to_string()])
            .await
            .map_err(unavailable)?;
        Ok(rooms.into_iter().map(RoomId).collect())
    }
}

struct ReleaseGuard {
    room: RoomId,
    tx: mpsc::UnboundedSender<SubCmd>,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(SubCmd::Release(self.room.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_channels_parse() {
        let (o, e, b) = parse_payload(b"42:abc123:{\"type\":\"x\",\"t\":\"a:b\"}").expect("parses");
        assert_eq!(o, Offset(42));
        assert_eq!(e.0, "abc123");
        assert_eq!(&b[..], b"{\"type\":\"x\",\"t\":\"a:b\"}");
        assert!(parse_payload(b"nope").is_none());
    }
}
