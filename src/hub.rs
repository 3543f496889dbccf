//! The hub: this node's live rooms. Each room with members here has one task (the driver of
//! the sans-IO [`crate::room`] logic) that owns the room's member list and is the only place
//! frames for that room are built: every event is serialized once into shared bytes, and each
//! member's bounded queue gets a reference-counted clone. When publications arrive faster than
//! one at a time, up to `max_batch` of them are coalesced into one frame, so the cost per
//! delivered event falls as the room gets busier.
//!
//! Invariants:
//! - A member receives its join reply, then every missed event (on resume), then live events,
//!   with no offset skipped or repeated: attach, replay and live delivery all happen on the
//!   room task, between two publications.
//! - A member whose queue is full is removed and its connection closed with 3001 (slow
//!   consumer); no queue grows without bound.
//! - A gap in the stream is filled from engine history before anything after it is delivered;
//!   when it cannot be, members are closed with 3004 (stream gap) and resume.
//!
//! The hub must not parse client frames (that is [`crate::session`]) nor touch sockets (that
//! is [`crate::ws`]).

use crate::config::Config;
use crate::engine::{Engine, EngineError, History, Publication, RoomRecord, StateChange};
use crate::limits::{TokenBucket, UserLimits};
use crate::metrics::Metrics;
use crate::room::audience::{self, Audience};
use crate::room::{
    state_change_of, Aggregator, Incoming, ResumePlan, StreamTracker, ViewerThrottle,
};
use crate::session::RoomView;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use dashmap::DashMap;
use ferry_client::protocol::translation::HeldComment;
use ferry_client::protocol::{
    CloseCode, ErrorCode, JoinReply, Offset, Push, Reply, ReplyBody, ReplyResult, RoomEvent,
    RoomId, RoomState, StreamPosition, UserId, UserRef,
};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame to write as is.
    Frame(Utf8Bytes),
    /// The server removed the connection from `room`; `frame` is the `left` push to write.
    Removed { room: RoomId, frame: Utf8Bytes },
}

/// Lets any task close a connection with a code (the first code set wins).
#[derive(Default)]
pub struct ConnSignal {
    code: AtomicU16,
    pub notify: Notify,
}

impl ConnSignal {
    pub fn close(&self, code: CloseCode) {
        if self
            .code
            .compare_exchange(0, code.code(), Relaxed, Relaxed)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    pub fn code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.code.load(Relaxed))
    }
}

/// A connection as a room sees it.
#[derive(Clone)]
pub struct Member {
    pub conn: u64,
    pub user: UserRef,
    /// The language the connection reads comments in (`None`: originals only).
    pub lang: Option<String>,
    /// The market of the connection's token (its rules apply to the room's comments).
    pub market: Option<String>,
    pub tx: mpsc::Sender<Outbound>,
    pub signal: Arc<ConnSignal>,
    /// Frames queued to this connection across all its rooms (for the queue-size gauge).
    pub queued: Arc<AtomicI64>,
}

/// How a join ended.
#[derive(Debug, PartialEq)]
pub enum JoinError {
    /// Reply with this error.
    Refused(ErrorCode, String),
    /// The node is admitting joins slower than they arrive: retry after this many ms.
    Busy(u64),
    /// Close the connection with this code.
    Close(CloseCode),
}

enum AttachOutcome {
    Attached { recovered: Option<bool> },
    NeedHistory { after: Offset, until: Offset },
    Refused(JoinError),
}

enum RoomCtl {
    Attach {
        member: Member,
        reply_id: u64,
        since: Option<StreamPosition>,
        /// Events after `since` already read from engine history by the joining connection.
        prefill: Vec<Publication>,
        /// Engine history said `since` cannot be resumed: answer `recovered: false`.
        unrecoverable: bool,
        done: oneshot::Sender<AttachOutcome>,
    },
    Detach {
        conn: u64,
        announce: bool,
    },
    ViewerCount(u64),
    SetLanguage {
        conn: u64,
        lang: Option<String>,
    },
}

/// A room with members on this node.
pub struct LocalRoom {
    ctl: mpsc::Sender<RoomCtl>,
    /// The room's durable state, kept current from the stream (for joins and [`RoomView`]).
    state: RwLock<RoomRecord>,
    /// Likes received since the last aggregation tick.
    likes: AtomicU64,
    members: AtomicU64,
    /// This node's members per audience key (`lang:en`, `market:ae`), kept by the room task.
    local_audience: RwLock<BTreeMap<String, u64>>,
    /// The whole cluster's audience as last read from the engine (every presence tick).
    cluster_audience: RwLock<BTreeMap<String, u64>>,
}

/// The languages and markets present in a room (this node's exactly, other nodes' as of the
/// last presence tick).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomAudience {
    pub langs: BTreeSet<String>,
    pub markets: BTreeSet<String>,
}

impl RoomAudience {
    /// From `lang:<l>` / `market:<m>` counts (the engine's audience reports); zero counts
    /// are absent.
    fn from_counts<'a>(counts: impl Iterator<Item = (&'a String, &'a u64)>) -> RoomAudience {
        let mut out = RoomAudience::default();
        for (key, n) in counts {
            if *n == 0 {
                continue;
            }
            if let Some(l) = key.strip_prefix("lang:") {
                out.langs.insert(l.to_owned());
            } else if let Some(m) = key.strip_prefix("market:") {
                out.markets.insert(m.to_owned());
            }
        }
        out
    }
}

/// Settings the hub takes from [`Config`].
#[derive(Clone, Debug)]
pub struct HubConfig {
    pub node: String,
    pub max_batch: usize,
    pub batch_window: Duration,
    pub batch_min_members: usize,
    pub node_cache: usize,
    pub aggregate_interval: Duration,
    pub viewer_count_interval: Duration,
    pub presence_sample: usize,
    pub join_rate: f64,
    pub join_burst: f64,
    pub comment_rate: f64,
    pub comment_burst: f64,
}

impl HubConfig {
    pub fn from_config(cfg: &Config, node: String) -> Self {
        Self {
            node,
            max_batch: cfg.websocket.max_batch,
            batch_window: cfg.websocket.batch_window,
            batch_min_members: cfg.websocket.batch_min_members,
            node_cache: cfg.history.node_cache,
            aggregate_interval: cfg.rooms.aggregate_interval,
            viewer_count_interval: cfg.rooms.viewer_count_interval,
            presence_sample: cfg.rooms.presence_sample,
            join_rate: cfg.limits.join_rate,
            join_burst: cfg.limits.join_burst,
            comment_rate: cfg.limits.comment_rate,
            comment_burst: cfg.limits.comment_burst,
        }
    }
}

/// This node's rooms.
pub struct Hub {
    engine: Arc<dyn Engine>,
    rooms: DashMap<RoomId, Arc<LocalRoom>>,
    cfg: HubConfig,
    metrics: Arc<Metrics>,
    joins: Mutex<TokenBucket>,
    /// Comment rate and slow mode per user, shared by the user's connections on this node.
    users: Mutex<UserLimits>,
}

/// Resume attempts before giving up on a client whose room moves faster than it can read
/// history.
const MAX_RESUME_ROUNDS: usize = 4;

impl Hub {
    pub fn new(engine: Arc<dyn Engine>, cfg: HubConfig, metrics: Arc<Metrics>) -> Arc<Hub> {
        let joins = Mutex::new(TokenBucket::new(
            cfg.join_rate,
            cfg.join_burst,
            Instant::now(),
        ));
        let users = Mutex::new(UserLimits::new(cfg.comment_rate, cfg.comment_burst));
        Arc::new(Hub {
            users,
            engine,
            rooms: DashMap::new(),
            cfg,
            metrics,
            joins,
        })
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    /// A user's connection opened on this node (their comment limits are kept while any is).
    pub fn user_connected(&self, user: &UserId) {
        self.users.lock().connected(user, Instant::now());
    }

    pub fn user_disconnected(&self, user: &UserId) {
        self.users.lock().disconnected(user);
    }

    /// Members on this node in `room`.
    pub fn local_members(&self, room: &RoomId) -> u64 {
        self.rooms
            .get(room)
            .map(|r| r.members.load(Relaxed))
            .unwrap_or(0)
    }

    /// Join `member` to `room`, resuming from `since`. On success the join reply (and any
    /// missed events) are already queued to the member.
    pub async fn join(
        self: &Arc<Self>,
        room: &RoomId,
        member: Member,
        reply_id: u64,
        since: Option<StreamPosition>,
        may_create: bool,
    ) -> Result<(), JoinError> {
        if let Err(wait) = self.joins.lock().try_take(1.0, Instant::now()) {
            self.metrics.joins_refused.fetch_add(1, Relaxed);
            return Err(JoinError::Busy(wait.as_millis().max(1) as u64));
        }
        let mut prefill: Vec<Publication> = Vec::new();
        let mut unrecoverable = false;
        for _round in 0..MAX_RESUME_ROUNDS {
            let local = self.local_room(room, may_create).await?;
            let (done, outcome) = oneshot::channel();
            let ctl = RoomCtl::Attach {
                member: member.clone(),
                reply_id,
                since: since.clone(),
                prefill: std::mem::take(&mut prefill),
                unrecoverable,
                done,
            };
            if local.ctl.send(ctl).await.is_err() {
                continue; // The room task was ending; start a new one.
            }
            match outcome.await {
                Err(_) => continue,
                Ok(AttachOutcome::Attached { recovered }) => {
                    self.metrics.joins.fetch_add(1, Relaxed);
                    match recovered {
                        Some(true) => self.metrics.resumes_recovered.fetch_add(1, Relaxed),
                        Some(false) => self.metrics.resumes_failed.fetch_add(1, Relaxed),
                        None => 0,
                    };
                    return Ok(());
                }
                Ok(AttachOutcome::Refused(e)) => {
                    self.metrics.joins_refused.fetch_add(1, Relaxed);
                    return Err(e);
                }
                Ok(AttachOutcome::NeedHistory { after, until }) => {
                    let Some(since) = &since else {
                        return Err(JoinError::Close(CloseCode::InternalError));
                    };
                    match self.engine.history(room, &since.epoch, after, until).await {
                        Ok(History::Events(events)) => prefill = events,
                        Ok(History::NotRecoverable) => unrecoverable = true,
                        Err(e) => return Err(engine_join_error(&self.metrics, e)),
                    }
                }
            }
        }
        Err(JoinError::Close(CloseCode::StreamGap))
    }

    /// Remove a connection from a room.
    pub async fn leave(&self, room: &RoomId, conn: u64) {
        let local = self.rooms.get(room).map(|r| r.clone());
        if let Some(local) = local {
            let _ = local
                .ctl
                .send(RoomCtl::Detach {
                    conn,
                    announce: true,
                })
                .await;
        }
    }

    /// Serialize `event` once and publish it to the room's stream on every node.
    pub async fn publish(
        &self,
        room: &RoomId,
        event: &RoomEvent,
    ) -> Result<StreamPosition, EngineError> {
        self.publish_with(room, event, state_change_of(event)).await
    }

    /// [`Hub::publish`] with a state change of the caller's choice instead of the event's
    /// own (the SFU's conditional live changes: `LiveEnd`, `LiveLapsed`).
    pub async fn publish_with(
        &self,
        room: &RoomId,
        event: &RoomEvent,
        change: Option<StateChange>,
    ) -> Result<StreamPosition, EngineError> {
        let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        let result = self.engine.publish(room, body, change).await;
        match &result {
            Ok(_) => self.metrics.events_published.fetch_add(1, Relaxed),
            Err(_) => self.metrics.engine_errors.fetch_add(1, Relaxed),
        };
        result.map(|p| StreamPosition {
            epoch: p.epoch,
            offset: p.offset,
        })
    }

    /// The languages and markets present in `room`.
    pub fn audience(&self, room: &RoomId) -> RoomAudience {
        match self.rooms.get(room) {
            Some(r) => {
                let local = r.local_audience.read();
                let cluster = r.cluster_audience.read();
                RoomAudience::from_counts(local.iter().chain(cluster.iter()))
            }
            None => RoomAudience::default(),
        }
    }

    /// [`Hub::audience`], or, when no member of the room is on this node (a pin through the
    /// HTTP API at any node), the other nodes' reports read from the engine.
    pub async fn audience_anywhere(&self, room: &RoomId) -> RoomAudience {
        if self.rooms.contains_key(room) {
            return self.audience(room);
        }
        match self.engine.audience(room).await {
            Ok(counts) => RoomAudience::from_counts(counts.iter()),
            Err(e) => {
                tracing::warn!(%room, error = %e, "cannot read the room's audience");
                RoomAudience::default()
            }
        }
    }

    /// The room's moderator queue as this node last saw it.
    pub fn held(&self, room: &RoomId) -> Vec<HeldComment> {
        self.rooms
            .get(room)
            .map(|r| r.state.read().held.clone())
            .unwrap_or_default()
    }

    /// Change the language a connection reads `room` in.
    pub async fn set_language(&self, room: &RoomId, conn: u64, lang: Option<String>) {
        let local = self.rooms.get(room).map(|r| r.clone());
        if let Some(local) = local {
            let _ = local.ctl.send(RoomCtl::SetLanguage { conn, lang }).await;
        }
    }

    /// Count likes toward the room's next aggregated `likes` event.
    pub fn like(&self, room: &RoomId, count: u32) {
        if let Some(r) = self.rooms.get(room) {
            r.likes.fetch_add(u64::from(count), Relaxed);
        }
    }

    async fn local_room(
        self: &Arc<Self>,
        room: &RoomId,
        may_create: bool,
    ) -> Result<Arc<LocalRoom>, JoinError> {
        if let Some(r) = self.rooms.get(room) {
            return Ok(r.clone());
        }
        let record = match self.engine.room(room).await {
            Ok(Some(r)) => r,
            Ok(None) if may_create => match self.engine.create_room(room, "").await {
                Ok((r, _)) => r,
                Err(e) => return Err(engine_join_error(&self.metrics, e)),
            },
            Ok(None) => {
                return Err(JoinError::Refused(
                    ErrorCode::RoomNotFound,
                    format!("room `{room}` does not exist"),
                ))
            }
            Err(e) => return Err(engine_join_error(&self.metrics, e)),
        };
        if record.closed {
            return Err(JoinError::Refused(
                ErrorCode::RoomClosed,
                "the room is closed".into(),
            ));
        }
        let entry = self.rooms.entry(room.clone()).or_insert_with(|| {
            let (ctl, ctl_rx) = mpsc::channel(1024);
            let local = Arc::new(LocalRoom {
                ctl,
                state: RwLock::new(record),
                likes: AtomicU64::new(0),
                members: AtomicU64::new(0),
                local_audience: RwLock::new(BTreeMap::new()),
                cluster_audience: RwLock::new(BTreeMap::new()),
            });
            self.metrics.rooms.fetch_add(1, Relaxed);
            tokio::spawn(run_room(self.clone(), room.clone(), local.clone(), ctl_rx));
            local
        });
        Ok(entry.clone())
    }

    /// The rooms with members on this node.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.rooms.iter().map(|r| r.key().clone()).collect()
    }
}

fn engine_join_error(metrics: &Metrics, e: EngineError) -> JoinError {
    metrics.engine_errors.fetch_add(1, Relaxed);
    match e {
        EngineError::RoomNotFound => {
            JoinError::Refused(ErrorCode::RoomNotFound, "room does not exist".into())
        }
        EngineError::RoomClosed => {
            JoinError::Refused(ErrorCode::RoomClosed, "the room is closed".into())
        }
        EngineError::Unavailable(why) => JoinError::Refused(
            ErrorCode::Unavailable,
            format!("temporarily unavailable, retry: {why}"),
        ),
        e @ (EngineError::NotHeld
        | EngineError::HeldQueueFull
        | EngineError::LiveElsewhere
        | EngineError::NotLive) => {
            let (code, _) = e.wire_code();
            JoinError::Refused(code, e.to_string())
        }
    }
}

impl RoomView for Hub {
    fn try_comment(
        &self,
        room: &RoomId,
        user: &UserId,
        now: Instant,
    ) -> Result<(), crate::limits::CommentRefusal> {
        let slow = self
            .rooms
            .get(room)
            .map(|r| r.state.read().slow_mode_secs)
            .unwrap_or(0);
        self.users.lock().try_comment(user, room, slow, now)
    }

    fn muted_until(&self, room: &RoomId, user: &UserId) -> Option<Option<u64>> {
        self.rooms
            .get(room)
            .and_then(|r| r.state.read().muted.get(user).copied())
    }
}

/// State of one room's task.
struct RoomTask {
    hub: Arc<Hub>,
    room: RoomId,
    local: Arc<LocalRoom>,
    tracker: StreamTracker<EventFrame>,
    members: Vec<Member>,
    /// Members per audience key on this node (`lang:en`, `market:ae`).
    counts: BTreeMap<String, u64>,
    aggregator: Aggregator,
    viewers: ViewerThrottle,
    /// `{"push":"event","room":"<room>","epoch":"<epoch>","offset":` — shared by all frames.
    frame_prefix: String,
    closing: bool,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn frame_prefix(room: &RoomId, epoch: &ferry_client::protocol::Epoch) -> String {
    format!(
        "{{\"push\":\"event\",\"room\":{},\"epoch\":{},\"offset\":",
        json_string(room.as_str()),
        json_string(epoch.as_str())
    )
}

fn to_frame(text: String) -> Utf8Bytes {
    Utf8Bytes::from(text)
}

async fn run_room(
    hub: Arc<Hub>,
    room: RoomId,
    local: Arc<LocalRoom>,
    mut ctl_rx: mpsc::Receiver<RoomCtl>,
) {
    let unavailable = || {
        JoinError::Refused(
            ErrorCode::Unavailable,
            "temporarily unavailable, retry".into(),
        )
    };
    let mut sub = match hub.engine.subscribe(&room).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%room, error = %e, "cannot subscribe to room");
            hub.metrics.engine_errors.fetch_add(1, Relaxed);
            end_room(&hub, &room, &local, &mut ctl_rx, unavailable());
            return;
        }
    };
    // Snapshot after subscribing: publications up to the snapshot's offset are in it, later
    // ones arrive on the subscription.
    let snapshot = match hub.engine.room(&room).await {
        Ok(Some(r)) => r,
        _ => {
            end_room(&hub, &room, &local, &mut ctl_rx, unavailable());
            return;
        }
    };
    let prefix = frame_prefix(&room, &snapshot.epoch);
    let tracker = StreamTracker::new(snapshot.epoch.clone(), snapshot.offset, hub.cfg.node_cache);
    *local.state.write() = snapshot;
    let mut task = RoomTask {
        aggregator: Aggregator::new(hub.cfg.presence_sample),
        viewers: ViewerThrottle::new(hub.cfg.viewer_count_interval),
        hub: hub.clone(),
        room: room.clone(),
        local: local.clone(),
        tracker,
        members: Vec::new(),
        counts: BTreeMap::new(),
        frame_prefix: prefix,
        closing: false,
    };
    let mut aggregate_tick = tokio::time::interval(hub.cfg.aggregate_interval);
    aggregate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut presence_tick = tokio::time::interval(hub.cfg.viewer_count_interval);
    presence_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_ticks = 0u32;
    loop {
        tokio::select! {
            biased;
            ctl = ctl_rx.recv() => match ctl {
                Some(ctl) => task.handle_ctl(ctl).await,
                None => break,
            },
            first = sub.rx.recv() => {
                match first {
                    Ok(p) => {
                        let mut batch = vec![p];
                        let wait = task.members.len() >= hub.cfg.batch_min_members;
                        let deadline = tokio::time::Instant::now() + hub.cfg.batch_window;
                        while batch.len() < hub.cfg.max_batch {
                            match sub.rx.try_recv() {
                                Ok(p) => batch.push(p),
                                Err(broadcast::error::TryRecvError::Empty) if wait => {
                                    // A busy room: give the batch a moment to fill.
                                    match tokio::time::timeout_at(deadline, sub.rx.recv()).await {
                                        Ok(Ok(p)) => batch.push(p),
                                        _ => break,
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        task.deliver_batch(batch).await;
                    }
                    // Missed some: the next publication will show the gap and history fills it.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(%room, missed = n, "room subscription lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        task.kick_all(CloseCode::StreamGap);
                        break;
                    }
                }
            }
            _ = aggregate_tick.tick() => {
                task.flush_aggregates();
                if task.members.is_empty() {
                    idle_ticks += 1;
                    // Linger one tick so the last `left` notice is published, then end.
                    if idle_ticks >= 2 {
                        break;
                    }
                } else {
                    idle_ticks = 0;
                }
            }
            _ = presence_tick.tick() => task.report_presence(),
        }
        if task.closing && task.members.is_empty() {
            break;
        }
    }
    task.flush_aggregates();
    let engine = hub.engine.clone();
    let node = hub.cfg.node.clone();
    let r = room.clone();
    tokio::spawn(async move {
        let _ = engine.report_presence(&r, &node, 0).await;
    });
    end_room(
        &hub,
        &room,
        &local,
        &mut ctl_rx,
        JoinError::Close(CloseCode::StreamGap),
    );
    drop(sub);
}

/// Unregister the room and refuse whatever is still queued (attachers retry on a new task).
fn end_room(
    hub: &Hub,
    room: &RoomId,
    local: &Arc<LocalRoom>,
    ctl_rx: &mut mpsc::Receiver<RoomCtl>,
    error: JoinError,
) {
    if hub
        .rooms
        .remove_if(room, |_, r| Arc::ptr_eq(r, local))
        .is_some()
    {
        hub.metrics.rooms.fetch_sub(1, Relaxed);
    }
    ctl_rx.close();
    let mut error = Some(error);
    while let Ok(ctl) = ctl_rx.try_recv() {
        if let RoomCtl::Attach { done, .. } = ctl {
            // First attacher gets the error when the engine failed; others retry.
            if let Some(JoinError::Refused(code, msg)) = error.take() {
                let _ = done.send(AttachOutcome::Refused(JoinError::Refused(code, msg)));
            }
        }
    }
}

impl RoomTask {
    fn metrics(&self) -> &Metrics {
        &self.hub.metrics
    }

    /// The frame of the event at `offset`; `parsed` is its decoded body (used, instead of
    /// `body`, when the event varies by audience).
    fn event_frame(&self, offset: Offset, body: &[u8], parsed: Option<RoomEvent>) -> EventFrame {
        let mut s = String::with_capacity(self.frame_prefix.len() + body.len() + 32);
        s.push_str(&self.frame_prefix);
        s.push_str(&offset.0.to_string());
        s.push_str(",\"event\":");
        if let Some(event) = parsed.filter(audience::varies) {
            return EventFrame::Varied(Arc::new(VariedFrame {
                head: s,
                event,
                built: Mutex::new(Vec::new()),
            }));
        }
        s.push_str(std::str::from_utf8(body).unwrap_or("{}"));
        s.push('}');
        EventFrame::Shared(to_frame(s))
    }

    /// The frame of a publication read from history (decoded when it may vary).
    fn history_frame(&self, p: &Publication) -> EventFrame {
        let parsed = serde_json::from_slice::<RoomEvent>(&p.body).ok();
        self.event_frame(p.offset, &p.body, parsed)
    }

    /// Count a member in (`+1`) or out (`-1`) of its audience keys; report to the engine
    /// when a key appears or disappears on this node.
    fn count(&mut self, m: &Member, delta: i64) {
        let mut changed = false;
        for key in audience_keys(m) {
            let n = self.counts.entry(key.clone()).or_insert(0);
            let before = *n;
            *n = if delta >= 0 {
                n.saturating_add(delta as u64)
            } else {
                n.saturating_sub(delta.unsigned_abs())
            };
            changed |= (before == 0) != (*n == 0);
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
        if changed {
            *self.local.local_audience.write() = self.counts.clone();
            self.report_audience();
        }
    }

    fn report_audience(&self) {
        let hub = self.hub.clone();
        let room = self.room.clone();
        let counts = self.counts.clone();
        tokio::spawn(async move {
            if let Err(e) = hub
                .engine
                .report_audience(&room, &hub.cfg.node, &counts)
                .await
            {
                tracing::debug!(%room, error = %e, "audience not reported");
            }
        });
    }

    fn room_state(&self, member: &Member) -> RoomState {
        let st = self.local.state.read();
        let staff = member.user.role.is_staff();
        RoomState {
            title: st.title.clone(),
            viewers: self
                .viewers
                .last()
                .unwrap_or(self.members.len() as u64)
                .max(self.members.len() as u64),
            likes: st.likes,
            pinned: st.pinned.clone(),
            slow_mode_secs: st.slow_mode_secs,
            closed: st.closed,
            // Like the `product_pinned` event: only the member's language's translation.
            product: st.product.clone().map(|mut p| {
                p.product
                    .translations
                    .retain(|l, _| member.lang.as_deref() == Some(l.as_str()));
                Box::new(p)
            }),
            sale: st.sale.clone().map(Box::new),
            live: st.live,
            held: if staff {
                st.held
                    .iter()
                    .map(|h| {
                        let mut h = h.clone();
                        h.translations
                            .retain(|l, _| member.lang.as_deref() == Some(l.as_str()));
                        h
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    async fn handle_ctl(&mut self, ctl: RoomCtl) {
        match ctl {
            RoomCtl::Attach {
                member,
                reply_id,
                since,
                prefill,
                unrecoverable,
                done,
            } => {
                let outcome = self.attach(member, reply_id, since, prefill, unrecoverable);
                let _ = done.send(outcome);
            }
            RoomCtl::Detach { conn, announce } => {
                if let Some(i) = self.members.iter().position(|m| m.conn == conn) {
                    let m = self.remove_member(i);
                    if announce {
                        self.aggregator.left(&m.user);
                    }
                }
            }
            RoomCtl::ViewerCount(count) => self.push_viewers(count),
            RoomCtl::SetLanguage { conn, lang } => {
                if let Some(i) = self.members.iter().position(|m| m.conn == conn) {
                    let old = self.members[i].clone();
                    self.count(&old, -1);
                    self.members[i].lang = lang;
                    let new = self.members[i].clone();
                    self.count(&new, 1);
                }
            }
        }
    }

    fn attach(
        &mut self,
        member: Member,
        reply_id: u64,
        since: Option<StreamPosition>,
        prefill: Vec<Publication>,
        unrecoverable: bool,
    ) -> AttachOutcome {
        {
            let st = self.local.state.read();
            if st.closed || self.closing {
                return AttachOutcome::Refused(JoinError::Refused(
                    ErrorCode::RoomClosed,
                    "the room is closed".into(),
                ));
            }
            if st.banned.contains(&member.user.id) {
                return AttachOutcome::Refused(JoinError::Refused(
                    ErrorCode::Forbidden,
                    "you are banned from this room".into(),
                ));
            }
        }
        // Frames read from history by the joiner, contiguous after `since`.
        let mut replay: Vec<EventFrame> = Vec::new();
        let mut effective = since.clone();
        if let Some(s) = &mut effective {
            let mut expected = s.offset.next();
            for p in &prefill {
                if p.epoch != s.epoch || p.offset != expected {
                    break;
                }
                replay.push(self.history_frame(p));
                s.offset = p.offset;
                expected = p.offset.next();
            }
        }
        let plan = if unrecoverable {
            ResumePlan::NotRecoverable
        } else {
            self.tracker.plan_resume(effective.as_ref())
        };
        let recovered = match plan {
            ResumePlan::Fresh => None,
            ResumePlan::NotRecoverable => {
                replay.clear();
                Some(false)
            }
            ResumePlan::FromCache(frames) => {
                replay.extend(frames);
                Some(true)
            }
            ResumePlan::NeedHistory { after, until } => {
                return AttachOutcome::NeedHistory { after, until };
            }
        };
        let reply = Reply {
            id: reply_id,
            result: ReplyResult::Ok(ReplyBody::Joined(JoinReply {
                room: self.room.clone(),
                position: self.tracker.position(),
                recovered,
                missed: replay.len() as u64,
                state: self.room_state(&member),
            })),
        };
        let reply = to_frame(serde_json::to_string(&reply).unwrap_or_default());
        let mut frames = vec![reply];
        // Replay coalesced like live traffic so a long resume fits the queue.
        let replay: Vec<Utf8Bytes> = replay.iter().map(|f| f.for_member(&member)).collect();
        for chunk in replay.chunks(self.hub.cfg.max_batch) {
            frames.push(join_frames(chunk));
        }
        for f in frames {
            member.queued.fetch_add(1, Relaxed);
            self.metrics().queued_frames.fetch_add(1, Relaxed);
            if member.tx.try_send(Outbound::Frame(f)).is_err() {
                member.queued.fetch_sub(1, Relaxed);
                self.metrics().queued_frames.fetch_sub(1, Relaxed);
                member.signal.close(CloseCode::SlowConsumer);
                self.metrics().drops_slow_consumer.fetch_add(1, Relaxed);
                return AttachOutcome::Refused(JoinError::Close(CloseCode::SlowConsumer));
            }
        }
        self.aggregator.joined(&member.user);
        let (hub, room, user) = (self.hub.clone(), self.room.clone(), member.user.id.clone());
        tokio::spawn(async move {
            if let Err(e) = hub.engine.record_viewer(&room, &user).await {
                tracing::debug!(%room, error = %e, "unique viewer not recorded");
            }
        });
        self.count(&member, 1);
        self.members.push(member);
        self.local.members.store(self.members.len() as u64, Relaxed);
        self.metrics().room_members.fetch_add(1, Relaxed);
        AttachOutcome::Attached { recovered }
    }

    fn remove_member(&mut self, i: usize) -> Member {
        let m = self.members.swap_remove(i);
        self.count(&m, -1);
        self.local.members.store(self.members.len() as u64, Relaxed);
        self.metrics().room_members.fetch_sub(1, Relaxed);
        m
    }

    /// Queue one shared frame to every member; drop members that cannot keep up.
    fn broadcast(&mut self, frame: Utf8Bytes, events: u64) {
        self.send_each(|_| frame.clone(), events);
    }

    /// Queue to every member the frame `pick` gives it; drop members that cannot keep up.
    fn send_each(&mut self, mut pick: impl FnMut(&Member) -> Utf8Bytes, events: u64) {
        // Count the frames as queued before queueing them, so the writers' decrements can
        // never take the gauge below zero; frames that could not be queued are taken back.
        let planned = self.members.len() as u64;
        self.metrics()
            .queued_frames
            .fetch_add(planned as i64, Relaxed);
        let mut i = 0;
        let mut sent = 0u64;
        let mut bytes = 0u64;
        while i < self.members.len() {
            let m = &self.members[i];
            let frame = pick(m);
            let len = frame.len() as u64;
            m.queued.fetch_add(1, Relaxed);
            match m.tx.try_send(Outbound::Frame(frame)) {
                Ok(()) => {
                    sent += 1;
                    bytes += len;
                    i += 1;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    m.queued.fetch_sub(1, Relaxed);
                    m.signal.close(CloseCode::SlowConsumer);
                    self.metrics().drops_slow_consumer.fetch_add(1, Relaxed);
                    let m = self.remove_member(i);
                    tracing::info!(room = %self.room, user = %m.user.id, conn = m.conn, "slow consumer closed");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    m.queued.fetch_sub(1, Relaxed);
                    self.remove_member(i);
                }
            }
        }
        let m = self.metrics();
        m.frames_out.fetch_add(sent, Relaxed);
        m.events_delivered.fetch_add(sent * events, Relaxed);
        m.bytes_out.fetch_add(bytes, Relaxed);
        m.queued_frames.fetch_sub((planned - sent) as i64, Relaxed);
    }

    fn kick_all(&mut self, code: CloseCode) {
        let n = self.members.len();
        for m in std::mem::take(&mut self.members) {
            self.count(&m, -1);
            m.signal.close(code);
        }
        self.local.members.store(0, Relaxed);
        self.metrics().room_members.fetch_sub(n as i64, Relaxed);
        if code == CloseCode::StreamGap {
            self.metrics().drops_stream_gap.fetch_add(n as u64, Relaxed);
        }
    }

    /// Deliver publications in order, filling gaps from history first.
    async fn deliver_batch(&mut self, batch: Vec<Publication>) {
        let mut frames: Vec<EventFrame> = Vec::with_capacity(batch.len());
        let mut events: Vec<RoomEvent> = Vec::new();
        for p in batch {
            match self.tracker.classify(&p) {
                Incoming::Duplicate => continue,
                Incoming::Deliver => {}
                Incoming::Gap { after, until } => {
                    let epoch = self.tracker.epoch().clone();
                    match self
                        .hub
                        .engine
                        .history(&self.room, &epoch, after, until)
                        .await
                    {
                        Ok(History::Events(missed)) if missed.len() as u64 == until.0 - after.0 => {
                            for m in missed {
                                self.accept(&m, &mut frames, &mut events);
                            }
                        }
                        other => {
                            tracing::warn!(room = %self.room, ?after, ?until, ok = other.is_ok(), "stream gap could not be filled; members will resume");
                            self.flush_frames(&mut frames, &mut events);
                            self.resync().await;
                            if self.tracker.classify(&p) != Incoming::Deliver {
                                continue;
                            }
                        }
                    }
                }
                Incoming::EpochChanged => {
                    tracing::warn!(room = %self.room, "room history was lost (epoch changed); members will resume");
                    self.flush_frames(&mut frames, &mut events);
                    self.resync().await;
                    if self.tracker.classify(&p) != Incoming::Deliver {
                        continue;
                    }
                }
            }
            self.accept(&p, &mut frames, &mut events);
        }
        self.flush_frames(&mut frames, &mut events);
    }

    fn accept(
        &mut self,
        p: &Publication,
        frames: &mut Vec<EventFrame>,
        events: &mut Vec<RoomEvent>,
    ) {
        let frame = match serde_json::from_slice::<RoomEvent>(&p.body) {
            Ok(event) => {
                if let Some(change) = state_change_of(&event) {
                    self.local.state.write().apply(&change);
                }
                self.local.state.write().offset = p.offset;
                if matches!(
                    event,
                    RoomEvent::UserBanned { .. } | RoomEvent::RoomClosed {}
                ) {
                    events.push(event.clone());
                }
                self.event_frame(p.offset, &p.body, Some(event))
            }
            Err(e) => {
                tracing::warn!(room = %self.room, offset = %p.offset, error = %e, "undecodable room event");
                self.event_frame(p.offset, &p.body, None)
            }
        };
        self.tracker.delivered(p.offset, frame.clone());
        frames.push(frame);
    }

    /// Send accumulated frames as one coalesced frame (one per audience when some vary),
    /// then apply their side effects.
    fn flush_frames(&mut self, frames: &mut Vec<EventFrame>, events: &mut Vec<RoomEvent>) {
        if frames.is_empty() {
            return;
        }
        let n = frames.len() as u64;
        let batch = std::mem::take(frames);
        let shared: Option<Vec<Utf8Bytes>> = batch
            .iter()
            .map(|f| match f {
                EventFrame::Shared(b) => Some(b.clone()),
                EventFrame::Varied(_) => None,
            })
            .collect();
        match shared {
            Some(mut bytes) => {
                let frame = if bytes.len() == 1 {
                    bytes.pop().unwrap_or_default()
                } else {
                    join_frames(&bytes)
                };
                self.broadcast(frame, n);
            }
            None => {
                // One coalesced frame per audience present, built on first use.
                let mut by_audience: Vec<(Option<String>, bool, Utf8Bytes)> = Vec::new();
                self.send_each(
                    |m| {
                        let staff = m.user.role.is_staff();
                        if let Some((_, _, f)) = by_audience
                            .iter()
                            .find(|(l, s, _)| *s == staff && l.as_deref() == m.lang.as_deref())
                        {
                            return f.clone();
                        }
                        let parts: Vec<Utf8Bytes> = batch.iter().map(|f| f.for_member(m)).collect();
                        let f = if parts.len() == 1 {
                            parts[0].clone()
                        } else {
                            join_frames(&parts)
                        };
                        by_audience.push((m.lang.clone(), staff, f.clone()));
                        f
                    },
                    n,
                );
            }
        }
        for event in events.drain(..) {
            match event {
                RoomEvent::UserBanned { user, .. } => {
                    let mut i = 0;
                    while i < self.members.len() {
                        if self.members[i].user.id == user {
                            let m = self.remove_member(i);
                            m.signal.close(CloseCode::Banned);
                        } else {
                            i += 1;
                        }
                    }
                }
                RoomEvent::RoomClosed {} => {
                    self.closing = true;
                    let left = Push::Left {
                        room: self.room.clone(),
                        code: ErrorCode::RoomClosed.code(),
                        reason: "the room was closed".into(),
                    };
                    let frame = to_frame(serde_json::to_string(&left).unwrap_or_default());
                    for m in std::mem::take(&mut self.members) {
                        self.count(&m, -1);
                        let removed = Outbound::Removed {
                            room: self.room.clone(),
                            frame: frame.clone(),
                        };
                        // A member that cannot take the notice cannot keep up either.
                        if m.tx.try_send(removed).is_err() {
                            m.signal.close(CloseCode::SlowConsumer);
                        }
                        self.metrics().room_members.fetch_sub(1, Relaxed);
                    }
                    self.local.members.store(0, Relaxed);
                }
                _ => {}
            }
        }
    }

    /// After lost history: close members (they resume and learn `recovered: false`) and
    /// restart from a fresh snapshot.
    async fn resync(&mut self) {
        self.kick_all(CloseCode::StreamGap);
        match self.hub.engine.room(&self.room).await {
            Ok(Some(rec)) => {
                self.frame_prefix = frame_prefix(&self.room, &rec.epoch);
                self.tracker.reset(rec.epoch.clone(), rec.offset);
                *self.local.state.write() = rec;
            }
            _ => self.closing = true,
        }
    }

    fn flush_aggregates(&mut self) {
        let likes = self.local.likes.swap(0, Relaxed);
        if likes > 0 {
            self.aggregator.like(likes);
        }
        let events = self.aggregator.flush();
        if events.is_empty() || self.closing {
            return;
        }
        let hub = self.hub.clone();
        let room = self.room.clone();
        let local = self.local.clone();
        tokio::spawn(async move {
            for event in events {
                if let Err(e) = hub.publish(&room, &event).await {
                    // Likes were acknowledged to their senders: keep them for the next tick.
                    // Join/leave notices are best effort.
                    if let RoomEvent::Likes { count } = event {
                        local.likes.fetch_add(count, Relaxed);
                    }
                    tracing::debug!(%room, error = %e, "aggregate event not published");
                }
            }
        });
    }

    fn report_presence(&self) {
        let hub = self.hub.clone();
        let room = self.room.clone();
        let count = self.members.len() as u64;
        let ctl = self.local.ctl.clone();
        let counts = self.counts.clone();
        let local = self.local.clone();
        tokio::spawn(async move {
            if hub
                .engine
                .report_presence(&room, &hub.cfg.node, count)
                .await
                .is_err()
            {
                return;
            }
            // Languages and markets in play across the cluster (translation targets and
            // which markets' rules apply).
            if hub
                .engine
                .report_audience(&room, &hub.cfg.node, &counts)
                .await
                .is_ok()
            {
                if let Ok(all) = hub.engine.audience(&room).await {
                    *local.cluster_audience.write() = all;
                }
            }
            if let Ok(total) = hub.engine.viewer_count(&room).await {
                let _ = ctl.try_send(RoomCtl::ViewerCount(total));
            }
        });
    }

    fn push_viewers(&mut self, count: u64) {
        if self.members.is_empty() || !self.viewers.should_push(count, Instant::now()) {
            return;
        }
        let push = Push::Viewers {
            room: self.room.clone(),
            count,
        };
        let frame = to_frame(serde_json::to_string(&push).unwrap_or_default());
        self.broadcast(frame, 0);
    }
}

/// A delivered event's frame: the same bytes for everyone, or one version per audience.
#[derive(Clone)]
enum EventFrame {
    Shared(Utf8Bytes),
    Varied(Arc<VariedFrame>),
}

/// An event whose frame differs by audience ([`audience::varies`]); versions are built on
/// first use and kept with the event (in the node cache too, for resumes).
struct VariedFrame {
    /// `{"push":"event",...,"offset":N,"event":`
    head: String,
    event: RoomEvent,
    built: Mutex<Vec<(Audience, Utf8Bytes)>>,
}

impl VariedFrame {
    fn frame(&self, lang: Option<&str>, staff: bool) -> Utf8Bytes {
        let mut built = self.built.lock();
        if let Some((_, f)) = built
            .iter()
            .find(|(a, _)| a.staff == staff && a.lang.as_deref() == lang)
        {
            return f.clone();
        }
        let view = audience::view_for(&self.event, lang, staff);
        let body = serde_json::to_string(&view).unwrap_or_else(|_| "{}".into());
        let mut s = String::with_capacity(self.head.len() + body.len() + 1);
        s.push_str(&self.head);
        s.push_str(&body);
        s.push('}');
        let f = to_frame(s);
        built.push((
            Audience {
                lang: lang.map(str::to_owned),
                staff,
            },
            f.clone(),
        ));
        f
    }
}

impl EventFrame {
    fn for_member(&self, m: &Member) -> Utf8Bytes {
        match self {
            EventFrame::Shared(f) => f.clone(),
            EventFrame::Varied(v) => v.frame(m.lang.as_deref(), m.user.role.is_staff()),
        }
    }
}

fn audience_keys(m: &Member) -> impl Iterator<Item = String> + '_ {
    m.lang
        .iter()
        .map(|l| format!("lang:{l}"))
        .chain(m.market.iter().map(|k| format!("market:{k}")))
}

/// Coalesce frames into one, newline-separated (the protocol's batching).
fn join_frames(frames: &[Utf8Bytes]) -> Utf8Bytes {
    let len = frames.iter().map(|f| f.len() + 1).sum();
    let mut s = String::with_capacity(len);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(f.as_str());
    }
    to_frame(s)
}
