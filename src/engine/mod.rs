//! The engine: everything a room needs that must be shared between nodes — the ordered event
//! stream with history (publish, subscribe, resume), the room's durable state (pins, mutes,
//! bans, slow mode, likes), and presence (viewer counts).
//!
//! One trait, several engines: [`memory::MemoryEngine`] is the zero-setup default for a single
//! node; a Redis engine implements the same trait for clusters. [`conformance`] is the suite
//! every engine must pass, written once and run against each.
//!
//! Invariants every engine keeps:
//! - Within an epoch, offsets start at 1 and increase by exactly one per publication.
//! - A publication's state change is applied atomically with its offset assignment, so a room
//!   snapshot at offset N reflects exactly the events up to N.
//! - History either returns every event in the asked range or says it cannot
//!   ([`History::NotRecoverable`]); never a partial range.
//! - When history is lost the epoch changes.

pub mod conformance;
pub mod memory;
pub mod redis;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_client::protocol::commerce::{PinnedProduct, SaleStock, SaleView};
use ferry_client::protocol::translation::HeldComment;
use ferry_client::protocol::{Epoch, Offset, Pinned, RoomId, UserId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// One event in a room's stream, as engines store and deliver it: its position and its JSON
/// body (a serialized `RoomEvent`), serialized once by the publisher.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    pub epoch: Epoch,
    pub offset: Offset,
    pub body: Bytes,
}

/// A change to a room's durable state, applied atomically with the publication that
/// announces it.
#[derive(Clone, Debug, PartialEq)]
pub enum StateChange {
    Pin(Pinned),
    Unpin,
    /// `until`: Unix ms, or `None` for "until unmuted".
    Mute {
        user: UserId,
        until: Option<u64>,
    },
    Unmute {
        user: UserId,
    },
    Ban {
        user: UserId,
    },
    SlowMode(u64),
    Likes(u64),
    Close,
    /// The showcase product (None = unpinned).
    Product(Option<Box<PinnedProduct>>),
    /// The room's current sale as of this event.
    Sale(Box<SaleView>),
    /// New stock counters for the room's current sale (ignored when of another sale, or
    /// older than what the state holds: `SaleView::apply_stock`).
    SaleStock(SaleStock),
    /// The room's video went live (true) or ended (false). Ending also drops the live lease.
    Live(bool),
    /// The stream hosted by `node` ended: like `Live(false)`, but refused with
    /// [`EngineError::LiveElsewhere`] when another node holds the room's live lease (the
    /// publisher moved there) and with [`EngineError::NotLive`] when the room is not live, so
    /// a stale node never ends someone else's stream and `stream_ended` is published once.
    LiveEnd {
        node: String,
    },
    /// The hosting node stopped renewing the live lease (crashed, or cut off from the engine):
    /// like `Live(false)`, but refused with [`EngineError::LiveElsewhere`] while the lease is
    /// current and with [`EngineError::NotLive`] when the room is not live, so of several
    /// nodes sweeping at once exactly one publishes the lapse's `stream_ended`.
    LiveLapsed,
    /// Put a comment in the moderator queue. Refused with [`EngineError::HeldQueueFull`] when
    /// the room already holds the engine's `max_held` comments.
    Hold(Box<HeldComment>),
    /// Take a comment off the moderator queue (approved or rejected). Refused with
    /// [`EngineError::NotHeld`] when it is not there, so two moderators resolving the same
    /// comment publish once.
    Resolve(String),
}

/// A room's durable state plus its stream position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomRecord {
    pub epoch: Epoch,
    /// Offset of the last event published (0 = none yet).
    pub offset: Offset,
    pub title: String,
    pub pinned: Option<Pinned>,
    pub slow_mode_secs: u64,
    pub likes: u64,
    pub closed: bool,
    pub muted: HashMap<UserId, Option<u64>>,
    pub banned: HashSet<UserId>,
    /// Unix ms.
    pub created_at: u64,
    pub product: Option<PinnedProduct>,
    pub sale: Option<SaleView>,
    /// A publisher is streaming video into the room.
    pub live: bool,
    /// The node whose live lease is current (`None`: no lease, or it lapsed). Viewers asking
    /// another node for the video are redirected to it.
    pub live_host: Option<LiveHost>,
    /// The moderator queue, oldest first.
    pub held: Vec<HeldComment>,
}

impl RoomRecord {
    /// Apply a state change (engines call this under their room lock; nodes call it to keep
    /// their cached copy current as events flow by).
    pub fn apply(&mut self, change: &StateChange) {
        match change {
            StateChange::Pin(p) => self.pinned = Some(p.clone()),
            StateChange::Unpin => self.pinned = None,
            StateChange::Mute { user, until } => {
                self.muted.insert(user.clone(), *until);
            }
            StateChange::Unmute { user } => {
                self.muted.remove(user);
            }
            StateChange::Ban { user } => {
                self.banned.insert(user.clone());
            }
            StateChange::SlowMode(s) => self.slow_mode_secs = *s,
            StateChange::Likes(n) => self.likes = self.likes.saturating_add(*n),
            StateChange::Close => self.closed = true,
            StateChange::Product(p) => self.product = p.as_deref().cloned(),
            StateChange::Sale(s) => self.sale = Some((**s).clone()),
            StateChange::SaleStock(stock) => {
                // Only the latest sale, and only a newer patch: stock events published by
                // different nodes may arrive out of order.
                if let Some(sale) = self.sale.as_mut() {
                    sale.apply_stock(stock);
                }
            }
            StateChange::Live(live) => {
                self.live = *live;
                if !live {
                    self.live_host = None;
                }
            }
            StateChange::LiveEnd { .. } | StateChange::LiveLapsed => {
                self.live = false;
                self.live_host = None;
            }
            StateChange::Hold(h) => {
                if !self.held.iter().any(|x| x.id == h.id) {
                    self.held.push((**h).clone());
                }
            }
            StateChange::Resolve(id) => self.held.retain(|h| h.id != *id),
        }
    }
}

/// The node hosting a room's live stream, as the room's live lease records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveHost {
    /// The hosting node's `server.node_id`.
    pub node: String,
    /// Its `server.public_url` (empty: it cannot be redirected to).
    pub url: String,
}

/// The answer of a history read.
#[derive(Clone, Debug, PartialEq)]
pub enum History {
    /// Every event in the asked range, in order.
    Events(Vec<Publication>),
    /// The range is gone (trimmed, expired, or from another epoch).
    NotRecoverable,
}

/// A live subscription to a room's publications. Dropping it unsubscribes.
pub struct Subscription {
    pub rx: tokio::sync::broadcast::Receiver<Publication>,
    /// Engine-specific cleanup run on drop (declared after `rx` so it runs once `rx` is gone).
    pub _guard: Box<dyn Send + Sync>,
}

/// Why an engine operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("room not found")]
    RoomNotFound,
    #[error("room is closed")]
    RoomClosed,
    /// The backing store is unreachable; the operation may succeed if retried later.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A [`StateChange::Resolve`] named a comment that is not in the moderator queue.
    #[error("the comment is not in the moderator queue (already resolved?)")]
    NotHeld,
    /// A [`StateChange::Hold`] found the room's moderator queue full.
    #[error("the moderator queue is full")]
    HeldQueueFull,
    /// A [`StateChange::LiveEnd`] or [`StateChange::LiveLapsed`] found the live lease held
    /// by another node, or still current.
    #[error("the room's live lease is held (by another node, or not lapsed)")]
    LiveElsewhere,
    /// A [`StateChange::LiveEnd`] or [`StateChange::LiveLapsed`] found the room not live.
    #[error("the room is not live")]
    NotLive,
}

impl EngineError {
    /// The wire error code of a command refused with this error, and its retry delay.
    pub fn wire_code(&self) -> (ferry_client::protocol::ErrorCode, Option<u64>) {
        use ferry_client::protocol::ErrorCode;
        match self {
            EngineError::RoomNotFound => (ErrorCode::RoomNotFound, None),
            EngineError::RoomClosed => (ErrorCode::RoomClosed, None),
            EngineError::Unavailable(_) => (ErrorCode::Unavailable, Some(1000)),
            EngineError::NotHeld => (ErrorCode::NotHeld, None),
            EngineError::HeldQueueFull => (ErrorCode::ModerationQueueFull, Some(5000)),
            // Only the SFU's own stream events carry live changes; no client command does.
            EngineError::LiveElsewhere | EngineError::NotLive => (ErrorCode::Internal, None),
        }
    }
}

/// Cross-node fan-out, history, room state and presence.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Short name for logs and metrics ("memory", "redis").
    fn name(&self) -> &'static str;

    /// Create a room, or return the existing one. `true` when it was created now.
    async fn create_room(
        &self,
        room: &RoomId,
        title: &str,
    ) -> Result<(RoomRecord, bool), EngineError>;

    /// The room's state and position, `None` if it does not exist.
    async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, EngineError>;

    /// Append an event to the room's stream, apply `change` atomically with it, and deliver it
    /// to every subscriber on every node. Refused on closed rooms (except the closing event).
    async fn publish(
        &self,
        room: &RoomId,
        body: Bytes,
        change: Option<StateChange>,
    ) -> Result<Publication, EngineError>;

    /// Subscribe to the room's live publications.
    async fn subscribe(&self, room: &RoomId) -> Result<Subscription, EngineError>;

    /// Events with `after < offset <= until` in `epoch`, all of them or `NotRecoverable`.
    async fn history(
        &self,
        room: &RoomId,
        epoch: &Epoch,
        after: Offset,
        until: Offset,
    ) -> Result<History, EngineError>;

    /// Report how many viewers this node holds in the room (called periodically; a node that
    /// stops reporting stops counting).
    async fn report_presence(
        &self,
        room: &RoomId,
        node: &str,
        count: u64,
    ) -> Result<(), EngineError>;

    /// Viewers in the room across all nodes.
    async fn viewer_count(&self, room: &RoomId) -> Result<u64, EngineError>;

    /// Count `user` as a viewer of the room's stream (for unique-viewer counts).
    async fn record_viewer(&self, room: &RoomId, user: &UserId) -> Result<(), EngineError>;

    /// Distinct users who joined the room (approximate on Redis: HyperLogLog, ~0.8%).
    async fn unique_viewers(&self, room: &RoomId) -> Result<u64, EngineError>;

    /// Whether the engine can serve requests now (drives `/readyz`).
    async fn ready(&self) -> bool;

    /// Report this node's audience of the room: how many members per key (`lang:en`,
    /// `market:ae`...). Replaces the node's previous report; an empty map withdraws it. Like
    /// presence, a report lapses unless renewed.
    async fn report_audience(
        &self,
        room: &RoomId,
        node: &str,
        counts: &BTreeMap<String, u64>,
    ) -> Result<(), EngineError>;

    /// The room's audience across all nodes (sum of the live reports), keys with count > 0.
    async fn audience(&self, room: &RoomId) -> Result<BTreeMap<String, u64>, EngineError>;

    /// Give the room's live lease to `host` for `ttl`: a publisher went live on that node.
    /// Replaces any other holder (the newest publisher wins). Taken before `stream_started`
    /// is published, so a live room always has a lease that lapses if nobody renews it.
    async fn claim_live(
        &self,
        room: &RoomId,
        host: &LiveHost,
        ttl: Duration,
    ) -> Result<(), EngineError>;

    /// Extend `node`'s live lease to `ttl` from now. `false` when the node does not hold it
    /// (another node took it, or it lapsed and was swept).
    async fn renew_live(
        &self,
        room: &RoomId,
        node: &str,
        ttl: Duration,
    ) -> Result<bool, EngineError>;

    /// Rooms whose live lease has lapsed, at most `limit`. Candidates only: the sweep ends
    /// each with [`StateChange::LiveLapsed`], which the engine checks again atomically.
    async fn lapsed_live(&self, limit: usize) -> Result<Vec<RoomId>, EngineError>;
}
