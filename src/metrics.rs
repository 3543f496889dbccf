//! Prometheus metrics: plain atomics, rendered as text exposition format on `/metrics`.
//! Hot paths add once per batch (not once per recipient) to keep shared cache lines quiet.

use ferry_client::protocol::CloseCode;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub rooms: AtomicI64,
    pub room_members: AtomicI64,
    pub frames_in: AtomicU64,
    pub commands_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub events_published: AtomicU64,
    pub events_delivered: AtomicU64,
    pub bytes_out: AtomicU64,
    pub queued_frames: AtomicI64,
    pub drops_slow_consumer: AtomicU64,
    pub drops_stream_gap: AtomicU64,
    pub errors_sent: AtomicU64,
    pub rate_limited: AtomicU64,
    pub joins: AtomicU64,
    pub joins_refused: AtomicU64,
    pub resumes_recovered: AtomicU64,
    pub resumes_failed: AtomicU64,
    pub engine_errors: AtomicU64,
    disconnects: [AtomicU64; CloseCode::ALL.len()],
    /// Closes with codes outside Ferry's own (client-initiated 1000/1001, abnormal...).
    disconnects_other: AtomicU64,
}

impl Metrics {
    pub fn disconnect(&self, code: Option<CloseCode>) {
        match code.and_then(|c| CloseCode::ALL.iter().position(|x| *x == c)) {
            Some(i) => self.disconnects[i].fetch_add(1, Relaxed),
            None => self.disconnects_other.fetch_add(1, Relaxed),
        };
    }

    pub fn disconnects_with(&self, code: CloseCode) -> u64 {
        CloseCode::ALL
            .iter()
            .position(|x| *x == code)
            .map(|i| self.disconnects[i].load(Relaxed))
            .unwrap_or(0)
    }

    /// Render in Prometheus text exposition format.
    pub fn render(&self, node: &str) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
        };
        let g = |a: &AtomicI64| a.load(Relaxed).to_string();
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        one(
            "ferry_connections",
            "gauge",
            "Open WebSocket connections.",
            g(&self.connections),
        );
        one(
            "ferry_connections_total",
            "counter",
            "WebSocket connections accepted.",
            c(&self.connections_total),
        );
        one(
            "ferry_connections_refused_total",
            "counter",
            "Connections refused (auth, node full, draining).",
            c(&self.connections_refused),
        );
        one(
            "ferry_rooms",
            "gauge",
            "Rooms with members on this node.",
            g(&self.rooms),
        );
        one(
            "ferry_room_members",
            "gauge",
            "Room memberships on this node.",
            g(&self.room_members),
        );
        one(
            "ferry_frames_in_total",
            "counter",
            "WebSocket frames received.",
            c(&self.frames_in),
        );
        one(
            "ferry_commands_in_total",
            "counter",
            "Commands accepted for processing.",
            c(&self.commands_in),
        );
        one(
            "ferry_frames_out_total",
            "counter",
            "WebSocket frames queued to clients.",
            c(&self.frames_out),
        );
        one(
            "ferry_events_published_total",
            "counter",
            "Room events published by this node.",
            c(&self.events_published),
        );
        one(
            "ferry_events_delivered_total",
            "counter",
            "Room events delivered to clients (events x recipients).",
            c(&self.events_delivered),
        );
        one(
            "ferry_bytes_out_total",
            "counter",
            "Payload bytes queued to clients.",
            c(&self.bytes_out),
        );
        one(
            "ferry_send_queue_frames",
            "gauge",
            "Frames waiting in all per-connection send queues.",
            g(&self.queued_frames),
        );
        one(
            "ferry_errors_sent_total",
            "counter",
            "Error replies sent.",
            c(&self.errors_sent),
        );
        one(
            "ferry_rate_limited_total",
            "counter",
            "Commands refused by a rate limit or slow mode.",
            c(&self.rate_limited),
        );
        one(
            "ferry_joins_total",
            "counter",
            "Room joins admitted.",
            c(&self.joins),
        );
        one(
            "ferry_joins_refused_total",
            "counter",
            "Room joins refused.",
            c(&self.joins_refused),
        );
        one(
            "ferry_resumes_recovered_total",
            "counter",
            "Resumes that recovered every missed event.",
            c(&self.resumes_recovered),
        );
        one(
            "ferry_resumes_failed_total",
            "counter",
            "Resumes answered recovered=false.",
            c(&self.resumes_failed),
        );
        one(
            "ferry_engine_errors_total",
            "counter",
            "Engine operations that failed.",
            c(&self.engine_errors),
        );
        let _ = writeln!(out, "# HELP ferry_drops_total Connections dropped by the server, by reason.\n# TYPE ferry_drops_total counter");
        let _ = writeln!(
            out,
            "ferry_drops_total{{node=\"{node}\",reason=\"slow_consumer\"}} {}",
            self.drops_slow_consumer.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "ferry_drops_total{{node=\"{node}\",reason=\"stream_gap\"}} {}",
            self.drops_stream_gap.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP ferry_disconnects_total Closed connections by close code.\n# TYPE ferry_disconnects_total counter");
        for (i, code) in CloseCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_disconnects_total{{node=\"{node}\",code=\"{}\",reason=\"{}\"}} {}",
                code.code(),
                code.reason(),
                self.disconnects[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "ferry_disconnects_total{{node=\"{node}\",code=\"other\",reason=\"client or network\"}} {}", self.disconnects_other.load(Relaxed));
        out
    }
}
