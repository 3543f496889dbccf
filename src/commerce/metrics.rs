//! Commerce metrics for `/metrics`: buys by outcome and their latency, reservations ended by
//! how, expired holds, and payment webhooks by result. Plain atomics like [`crate::metrics`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Buy answers, in the order they are rendered.
pub const BUY_OUTCOMES: [&str; 10] = [
    "reserved",
    "replayed",
    "sold_out",
    "limit_reached",
    "not_started",
    "ended",
    "not_in_market",
    "key_conflict",
    "invalid",
    "unavailable",
];

/// Upper bounds (seconds) of the buy latency histogram.
const BUCKETS: [f64; 9] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

pub const WEBHOOK_RESULTS: [&str; 5] = [
    "confirmed",
    "released",
    "bad_signature",
    "bad_request",
    "error",
];

#[derive(Default)]
pub struct CommerceMetrics {
    buys: [AtomicU64; BUY_OUTCOMES.len()],
    buy_buckets: [AtomicU64; BUCKETS.len()],
    buy_count: AtomicU64,
    buy_micros: AtomicU64,
    pub confirmed: AtomicU64,
    pub released_expired: AtomicU64,
    pub released_cancelled: AtomicU64,
    pub released_payment_failed: AtomicU64,
    webhooks: [AtomicU64; WEBHOOK_RESULTS.len()],
}

impl CommerceMetrics {
    /// Count a buy answer (`outcome` is one of [`BUY_OUTCOMES`]) that took `seconds`.
    pub fn buy(&self, outcome: &str, seconds: f64) {
        if let Some(i) = BUY_OUTCOMES.iter().position(|o| *o == outcome) {
            self.buys[i].fetch_add(1, Relaxed);
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buy_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.buy_count.fetch_add(1, Relaxed);
        self.buy_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    pub fn webhook(&self, result: &str) {
        if let Some(i) = WEBHOOK_RESULTS.iter().position(|o| *o == result) {
            self.webhooks[i].fetch_add(1, Relaxed);
        }
    }

    pub fn buys_with(&self, outcome: &str) -> u64 {
        BUY_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.buys[i].load(Relaxed))
    }

    pub fn render(&self, node: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ferry_buys_total Buy requests by answer.\n# TYPE ferry_buys_total counter"
        );
        for (i, o) in BUY_OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_buys_total{{node=\"{node}\",outcome=\"{o}\"}} {}",
                self.buys[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_buy_seconds Time to answer a buy (store step included).\n# TYPE ferry_buy_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_buy_seconds_bucket{{node=\"{node}\",le=\"{le}\"}} {}",
                self.buy_buckets[i].load(Relaxed)
            );
        }
        let count = self.buy_count.load(Relaxed);
        let _ = writeln!(
            out,
            "ferry_buy_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "ferry_buy_seconds_sum{{node=\"{node}\"}} {}",
            self.buy_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "ferry_buy_seconds_count{{node=\"{node}\"}} {count}");
        let _ = writeln!(out, "# HELP ferry_reservations_ended_total Reservations ended by this node, by how.\n# TYPE ferry_reservations_ended_total counter");
        for (how, v) in [
            ("confirmed", &self.confirmed),
            ("expired", &self.released_expired),
            ("cancelled", &self.released_cancelled),
            ("payment_failed", &self.released_payment_failed),
        ] {
            let _ = writeln!(
                out,
                "ferry_reservations_ended_total{{node=\"{node}\",how=\"{how}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_payment_webhooks_total Payment webhooks by result.\n# TYPE ferry_payment_webhooks_total counter");
        for (i, r) in WEBHOOK_RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_payment_webhooks_total{{node=\"{node}\",result=\"{r}\"}} {}",
                self.webhooks[i].load(Relaxed)
            );
        }
    }
}
