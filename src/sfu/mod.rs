//! Live video: WHIP ingest (RFC 9725), WHEP playback, and the SFU that relays RTP from a
//! room's publisher to its viewers without transcoding.
//!
//! Layers, outside in:
//! - [`api`]: the HTTP routes (`/whip/{room}`, `/whep/{room}` and their session resources):
//!   auth, content types, ETag/If-Match, CORS, status codes. It builds each peer's `Rtc` and
//!   SDP answer, then hands the peer to the driver.
//! - [`driver`]: ONE tokio task owns the UDP socket and every `Rtc` (str0m is sans-IO): it
//!   routes datagrams to peers, drives their timers, turns str0m events into router inputs and
//!   router decisions into `write_rtp` calls, and answers the HTTP layer's commands.
//! - [`router`]: the forwarding core, sans-IO: who gets which packet with which numbers,
//!   keyframe request merging and throttling, simulcast layer choice, room live/ended.
//! - [`sdpfrag`]: trickle ICE fragments (PATCH bodies), sans-IO.
//!
//! - [`live`]: the room's live state in the engine: the lease of the node hosting the
//!   publisher (renewed while it is connected, so a crash ends the stream), the stream events,
//!   and the sweep of lapsed leases.
//!
//! Room events: a publisher connecting publishes `stream_started`, the last one leaving
//! publishes `stream_ended` (through the hub, like every room event), and the room's state
//! carries `live` for late joiners, and the hosting node for WHEP redirects.

pub mod api;
pub mod driver;
pub mod live;
pub mod metrics;
pub mod router;
pub mod sdpfrag;

use crate::config::SfuConfig;
use crate::engine::LiveHost;
use crate::hub::Hub;
use ferry_client::protocol::{RoomId, UserRef};
use metrics::SfuMetrics;
use router::{EndReason, RouterConfig};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use str0m::{Candidate, Rtc};
use tokio::sync::{mpsc, oneshot};

/// Which endpoint a session belongs to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// WHIP: sends media into the room.
    Publisher,
    /// WHEP: plays the room's media.
    Subscriber,
}

impl SessionKind {
    pub fn path(self) -> &'static str {
        match self {
            SessionKind::Publisher => "whip",
            SessionKind::Subscriber => "whep",
        }
    }
}

/// Who may act on an existing session resource (PATCH, DELETE).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
}

/// A session the HTTP layer asks the driver to adopt.
pub struct NewSession {
    pub kind: SessionKind,
    /// The unguessable id in the session URL.
    pub id: String,
    pub room: RoomId,
    pub user: UserRef,
    pub rtc: Box<Rtc>,
    /// The client's offer as accepted, kept for ICE restarts.
    pub offer_sdp: String,
    pub etag: String,
}

/// Why a session was not adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the room already has a publisher")]
    RoomBusy,
    #[error("this node is at its session limit (sfu.max_sessions)")]
    Full,
    #[error("the server is shutting down")]
    Draining,
}

/// A PATCH the driver applies to a session.
#[derive(Debug)]
pub struct PatchRequest {
    pub kind: SessionKind,
    pub room: RoomId,
    pub id: String,
    pub caller: Caller,
    /// `If-Match` value (without quotes handling: compared as sent, `*` allowed).
    pub if_match: String,
    pub frag: sdpfrag::SdpFrag,
}

/// What a successful PATCH answers.
#[derive(Debug, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Trickle candidates added: 204.
    Trickled,
    /// ICE restarted: 200 with this fragment and the new ETag.
    Restarted { fragment: String, etag: String },
}

/// Why a PATCH or DELETE failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no such session")]
    NotFound,
    #[error("the session belongs to another user")]
    Forbidden,
    #[error("If-Match does not match the session's ETag")]
    PreconditionFailed,
    #[error("{0}")]
    Unprocessable(String),
}

/// Commands from the HTTP layer to the driver.
pub enum Command {
    Adopt {
        session: NewSession,
        reply: oneshot::Sender<Result<(), AdmitError>>,
    },
    Patch {
        request: PatchRequest,
        reply: oneshot::Sender<Result<PatchOutcome, SessionError>>,
    },
    Delete {
        kind: SessionKind,
        room: RoomId,
        id: String,
        caller: Caller,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// Close every session (shutdown); replies when done.
    Drain { reply: oneshot::Sender<()> },
}

/// Room life-cycle events the driver hands to the publishing task.
#[derive(Debug)]
pub enum Lifecycle {
    Started { room: RoomId, by: UserRef },
    Ended { room: RoomId, reason: EndReason },
}

/// Why the SFU could not start.
#[derive(Debug, thiserror::Error)]
pub enum SfuStartError {
    #[error("cannot bind sfu.udp_listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The SFU as the rest of the server sees it: a command channel to the driver task, the
/// settings the HTTP layer needs to build peers, and the metrics.
pub struct Sfu {
    pub cfg: SfuConfig,
    commands: mpsc::Sender<Command>,
    pub metrics: Arc<SfuMetrics>,
    /// Where the UDP socket is bound.
    pub local_addr: SocketAddr,
    /// The ICE candidates every peer is offered.
    candidates: Vec<SocketAddr>,
    /// This node as live leases name it (WHEP redirects compare and use it).
    pub host: LiveHost,
}

impl Sfu {
    /// Bind the UDP socket, start the driver and the task that keeps rooms' live state
    /// (`host`: this node's id and public URL).
    pub async fn start(
        cfg: SfuConfig,
        hub: Arc<Hub>,
        host: LiveHost,
    ) -> Result<Arc<Sfu>, SfuStartError> {
        let socket = bind_udp(cfg.udp_listen, cfg.socket_buffer_bytes).map_err(|source| {
            SfuStartError::Bind {
                addr: cfg.udp_listen,
                source,
            }
        })?;
        let local_addr = socket.local_addr().map_err(|source| SfuStartError::Bind {
            addr: cfg.udp_listen,
            source,
        })?;
        let candidates = candidate_addresses(&cfg, local_addr);
        let metrics = Arc::new(SfuMetrics::default());
        let (commands, rx) = mpsc::channel(1024);
        let (life_tx, life_rx) = mpsc::unbounded_channel();
        let router = RouterConfig {
            keyframe_interval: cfg.keyframe_interval,
            max_publishers_per_room: cfg.max_publishers_per_room,
            initial_bitrate_bps: cfg.initial_bitrate_bps,
            up_switch_delay: cfg.up_switch_delay,
            viewer_linger: cfg.viewer_linger,
            ..RouterConfig::default()
        };
        let driver = driver::Driver::new(
            socket,
            router,
            driver::DriverConfig {
                max_sessions: cfg.max_sessions,
                connect_timeout: cfg.connect_timeout,
                bwe: cfg.bwe,
            },
            metrics.clone(),
            life_tx,
            &candidates,
        );
        tokio::spawn(driver.run(rx));
        let live_cfg = live::LiveConfig {
            host: host.clone(),
            lease: cfg.live_lease,
        };
        tokio::spawn(live::run(hub, live_cfg, metrics.clone(), life_rx));
        tracing::info!(%local_addr, candidates = ?candidates, "sfu listening (udp)");
        Ok(Arc::new(Sfu {
            cfg,
            commands,
            metrics,
            local_addr,
            candidates,
            host,
        }))
    }

    /// A new peer connection for one session: ICE-lite, RTP mode (packets are forwarded, not
    /// re-packetized), VP8/H.264/Opus, our candidates; viewers estimate bandwidth.
    pub fn new_rtc(&self, kind: SessionKind) -> Rtc {
        let mut b = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_vp8(true)
            .enable_h264(true)
            .enable_opus(true, false)
            .set_stats_interval(Some(std::time::Duration::from_secs(1)));
        if kind == SessionKind::Subscriber && self.cfg.bwe {
            b = b.enable_bwe(Some(str0m::bwe::Bitrate::bps(self.cfg.initial_bitrate_bps)));
        }
        let mut rtc = b.build(Instant::now());
        for addr in &self.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "bad ICE candidate address"),
            }
        }
        rtc
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Hand a session to the driver. `None`: the driver is gone (socket failed).
    pub async fn adopt(&self, session: NewSession) -> Option<Result<(), AdmitError>> {
        self.call(|reply| Command::Adopt { session, reply }).await
    }

    pub async fn patch(&self, request: PatchRequest) -> Option<Result<PatchOutcome, SessionError>> {
        self.call(|reply| Command::Patch { request, reply }).await
    }

    pub async fn delete(
        &self,
        kind: SessionKind,
        room: RoomId,
        id: String,
        caller: Caller,
    ) -> Option<Result<(), SessionError>> {
        self.call(|reply| Command::Delete {
            kind,
            room,
            id,
            caller,
            reply,
        })
        .await
    }

    /// Close every session (graceful shutdown): publishers' rooms get `stream_ended`.
    pub async fn drain(&self) {
        let _ = self.call(|reply| Command::Drain { reply }).await;
    }

    /// Whether the UDP socket works (for `/readyz`).
    pub fn ready(&self) -> bool {
        !self
            .metrics
            .socket_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The UDP socket with large buffers: a video burst to many viewers must not overflow them.
fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<tokio::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::warn!(error = %e, "cannot set the SFU socket's receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::warn!(error = %e, "cannot set the SFU socket's send buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// The addresses peers are told to send to.
fn candidate_addresses(cfg: &SfuConfig, local: SocketAddr) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for a in &cfg.public_addresses {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            out.push(sa);
        } else if let Ok(ip) = a.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, local.port()));
        }
    }
    if !out.is_empty() {
        return out;
    }
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    // Bound to every interface: offer the address this host routes from by default. A UDP
    // `connect` only picks the route; nothing is sent.
    let probe = std::net::UdpSocket::bind((IpAddr::from([0, 0, 0, 0]), 0))
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => vec![SocketAddr::new(a.ip(), local.port())],
        _ => {
            tracing::warn!("no default route and no sfu.public_addresses: offering 127.0.0.1 only");
            vec![SocketAddr::new(IpAddr::from([127, 0, 0, 1]), local.port())]
        }
    }
}
