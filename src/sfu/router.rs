//! The SFU's forwarding core, sans-IO: which subscriber gets which packet, with which sequence
//! number and timestamp; when to ask a publisher for a keyframe; which simulcast layer each
//! viewer gets; when a room goes live and when its stream ends.
//!
//! It is a plain struct fed inputs and the current time (`on_rtp`, `on_keyframe_request`,
//! `on_estimate`, peers coming and going, `handle_timeout`) and polled for outputs
//! ([`RouterOutput`]). It never sees a socket, an `Rtc`, or a clock: [`super::driver`] owns
//! those and maps str0m's mids and rids to the small indexes used here.
//!
//! Model: a room has **slots** (its first video, its first audio, a co-host's video...). A
//! publisher's tracks fill the lowest free slots of their kind; a subscriber's m-lines attach
//! to slots by kind and order (its first video m-line watches video slot 0). Subscribers stay
//! attached to their slots when the publisher leaves, so a publisher that reconnects resumes
//! for every existing viewer.
//!
//! Invariants:
//! - Per subscriber track, outgoing sequence numbers are `incoming + offset`, where the offset
//!   changes only when the forwarded source changes (a layer switch or a new publisher); the
//!   first packet after a change continues right after the last one sent. Upstream loss stays
//!   visible as a gap (so the viewer NACKs and the retransmission fills it); packets from
//!   before a switch are dropped, never sent with a wrong number.
//! - A video subscriber starts, and changes layer, only on a keyframe's first packet.
//! - Keyframe requests to a publisher are merged per (track, layer) and sent at most once per
//!   `keyframe_interval`; one asked for inside the window is sent when the window opens,
//!   unless a keyframe arrived meanwhile.
//! - The per-packet path allocates nothing: forwards are pushed into a caller-owned buffer.

use ferry_client::protocol::RoomId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A WebRTC peer (one WHIP or WHEP session), numbered by the driver.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer-{}", self.0)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    /// RTP clock rate used to advance timestamps across a source change.
    fn clock_rate(self) -> u64 {
        match self {
            Kind::Audio => 48_000,
            Kind::Video => 90_000,
        }
    }
}

/// Why a stream ended (carried into the `stream_ended` room event).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The publisher ended its session (WHIP DELETE).
    Left,
    /// The publisher's connection timed out (ICE).
    Timeout,
    /// The same user started a new session that replaced this one.
    Replaced,
    /// The node is shutting down.
    Shutdown,
}

/// What the driver must do, polled with [`Router::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum RouterOutput {
    /// Ask the publisher for a keyframe on one of its tracks (and simulcast layer).
    KeyframeRequest { peer: PeerId, track: u8, layer: u8 },
    /// The room has a connected publisher now (it had none).
    StreamStarted { room: RoomId, publisher: PeerId },
    /// The room's last publisher left.
    StreamEnded { room: RoomId, reason: EndReason },
    /// End this session (replaced publisher; viewer whose stream ended long ago).
    Close { peer: PeerId },
}

/// Why a publisher was not admitted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The room already has `max_publishers_per_room` publishers of other users.
    RoomBusy,
}

/// One forwarded packet: write the incoming payload to `peer`'s `track` with these numbers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub peer: PeerId,
    pub track: u8,
    /// Extended outgoing sequence number (starts below 2^16, so the SRTP rollover counter
    /// starts at 0 as receivers expect).
    pub seq: u64,
    pub ts: u32,
}

/// What the router needs to know about an incoming RTP packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Extended sequence number of the incoming stream.
    pub seq: u64,
    pub ts: u32,
    /// First packet of a keyframe (for audio: always true, every packet is a start).
    pub keyframe_start: bool,
    /// Payload bytes, for layer bitrates.
    pub len: usize,
}

/// Settings of the forwarding core.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Keyframe requests to a publisher's layer at most this often.
    pub keyframe_interval: Duration,
    /// Publishers (distinct users) per room; more than 1 allows co-hosts.
    pub max_publishers_per_room: usize,
    /// Bandwidth assumed for a viewer before its first estimate.
    pub initial_bitrate_bps: u64,
    /// Fraction of the estimate a layer may use.
    pub headroom: f64,
    /// A better layer must fit the estimate this long before a viewer switches up.
    pub up_switch_delay: Duration,
    /// Viewers of a room whose stream ended are closed after this long without a publisher.
    pub viewer_linger: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            keyframe_interval: Duration::from_secs(1),
            max_publishers_per_room: 1,
            initial_bitrate_bps: 2_500_000,
            headroom: 0.85,
            up_switch_delay: Duration::from_secs(2),
            viewer_linger: Duration::from_secs(30),
        }
    }
}

/// Counters the driver copies to Prometheus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    /// Keyframe requests from viewers (PLI/FIR) and from joins and layer switches.
    pub keyframe_requests_in: u64,
    /// Keyframe requests sent to publishers after merging and throttling.
    pub keyframe_requests_out: u64,
    pub layer_switches: u64,
    /// Packets dropped because they belong to a layer or a segment a viewer is not on.
    pub packets_dropped: u64,
}

/// Measured bitrate and keyframe-request state of one simulcast layer of a source.
#[derive(Debug)]
struct LayerState {
    /// Bits per second over the last window (0 until measured).
    bitrate: u64,
    window_bytes: u64,
    window_start: Instant,
    last_packet: Option<Instant>,
    last_request: Option<Instant>,
    /// A request arrived inside the throttle window: send when it opens.
    pending_request: bool,
}

impl LayerState {
    fn new(now: Instant) -> Self {
        Self {
            bitrate: 0,
            window_bytes: 0,
            window_start: now,
            last_packet: None,
            last_request: None,
            pending_request: false,
        }
    }

    fn active(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(2))
    }
}

/// The publisher track feeding a slot.
#[derive(Debug)]
struct Source {
    peer: PeerId,
    track: u8,
    layers: Vec<LayerState>,
}

/// One viewer's track on a slot: where it is in the source and how it renumbers packets.
#[derive(Debug)]
struct SubTrack {
    peer: PeerId,
    track: u8,
    /// Layer being forwarded; `None` until the first keyframe (or after a source change).
    current: Option<u8>,
    /// Layer the viewer should get; a switch happens at its next keyframe.
    target: u8,
    /// A better layer that fits, and since when (up-switch hysteresis).
    up_candidate: Option<(u8, Instant)>,
    /// First incoming sequence number of the current segment: older packets are dropped.
    segment_start: u64,
    seq_offset: i64,
    ts_offset: u32,
    /// Highest outgoing sequence number and its timestamp (0 = nothing sent yet).
    last_seq: u64,
    last_ts: u32,
    last_sent_at: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    kind: Kind,
    /// Position among the room's slots of this kind.
    nth: u8,
    source: Option<Source>,
    subs: Vec<SubTrack>,
}

#[derive(Debug)]
struct PublisherInfo {
    peer: PeerId,
    user: String,
    connected: bool,
}

#[derive(Debug)]
struct Room {
    id: RoomId,
    slots: Vec<Slot>,
    publishers: Vec<PublisherInfo>,
    subscribers: usize,
    live: bool,
    /// When the stream ended while viewers were attached (for `viewer_linger`).
    ended_at: Option<Instant>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PeerRole {
    Publisher,
    Subscriber,
}

/// Where a peer's track lives: slot index, and for subscribers the index in `slot.subs`.
#[derive(Copy, Clone, Debug)]
struct TrackPos {
    slot: usize,
    sub: usize,
}

#[derive(Debug)]
struct PeerEntry {
    room: usize,
    role: PeerRole,
    /// By track index (the driver's mid order); `None` for tracks not attached.
    tracks: Vec<Option<TrackPos>>,
    /// Latest bandwidth estimate (subscribers).
    estimate_bps: u64,
}

/// The forwarding core. See the module documentation.
#[derive(Debug)]
pub struct Router {
    cfg: RouterConfig,
    /// Rooms by index (stable while the room exists; freed slots are reused).
    rooms: Vec<Option<Room>>,
    room_index: HashMap<RoomId, usize>,
    peers: HashMap<PeerId, PeerEntry>,
    outputs: std::collections::VecDeque<RouterOutput>,
    pub stats: RouterStats,
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        Self {
            cfg,
            rooms: Vec::new(),
            room_index: HashMap::new(),
            peers: HashMap::new(),
            outputs: std::collections::VecDeque::new(),
            stats: RouterStats::default(),
        }
    }

    pub fn poll_output(&mut self) -> Option<RouterOutput> {
        self.outputs.pop_front()
    }

    fn room_slot(&mut self, room: &RoomId) -> usize {
        if let Some(i) = self.room_index.get(room) {
            return *i;
        }
        let fresh = Room {
            id: room.clone(),
            slots: Vec::new(),
            publishers: Vec::new(),
            subscribers: 0,
            live: false,
            ended_at: None,
        };
        let i = match self.rooms.iter().position(Option::is_none) {
            Some(i) => {
                self.rooms[i] = Some(fresh);
                i
            }
            None => {
                self.rooms.push(Some(fresh));
                self.rooms.len() - 1
            }
        };
        self.room_index.insert(room.clone(), i);
        i
    }

    /// Admit `peer` as a publisher of `room` for `user`. A session of the same user already
    /// publishing there is replaced (closed); other users count against the room's limit.
    pub fn add_publisher(
        &mut self,
        _now: Instant,
        peer: PeerId,
        room: &RoomId,
        user: &str,
    ) -> Result<(), Refusal> {
        if let Some(&ri) = self.room_index.get(room) {
            let r = self.rooms[ri].as_ref().map(|r| {
                (
                    r.publishers
                        .iter()
                        .filter(|p| p.user == user)
                        .map(|p| p.peer)
                        .collect::<Vec<_>>(),
                    r.publishers.iter().filter(|p| p.user != user).count(),
                )
            });
            if let Some((same_user, others)) = r {
                if others >= self.cfg.max_publishers_per_room {
                    return Err(Refusal::RoomBusy);
                }
                for old in same_user {
                    self.remove_peer(_now, old, EndReason::Replaced);
                    self.outputs.push_back(RouterOutput::Close { peer: old });
                }
            }
        }
        let ri = self.room_slot(room);
        if let Some(r) = self.rooms[ri].as_mut() {
            r.publishers.push(PublisherInfo {
                peer,
                user: user.to_owned(),
                connected: false,
            });
        }
        self.peers.insert(
            peer,
            PeerEntry {
                room: ri,
                role: PeerRole::Publisher,
                tracks: Vec::new(),
                estimate_bps: 0,
            },
        );
        Ok(())
    }

    /// Admit `peer` as a subscriber (viewer) of `room`.
    pub fn add_subscriber(&mut self, _now: Instant, peer: PeerId, room: &RoomId) {
        let ri = self.room_slot(room);
        if let Some(r) = self.rooms[ri].as_mut() {
            r.subscribers += 1;
        }
        self.peers.insert(
            peer,
            PeerEntry {
                room: ri,
                role: PeerRole::Subscriber,
                tracks: Vec::new(),
                estimate_bps: self.cfg.initial_bitrate_bps,
            },
        );
    }

    /// Whether `room` has a connected publisher.
    pub fn is_live(&self, room: &RoomId) -> bool {
        self.room_index
            .get(room)
            .and_then(|i| self.rooms[*i].as_ref())
            .is_some_and(|r| r.live)
    }

    /// Publishers and subscribers in `room`.
    pub fn room_peers(&self, room: &RoomId) -> (usize, usize) {
        self.room_index
            .get(room)
            .and_then(|i| self.rooms[*i].as_ref())
            .map_or((0, 0), |r| (r.publishers.len(), r.subscribers))
    }

    fn slot_for(room: &mut Room, kind: Kind, nth: u8) -> usize {
        if let Some(i) = room
            .slots
            .iter()
            .position(|s| s.kind == kind && s.nth == nth)
        {
            return i;
        }
        room.slots.push(Slot {
            kind,
            nth,
            source: None,
            subs: Vec::new(),
        });
        room.slots.len() - 1
    }

    /// A publisher's track `track` of `kind` with `layers` simulcast layers (1 without
    /// simulcast) is ready: it takes the lowest free slot of its kind.
    pub fn publisher_track(
        &mut self,
        now: Instant,
        peer: PeerId,
        track: u8,
        kind: Kind,
        layers: u8,
    ) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        if entry.role != PeerRole::Publisher {
            return;
        }
        let Some(room) = self.rooms[entry.room].as_mut() else {
            return;
        };
        let mut nth = 0u8;
        let slot = loop {
            let i = Self::slot_for(room, kind, nth);
            if room.slots[i].source.is_none() {
                break i;
            }
            nth = nth.saturating_add(1);
            if nth == u8::MAX {
                return;
            }
        };
        let s = &mut room.slots[slot];
        s.source = Some(Source {
            peer,
            track,
            layers: (0..layers.max(1)).map(|_| LayerState::new(now)).collect(),
        });
        // Every viewer starts over on the new source (at its next keyframe).
        for sub in &mut s.subs {
            sub.current = None;
            sub.target = 0;
            sub.up_candidate = None;
        }
        let needs_keyframe = kind == Kind::Video && !s.subs.is_empty();
        let t = track as usize;
        if entry.tracks.len() <= t {
            entry.tracks.resize(t + 1, None);
        }
        entry.tracks[t] = Some(TrackPos { slot, sub: 0 });
        if needs_keyframe {
            let ri = entry.room;
            self.reselect_slot(now, ri, slot);
            self.request_keyframe(now, ri, slot, None);
        }
    }

    /// A subscriber's track `track` of `kind` (its `nth` of that kind) is ready to receive.
    pub fn subscriber_track(&mut self, now: Instant, peer: PeerId, track: u8, kind: Kind, nth: u8) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        if entry.role != PeerRole::Subscriber {
            return;
        }
        let ri = entry.room;
        let Some(room) = self.rooms[ri].as_mut() else {
            return;
        };
        let slot = Self::slot_for(room, kind, nth);
        let s = &mut room.slots[slot];
        s.subs.push(SubTrack {
            peer,
            track,
            current: None,
            target: 0,
            up_candidate: None,
            segment_start: 0,
            seq_offset: 0,
            ts_offset: 0,
            last_seq: 0,
            last_ts: 0,
            last_sent_at: None,
        });
        let pos = s.subs.len() - 1;
        let has_video_source = s.kind == Kind::Video && s.source.is_some();
        let t = track as usize;
        if entry.tracks.len() <= t {
            entry.tracks.resize(t + 1, None);
        }
        entry.tracks[t] = Some(TrackPos { slot, sub: pos });
        if has_video_source {
            // A new viewer needs a keyframe now, not at the publisher's next one.
            self.select_layer(now, ri, slot, pos, true);
            self.stats.keyframe_requests_in += 1;
            let layer = self.sub(ri, slot, pos).map(|s| s.target);
            self.request_keyframe(now, ri, slot, layer);
        }
    }

    /// The publisher's connection is up (ICE and DTLS): the room may go live.
    pub fn publisher_connected(&mut self, _now: Instant, peer: PeerId) {
        let Some(entry) = self.peers.get(&peer) else {
            return;
        };
        let ri = entry.room;
        if let Some(room) = self.rooms[ri].as_mut() {
            if let Some(p) = room.publishers.iter_mut().find(|p| p.peer == peer) {
                p.connected = true;
            }
            if !room.live {
                room.live = true;
                room.ended_at = None;
                self.outputs.push_back(RouterOutput::StreamStarted {
                    room: room.id.clone(),
                    publisher: peer,
                });
            }
        }
    }

    /// A session ended (DELETE, ICE timeout, replaced, shutdown). Idempotent.
    pub fn remove_peer(&mut self, now: Instant, peer: PeerId, reason: EndReason) {
        let Some(entry) = self.peers.remove(&peer) else {
            return;
        };
        let ri = entry.room;
        let Some(room) = self.rooms[ri].as_mut() else {
            return;
        };
        match entry.role {
            PeerRole::Publisher => {
                room.publishers.retain(|p| p.peer != peer);
                for slot in &mut room.slots {
                    if slot.source.as_ref().is_some_and(|s| s.peer == peer) {
                        slot.source = None;
                        for sub in &mut slot.subs {
                            sub.current = None;
                        }
                    }
                }
                let still_live = room.publishers.iter().any(|p| p.connected);
                if room.live && !still_live {
                    room.live = false;
                    room.ended_at = Some(now);
                    self.outputs.push_back(RouterOutput::StreamEnded {
                        room: room.id.clone(),
                        reason,
                    });
                }
            }
            PeerRole::Subscriber => {
                room.subscribers = room.subscribers.saturating_sub(1);
                for pos in entry.tracks.iter().flatten() {
                    let slot = &mut room.slots[pos.slot];
                    if pos.sub >= slot.subs.len() || slot.subs[pos.sub].peer != peer {
                        continue;
                    }
                    slot.subs.swap_remove(pos.sub);
                    // The track moved into `pos.sub` now lives there.
                    if let Some(moved) = slot.subs.get(pos.sub) {
                        let (mp, mt) = (moved.peer, moved.track as usize);
                        if let Some(Some(p)) =
                            self.peers.get_mut(&mp).and_then(|e| e.tracks.get_mut(mt))
                        {
                            p.sub = pos.sub;
                        }
                    }
                }
            }
        }
        if room.publishers.is_empty() && room.subscribers == 0 {
            self.room_index.remove(&room.id);
            self.rooms[ri] = None;
        }
    }

    fn sub(&self, ri: usize, slot: usize, pos: usize) -> Option<&SubTrack> {
        self.rooms[ri].as_ref()?.slots.get(slot)?.subs.get(pos)
    }

    /// An RTP packet from publisher `peer`'s `track` on simulcast `layer` (0 without
    /// simulcast). Pushes one [`Forward`] per viewer that gets it into `out` (not cleared).
    pub fn on_rtp(
        &mut self,
        now: Instant,
        peer: PeerId,
        track: u8,
        layer: u8,
        meta: &PacketMeta,
        out: &mut Vec<Forward>,
    ) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += meta.len as u64;
        let Some(entry) = self.peers.get(&peer) else {
            return;
        };
        let Some(Some(pos)) = entry.tracks.get(track as usize) else {
            return;
        };
        let Some(room) = self.rooms[entry.room].as_mut() else {
            return;
        };
        let slot = &mut room.slots[pos.slot];
        let Some(source) = slot
            .source
            .as_mut()
            .filter(|s| s.peer == peer && s.track == track)
        else {
            return;
        };
        let Some(ls) = source.layers.get_mut(layer as usize) else {
            return;
        };
        ls.last_packet = Some(now);
        ls.window_bytes += meta.len as u64;
        let elapsed = now.saturating_duration_since(ls.window_start);
        if elapsed >= Duration::from_millis(500) {
            let measured = ls.window_bytes * 8 * 1000 / (elapsed.as_millis().max(1) as u64);
            ls.bitrate = if ls.bitrate == 0 {
                measured
            } else {
                (ls.bitrate + measured) / 2
            };
            ls.window_bytes = 0;
            ls.window_start = now;
        }
        if meta.keyframe_start && slot.kind == Kind::Video {
            // Whoever asked for a keyframe is served by this one.
            ls.pending_request = false;
        }
        let clock = slot.kind.clock_rate();
        let before = out.len();
        for sub in &mut slot.subs {
            match sub.current {
                Some(l) if l == layer => {
                    if meta.seq < sub.segment_start {
                        // From before this segment began (a late retransmission).
                        self.stats.packets_dropped += 1;
                        continue;
                    }
                }
                _ if layer == sub.target && meta.keyframe_start => {
                    // Start (or switch) here: continue right after the last packet sent.
                    if sub.current.is_some() {
                        self.stats.layer_switches += 1;
                    }
                    let next_seq = sub.last_seq + 1;
                    let ts_gap = match sub.last_sent_at {
                        Some(t) => {
                            let ms = now.saturating_duration_since(t).as_millis() as u64;
                            (ms * clock / 1000).clamp(1, u64::from(u32::MAX / 2)) as u32
                        }
                        None => 0,
                    };
                    sub.seq_offset = next_seq as i64 - meta.seq as i64;
                    sub.ts_offset = sub.last_ts.wrapping_add(ts_gap).wrapping_sub(meta.ts);
                    if sub.last_sent_at.is_none() {
                        sub.ts_offset = 0;
                    }
                    sub.segment_start = meta.seq;
                    sub.current = Some(layer);
                }
                _ => {
                    self.stats.packets_dropped += 1;
                    continue;
                }
            }
            let seq = (meta.seq as i64 + sub.seq_offset).max(1) as u64;
            let ts = meta.ts.wrapping_add(sub.ts_offset);
            if seq > sub.last_seq {
                sub.last_seq = seq;
                sub.last_ts = ts;
                sub.last_sent_at = Some(now);
            }
            out.push(Forward {
                peer: sub.peer,
                track: sub.track,
                seq,
                ts,
            });
        }
        let n = (out.len() - before) as u64;
        self.stats.packets_forwarded += n;
        self.stats.bytes_forwarded += n * meta.len as u64;
    }

    /// A viewer asked for a keyframe (PLI/FIR) on its track.
    pub fn on_keyframe_request(&mut self, now: Instant, peer: PeerId, track: u8) {
        let Some(entry) = self.peers.get(&peer) else {
            return;
        };
        if entry.role != PeerRole::Subscriber {
            return;
        }
        let Some(Some(pos)) = entry.tracks.get(track as usize).copied() else {
            return;
        };
        let ri = entry.room;
        self.stats.keyframe_requests_in += 1;
        let layer = self
            .sub(ri, pos.slot, pos.sub)
            .map(|s| s.current.unwrap_or(s.target));
        self.request_keyframe(now, ri, pos.slot, layer);
    }

    /// A viewer's bandwidth estimate (bits per second).
    pub fn on_estimate(&mut self, now: Instant, peer: PeerId, bps: u64) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        entry.estimate_bps = bps;
        let ri = entry.room;
        let tracks: Vec<TrackPos> = entry.tracks.iter().flatten().copied().collect();
        for pos in tracks {
            self.select_layer(now, ri, pos.slot, pos.sub, false);
        }
    }

    /// `(current, desired)` bits per second for a viewer: what it is being sent, and what the
    /// best layers would need (for the driver's bandwidth estimator).
    pub fn viewer_bitrates(&self, peer: PeerId) -> (u64, u64) {
        let Some(entry) = self.peers.get(&peer) else {
            return (0, 0);
        };
        let Some(room) = self.rooms[entry.room].as_ref() else {
            return (0, 0);
        };
        let (mut current, mut desired) = (0, 0);
        for pos in entry.tracks.iter().flatten() {
            let slot = &room.slots[pos.slot];
            let (Some(source), Some(sub)) = (slot.source.as_ref(), slot.subs.get(pos.sub)) else {
                continue;
            };
            let rate = |l: u8| source.layers.get(l as usize).map_or(0, |l| l.bitrate);
            current += rate(sub.current.unwrap_or(sub.target));
            desired += source.layers.iter().map(|l| l.bitrate).max().unwrap_or(0);
        }
        (current, desired)
    }

    /// Viewers per layer rank (0 = lowest bitrate) over all video tracks, for metrics.
    pub fn layer_counts(&self, now: Instant) -> [u64; 4] {
        let mut counts = [0u64; 4];
        for room in self.rooms.iter().flatten() {
            for slot in room.slots.iter().filter(|s| s.kind == Kind::Video) {
                let Some(source) = &slot.source else { continue };
                let order = ranked_layers(&source.layers, now);
                for sub in &slot.subs {
                    if let Some(cur) = sub.current {
                        let rank = order.iter().position(|l| *l == cur).unwrap_or(0).min(3);
                        counts[rank] += 1;
                    }
                }
            }
        }
        counts
    }

    /// Choose a viewer's target layer from its estimate and the layers' measured bitrates.
    /// `joining`: pick at once, without up-switch hysteresis.
    fn select_layer(&mut self, now: Instant, ri: usize, slot: usize, pos: usize, joining: bool) {
        let Some(room) = self.rooms[ri].as_mut() else {
            return;
        };
        let Some(s) = room.slots.get_mut(slot) else {
            return;
        };
        if s.kind != Kind::Video {
            return;
        }
        let Some(source) = &s.source else { return };
        if source.layers.len() < 2 {
            return;
        }
        let Some(sub) = s.subs.get_mut(pos) else {
            return;
        };
        let estimate = self
            .peers
            .get(&sub.peer)
            .map_or(self.cfg.initial_bitrate_bps, |e| e.estimate_bps);
        let budget = (estimate as f64 * self.cfg.headroom) as u64;
        let order = ranked_layers(&source.layers, now);
        if order.is_empty() {
            return;
        }
        let fits = order
            .iter()
            .rev()
            .find(|l| source.layers[**l as usize].bitrate <= budget)
            .copied()
            .unwrap_or(order[0]);
        let rank = |l: u8| order.iter().position(|x| *x == l).unwrap_or(0);
        let target = sub.target;
        let mut new_target = target;
        if !order.contains(&target) || joining || rank(fits) < rank(target) {
            new_target = fits;
            sub.up_candidate = None;
        } else if rank(fits) > rank(target) {
            match sub.up_candidate {
                Some((l, since)) if l == fits => {
                    if now.saturating_duration_since(since) >= self.cfg.up_switch_delay {
                        new_target = fits;
                        sub.up_candidate = None;
                    }
                }
                _ => sub.up_candidate = Some((fits, now)),
            }
        } else {
            sub.up_candidate = None;
        }
        if new_target != target {
            sub.target = new_target;
            if sub.current.is_some() && sub.current != Some(new_target) {
                self.stats.keyframe_requests_in += 1;
                self.request_keyframe(now, ri, slot, Some(new_target));
            }
        }
    }

    fn reselect_slot(&mut self, now: Instant, ri: usize, slot: usize) {
        let n = self.rooms[ri]
            .as_ref()
            .and_then(|r| r.slots.get(slot))
            .map_or(0, |s| s.subs.len());
        for pos in 0..n {
            self.select_layer(now, ri, slot, pos, true);
        }
    }

    /// Ask the slot's source for a keyframe on `layer` (`None`: every layer a viewer waits
    /// on), merged and throttled per layer.
    fn request_keyframe(&mut self, now: Instant, ri: usize, slot: usize, layer: Option<u8>) {
        let Some(room) = self.rooms[ri].as_mut() else {
            return;
        };
        let Some(s) = room.slots.get_mut(slot) else {
            return;
        };
        if s.kind != Kind::Video {
            return;
        }
        let Some(source) = s.source.as_mut() else {
            return;
        };
        let mut wanted = [false; 8];
        match layer {
            Some(l) => {
                if let Some(w) = wanted.get_mut(l as usize) {
                    *w = true;
                }
            }
            None => {
                for sub in &s.subs {
                    if let Some(w) = wanted.get_mut(sub.target as usize) {
                        *w = true;
                    }
                }
            }
        }
        for (i, ls) in source.layers.iter_mut().enumerate() {
            if !wanted.get(i).copied().unwrap_or(false) {
                continue;
            }
            let open = ls
                .last_request
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.keyframe_interval);
            if open {
                ls.last_request = Some(now);
                ls.pending_request = false;
                self.stats.keyframe_requests_out += 1;
                self.outputs.push_back(RouterOutput::KeyframeRequest {
                    peer: source.peer,
                    track: source.track,
                    layer: i as u8,
                });
            } else {
                ls.pending_request = true;
            }
        }
    }

    /// Time passes: throttled keyframe requests whose window opened go out, viewers get
    /// better layers, lingering viewers of ended streams are closed. Returns when to call
    /// again at the latest.
    pub fn handle_timeout(&mut self, now: Instant) -> Instant {
        let mut next = now + Duration::from_millis(500);
        let interval = self.cfg.keyframe_interval;
        for ri in 0..self.rooms.len() {
            let Some(room) = self.rooms[ri].as_mut() else {
                continue;
            };
            let mut close = Vec::new();
            if let Some(ended) = room.ended_at {
                if !room.live && now.saturating_duration_since(ended) >= self.cfg.viewer_linger {
                    room.ended_at = None;
                    for slot in &room.slots {
                        close.extend(slot.subs.iter().map(|s| s.peer));
                    }
                } else if !room.live {
                    next = next.min(ended + self.cfg.viewer_linger);
                }
            }
            for slot in &mut room.slots {
                let Some(source) = slot.source.as_mut() else {
                    continue;
                };
                for (i, ls) in source.layers.iter_mut().enumerate() {
                    if !ls.pending_request {
                        continue;
                    }
                    let due = ls.last_request.map_or(now, |t| t + interval);
                    if due <= now {
                        ls.last_request = Some(now);
                        ls.pending_request = false;
                        self.stats.keyframe_requests_out += 1;
                        self.outputs.push_back(RouterOutput::KeyframeRequest {
                            peer: source.peer,
                            track: source.track,
                            layer: i as u8,
                        });
                    } else {
                        next = next.min(due);
                    }
                }
            }
            let slots: Vec<(usize, usize)> = room
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.kind == Kind::Video && s.source.as_ref().is_some_and(|s| s.layers.len() > 1)
                })
                .map(|(i, s)| (i, s.subs.len()))
                .collect();
            for (slot, n) in slots {
                for pos in 0..n {
                    self.select_layer(now, ri, slot, pos, false);
                }
            }
            close.sort();
            close.dedup();
            for peer in close {
                self.outputs.push_back(RouterOutput::Close { peer });
            }
        }
        next
    }
}

/// Active layers ordered by measured bitrate, lowest first (declared order breaks ties and
/// ranks layers not yet measured).
fn ranked_layers(layers: &[LayerState], now: Instant) -> Vec<u8> {
    let mut order: Vec<u8> = (0..layers.len() as u8)
        .filter(|l| layers[*l as usize].active(now))
        .collect();
    order.sort_by_key(|l| (layers[*l as usize].bitrate, *l));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: PeerId = PeerId(1);
    const V1: PeerId = PeerId(10);
    const V2: PeerId = PeerId(11);

    fn room() -> RoomId {
        RoomId::from("r1")
    }

    fn cfg() -> RouterConfig {
        RouterConfig {
            up_switch_delay: Duration::from_millis(1500),
            viewer_linger: Duration::from_secs(5),
            ..RouterConfig::default()
        }
    }

    fn meta(seq: u64, ts: u32, key: bool) -> PacketMeta {
        PacketMeta {
            seq,
            ts,
            keyframe_start: key,
            len: 1000,
        }
    }

    fn outputs(r: &mut Router) -> Vec<RouterOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn keyframe_requests(r: &mut Router) -> Vec<u8> {
        outputs(r)
            .into_iter()
            .filter_map(|o| match o {
                RouterOutput::KeyframeRequest { layer, .. } => Some(layer),
                _ => None,
            })
            .collect()
    }

    /// A publisher with one video track of `layers` layers, connected, and viewers.
    fn setup(layers: u8, viewers: &[PeerId]) -> (Router, Instant) {
        let now = Instant::now();
        let mut r = Router::new(cfg());
        r.add_publisher(now, PUB, &room(), "host")
            .expect("admitted");
        r.publisher_track(now, PUB, 0, Kind::Video, layers);
        r.publisher_connected(now, PUB);
        for v in viewers {
            r.add_subscriber(now, *v, &room());
            r.subscriber_track(now, *v, 1, Kind::Video, 0);
        }
        (r, now)
    }

    #[test]
    fn viewers_start_at_a_keyframe_and_get_contiguous_numbers() {
        let (mut r, now) = setup(1, &[V1, V2]);
        let mut out = Vec::new();
        r.on_rtp(now, PUB, 0, 0, &meta(500, 9000, false), &mut out);
        assert!(out.is_empty(), "no delta frame before the first keyframe");
        r.on_rtp(now, PUB, 0, 0, &meta(501, 12000, true), &mut out);
        r.on_rtp(now, PUB, 0, 0, &meta(502, 12000, false), &mut out);
        assert_eq!(out.len(), 4);
        for v in [V1, V2] {
            let seqs: Vec<u64> = out.iter().filter(|f| f.peer == v).map(|f| f.seq).collect();
            assert_eq!(seqs, vec![1, 2], "{v}");
            assert!(out.iter().all(|f| f.track == 1));
        }
        // Upstream loss stays visible as a gap, and the retransmission fills it.
        out.clear();
        r.on_rtp(now, PUB, 0, 0, &meta(504, 15000, false), &mut out);
        r.on_rtp(now, PUB, 0, 0, &meta(503, 15000, false), &mut out);
        let seqs: Vec<u64> = out.iter().filter(|f| f.peer == V1).map(|f| f.seq).collect();
        assert_eq!(seqs, vec![4, 3]);
        assert_eq!(r.stats.packets_forwarded, 8);
    }

    #[test]
    fn keyframe_requests_are_merged_and_throttled() {
        let (mut r, now) = setup(1, &[V1]);
        // The join asked for one.
        assert_eq!(keyframe_requests(&mut r), vec![0]);
        // Many viewers asking within the window: one request when it opens.
        for i in 0..50 {
            r.on_keyframe_request(now + Duration::from_millis(i), V1, 1);
        }
        assert!(keyframe_requests(&mut r).is_empty());
        r.handle_timeout(now + Duration::from_millis(900));
        assert!(keyframe_requests(&mut r).is_empty());
        r.handle_timeout(now + Duration::from_millis(1000));
        assert_eq!(keyframe_requests(&mut r), vec![0]);
        r.handle_timeout(now + Duration::from_millis(3000));
        assert!(keyframe_requests(&mut r).is_empty(), "sent once");
        // A keyframe that arrives while a request is pending satisfies it.
        let t = now + Duration::from_millis(3100);
        r.on_keyframe_request(t, V1, 1);
        assert_eq!(keyframe_requests(&mut r), vec![0], "window open again");
        let t = t + Duration::from_millis(100);
        r.on_keyframe_request(t, V1, 1);
        let mut out = Vec::new();
        r.on_rtp(t, PUB, 0, 0, &meta(1, 0, true), &mut out);
        r.handle_timeout(t + Duration::from_secs(2));
        assert!(
            keyframe_requests(&mut r).is_empty(),
            "satisfied by the keyframe"
        );
        assert_eq!(r.stats.keyframe_requests_out, 3);
    }

    /// Feed `n` packets per layer at `now`, sizes making layer bitrates differ.
    fn feed_layers(
        r: &mut Router,
        t: Instant,
        seq: &mut [u64; 3],
        key: bool,
        out: &mut Vec<Forward>,
    ) {
        for (layer, size) in [(0u8, 100usize), (1, 400), (2, 1200)] {
            for i in 0..5 {
                let s = &mut seq[layer as usize];
                *s += 1;
                let m = PacketMeta {
                    seq: *s,
                    ts: 1000,
                    keyframe_start: key && i == 0,
                    len: size,
                };
                r.on_rtp(t, PUB, 0, layer, &m, out);
            }
        }
    }

    #[test]
    fn simulcast_layers_follow_the_estimate_and_switch_only_at_keyframes() {
        let (mut r, start) = setup(3, &[V1]);
        let mut seq = [1000u64, 5000, 9000];
        let mut out = Vec::new();
        // Measure layer bitrates: 5 packets per 50 ms per layer for 1 s.
        let mut t = start;
        for _ in 0..20 {
            feed_layers(&mut r, t, &mut seq, false, &mut out);
            t += Duration::from_millis(50);
        }
        let rates: Vec<u64> = {
            let room = r.rooms[0].as_ref().expect("room");
            room.slots[0]
                .source
                .as_ref()
                .expect("source")
                .layers
                .iter()
                .map(|l| l.bitrate)
                .collect()
        };
        assert!(rates[0] < rates[1] && rates[1] < rates[2], "{rates:?}");
        // A low estimate: the lowest layer; the switch waits for its keyframe.
        r.on_estimate(t, V1, rates[0] + rates[0] / 2);
        outputs(&mut r);
        out.clear();
        feed_layers(&mut r, t, &mut seq, false, &mut out);
        assert!(out.is_empty(), "no keyframe yet");
        feed_layers(&mut r, t, &mut seq, true, &mut out);
        assert_eq!(out.len(), 5, "only layer 0 after its keyframe");
        assert_eq!(r.sub(0, 0, 0).and_then(|s| s.current), Some(0));
        let last = out.last().map(|f| f.seq).expect("sent");
        // A high estimate: up only after the hysteresis delay, then at layer 2's keyframe,
        // with numbers continuing where layer 0 stopped.
        r.on_estimate(t, V1, 100_000_000);
        assert_eq!(r.sub(0, 0, 0).map(|s| s.target), Some(0), "not yet");
        t += Duration::from_secs(2);
        feed_layers(&mut r, t, &mut seq, false, &mut Vec::new());
        r.on_estimate(t, V1, 100_000_000);
        assert_eq!(r.sub(0, 0, 0).map(|s| s.target), Some(2));
        assert_eq!(keyframe_requests(&mut r), vec![2]);
        out.clear();
        feed_layers(&mut r, t, &mut seq, false, &mut out);
        assert!(
            out.iter().all(|f| f.seq > last + 5 && f.seq <= last + 10),
            "still layer 0"
        );
        let last = out.last().map(|f| f.seq).expect("sent");
        out.clear();
        feed_layers(&mut r, t, &mut seq, true, &mut out);
        // Layer 0's keyframe packets are not forwarded any more once layer 2 took over in
        // the same batch; either way numbers stay contiguous.
        let seqs: Vec<u64> = out.iter().map(|f| f.seq).collect();
        let expected: Vec<u64> = (last + 1..=last + seqs.len() as u64).collect();
        assert_eq!(seqs, expected);
        assert_eq!(r.sub(0, 0, 0).and_then(|s| s.current), Some(2));
        assert_eq!(r.stats.layer_switches, 1);
        // Down at once when the estimate falls.
        r.on_estimate(t, V1, 1);
        assert_eq!(r.sub(0, 0, 0).map(|s| s.target), Some(0));
    }

    #[test]
    fn a_publisher_restart_resumes_for_existing_viewers() {
        let (mut r, now) = setup(1, &[V1]);
        let mut out = Vec::new();
        r.on_rtp(now, PUB, 0, 0, &meta(100, 1000, true), &mut out);
        r.on_rtp(now, PUB, 0, 0, &meta(101, 1000, false), &mut out);
        outputs(&mut r);
        r.remove_peer(now, PUB, EndReason::Timeout);
        assert_eq!(
            outputs(&mut r),
            vec![RouterOutput::StreamEnded {
                room: room(),
                reason: EndReason::Timeout
            }]
        );
        assert!(!r.is_live(&room()));
        // A new session (new sequence space) takes the same slot.
        let p2 = PeerId(2);
        let t = now + Duration::from_millis(500);
        r.add_publisher(t, p2, &room(), "host").expect("admitted");
        r.publisher_track(t, p2, 0, Kind::Video, 1);
        r.publisher_connected(t, p2);
        let outs = outputs(&mut r);
        assert!(outs.contains(&RouterOutput::StreamStarted {
            room: room(),
            publisher: p2
        }));
        assert!(outs.contains(&RouterOutput::KeyframeRequest {
            peer: p2,
            track: 0,
            layer: 0
        }));
        out.clear();
        r.on_rtp(t, p2, 0, 0, &meta(40_000, 777, false), &mut out);
        assert!(out.is_empty());
        r.on_rtp(t, p2, 0, 0, &meta(40_001, 777, true), &mut out);
        r.on_rtp(t, p2, 0, 0, &meta(40_002, 3777, false), &mut out);
        let seqs: Vec<u64> = out.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
        // Timestamps advance by the elapsed time (500 ms at 90 kHz), not jump to 777.
        assert_eq!(out[0].ts, 1000 + 45_000);
        assert_eq!(out[1].ts, 1000 + 45_000 + 3000);
        // Old session's late packets go nowhere.
        out.clear();
        r.on_rtp(t, PUB, 0, 0, &meta(102, 1000, false), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn one_publisher_per_room_and_the_same_user_replaces_its_session() {
        let (mut r, now) = setup(1, &[]);
        outputs(&mut r);
        assert_eq!(
            r.add_publisher(now, PeerId(7), &room(), "someone-else"),
            Err(Refusal::RoomBusy)
        );
        r.add_publisher(now, PeerId(8), &room(), "host")
            .expect("same user");
        let outs = outputs(&mut r);
        assert!(outs.contains(&RouterOutput::Close { peer: PUB }));
        assert!(outs.contains(&RouterOutput::StreamEnded {
            room: room(),
            reason: EndReason::Replaced
        }));
        // Co-hosts when configured.
        let mut r = Router::new(RouterConfig {
            max_publishers_per_room: 2,
            ..cfg()
        });
        r.add_publisher(now, PUB, &room(), "host").expect("first");
        r.add_publisher(now, PeerId(7), &room(), "cohost")
            .expect("second");
        assert_eq!(
            r.add_publisher(now, PeerId(9), &room(), "third"),
            Err(Refusal::RoomBusy)
        );
        // The co-host's video takes the second video slot.
        r.publisher_track(now, PUB, 0, Kind::Video, 1);
        r.publisher_track(now, PeerId(7), 0, Kind::Video, 1);
        let room_ = r.rooms[0].as_ref().expect("room");
        assert_eq!(room_.slots.len(), 2);
        assert_eq!(
            room_.slots[1].source.as_ref().map(|s| s.peer),
            Some(PeerId(7))
        );
    }

    #[test]
    fn viewers_of_an_ended_stream_linger_then_close() {
        let (mut r, now) = setup(1, &[V1]);
        r.remove_peer(now, PUB, EndReason::Left);
        outputs(&mut r);
        r.handle_timeout(now + Duration::from_secs(4));
        assert!(outputs(&mut r).is_empty());
        r.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(outputs(&mut r), vec![RouterOutput::Close { peer: V1 }]);
        r.remove_peer(now, V1, EndReason::Left);
        assert!(r.rooms.iter().all(Option::is_none), "empty room freed");
    }

    #[test]
    fn removing_a_viewer_keeps_the_others_indexed() {
        let viewers: Vec<PeerId> = (0..5).map(|i| PeerId(100 + i)).collect();
        let (mut r, now) = setup(1, &viewers);
        r.remove_peer(now, viewers[1], EndReason::Left);
        r.remove_peer(now, viewers[0], EndReason::Left);
        // Every remaining viewer still reaches its own entry.
        for v in &viewers[2..] {
            r.on_keyframe_request(now, *v, 1);
            let pos = r.peers[v].tracks[1].expect("attached");
            assert_eq!(r.sub(0, pos.slot, pos.sub).map(|s| s.peer), Some(*v));
        }
        let mut out = Vec::new();
        r.on_rtp(now, PUB, 0, 0, &meta(1, 0, true), &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn audio_flows_without_keyframes_or_layers() {
        let now = Instant::now();
        let mut r = Router::new(cfg());
        r.add_publisher(now, PUB, &room(), "host")
            .expect("admitted");
        r.publisher_track(now, PUB, 0, Kind::Audio, 1);
        r.add_subscriber(now, V1, &room());
        r.subscriber_track(now, V1, 0, Kind::Audio, 0);
        assert!(keyframe_requests(&mut r).is_empty());
        let mut out = Vec::new();
        r.on_rtp(now, PUB, 0, 0, &meta(7, 960, true), &mut out);
        r.on_rtp(now, PUB, 0, 0, &meta(8, 1920, true), &mut out);
        assert_eq!(out.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![1, 2]);
    }
}
