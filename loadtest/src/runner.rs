//! Running a scenario: viewers arrive on the open-model schedule, each one a Rust SDK client
//! (`ferry_client::Client`) bound to its own source address, joins its room and behaves; a
//! progress task samples counters, latencies and the server process once a second; at the
//! end a probe reads every room's final position and the run waits (bounded) until every
//! viewer received every event up to it, then judges completeness and thresholds.
//!
//! Timing is honest: join and connect times run from the viewer's *scheduled* arrival, and
//! comment latency from the comment's *scheduled* send time (carried in the comment text),
//! so a load generator or server that falls behind shows up as latency.
//!
//! With a `buy` behaviour, a host launches a flash sale in every room and buyers press Buy
//! on the [`PressSchedule`](crate::sale::PressSchedule), timed on the server's clock; after
//! the drain the sale's order-event stream is read as a consumer group and judged
//! ([`crate::sale::judge`]).
//!
//! With a `video` behaviour, a synthetic WHIP publisher starts in every room before the
//! first arrival, and the viewers in the share also subscribe over WHEP at their arrival
//! time (beside their WebSocket join). Each subscriber's frames are accounted as they
//! arrive ([`crate::video::FrameAccount`]: freezes, frames never completed), its time to
//! first frame runs from its scheduled arrival, and its packet loss is read from the SDK's
//! sequence counters after the publishers stopped and a drain let retransmissions land.

use crate::admin::{self, Claims};
use crate::metrics::{lock, round3, LatencyRecorder, Percentiles};
use crate::report::{
    MachineInfo, PublisherReport, Report, SaleReport, Sample, ScenarioInfo, ServerInfo,
    VideoLayerInfo, VideoReport,
};
use crate::sale::{self, BuyOutcome, Press, PressPolicy, PressSchedule, ToldReservation};
use crate::scenario::{
    pick_weighted, spread, Behaviour, BuySettings, Scenario, ScenarioError, VideoCodecName,
    VideoSettings, PUBLISHER_CONNECT_TIMEOUT,
};
use crate::schedule::ArrivalSchedule;
use crate::system::{self, SpawnConfig, SpawnedServer, TargetError};
use crate::thresholds::evaluate;
use crate::video::{self, FrameAccount, Loss, SubscriberOutcome};
use ferry_client::media::{self, Kind, MediaError, PeerState, Publisher, SubscribeOptions};
use ferry_client::protocol::commerce::SaleSpec;
use ferry_client::protocol::RoomEvent;
use ferry_client::{Client, ClientError, ClientOptions, Event, Events};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// Ferry's development HS256 secret (`auth.hs256_secret` default).
pub const DEV_SECRET: &str = "ferry-dev-secret-change-me";
/// Prefix of the timing marker at the start of every comment the harness sends.
const MARKER: &str = "lt|";
/// Distinct error kinds kept; the rest are counted under "other".
const MAX_ERROR_KINDS: usize = 64;
/// A Buy press stops retrying this long after it was due.
const PRESS_GIVE_UP: Duration = Duration::from_secs(10);
/// Retries of a press after `unavailable`, a timeout or a lost connection.
const PRESS_RETRIES: u32 = 3;
/// After the video window: packets in flight and retransmissions land before loss is read.
const VIDEO_DRAIN: Duration = Duration::from_secs(1);
/// Complete frames (video and audio) a subscriber buffers for the harness's accounting; a
/// consumer this far behind loses frames from the accounting (`video_frames_unobserved`).
const VIDEO_FRAME_BUFFER: usize = 256;
/// A subscriber's frame rate counts once it has watched this long.
const VIDEO_FPS_MIN_SPAN: Duration = Duration::from_secs(1);
/// Longest wait for a WHIP/WHEP session's `DELETE` at the end.
const VIDEO_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The server's counter of RTP packets its SFU sent to subscribers.
const SFU_FORWARDED_METRIC: &str = "ferry_sfu_packets_forwarded_total";

/// How to run a scenario (the command line's choices).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Nodes to load (round-robin). Empty: the scenario's `targets`, or the spawned server.
    pub targets: Vec<String>,
    /// Start a Ferry node for the run and stop it afterwards.
    pub spawn: Option<SpawnConfig>,
    /// Sample this local server process's CPU and RSS (implied with `spawn`).
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// The scenario file, for the report.
    pub scenario_file: Option<String>,
    /// HS256 secret the viewers' tokens are signed with.
    pub secret: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            spawn: None,
            server_pid: None,
            progress: false,
            scenario_file: None,
            secret: DEV_SECRET.to_owned(),
        }
    }
}

/// Why a run could not be carried out (as opposed to a run whose thresholds failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("no target: pass --target ws://127.0.0.1:PORT/ws, --spawn PATH, or set `targets` in the scenario")]
    NoTargets,
    #[error("cannot start the server: {0}")]
    Spawn(String),
    #[error("{0}")]
    Resources(String),
    #[error("cannot mint tokens: {0}")]
    Token(String),
}

#[derive(Default)]
struct Counters {
    connections_open: AtomicI64,
    viewers_in_room: AtomicI64,
    viewers_peak: AtomicI64,
    joins: AtomicU64,
    join_failures: AtomicU64,
    join_retries: AtomicU64,
    comments_sent: AtomicU64,
    comments_accepted: AtomicU64,
    comments_rejected: AtomicU64,
    likes_sent: AtomicU64,
    likes_accepted: AtomicU64,
    churn_reconnects: AtomicU64,
    deliveries: AtomicU64,
    comment_deliveries: AtomicU64,
    server_disconnects: AtomicU64,
    errors: AtomicU64,
    /// SDK counters of sessions already closed (churn).
    closed_gaps: AtomicU64,
    closed_duplicates: AtomicU64,
    closed_unrecovered: AtomicU64,
    /// µs since the start: first/last join, first/last delivery, first/last comment delivery.
    first_join_us: AtomicU64,
    last_join_us: AtomicU64,
    first_delivery_us: AtomicU64,
    last_delivery_us: AtomicU64,
    first_comment_delivery_us: AtomicU64,
    last_comment_delivery_us: AtomicU64,
}

/// One connection's life in its room, shared by its viewer task and its event consumer.
struct Session {
    client: Client,
    joined: AtomicBool,
    join_offset: AtomicU64,
    last_offset: AtomicU64,
    /// Room events with an offset up to the room's cutoff, received since the join.
    received: AtomicU64,
    epoch: Mutex<String>,
    /// A resume was answered `recovered: false`: the viewer was told, not silently lost.
    told_unrecoverable: AtomicBool,
    /// We are closing it on purpose (churn or the end of the run).
    closing: AtomicBool,
}

struct Viewer {
    room: usize,
    session: Mutex<Option<Arc<Session>>>,
}

struct Ctx {
    scenario: Scenario,
    urls: Vec<String>,
    key: jsonwebtoken::EncodingKey,
    start: Instant,
    start_unix_us: u64,
    rooms: Vec<String>,
    /// Per room: the last offset that counts (u64::MAX until the final probe).
    cutoffs: Vec<AtomicU64>,
    stop_sending: watch::Receiver<bool>,
    stop_all: watch::Receiver<bool>,
    connecting: Semaphore,
    c: Counters,
    join: LatencyRecorder,
    connect: LatencyRecorder,
    comment_latency: LatencyRecorder,
    comment_ack: LatencyRecorder,
    like_ack: LatencyRecorder,
    rejoin: LatencyRecorder,
    errors: Mutex<BTreeMap<String, u64>>,
    viewers: Mutex<Vec<Arc<Viewer>>>,
    /// The flash sale, with a `buy` behaviour.
    buy: Option<BuyCtx>,
    /// Live video, with a `video` behaviour.
    video: Option<VideoCtx>,
}

/// A run's `video` behaviour: where the video is served and what the subscribers measured.
struct VideoCtx {
    settings: VideoSettings,
    /// The first target's HTTP base: publishers and subscribers all use it (an SFU relays
    /// within its node).
    base: String,
    /// Scheduled arrival → first complete frame.
    ttff: LatencyRecorder,
    /// A frame's send time (in its payload) → its last packet received (same host clock).
    frame_latency: LatencyRecorder,
    /// µs since the start when the video window ended (the publishers stop right after).
    end_us: AtomicU64,
    /// Subscribers that failed: WHEP refused or unanswered, no first frame in time.
    failures: AtomicU64,
    /// Subscribers receiving now (first frame seen, not ended), and the most at once.
    receiving: AtomicI64,
    peak: AtomicI64,
    /// Frames seen and freezes found so far (for the time series).
    frames: AtomicU64,
    freezes: AtomicU64,
    /// Subscribers that have not reported their outcome yet.
    pending: AtomicI64,
    outcomes: Mutex<Vec<SubscriberOutcome>>,
}

/// Where the host's launch of the sales stands.
#[derive(Clone)]
enum SaleLaunch {
    Pending,
    Launched(Arc<Launched>),
    Failed(String),
}

/// The sales the host launched (one per room), all starting at the same instant.
struct Launched {
    sales: Vec<LaunchedSale>,
    /// The host's client: kept open until the end of the run.
    host: Client,
    /// Local instant at which the buy window closes (start + window, server clock).
    window_end: Instant,
}

struct LaunchedSale {
    room: usize,
    id: String,
    product: String,
    starts_at: u64,
    ends_at: u64,
}

/// A run's `buy` behaviour: the schedule, the launch, and what the presses measured.
struct BuyCtx {
    settings: BuySettings,
    schedule: PressSchedule,
    launch: watch::Receiver<SaleLaunch>,
    latency: LatencyRecorder,
    /// Final answers by room and answer name.
    outcomes: Mutex<BTreeMap<(usize, &'static str), u64>>,
    /// Every reservation a client was answered with, by room.
    told: Mutex<Vec<(usize, ToldReservation)>>,
    presses: AtomicU64,
    double_clicks: AtomicU64,
    not_started_retries: AtomicU64,
    retries: AtomicU64,
    answers: AtomicU64,
    /// Presses of joined buyers that have not got their final answer yet.
    pending: AtomicI64,
    /// Server-clock Unix ms of the last new reservation and of the last final answer.
    last_reserved_ms: AtomicU64,
    last_answer_ms: AtomicU64,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Ctx {
    fn since_start_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn error(&self, kind: impl Into<String>) {
        self.c.errors.fetch_add(1, Relaxed);
        let mut kind: String = kind.into();
        kind.truncate(100);
        let mut errors = lock(&self.errors);
        if !errors.contains_key(&kind) && errors.len() >= MAX_ERROR_KINDS {
            kind = "other".into();
        }
        *errors.entry(kind).or_insert(0) += 1;
    }

    fn mint(&self, index: usize, generation: u32) -> Result<String, String> {
        let mix = &self.scenario.mix;
        let mut claims = Claims::new(
            viewer_user(index),
            "viewer",
            format!("{}-*", self.scenario.rooms.prefix),
        );
        claims.name = format!("viewer {index}.{generation}");
        claims.lang = pick_weighted(&mix.languages, index, 0.11);
        claims.market = pick_weighted(&mix.markets, index, 0.37);
        claims.mint(&self.key)
    }

    fn client_options(&self, index: usize, token: String) -> ClientOptions {
        let n = self.urls.len().max(1);
        // Start at this viewer's node; reconnects rotate through the others.
        let urls: Vec<String> = (0..n).map(|k| self.urls[(index + k) % n].clone()).collect();
        let mut opts = ClientOptions::new(urls[0].clone(), token);
        opts.urls = urls;
        opts.bind = Some(system::source_address(index, self.scenario.run.per_source));
        opts.read_buffer_bytes = 4096;
        opts.event_buffer = 256;
        opts.request_timeout = self.scenario.run.join_timeout;
        // One clock sample burst at connect is the SDK's behaviour; no periodic ones.
        opts.ping_interval = Duration::from_secs(3600);
        opts.max_reconnect_attempts = Some(30);
        opts
    }
}

/// The user id of viewer `index` (its token's `sub`).
fn viewer_user(index: usize) -> String {
    format!("lt-{index}")
}

fn fetch_max(a: &AtomicU64, v: u64) {
    a.fetch_max(v, Relaxed);
}

fn fetch_min(a: &AtomicU64, v: u64) {
    a.fetch_min(v, Relaxed);
}

/// The intended send time (Unix µs) in a harness comment.
pub fn parse_marker(text: &str) -> Option<u64> {
    text.strip_prefix(MARKER)?.split('|').next()?.parse().ok()
}

/// A harness comment: the marker with the intended send time, then padding to `bytes`.
pub fn comment_text(intended_unix_us: u64, viewer: usize, seq: u64, bytes: usize) -> String {
    let mut text = format!("{MARKER}{intended_unix_us}|{viewer}|{seq}|");
    while text.len() < bytes {
        text.push('x');
    }
    text
}

/// Read a session's events until the client stops; counts deliveries and latencies.
async fn consume(
    ctx: Arc<Ctx>,
    room: usize,
    session: Arc<Session>,
    mut events: Events,
    intended: Instant,
) {
    let mut connected = false;
    let mut first_connect = true;
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { .. } => {
                if first_connect {
                    ctx.connect.record(intended.elapsed());
                    first_connect = false;
                }
                connected = true;
                ctx.c.connections_open.fetch_add(1, Relaxed);
            }
            Event::Joined { reply, .. } => match reply.recovered {
                None => {
                    session.join_offset.store(reply.position.offset.0, Relaxed);
                    session.last_offset.store(reply.position.offset.0, Relaxed);
                    *lock(&session.epoch) = reply.position.epoch.0.clone();
                }
                Some(false) => session.told_unrecoverable.store(true, Relaxed),
                Some(true) => {}
            },
            Event::Room {
                position, event, ..
            } => {
                let now_us = ctx.since_start_us();
                ctx.c.deliveries.fetch_add(1, Relaxed);
                fetch_min(&ctx.c.first_delivery_us, now_us);
                fetch_max(&ctx.c.last_delivery_us, now_us);
                if position.offset.0 <= ctx.cutoffs[room].load(Relaxed) {
                    session.received.fetch_add(1, Relaxed);
                }
                session.last_offset.store(position.offset.0, Relaxed);
                if let RoomEvent::Comment { text, .. } = &event {
                    if let Some(intended_us) = parse_marker(text) {
                        let latency = unix_us().saturating_sub(intended_us);
                        ctx.comment_latency.record(Duration::from_micros(latency));
                        ctx.c.comment_deliveries.fetch_add(1, Relaxed);
                        fetch_min(&ctx.c.first_comment_delivery_us, now_us);
                        fetch_max(&ctx.c.last_comment_delivery_us, now_us);
                    }
                }
            }
            Event::Disconnected { code, reason, .. } => {
                if connected {
                    connected = false;
                    ctx.c.connections_open.fetch_sub(1, Relaxed);
                }
                if !session.closing.load(Relaxed) {
                    match code {
                        Some(code) => {
                            ctx.c.server_disconnects.fetch_add(1, Relaxed);
                            ctx.error(format!("disconnect: close {code}"));
                        }
                        None => ctx.error(format!("disconnect: {}", short_reason(&reason))),
                    }
                }
            }
            Event::Removed { code, .. } => ctx.error(format!("removed from room: {code}")),
            Event::Closed { code, reason } => {
                if !session.closing.load(Relaxed) {
                    ctx.error(format!(
                        "client gave up: {code:?} {}",
                        short_reason(&reason)
                    ));
                }
                break;
            }
            Event::Viewers { .. } => {}
        }
    }
    if connected {
        ctx.c.connections_open.fetch_sub(1, Relaxed);
    }
}

/// An error reason without addresses and numbers that would make every error distinct.
fn short_reason(reason: &str) -> String {
    let cleaned: String = reason
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()) || w.starts_with('('))
        .collect::<Vec<_>>()
        .join(" ");
    cleaned.chars().take(80).collect()
}

/// Connect a new SDK client for viewer `index` and join its room, retrying temporary
/// refusals until the join timeout (counted from `intended`).
async fn open_session(
    ctx: &Arc<Ctx>,
    index: usize,
    room: usize,
    generation: u32,
    intended: Instant,
) -> Result<Arc<Session>, String> {
    let token = ctx.mint(index, generation)?;
    let (client, events) = Client::connect(ctx.client_options(index, token));
    let session = Arc::new(Session {
        client: client.clone(),
        joined: AtomicBool::new(false),
        join_offset: AtomicU64::new(0),
        last_offset: AtomicU64::new(0),
        received: AtomicU64::new(0),
        epoch: Mutex::new(String::new()),
        told_unrecoverable: AtomicBool::new(false),
        closing: AtomicBool::new(false),
    });
    tokio::spawn(consume(
        ctx.clone(),
        room,
        session.clone(),
        events,
        intended,
    ));
    let deadline = intended + ctx.scenario.run.join_timeout;
    let mut stop = ctx.stop_all.clone();
    let outcome = loop {
        if Instant::now() >= deadline {
            break Err("join timeout".to_owned());
        }
        let attempt = tokio::select! {
            r = tokio::time::timeout_at(deadline, client.join(ctx.rooms[room].as_str())) => r,
            _ = stop.wait_for(|s| *s) => break Err("run stopped".to_owned()),
        };
        match attempt {
            Err(_) => break Err("join timeout".to_owned()),
            Ok(Ok(_)) => break Ok(()),
            Ok(Err(ClientError::Server(e))) if (1500..2000).contains(&e.code) => {
                ctx.c.join_retries.fetch_add(1, Relaxed);
                ctx.error(format!("join retried: {}", e.name));
                let wait = Duration::from_millis(e.retry_after_ms.unwrap_or(100).max(10));
                tokio::time::sleep(wait).await;
            }
            Ok(Err(ClientError::Server(e))) => break Err(format!("refused: {}", e.name)),
            Ok(Err(ClientError::Disconnected)) => {
                // Not connected (yet or any more): the SDK is reconnecting; ask again.
                ctx.c.join_retries.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => break Err(short_reason(&e.to_string())),
        }
    };
    match outcome {
        Ok(()) => {
            session.joined.store(true, Relaxed);
            Ok(session)
        }
        Err(e) => {
            session.closing.store(true, Relaxed);
            client.close();
            Err(e)
        }
    }
}

/// A viewer is in its room; `first` for its arrival (not a churn comeback), which is what
/// the join rate is measured over.
fn joined_now(ctx: &Ctx, first: bool) {
    let now = ctx.c.viewers_in_room.fetch_add(1, Relaxed) + 1;
    ctx.c.viewers_peak.fetch_max(now, Relaxed);
    ctx.c.joins.fetch_add(1, Relaxed);
    if first {
        let t = ctx.since_start_us();
        fetch_min(&ctx.c.first_join_us, t);
        fetch_max(&ctx.c.last_join_us, t);
    }
}

/// Close a session on purpose, keeping its SDK counters.
fn retire(ctx: &Ctx, session: &Session) {
    if session.closing.swap(true, Relaxed) {
        return;
    }
    let stats = session.client.stats();
    ctx.c
        .closed_gaps
        .fetch_add(stats.gaps.load(Relaxed), Relaxed);
    ctx.c
        .closed_duplicates
        .fetch_add(stats.duplicates.load(Relaxed), Relaxed);
    ctx.c
        .closed_unrecovered
        .fetch_add(stats.unrecovered.load(Relaxed), Relaxed);
    if session.joined.load(Relaxed) {
        ctx.c.viewers_in_room.fetch_sub(1, Relaxed);
    }
    session.client.close();
}

/// What one viewer does besides watching.
#[derive(Default)]
struct Plan {
    chat: Option<(Duration, usize)>,
    likes: Option<(Duration, u32)>,
    churn: Option<Duration>,
    /// Presses Buy in the flash sale.
    buy: bool,
    /// Also plays the room's video over WHEP.
    video: bool,
}

fn plan_for(scenario: &Scenario, index: usize) -> Plan {
    let mut plan = Plan::default();
    for (k, behaviour) in scenario.behaviours.iter().enumerate() {
        let in_share = |share: f64| spread(index, 0.173 * (k as f64 + 1.0)) < share;
        match behaviour {
            Behaviour::Watch {} => {}
            Behaviour::Chat {
                share,
                rate,
                text_bytes,
            } if in_share(*share) => {
                plan.chat = Some((Duration::from_secs_f64(1.0 / rate), *text_bytes));
            }
            Behaviour::Likes {
                share,
                every,
                count,
            } if in_share(*share) => plan.likes = Some((*every, *count)),
            Behaviour::Churn { share, every } if in_share(*share) => plan.churn = Some(*every),
            Behaviour::Buy(b) if in_share(b.share) => plan.buy = true,
            Behaviour::Video(v) if in_share(v.share) => plan.video = true,
            _ => {}
        }
    }
    plan
}

/// One viewer from arrival to the end of the run.
async fn viewer(ctx: Arc<Ctx>, index: usize, intended: Instant) {
    let room = index % ctx.rooms.len();
    let record = Arc::new(Viewer {
        room,
        session: Mutex::new(None),
    });
    lock(&ctx.viewers).push(record.clone());
    let plan = plan_for(&ctx.scenario, index);
    if plan.video {
        if let Some(video) = &ctx.video {
            // Counted before the task starts, so the end of the run waits for it.
            video.pending.fetch_add(1, Relaxed);
            tokio::spawn(video_viewer(ctx.clone(), index, room, intended));
        }
    }
    let opened = {
        let _permit = ctx.connecting.acquire().await;
        open_session(&ctx, index, room, 0, intended).await
    };
    let mut session = match opened {
        Ok(s) => s,
        Err(e) => {
            ctx.c.join_failures.fetch_add(1, Relaxed);
            ctx.error(format!("join failed: {e}"));
            return;
        }
    };
    ctx.join.record(intended.elapsed());
    joined_now(&ctx, true);
    *lock(&record.session) = Some(session.clone());

    if plan.buy {
        if let Some(buy) = &ctx.buy {
            let presses = buy.schedule.for_viewer(index);
            tokio::spawn(buyer(ctx.clone(), record.clone(), index, room, presses));
        }
    }
    let joined_at = Instant::now();
    // Spread each viewer's first action over one period so viewers do not act in lockstep.
    let first = |period: Duration, salt: f64| joined_at + period.mul_f64(spread(index, salt));
    let mut next_comment = plan.chat.map(|(period, _)| first(period, 0.5));
    let mut next_like = plan.likes.map(|(every, _)| first(every, 0.7));
    let mut next_churn = plan.churn.map(|every| first(every, 0.9) + every / 2);
    let mut seq = 0u64;
    let mut generation = 0u32;
    let mut stop_sending = ctx.stop_sending.clone();
    while let Some(next) = [next_comment, next_like, next_churn]
        .into_iter()
        .flatten()
        .min()
    {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop_sending.wait_for(|s| *s) => break,
        }
        if *stop_sending.borrow() {
            break;
        }
        if next_comment == Some(next) {
            if let Some((period, bytes)) = plan.chat {
                seq += 1;
                send_comment(&ctx, &session, room, index, seq, next, bytes);
                next_comment = Some(next + period);
            }
        } else if next_like == Some(next) {
            if let Some((every, count)) = plan.likes {
                send_likes(&ctx, &session, room, next, count);
                next_like = Some(next + every);
            }
        } else if next_churn == Some(next) {
            let Some(every) = plan.churn else { break };
            retire(&ctx, &session);
            generation += 1;
            let reopened = {
                let _permit = ctx.connecting.acquire().await;
                open_session(&ctx, index, room, generation, next).await
            };
            match reopened {
                Ok(s) => {
                    ctx.rejoin.record(next.elapsed());
                    ctx.c.churn_reconnects.fetch_add(1, Relaxed);
                    joined_now(&ctx, false);
                    session = s;
                    *lock(&record.session) = Some(session.clone());
                }
                Err(e) => {
                    ctx.error(format!("rejoin after churn failed: {e}"));
                    *lock(&record.session) = None;
                    return;
                }
            }
            next_churn = Some(next + every);
        }
    }
}

fn send_comment(
    ctx: &Arc<Ctx>,
    session: &Arc<Session>,
    room: usize,
    index: usize,
    seq: u64,
    intended: Instant,
    bytes: usize,
) {
    let intended_unix = ctx.start_unix_us + (intended - ctx.start).as_micros() as u64;
    let text = comment_text(intended_unix, index, seq, bytes);
    let ctx = ctx.clone();
    let client = session.client.clone();
    ctx.c.comments_sent.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        match client.comment(ctx.rooms[room].as_str(), text).await {
            Ok(_) => {
                ctx.c.comments_accepted.fetch_add(1, Relaxed);
                ctx.comment_ack.record(intended.elapsed());
            }
            Err(e) => {
                ctx.c.comments_rejected.fetch_add(1, Relaxed);
                ctx.error(format!("comment: {}", error_kind(&e)));
            }
        }
    });
}

fn send_likes(ctx: &Arc<Ctx>, session: &Arc<Session>, room: usize, intended: Instant, count: u32) {
    let ctx = ctx.clone();
    let client = session.client.clone();
    ctx.c.likes_sent.fetch_add(u64::from(count), Relaxed);
    tokio::spawn(async move {
        match client.like(ctx.rooms[room].as_str(), count).await {
            Ok(()) => {
                ctx.c.likes_accepted.fetch_add(u64::from(count), Relaxed);
                ctx.like_ack.record(intended.elapsed());
            }
            Err(e) => ctx.error(format!("like: {}", error_kind(&e))),
        }
    });
}

/// How a subscriber's watching ended.
enum VideoEnd {
    /// The video window ended (the run stopped sending).
    Window,
    /// The session ended first (the server closed it, or ICE/DTLS failed).
    Closed,
    /// No first frame within `first_frame_timeout` of the arrival time.
    NoFirstFrame,
}

/// One WHEP subscriber: watch, report the outcome, and close when the run ends.
async fn video_viewer(ctx: Arc<Ctx>, index: usize, room: usize, intended: Instant) {
    let Some(video) = &ctx.video else { return };
    let (outcome, subscriber) = watch_video(&ctx, video, index, room, intended).await;
    lock(&video.outcomes).push(outcome);
    video.pending.fetch_sub(1, Relaxed);
    if let Some(subscriber) = subscriber {
        let mut stop = ctx.stop_all.clone();
        let _ = stop.wait_for(|s| *s).await;
        let _ = tokio::time::timeout(VIDEO_CLOSE_TIMEOUT, subscriber.close()).await;
    }
}

/// Subscribe at the arrival time, account every complete frame until the video window
/// ends, let retransmissions land, and read the loss. Returns the subscriber to close
/// (`None` when it is already gone).
async fn watch_video(
    ctx: &Arc<Ctx>,
    video: &VideoCtx,
    index: usize,
    room: usize,
    intended: Instant,
) -> (SubscriberOutcome, Option<media::Subscriber>) {
    let mut outcome = SubscriberOutcome::default();
    let fail = |kind: String| {
        video.failures.fetch_add(1, Relaxed);
        ctx.error(format!("video: {kind}"));
    };
    let settings = &video.settings;
    let first_frame_by = intended + settings.first_frame_timeout;
    let token = match ctx.mint(index, 0) {
        Ok(t) => t,
        Err(e) => {
            fail(e);
            return (outcome, None);
        }
    };
    let options = SubscribeOptions {
        bind_ip: system::source_address(index, ctx.scenario.run.per_source),
        keep_frames: VIDEO_FRAME_BUFFER,
    };
    let (called, subscribed) = {
        let _permit = ctx.connecting.acquire().await;
        let called = Instant::now();
        let room = ctx.rooms[room].as_str();
        let answer = tokio::time::timeout_at(
            first_frame_by,
            media::subscribe(&video.base, room, &token, options),
        )
        .await;
        (called, answer)
    };
    let mut subscriber = match subscribed {
        Err(_) => {
            fail("no WHEP answer before the first-frame timeout".into());
            return (outcome, None);
        }
        Ok(Err(e)) => {
            fail(media_error_kind(&e));
            return (outcome, None);
        }
        Ok(Ok(s)) => s,
    };
    outcome.subscribed = true;
    let mut account = FrameAccount::new(settings.freeze_threshold);
    let mut observed = 0u64;
    let mut stop_sending = ctx.stop_sending.clone();
    let end = loop {
        tokio::select! {
            frame = subscriber.next_frame() => {
                let Some(frame) = frame else { break VideoEnd::Closed };
                if frame.kind != Kind::Video {
                    continue;
                }
                let now = Instant::now();
                observed += 1;
                video.frames.fetch_add(1, Relaxed);
                video.frame_latency.record(frame.latency);
                if !outcome.first_frame {
                    outcome.first_frame = true;
                    // The SDK times its first keyframe from the start of `subscribe`; add
                    // the wait from the scheduled arrival to that call.
                    let ttff = match subscriber.stats().time_to_first_frame {
                        Some(t) => called.saturating_duration_since(intended) + t,
                        None => now.saturating_duration_since(intended),
                    };
                    video.ttff.record(ttff);
                    let n = video.receiving.fetch_add(1, Relaxed) + 1;
                    video.peak.fetch_max(n, Relaxed);
                }
                let before = account.stats().freezes;
                account.on_frame(now.saturating_duration_since(ctx.start), frame.publisher, frame.frame);
                video.freezes.fetch_add(account.stats().freezes - before, Relaxed);
            }
            _ = tokio::time::sleep_until(first_frame_by), if !outcome.first_frame => {
                break VideoEnd::NoFirstFrame;
            }
            _ = stop_sending.wait_for(|s| *s) => break VideoEnd::Window,
        }
    };
    let now = Instant::now().saturating_duration_since(ctx.start);
    let freezes_before = account.stats().freezes;
    match end {
        VideoEnd::NoFirstFrame => {
            fail(format!(
                "no first frame within {:?} of the arrival",
                settings.first_frame_timeout
            ));
            outcome.loss = Loss::of(&subscriber.stats());
            let _ = tokio::time::timeout(VIDEO_CLOSE_TIMEOUT, subscriber.close()).await;
            return (outcome, None);
        }
        VideoEnd::Closed => {
            account.finish(now);
            if outcome.first_frame {
                outcome.dropped = true;
                ctx.error("video: session ended by the server");
            } else {
                fail("session ended before the first frame".into());
            }
        }
        VideoEnd::Window => {
            let end = Duration::from_micros(video.end_us.load(Relaxed)).min(now);
            account.finish(end);
            if !outcome.first_frame {
                fail("the run ended before the first frame".into());
            }
            outcome.held = outcome.first_frame && subscriber.state() != PeerState::Closed;
        }
    }
    if outcome.first_frame {
        video.receiving.fetch_sub(1, Relaxed);
    }
    // An open gap at the end is a freeze too.
    video
        .freezes
        .fetch_add(account.stats().freezes - freezes_before, Relaxed);
    // The publishers stop now: packets in flight and retransmissions land, and the frames
    // still buffered are seen (not accounted: the window is over).
    if matches!(end, VideoEnd::Window) {
        let until = Instant::now() + VIDEO_DRAIN;
        loop {
            tokio::select! {
                frame = subscriber.next_frame() => match frame {
                    Some(f) if f.kind == Kind::Video => observed += 1,
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
    }
    let stats = subscriber.stats();
    outcome.loss = Loss::of(&stats);
    outcome.out_of_order = stats.frames_out_of_order;
    outcome.unobserved = stats.video_frames.saturating_sub(observed);
    outcome.frames = account.stats();
    (outcome, Some(subscriber))
}

/// A WHEP/WHIP failure without addresses: `refused 503 sfu_full`, `webrtc: ...`.
fn media_error_kind(e: &MediaError) -> String {
    match e {
        MediaError::Refused { status, body } => {
            let code = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("WHEP refused {status} {code}")
                .trim_end()
                .to_owned()
        }
        other => short_reason(&other.to_string()),
    }
}

/// Start a synthetic publisher in every room, each within [`PUBLISHER_CONNECT_TIMEOUT`].
async fn start_publishers(
    settings: &VideoSettings,
    base: &str,
    rooms: &[String],
    key: &jsonwebtoken::EncodingKey,
) -> Vec<(PublisherReport, Option<Publisher>)> {
    let starts = rooms.iter().enumerate().map(|(i, room)| async move {
        let mut report = PublisherReport {
            room: room.clone(),
            ..PublisherReport::default()
        };
        let token = Claims::new(format!("lt-publisher-{i}"), "host", room.as_str()).mint(key);
        let options = video::publish_options(settings, std::net::Ipv4Addr::LOCALHOST.into());
        let started = match token {
            Ok(token) => {
                video::start_publisher(base, room, &token, options, PUBLISHER_CONNECT_TIMEOUT).await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(publisher) => {
                report.connected = true;
                (report, Some(publisher))
            }
            Err(e) => {
                report.error = Some(e);
                (report, None)
            }
        }
    });
    futures_util::future::join_all(starts).await
}

/// Stop every publisher (`DELETE`, bounded), keeping what each sent.
async fn stop_publishers(publishers: &mut [(PublisherReport, Option<Publisher>)]) {
    let stops = publishers.iter_mut().map(|(report, publisher)| async move {
        let Some(publisher) = publisher.take() else {
            return;
        };
        let stats = publisher.stats();
        report.video_frames = stats.video_frames;
        report.keyframes = stats.keyframes;
        report.packets = stats.packets;
        report.bytes = stats.bytes;
        report.keyframe_requests = stats.keyframe_requests;
        let _ = tokio::time::timeout(VIDEO_CLOSE_TIMEOUT, publisher.close()).await;
    });
    futures_util::future::join_all(stops).await;
}

/// The host: create the product, then in every room join, pin it and launch a sale, all
/// starting `countdown` from now on the server's clock.
async fn launch_sales(ctx: &Arc<Ctx>, buy: &BuySettings) -> Result<Launched, String> {
    let url = ctx.urls.first().ok_or("no target")?;
    let addr = system::loopback_target(url).map_err(|e| e.to_string())?;
    let prefix = &ctx.scenario.rooms.prefix;
    let token = Claims::new("lt-host", "host", format!("{prefix}-*")).mint(&ctx.key)?;
    let product = format!("{prefix}-product");
    let markets = buy.product_markets(&ctx.scenario.mix);
    admin::put_product(
        addr,
        &token,
        &product,
        "ferry-loadtest flash-sale product",
        buy.price_cny,
        &markets,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut opts = ClientOptions::new(url.clone(), token);
    opts.request_timeout = Duration::from_secs(10);
    opts.max_reconnect_attempts = Some(5);
    let (host, mut events) = Client::connect(opts);
    // The host's room events are not judged; keep reading them so its socket is read.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let step = |what: &str, e: ClientError| format!("host {what}: {}", error_kind(&e));
    for room in &ctx.rooms {
        host.join(room.as_str())
            .await
            .map_err(|e| step("join", e))?;
        host.pin_product(room.as_str(), product.as_str())
            .await
            .map_err(|e| step("pin_product", e))?;
    }
    let starts_at = (host.server_now_ms() + buy.countdown.as_secs_f64() * 1000.0) as u64;
    let mut sales = Vec::new();
    for (i, room) in ctx.rooms.iter().enumerate() {
        let spec = SaleSpec {
            product: product.as_str().into(),
            quantity: buy.stock,
            price_cny: buy.price_cny,
            per_buyer_limit: buy.per_buyer_limit,
            starts_at: Some(starts_at),
            starts_in_secs: None,
            duration_secs: buy.duration.as_secs(),
            hold_secs: buy.hold.as_secs(),
        };
        let view = host
            .start_sale(room.as_str(), spec)
            .await
            .map_err(|e| step("start_sale", e))?;
        sales.push(LaunchedSale {
            room: i,
            id: view.id.0,
            product: product.clone(),
            starts_at: view.starts_at,
            ends_at: view.ends_at,
        });
    }
    let until_end_ms = host.ms_until(starts_at) + buy.window.as_secs_f64() * 1000.0;
    let window_end = Instant::now() + Duration::from_secs_f64(until_end_ms.max(0.0) / 1000.0);
    Ok(Launched {
        sales,
        host,
        window_end,
    })
}

/// One buyer: wait for the sale, then press Buy on schedule (each press in its own task,
/// so a slow answer never delays the next press).
async fn buyer(ctx: Arc<Ctx>, viewer: Arc<Viewer>, index: usize, room: usize, presses: Vec<Press>) {
    let Some(buy) = &ctx.buy else { return };
    let mut unfinished = (presses.len() + presses.iter().filter(|p| p.double_click).count()) as i64;
    buy.pending.fetch_add(unfinished, Relaxed);
    let mut launch = buy.launch.clone();
    let mut stop = ctx.stop_all.clone();
    let launched = tokio::select! {
        s = launch.wait_for(|s| !matches!(s, SaleLaunch::Pending)) => s.ok().map(|s| s.clone()),
        _ = stop.wait_for(|s| *s) => None,
    };
    let sale = match &launched {
        Some(SaleLaunch::Launched(l)) => l.sales.iter().find(|s| s.room == room),
        _ => None,
    };
    if let Some(sale) = sale {
        let sale_id: Arc<str> = sale.id.as_str().into();
        for p in presses {
            let Some(client) = lock(&viewer.session).as_ref().map(|s| s.client.clone()) else {
                break;
            };
            // When the press is due, on the server's clock as this client estimates it.
            let until_ms = client.ms_until(sale.starts_at) + p.offset.as_secs_f64() * 1000.0;
            let now = Instant::now();
            let intended = if until_ms >= 0.0 {
                now + Duration::from_secs_f64(until_ms / 1000.0)
            } else {
                now.checked_sub(Duration::from_secs_f64(-until_ms / 1000.0))
                    .unwrap_or(now)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(intended) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let key = format!("lt-{index}-{}", p.seq);
            let clicks = if p.double_click { 2 } else { 1 };
            for click in 0..clicks {
                let press = PressTask {
                    ctx: ctx.clone(),
                    client: client.clone(),
                    index,
                    room,
                    sale: sale_id.clone(),
                    key: key.clone(),
                    intended: intended + buy.settings.double_click_gap * click,
                    second_click: click == 1,
                };
                tokio::spawn(press.run());
                unfinished -= 1;
            }
        }
    }
    // Presses that were never made (no sale, no connection, the run stopped).
    buy.pending.fetch_sub(unfinished, Relaxed);
}

/// One Buy press (or the second click of a double-click) and what it measured.
struct PressTask {
    ctx: Arc<Ctx>,
    client: Client,
    index: usize,
    room: usize,
    sale: Arc<str>,
    key: String,
    intended: Instant,
    second_click: bool,
}

impl PressTask {
    async fn run(self) {
        let Some(buy) = &self.ctx.buy else { return };
        tokio::time::sleep_until(self.intended).await;
        buy.presses.fetch_add(1, Relaxed);
        if self.second_click {
            buy.double_clicks.fetch_add(1, Relaxed);
        }
        let policy = PressPolicy {
            give_up_at: self.intended + PRESS_GIVE_UP,
            max_retries: PRESS_RETRIES,
            max_wait: Duration::from_secs(1),
        };
        let room = self.ctx.rooms[self.room].as_str();
        let result = sale::press(
            &self.client,
            room,
            &self.sale,
            buy.settings.quantity,
            &self.key,
            &policy,
        )
        .await;
        buy.latency.record(self.intended.elapsed());
        let answered_ms = self.client.server_now_ms() as u64;
        buy.not_started_retries
            .fetch_add(u64::from(result.not_started_retries), Relaxed);
        buy.retries.fetch_add(u64::from(result.retries), Relaxed);
        match &result.outcome {
            BuyOutcome::Error(kind) => self.ctx.error(format!("buy: {kind}")),
            BuyOutcome::Unavailable => self.ctx.error("buy: unavailable"),
            BuyOutcome::NotStarted => self.ctx.error("buy: still not started when giving up"),
            BuyOutcome::Reserved => fetch_max(&buy.last_reserved_ms, answered_ms),
            _ => {}
        }
        *lock(&buy.outcomes)
            .entry((self.room, result.outcome.name()))
            .or_insert(0) += 1;
        if let Some(reservation) = result.reservation {
            lock(&buy.told).push((
                self.room,
                ToldReservation {
                    buyer: viewer_user(self.index),
                    key: self.key,
                    reservation,
                },
            ));
        }
        fetch_max(&buy.last_answer_ms, answered_ms);
        buy.answers.fetch_add(1, Relaxed);
        buy.pending.fetch_sub(1, Relaxed);
    }
}

/// Read every sale's order events as a consumer group, take an audit snapshot, and judge.
async fn judge_sales(ctx: &Arc<Ctx>, launched: &Launched) -> Vec<SaleReport> {
    let Some(buy) = &ctx.buy else {
        return Vec::new();
    };
    let addr = ctx.urls.first().map(|u| system::loopback_target(u));
    let admin_token = Claims::new("lt-ops", "admin", "*").mint(&ctx.key);
    let group = format!(
        "ferry-loadtest-{}-{}",
        std::process::id(),
        ctx.start_unix_us
    );
    let told = lock(&buy.told).clone();
    let mut reports = Vec::new();
    for s in &launched.sales {
        let mut report = SaleReport {
            room: ctx.rooms[s.room].clone(),
            sale: s.id.clone(),
            product: s.product.clone(),
            quantity: buy.settings.stock,
            per_buyer_limit: buy.settings.per_buyer_limit,
            price_cny: buy.settings.price_cny,
            starts_at_unix_ms: s.starts_at,
            ends_at_unix_ms: s.ends_at,
            // Filled at the end of the run, when every press has been counted.
            outcomes: BTreeMap::new(),
            stream: None,
            stock: None,
            verdicts: None,
            error: None,
        };
        let judged = async {
            let addr = match &addr {
                Some(Ok(a)) => *a,
                _ => return Err("no loopback target to read the order events from".to_owned()),
            };
            let token = admin_token.clone()?;
            let stream = admin::consume_order_events(addr, &token, &s.id, &group)
                .await
                .map_err(|e| e.to_string())?;
            // The audit is a second, independent read; without it the other verdicts stand.
            let audit = admin::audit(addr, &token, &s.id).await;
            let told: Vec<ToldReservation> = told
                .iter()
                .filter(|(room, _)| *room == s.room)
                .map(|(_, t)| t.clone())
                .collect();
            let snapshot = audit.as_ref().ok().map(|(c, e)| (c, e.as_slice()));
            let (verdict, summary) = sale::judge(
                buy.settings.stock,
                buy.settings.per_buyer_limit,
                &stream.events,
                stream.unreadable,
                &told,
                snapshot,
            );
            Ok((
                verdict,
                summary,
                audit.map(|(c, _)| c).map_err(|e| e.to_string()),
            ))
        };
        match judged.await {
            Ok((verdict, summary, audit)) => {
                report.verdicts = Some(verdict);
                report.stream = Some(summary);
                match audit {
                    Ok(c) => report.stock = Some(c),
                    Err(e) => report.error = Some(format!("audit: {e}")),
                }
            }
            Err(e) => report.error = Some(format!("order events: {e}")),
        }
        reports.push(report);
    }
    reports
}

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server(body) => body.name.clone(),
        other => short_reason(&other.to_string()),
    }
}

/// Read the rooms' final positions with a fresh client per room.
async fn probe_positions(ctx: &Arc<Ctx>) -> Vec<Option<(String, u64)>> {
    let mut out = Vec::new();
    for (i, room) in ctx.rooms.iter().enumerate() {
        let result = async {
            let token = ctx.mint(usize::MAX / 2 + i, 0).ok()?;
            let mut opts = ctx.client_options(0, token);
            opts.max_reconnect_attempts = Some(2);
            opts.request_timeout = Duration::from_secs(10);
            let (client, _events) = Client::connect(opts);
            let reply = client.join(room.as_str()).await;
            client.close();
            let reply = reply.ok()?;
            Some((reply.position.epoch.0, reply.position.offset.0))
        }
        .await;
        out.push(result);
    }
    out
}

/// Wait until `pending` is 0 or `until`; returns what is still pending.
async fn wait_for_zero(pending: &AtomicI64, until: Instant) -> i64 {
    while pending.load(Relaxed) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pending.load(Relaxed)
}

/// Events missing from live, judged sessions (0 means every viewer has everything).
fn undelivered(ctx: &Ctx) -> u64 {
    let viewers = lock(&ctx.viewers);
    let mut missing = 0u64;
    for v in viewers.iter() {
        let Some(s) = lock(&v.session).clone() else {
            continue;
        };
        if !s.joined.load(Relaxed) || s.told_unrecoverable.load(Relaxed) {
            continue;
        }
        let cutoff = ctx.cutoffs[v.room].load(Relaxed);
        let expected = cutoff.saturating_sub(s.join_offset.load(Relaxed));
        missing += expected.saturating_sub(s.received.load(Relaxed));
    }
    missing
}

/// Sample the server process: (cpu seconds, rss MiB).
fn sample_server(pid: Option<u32>) -> (Option<f64>, Option<f64>) {
    match pid {
        Some(pid) => {
            let pid = pid.to_string();
            (
                system::process_cpu_secs(&pid),
                system::process_rss_mib(&pid),
            )
        }
        None => (None, None),
    }
}

struct ProgressState {
    samples: Vec<Sample>,
    server_cpu_first: Option<f64>,
    server_cpu_last: Option<f64>,
    server_rss_max: Option<f64>,
}

async fn progress(
    ctx: Arc<Ctx>,
    pid: Option<u32>,
    print: bool,
    state: Arc<Mutex<ProgressState>>,
    mut done: watch::Receiver<bool>,
) {
    let mut last_t = ctx.start;
    let mut last = [0u64; 8];
    let (mut last_cpu, _) = sample_server(pid);
    lock(&state).server_cpu_first = last_cpu;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    // A late tick (busy machine) is taken late, not followed by a burst of catch-up ticks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = done.wait_for(|d| *d) => break,
        }
        let now = Instant::now();
        let dt = (now - last_t).as_secs_f64().max(1e-3);
        last_t = now;
        let c = &ctx.c;
        let current = [
            c.joins.load(Relaxed),
            c.join_failures.load(Relaxed),
            c.comments_sent.load(Relaxed),
            c.deliveries.load(Relaxed),
            c.errors.load(Relaxed),
            ctx.buy.as_ref().map_or(0, |b| b.answers.load(Relaxed)),
            ctx.video.as_ref().map_or(0, |v| v.frames.load(Relaxed)),
            ctx.video.as_ref().map_or(0, |v| v.freezes.load(Relaxed)),
        ];
        let previous = last;
        let rate = |i: usize| round3((current[i] - previous[i]) as f64 / dt);
        last = current;
        let join = Percentiles::of(&ctx.join.take_interval());
        let comment = Percentiles::of(&ctx.comment_latency.take_interval());
        let buy = ctx
            .buy
            .as_ref()
            .and_then(|b| Percentiles::of(&b.latency.take_interval()));
        let ttff = ctx
            .video
            .as_ref()
            .and_then(|v| Percentiles::of(&v.ttff.take_interval()));
        let (cpu, rss) = sample_server(pid);
        let cpu_pct = match (cpu, last_cpu) {
            (Some(a), Some(b)) => Some(round3(100.0 * (a - b) / dt)),
            _ => None,
        };
        last_cpu = cpu.or(last_cpu);
        let sample = Sample {
            t_s: round3((now - ctx.start).as_secs_f64()),
            connections: c.connections_open.load(Relaxed).max(0) as u64,
            viewers_joined: c.viewers_in_room.load(Relaxed).max(0) as u64,
            joins_per_s: rate(0),
            join_failures_per_s: rate(1),
            comments_per_s: rate(2),
            deliveries_per_s: rate(3),
            errors_per_s: rate(4),
            join_p50_ms: join.as_ref().map(|p| p.p50_ms),
            join_p99_ms: join.as_ref().map(|p| p.p99_ms),
            comment_latency_p50_ms: comment.as_ref().map(|p| p.p50_ms),
            comment_latency_p99_ms: comment.as_ref().map(|p| p.p99_ms),
            comment_latency_p999_ms: comment.as_ref().map(|p| p.p999_ms),
            server_cpu_pct: cpu_pct,
            server_rss_mib: rss.map(round3),
            buys_per_s: rate(5),
            buy_p50_ms: buy.as_ref().map(|p| p.p50_ms),
            buy_p99_ms: buy.as_ref().map(|p| p.p99_ms),
            video_subscribers: ctx
                .video
                .as_ref()
                .map_or(0, |v| v.receiving.load(Relaxed).max(0) as u64),
            video_frames_per_s: rate(6),
            video_freezes_per_s: rate(7),
            video_ttff_p50_ms: ttff.as_ref().map(|p| p.p50_ms),
            video_ttff_p99_ms: ttff.as_ref().map(|p| p.p99_ms),
        };
        if print {
            eprintln!(
                "[{:>6.1}s] conns {:>6} in-room {:>6} joins/s {:>7.0} join-fail/s {:>5.0} join p99 {:>8} | comments/s {:>6.0} deliveries/s {:>9.0} latency p99 {:>8} | errors/s {:>5.0}{}{}{}",
                sample.t_s,
                sample.connections,
                sample.viewers_joined,
                sample.joins_per_s,
                sample.join_failures_per_s,
                join.as_ref().map_or("-".to_owned(), |p| format!("{:.1}ms", p.p99_ms)),
                sample.comments_per_s,
                sample.deliveries_per_s,
                comment.as_ref().map_or("-".to_owned(), |p| format!("{:.1}ms", p.p99_ms)),
                sample.errors_per_s,
                match &buy {
                    Some(p) => format!(" | buys/s {:>6.0} buy p99 {:.1}ms", sample.buys_per_s, p.p99_ms),
                    None => String::new(),
                },
                match &ctx.video {
                    Some(_) => format!(
                        " | video {} receiving, frames/s {:.0}, freezes/s {:.0}, ttff p99 {}",
                        sample.video_subscribers,
                        sample.video_frames_per_s,
                        sample.video_freezes_per_s,
                        ttff.as_ref().map_or("-".to_owned(), |p| format!("{:.1}ms", p.p99_ms))
                    ),
                    None => String::new(),
                },
                match (cpu_pct, rss) {
                    (Some(c), Some(r)) => format!(" | server {c:.0}% {r:.0}MiB"),
                    _ => String::new(),
                }
            );
        }
        let mut st = lock(&state);
        st.server_cpu_last = cpu.or(st.server_cpu_last);
        if let Some(r) = rss {
            st.server_rss_max = Some(st.server_rss_max.map_or(r, |m: f64| m.max(r)));
        }
        st.samples.push(sample);
    }
}

/// Run `scenario` and return its report. Thresholds are evaluated into `report.passed`; an
/// `Err` means the run itself could not be carried out.
pub async fn run(scenario: &Scenario, options: RunOptions) -> Result<Report, RunError> {
    let thresholds = scenario.parsed_thresholds()?;
    let schedule = ArrivalSchedule::new(&scenario.phases, scenario.run.max_viewers);
    let churners = scenario
        .behaviours
        .iter()
        .any(|b| matches!(b, Behaviour::Churn { .. }));
    let video_scheduled = match scenario.video() {
        Some(_) => (0..schedule.len())
            .filter(|&i| plan_for(scenario, i).video)
            .count(),
        None => 0,
    };
    // Client sockets (churn briefly holds two per viewer), the probes, a UDP socket per
    // video subscriber and publisher, and slack.
    let needed = (schedule.len() as u64) * if churners { 11 } else { 10 } / 10
        + (video_scheduled + scenario.rooms.count) as u64
        + 256;
    let fd_limit = system::raise_fd_limit(needed).map_err(RunError::Resources)?;
    if fd_limit < needed {
        return Err(RunError::Resources(format!(
            "this scenario opens up to {} connections and needs about {needed} file descriptors, \
             but RLIMIT_NOFILE is {fd_limit} and cannot be raised further here (raising the hard \
             limit needs CAP_SYS_RESOURCE: `ulimit -Hn`); lower run.max_viewers",
            schedule.len()
        )));
    }

    let mut spawned = None;
    let mut urls = if !options.targets.is_empty() {
        options.targets.clone()
    } else {
        scenario.targets.clone()
    };
    if let Some(spawn) = &options.spawn {
        let mut config = spawn.clone();
        let mut sets = Vec::new();
        if scenario.video().is_some() {
            // The SFU's socket and ICE candidate on loopback (by default it offers the
            // host's default-route address), and a session for every subscriber.
            sets.push("sfu.udp_listen=127.0.0.1:0".to_owned());
            sets.push(format!(
                "sfu.max_sessions={}",
                (video_scheduled + scenario.rooms.count + 16).max(5000)
            ));
        }
        sets.extend(scenario.server.set.iter().cloned());
        sets.extend(config.sets);
        config.sets = sets;
        let server = SpawnedServer::start(&config, schedule.len() + 1000)
            .await
            .map_err(RunError::Spawn)?;
        if options.progress {
            eprintln!(
                "ferry-loadtest: started {} (pid {}) at {}, log {}",
                config.bin.display(),
                server.pid,
                server.url,
                server.log.display()
            );
        }
        urls = vec![server.url.clone()];
        spawned = Some(server);
    }
    if urls.is_empty() {
        return Err(RunError::NoTargets);
    }
    for url in &urls {
        system::loopback_target(url)?;
    }
    let server_pid = spawned.as_ref().map(|s| s.pid).or(options.server_pid);

    let (stop_sending_tx, stop_sending) = watch::channel(false);
    let (stop_all_tx, stop_all) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let rooms: Vec<String> = (0..scenario.rooms.count)
        .map(|i| scenario.rooms.room_of(i))
        .collect();
    let (launch_tx, launch_rx) = watch::channel(SaleLaunch::Pending);
    let buy = scenario.buy().map(|settings| {
        let buyers = (0..schedule.len())
            .filter(|&i| plan_for(scenario, i).buy)
            .collect();
        BuyCtx {
            schedule: PressSchedule::new(
                buyers,
                settings.presses,
                settings.window,
                settings.double_click,
            ),
            settings: settings.clone(),
            launch: launch_rx,
            latency: LatencyRecorder::default(),
            outcomes: Mutex::new(BTreeMap::new()),
            told: Mutex::new(Vec::new()),
            presses: AtomicU64::new(0),
            double_clicks: AtomicU64::new(0),
            not_started_retries: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            last_reserved_ms: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
        }
    });
    let key = jsonwebtoken::EncodingKey::from_secret(options.secret.as_bytes());
    // Video: the publishers start (and lead) before the first arrival.
    let mut publishers = Vec::new();
    let mut sfu_forwarded_before = None;
    let video = match scenario.video() {
        Some(settings) => {
            let base = video::http_base(&urls[0])?;
            if settings.publish {
                publishers = start_publishers(settings, &base, &rooms, &key).await;
                if options.progress {
                    eprintln!(
                        "ferry-loadtest: {} of {} video publishers connected to {base}",
                        publishers.iter().filter(|(r, _)| r.connected).count(),
                        publishers.len()
                    );
                }
                tokio::time::sleep(settings.publish_lead).await;
            }
            sfu_forwarded_before = video::server_metric(&base, SFU_FORWARDED_METRIC).await;
            Some(VideoCtx {
                settings: settings.clone(),
                base,
                ttff: LatencyRecorder::default(),
                frame_latency: LatencyRecorder::default(),
                end_us: AtomicU64::new(u64::MAX),
                failures: AtomicU64::new(0),
                receiving: AtomicI64::new(0),
                peak: AtomicI64::new(0),
                frames: AtomicU64::new(0),
                freezes: AtomicU64::new(0),
                pending: AtomicI64::new(0),
                outcomes: Mutex::new(Vec::new()),
            })
        }
        None => None,
    };
    let ctx = Arc::new(Ctx {
        scenario: scenario.clone(),
        urls: urls.clone(),
        key,
        start: Instant::now(),
        start_unix_us: unix_us(),
        cutoffs: rooms.iter().map(|_| AtomicU64::new(u64::MAX)).collect(),
        rooms,
        stop_sending,
        stop_all,
        connecting: Semaphore::new(scenario.run.max_connecting),
        c: Counters {
            first_join_us: AtomicU64::new(u64::MAX),
            first_delivery_us: AtomicU64::new(u64::MAX),
            first_comment_delivery_us: AtomicU64::new(u64::MAX),
            ..Counters::default()
        },
        join: LatencyRecorder::default(),
        connect: LatencyRecorder::default(),
        comment_latency: LatencyRecorder::default(),
        comment_ack: LatencyRecorder::default(),
        like_ack: LatencyRecorder::default(),
        rejoin: LatencyRecorder::default(),
        errors: Mutex::new(BTreeMap::new()),
        viewers: Mutex::new(Vec::new()),
        buy,
        video,
    });
    let mut notes = Vec::new();
    for (p, _) in &publishers {
        if let Some(e) = &p.error {
            ctx.error("video: publisher did not connect");
            notes.push(format!(
                "the video publisher in {} did not connect: {e}",
                p.room
            ));
        }
    }
    if let Some(buy) = &ctx.buy {
        // The host launches the sales when the arrivals end (or at `launch_at`).
        let at = ctx.start + buy.settings.launch_at.unwrap_or(schedule.span());
        let (ctx, settings) = (ctx.clone(), buy.settings.clone());
        tokio::spawn(async move {
            let mut stop = ctx.stop_all.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let outcome = match launch_sales(&ctx, &settings).await {
                Ok(launched) => SaleLaunch::Launched(Arc::new(launched)),
                Err(e) => {
                    ctx.error("sale launch failed");
                    SaleLaunch::Failed(e)
                }
            };
            let _ = launch_tx.send(outcome);
        });
    }
    let progress_state = Arc::new(Mutex::new(ProgressState {
        samples: Vec::new(),
        server_cpu_first: None,
        server_cpu_last: None,
        server_rss_max: None,
    }));
    let progress_task = tokio::spawn(progress(
        ctx.clone(),
        server_pid,
        options.progress,
        progress_state.clone(),
        done,
    ));
    let loadgen_cpu_before = system::process_cpu_secs("self");
    let machine_before = system::machine_cpu_secs();

    // Arrivals, then hold, bounded by the deadline.
    let deadline = ctx.start + scenario.deadline();
    let arrivals = async {
        for (index, offset) in schedule.offsets().iter().enumerate() {
            let due = ctx.start + *offset;
            tokio::time::sleep_until(due).await;
            tokio::spawn(viewer(ctx.clone(), index, due));
        }
        let mut activity_end = (ctx.start + schedule.span()).max(Instant::now());
        if let Some(buy) = &ctx.buy {
            // Everyone stays until the buy window has closed, then for the hold.
            let mut launch = buy.launch.clone();
            let state = launch
                .wait_for(|s| !matches!(s, SaleLaunch::Pending))
                .await
                .map(|s| s.clone());
            if let Ok(SaleLaunch::Launched(l)) = state {
                activity_end = activity_end.max(l.window_end);
            }
        }
        tokio::time::sleep_until(activity_end + scenario.run.hold).await;
    };
    let mut aborted = tokio::time::timeout_at(deadline, arrivals).await.is_err();
    if aborted {
        notes.push(format!(
            "the run hit its deadline ({:?}) before the arrivals and hold finished",
            scenario.deadline()
        ));
    }
    if let Some(video) = &ctx.video {
        video.end_us.store(ctx.since_start_us(), Relaxed);
    }
    let _ = stop_sending_tx.send(true);
    let sending_stopped = Instant::now();
    // The video window is over: the publishers stop, so the subscribers' loss can settle.
    stop_publishers(&mut publishers).await;

    // Likes and joins are aggregated per interval (1 s by default): let the last ones land,
    // then read every room's final position and wait for every viewer to reach it.
    let drain_deadline = (sending_stopped + scenario.run.drain).min(deadline);
    tokio::time::sleep_until((sending_stopped + Duration::from_millis(1500)).min(drain_deadline))
        .await;
    let positions = tokio::time::timeout_at(deadline, probe_positions(&ctx))
        .await
        .unwrap_or_default();
    for (i, cutoff) in ctx.cutoffs.iter().enumerate() {
        match positions.get(i).cloned().flatten() {
            Some((_, offset)) => cutoff.store(offset, Relaxed),
            None => {
                // The probe failed: judge against the furthest any viewer got.
                let furthest = lock(&ctx.viewers)
                    .iter()
                    .filter(|v| v.room == i)
                    .filter_map(|v| lock(&v.session).clone())
                    .map(|s| s.last_offset.load(Relaxed))
                    .max()
                    .unwrap_or(0);
                cutoff.store(furthest, Relaxed);
                notes.push(format!(
                    "could not read the final position of room {} (probe join failed); \
                     completeness is judged against the furthest event any viewer received",
                    ctx.rooms[i]
                ));
            }
        }
    }
    // Sessions whose epoch differs from the final one were moved to a new epoch: told.
    for v in lock(&ctx.viewers).iter() {
        if let (Some(s), Some(Some((epoch, _)))) = (lock(&v.session).clone(), positions.get(v.room))
        {
            if s.joined.load(Relaxed) && *lock(&s.epoch) != *epoch {
                s.told_unrecoverable.store(true, Relaxed);
            }
        }
    }
    let mut missing = undelivered(&ctx);
    while missing > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        missing = undelivered(&ctx);
    }
    // Every video subscriber reports after its own drain.
    let mut sfu_forwarded_after = None;
    if let Some(video) = &ctx.video {
        let until = drain_deadline
            .max(sending_stopped + VIDEO_DRAIN + Duration::from_secs(2))
            .min(deadline);
        let unreported = wait_for_zero(&video.pending, until).await;
        if unreported > 0 {
            notes.push(format!(
                "{unreported} video subscribers had not reported at the end of the drain"
            ));
        }
        sfu_forwarded_after = video::server_metric(&video.base, SFU_FORWARDED_METRIC).await;
    }
    // The flash sale: every press answered (or the drain is over), then the verdicts.
    let mut sales = Vec::new();
    let mut launched = None;
    if let Some(buy) = &ctx.buy {
        let unanswered = wait_for_zero(&buy.pending, drain_deadline).await;
        if unanswered > 0 {
            notes.push(format!(
                "{unanswered} Buy presses had no final answer at the end of the drain"
            ));
        }
        match &*buy.launch.borrow() {
            SaleLaunch::Launched(l) => launched = Some(l.clone()),
            SaleLaunch::Failed(e) => notes.push(format!("the host could not launch the sale: {e}")),
            SaleLaunch::Pending => notes.push("the sale was never launched".into()),
        }
        if let Some(l) = &launched {
            match tokio::time::timeout_at(deadline, judge_sales(&ctx, l)).await {
                Ok(reports) => sales = reports,
                Err(_) => notes.push("reading the order events hit the run's deadline".into()),
            }
        }
        for s in &sales {
            if let Some(e) = &s.error {
                ctx.error("order stream unreadable");
                notes.push(format!("sale {} in {}: {e}", s.sale, s.room));
            }
        }
    }
    if Instant::now() >= deadline {
        aborted = true;
    }
    let duration = ctx.start.elapsed();
    // Measured while every client is still open: what holding them costs the generator.
    let loadgen_rss = system::process_rss_mib("self");
    let loadgen_cpu = match (loadgen_cpu_before, system::process_cpu_secs("self")) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let machine_used = match (machine_before, system::machine_cpu_secs()) {
        (Some((b0, i0, t0)), Some((b1, i1, t1))) if t1 > t0 => Some((b1 - b0, i1 - i0, t1 - t0)),
        _ => None,
    };

    // Final accounting before anything closes.
    let (mut gaps, mut duplicates, mut unrecovered) = (
        ctx.c.closed_gaps.load(Relaxed),
        ctx.c.closed_duplicates.load(Relaxed),
        ctx.c.closed_unrecovered.load(Relaxed),
    );
    let (mut expected, mut received) = (0u64, 0u64);
    let sessions: Vec<(usize, Arc<Session>)> = lock(&ctx.viewers)
        .iter()
        .filter_map(|v| lock(&v.session).clone().map(|s| (v.room, s)))
        .collect();
    for (room, s) in &sessions {
        let stats = s.client.stats();
        gaps += stats.gaps.load(Relaxed);
        duplicates += stats.duplicates.load(Relaxed);
        unrecovered += stats.unrecovered.load(Relaxed);
        if s.joined.load(Relaxed) && !s.told_unrecoverable.load(Relaxed) {
            let e = ctx.cutoffs[*room]
                .load(Relaxed)
                .saturating_sub(s.join_offset.load(Relaxed));
            expected += e;
            received += s.received.load(Relaxed).min(e);
        }
    }

    // Stop everything.
    let _ = stop_all_tx.send(true);
    for (_, s) in &sessions {
        s.closing.store(true, Relaxed);
        s.client.close();
    }
    if let Some(l) = &launched {
        l.host.close();
    }
    let _ = done_tx.send(true);
    let _ = progress_task.await;
    let server_exit = match spawned {
        Some(server) => {
            let log = server.log.display().to_string();
            let exit = server.stop(Duration::from_secs(10)).await;
            Some((log, exit))
        }
        None => None,
    };

    // Each sale's final answers, now that presses cut short by the end are counted too.
    if let Some(buy) = &ctx.buy {
        let outcomes = lock(&buy.outcomes).clone();
        for report in &mut sales {
            let room = ctx.rooms.iter().position(|r| *r == report.room);
            report.outcomes = outcomes
                .iter()
                .filter(|((r, _), _)| Some(*r) == room)
                .map(|((_, name), n)| ((*name).to_owned(), *n))
                .collect();
        }
    }

    // Metrics.
    let c = &ctx.c;
    let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
    let mut latencies = BTreeMap::new();
    let mut recorders = vec![
        ("join", &ctx.join),
        ("connect", &ctx.connect),
        ("comment_latency", &ctx.comment_latency),
        ("comment_ack", &ctx.comment_ack),
        ("like_ack", &ctx.like_ack),
        ("rejoin", &ctx.rejoin),
    ];
    if let Some(buy) = &ctx.buy {
        recorders.push(("buy", &buy.latency));
    }
    if let Some(video) = &ctx.video {
        recorders.push(("video_ttff", &video.ttff));
        recorders.push(("video_latency", &video.frame_latency));
    }
    for (name, recorder) in recorders {
        if let Some(p) = Percentiles::of(&recorder.total()) {
            metrics.extend(p.metrics(name));
            latencies.insert(name.to_owned(), p);
        }
    }
    let per_s = |count: u64, first: &AtomicU64, last: &AtomicU64| {
        let (a, b) = (first.load(Relaxed), last.load(Relaxed));
        (b > a && a != u64::MAX).then(|| round3(count as f64 / ((b - a) as f64 / 1e6)))
    };
    let joins = c.joins.load(Relaxed);
    let first_joins = joins - c.churn_reconnects.load(Relaxed);
    let mut put = |k: &str, v: f64| {
        metrics.insert(k.to_owned(), v);
    };
    put("viewers_scheduled", schedule.len() as f64);
    put("viewers_joined", first_joins as f64);
    put("viewers_peak", c.viewers_peak.load(Relaxed) as f64);
    put("join_failures", c.join_failures.load(Relaxed) as f64);
    if !schedule.is_empty() {
        put(
            "join_success_pct",
            round3(100.0 * first_joins as f64 / schedule.len() as f64),
        );
    }
    put("join_retries", c.join_retries.load(Relaxed) as f64);
    // Arrivals only: the first join to the last first join (churn comebacks excluded).
    if let Some(v) = per_s(first_joins, &c.first_join_us, &c.last_join_us) {
        put("joins_per_s", v);
    }
    let comments_sent = c.comments_sent.load(Relaxed);
    put("comments_sent", comments_sent as f64);
    put(
        "comments_accepted",
        c.comments_accepted.load(Relaxed) as f64,
    );
    put(
        "comments_rejected",
        c.comments_rejected.load(Relaxed) as f64,
    );
    put("likes_sent", c.likes_sent.load(Relaxed) as f64);
    put("likes_accepted", c.likes_accepted.load(Relaxed) as f64);
    put("churn_reconnects", c.churn_reconnects.load(Relaxed) as f64);
    put("deliveries", c.deliveries.load(Relaxed) as f64);
    if let Some(v) = per_s(
        c.deliveries.load(Relaxed),
        &c.first_delivery_us,
        &c.last_delivery_us,
    ) {
        put("deliveries_per_s", v);
    }
    put(
        "comment_deliveries",
        c.comment_deliveries.load(Relaxed) as f64,
    );
    if let Some(v) = per_s(
        c.comment_deliveries.load(Relaxed),
        &c.first_comment_delivery_us,
        &c.last_comment_delivery_us,
    ) {
        put("comment_deliveries_per_s", v);
    }
    if comments_sent > 0 {
        let span = schedule.span() + scenario.run.hold;
        put(
            "comments_per_s",
            round3(comments_sent as f64 / span.as_secs_f64().max(1e-3)),
        );
    }
    put("expected_events", expected as f64);
    put("received_events", received as f64);
    if expected > 0 {
        put(
            "completeness_pct",
            round3(100.0 * received as f64 / expected as f64),
        );
    } else if first_joins > 0 {
        put("completeness_pct", 100.0);
    }
    put("undelivered_events", (expected - received) as f64);
    put("silent_gaps", gaps as f64);
    put("duplicates", duplicates as f64);
    put("unrecovered", unrecovered as f64);
    put(
        "server_disconnects",
        c.server_disconnects.load(Relaxed) as f64,
    );
    if let Some(buy) = &ctx.buy {
        buy_metrics(buy, launched.as_deref(), &sales, &mut put);
    }
    let publisher_reports: Vec<PublisherReport> = publishers.into_iter().map(|(r, _)| r).collect();
    if let Some(video) = &ctx.video {
        let forwarded = match (sfu_forwarded_before, sfu_forwarded_after) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let unobserved = video_metrics(
            video,
            video_scheduled,
            &publisher_reports,
            forwarded,
            &mut put,
        );
        if unobserved > 0 {
            notes.push(format!(
                "{unobserved} video frames completed while the harness was too far behind to \
                 see them (its frame buffer was full): freezes and missing frames are \
                 overstated"
            ));
        }
    }
    put("errors", c.errors.load(Relaxed) as f64);
    let st = lock(&progress_state);
    if let (Some(a), Some(b)) = (st.server_cpu_first, st.server_cpu_last) {
        put("server_cpu_s", round3(b - a));
        put(
            "server_cpu_pct",
            round3(100.0 * (b - a) / duration.as_secs_f64().max(1e-3)),
        );
    }
    if let Some(r) = st.server_rss_max {
        put("server_rss_max_mib", round3(r));
    }
    if let Some(l) = loadgen_cpu {
        put("loadgen_cpu_s", round3(l));
    }
    if let Some(r) = loadgen_rss {
        put("loadgen_rss_mib", round3(r));
    }
    let mut other_cpu = None;
    if let Some((busy, interrupts, total)) = machine_used {
        put("machine_busy_pct", round3(100.0 * busy / total));
        put("softirq_cpu_s", round3(interrupts));
        // Everything but the load generator and the local server: interference.
        let ours = loadgen_cpu.unwrap_or(0.0)
            + match (st.server_cpu_first, st.server_cpu_last) {
                (Some(a), Some(b)) => b - a,
                _ => 0.0,
            };
        let other = (busy - interrupts - ours).max(0.0);
        put("other_cpu_s", round3(other));
        other_cpu = Some(other);
    }
    let samples = st.samples.clone();
    drop(st);

    let results = evaluate(&thresholds, &metrics);
    if aborted {
        notes.push("the run was stopped by its deadline: results are partial".into());
    }
    let (cores, mem_gib) = system::machine();
    if loadgen_cpu.is_some_and(|l| l > 0.8 * cores as f64 * duration.as_secs_f64()) {
        notes.push(format!(
            "the load generator used {:.1} s of CPU in {:.1} s on {cores} cores: it was \
             saturated, latencies include its own queueing",
            loadgen_cpu.unwrap_or_default(),
            duration.as_secs_f64()
        ));
    }
    if let Some(other) = other_cpu.filter(|o| *o > 1.0 + 0.05 * duration.as_secs_f64()) {
        notes.push(format!(
            "other processes used {other:.1} s of CPU during the run (interference: the \
             figures understate what this machine can do)"
        ));
    }
    let errors = lock(&ctx.errors).clone();
    Ok(Report {
        schema_version: crate::report::SCHEMA_VERSION,
        tool: format!("ferry-loadtest {}", env!("CARGO_PKG_VERSION")),
        scenario: ScenarioInfo {
            name: scenario.name.clone(),
            description: scenario.description.clone(),
            file: options.scenario_file.clone(),
        },
        started_unix_ms: ctx.start_unix_us / 1000,
        duration_s: round3(duration.as_secs_f64()),
        targets: urls,
        machine: MachineInfo {
            cores,
            mem_gib: round3(mem_gib),
            fd_limit,
        },
        passed: !aborted && results.iter().all(|r| r.passed),
        thresholds: results,
        metrics,
        latencies,
        errors,
        server: server_pid.map(|pid| ServerInfo {
            pid,
            spawned: server_exit.is_some(),
            log: server_exit.as_ref().map(|(l, _)| l.clone()),
            exit: server_exit.map(|(_, e)| e),
        }),
        timeline: samples,
        sales,
        video: ctx
            .video
            .as_ref()
            .map(|v| video_report(v, publisher_reports)),
        notes,
    })
}

/// The video section of the report.
fn video_report(video: &VideoCtx, publishers: Vec<PublisherReport>) -> VideoReport {
    let s = &video.settings;
    VideoReport {
        target: video.base.clone(),
        codec: match s.codec {
            VideoCodecName::Vp8 => "vp8",
            VideoCodecName::H264 => "h264",
        }
        .to_owned(),
        bitrate_bps: s.bitrate_bps,
        fps: s.fps,
        simulcast: s
            .simulcast
            .iter()
            .map(|l| VideoLayerInfo {
                rid: l.rid.clone(),
                bitrate_bps: l.bitrate_bps,
            })
            .collect(),
        audio: s.audio,
        freeze_threshold_ms: round3(s.freeze_threshold.as_secs_f64() * 1000.0),
        first_frame_timeout_ms: round3(s.first_frame_timeout.as_secs_f64() * 1000.0),
        publishers,
    }
}

/// The video metrics: publishers, the server's forwarded packets, and every subscriber's
/// outcome summed ([`video::summarize`]). Returns the frames the harness did not see.
fn video_metrics(
    video: &VideoCtx,
    scheduled: usize,
    publishers: &[PublisherReport],
    forwarded: Option<f64>,
    put: &mut impl FnMut(&str, f64),
) -> u64 {
    if video.settings.publish {
        put(
            "video_publishers",
            publishers.iter().filter(|p| p.connected).count() as f64,
        );
        put(
            "video_publisher_frames",
            publishers.iter().map(|p| p.video_frames).sum::<u64>() as f64,
        );
        put(
            "video_keyframe_requests",
            publishers.iter().map(|p| p.keyframe_requests).sum::<u64>() as f64,
        );
    }
    if let Some(f) = forwarded {
        put("sfu_packets_forwarded", f);
    }
    let outcomes = lock(&video.outcomes).clone();
    put("video_subscribers_scheduled", scheduled as f64);
    put(
        "video_subscribe_failures",
        video.failures.load(Relaxed) as f64,
    );
    put(
        "video_subscribers_peak",
        video.peak.load(Relaxed).max(0) as f64,
    );
    put(
        "video_sessions_unreported",
        video.pending.load(Relaxed).max(0) as f64,
    );
    for (name, value) in video::summarize(&outcomes, VIDEO_FPS_MIN_SPAN) {
        put(name, value);
    }
    if scheduled > 0 {
        let first = outcomes.iter().filter(|o| o.first_frame).count();
        put(
            "video_first_frame_pct",
            round3(100.0 * first as f64 / scheduled as f64),
        );
    }
    outcomes.iter().map(|o| o.unobserved).sum()
}

/// The flash sale's metrics: presses and answers, rates, and the verdicts summed over the
/// sales (absent unless every sale could be judged: no evidence is not a pass).
fn buy_metrics(
    buy: &BuyCtx,
    launched: Option<&Launched>,
    sales: &[SaleReport],
    put: &mut impl FnMut(&str, f64),
) {
    put("buy_presses_scheduled", buy.schedule.len() as f64);
    put("buy_presses", buy.presses.load(Relaxed) as f64);
    put("buy_double_clicks", buy.double_clicks.load(Relaxed) as f64);
    let outcomes = lock(&buy.outcomes).clone();
    for name in BuyOutcome::NAMES {
        let n: u64 = outcomes
            .iter()
            .filter(|((_, o), _)| *o == name)
            .map(|(_, n)| n)
            .sum();
        put(&format!("buy_{name}"), n as f64);
    }
    put(
        "buy_not_started_retried",
        buy.not_started_retries.load(Relaxed) as f64,
    );
    put("buy_retries", buy.retries.load(Relaxed) as f64);
    put(
        "sales_launched",
        launched.map_or(0, |l| l.sales.len()) as f64,
    );
    if let Some(start) = launched.and_then(|l| l.sales.iter().map(|s| s.starts_at).min()) {
        let reserved: u64 = outcomes
            .iter()
            .filter(|((_, o), _)| *o == "reserved")
            .map(|(_, n)| n)
            .sum();
        let per_s = |n: u64, last: u64| {
            (last > start).then(|| round3(n as f64 / ((last - start) as f64 / 1000.0)))
        };
        if let Some(v) = per_s(reserved, buy.last_reserved_ms.load(Relaxed)) {
            put("reservations_per_s", v);
        }
        if let Some(v) = per_s(buy.answers.load(Relaxed), buy.last_answer_ms.load(Relaxed)) {
            put("buy_answers_per_s", v);
        }
    }
    if launched.is_none() {
        return;
    }
    let verdicts: Vec<_> = sales.iter().map(|s| s.verdicts.as_ref()).collect();
    for (name, value) in sale::verdict_metrics(&verdicts) {
        put(name, value);
    }
    let stocks: Vec<_> = sales.iter().filter_map(|s| s.stock.as_ref()).collect();
    if stocks.len() == sales.len() {
        put(
            "stock_remaining",
            stocks.iter().map(|c| c.remaining).sum::<u64>() as f64,
        );
    }
    let streams = sales.iter().filter_map(|s| s.stream.as_ref());
    let (mut reserved, mut held) = (0u64, 0u64);
    for s in streams {
        reserved += s.reserved;
        held += s.max_units_held;
    }
    put("stream_reservations", reserved as f64);
    put("stream_units_held_max", held as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_marker_round_trips_and_pads() {
        let text = comment_text(1_732_240_000_123_456, 7, 3, 48);
        assert_eq!(text.len(), 48);
        assert_eq!(parse_marker(&text), Some(1_732_240_000_123_456));
        assert_eq!(parse_marker("hello"), None);
        assert_eq!(parse_marker("lt|x|"), None);
    }

    #[test]
    fn behaviour_shares_are_respected() {
        let scenario = Scenario::from_toml(
            r#"
name = "t"
[[phases]]
kind = "hold"
rate = 1
duration = "1s"
[[behaviours]]
kind = "chat"
share = 0.1
rate = 0.5
[[behaviours]]
kind = "likes"
share = 0.5
every = "1s"
[[behaviours]]
kind = "video"
share = 0.25
"#,
        )
        .expect("valid");
        let plans: Vec<Plan> = (0..1000).map(|i| plan_for(&scenario, i)).collect();
        let chatters = plans.iter().filter(|p| p.chat.is_some()).count();
        let likers = plans.iter().filter(|p| p.likes.is_some()).count();
        let watchers = plans.iter().filter(|p| p.video).count();
        assert!((90..=110).contains(&chatters), "{chatters}");
        assert!((480..=520).contains(&likers), "{likers}");
        assert!((240..=260).contains(&watchers), "{watchers}");
    }

    #[test]
    fn whep_refusals_are_named_by_status_and_code() {
        let refused = MediaError::Refused {
            status: 503,
            body: r#"{"error":{"code":"sfu_full","message":"full"}}"#.into(),
        };
        assert_eq!(media_error_kind(&refused), "WHEP refused 503 sfu_full");
        let opaque = MediaError::Refused {
            status: 502,
            body: "<html>".into(),
        };
        assert_eq!(media_error_kind(&opaque), "WHEP refused 502");
    }

    #[test]
    fn error_reasons_lose_their_numbers() {
        assert_eq!(
            short_reason("connect 127.0.0.1:4000: Connection refused (os error 111)"),
            "connect Connection refused (os error"
        );
    }
}
