//! Live video as the harness drives and judges it, shared by the scenario runner's `video`
//! behaviour and the `video-bench` benchmark: the node's HTTP base, the synthetic WHIP
//! publisher of a scenario (the Rust SDK's `media` feature) started and awaited, packet loss
//! from the SDK's RTP sequence counters ([`Loss`]), the per-subscriber frame accounting
//! (freezes and frames never completed, [`FrameAccount`], sans-IO), the summary of every
//! subscriber into report metrics ([`summarize`]), and reading the node's `/metrics`.
//!
//! Loss is what the SDK's subscriber counts on the RTP sequence numbers the SFU sent it:
//! numbers never received between the first and the highest seen, per track, where a
//! packet retransmitted after a NACK fills its hole. Read after a drain (the publisher
//! stopped, packets in flight and retransmissions landed), it is the loss **after NACK
//! recovery**. Frames are the SDK's complete frames (every packet of the frame arrived).

use crate::scenario::{VideoCodecName, VideoSettings};
use crate::system::{self, TargetError};
use ferry_client::media::{self, Layer, PublishOptions, Publisher, SubscriberStats, VideoCodec};
use std::net::IpAddr;
use std::time::Duration;

/// Missing frame numbers remembered per subscriber, so a frame completed late (after a
/// retransmission) is taken off the missing count once; older holes stay counted.
const MISSING_WINDOW: usize = 512;
/// Publisher sessions (tags) whose numbering is tracked per subscriber; the oldest is
/// forgotten first.
const MAX_PUBLISHERS: usize = 16;

/// `http://127.x.y.z:PORT` of a node from its WebSocket URL (loopback only).
pub fn http_base(ws_url: &str) -> Result<String, TargetError> {
    system::loopback_target(ws_url).map(|addr| format!("http://{addr}"))
}

/// The synthetic publisher a scenario's `video` behaviour asks for.
pub fn publish_options(settings: &VideoSettings, bind_ip: IpAddr) -> PublishOptions {
    PublishOptions {
        codec: match settings.codec {
            VideoCodecName::Vp8 => VideoCodec::Vp8,
            VideoCodecName::H264 => VideoCodec::H264,
        },
        video_bitrate_bps: settings.bitrate_bps,
        fps: settings.fps,
        keyframe_interval: settings.keyframe_interval,
        audio: settings.audio,
        simulcast: settings
            .simulcast
            .iter()
            .map(|l| Layer {
                rid: l.rid.clone(),
                bitrate_bps: l.bitrate_bps,
            })
            .collect(),
        bind_ip,
        ..PublishOptions::default()
    }
}

/// Publish into `room` over WHIP and wait until ICE and DTLS are up, all within `timeout`
/// (the SDK's signaling has no timeout of its own).
pub async fn start_publisher(
    base: &str,
    room: &str,
    token: &str,
    options: PublishOptions,
    timeout: Duration,
) -> Result<Publisher, String> {
    let started = tokio::time::Instant::now();
    let mut publisher = tokio::time::timeout(timeout, media::publish(base, room, token, options))
        .await
        .map_err(|_| format!("no WHIP answer within {timeout:?}"))?
        .map_err(|e| format!("publish: {e}"))?;
    let left = timeout.saturating_sub(started.elapsed());
    publisher
        .wait_connected(left)
        .await
        .map_err(|e| format!("publisher: {e}"))?;
    Ok(publisher)
}

/// Sum of the samples of `name` (every label set) in a node's Prometheus `/metrics`;
/// `None` when the page cannot be read.
pub async fn server_metric(base: &str, name: &str) -> Option<f64> {
    let page = tokio::time::timeout(
        Duration::from_secs(5),
        media::http::request(base, "GET", "/metrics", &[], b""),
    )
    .await
    .ok()?
    .ok()?;
    Some(metric_sum(&page.text(), name))
}

/// Sum of the samples of `name` in a Prometheus text page (any labels; the name must be
/// followed by `{` or a space, so `x_total` does not match `x_total_bytes`).
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Packet counts of one subscriber (or a sum of them).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Packets received, duplicates included.
    pub packets: u64,
    /// Sequence numbers never received between the first and the highest seen.
    pub lost: u64,
    pub duplicates: u64,
}

impl Loss {
    pub fn of(stats: &SubscriberStats) -> Self {
        Self {
            packets: stats.packets,
            lost: stats.packets_lost,
            duplicates: stats.duplicates,
        }
    }

    /// Packets the sender sent in the span the receiver saw: distinct received + lost.
    pub fn expected(&self) -> u64 {
        self.packets - self.duplicates.min(self.packets) + self.lost
    }

    /// Lost ÷ expected, in percent (0 when nothing was expected).
    pub fn pct(&self) -> f64 {
        match self.expected() {
            0 => 0.0,
            n => 100.0 * self.lost as f64 / n as f64,
        }
    }

    pub fn add(&mut self, other: &Loss) {
        self.packets += other.packets;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
    }
}

/// What [`FrameAccount`] counted for one subscriber.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Complete video frames seen (in order or late).
    pub frames: u64,
    /// Frame numbers skipped between frames seen in order and not seen since (a frame that
    /// never completed, even after retransmissions).
    pub missing: u64,
    /// Frames that completed after a later one (counted in `frames`, not in `missing`).
    pub late: u64,
    /// Gaps between consecutive in-order frames longer than the threshold, including an
    /// open gap at the end of the window.
    pub freezes: u64,
    pub freeze_total: Duration,
    pub freeze_longest: Duration,
    /// The first and the last in-order frame, from the run's origin.
    pub first_at: Option<Duration>,
    pub last_at: Option<Duration>,
    /// Where the window ended ([`FrameAccount::finish`]).
    pub end: Option<Duration>,
}

impl FrameStats {
    /// In-order frames per second from the first frame to the end of the window; `None`
    /// for a subscriber that watched less than `min_span`.
    pub fn fps(&self, min_span: Duration) -> Option<f64> {
        let span = self.end?.checked_sub(self.first_at?)?;
        (span >= min_span).then(|| (self.frames - self.late) as f64 / span.as_secs_f64())
    }
}

/// The frame accounting of one subscriber, sans-IO: fed each complete video frame's
/// publisher tag, frame number and arrival time (from any fixed origin), and the end of the
/// window. A new publisher tag (a publisher restart) starts its own numbering.
#[derive(Debug)]
pub struct FrameAccount {
    threshold: Duration,
    /// Highest frame number seen per publisher tag.
    highest: Vec<(u32, u32)>,
    /// Missing (publisher, frame) numbers, most recent last.
    holes: std::collections::VecDeque<(u32, u32)>,
    stats: FrameStats,
}

impl FrameAccount {
    pub fn new(freeze_threshold: Duration) -> Self {
        Self {
            threshold: freeze_threshold,
            highest: Vec::new(),
            holes: std::collections::VecDeque::new(),
            stats: FrameStats::default(),
        }
    }

    /// A complete frame `frame` of publisher `publisher` arrived at `at`. Ignored once the
    /// window has ended.
    pub fn on_frame(&mut self, at: Duration, publisher: u32, frame: u32) {
        if self.stats.end.is_some() {
            return;
        }
        self.stats.frames += 1;
        let in_order = match self.highest.iter_mut().find(|(p, _)| *p == publisher) {
            None => {
                if self.highest.len() >= MAX_PUBLISHERS {
                    self.highest.remove(0);
                }
                self.highest.push((publisher, frame));
                true
            }
            Some((_, highest)) if frame > *highest => {
                // Only the most recent holes can still be filled (a jump of millions is
                // counted, not listed).
                let from = (*highest + 1).max(frame.saturating_sub(MISSING_WINDOW as u32));
                for missing in from..frame {
                    if self.holes.len() >= MISSING_WINDOW {
                        self.holes.pop_front();
                    }
                    self.holes.push_back((publisher, missing));
                }
                self.stats.missing += u64::from(frame - *highest - 1);
                *highest = frame;
                true
            }
            Some(_) => {
                // Behind the highest: a hole filled late, or a repeat (a simulcast switch
                // can deliver one number on two layers).
                if let Some(i) = self.holes.iter().position(|h| *h == (publisher, frame)) {
                    self.holes.remove(i);
                    self.stats.missing -= 1;
                    self.stats.late += 1;
                } else {
                    self.stats.frames -= 1;
                }
                false
            }
        };
        if !in_order {
            return;
        }
        if let Some(last) = self.stats.last_at {
            self.gap(at.saturating_sub(last));
        }
        self.stats.first_at.get_or_insert(at);
        self.stats.last_at = Some(self.stats.last_at.map_or(at, |l| l.max(at)));
    }

    /// The window ends at `end`: an open gap longer than the threshold is a freeze.
    pub fn finish(&mut self, end: Duration) {
        if self.stats.end.is_some() {
            return;
        }
        if let Some(last) = self.stats.last_at {
            self.gap(end.saturating_sub(last));
        }
        self.stats.end = Some(end);
    }

    fn gap(&mut self, gap: Duration) {
        if gap > self.threshold {
            self.stats.freezes += 1;
            self.stats.freeze_total += gap;
            self.stats.freeze_longest = self.stats.freeze_longest.max(gap);
        }
    }

    pub fn stats(&self) -> FrameStats {
        self.stats
    }
}

/// How one WHEP subscriber of a run ended up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriberOutcome {
    /// The WHEP `POST` was answered 201.
    pub subscribed: bool,
    /// A first complete frame arrived within the first-frame timeout.
    pub first_frame: bool,
    /// Receiving when the video window ended (first frame seen, session alive).
    pub held: bool,
    /// The session ended (server close, ICE failure) before the window did.
    pub dropped: bool,
    pub loss: Loss,
    pub frames: FrameStats,
    /// The SDK's count of frames completing behind a later frame of the same layer.
    pub out_of_order: u64,
    /// Frames the SDK completed that the harness did not see in time (its frame buffer was
    /// full): the frame accounting of this subscriber is incomplete.
    pub unobserved: u64,
}

/// Every subscriber of a run, as report metrics (the names in
/// [`crate::thresholds::VIDEO_METRICS`]). Metrics that need a subscriber with a first frame
/// (or with packets) are absent without one: no evidence is not a pass.
pub fn summarize(
    outcomes: &[SubscriberOutcome],
    min_fps_span: Duration,
) -> Vec<(&'static str, f64)> {
    let count =
        |f: &dyn Fn(&SubscriberOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as f64;
    let mut out = vec![
        ("video_subscribers", count(&|o| o.subscribed)),
        ("video_first_frames", count(&|o| o.first_frame)),
        ("video_subscribers_held", count(&|o| o.held)),
        ("video_drops", count(&|o| o.dropped)),
    ];
    let mut total = Loss::default();
    let mut worst = None::<f64>;
    for o in outcomes.iter().filter(|o| o.loss.packets > 0) {
        total.add(&o.loss);
        worst = Some(worst.map_or(o.loss.pct(), |w| w.max(o.loss.pct())));
    }
    out.push(("video_packets", total.packets as f64));
    if let Some(worst) = worst {
        out.push(("video_packets_lost", total.lost as f64));
        out.push(("video_loss_pct", crate::metrics::round3(total.pct())));
        out.push(("video_loss_pct_max", crate::metrics::round3(worst)));
        out.push(("video_subscribers_lossy", count(&|o| o.loss.lost > 0)));
    }
    let watched: Vec<&SubscriberOutcome> = outcomes.iter().filter(|o| o.first_frame).collect();
    if !watched.is_empty() {
        let sum = |f: &dyn Fn(&FrameStats) -> u64| {
            watched.iter().map(|o| f(&o.frames)).sum::<u64>() as f64
        };
        let ms = |d: Duration| crate::metrics::round3(d.as_secs_f64() * 1000.0);
        out.push(("video_frames", sum(&|f| f.frames)));
        out.push(("video_frames_missing", sum(&|f| f.missing)));
        out.push(("video_frames_late", sum(&|f| f.late)));
        out.push(("video_freezes", sum(&|f| f.freezes)));
        out.push((
            "video_freeze_total_ms",
            ms(watched.iter().map(|o| o.frames.freeze_total).sum()),
        ));
        out.push((
            "video_freeze_max_ms",
            ms(watched
                .iter()
                .map(|o| o.frames.freeze_longest)
                .max()
                .unwrap_or_default()),
        ));
        out.push((
            "video_subscribers_frozen",
            watched.iter().filter(|o| o.frames.freezes > 0).count() as f64,
        ));
        out.push((
            "video_frames_out_of_order",
            watched.iter().map(|o| o.out_of_order).sum::<u64>() as f64,
        ));
        out.push((
            "video_frames_unobserved",
            watched.iter().map(|o| o.unobserved).sum::<u64>() as f64,
        ));
        let fps: Vec<f64> = watched
            .iter()
            .filter_map(|o| o.frames.fps(min_fps_span))
            .collect();
        if !fps.is_empty() {
            let min = fps.iter().copied().fold(f64::INFINITY, f64::min);
            out.push(("video_fps_min", crate::metrics::round3(min)));
            out.push((
                "video_fps_mean",
                crate::metrics::round3(fps.iter().sum::<f64>() / fps.len() as f64),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn steady_frames_have_no_freeze_and_nothing_missing() {
        let mut a = FrameAccount::new(ms(500));
        for i in 0..300u32 {
            a.on_frame(ms(1000 + 33 * u64::from(i)), 7, 100 + i);
        }
        a.finish(ms(1000 + 33 * 300));
        let s = a.stats();
        assert_eq!((s.frames, s.missing, s.late, s.freezes), (300, 0, 0, 0));
        assert_eq!(s.freeze_total, Duration::ZERO);
        let fps = s.fps(Duration::from_secs(1)).expect("watched 9.9 s");
        assert!((fps - 30.3).abs() < 0.1, "{fps}");
    }

    #[test]
    fn a_gap_over_the_threshold_is_one_freeze_of_the_whole_gap() {
        let mut a = FrameAccount::new(ms(500));
        a.on_frame(ms(0), 1, 1);
        a.on_frame(ms(33), 1, 2);
        // 500 ms exactly is not a freeze; 501 is.
        a.on_frame(ms(533), 1, 3);
        a.on_frame(ms(1034), 1, 4);
        a.on_frame(ms(1067), 1, 5);
        a.finish(ms(1100));
        let s = a.stats();
        assert_eq!(s.freezes, 1);
        assert_eq!(s.freeze_total, ms(501));
        assert_eq!(s.freeze_longest, ms(501));
    }

    #[test]
    fn an_open_gap_at_the_end_counts_and_later_frames_do_not() {
        let mut a = FrameAccount::new(ms(500));
        a.on_frame(ms(0), 1, 1);
        a.on_frame(ms(100), 1, 2);
        a.finish(ms(1000));
        a.on_frame(ms(1100), 1, 3);
        a.finish(ms(5000));
        let s = a.stats();
        assert_eq!((s.frames, s.freezes), (2, 1));
        assert_eq!(s.freeze_total, ms(900));
        assert_eq!(s.end, Some(ms(1000)));
        // Nothing ever arrived: no freeze (the missing first frame is judged elsewhere).
        let mut none = FrameAccount::new(ms(500));
        none.finish(ms(9000));
        assert_eq!(none.stats().freezes, 0);
        assert_eq!(none.stats().fps(Duration::ZERO), None);
    }

    #[test]
    fn skipped_frame_numbers_are_missing_until_they_complete_late() {
        let mut a = FrameAccount::new(ms(500));
        for (t, f) in [(0, 10), (33, 11), (66, 14), (99, 15)] {
            a.on_frame(ms(t), 1, f);
        }
        assert_eq!(a.stats().missing, 2, "12 and 13 never completed");
        // 12 completes after a retransmission: no longer missing, counted late, once.
        a.on_frame(ms(120), 1, 12);
        a.on_frame(ms(121), 1, 12);
        let s = a.stats();
        assert_eq!((s.frames, s.missing, s.late), (5, 1, 1));
        // A late frame does not move the freeze clock.
        assert_eq!(s.last_at, Some(ms(99)));
    }

    #[test]
    fn a_new_publisher_session_starts_its_own_numbering() {
        let mut a = FrameAccount::new(ms(500));
        a.on_frame(ms(0), 1, 500);
        a.on_frame(ms(33), 1, 501);
        // The publisher restarted (new tag, numbers from 1) after 2 s: one freeze, no
        // missing frames.
        a.on_frame(ms(2033), 2, 1);
        a.on_frame(ms(2066), 2, 2);
        let s = a.stats();
        assert_eq!((s.frames, s.missing, s.freezes), (4, 0, 1));
        assert_eq!(s.freeze_total, ms(2000));
    }

    #[test]
    fn loss_comes_from_sequence_counters() {
        let stats = SubscriberStats {
            packets: 990,
            packets_lost: 10,
            duplicates: 0,
            ..SubscriberStats::default()
        };
        let loss = Loss::of(&stats);
        assert_eq!(loss.expected(), 1000);
        assert!((loss.pct() - 1.0).abs() < 1e-9);
        // Duplicates are not extra packets sent.
        let dup = Loss {
            packets: 1005,
            lost: 0,
            duplicates: 5,
        };
        assert_eq!(dup.expected(), 1000);
        assert_eq!(dup.pct(), 0.0);
        assert_eq!(Loss::default().pct(), 0.0);
        // Matches the SDK's own ratio.
        assert!((loss.pct() / 100.0 - stats.loss_ratio()).abs() < 1e-12);
    }

    fn watched(lost: u64, freezes: u64, longest_ms: u64) -> SubscriberOutcome {
        SubscriberOutcome {
            subscribed: true,
            first_frame: true,
            held: true,
            loss: Loss {
                packets: 1000 - lost,
                lost,
                duplicates: 0,
            },
            frames: FrameStats {
                frames: 300,
                freezes,
                freeze_total: ms(longest_ms * freezes),
                freeze_longest: ms(longest_ms),
                first_at: Some(ms(0)),
                last_at: Some(ms(9967)),
                end: Some(ms(10_000)),
                ..FrameStats::default()
            },
            ..SubscriberOutcome::default()
        }
    }

    #[test]
    fn summary_sums_and_takes_the_worst_subscriber() {
        let refused = SubscriberOutcome::default();
        let outcomes = [watched(0, 0, 0), watched(20, 2, 700), refused];
        let m: std::collections::BTreeMap<_, _> = summarize(&outcomes, Duration::from_secs(1))
            .into_iter()
            .collect();
        assert_eq!(m["video_subscribers"], 2.0);
        assert_eq!(m["video_first_frames"], 2.0);
        assert_eq!(m["video_subscribers_held"], 2.0);
        assert_eq!(m["video_packets_lost"], 20.0);
        assert_eq!(m["video_loss_pct"], 1.0);
        assert_eq!(m["video_loss_pct_max"], 2.0);
        assert_eq!(m["video_subscribers_lossy"], 1.0);
        assert_eq!(m["video_freezes"], 2.0);
        assert_eq!(m["video_freeze_total_ms"], 1400.0);
        assert_eq!(m["video_freeze_max_ms"], 700.0);
        assert_eq!(m["video_subscribers_frozen"], 1.0);
        assert_eq!(m["video_fps_min"], 30.0);
        // Every name is a known threshold metric.
        for name in m.keys() {
            assert!(crate::thresholds::is_known_metric(name), "{name}");
        }
        // Nobody watched: no freeze or loss figures at all, so their thresholds fail.
        let m: std::collections::BTreeMap<_, _> =
            summarize(&[SubscriberOutcome::default()], Duration::from_secs(1))
                .into_iter()
                .collect();
        assert_eq!(m["video_first_frames"], 0.0);
        assert!(!m.contains_key("video_freezes") && !m.contains_key("video_loss_pct_max"));
    }

    #[test]
    fn metric_sums_match_whole_names_only() {
        let page = "# HELP x\nferry_sfu_packets_forwarded_total{kind=\"video\"} 10\n\
                    ferry_sfu_packets_forwarded_total{kind=\"audio\"} 5\n\
                    ferry_sfu_packets_forwarded_total_bytes 99\nother 1\n";
        assert_eq!(metric_sum(page, "ferry_sfu_packets_forwarded_total"), 15.0);
        assert_eq!(metric_sum(page, "other"), 1.0);
        assert_eq!(metric_sum(page, "missing"), 0.0);
    }

    #[test]
    fn http_base_is_loopback_only() {
        assert_eq!(
            http_base("ws://127.0.0.1:4000/ws").expect("loopback"),
            "http://127.0.0.1:4000"
        );
        assert!(http_base("ws://10.0.0.1:4000/ws").is_err());
    }
}
