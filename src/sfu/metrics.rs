//! SFU metrics for `/metrics`: sessions, forwarded packets and bytes, keyframe requests, NACKs
//! and the simulcast layer each viewer gets. Plain atomics like [`crate::metrics`]; the driver
//! copies its counters here in batches, never per packet.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why a WHIP/WHEP session was refused, in the order they are rendered.
pub const REFUSALS: [&str; 5] = ["room_busy", "full", "bad_sdp", "auth", "draining"];

#[derive(Default)]
pub struct SfuMetrics {
    pub publishers: AtomicI64,
    pub subscribers: AtomicI64,
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_forwarded: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub packets_dropped: AtomicU64,
    pub keyframe_requests_in: AtomicU64,
    pub keyframe_requests_out: AtomicU64,
    pub layer_switches: AtomicU64,
    /// NACKs received from viewers (answered from the RTX cache).
    pub nacks_in: AtomicU64,
    /// NACKs sent to publishers for packets lost on the way in.
    pub nacks_out: AtomicU64,
    /// Viewers currently on each simulcast layer rank (0 = lowest bitrate).
    pub viewers_on_layer: [AtomicU64; 4],
    pub sessions_total: AtomicU64,
    refusals: [AtomicU64; REFUSALS.len()],
    pub udp_send_errors: AtomicU64,
    /// The UDP socket failed: `/readyz` answers 503.
    pub socket_failed: AtomicBool,
    /// Rooms whose live lease this node holds (publishers connected here).
    pub live_leases: AtomicI64,
    /// Live lease claims and renewals the engine failed (unreachable).
    pub lease_errors: AtomicU64,
    /// Streams this node ended because their hosting node stopped renewing the lease.
    pub lease_lapses: AtomicU64,
    /// WHEP requests redirected (307) to the node hosting the room's publisher.
    pub whep_redirects: AtomicU64,
}

impl SfuMetrics {
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Relaxed);
        }
    }

    pub fn render(&self, node: &str, out: &mut String) {
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
        };
        let g = |a: &AtomicI64| a.load(Relaxed).to_string();
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        one(
            "ferry_sfu_publishers",
            "gauge",
            "WHIP sessions (publishers) on this node.",
            g(&self.publishers),
        );
        one(
            "ferry_sfu_subscribers",
            "gauge",
            "WHEP sessions (viewers) on this node.",
            g(&self.subscribers),
        );
        one(
            "ferry_sfu_sessions_total",
            "counter",
            "WHIP and WHEP sessions admitted.",
            c(&self.sessions_total),
        );
        one(
            "ferry_sfu_packets_received_total",
            "counter",
            "RTP packets received from publishers.",
            c(&self.packets_in),
        );
        one(
            "ferry_sfu_bytes_received_total",
            "counter",
            "RTP payload bytes received from publishers.",
            c(&self.bytes_in),
        );
        one(
            "ferry_sfu_packets_forwarded_total",
            "counter",
            "RTP packets forwarded to viewers (packets x viewers).",
            c(&self.packets_forwarded),
        );
        one(
            "ferry_sfu_bytes_forwarded_total",
            "counter",
            "RTP payload bytes forwarded to viewers.",
            c(&self.bytes_forwarded),
        );
        one(
            "ferry_sfu_packets_dropped_total",
            "counter",
            "Packets not forwarded to a viewer (other layer, waiting for a keyframe).",
            c(&self.packets_dropped),
        );
        one(
            "ferry_sfu_layer_switches_total",
            "counter",
            "Simulcast layer switches of viewers.",
            c(&self.layer_switches),
        );
        one(
            "ferry_sfu_udp_send_errors_total",
            "counter",
            "UDP datagrams the socket failed to send.",
            c(&self.udp_send_errors),
        );
        one(
            "ferry_sfu_live_leases",
            "gauge",
            "Rooms whose live lease this node holds (their publisher is connected here).",
            g(&self.live_leases),
        );
        one(
            "ferry_sfu_live_lease_errors_total",
            "counter",
            "Live lease claims and renewals that failed (engine unreachable).",
            c(&self.lease_errors),
        );
        one(
            "ferry_sfu_live_lease_lapses_total",
            "counter",
            "Streams this node ended (stream_ended, reason timeout) because the hosting node stopped renewing its live lease.",
            c(&self.lease_lapses),
        );
        one(
            "ferry_sfu_whep_redirects_total",
            "counter",
            "WHEP requests answered 307 with the URL of the node hosting the room's publisher.",
            c(&self.whep_redirects),
        );
        let _ = writeln!(out, "# HELP ferry_sfu_keyframe_requests_total Keyframe requests: in = from viewers (PLI/FIR, joins, layer switches), out = sent to publishers after merging and throttling.\n# TYPE ferry_sfu_keyframe_requests_total counter");
        for (dir, v) in [
            ("in", &self.keyframe_requests_in),
            ("out", &self.keyframe_requests_out),
        ] {
            let _ = writeln!(
                out,
                "ferry_sfu_keyframe_requests_total{{node=\"{node}\",direction=\"{dir}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_sfu_nacks_total NACKs: in = from viewers (answered by retransmission), out = sent to publishers.\n# TYPE ferry_sfu_nacks_total counter");
        for (dir, v) in [("in", &self.nacks_in), ("out", &self.nacks_out)] {
            let _ = writeln!(
                out,
                "ferry_sfu_nacks_total{{node=\"{node}\",direction=\"{dir}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_sfu_viewers_on_layer Video viewers per simulcast layer rank (0 = lowest bitrate; single-layer streams count as 0).\n# TYPE ferry_sfu_viewers_on_layer gauge");
        for (i, v) in self.viewers_on_layer.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_sfu_viewers_on_layer{{node=\"{node}\",layer=\"{i}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_sfu_sessions_refused_total WHIP/WHEP sessions refused, by reason.\n# TYPE ferry_sfu_sessions_refused_total counter");
        for (i, r) in REFUSALS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_sfu_sessions_refused_total{{node=\"{node}\",reason=\"{r}\"}} {}",
                self.refusals[i].load(Relaxed)
            );
        }
    }
}
