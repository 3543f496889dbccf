//! The Rust client: one background task per [`Client`] owns the WebSocket, reconnects with
//! exponential backoff and jitter when the server (or network) says to, rejoins every room
//! from its last position so resumes are transparent, and keeps a clock-offset estimate from
//! NTP-style ping samples. Commands are async methods; events arrive on [`Events`].
//!
//! [`Events`] is bounded: an application that stops reading events eventually stops reading
//! the socket, and the server closes it as a slow consumer; the client then resumes.

use crate::protocol::commerce::{
    ProductId, ReservationId, ReservationReply, ReservationView, SaleId, SaleSpec, SaleView,
};
use crate::protocol::translation::{HeldComment, PendingComment};
use crate::protocol::{
    close_code_reconnects, split_frame, ClientFrame, Command, ErrorBody, JoinReply, Offset,
    PongReply, Push, Reply, ReplyBody, ReplyResult, RoomEvent, RoomId, ServerFrame, StreamPosition,
    UserId, UserRef,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// How a client connects and behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// WebSocket URLs (`ws://host:port/ws`). Reconnects rotate through them, so a client
    /// whose node dies moves to the next.
    pub urls: Vec<String>,
    pub token: String,
    /// Send the token as `?token=` instead of an `Authorization` header.
    pub token_in_query: bool,
    /// First reconnect delay; doubles per failed attempt up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up after this many consecutive failed attempts (`None` = never).
    pub max_reconnect_attempts: Option<u32>,
    /// How long a command waits for its reply.
    pub request_timeout: Duration,
    /// Clock-sync ping interval after the initial burst of samples.
    pub ping_interval: Duration,
    /// Extra clock samples taken 50 ms apart right after each connect (the first sample is
    /// always taken), so the offset is good before a countdown. Load tests holding thousands
    /// of clients on one machine may take fewer.
    pub clock_burst: u32,
    /// Capacity of the event channel.
    pub event_buffer: usize,
    /// Local address to connect from (load tests spread over 127.0.0.x).
    pub bind: Option<IpAddr>,
    /// tungstenite read buffer (small for load tests holding many connections).
    pub read_buffer_bytes: usize,
    /// The language to read comments in (BCP 47, e.g. `en`), sent as `?lang=` on every
    /// (re)connect; [`Client::set_language`] changes it for the session and later reconnects.
    /// `None`: the token's `lang` claim, if any.
    pub lang: Option<String>,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            token: token.into(),
            token_in_query: false,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_reconnect_attempts: None,
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            clock_burst: 4,
            event_buffer: 4096,
            bind: None,
            read_buffer_bytes: 8 * 1024,
            lang: None,
        }
    }
}

/// What the application receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A connection (first or re-) is established.
    Connected {
        node: String,
        user: UserRef,
        /// The language the server will send translations in (`None`: originals only).
        lang: Option<String>,
    },
    /// A room was joined or rejoined. `reply.recovered == Some(false)` means events were
    /// missed and cannot be replayed: reset the room's view from `reply.state`.
    Joined {
        room: RoomId,
        reply: JoinReply,
    },
    /// A room stream event, in order, exactly once.
    Room {
        room: RoomId,
        position: StreamPosition,
        event: RoomEvent,
    },
    Viewers {
        room: RoomId,
        count: u64,
    },
    /// The server removed us from a room (closed, banned...).
    Removed {
        room: RoomId,
        code: u16,
        reason: String,
    },
    /// The connection dropped; `reconnecting` tells whether the client will try again.
    Disconnected {
        code: Option<u16>,
        reason: String,
        reconnecting: bool,
    },
    /// The client stopped for good (terminal close code or too many failed attempts).
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// Why a command failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ClientError {
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(ErrorBody),
    #[error("connection lost before the reply")]
    Disconnected,
    #[error("client closed: {reason} ({code:?})")]
    Closed { code: Option<u16>, reason: String },
    #[error("no reply in time")]
    Timeout,
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// The comment was held for a moderator instead of published (see
    /// [`Client::send_comment`]).
    #[error("held for a moderator by rule {}", .0.rule.rule)]
    Held(Box<PendingComment>),
    /// An HTTP call ([`crate::HttpClient`]) was answered with an error status; `code` is the
    /// documented error code (`not_found`, `forbidden`...), empty if the body had none.
    #[error("HTTP {status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
    },
}

/// What became of a comment.
#[derive(Clone, Debug, PartialEq)]
pub enum CommentOutcome {
    /// Published at this position.
    Published(StreamPosition),
    /// Held in the moderator queue (a moderator publishes or rejects it).
    Held(PendingComment),
}

impl ClientError {
    /// The server's error code, if the server refused the command.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Counters a test or load tester can read.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub connects: AtomicU64,
    pub events: AtomicU64,
    /// Events dropped because their offset was already seen (should stay 0).
    pub duplicates: AtomicU64,
    /// Offsets skipped without a `recovered: false` (should stay 0).
    pub gaps: AtomicU64,
    /// Rejoins answered `recovered: false`.
    pub unrecovered: AtomicU64,
}

/// A clock-offset estimate: `server_time ≈ local_time + offset_ms`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ClockEstimate {
    pub offset_ms: f64,
    pub rtt_ms: f64,
}

#[derive(Default)]
struct Shared {
    clock: Mutex<VecDeque<ClockEstimate>>,
    /// The language sent as `?lang=` on (re)connect.
    lang: Mutex<Option<String>>,
}

impl Shared {
    fn estimate(&self) -> Option<ClockEstimate> {
        let samples = self.clock.lock().ok()?;
        samples
            .iter()
            .copied()
            .min_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms))
    }
}

/// Clock samples kept; the lowest-RTT one among them is the estimate.
const CLOCK_SAMPLES: usize = 8;

type Pending = oneshot::Sender<Result<ReplyBody, ClientError>>;

enum Request {
    Command { command: Command, reply: Pending },
    Close,
}

/// A connected (and reconnecting) client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    stats: Arc<ClientStats>,
    timeout: Duration,
    /// First node URL and the token, for [`Client::http`].
    url: String,
    token: String,
}

/// The stream of [`Event`]s.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

impl Client {
    /// Start the client. Returns at once; `Event::Connected` tells when the socket is up, and
    /// commands sent before then wait for it.
    pub fn connect(opts: ClientOptions) -> (Client, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::channel(opts.event_buffer.max(1));
        let shared = Arc::new(Shared {
            lang: Mutex::new(opts.lang.clone()),
            ..Shared::default()
        });
        let stats = Arc::new(ClientStats::default());
        let timeout = opts.request_timeout;
        let url = opts.urls.first().cloned().unwrap_or_default();
        let token = opts.token.clone();
        let driver = Driver {
            opts,
            requests: rx,
            events: event_tx,
            shared: shared.clone(),
            stats: stats.clone(),
            rooms: HashMap::new(),
            next_id: 1,
        };
        tokio::spawn(driver.run());
        (
            Client {
                tx,
                shared,
                stats,
                timeout,
                url,
                token,
            },
            Events { rx: event_rx },
        )
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The best clock-offset estimate so far.
    pub fn clock_offset(&self) -> Option<ClockEstimate> {
        self.shared.estimate()
    }

    /// The server's clock now, in Unix ms, per the estimate (local clock if none yet).
    pub fn server_now_ms(&self) -> f64 {
        unix_ms() + self.clock_offset().map(|c| c.offset_ms).unwrap_or(0.0)
    }

    /// Send any command and wait for its reply.
    pub async fn request(&self, command: Command) -> Result<ReplyBody, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Command { command, reply })
            .map_err(|_| ClientError::Closed {
                code: None,
                reason: "client stopped".into(),
            })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Join a room (the client rejoins it after every reconnect, resuming where it was).
    pub async fn join(&self, room: impl Into<RoomId>) -> Result<JoinReply, ClientError> {
        match self
            .request(Command::Join {
                room: room.into(),
                since: None,
            })
            .await?
        {
            ReplyBody::Joined(j) => Ok(j),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn leave(&self, room: impl Into<RoomId>) -> Result<(), ClientError> {
        self.request(Command::Leave { room: room.into() })
            .await
            .map(|_| ())
    }

    async fn publish(&self, command: Command) -> Result<StreamPosition, ClientError> {
        match self.request(command).await? {
            ReplyBody::Published(p) => Ok(p.position),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Post a comment; a comment held for a moderator is `Err(ClientError::Held(..))`.
    pub async fn comment(
        &self,
        room: impl Into<RoomId>,
        text: impl Into<String>,
    ) -> Result<StreamPosition, ClientError> {
        match self.send_comment(room, text).await? {
            CommentOutcome::Published(p) => Ok(p),
            CommentOutcome::Held(p) => Err(ClientError::Held(Box::new(p))),
        }
    }

    /// Post a comment and learn whether it was published or held for a moderator. A comment
    /// a market's rules forbid is refused with `moderation_blocked` (1019); the error's
    /// `rule` names the rule.
    pub async fn send_comment(
        &self,
        room: impl Into<RoomId>,
        text: impl Into<String>,
    ) -> Result<CommentOutcome, ClientError> {
        match self
            .request(Command::Comment {
                room: room.into(),
                text: text.into(),
            })
            .await?
        {
            ReplyBody::Published(p) => Ok(CommentOutcome::Published(p.position)),
            ReplyBody::Pending(p) => Ok(CommentOutcome::Held(p.pending)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Read comments in `lang` from now on (every room of this client, and after reconnects).
    /// The server answers `unsupported_language` (1018) for a language it does not translate
    /// into.
    pub async fn set_language(&self, lang: impl Into<String>) -> Result<(), ClientError> {
        let lang = lang.into();
        self.request(Command::SetLanguage { lang: lang.clone() })
            .await?;
        if let Ok(mut l) = self.shared.lang.lock() {
            *l = Some(lang);
        }
        Ok(())
    }

    /// The language this client asks for (its option, or the last `set_language`).
    pub fn language(&self) -> Option<String> {
        self.shared.lang.lock().ok().and_then(|l| l.clone())
    }

    /// Publish a held comment from the room's moderator queue (staff).
    pub async fn approve_comment(
        &self,
        room: impl Into<RoomId>,
        held: impl Into<String>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::ApproveComment {
            room: room.into(),
            held: held.into(),
        })
        .await
    }

    /// Drop a held comment from the room's moderator queue (staff).
    pub async fn reject_comment(
        &self,
        room: impl Into<RoomId>,
        held: impl Into<String>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::RejectComment {
            room: room.into(),
            held: held.into(),
        })
        .await
    }

    /// The room's moderator queue, oldest first (staff).
    pub async fn moderation_queue(
        &self,
        room: impl Into<RoomId>,
    ) -> Result<Vec<HeldComment>, ClientError> {
        match self
            .request(Command::ModerationQueue { room: room.into() })
            .await?
        {
            ReplyBody::Queue(q) => Ok(q.held),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub async fn like(&self, room: impl Into<RoomId>, count: u32) -> Result<(), ClientError> {
        self.request(Command::Like {
            room: room.into(),
            count,
        })
        .await
        .map(|_| ())
    }

    pub async fn announce(
        &self,
        room: impl Into<RoomId>,
        text: impl Into<String>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::Announce {
            room: room.into(),
            text: text.into(),
        })
        .await
    }

    pub async fn pin(
        &self,
        room: impl Into<RoomId>,
        text: impl Into<String>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::Pin {
            room: room.into(),
            text: text.into(),
        })
        .await
    }

    pub async fn unpin(&self, room: impl Into<RoomId>) -> Result<StreamPosition, ClientError> {
        self.publish(Command::Unpin { room: room.into() }).await
    }

    pub async fn delete_comment(
        &self,
        room: impl Into<RoomId>,
        offset: Offset,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::DeleteComment {
            room: room.into(),
            offset,
        })
        .await
    }

    pub async fn mute(
        &self,
        room: impl Into<RoomId>,
        user: impl Into<UserId>,
        seconds: Option<u64>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::Mute {
            room: room.into(),
            user: user.into(),
            seconds,
        })
        .await
    }

    pub async fn unmute(
        &self,
        room: impl Into<RoomId>,
        user: impl Into<UserId>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::Unmute {
            room: room.into(),
            user: user.into(),
        })
        .await
    }

    pub async fn ban(
        &self,
        room: impl Into<RoomId>,
        user: impl Into<UserId>,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::Ban {
            room: room.into(),
            user: user.into(),
        })
        .await
    }

    pub async fn slow_mode(
        &self,
        room: impl Into<RoomId>,
        seconds: u64,
    ) -> Result<StreamPosition, ClientError> {
        self.publish(Command::SlowMode {
            room: room.into(),
            seconds,
        })
        .await
    }

    /// Pin a catalog product in the room's showcase (hosts and admins).
    pub async fn pin_product(
        &self,
        room: impl Into<RoomId>,
        product: impl Into<ProductId>,
    ) -> Result<(), ClientError> {
        self.request(Command::PinProduct {
            room: room.into(),
            product: product.into(),
        })
        .await
        .map(|_| ())
    }

    pub async fn unpin_product(&self, room: impl Into<RoomId>) -> Result<(), ClientError> {
        self.request(Command::UnpinProduct { room: room.into() })
            .await
            .map(|_| ())
    }

    /// Launch a flash sale (hosts and admins).
    pub async fn start_sale(
        &self,
        room: impl Into<RoomId>,
        sale: SaleSpec,
    ) -> Result<SaleView, ClientError> {
        match self
            .request(Command::StartSale {
                room: room.into(),
                sale,
            })
            .await?
        {
            ReplyBody::Sale(s) => Ok(*s.sale),
            other => Err(ClientError::Protocol(format!(
                "expected a sale, got {other:?}"
            ))),
        }
    }

    pub async fn end_sale(
        &self,
        room: impl Into<RoomId>,
        sale: impl Into<SaleId>,
    ) -> Result<SaleView, ClientError> {
        match self
            .request(Command::EndSale {
                room: room.into(),
                sale: sale.into(),
            })
            .await?
        {
            ReplyBody::Sale(s) => Ok(*s.sale),
            other => Err(ClientError::Protocol(format!(
                "expected a sale, got {other:?}"
            ))),
        }
    }

    /// Reserve `quantity` units. Make one `key` per Buy press ([`new_idempotency_key`]) and
    /// pass the same key when retrying that press: the server answers a retried key with the
    /// original reservation (`replayed: true`), never a second one.
    pub async fn buy(
        &self,
        room: impl Into<RoomId>,
        sale: impl Into<SaleId>,
        quantity: u32,
        key: impl Into<String>,
    ) -> Result<ReservationReply, ClientError> {
        match self
            .request(Command::Buy {
                room: room.into(),
                sale: sale.into(),
                quantity,
                key: key.into(),
            })
            .await?
        {
            ReplyBody::Reservation(r) => Ok(r),
            other => Err(ClientError::Protocol(format!(
                "expected a reservation, got {other:?}"
            ))),
        }
    }

    /// Give a reservation back before paying.
    pub async fn cancel_reservation(
        &self,
        room: impl Into<RoomId>,
        reservation: impl Into<ReservationId>,
    ) -> Result<ReservationView, ClientError> {
        match self
            .request(Command::CancelReservation {
                room: room.into(),
                reservation: reservation.into(),
            })
            .await?
        {
            ReplyBody::Reservation(r) => Ok(r.reservation),
            other => Err(ClientError::Protocol(format!(
                "expected a reservation, got {other:?}"
            ))),
        }
    }

    /// Milliseconds until `at` (server time, Unix ms) on the server's clock, using the
    /// estimated clock offset: every client counts down to the same instant. Negative once
    /// the instant has passed.
    pub fn ms_until(&self, at: u64) -> f64 {
        at as f64 - self.server_now_ms()
    }

    /// Send one clock sample now and return the resulting estimate.
    pub async fn sync_clock(&self) -> Result<ClockEstimate, ClientError> {
        self.request(Command::Ping { t: Some(unix_ms()) }).await?;
        self.clock_offset()
            .ok_or_else(|| ClientError::Protocol("no clock sample".into()))
    }

    /// The flash-sale HTTP reads (reservation state, a sale, a room's sales) on the client's
    /// first node, with its token and request timeout.
    pub fn http(&self) -> Result<crate::HttpClient, ClientError> {
        Ok(crate::HttpClient::new(&self.url, self.token.clone())?.with_timeout(self.timeout))
    }

    /// Stop the client: close the socket and end the event stream.
    pub fn close(&self) {
        let _ = self.tx.send(Request::Close);
    }
}

/// A room the client is in: where it is in the stream.
struct TrackedRoom {
    position: Option<StreamPosition>,
}

enum InFlight {
    User(Pending),
    /// A join the application asked for: on error the room is forgotten.
    /// A join the user asked for, with the position it resumes from (if any).
    Join(RoomId, Option<StreamPosition>, Pending),
    Rejoin(RoomId),
    Clock {
        sent: f64,
        user: Option<Pending>,
    },
}

enum SessionEnd {
    /// Reconnect (after backoff); the close code, if any.
    Reconnect(Option<u16>, String),
    Terminal(Option<u16>, String),
    Stopped,
}

struct Driver {
    opts: ClientOptions,
    requests: mpsc::UnboundedReceiver<Request>,
    events: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    stats: Arc<ClientStats>,
    rooms: HashMap<RoomId, TrackedRoom>,
    next_id: u64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Driver {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut url_index = 0usize;
        loop {
            let url = self.opts.urls[url_index % self.opts.urls.len().max(1)].clone();
            let end = match self.connect(&url).await {
                Ok(ws) => {
                    attempt = 0;
                    self.stats.connects.fetch_add(1, Relaxed);
                    self.session(ws).await
                }
                Err(e) => SessionEnd::Reconnect(None, e),
            };
            let (code, reason) = match end {
                SessionEnd::Stopped => return,
                SessionEnd::Terminal(code, reason) => {
                    let _ = self.events.send(Event::Closed { code, reason }).await;
                    return;
                }
                SessionEnd::Reconnect(code, reason) => (code, reason),
            };
            attempt += 1;
            let give_up = self
                .opts
                .max_reconnect_attempts
                .is_some_and(|max| attempt > max);
            let _ = self
                .events
                .send(Event::Disconnected {
                    code,
                    reason: reason.clone(),
                    reconnecting: !give_up,
                })
                .await;
            if give_up {
                let _ = self.events.send(Event::Closed { code, reason }).await;
                return;
            }
            url_index += 1;
            let delay = backoff(attempt, self.opts.min_backoff, self.opts.max_backoff);
            // Keep answering commands while waiting: they fail fast instead of hanging.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    req = self.requests.recv() => match req {
                        None | Some(Request::Close) => return,
                        Some(Request::Command { reply, .. }) => {
                            let _ = reply.send(Err(ClientError::Disconnected));
                        }
                    }
                }
            }
        }
    }

    async fn connect(&self, url: &str) -> Result<Ws, String> {
        let mut target = if self.opts.token_in_query {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}token={}", self.opts.token)
        } else {
            url.to_owned()
        };
        let lang = self.shared.lang.lock().ok().and_then(|l| l.clone());
        if let Some(lang) = lang.filter(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            let sep = if target.contains('?') { '&' } else { '?' };
            target = format!("{target}{sep}lang={lang}");
        }
        let mut request = target
            .into_client_request()
            .map_err(|e| format!("bad url {url}: {e}"))?;
        if !self.opts.token_in_query {
            let value = format!("Bearer {}", self.opts.token)
                .parse()
                .map_err(|_| "token is not a valid header value".to_owned())?;
            request.headers_mut().insert("authorization", value);
        }
        let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("no address for {host}"))?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        if let Some(ip) = self.opts.bind {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let config = WebSocketConfig::default()
            .read_buffer_size(self.opts.read_buffer_bytes)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .map_err(|e| format!("handshake {url}: {e}"))?;
        Ok(ws)
    }

    fn frame(&mut self, command: Command) -> (u64, String) {
        let id = self.next_id;
        self.next_id += 1;
        let text = serde_json::to_string(&ClientFrame { id, command }).unwrap_or_default();
        (id, text)
    }

    async fn session(&mut self, mut ws: Ws) -> SessionEnd {
        let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
        // Rejoin every room from its last position.
        let rejoin: Vec<(RoomId, Option<StreamPosition>)> = self
            .rooms
            .iter()
            .map(|(r, t)| (r.clone(), t.position.clone()))
            .collect();
        for (room, since) in rejoin {
            let (id, text) = self.frame(Command::Join {
                room: room.clone(),
                since,
            });
            in_flight.insert(id, InFlight::Rejoin(room));
            if ws.send(Message::text(text)).await.is_err() {
                return SessionEnd::Reconnect(None, "send failed".into());
            }
        }
        // A quick burst of clock samples, then one per interval.
        let mut burst_left = self.opts.clock_burst;
        let next_sample = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(next_sample);
        let end = loop {
            tokio::select! {
                req = self.requests.recv() => match req {
                    None | Some(Request::Close) => {
                        let _ = ws.close(None).await;
                        break SessionEnd::Stopped;
                    }
                    Some(Request::Command { command, reply }) => {
                        let sent = unix_ms();
                        let waiter = match &command {
                            Command::Join { room, since } => {
                                self.rooms.entry(room.clone()).or_insert(TrackedRoom { position: None });
                                InFlight::Join(room.clone(), since.clone(), reply)
                            }
                            Command::Leave { room } => {
                                // Forget it now so a reconnect does not rejoin it.
                                self.rooms.remove(room);
                                InFlight::User(reply)
                            }
                            Command::Ping { .. } => InFlight::Clock { sent, user: Some(reply) },
                            _ => InFlight::User(reply),
                        };
                        let (id, text) = self.frame(command);
                        in_flight.insert(id, waiter);
                        if ws.send(Message::text(text)).await.is_err() {
                            break SessionEnd::Reconnect(None, "send failed".into());
                        }
                    }
                },
                _ = &mut next_sample => {
                    let delay = if burst_left > 0 {
                        burst_left -= 1;
                        Duration::from_millis(50)
                    } else {
                        self.opts.ping_interval
                    };
                    next_sample.as_mut().reset(tokio::time::Instant::now() + delay);
                    let sent = unix_ms();
                    let (id, text) = self.frame(Command::Ping { t: Some(sent) });
                    in_flight.insert(id, InFlight::Clock { sent, user: None });
                    if ws.send(Message::text(text)).await.is_err() {
                        break SessionEnd::Reconnect(None, "send failed".into());
                    }
                }
                msg = ws.next() => {
                    let msg = match msg {
                        None => break SessionEnd::Reconnect(None, "connection ended".into()),
                        Some(Err(e)) => break SessionEnd::Reconnect(None, e.to_string()),
                        Some(Ok(m)) => m,
                    };
                    match msg {
                        Message::Text(text) => {
                            for line in split_frame(text.as_str()) {
                                match serde_json::from_str::<ServerFrame>(line) {
                                    Ok(frame) => {
                                        if let Some(end) = self.handle(frame, &mut in_flight).await {
                                            return self.finish(end, in_flight);
                                        }
                                    }
                                    Err(e) => tracing::warn!(error = %e, "unparseable server frame"),
                                }
                            }
                        }
                        Message::Close(frame) => {
                            let (code, reason) = frame
                                .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                                .unwrap_or((None, "closed".into()));
                            let reconnect = code.is_none_or(close_code_reconnects);
                            break if reconnect { SessionEnd::Reconnect(code, reason) } else { SessionEnd::Terminal(code, reason) };
                        }
                        _ => {}
                    }
                }
            }
        };
        self.finish(end, in_flight)
    }

    fn finish(&mut self, end: SessionEnd, in_flight: HashMap<u64, InFlight>) -> SessionEnd {
        for (_, f) in in_flight {
            match f {
                InFlight::User(reply)
                | InFlight::Clock {
                    user: Some(reply), ..
                } => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                }
                _ => {}
            }
        }
        end
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    /// Handle one server frame; `Some` ends the session.
    async fn handle(
        &mut self,
        frame: ServerFrame,
        in_flight: &mut HashMap<u64, InFlight>,
    ) -> Option<SessionEnd> {
        match frame {
            ServerFrame::Reply(Reply { id, result }) => {
                let waiter = in_flight.remove(&id)?;
                match waiter {
                    InFlight::Clock { sent, user } => {
                        let received = unix_ms();
                        if let ReplyResult::Ok(ReplyBody::Pong(PongReply {
                            server_recv,
                            server_send,
                            ..
                        })) = &result
                        {
                            let estimate = ClockEstimate {
                                offset_ms: ((server_recv - sent) + (server_send - received)) / 2.0,
                                rtt_ms: (received - sent) - (server_send - server_recv),
                            };
                            if let Ok(mut samples) = self.shared.clock.lock() {
                                if samples.len() == CLOCK_SAMPLES {
                                    samples.pop_front();
                                }
                                samples.push_back(estimate);
                            }
                        }
                        if let Some(user) = user {
                            let _ = user.send(into_result(result));
                        }
                    }
                    InFlight::User(reply) => {
                        let _ = reply.send(into_result(result));
                    }
                    InFlight::Join(room, since, reply) => {
                        match &result {
                            ReplyResult::Ok(ReplyBody::Joined(j)) => {
                                // A recovered resume: the missed events follow the reply and
                                // move the position on from `since`; otherwise start at the
                                // room's position.
                                let position = match (j.recovered, since) {
                                    (Some(true), Some(since)) => since,
                                    _ => j.position.clone(),
                                };
                                self.rooms.insert(
                                    j.room.clone(),
                                    TrackedRoom {
                                        position: Some(position),
                                    },
                                );
                                self.emit(Event::Joined {
                                    room: j.room.clone(),
                                    reply: j.clone(),
                                })
                                .await;
                            }
                            // Already joined: keep tracking the room as before.
                            ReplyResult::Error(e)
                                if e.code == crate::protocol::ErrorCode::AlreadyJoined.code() => {}
                            _ => {
                                if self.rooms.get(&room).is_some_and(|t| t.position.is_none()) {
                                    self.rooms.remove(&room);
                                }
                            }
                        }
                        let _ = reply.send(into_result(result));
                    }
                    InFlight::Rejoin(room) => match result {
                        ReplyResult::Ok(ReplyBody::Joined(j)) => {
                            if j.recovered != Some(true) {
                                if j.recovered == Some(false) {
                                    self.stats.unrecovered.fetch_add(1, Relaxed);
                                }
                                self.rooms.insert(
                                    room.clone(),
                                    TrackedRoom {
                                        position: Some(j.position.clone()),
                                    },
                                );
                            }
                            self.emit(Event::Joined { room, reply: j }).await;
                        }
                        ReplyResult::Error(e) if ferry_error_is_temporary(e.code) => {
                            return Some(SessionEnd::Reconnect(
                                None,
                                format!("rejoin {room}: {}", e.message),
                            ));
                        }
                        ReplyResult::Error(e) => {
                            self.rooms.remove(&room);
                            self.emit(Event::Removed {
                                room,
                                code: e.code,
                                reason: e.message,
                            })
                            .await;
                        }
                        ReplyResult::Ok(other) => {
                            return Some(SessionEnd::Reconnect(
                                None,
                                format!("unexpected rejoin reply {other:?}"),
                            ));
                        }
                    },
                }
                None
            }
            ServerFrame::Push(push) => {
                match push {
                    Push::Event {
                        room,
                        epoch,
                        offset,
                        event,
                    } => {
                        let position = StreamPosition { epoch, offset };
                        let tracked = self.rooms.get_mut(&room)?;
                        if let Some(last) = &tracked.position {
                            if last.epoch == position.epoch {
                                if position.offset <= last.offset {
                                    self.stats.duplicates.fetch_add(1, Relaxed);
                                    return None;
                                }
                                if position.offset != last.offset.next() {
                                    self.stats.gaps.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        tracked.position = Some(position.clone());
                        self.stats.events.fetch_add(1, Relaxed);
                        self.emit(Event::Room {
                            room,
                            position,
                            event,
                        })
                        .await;
                    }
                    Push::Viewers { room, count } => {
                        self.emit(Event::Viewers { room, count }).await
                    }
                    Push::Left { room, code, reason } => {
                        self.rooms.remove(&room);
                        self.emit(Event::Removed { room, code, reason }).await;
                    }
                    Push::Connected {
                        node, user, lang, ..
                    } => self.emit(Event::Connected { node, user, lang }).await,
                }
                None
            }
        }
    }
}

fn ferry_error_is_temporary(code: u16) -> bool {
    (1500..2000).contains(&code)
}

fn into_result(result: ReplyResult) -> Result<ReplyBody, ClientError> {
    match result {
        ReplyResult::Ok(b) => Ok(b),
        ReplyResult::Error(e) => Err(ClientError::Server(e)),
    }
}

/// Exponential backoff with full jitter in [d/2, d].
fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let d = exp.min(max);
    let half = d / 2;
    half + Duration::from_secs_f64(rand::rng().random::<f64>() * half.as_secs_f64())
}

/// A fresh idempotency key for one Buy press (128 random bits, hex).
pub fn new_idempotency_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 1..20 {
            let d = backoff(attempt, min, max);
            let ceiling = min.saturating_mul(1 << (attempt - 1).min(16)).min(max);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
    }
}
