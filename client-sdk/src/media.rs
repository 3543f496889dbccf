//! Synthetic WebRTC media for tests and the load tester (cargo feature `media`): publish a
//! synthetic video (VP8- or H.264-shaped, optionally simulcast) and audio track over WHIP,
//! and subscribe over WHEP, counting what arrives. No camera and no codec: payloads carry
//! real keyframe markers and a small header (frame number, packet index, layer, publisher tag,
//! send time), so a subscriber can tell packets in order, gaps, keyframes, time to first
//! frame and loss. See [`synth`] for the payload format.
//!
//! Each [`Publisher`] and [`Subscriber`] is one str0m `Rtc` (RTP mode) driven by one tokio
//! task with its own UDP socket; signaling is plain HTTP/1.1 ([`http`], `http://` only).

pub mod http;
pub mod synth;

use parking_lot_free::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
pub use synth::VideoCodec;
use synth::{Mark, MAX_PAYLOAD};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// A tiny std mutex wrapper that never panics on poisoning (stats only).
mod parking_lot_free {
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(v: T) -> Self {
            Self(std::sync::Mutex::new(v))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

/// Why publishing or subscribing failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("http: {0}")]
    Http(String),
    /// The server refused: status and its JSON error body.
    #[error("server answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("webrtc: {0}")]
    Rtc(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("not connected within {0:?}")]
    Timeout(Duration),
}

/// One simulcast layer of a synthetic publisher.
#[derive(Clone, Debug)]
pub struct Layer {
    pub rid: String,
    pub bitrate_bps: u64,
}

/// What a synthetic publisher sends.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    pub codec: VideoCodec,
    /// Video bitrate without simulcast.
    pub video_bitrate_bps: u64,
    pub fps: u32,
    /// A keyframe at least this often (and whenever the server asks).
    pub keyframe_interval: Duration,
    /// Also send an Opus-shaped audio track (50 packets/s).
    pub audio: bool,
    /// Send these simulcast layers (lowest first) instead of one video stream.
    pub simulcast: Vec<Layer>,
    /// Local IP for the UDP socket and ICE candidate.
    pub bind_ip: IpAddr,
    /// Tag written into every packet (tell sessions apart across a restart).
    pub tag: u32,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            codec: VideoCodec::Vp8,
            video_bitrate_bps: 1_500_000,
            fps: 30,
            keyframe_interval: Duration::from_secs(2),
            audio: true,
            simulcast: Vec::new(),
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            tag: rand::random(),
        }
    }
}

/// Publisher counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    pub connected: bool,
    pub video_frames: u64,
    pub keyframes: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Keyframe requests (PLI/FIR) the server sent us.
    pub keyframe_requests: u64,
}

/// What happened to a session's connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    /// The server closed it (DTLS close) or ICE timed out.
    Closed,
}

/// A session's signaling facts.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// Base URL of the server, `http://host:port`.
    pub base: String,
    /// The session resource (`Location`), e.g. `/whip/room/abc`.
    pub location: String,
    pub etag: String,
    /// `Link` headers of the 201 (ICE servers).
    pub links: Vec<String>,
    pub token: String,
}

impl SessionInfo {
    /// `DELETE` the session resource; returns the status.
    pub async fn delete(&self) -> Result<u16, MediaError> {
        let auth = format!("Bearer {}", self.token);
        let r = http::request(
            &self.base,
            "DELETE",
            &self.location,
            &[("Authorization", &auth)],
            b"",
        )
        .await?;
        Ok(r.status)
    }
}

/// A synthetic WHIP publisher.
pub struct Publisher {
    pub info: SessionInfo,
    stats: Arc<Mutex<PublisherStats>>,
    state: watch::Receiver<PeerState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn stats(&self) -> PublisherStats {
        self.stats.lock().clone()
    }

    pub fn state(&self) -> PeerState {
        *self.state.borrow()
    }

    /// Wait until ICE and DTLS are up.
    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), MediaError> {
        wait_state(&mut self.state, PeerState::Connected, timeout).await
    }

    /// End the session properly: `DELETE`, then stop sending.
    pub async fn close(mut self) -> Result<u16, MediaError> {
        let status = self.info.delete().await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
        status
    }

    /// Stop sending without telling the server (a crash or a cut network): the server only
    /// notices by ICE timeout.
    pub fn abort(mut self) {
        self.stop.take();
        self.task.abort();
    }
}

/// What a subscriber keeps.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    pub bind_ip: IpAddr,
    /// Received frames buffered for [`Subscriber::next_frame`] (0: count only). When the
    /// buffer is full, new frames are counted and not kept.
    pub keep_frames: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            keep_frames: 0,
        }
    }
}

/// Audio or video.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

/// A frame as received: complete when every packet the publisher sent for it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFrame {
    pub kind: Kind,
    pub keyframe: bool,
    /// Publisher tag (see [`PublishOptions::tag`]).
    pub publisher: u32,
    pub frame: u32,
    pub layer: u8,
    pub packets: u16,
    /// Send → receive, from the embedded send time (same-host clocks).
    pub latency: Duration,
}

/// Subscriber counters. Sequence numbers are checked per track on the RTP numbers the SFU
/// sent; frame order on the publisher's frame numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    pub connected: bool,
    pub packets: u64,
    pub bytes: u64,
    pub video_packets: u64,
    pub audio_packets: u64,
    /// Complete video frames (every packet arrived).
    pub video_frames: u64,
    pub keyframes: u64,
    /// Packets that start a keyframe, by the negotiated codec's rules (counts keyframes of
    /// any publisher, including real encoders whose payloads carry no synthetic header).
    pub keyframe_starts: u64,
    pub audio_frames: u64,
    /// Times a packet arrived with a sequence number past the next expected one.
    pub seq_gaps: u64,
    /// Packets behind the highest number seen (late, e.g. retransmitted).
    pub late_packets: u64,
    pub duplicates: u64,
    /// Sequence numbers never received (so far) between the first and highest seen.
    pub packets_lost: u64,
    /// Video frames that arrived with a lower frame number than an earlier one of the same
    /// publisher session and layer (must stay 0).
    pub frames_out_of_order: u64,
    /// From `subscribe()` to the first complete keyframe.
    pub time_to_first_frame: Option<Duration>,
    /// Publisher tags seen, in order (a restart adds one).
    pub publishers: Vec<u32>,
    /// Layers of video frames received, latest last (changes on a simulcast switch).
    pub last_layer: Option<u8>,
    pub max_latency_us: u64,
    pub latency_sum_us: u64,
}

impl SubscriberStats {
    /// Lost packets / expected packets.
    pub fn loss_ratio(&self) -> f64 {
        let expected = self.packets + self.packets_lost - self.duplicates.min(self.packets);
        if expected == 0 {
            0.0
        } else {
            self.packets_lost as f64 / expected as f64
        }
    }
}

/// A synthetic WHEP subscriber.
pub struct Subscriber {
    pub info: SessionInfo,
    stats: Arc<Mutex<SubscriberStats>>,
    state: watch::Receiver<PeerState>,
    frames: mpsc::Receiver<ReceivedFrame>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub fn stats(&self) -> SubscriberStats {
        self.stats.lock().clone()
    }

    pub fn state(&self) -> PeerState {
        *self.state.borrow()
    }

    pub async fn wait_connected(&mut self, timeout: Duration) -> Result<(), MediaError> {
        wait_state(&mut self.state, PeerState::Connected, timeout).await
    }

    /// Wait until the server closes the session (or `timeout`).
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<(), MediaError> {
        wait_state(&mut self.state, PeerState::Closed, timeout).await
    }

    /// The next received frame (with `keep_frames > 0`); `None` once the session ended.
    pub async fn next_frame(&mut self) -> Option<ReceivedFrame> {
        self.frames.recv().await
    }

    pub async fn close(mut self) -> Result<u16, MediaError> {
        let status = self.info.delete().await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
        status
    }
}

async fn wait_state(
    state: &mut watch::Receiver<PeerState>,
    want: PeerState,
    timeout: Duration,
) -> Result<(), MediaError> {
    let r = tokio::time::timeout(
        timeout,
        state.wait_for(|s| *s == want || *s == PeerState::Closed),
    )
    .await;
    match r {
        Ok(Ok(s)) if *s == want => Ok(()),
        Ok(_) if want == PeerState::Closed => Ok(()),
        Ok(_) => Err(MediaError::Rtc("the session closed".into())),
        Err(_) => Err(MediaError::Timeout(timeout)),
    }
}

fn client_rtc() -> Rtc {
    Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .enable_h264(true)
        .enable_opus(true, false)
        .set_stats_interval(None)
        .build(Instant::now())
}

/// Redirects followed for one WHIP/WHEP POST.
const MAX_REDIRECTS: usize = 3;

/// Offer, POST (following redirects), answer: returns the session facts and the socket.
async fn signal(
    base: &str,
    path: &str,
    token: &str,
    rtc: &mut Rtc,
    bind_ip: IpAddr,
    build: impl FnOnce(&mut str0m::change::SdpApi<'_>),
) -> Result<(SessionInfo, UdpSocket), MediaError> {
    let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
    let local = socket.local_addr()?;
    let cand = Candidate::host(local, "udp").map_err(|e| MediaError::Rtc(e.to_string()))?;
    rtc.add_local_candidate(cand);
    let mut api = rtc.sdp_api();
    build(&mut api);
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| MediaError::Rtc("nothing to offer".into()))?;
    let auth = format!("Bearer {token}");
    let offer_sdp = offer.to_sdp_string();
    // A node that does not host the room's stream redirects (307) to the one that does: repeat
    // the POST there (RFC 9725 §4.5), and address the session resource on that node.
    let mut base = base.to_owned();
    let mut path = path.to_owned();
    let mut redirects = 0;
    let resp = loop {
        let resp = http::request(
            &base,
            "POST",
            &path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/sdp"),
            ],
            offer_sdp.as_bytes(),
        )
        .await?;
        let to = resp
            .header("location")
            .filter(|_| matches!(resp.status, 307 | 308));
        match to {
            Some(to) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                (base, path) = http::resolve(&base, to)?;
            }
            _ => break resp,
        }
    };
    if resp.status != 201 {
        return Err(MediaError::Refused {
            status: resp.status,
            body: resp.text(),
        });
    }
    let answer =
        SdpAnswer::from_sdp_string(&resp.text()).map_err(|e| MediaError::Rtc(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| MediaError::Rtc(e.to_string()))?;
    let info = SessionInfo {
        base,
        location: resp.header("location").unwrap_or_default().to_owned(),
        etag: resp.header("etag").unwrap_or_default().to_owned(),
        links: resp.headers_named("link").map(str::to_owned).collect(),
        token: token.to_owned(),
    };
    Ok((info, socket))
}

/// Publish synthetic media into `room` over WHIP at `base` (`http://host:port`).
pub async fn publish(
    base: &str,
    room: &str,
    token: &str,
    opts: PublishOptions,
) -> Result<Publisher, MediaError> {
    let mut rtc = client_rtc();
    let mut video_mid = None;
    let mut audio_mid = None;
    let (info, socket) = signal(
        base,
        &format!("/whip/{room}"),
        token,
        &mut rtc,
        opts.bind_ip,
        |api| {
            let simulcast = (!opts.simulcast.is_empty()).then(|| {
                let mut s = Simulcast::new();
                for l in &opts.simulcast {
                    s.add_send_layer(SimulcastLayer::new(&l.rid));
                }
                s
            });
            video_mid =
                Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast));
            if opts.audio {
                audio_mid =
                    Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
            }
        },
    )
    .await?;
    let stats = Arc::new(Mutex::new(PublisherStats::default()));
    let (state_tx, state) = watch::channel(PeerState::Connecting);
    let (stop, stop_rx) = oneshot::channel();
    let pubr = PubLoop {
        opts,
        video_mid,
        audio_mid,
        stats: stats.clone(),
    };
    let task = tokio::spawn(run_peer(
        rtc,
        socket,
        state_tx,
        stop_rx,
        Role::Publish(Box::new(pubr)),
    ));
    Ok(Publisher {
        info,
        stats,
        state,
        stop: Some(stop),
        task,
    })
}

/// Subscribe to `room`'s media over WHEP at `base`.
pub async fn subscribe(
    base: &str,
    room: &str,
    token: &str,
    opts: SubscribeOptions,
) -> Result<Subscriber, MediaError> {
    let started = Instant::now();
    let mut rtc = client_rtc();
    let (info, socket) = signal(
        base,
        &format!("/whep/{room}"),
        token,
        &mut rtc,
        opts.bind_ip,
        |api| {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        },
    )
    .await?;
    let stats = Arc::new(Mutex::new(SubscriberStats::default()));
    let (state_tx, state) = watch::channel(PeerState::Connecting);
    let (stop, stop_rx) = oneshot::channel();
    let (frames_tx, frames) = mpsc::channel(opts.keep_frames.max(1));
    let sub = SubLoop {
        started,
        stats: stats.clone(),
        frames: (opts.keep_frames > 0).then_some(frames_tx),
        tracks: Vec::new(),
        assembling: Vec::new(),
        last_frames: Vec::new(),
    };
    let task = tokio::spawn(run_peer(
        rtc,
        socket,
        state_tx,
        stop_rx,
        Role::Subscribe(Box::new(sub)),
    ));
    Ok(Subscriber {
        info,
        stats,
        state,
        frames,
        stop: Some(stop),
        task,
    })
}

enum Role {
    Publish(Box<PubLoop>),
    Subscribe(Box<SubLoop>),
}

struct PubLoop {
    opts: PublishOptions,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    stats: Arc<Mutex<PublisherStats>>,
}

/// Per-layer send state of a publisher.
struct LayerOut {
    rid: Option<Rid>,
    index: u8,
    bitrate: u64,
    seq: u64,
    force_key: bool,
}

/// The one loop of a peer: socket in, timers, media out.
async fn run_peer(
    mut rtc: Rtc,
    socket: UdpSocket,
    state: watch::Sender<PeerState>,
    mut stop: oneshot::Receiver<()>,
    mut role: Role,
) {
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut buf = vec![0u8; 2000];
    let start = Instant::now();
    // Publisher clocks.
    let (fps, audio) = match &role {
        Role::Publish(p) => (p.opts.fps.max(1), p.opts.audio),
        Role::Subscribe(_) => (30, false),
    };
    let mut video_tick = tokio::time::interval(Duration::from_secs(1) / fps);
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connected = false;
    let mut layers: Vec<LayerOut> = Vec::new();
    if let Role::Publish(p) = &role {
        let base_seq = u64::from(rand::random::<u16>() % 20_000) + 1;
        if p.opts.simulcast.is_empty() {
            layers.push(LayerOut {
                rid: None,
                index: 0,
                bitrate: p.opts.video_bitrate_bps,
                seq: base_seq,
                force_key: true,
            });
        } else {
            for (i, l) in p.opts.simulcast.iter().enumerate() {
                layers.push(LayerOut {
                    rid: Some(Rid::from(l.rid.as_str())),
                    index: i as u8,
                    bitrate: l.bitrate_bps,
                    seq: base_seq + 10_000 * i as u64,
                    force_key: true,
                });
            }
        }
    }
    let mut frame_no: u32 = 0;
    let mut audio_seq: u64 = u64::from(rand::random::<u16>() % 20_000) + 1;
    let mut audio_no: u32 = 0;
    let mut last_key = start;
    let ts_base: u32 = rand::random::<u32>() / 2;
    loop {
        // Drain output.
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Some(t),
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(ev)) => match ev {
                    Event::Connected => {
                        connected = true;
                        let _ = state.send(PeerState::Connected);
                        match &role {
                            Role::Publish(p) => p.stats.lock().connected = true,
                            Role::Subscribe(s) => s.stats.lock().connected = true,
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                    | Event::Closed => {
                        break None;
                    }
                    Event::KeyframeRequest(req) => {
                        if let Role::Publish(p) = &role {
                            p.stats.lock().keyframe_requests += 1;
                            for l in layers
                                .iter_mut()
                                .filter(|l| req.rid.is_none() || l.rid == req.rid)
                            {
                                l.force_key = true;
                            }
                        }
                    }
                    Event::RtpPacket(pkt) => {
                        if let Role::Subscribe(s) = &mut role {
                            s.on_packet(&mut rtc, pkt);
                        }
                    }
                    _ => {}
                },
                Err(_) => break None,
            }
            if !rtc.is_alive() {
                break None;
            }
        };
        let Some(timeout) = timeout else { break };
        let sleep = tokio::time::sleep_until(timeout.into());
        tokio::select! {
            _ = &mut stop => break,
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source: from, destination: local, contents });
                if rtc.handle_input(input).is_err() {
                    break;
                }
            }
            _ = video_tick.tick(), if connected && matches!(role, Role::Publish(_)) => {
                if let Role::Publish(p) = &role {
                    let now = Instant::now();
                    let periodic = now.duration_since(last_key) >= p.opts.keyframe_interval;
                    if periodic {
                        last_key = now;
                    }
                    frame_no = frame_no.wrapping_add(1);
                    let ts = ts_base.wrapping_add((u64::from(frame_no) * 90_000 / u64::from(fps)) as u32);
                    p.send_video(&mut rtc, &mut layers, frame_no, ts, periodic, now);
                }
            }
            _ = audio_tick.tick(), if connected && audio => {
                if let Role::Publish(p) = &role {
                    audio_no = audio_no.wrapping_add(1);
                    let ts = ts_base.wrapping_add(audio_no.wrapping_mul(960));
                    p.send_audio(&mut rtc, audio_seq, audio_no, ts);
                    audio_seq += 1;
                }
            }
            _ = sleep => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    break;
                }
            }
        }
    }
    let _ = state.send(PeerState::Closed);
    rtc.disconnect();
}

impl PubLoop {
    fn pt_for(rtc: &Rtc, codec: Codec) -> Option<str0m::media::Pt> {
        rtc.codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    fn send_video(
        &self,
        rtc: &mut Rtc,
        layers: &mut [LayerOut],
        frame: u32,
        ts: u32,
        periodic_key: bool,
        now: Instant,
    ) {
        let Some(mid) = self.video_mid else { return };
        let codec = match self.opts.codec {
            VideoCodec::Vp8 => Codec::Vp8,
            VideoCodec::H264 => Codec::H264,
        };
        let Some(pt) = Self::pt_for(rtc, codec) else {
            return;
        };
        let fps = u64::from(self.opts.fps.max(1));
        let mut stats = self.stats.lock();
        for l in layers.iter_mut() {
            let key = periodic_key || l.force_key;
            l.force_key = false;
            let bytes = (l.bitrate / 8 / fps).max(200) as usize;
            let bytes = if key { bytes * 3 } else { bytes };
            let mark = Mark {
                layer: l.index,
                publisher: self.opts.tag,
                frame,
                index: 0,
                count: 0,
                sent_us: synth::unix_us(),
            };
            let packets =
                synth::video_frame(self.opts.codec, key, bytes, mark, (frame & 0x7fff) as u16);
            let n = packets.len();
            let mut api = rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, l.rid) else {
                continue;
            };
            for (i, p) in packets.into_iter().enumerate() {
                stats.packets += 1;
                stats.bytes += p.len() as u64;
                debug_assert!(p.len() <= MAX_PAYLOAD + 64);
                let seq: SeqNo = l.seq.into();
                l.seq += 1;
                tx.write_rtp(
                    RtpWrite::new(pt, seq, ts, now, p)
                        .marker(i + 1 == n)
                        .nackable(true),
                );
            }
            if l.index == 0 {
                stats.video_frames += 1;
                if key {
                    stats.keyframes += 1;
                }
            }
        }
    }

    fn send_audio(&self, rtc: &mut Rtc, seq: u64, no: u32, ts: u32) {
        let Some(mid) = self.audio_mid else { return };
        let Some(pt) = Self::pt_for(rtc, Codec::Opus) else {
            return;
        };
        let mark = Mark {
            layer: 0,
            publisher: self.opts.tag,
            frame: no,
            index: 0,
            count: 1,
            sent_us: synth::unix_us(),
        };
        let p = synth::audio_packet(mark);
        let mut stats = self.stats.lock();
        stats.packets += 1;
        stats.bytes += p.len() as u64;
        let mut api = rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(mid, None) {
            tx.write_rtp(RtpWrite::new(pt, seq.into(), ts, Instant::now(), p).marker(true));
        }
    }
}

/// Per received track: sequence tracking.
struct TrackIn {
    mid: Mid,
    first: u64,
    highest: u64,
    /// Received flags for the last 1024 sequence numbers (bit i = highest - i).
    window: [u64; 16],
    received: u64,
}

impl TrackIn {
    fn seen(&self, seq: u64) -> bool {
        let back = self.highest - seq;
        back < 1024 && (self.window[(back / 64) as usize] >> (back % 64)) & 1 == 1
    }

    fn mark(&mut self, seq: u64) {
        let back = self.highest - seq;
        if back < 1024 {
            self.window[(back / 64) as usize] |= 1 << (back % 64);
        }
    }

    /// Shift the window forward by `n`.
    fn advance(&mut self, n: u64) {
        if n >= 1024 {
            self.window = [0; 16];
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        let old = self.window;
        self.window = [0; 16];
        for i in 0..16 {
            let src = i as isize - words as isize;
            if src < 0 {
                continue;
            }
            let s = src as usize;
            let mut v = old[s] << bits;
            if bits > 0 && s > 0 {
                v |= old[s - 1] >> (64 - bits);
            }
            self.window[i] = v;
        }
    }
}

/// A video frame being assembled.
struct Assembling {
    publisher: u32,
    layer: u8,
    frame: u32,
    count: u16,
    got: u16,
    keyframe: bool,
    first_sent_us: u64,
}

struct SubLoop {
    started: Instant,
    stats: Arc<Mutex<SubscriberStats>>,
    frames: Option<mpsc::Sender<ReceivedFrame>>,
    tracks: Vec<TrackIn>,
    assembling: Vec<Assembling>,
    /// Highest completed frame per (publisher tag, layer).
    last_frames: Vec<(u32, u8, u32)>,
}

impl SubLoop {
    fn on_packet(&mut self, rtc: &mut Rtc, pkt: str0m::rtp::RtpPacket) {
        if pkt.payload.is_empty() {
            return;
        }
        let ssrc = pkt.header.ssrc;
        let Some(mid) = rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid()) else {
            return;
        };
        let kind = match rtc.media(mid).map(|m| m.kind()) {
            Some(MediaKind::Audio) => Kind::Audio,
            _ => Kind::Video,
        };
        let seq = *pkt.seq_no;
        let mut st = self.stats.lock();
        st.packets += 1;
        st.bytes += pkt.payload.len() as u64;
        match kind {
            Kind::Audio => st.audio_packets += 1,
            Kind::Video => st.video_packets += 1,
        }
        // Sequence accounting per track.
        let t = match self.tracks.iter().position(|t| t.mid == mid) {
            Some(i) => &mut self.tracks[i],
            None => {
                self.tracks.push(TrackIn {
                    mid,
                    first: seq,
                    highest: seq,
                    window: [0; 16],
                    received: 0,
                });
                let i = self.tracks.len() - 1;
                &mut self.tracks[i]
            }
        };
        if seq > t.highest {
            if seq > t.highest + 1 {
                st.seq_gaps += 1;
            }
            t.advance(seq - t.highest);
            t.highest = seq;
            t.mark(seq);
            t.received += 1;
        } else if seq < t.first || t.seen(seq) {
            st.duplicates += u64::from(seq >= t.first);
            if seq < t.first {
                st.late_packets += 1;
            }
        } else {
            st.late_packets += 1;
            t.mark(seq);
            t.received += 1;
        }
        st.packets_lost = self
            .tracks
            .iter()
            .map(|t| (t.highest - t.first + 1).saturating_sub(t.received))
            .sum();
        if kind == Kind::Video {
            let codec = rtc
                .codec_config()
                .find(|p| p.pt() == pkt.header.payload_type)
                .map(|p| p.spec().codec);
            let start = match codec {
                Some(Codec::Vp8) => synth::starts_keyframe(VideoCodec::Vp8, &pkt.payload),
                Some(Codec::H264) => synth::starts_keyframe(VideoCodec::H264, &pkt.payload),
                _ => false,
            };
            st.keyframe_starts += u64::from(start);
        }
        let Some(m) = Mark::find(&pkt.payload) else {
            return;
        };
        let latency = synth::unix_us().saturating_sub(m.sent_us);
        st.max_latency_us = st.max_latency_us.max(latency);
        st.latency_sum_us += latency;
        if !st.publishers.contains(&m.publisher) {
            st.publishers.push(m.publisher);
        }
        let done = match kind {
            Kind::Audio => {
                st.audio_frames += 1;
                Some(ReceivedFrame {
                    kind,
                    keyframe: false,
                    publisher: m.publisher,
                    frame: m.frame,
                    layer: 0,
                    packets: 1,
                    latency: Duration::from_micros(latency),
                })
            }
            Kind::Video => {
                let keyframe_packet = m.index == 0
                    && (synth::starts_keyframe(VideoCodec::Vp8, &pkt.payload)
                        || synth::starts_keyframe(VideoCodec::H264, &pkt.payload));
                let a = match self.assembling.iter().position(|a| {
                    a.publisher == m.publisher && a.layer == m.layer && a.frame == m.frame
                }) {
                    Some(i) => &mut self.assembling[i],
                    None => {
                        if self.assembling.len() >= 16 {
                            self.assembling.remove(0);
                        }
                        self.assembling.push(Assembling {
                            publisher: m.publisher,
                            layer: m.layer,
                            frame: m.frame,
                            count: m.count,
                            got: 0,
                            keyframe: false,
                            first_sent_us: m.sent_us,
                        });
                        let i = self.assembling.len() - 1;
                        &mut self.assembling[i]
                    }
                };
                a.got += 1;
                a.keyframe |= keyframe_packet;
                if a.got >= a.count {
                    let f = ReceivedFrame {
                        kind,
                        keyframe: a.keyframe,
                        publisher: a.publisher,
                        frame: a.frame,
                        layer: a.layer,
                        packets: a.count,
                        latency: Duration::from_micros(
                            synth::unix_us().saturating_sub(a.first_sent_us),
                        ),
                    };
                    let (p, l, fr) = (a.publisher, a.layer, a.frame);
                    self.assembling
                        .retain(|x| !(x.publisher == p && x.layer == l && x.frame == fr));
                    Some(f)
                } else {
                    None
                }
            }
        };
        let Some(f) = done else { return };
        if f.kind == Kind::Video {
            st.video_frames += 1;
            if f.keyframe {
                st.keyframes += 1;
                if st.time_to_first_frame.is_none() {
                    st.time_to_first_frame = Some(self.started.elapsed());
                }
            }
            st.last_layer = Some(f.layer);
        }
        drop(st);
        self.check_order(&f);
        if let Some(tx) = &self.frames {
            let _ = tx.try_send(f);
        }
    }

    /// Frames of one publisher session and layer must complete in increasing order.
    fn check_order(&mut self, f: &ReceivedFrame) {
        if f.kind != Kind::Video {
            return;
        }
        match self
            .last_frames
            .iter_mut()
            .find(|(p, l, _)| *p == f.publisher && *l == f.layer)
        {
            Some(entry) => {
                if f.frame <= entry.2 {
                    self.stats.lock().frames_out_of_order += 1;
                }
                entry.2 = entry.2.max(f.frame);
            }
            None => {
                if self.last_frames.len() >= 16 {
                    self.last_frames.remove(0);
                }
                self.last_frames.push((f.publisher, f.layer, f.frame));
            }
        }
    }
}
