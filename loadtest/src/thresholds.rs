//! Thresholds (SLOs): `"<metric> <op> <number>"`, evaluated against a report's metrics.
//!
//! Metric names are checked when the scenario is loaded, so a typo is an error rather than a
//! threshold that can never fail. A metric with no data in the run (say, comment latency in
//! a run where no comment was delivered) fails its threshold: no evidence is not a pass.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Comparison operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Op::Lt => value < limit,
            Op::Le => value <= limit,
            Op::Gt => value > limit,
            Op::Ge => value >= limit,
            Op::Eq => value == limit,
            Op::Ne => value != limit,
        }
    }
}

/// One parsed threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub metric: String,
    pub op: Op,
    pub limit: f64,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.symbol(), self.limit)
    }
}

/// Latency histograms a run records; each gives `<name>_{count,p50_ms,p90_ms,p99_ms,
/// p999_ms,max_ms,mean_ms}`.
pub const LATENCY_METRICS: [&str; 9] = [
    "join",
    "connect",
    "comment_latency",
    "comment_ack",
    "like_ack",
    "rejoin",
    "buy",
    "video_ttff",
    "video_latency",
];

/// Every other metric of the report's `metrics` map (documented in `docs/loadtest.md`).
pub const PLAIN_METRICS: [&str; 35] = [
    "viewers_scheduled",
    "viewers_joined",
    "viewers_peak",
    "join_failures",
    "join_success_pct",
    "join_retries",
    "joins_per_s",
    "comments_sent",
    "comments_accepted",
    "comments_rejected",
    "comments_per_s",
    "likes_sent",
    "likes_accepted",
    "churn_reconnects",
    "deliveries",
    "deliveries_per_s",
    "comment_deliveries",
    "comment_deliveries_per_s",
    "expected_events",
    "received_events",
    "completeness_pct",
    "undelivered_events",
    "silent_gaps",
    "duplicates",
    "unrecovered",
    "server_disconnects",
    "errors",
    "server_cpu_s",
    "server_cpu_pct",
    "server_rss_max_mib",
    "loadgen_cpu_s",
    "machine_busy_pct",
    "other_cpu_s",
    "softirq_cpu_s",
    "loadgen_rss_mib",
];

/// The metrics of a flash sale (the `buy` behaviour), also in the report's `metrics` map;
/// the summary prints them in this order.
pub const SALE_METRICS: [&str; 28] = [
    // The `buy` behaviour: presses, final answers by kind, rates.
    "buy_presses_scheduled",
    "buy_presses",
    "buy_double_clicks",
    "buy_reserved",
    "buy_replayed",
    "buy_sold_out",
    "buy_limit_reached",
    "buy_not_started",
    "buy_ended",
    "buy_not_in_market",
    "buy_idempotency_conflict",
    "buy_unavailable",
    "buy_errors",
    "buy_not_started_retried",
    "buy_retries",
    "sales_launched",
    "reservations_per_s",
    "buy_answers_per_s",
    // Its correctness verdicts, from the order-event stream (summed over the sales).
    "oversold",
    "buyers_over_limit",
    "lost_reservations",
    "phantom_reservations",
    "double_reservations",
    "stream_anomalies",
    "stock_unaccounted",
    "stock_remaining",
    "stream_reservations",
    "stream_units_held_max",
];

/// The metrics of live video (the `video` behaviour), also in the report's `metrics` map;
/// the summary prints them in this order.
pub const VIDEO_METRICS: [&str; 29] = [
    // The publishers and the server's side.
    "video_publishers",
    "video_publisher_frames",
    "video_keyframe_requests",
    "sfu_packets_forwarded",
    // The subscribers: who got in and stayed.
    "video_subscribers_scheduled",
    "video_subscribers",
    "video_first_frames",
    "video_first_frame_pct",
    "video_subscribe_failures",
    "video_subscribers_peak",
    "video_subscribers_held",
    "video_drops",
    // What they received.
    "video_packets",
    "video_packets_lost",
    "video_loss_pct",
    "video_loss_pct_max",
    "video_subscribers_lossy",
    "video_frames",
    "video_frames_missing",
    "video_frames_late",
    "video_frames_out_of_order",
    "video_frames_unobserved",
    "video_fps_min",
    "video_fps_mean",
    "video_freezes",
    "video_freeze_total_ms",
    "video_freeze_max_ms",
    "video_subscribers_frozen",
    "video_sessions_unreported",
];

/// Whether `name` is a metric a report can contain.
pub fn is_known_metric(name: &str) -> bool {
    if PLAIN_METRICS.contains(&name)
        || SALE_METRICS.contains(&name)
        || VIDEO_METRICS.contains(&name)
    {
        return true;
    }
    LATENCY_METRICS.iter().any(|h| {
        name.strip_prefix(h)
            .and_then(|rest| rest.strip_prefix('_'))
            .is_some_and(|stat| {
                [
                    "count", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms",
                ]
                .contains(&stat)
            })
    })
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [metric, op, limit] = parts.as_slice() else {
            return Err(format!(
                "`{s}`: expected `<metric> <op> <number>`, e.g. `join_p99_ms < 500`"
            ));
        };
        let op = match *op {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            other => {
                return Err(format!(
                    "`{s}`: unknown operator `{other}` (use <, <=, >, >=, == or !=)"
                ))
            }
        };
        let limit: f64 = limit
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("`{s}`: `{limit}` is not a number"))?;
        if !is_known_metric(metric) {
            return Err(format!(
                "`{s}`: unknown metric `{metric}` (see docs/loadtest.md for the list)"
            ));
        }
        Ok(Threshold {
            metric: (*metric).to_owned(),
            op,
            limit,
        })
    }
}

/// The outcome of one threshold (the JSON report's shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    pub expression: String,
    pub metric: String,
    /// The measured value; `null` when the run produced no data for the metric.
    pub value: Option<f64>,
    pub passed: bool,
}

/// Evaluate every threshold against `metrics`.
pub fn evaluate(thresholds: &[Threshold], metrics: &BTreeMap<String, f64>) -> Vec<ThresholdResult> {
    thresholds
        .iter()
        .map(|t| {
            let value = metrics.get(&t.metric).copied();
            ThresholdResult {
                expression: t.to_string(),
                metric: t.metric.clone(),
                value,
                passed: value.is_some_and(|v| t.op.holds(v, t.limit)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn parses_every_operator_and_rejects_nonsense() {
        for (text, op) in [
            ("join_p99_ms < 500", Op::Lt),
            ("join_p99_ms <= 500", Op::Le),
            ("completeness_pct > 99", Op::Gt),
            ("completeness_pct >= 99.9", Op::Ge),
            ("silent_gaps == 0", Op::Eq),
            ("errors != 1", Op::Ne),
        ] {
            let t: Threshold = text.parse().expect(text);
            assert_eq!(t.op, op);
        }
        assert!("join_p99_ms<500".parse::<Threshold>().is_err());
        assert!("join_p99_ms =< 500".parse::<Threshold>().is_err());
        assert!("join_p99_ms < fast".parse::<Threshold>().is_err());
        let err = "join_p98_ms < 5".parse::<Threshold>().expect_err("unknown");
        assert!(err.contains("join_p98_ms"), "{err}");
        assert!(is_known_metric("comment_latency_p999_ms"));
        assert!(is_known_metric("rejoin_count"));
        assert!(is_known_metric("buy_p99_ms"));
        assert!(is_known_metric("oversold"));
        // Every answer of a press has its metric.
        for name in crate::sale::BuyOutcome::NAMES {
            assert!(is_known_metric(&format!("buy_{name}")), "{name}");
        }
        assert!(!is_known_metric("comment_latency"));
        // Live video: first frame and frame latency histograms, loss, freezes.
        for text in [
            "video_ttff_p99_ms < 3000",
            "video_latency_p999_ms < 200",
            "video_loss_pct_max < 1",
            "video_freezes == 0",
            "video_freeze_max_ms <= 500",
            "video_first_frame_pct >= 100",
            "video_subscribers_held >= 100",
        ] {
            let t: Threshold = text.parse().expect(text);
            assert!(text.starts_with(&t.metric), "{text}");
        }
        for typo in [
            "video_ttff_ms < 1",
            "video_loss_max < 1",
            "video_freeze < 1",
        ] {
            let err = typo.parse::<Threshold>().expect_err(typo);
            assert!(err.contains("unknown metric"), "{err}");
        }
    }

    #[test]
    fn evaluation_passes_fails_and_fails_without_data() {
        let thresholds: Vec<Threshold> = [
            "comment_latency_p99_ms < 100",
            "join_p99_ms < 500",
            "silent_gaps == 0",
            "completeness_pct >= 99.9",
        ]
        .iter()
        .map(|t| t.parse().expect("valid"))
        .collect();
        let results = evaluate(
            &thresholds,
            &metrics(&[
                ("comment_latency_p99_ms", 99.0),
                ("join_p99_ms", 500.0),
                ("silent_gaps", 0.0),
            ]),
        );
        let passed: Vec<bool> = results.iter().map(|r| r.passed).collect();
        assert_eq!(passed, [true, false, true, false]);
        assert_eq!(results[3].value, None);
        assert_eq!(results[1].expression, "join_p99_ms < 500");
    }
}
