//! The run report: a stable JSON schema (`schema_version`), the end-of-run summary table and
//! the comparison with a baseline report.
//!
//! The schema is documented in `docs/loadtest.md`. Fields are only ever added within a
//! schema version; renaming or removing one bumps [`SCHEMA_VERSION`].

use crate::metrics::Percentiles;
use crate::sale::{SaleVerdict, StockCounters, StreamSummary};
use crate::thresholds::ThresholdResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Version of the JSON report schema.
pub const SCHEMA_VERSION: u32 = 1;

/// A whole run, as written to `--json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// `ferry-loadtest <version>`.
    pub tool: String,
    pub scenario: ScenarioInfo,
    /// When the run started, Unix ms.
    pub started_unix_ms: u64,
    /// Wall time of the run (arrivals, hold, drain), seconds.
    pub duration_s: f64,
    /// WebSocket URLs loaded (round-robin).
    pub targets: Vec<String>,
    pub machine: MachineInfo,
    /// True when every threshold passed (and the run completed).
    pub passed: bool,
    pub thresholds: Vec<ThresholdResult>,
    /// Every scalar result by name (the names thresholds use). Metrics without data in this
    /// run are absent.
    pub metrics: BTreeMap<String, f64>,
    /// Latency distributions by name (`join`, `connect`, `comment_latency`, ...).
    pub latencies: BTreeMap<String, Percentiles>,
    /// Errors by kind (`join: join_rate_limited`, `disconnect: 3001`, ...) and count.
    pub errors: BTreeMap<String, u64>,
    /// The server process, when it was local (spawned or given with `--server-pid`).
    pub server: Option<ServerInfo>,
    /// One sample per second.
    pub timeline: Vec<Sample>,
    /// The flash sales of a `buy` scenario, one per room (empty otherwise). Added in
    /// schema 1 after its first release: absent in older reports.
    #[serde(default)]
    pub sales: Vec<SaleReport>,
    /// The live video of a `video` scenario (`null` otherwise). Added in schema 1 after its
    /// first release: absent in older reports.
    #[serde(default)]
    pub video: Option<VideoReport>,
    /// What a reader must know before trusting the numbers.
    pub notes: Vec<String>,
}

/// One flash sale of the run and its verdicts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SaleReport {
    pub room: String,
    /// The sale id.
    pub sale: String,
    pub product: String,
    pub quantity: u64,
    pub per_buyer_limit: u32,
    pub price_cny: i64,
    /// The start instant and the end of buying, server time.
    pub starts_at_unix_ms: u64,
    pub ends_at_unix_ms: u64,
    /// Final answers to this sale's presses, by answer (`reserved`, `sold_out`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// The order-event stream as the harness's consumer group read it; `null` when it could
    /// not be read.
    pub stream: Option<StreamSummary>,
    /// The stock counters of the audit snapshot; `null` when they could not be read.
    pub stock: Option<StockCounters>,
    /// The correctness verdicts; `null` when the stream could not be read.
    pub verdicts: Option<SaleVerdict>,
    /// Why the stream or the audit could not be read.
    pub error: Option<String>,
}

/// The video of the run: what the publishers sent and how subscribers were judged (their
/// results are the `video_*` metrics).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VideoReport {
    /// The node whose SFU served the video (`http://...`, the first target).
    pub target: String,
    /// `vp8` or `h264` (synthetic payloads shaped like them).
    pub codec: String,
    pub bitrate_bps: u64,
    pub fps: u32,
    /// Simulcast layers, lowest first (empty: one stream at `bitrate_bps`).
    pub simulcast: Vec<VideoLayerInfo>,
    pub audio: bool,
    pub freeze_threshold_ms: f64,
    pub first_frame_timeout_ms: f64,
    /// One per room when the scenario publishes, else empty.
    pub publishers: Vec<PublisherReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VideoLayerInfo {
    pub rid: String,
    pub bitrate_bps: u64,
}

/// One synthetic WHIP publisher and what it sent (its SDK counters when it stopped).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublisherReport {
    pub room: String,
    /// ICE and DTLS came up before the arrivals started.
    pub connected: bool,
    /// Video frames sent (of the lowest layer with simulcast) and how many were keyframes.
    pub video_frames: u64,
    pub keyframes: u64,
    /// RTP packets and payload bytes sent, every track and layer.
    pub packets: u64,
    pub bytes: u64,
    /// Keyframe requests (PLI/FIR) the server sent it.
    pub keyframe_requests: u64,
    /// Why it could not publish.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioInfo {
    pub name: String,
    pub description: String,
    /// The scenario file, when loaded from one.
    pub file: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cores: usize,
    pub mem_gib: f64,
    /// The soft RLIMIT_NOFILE the load generator ran with.
    pub fd_limit: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerInfo {
    pub pid: u32,
    /// Whether the harness started it (`--spawn`).
    pub spawned: bool,
    pub log: Option<String>,
    /// How it ended, when spawned.
    pub exit: Option<String>,
}

/// One point of the time series (about one per second).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Open connections (connected clients).
    pub connections: u64,
    /// Viewers in their room.
    pub viewers_joined: u64,
    pub joins_per_s: f64,
    pub join_failures_per_s: f64,
    pub comments_per_s: f64,
    /// Room events received by all clients per second.
    pub deliveries_per_s: f64,
    pub errors_per_s: f64,
    pub join_p50_ms: Option<f64>,
    pub join_p99_ms: Option<f64>,
    pub comment_latency_p50_ms: Option<f64>,
    pub comment_latency_p99_ms: Option<f64>,
    pub comment_latency_p999_ms: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mib: Option<f64>,
    /// Final answers to Buy presses per second (0 without a `buy` behaviour). Added in schema
    /// 1 after its first release.
    #[serde(default)]
    pub buys_per_s: f64,
    #[serde(default)]
    pub buy_p50_ms: Option<f64>,
    #[serde(default)]
    pub buy_p99_ms: Option<f64>,
    /// WHEP subscribers receiving video (first frame seen, session alive; 0 without a
    /// `video` behaviour). This and the next four were added in schema 1 after its first
    /// release.
    #[serde(default)]
    pub video_subscribers: u64,
    /// Complete video frames received by all subscribers per second.
    #[serde(default)]
    pub video_frames_per_s: f64,
    /// Freezes that ended (or were found at the end) per second.
    #[serde(default)]
    pub video_freezes_per_s: f64,
    /// Time to first frame of the subscribers whose first frame came in the interval.
    #[serde(default)]
    pub video_ttff_p50_ms: Option<f64>,
    #[serde(default)]
    pub video_ttff_p99_ms: Option<f64>,
}

impl Report {
    pub fn to_json(&self) -> String {
        // A struct of plain data with string keys always serializes.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The end-of-run summary: latency percentiles, counts, thresholds and the verdict.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nferry-loadtest: scenario `{}`, {:.1} s, targets {}",
            self.scenario.name,
            self.duration_s,
            self.targets.join(", ")
        );
        let _ = writeln!(
            out,
            "\n{:<18} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p) in &self.latencies {
            let _ = writeln!(
                out,
                "{:<18} {:>9} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                name, p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
        let _ = writeln!(out);
        let counters = [
            "viewers_scheduled",
            "viewers_joined",
            "viewers_peak",
            "join_failures",
            "join_retries",
            "joins_per_s",
            "comments_sent",
            "comments_accepted",
            "comments_rejected",
            "likes_sent",
            "churn_reconnects",
            "deliveries",
            "deliveries_per_s",
            "comment_deliveries_per_s",
            "completeness_pct",
            "undelivered_events",
            "silent_gaps",
            "duplicates",
            "unrecovered",
            "server_disconnects",
            "errors",
            "server_cpu_pct",
            "server_rss_max_mib",
            "loadgen_cpu_s",
            "loadgen_rss_mib",
            "machine_busy_pct",
            "other_cpu_s",
            "softirq_cpu_s",
        ];
        for name in counters
            .iter()
            .chain(&crate::thresholds::SALE_METRICS)
            .chain(&crate::thresholds::VIDEO_METRICS)
        {
            if let Some(v) = self.metrics.get(*name) {
                let _ = writeln!(out, "{name:<26} {}", fmt_value(*v));
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nerrors:");
            for (k, v) in &self.errors {
                let _ = writeln!(out, "  {v:>8} × {k}");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if !self.thresholds.is_empty() {
            let _ = writeln!(out, "\nthresholds:");
            for t in &self.thresholds {
                let _ = writeln!(
                    out,
                    "  {} {:<40} (measured: {})",
                    if t.passed { "PASS" } else { "FAIL" },
                    t.expression,
                    t.value.map_or("no data".to_owned(), fmt_value)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nverdict: {}",
            if self.passed { "PASSED" } else { "FAILED" }
        );
        out
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Compare this run's metrics with a baseline report (any JSON with a `metrics` object).
/// Lists every metric present in either, with the change.
pub fn baseline_diff(baseline: &serde_json::Value, current: &Report) -> Result<String, String> {
    let version = baseline
        .get("schema_version")
        .and_then(serde_json::Value::as_u64);
    let old = baseline
        .get("metrics")
        .and_then(serde_json::Value::as_object)
        .ok_or("the baseline has no `metrics` object (is it a ferry-loadtest JSON report?)")?;
    let mut out = String::new();
    let name = baseline
        .pointer("/scenario/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?");
    let _ = writeln!(out, "\nchanges against the baseline (scenario `{name}`):");
    if version != Some(u64::from(SCHEMA_VERSION)) {
        let _ = writeln!(
            out,
            "note: baseline schema_version {version:?}, this report {SCHEMA_VERSION}"
        );
    }
    let _ = writeln!(
        out,
        "{:<30} {:>14} {:>14} {:>14} {:>9}",
        "metric", "baseline", "now", "change", "change %"
    );
    let mut names: Vec<&String> = old.keys().chain(current.metrics.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let before = old.get(name.as_str()).and_then(serde_json::Value::as_f64);
        let now = current.metrics.get(name.as_str()).copied();
        let show = |v: Option<f64>| v.map_or("-".to_owned(), fmt_value);
        let (delta, pct) = match (before, now) {
            (Some(b), Some(n)) => (
                fmt_value(n - b),
                if b != 0.0 {
                    format!("{:+.1}", 100.0 * (n - b) / b.abs())
                } else {
                    "-".to_owned()
                },
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:<30} {:>14} {:>14} {:>14} {:>9}",
            name,
            show(before),
            show(now),
            delta,
            pct
        );
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_report() -> Report {
        let latency = Percentiles {
            count: 10,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            p999_ms: 4.0,
            max_ms: 5.0,
            mean_ms: 1.5,
        };
        Report {
            schema_version: SCHEMA_VERSION,
            tool: "ferry-loadtest 0.1.0".into(),
            scenario: ScenarioInfo {
                name: "smoke".into(),
                description: "d".into(),
                file: None,
            },
            started_unix_ms: 1,
            duration_s: 2.0,
            targets: vec!["ws://127.0.0.1:1/ws".into()],
            machine: MachineInfo {
                cores: 2,
                mem_gib: 4.0,
                fd_limit: 1024,
            },
            passed: true,
            thresholds: vec![ThresholdResult {
                expression: "silent_gaps == 0".into(),
                metric: "silent_gaps".into(),
                value: Some(0.0),
                passed: true,
            }],
            metrics: [
                ("silent_gaps".to_owned(), 0.0),
                ("join_p99_ms".to_owned(), 3.0),
            ]
            .into(),
            latencies: [("join".to_owned(), latency)].into(),
            errors: BTreeMap::new(),
            server: Some(ServerInfo {
                pid: 7,
                spawned: true,
                log: None,
                exit: None,
            }),
            timeline: vec![Sample::default()],
            sales: vec![SaleReport {
                room: "flash-0".into(),
                sale: "s1".into(),
                product: "flash-product".into(),
                quantity: 10,
                per_buyer_limit: 1,
                price_cny: 5900,
                starts_at_unix_ms: 1,
                ends_at_unix_ms: 2,
                outcomes: [("reserved".to_owned(), 10)].into(),
                stream: Some(StreamSummary::default()),
                stock: Some(StockCounters {
                    quantity: 10,
                    remaining: 0,
                    reserved: 10,
                    confirmed: 0,
                }),
                verdicts: Some(SaleVerdict::default()),
                error: None,
            }],
            video: Some(VideoReport {
                target: "http://127.0.0.1:1".into(),
                codec: "vp8".into(),
                bitrate_bps: 1_500_000,
                fps: 30,
                simulcast: vec![VideoLayerInfo {
                    rid: "l".into(),
                    bitrate_bps: 150_000,
                }],
                audio: true,
                freeze_threshold_ms: 500.0,
                first_frame_timeout_ms: 10_000.0,
                publishers: vec![PublisherReport {
                    room: "video-0".into(),
                    connected: true,
                    ..PublisherReport::default()
                }],
            }),
            notes: vec![],
        }
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    /// The documented schema: changing any of these names is a schema change.
    #[test]
    fn json_report_has_the_documented_field_names() {
        let json: serde_json::Value =
            serde_json::from_str(&sample_report().to_json()).expect("valid JSON");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(
            keys(&json),
            [
                "duration_s",
                "errors",
                "latencies",
                "machine",
                "metrics",
                "notes",
                "passed",
                "sales",
                "scenario",
                "schema_version",
                "server",
                "started_unix_ms",
                "targets",
                "thresholds",
                "timeline",
                "tool",
                "video"
            ]
        );
        assert_eq!(
            keys(&json["latencies"]["join"]),
            ["count", "max_ms", "mean_ms", "p50_ms", "p90_ms", "p999_ms", "p99_ms"]
        );
        assert_eq!(
            keys(&json["thresholds"][0]),
            ["expression", "metric", "passed", "value"]
        );
        assert_eq!(keys(&json["scenario"]), ["description", "file", "name"]);
        assert_eq!(keys(&json["machine"]), ["cores", "fd_limit", "mem_gib"]);
        assert_eq!(keys(&json["server"]), ["exit", "log", "pid", "spawned"]);
        assert_eq!(
            keys(&json["timeline"][0]),
            [
                "buy_p50_ms",
                "buy_p99_ms",
                "buys_per_s",
                "comment_latency_p50_ms",
                "comment_latency_p999_ms",
                "comment_latency_p99_ms",
                "comments_per_s",
                "connections",
                "deliveries_per_s",
                "errors_per_s",
                "join_failures_per_s",
                "join_p50_ms",
                "join_p99_ms",
                "joins_per_s",
                "server_cpu_pct",
                "server_rss_mib",
                "t_s",
                "video_frames_per_s",
                "video_freezes_per_s",
                "video_subscribers",
                "video_ttff_p50_ms",
                "video_ttff_p99_ms",
                "viewers_joined"
            ]
        );
        assert_eq!(
            keys(&json["video"]),
            [
                "audio",
                "bitrate_bps",
                "codec",
                "first_frame_timeout_ms",
                "fps",
                "freeze_threshold_ms",
                "publishers",
                "simulcast",
                "target"
            ]
        );
        assert_eq!(keys(&json["video"]["simulcast"][0]), ["bitrate_bps", "rid"]);
        assert_eq!(
            keys(&json["video"]["publishers"][0]),
            [
                "bytes",
                "connected",
                "error",
                "keyframe_requests",
                "keyframes",
                "packets",
                "room",
                "video_frames"
            ]
        );
        assert_eq!(
            keys(&json["sales"][0]),
            [
                "ends_at_unix_ms",
                "error",
                "outcomes",
                "per_buyer_limit",
                "price_cny",
                "product",
                "quantity",
                "room",
                "sale",
                "starts_at_unix_ms",
                "stock",
                "stream",
                "verdicts"
            ]
        );
        assert_eq!(
            keys(&json["sales"][0]["verdicts"]),
            [
                "buyers_over_limit",
                "double_reservations",
                "lost_reservations",
                "oversold",
                "phantom_reservations",
                "stock_unaccounted",
                "stream_anomalies"
            ]
        );
        assert_eq!(
            keys(&json["sales"][0]["stream"]),
            [
                "active_units",
                "confirmed",
                "confirmed_units",
                "events",
                "max_units_held",
                "released",
                "reserved"
            ]
        );
        assert_eq!(
            keys(&json["sales"][0]["stock"]),
            ["confirmed", "quantity", "remaining", "reserved"]
        );
        // And it reads back.
        let back: Report = serde_json::from_value(json.clone()).expect("round trip");
        assert_eq!(back.metrics["join_p99_ms"], 3.0);
        // A report written before the flash-sale fields were added still reads.
        let mut old = json;
        if let Some(o) = old.as_object_mut() {
            o.remove("sales");
            o.remove("video");
        }
        if let Some(o) = old["timeline"][0].as_object_mut() {
            for added in [
                "buys_per_s",
                "buy_p50_ms",
                "buy_p99_ms",
                "video_subscribers",
                "video_frames_per_s",
                "video_freezes_per_s",
                "video_ttff_p50_ms",
                "video_ttff_p99_ms",
            ] {
                o.remove(added);
            }
        }
        let back: Report = serde_json::from_value(old).expect("older schema-1 report");
        assert!(back.sales.is_empty());
        assert!(back.video.is_none());
    }

    #[test]
    fn baseline_diff_lists_changes() {
        let old = serde_json::json!({
            "schema_version": 1,
            "scenario": {"name": "smoke"},
            "metrics": {"join_p99_ms": 2.0, "gone": 1.0}
        });
        let diff = baseline_diff(&old, &sample_report()).expect("diff");
        assert!(diff.contains("join_p99_ms"), "{diff}");
        assert!(diff.contains("+50.0"), "{diff}");
        assert!(diff.contains("gone"), "{diff}");
        assert!(baseline_diff(&serde_json::json!({}), &sample_report()).is_err());
    }

    #[test]
    fn baseline_diff_compares_video_metrics() {
        let old = serde_json::json!({
            "schema_version": 1,
            "scenario": {"name": "video-fanout"},
            "metrics": {"video_ttff_p99_ms": 400.0, "video_freezes": 0.0, "video_loss_pct_max": 0.5}
        });
        let mut now = sample_report();
        now.metrics.insert("video_ttff_p99_ms".into(), 600.0);
        now.metrics.insert("video_freezes".into(), 3.0);
        now.metrics.insert("video_loss_pct_max".into(), 0.25);
        let diff = baseline_diff(&old, &now).expect("diff");
        let line = |name: &str| {
            diff.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {diff}"))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
        };
        assert_eq!(line("video_ttff_p99_ms"), ["400", "600", "200", "+50.0"]);
        // From 0: the change, and no percentage.
        assert_eq!(line("video_freezes"), ["0", "3", "3", "-"]);
        assert_eq!(
            line("video_loss_pct_max"),
            ["0.500", "0.250", "-0.250", "-50.0"]
        );
    }

    #[test]
    fn summary_lists_video_metrics_in_order() {
        let mut r = sample_report();
        r.metrics.insert("video_subscribers_held".into(), 100.0);
        r.metrics.insert("video_freezes".into(), 0.0);
        r.metrics.insert("video_loss_pct_max".into(), 0.125);
        let text = r.summary();
        let held = text.find("video_subscribers_held").expect("held");
        let loss = text.find("video_loss_pct_max").expect("loss");
        let freezes = text.find("video_freezes").expect("freezes");
        assert!(held < loss && loss < freezes, "{text}");
        assert!(text.contains("0.125"), "{text}");
    }

    #[test]
    fn summary_shows_percentiles_and_verdict() {
        let mut r = sample_report();
        let text = r.summary();
        assert!(text.contains("p99.9") && text.contains("PASSED"), "{text}");
        r.passed = false;
        r.thresholds[0].passed = false;
        assert!(r.summary().contains("FAIL silent_gaps == 0"));
    }
}
