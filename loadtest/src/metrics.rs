//! Latency recording: HdrHistograms in microseconds, sharded so thousands of client tasks
//! can record at once, with a per-interval view for the time series.
//!
//! Every [`LatencyRecorder`] keeps two histograms per shard: the whole run, and the current
//! interval (drained once a second by the progress task). Merging is exact (HdrHistogram
//! adds bucket counts), so percentiles of the merged histogram are those of all samples.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Largest latency recorded (µs); longer ones are clamped into the top bucket.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
const SHARDS: usize = 32;

/// A latency histogram in µs with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Bounds 1 µs .. 1 h with 3 significant figures are valid constants: this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Merge `other` into `into`. Both come from [`new_histogram`], so the ranges match and the
/// addition cannot fail; a failure would only drop samples, never panic.
pub fn merge(into: &mut Histogram<u64>, other: &Histogram<u64>) {
    let _ = into.add(other);
}

/// Record one duration, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    let _ = h.record(us);
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Percentiles of one histogram, in milliseconds (the JSON report's shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// `None` when the histogram is empty: a percentile of nothing is not 0 ms.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Some(Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: round3(h.mean() / 1000.0),
        })
    }

    /// The flat metric names and values of these percentiles, prefixed with `name`.
    pub fn metrics(&self, name: &str) -> Vec<(String, f64)> {
        vec![
            (format!("{name}_count"), self.count as f64),
            (format!("{name}_p50_ms"), self.p50_ms),
            (format!("{name}_p90_ms"), self.p90_ms),
            (format!("{name}_p99_ms"), self.p99_ms),
            (format!("{name}_p999_ms"), self.p999_ms),
            (format!("{name}_max_ms"), self.max_ms),
            (format!("{name}_mean_ms"), self.mean_ms),
        ]
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

struct Shard {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// A sharded latency histogram: the whole run and the current interval.
pub struct LatencyRecorder {
    shards: Vec<Mutex<Shard>>,
    next: AtomicUsize,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        total: new_histogram(),
                        interval: new_histogram(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl LatencyRecorder {
    pub fn record(&self, d: Duration) {
        let i = self.next.fetch_add(1, Relaxed) % SHARDS;
        let mut shard = lock(&self.shards[i]);
        record(&mut shard.total, d);
        record(&mut shard.interval, d);
    }

    /// Everything recorded so far.
    pub fn total(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in &self.shards {
            merge(&mut out, &lock(shard).total);
        }
        out
    }

    /// What was recorded since the previous call, and reset the interval.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in &self.shards {
            let mut shard = lock(shard);
            merge(&mut out, &shard.interval);
            shard.interval.reset();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_have_the_percentiles_of_all_samples() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for ms in 1..=500 {
            record(&mut a, Duration::from_millis(ms));
        }
        for ms in 501..=1000 {
            record(&mut b, Duration::from_millis(ms));
        }
        let mut all = new_histogram();
        merge(&mut all, &a);
        merge(&mut all, &b);
        let p = Percentiles::of(&all).expect("non-empty");
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn recorder_shards_merge_and_intervals_reset() {
        let r = LatencyRecorder::default();
        for ms in 1..=100 {
            r.record(Duration::from_millis(ms));
        }
        let interval = r.take_interval();
        assert_eq!(interval.len(), 100);
        assert!(r.take_interval().is_empty());
        r.record(Duration::from_secs(2));
        let total = r.total();
        assert_eq!(total.len(), 101);
        assert!((Percentiles::of(&total).expect("samples").max_ms - 2000.0).abs() < 2.0);
    }

    #[test]
    fn empty_histograms_have_no_percentiles() {
        assert_eq!(Percentiles::of(&new_histogram()), None);
        let mut h = new_histogram();
        record(&mut h, Duration::from_secs(7200));
        assert_eq!(h.max(), h.highest_equivalent(MAX_LATENCY_US));
    }
}
