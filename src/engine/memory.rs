//! The embedded engine: rooms, history and presence in this process. The default; needs no
//! other service. History is lost on restart, and each room gets a fresh random epoch when it
//! is created, so clients from before a restart are told `recovered: false`, never misled.

use super::{
    Engine, EngineError, History, LiveHost, Publication, RoomRecord, StateChange, Subscription,
};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use ferry_client::protocol::{Epoch, Offset, RoomId, UserId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Limits of the memory engine.
#[derive(Clone, Debug)]
pub struct MemoryEngineOptions {
    /// Events kept per room for resume.
    pub history_size: usize,
    /// Events older than this are dropped from history.
    pub history_ttl: Duration,
    /// Capacity of each room's live broadcast; a subscriber lagging further re-reads history.
    pub broadcast_capacity: usize,
    /// Comments one room's moderator queue holds at most.
    pub max_held: usize,
}

impl Default for MemoryEngineOptions {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            broadcast_capacity: 4096,
            max_held: 200,
        }
    }
}

struct MemRoom {
    record: RoomRecord,
    /// (publication, when it was published) oldest first.
    history: VecDeque<(Publication, Instant)>,
    live: broadcast::Sender<Publication>,
    /// Per-node viewer counts with the time of the report.
    presence: HashMap<String, (u64, Instant)>,
    /// Per-node audience reports (`lang:en` → members) with the time of the report.
    audience: HashMap<String, (BTreeMap<String, u64>, Instant)>,
    /// Distinct viewers, counted exactly up to [`UNIQUE_CAP`].
    unique: std::collections::HashSet<UserId>,
    closed_at: Option<Instant>,
    /// When the live lease (`record.live_host`) lapses unless renewed.
    lease_until: Option<Instant>,
}

/// Unique viewers tracked exactly per room; beyond it the count stops growing (bounded memory).
const UNIQUE_CAP: usize = 1_000_000;

impl MemRoom {
    fn lease_current(&self, now: Instant) -> bool {
        self.lease_until.is_some_and(|until| until > now)
    }

    fn trim(&mut self, now: Instant, opts: &MemoryEngineOptions) {
        while self.history.len() > opts.history_size {
            self.history.pop_front();
        }
        while let Some((_, at)) = self.history.front() {
            if now.duration_since(*at) > opts.history_ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The in-process engine.
#[derive(Clone)]
pub struct MemoryEngine {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: DashMap<RoomId, MemRoom>,
    opts: MemoryEngineOptions,
}

impl MemoryEngine {
    pub fn new(opts: MemoryEngineOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                rooms: DashMap::new(),
                opts,
            }),
        }
    }

    /// Forget closed rooms whose history has expired (called periodically by the server).
    pub fn sweep(&self) {
        let ttl = self.inner.opts.history_ttl;
        self.inner
            .rooms
            .retain(|_, r| r.closed_at.is_none_or(|at| at.elapsed() < ttl));
    }
}

fn new_epoch() -> Epoch {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    Epoch(
        (0..8)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect(),
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long a node's presence report counts without being renewed.
const PRESENCE_EXPIRY: Duration = Duration::from_secs(30);

#[async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create_room(
        &self,
        room: &RoomId,
        title: &str,
    ) -> Result<(RoomRecord, bool), EngineError> {
        let mut created = false;
        let entry = self.inner.rooms.entry(room.clone()).or_insert_with(|| {
            created = true;
            let (live, _) = broadcast::channel(self.inner.opts.broadcast_capacity);
            MemRoom {
                record: RoomRecord {
                    epoch: new_epoch(),
                    title: title.to_owned(),
                    created_at: unix_ms(),
                    ..RoomRecord::default()
                },
                history: VecDeque::new(),
                live,
                presence: HashMap::new(),
                audience: HashMap::new(),
                unique: std::collections::HashSet::new(),
                closed_at: None,
                lease_until: None,
            }
        });
        Ok((entry.record.clone(), created))
    }

    async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, EngineError> {
        let now = Instant::now();
        Ok(self.inner.rooms.get(room).map(|r| {
            let mut record = r.record.clone();
            if !r.lease_current(now) {
                record.live_host = None;
            }
            record
        }))
    }

    async fn publish(
        &self,
        room: &RoomId,
        body: Bytes,
        change: Option<StateChange>,
    ) -> Result<Publication, EngineError> {
        let mut r = self
            .inner
            .rooms
            .get_mut(room)
            .ok_or(EngineError::RoomNotFound)?;
        if r.record.closed {
            return Err(EngineError::RoomClosed);
        }
        match &change {
            Some(StateChange::Resolve(id)) if !r.record.held.iter().any(|h| h.id == *id) => {
                return Err(EngineError::NotHeld);
            }
            Some(StateChange::Hold(_)) if r.record.held.len() >= self.inner.opts.max_held => {
                return Err(EngineError::HeldQueueFull);
            }
            Some(StateChange::LiveEnd { .. } | StateChange::LiveLapsed) if !r.record.live => {
                return Err(EngineError::NotLive);
            }
            Some(StateChange::LiveEnd { node })
                if r.record.live_host.as_ref().is_some_and(|h| h.node != *node) =>
            {
                return Err(EngineError::LiveElsewhere);
            }
            Some(StateChange::LiveLapsed) if r.lease_current(Instant::now()) => {
                return Err(EngineError::LiveElsewhere);
            }
            _ => {}
        }
        let now = Instant::now();
        r.record.offset = r.record.offset.next();
        if let Some(change) = &change {
            r.record.apply(change);
            if matches!(change, StateChange::Close) {
                r.closed_at = Some(now);
            }
            if r.record.live_host.is_none() {
                r.lease_until = None;
            }
        }
        let publication = Publication {
            epoch: r.record.epoch.clone(),
            offset: r.record.offset,
            body,
        };
        r.history.push_back((publication.clone(), now));
        r.trim(now, &self.inner.opts);
        // No receivers is fine: nobody on this node is in the room.
        let _ = r.live.send(publication.clone());
        Ok(publication)
    }

    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, EngineError> {
        let r = self
            .inner
            .rooms
            .get(room)
            .ok_or(EngineError::RoomNotFound)?;
        Ok(Subscription {
            rx: r.live.subscribe(),
            _guard: Box::new(()),
        })
    }

    async fn history(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        after: Offset,
        until: Offset,
    ) -> Result<History, EngineError> {
        let mut r = self
            .inner
            .rooms
            .get_mut(room)
            .ok_or(EngineError::RoomNotFound)?;
        if &r.record.epoch != epoch || after > r.record.offset {
            return Ok(History::NotRecoverable);
        }
        r.trim(Instant::now(), &self.inner.opts);
        let until = until.min(r.record.offset);
        if after >= until {
            return Ok(History::Events(Vec::new()));
        }
        let first_kept = match r.history.front() {
            Some((p, _)) => p.offset,
            None => return Ok(History::NotRecoverable),
        };
        if first_kept > after.next() {
            return Ok(History::NotRecoverable);
        }
        let skip = (after.next().0 - first_kept.0) as usize;
        let take = (until.0 - after.0) as usize;
        Ok(History::Events(
            r.history
                .iter()
                .skip(skip)
                .take(take)
                .map(|(p, _)| p.clone())
                .collect(),
        ))
    }

    async fn report_presence(
        &self,
        room: &RoomId,
        node: &str,
        count: u64,
    ) -> Result<(), EngineError> {
        if let Some(mut r) = self.inner.rooms.get_mut(room) {
            if count == 0 {
                r.presence.remove(node);
            } else {
                r.presence.insert(node.to_owned(), (count, Instant::now()));
            }
        }
        Ok(())
    }

    async fn viewer_count(&self, room: &RoomId) -> Result<u64, EngineError> {
        Ok(self
            .inner
            .rooms
            .get(room)
            .map(|r| {
                r.presence
                    .values()
                    .filter(|(_, at)| at.elapsed() < PRESENCE_EXPIRY)
                    .map(|(n, _)| n)
                    .sum()
            })
            .unwrap_or(0))
    }

    async fn record_viewer(&self, room: &RoomId, user: &UserId) -> Result<(), EngineError> {
        if let Some(mut r) = self.inner.rooms.get_mut(room) {
            if r.unique.len() < UNIQUE_CAP {
                r.unique.insert(user.clone());
            }
        }
        Ok(())
    }

    async fn unique_viewers(&self, room: &RoomId) -> Result<u64, EngineError> {
        Ok(self
            .inner
            .rooms
            .get(room)
            .map(|r| r.unique.len() as u64)
            .unwrap_or(0))
    }

    async fn ready(&self) -> bool {
        true
    }

    async fn report_audience(
        &self,
        room: &RoomId,
        node: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Result<(), EngineError> {
        if let Some(mut r) = self.inner.rooms.get_mut(room) {
            let counts: BTreeMap<String, u64> = counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect();
            if counts.is_empty() {
                r.audience.remove(node);
            } else {
                r.audience.insert(node.to_owned(), (counts, Instant::now()));
            }
        }
        Ok(())
    }

    async fn audience(&self, room: &RoomId) -> Result<BTreeMap<String, u64>, EngineError> {
        let mut out = BTreeMap::new();
        if let Some(r) = self.inner.rooms.get(room) {
            for (counts, at) in r.audience.values() {
                if at.elapsed() >= PRESENCE_EXPIRY {
                    continue;
                }
                for (k, n) in counts {
                    *out.entry(k.clone()).or_insert(0) += n;
                }
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
        let mut r = self
            .inner
            .rooms
            .get_mut(room)
            .ok_or(EngineError::RoomNotFound)?;
        r.record.live_host = Some(host.clone());
        r.lease_until = Some(Instant::now() + ttl);
        Ok(())
    }

    async fn renew_live(
        &self,
        room: &RoomId,
        node: &str,
        ttl: Duration,
    ) -> Result<bool, EngineError> {
        let Some(mut r) = self.inner.rooms.get_mut(room) else {
            return Ok(false);
        };
        // Still ours even if it lapsed, until a sweep has published the lapse; not once the
        // room is closed (closing ended the stream).
        let holds = !r.record.closed && r.record.live_host.as_ref().is_some_and(|h| h.node == node);
        if holds {
            r.lease_until = Some(Instant::now() + ttl);
        }
        Ok(holds)
    }

    async fn lapsed_live(&self, limit: usize) -> Result<Vec<RoomId>, EngineError> {
        let now = Instant::now();
        Ok(self
            .inner
            .rooms
            .iter()
            .filter(|r| r.record.live && !r.record.closed && !r.lease_current(now))
            .map(|r| r.key().clone())
            .take(limit)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_engine_passes_conformance() {
        crate::engine::conformance::run_all(|history_size| async move {
            Arc::new(MemoryEngine::new(MemoryEngineOptions {
                history_size,
                ..MemoryEngineOptions::default()
            })) as Arc<dyn Engine>
        })
        .await;
    }
}
