//! The SFU driver: one tokio task that owns the UDP socket and every peer's `Rtc`.
//!
//! str0m is sans-IO, so this task is the only thing that moves bytes and time into peers:
//! it reads datagrams (routing each to its peer by source address, or by ICE credentials for
//! a new address), feeds them and timeouts in, drains every peer's output (datagrams to send,
//! events), and translates events into [`Router`] inputs and the router's decisions into
//! `write_rtp` calls on viewers' send streams. HTTP handlers talk to it with [`Command`]s.
//!
//! Per-packet work per viewer: one hash lookup of the viewer, a payload-type lookup in a
//! small cache, and `write_rtp` with the publisher's payload (`Arc<[u8]>`, shared, not
//! copied). The forward list is a reused buffer. Viewers written to are polled once per
//! batch of received datagrams, so their datagrams go out together.
//!
//! Must not: block (no sync I/O, no locks held across awaits), await the hub or the engine
//! (room events go to a separate task through a channel), or parse HTTP.

use super::metrics::SfuMetrics;
use super::router::{
    EndReason, Forward, Kind, PacketMeta, PeerId, Router, RouterConfig, RouterOutput,
};
use super::sdpfrag::{answer_fragment, with_credentials};
use super::{
    AdmitError, Caller, Command, Lifecycle, NewSession, PatchOutcome, PatchRequest, SessionError,
    SessionKind,
};
use ferry_client::protocol::{RoomId, UserRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Settings of the driver itself.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub max_sessions: usize,
    pub connect_timeout: Duration,
    pub bwe: bool,
}

/// Datagrams read before the written-to peers are polled and their output sent.
const RECV_BATCH: usize = 64;
/// Datagrams queued while the socket's send buffer is full; beyond, they are dropped.
const MAX_OUTBOX: usize = 16 * 1024;
/// Largest datagram (MTU-sized RTP plus slack).
const MAX_DATAGRAM: usize = 2000;

/// An incoming stream of a publisher: which track and layer its SSRC carries.
#[derive(Debug)]
struct InStream {
    ssrc: Ssrc,
    track: u8,
    layer: u8,
    /// RTP timestamp of the last packet seen (an H.264 keyframe starts a new timestamp).
    last_ts: Option<u32>,
}

/// One WebRTC peer (a WHIP or WHEP session).
struct Peer {
    id: PeerId,
    kind: SessionKind,
    session: String,
    room: RoomId,
    user: UserRef,
    rtc: Rtc,
    offer_sdp: String,
    etag: String,
    /// Track index (router numbering) → mid and kind, in the order str0m announced them.
    tracks: Vec<(Mid, Kind)>,
    /// Publishers: per track, the simulcast rids in layer order (`[None]` without simulcast).
    rids: Vec<Vec<Option<Rid>>>,
    in_streams: Vec<InStream>,
    /// Publishers: payload type → codec parameters.
    codecs: Vec<(Pt, Option<PayloadParams>)>,
    /// Viewers: (source peer, source payload type) → our payload type for it.
    pt_map: Vec<(PeerId, Pt, Option<Pt>)>,
    /// Where this peer's datagrams come from (for the routing index).
    addrs: Vec<SocketAddr>,
    next_timeout: Instant,
    /// Written to since the last poll.
    dirty: bool,
    connected: bool,
    created: Instant,
    /// Cumulative NACK counters per (mid, rid) from str0m's stats, to add deltas.
    nacks: Vec<(Mid, Option<Rid>, bool, u64)>,
}

pub struct Driver {
    socket: UdpSocket,
    /// The addresses datagrams are handed to str0m as received at: our first ICE candidate
    /// of the sender's address family (see [`LocalAddrs`]).
    local_addr: LocalAddrs,
    router: Router,
    cfg: DriverConfig,
    metrics: Arc<SfuMetrics>,
    lifecycle: mpsc::UnboundedSender<Lifecycle>,
    peers: HashMap<PeerId, Peer>,
    sessions: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    next_peer: u64,
    forwards: Vec<Forward>,
    dirty: Vec<PeerId>,
    router_timeout: Instant,
    draining: bool,
    last_stats: Instant,
    /// Our ICE candidates as SDP attribute values (for ICE restart answers).
    candidate_lines: Vec<String>,
    /// Datagrams the socket would not take yet (kept in order).
    outbox: std::collections::VecDeque<Transmit>,
    /// Reused list of peers whose timer is due.
    scratch: Vec<PeerId>,
}

/// Where a datagram is said to have arrived. str0m discards STUN that arrives "at" an address
/// none of its local candidates has, and the socket's own address is not one when it is bound
/// to 0.0.0.0 (the default) or sits behind NAT (`sfu.public_addresses`). Without the real
/// destination (no IP_PKTINFO), the first candidate of the sender's family is the best guess:
/// it keeps IPv4 and IPv6 candidates apart; several candidates of one family (public and
/// LAN) still all pair with the first.
#[derive(Clone, Copy, Debug)]
struct LocalAddrs {
    v4: Option<SocketAddr>,
    v6: Option<SocketAddr>,
    /// The first candidate (or the socket's address without candidates).
    first: SocketAddr,
}

impl LocalAddrs {
    fn new(candidates: &[SocketAddr], socket: SocketAddr) -> LocalAddrs {
        LocalAddrs {
            v4: candidates.iter().copied().find(SocketAddr::is_ipv4),
            v6: candidates.iter().copied().find(SocketAddr::is_ipv6),
            first: candidates.first().copied().unwrap_or(socket),
        }
    }

    /// A dual-stack socket reports IPv4 senders as IPv4-mapped IPv6: they count as IPv4.
    fn for_sender(&self, from: SocketAddr) -> SocketAddr {
        let family = if from.ip().to_canonical().is_ipv4() {
            self.v4
        } else {
            self.v6
        };
        family.unwrap_or(self.first)
    }
}

impl Driver {
    pub fn new(
        socket: UdpSocket,
        router: RouterConfig,
        cfg: DriverConfig,
        metrics: Arc<SfuMetrics>,
        lifecycle: mpsc::UnboundedSender<Lifecycle>,
        candidates: &[SocketAddr],
    ) -> Self {
        let now = Instant::now();
        let local_addr = LocalAddrs::new(
            candidates,
            socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        );
        Self {
            socket,
            local_addr,
            router: Router::new(router),
            cfg,
            metrics,
            lifecycle,
            peers: HashMap::new(),
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            next_peer: 1,
            forwards: Vec::with_capacity(1024),
            dirty: Vec::new(),
            router_timeout: now,
            draining: false,
            last_stats: now,
            outbox: std::collections::VecDeque::new(),
            scratch: Vec::new(),
            candidate_lines: candidates
                .iter()
                .filter_map(|a| Candidate::host(*a, "udp").ok())
                .map(|c| c.to_sdp_string())
                .collect(),
        }
    }

    /// The task: until every command sender is gone.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                r = self.socket.recv_from(&mut buf) => {
                    match r {
                        Ok((n, from)) => {
                            let now = Instant::now();
                            self.handle_datagram(now, from, &buf[..n]);
                            // Drain what else is waiting before polling viewers.
                            for _ in 1..RECV_BATCH {
                                match self.socket.try_recv_from(&mut buf) {
                                    Ok((n, from)) => self.handle_datagram(now, from, &buf[..n]),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => self.socket_error(&e),
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            self.drive_timeouts(now);
            self.flush_dirty(now);
            self.handle_router_outputs(now);
            self.flush_dirty(now);
            self.flush_outbox().await;
            if now.saturating_duration_since(self.last_stats) >= Duration::from_secs(1) {
                self.last_stats = now;
                self.drop_stale(now);
                self.publish_stats(now);
                self.flush_dirty(now);
                self.flush_outbox().await;
            }
        }
        tracing::info!("sfu driver stopped");
    }

    fn socket_error(&mut self, e: &std::io::Error) {
        // ICMP port unreachable from a vanished peer surfaces as ConnectionRefused on Linux:
        // not the socket's fault.
        if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::WouldBlock
        ) {
            return;
        }
        tracing::error!(error = %e, "sfu udp socket failed");
        self.metrics.socket_failed.store(true, Relaxed);
    }

    fn next_deadline(&self) -> Instant {
        let mut d = self.router_timeout;
        for p in self.peers.values() {
            d = d.min(p.next_timeout);
        }
        // Never sleep past a second: stats and connect timeouts are checked from here.
        d.min(Instant::now() + Duration::from_secs(1))
    }

    fn alloc_peer_id(&mut self) -> PeerId {
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        id
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Adopt { session, reply } => {
                let r = self.adopt(now, session);
                let _ = reply.send(r);
            }
            Command::Patch { request, reply } => {
                let r = self.patch(now, request);
                let _ = reply.send(r);
            }
            Command::Delete {
                kind,
                room,
                id,
                caller,
                reply,
            } => {
                let r = self.find_session(kind, &room, &id, &caller).map(|peer| {
                    self.remove_peer(now, peer, EndReason::Left);
                });
                let _ = reply.send(r);
            }
            Command::Drain { reply } => {
                self.draining = true;
                let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                for id in ids {
                    self.remove_peer(now, id, EndReason::Shutdown);
                }
                let _ = reply.send(());
            }
        }
    }

    fn adopt(&mut self, now: Instant, s: NewSession) -> Result<(), AdmitError> {
        if self.draining {
            return Err(AdmitError::Draining);
        }
        if self.peers.len() >= self.cfg.max_sessions {
            return Err(AdmitError::Full);
        }
        let id = self.alloc_peer_id();
        match s.kind {
            SessionKind::Publisher => {
                if self
                    .router
                    .add_publisher(now, id, &s.room, s.user.id.as_str())
                    .is_err()
                {
                    return Err(AdmitError::RoomBusy);
                }
                self.metrics.publishers.fetch_add(1, Relaxed);
            }
            SessionKind::Subscriber => {
                self.router.add_subscriber(now, id, &s.room);
                self.metrics.subscribers.fetch_add(1, Relaxed);
            }
        }
        self.metrics.sessions_total.fetch_add(1, Relaxed);
        tracing::info!(peer = %id, kind = s.kind.path(), room = %s.room, user = %s.user.id, "sfu session adopted");
        self.sessions.insert(s.id.clone(), id);
        self.peers.insert(
            id,
            Peer {
                id,
                kind: s.kind,
                session: s.id,
                room: s.room,
                user: s.user,
                rtc: *s.rtc,
                offer_sdp: s.offer_sdp,
                etag: s.etag,
                tracks: Vec::new(),
                rids: Vec::new(),
                in_streams: Vec::new(),
                codecs: Vec::new(),
                pt_map: Vec::new(),
                addrs: Vec::new(),
                next_timeout: now,
                dirty: false,
                connected: false,
                created: now,
                nacks: Vec::new(),
            },
        );
        // The accepted offer's media events are waiting in the Rtc.
        self.mark_dirty(id);
        Ok(())
    }

    fn find_session(
        &self,
        kind: SessionKind,
        room: &RoomId,
        id: &str,
        caller: &Caller,
    ) -> Result<PeerId, SessionError> {
        let peer = self.sessions.get(id).ok_or(SessionError::NotFound)?;
        let p = self.peers.get(peer).ok_or(SessionError::NotFound)?;
        if p.kind != kind || &p.room != room {
            return Err(SessionError::NotFound);
        }
        if !caller.admin && p.user.id.as_str() != caller.user {
            return Err(SessionError::Forbidden);
        }
        Ok(*peer)
    }

    fn patch(&mut self, _now: Instant, req: PatchRequest) -> Result<PatchOutcome, SessionError> {
        let id = self.find_session(req.kind, &req.room, &req.id, &req.caller)?;
        let Some(p) = self.peers.get_mut(&id) else {
            return Err(SessionError::NotFound);
        };
        let current_ufrag = remote_ufrag(&p.offer_sdp).unwrap_or_default();
        let restart = req
            .frag
            .is_restart(&current_ufrag)
            .map_err(|e| SessionError::Unprocessable(e.to_string()))?;
        let wildcard = req.if_match.trim() == "*";
        if !wildcard && !etag_matches(&req.if_match, &p.etag) {
            return Err(SessionError::PreconditionFailed);
        }
        if wildcard && !restart {
            // RFC 9725: "*" is for ICE restarts; trickle must name the current ETag.
            return Err(SessionError::PreconditionFailed);
        }
        if restart {
            let (Some(ufrag), Some(pwd)) = (&req.frag.ufrag, &req.frag.pwd) else {
                return Err(SessionError::Unprocessable(
                    "an ICE restart needs a=ice-ufrag and a=ice-pwd".into(),
                ));
            };
            let sdp = with_credentials(&p.offer_sdp, ufrag, pwd);
            let offer = SdpOffer::from_sdp_string(&sdp)
                .map_err(|e| SessionError::Unprocessable(format!("restart offer: {e}")))?;
            p.rtc
                .sdp_api()
                .accept_offer(offer)
                .map_err(|e| SessionError::Unprocessable(format!("ICE restart refused: {e}")))?;
            p.offer_sdp = sdp;
            for c in &req.frag.candidates {
                if let Ok(c) = Candidate::from_sdp_string(c) {
                    p.rtc.add_remote_candidate(c);
                }
            }
            let creds = p.rtc.direct_api().local_ice_credentials();
            p.etag = new_etag();
            let mid = req
                .frag
                .mid
                .clone()
                .or_else(|| p.tracks.first().map(|t| t.0.to_string()));
            let fragment = answer_fragment(
                &creds.ufrag,
                &creds.pass,
                mid.as_deref(),
                &self.candidate_lines,
            );
            tracing::info!(peer = %id, "ice restart");
            // Old addresses may be gone; new ones are learned from STUN.
            self.mark_dirty(id);
            return Ok(PatchOutcome::Restarted {
                fragment,
                etag: self
                    .peers
                    .get(&id)
                    .map(|p| p.etag.clone())
                    .unwrap_or_default(),
            });
        }
        for c in &req.frag.candidates {
            match Candidate::from_sdp_string(c) {
                Ok(c) => p.rtc.add_remote_candidate(c),
                Err(e) => {
                    return Err(SessionError::Unprocessable(format!("bad candidate: {e}")));
                }
            }
        }
        self.mark_dirty(id);
        Ok(PatchOutcome::Trickled)
    }

    fn mark_dirty(&mut self, id: PeerId) {
        if let Some(p) = self.peers.get_mut(&id) {
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local_addr.for_sender(from),
                contents,
            },
        );
        let known = self
            .by_addr
            .get(&from)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let id = match known {
            Some(id) => id,
            None => {
                // Only STUN (first byte 0..=3, RFC 7983) can introduce a new address; anything
                // else from an unknown address is dropped without searching.
                if data.first().is_none_or(|b| *b > 3) {
                    return;
                }
                let Some(id) = self
                    .peers
                    .values()
                    .find(|p| p.rtc.accepts(&input))
                    .map(|p| p.id)
                else {
                    return;
                };
                self.by_addr.insert(from, id);
                if let Some(p) = self.peers.get_mut(&id) {
                    if !p.addrs.contains(&from) {
                        p.addrs.push(from);
                    }
                }
                id
            }
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if let Err(e) = p.rtc.handle_input(input) {
            tracing::debug!(peer = %id, error = %e, "peer input failed");
        }
        self.poll_peer(now, id);
    }

    fn drive_timeouts(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.scratch);
        due.clear();
        due.extend(
            self.peers
                .values()
                .filter(|p| p.next_timeout <= now)
                .map(|p| p.id),
        );
        for &id in &due {
            if let Some(p) = self.peers.get_mut(&id) {
                if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(peer = %id, error = %e, "peer timeout failed");
                }
            }
            self.poll_peer(now, id);
        }
        self.scratch = due;
        if self.router_timeout <= now {
            self.router_timeout = self.router.handle_timeout(now);
        }
    }

    /// Sessions that never connected (checked once a second).
    fn drop_stale(&mut self, now: Instant) {
        let stale: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| {
                !p.connected && now.saturating_duration_since(p.created) > self.cfg.connect_timeout
            })
            .map(|p| p.id)
            .collect();
        for id in stale {
            tracing::info!(peer = %id, "sfu session never connected; dropped");
            self.remove_peer(now, id, EndReason::Timeout);
        }
    }

    /// Poll every peer written to or fed since the last flush, until each says "timeout".
    /// Poll every peer written to or fed since the last flush, until each says "timeout".
    fn flush_dirty(&mut self, now: Instant) {
        let mut rounds = 0;
        while !self.dirty.is_empty() && rounds < 8 {
            rounds += 1;
            let dirty = std::mem::take(&mut self.dirty);
            for id in &dirty {
                if let Some(p) = self.peers.get_mut(id) {
                    p.dirty = false;
                }
            }
            for id in dirty {
                self.poll_peer(now, id);
            }
        }
    }

    /// Drain one peer's output until it says "timeout". str0m expects this after every
    /// input: an event not polled before the next input may be lost.
    fn poll_peer(&mut self, now: Instant, id: PeerId) {
        loop {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            if !p.rtc.is_alive() {
                self.remove_peer(now, id, EndReason::Timeout);
                return;
            }
            let out = match p.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    tracing::info!(peer = %id, error = %e, "peer failed");
                    self.remove_peer(now, id, EndReason::Timeout);
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    p.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => self.send(t),
                Output::Event(ev) => self.handle_event(now, id, ev),
            }
        }
    }

    /// Send now if the socket takes it; otherwise queue until it is writable (in order).
    fn send(&mut self, t: Transmit) {
        if self.outbox.is_empty() {
            match self.socket.try_send_to(&t.contents, t.destination) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.metrics.udp_send_errors.fetch_add(1, Relaxed);
                    tracing::debug!(to = %t.destination, error = %e, "udp send failed");
                    return;
                }
            }
        }
        if self.outbox.len() < MAX_OUTBOX {
            self.outbox.push_back(t);
        } else {
            self.metrics.udp_send_errors.fetch_add(1, Relaxed);
        }
    }

    /// Wait for the socket to take what is queued.
    async fn flush_outbox(&mut self) {
        while let Some(t) = self.outbox.pop_front() {
            if self
                .socket
                .send_to(&t.contents, t.destination)
                .await
                .is_err()
            {
                self.metrics.udp_send_errors.fetch_add(1, Relaxed);
            }
        }
    }

    fn handle_event(&mut self, now: Instant, id: PeerId, ev: Event) {
        match ev {
            Event::Connected => {
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                p.connected = true;
                tracing::info!(peer = %id, kind = p.kind.path(), room = %p.room, "sfu peer connected");
                if p.kind == SessionKind::Publisher {
                    self.router.publisher_connected(now, id);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::info!(peer = %id, "ice disconnected");
                self.remove_peer(now, id, EndReason::Timeout);
            }
            Event::MediaAdded(m) => self.media_added(now, id, m),
            Event::RtpPacket(pkt) => self.on_rtp(now, id, pkt),
            Event::KeyframeRequest(req) => {
                let track = self
                    .peers
                    .get(&id)
                    .and_then(|p| p.tracks.iter().position(|t| t.0 == req.mid));
                if let Some(track) = track {
                    self.router.on_keyframe_request(now, id, track as u8);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.router.on_estimate(now, id, estimate.as_u64());
            }
            Event::MediaEgressStats(s) => self.count_nacks(id, s.mid, s.rid, true, s.nacks),
            Event::MediaIngressStats(s) => self.count_nacks(id, s.mid, s.rid, false, s.nacks),
            Event::Closed => self.remove_peer(now, id, EndReason::Left),
            _ => {}
        }
    }

    fn count_nacks(&mut self, id: PeerId, mid: Mid, rid: Option<Rid>, egress: bool, total: u64) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let entry = match p
            .nacks
            .iter_mut()
            .find(|(m, r, e, _)| *m == mid && *r == rid && *e == egress)
        {
            Some(e) => e,
            None => {
                p.nacks.push((mid, rid, egress, 0));
                let last = p.nacks.len() - 1;
                &mut p.nacks[last]
            }
        };
        let delta = total.saturating_sub(entry.3);
        entry.3 = total;
        let counter = if egress {
            &self.metrics.nacks_in
        } else {
            &self.metrics.nacks_out
        };
        counter.fetch_add(delta, Relaxed);
    }

    fn media_added(&mut self, now: Instant, id: PeerId, m: str0m::media::MediaAdded) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let kind = match m.kind {
            MediaKind::Audio => Kind::Audio,
            MediaKind::Video => Kind::Video,
        };
        if p.tracks.iter().any(|t| t.0 == m.mid) || p.tracks.len() >= 16 {
            return;
        }
        let track = p.tracks.len() as u8;
        p.tracks.push((m.mid, kind));
        match p.kind {
            SessionKind::Publisher => {
                if !m.direction.is_receiving() {
                    p.rids.push(Vec::new());
                    return;
                }
                let rids: Vec<Option<Rid>> = match &m.simulcast {
                    Some(s) if !s.recv.is_empty() => {
                        s.recv.iter().take(4).map(|l| Some(l.rid)).collect()
                    }
                    _ => vec![None],
                };
                let layers = rids.len() as u8;
                p.rids.push(rids);
                tracing::info!(peer = %id, mid = %m.mid, ?kind, layers, "publisher track");
                self.router.publisher_track(now, id, track, kind, layers);
            }
            SessionKind::Subscriber => {
                if !m.direction.is_sending() {
                    return;
                }
                let nth = p.tracks[..track as usize]
                    .iter()
                    .filter(|t| t.1 == kind)
                    .count() as u8;
                tracing::debug!(peer = %id, mid = %m.mid, ?kind, nth, "viewer track");
                self.router.subscriber_track(now, id, track, kind, nth);
            }
        }
    }

    fn on_rtp(&mut self, now: Instant, id: PeerId, pkt: RtpPacket) {
        if pkt.payload.is_empty() {
            return; // padding / probes
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.kind != SessionKind::Publisher {
            return;
        }
        let ssrc = pkt.header.ssrc;
        let pt = pkt.header.payload_type;
        // Which track and layer: cached per SSRC; str0m knows the stream's mid and rid.
        let si = match p.in_streams.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => i,
            None => {
                let Some((mid, rid)) = p
                    .rtc
                    .direct_api()
                    .stream_rx(&ssrc)
                    .map(|s| (s.mid(), s.rid()))
                else {
                    return;
                };
                let Some(track) = p.tracks.iter().position(|t| t.0 == mid) else {
                    return;
                };
                let layer = p
                    .rids
                    .get(track)
                    .and_then(|r| r.iter().position(|x| *x == rid || x.is_none()))
                    .unwrap_or(0);
                if p.in_streams.len() >= 32 {
                    p.in_streams.clear();
                }
                tracing::debug!(peer = %id, %ssrc, %mid, ?rid, track, layer, "publisher stream");
                p.in_streams.push(InStream {
                    ssrc,
                    track: track as u8,
                    layer: layer as u8,
                    last_ts: None,
                });
                p.in_streams.len() - 1
            }
        };
        let params = match p.codecs.iter().find(|(x, _)| *x == pt) {
            Some((_, params)) => *params,
            None => {
                let params = p.rtc.codec_config().find(|c| c.pt() == pt).copied();
                if p.codecs.len() < 32 {
                    p.codecs.push((pt, params));
                }
                params
            }
        };
        let Some(params) = params else {
            tracing::debug!(peer = %id, ?pt, "unknown payload type");
            return;
        };
        let stream = &mut p.in_streams[si];
        let (track, layer) = (stream.track, stream.layer);
        let ts = pkt.header.timestamp;
        let new_ts = stream.last_ts != Some(ts);
        stream.last_ts = Some(ts);
        let keyframe_start = match params.spec().codec {
            Codec::Vp8 => str0m::format::detect_vp8_keyframe(&pkt.payload),
            // A keyframe's access unit begins with SPS (or the IDR when parameter sets travel
            // out of band): the first packet of a new timestamp carrying either.
            Codec::H264 => {
                new_ts
                    && (ferry_client::rtp::h264_carries(&pkt.payload, ferry_client::rtp::H264_SPS)
                        || str0m::format::detect_h264_keyframe(&pkt.payload))
            }
            c if c.is_audio() => true,
            _ => false,
        };
        let meta = PacketMeta {
            seq: *pkt.seq_no,
            ts,
            keyframe_start,
            len: pkt.payload.len(),
        };
        let mut forwards = std::mem::take(&mut self.forwards);
        forwards.clear();
        self.router
            .on_rtp(now, id, track, layer, &meta, &mut forwards);
        if !forwards.is_empty() {
            // Only what the viewer's player uses; transport extensions are the viewer Rtc's own.
            let ext = ExtensionValues {
                audio_level: pkt.header.ext_vals.audio_level,
                voice_activity: pkt.header.ext_vals.voice_activity,
                video_orientation: pkt.header.ext_vals.video_orientation,
                ..ExtensionValues::default()
            };
            let marker = pkt.header.marker;
            let nackable = params.spec().codec.is_video();
            for f in &forwards {
                self.write_forward(
                    now,
                    id,
                    &params,
                    pt,
                    f,
                    marker,
                    nackable,
                    &ext,
                    &pkt.payload,
                );
            }
        }
        self.forwards = forwards;
    }

    #[allow(clippy::too_many_arguments)]
    fn write_forward(
        &mut self,
        now: Instant,
        source: PeerId,
        params: &PayloadParams,
        src_pt: Pt,
        f: &Forward,
        marker: bool,
        nackable: bool,
        ext: &ExtensionValues,
        payload: &Arc<[u8]>,
    ) {
        let Some(v) = self.peers.get_mut(&f.peer) else {
            return;
        };
        let pt = match v
            .pt_map
            .iter()
            .find(|(s, p, _)| *s == source && *p == src_pt)
        {
            Some((_, _, pt)) => *pt,
            None => {
                let pt = v.rtc.codec_config().match_params(*params).map(|p| p.pt());
                if pt.is_none() {
                    tracing::info!(peer = %f.peer, codec = ?params.spec().codec, "viewer did not negotiate the publisher's codec");
                }
                if v.pt_map.len() >= 16 {
                    v.pt_map.clear();
                }
                v.pt_map.push((source, src_pt, pt));
                pt
            }
        };
        let Some(pt) = pt else { return };
        let Some(&(mid, _)) = v.tracks.get(f.track as usize) else {
            return;
        };
        let mut api = v.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(pt, f.seq.into(), f.ts, now, payload.clone())
                .marker(marker)
                .nackable(nackable)
                .ext_vals(ext.clone()),
        );
        if !v.dirty {
            v.dirty = true;
            self.dirty.push(f.peer);
        }
    }

    fn handle_router_outputs(&mut self, now: Instant) {
        while let Some(out) = self.router.poll_output() {
            match out {
                RouterOutput::KeyframeRequest { peer, track, layer } => {
                    let Some(p) = self.peers.get_mut(&peer) else {
                        continue;
                    };
                    let Some(&(mid, _)) = p.tracks.get(track as usize) else {
                        continue;
                    };
                    let rid = p
                        .rids
                        .get(track as usize)
                        .and_then(|r| r.get(layer as usize))
                        .copied()
                        .flatten();
                    let mut api = p.rtc.direct_api();
                    match api.stream_rx_by_mid(mid, rid) {
                        Some(rx) => rx.request_keyframe(KeyframeRequestKind::Pli),
                        None => {
                            tracing::debug!(%peer, %mid, ?rid, "no stream to ask for a keyframe")
                        }
                    }
                    self.mark_dirty(peer);
                }
                RouterOutput::StreamStarted { room, publisher } => {
                    if let Some(p) = self.peers.get(&publisher) {
                        let _ = self.lifecycle.send(Lifecycle::Started {
                            room,
                            by: p.user.clone(),
                        });
                    }
                }
                RouterOutput::StreamEnded { room, reason } => {
                    let _ = self.lifecycle.send(Lifecycle::Ended { room, reason });
                }
                RouterOutput::Close { peer } => {
                    self.remove_peer(now, peer, EndReason::Replaced);
                }
            }
        }
    }

    /// End a session: the router forgets it (maybe ending the room's stream), the peer gets
    /// a DTLS close, its addresses leave the routing index.
    fn remove_peer(&mut self, now: Instant, id: PeerId, reason: EndReason) {
        self.router.remove_peer(now, id, reason);
        let Some(mut p) = self.peers.remove(&id) else {
            return;
        };
        self.sessions.remove(&p.session);
        for a in &p.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        match p.kind {
            SessionKind::Publisher => self.metrics.publishers.fetch_sub(1, Relaxed),
            SessionKind::Subscriber => self.metrics.subscribers.fetch_sub(1, Relaxed),
        };
        tracing::info!(peer = %id, kind = p.kind.path(), room = %p.room, ?reason, "sfu session ended");
        // Tell the peer (DTLS close_notify) so its media ends now, not at an ICE timeout.
        if p.rtc.is_alive() {
            let _ = p.rtc.close();
            while let Ok(out) = p.rtc.poll_output() {
                match out {
                    Output::Transmit(t) => {
                        let _ = self.socket.try_send_to(&t.contents, t.destination);
                    }
                    Output::Timeout(_) => break,
                    Output::Event(_) => {}
                }
            }
        }
    }

    fn publish_stats(&mut self, now: Instant) {
        let s = &self.router.stats;
        let m = &self.metrics;
        m.packets_in.store(s.packets_in, Relaxed);
        m.bytes_in.store(s.bytes_in, Relaxed);
        m.packets_forwarded.store(s.packets_forwarded, Relaxed);
        m.bytes_forwarded.store(s.bytes_forwarded, Relaxed);
        m.packets_dropped.store(s.packets_dropped, Relaxed);
        m.keyframe_requests_in
            .store(s.keyframe_requests_in, Relaxed);
        m.keyframe_requests_out
            .store(s.keyframe_requests_out, Relaxed);
        m.layer_switches.store(s.layer_switches, Relaxed);
        for (i, n) in self.router.layer_counts(now).iter().enumerate() {
            m.viewers_on_layer[i].store(*n, Relaxed);
        }
        // Tell each viewer's bandwidth estimator what it carries and what it could use.
        if self.cfg.bwe {
            let viewers: Vec<PeerId> = self
                .peers
                .values()
                .filter(|p| p.kind == SessionKind::Subscriber && p.connected)
                .map(|p| p.id)
                .collect();
            for id in viewers {
                let (_, desired) = self.router.viewer_bitrates(id);
                if desired == 0 {
                    continue;
                }
                if let Some(p) = self.peers.get_mut(&id) {
                    p.rtc
                        .bwe()
                        .set_desired_bitrate(Bitrate::bps(desired + desired / 5));
                }
            }
        }
    }
}

/// The `a=ice-ufrag` of an SDP (first occurrence).
fn remote_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

/// `If-Match` against an ETag: exact, or the same value quoted/unquoted (clients differ).
fn etag_matches(if_match: &str, etag: &str) -> bool {
    let bare = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    };
    if_match.split(',').any(|v| bare(v) == bare(etag))
}

/// A fresh ETag value (quoted, as sent in the header).
pub fn new_etag() -> String {
    format!("\"{:016x}\"", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_arrive_at_the_first_candidate_of_the_senders_family() {
        let v4: SocketAddr = "203.0.113.7:3478".parse().expect("v4");
        let lan: SocketAddr = "10.0.0.7:3478".parse().expect("lan");
        let v6: SocketAddr = "[2001:db8::7]:3478".parse().expect("v6");
        let socket: SocketAddr = "0.0.0.0:3478".parse().expect("socket");
        let both = LocalAddrs::new(&[v4, lan, v6], socket);
        let from_v4: SocketAddr = "198.51.100.1:5000".parse().expect("from v4");
        let from_mapped: SocketAddr = "[::ffff:198.51.100.1]:5000".parse().expect("mapped");
        let from_v6: SocketAddr = "[2001:db8::1]:5000".parse().expect("from v6");
        assert_eq!(both.for_sender(from_v4), v4);
        assert_eq!(both.for_sender(from_mapped), v4);
        assert_eq!(both.for_sender(from_v6), v6);
        // One family only: the other family's senders get the first candidate.
        let only_v4 = LocalAddrs::new(&[v4], socket);
        assert_eq!(only_v4.for_sender(from_v6), v4);
        // No candidates: the socket's own address.
        assert_eq!(LocalAddrs::new(&[], socket).for_sender(from_v4), socket);
    }
}
