//! Translation and moderation metrics for `/metrics`: lookups by the tier that answered,
//! provider calls, batch sizes, latency and errors by kind, late translations, moderation
//! verdicts. Plain atomics like [`crate::metrics`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The tier that answered a translation lookup (one per target language of a text).
pub const TIERS: [&str; 6] = [
    "phrasebook",
    "glossary",
    "lru",
    "shared",
    "provider",
    "failed",
];

/// Why a provider request failed.
pub const ERROR_KINDS: [&str; 9] = [
    "timeout",
    "connect",
    "rate_limited",
    "quota",
    "auth",
    "http_4xx",
    "http_5xx",
    "decode",
    "placeholder",
];

const BATCH_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

pub const SEVERITIES: [&str; 3] = ["green", "yellow", "red"];

/// One provider's counters.
#[derive(Default)]
pub struct ProviderStats {
    pub name: String,
    calls: AtomicU64,
    texts: AtomicU64,
    batch_buckets: [AtomicU64; BATCH_BUCKETS.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_micros: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    retries: AtomicU64,
}

impl ProviderStats {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// A request of `batch` texts that took `seconds` (successful or not).
    pub fn call(&self, batch: usize, seconds: f64) {
        self.calls.fetch_add(1, Relaxed);
        self.texts.fetch_add(batch as u64, Relaxed);
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            if batch as u64 <= *le {
                self.batch_buckets[i].fetch_add(1, Relaxed);
            }
        }
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_micros
            .fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Requests sent (for tests and benchmarks).
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }
}

#[derive(Default)]
pub struct TranslationMetrics {
    lookups: [AtomicU64; TIERS.len()],
    /// Comments and announcements published with some translations still pending.
    pub budget_misses: AtomicU64,
    /// `translation` events published after the budget.
    pub late_published: AtomicU64,
    /// Translations given up after `translation.deadline`.
    pub late_abandoned: AtomicU64,
    verdicts: [AtomicU64; SEVERITIES.len()],
    pub approved: AtomicU64,
    pub rejected: AtomicU64,
    /// Products re-translated after a glossary change, by outcome
    /// ([`crate::listing_refresh::Refreshed::ALL`] order).
    listings_refreshed: [AtomicU64; 5],
    /// Per configured provider, in order.
    pub providers: Vec<ProviderStats>,
}

impl TranslationMetrics {
    pub fn new(provider_names: &[String]) -> Self {
        Self {
            providers: provider_names
                .iter()
                .map(|n| ProviderStats::new(n))
                .collect(),
            ..Self::default()
        }
    }

    pub fn lookup(&self, tier: &str) {
        if let Some(i) = TIERS.iter().position(|t| *t == tier) {
            self.lookups[i].fetch_add(1, Relaxed);
        }
    }

    pub fn lookups(&self, tier: &str) -> u64 {
        TIERS
            .iter()
            .position(|t| *t == tier)
            .map_or(0, |i| self.lookups[i].load(Relaxed))
    }

    pub fn verdict(&self, severity: &str) {
        if let Some(i) = SEVERITIES.iter().position(|s| *s == severity) {
            self.verdicts[i].fetch_add(1, Relaxed);
        }
    }

    pub fn listing_refreshed(&self, outcome: crate::listing_refresh::Refreshed) {
        if let Some(i) = crate::listing_refresh::Refreshed::ALL
            .iter()
            .position(|r| *r == outcome)
        {
            self.listings_refreshed[i].fetch_add(1, Relaxed);
        }
    }

    pub fn listings_refreshed(&self, outcome: crate::listing_refresh::Refreshed) -> u64 {
        crate::listing_refresh::Refreshed::ALL
            .iter()
            .position(|r| *r == outcome)
            .map_or(0, |i| self.listings_refreshed[i].load(Relaxed))
    }

    /// Provider requests sent, all providers.
    pub fn provider_calls(&self) -> u64 {
        self.providers.iter().map(ProviderStats::calls).sum()
    }

    pub fn render(&self, node: &str, out: &mut String) {
        let n = node;
        let _ = writeln!(out, "# HELP ferry_translation_lookups_total Translations by the tier that answered (phrasebook, glossary-only text, node LRU, shared Redis cache, provider, or failed).\n# TYPE ferry_translation_lookups_total counter");
        for (i, t) in TIERS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_translation_lookups_total{{node=\"{n}\",tier=\"{t}\"}} {}",
                self.lookups[i].load(Relaxed)
            );
        }
        let one = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{n}\"}} {v}"
            );
        };
        one(
            out,
            "ferry_translation_budget_misses_total",
            "Comments published before all their translations were ready.",
            self.budget_misses.load(Relaxed),
        );
        one(
            out,
            "ferry_translation_late_published_total",
            "translation events published after the latency budget.",
            self.late_published.load(Relaxed),
        );
        one(
            out,
            "ferry_translation_late_abandoned_total",
            "Translations given up at the deadline (viewers keep the original).",
            self.late_abandoned.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP ferry_translation_provider_calls_total Requests sent to each provider.\n# TYPE ferry_translation_provider_calls_total counter");
        for p in &self.providers {
            let _ = writeln!(
                out,
                "ferry_translation_provider_calls_total{{node=\"{n}\",provider=\"{}\"}} {}",
                p.name,
                p.calls.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_translation_provider_texts_total Texts sent to each provider.\n# TYPE ferry_translation_provider_texts_total counter");
        for p in &self.providers {
            let _ = writeln!(
                out,
                "ferry_translation_provider_texts_total{{node=\"{n}\",provider=\"{}\"}} {}",
                p.name,
                p.texts.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_translation_provider_retries_total Provider requests retried.\n# TYPE ferry_translation_provider_retries_total counter");
        for p in &self.providers {
            let _ = writeln!(
                out,
                "ferry_translation_provider_retries_total{{node=\"{n}\",provider=\"{}\"}} {}",
                p.name,
                p.retries.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_translation_batch_size Texts per provider request.\n# TYPE ferry_translation_batch_size histogram");
        for p in &self.providers {
            for (i, le) in BATCH_BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "ferry_translation_batch_size_bucket{{node=\"{n}\",provider=\"{}\",le=\"{le}\"}} {}", p.name, p.batch_buckets[i].load(Relaxed));
            }
            let calls = p.calls.load(Relaxed);
            let _ = writeln!(out, "ferry_translation_batch_size_bucket{{node=\"{n}\",provider=\"{}\",le=\"+Inf\"}} {calls}", p.name);
            let _ = writeln!(
                out,
                "ferry_translation_batch_size_sum{{node=\"{n}\",provider=\"{}\"}} {}",
                p.name,
                p.texts.load(Relaxed)
            );
            let _ = writeln!(
                out,
                "ferry_translation_batch_size_count{{node=\"{n}\",provider=\"{}\"}} {calls}",
                p.name
            );
        }
        let _ = writeln!(out, "# HELP ferry_translation_provider_seconds Provider request latency (all attempts).\n# TYPE ferry_translation_provider_seconds histogram");
        for p in &self.providers {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "ferry_translation_provider_seconds_bucket{{node=\"{n}\",provider=\"{}\",le=\"{le}\"}} {}", p.name, p.latency_buckets[i].load(Relaxed));
            }
            let calls = p.calls.load(Relaxed);
            let _ = writeln!(out, "ferry_translation_provider_seconds_bucket{{node=\"{n}\",provider=\"{}\",le=\"+Inf\"}} {calls}", p.name);
            let _ = writeln!(
                out,
                "ferry_translation_provider_seconds_sum{{node=\"{n}\",provider=\"{}\"}} {}",
                p.name,
                p.latency_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "ferry_translation_provider_seconds_count{{node=\"{n}\",provider=\"{}\"}} {calls}",
                p.name
            );
        }
        let _ = writeln!(out, "# HELP ferry_translation_provider_errors_total Failed provider attempts by kind.\n# TYPE ferry_translation_provider_errors_total counter");
        for p in &self.providers {
            for (i, k) in ERROR_KINDS.iter().enumerate() {
                let _ = writeln!(out, "ferry_translation_provider_errors_total{{node=\"{n}\",provider=\"{}\",kind=\"{k}\"}} {}", p.name, p.errors[i].load(Relaxed));
            }
        }
        let _ = writeln!(out, "# HELP ferry_translation_listings_refreshed_total Products translated again after a glossary change, by result.\n# TYPE ferry_translation_listings_refreshed_total counter");
        for (i, r) in crate::listing_refresh::Refreshed::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_translation_listings_refreshed_total{{node=\"{n}\",result=\"{}\"}} {}",
                r.label(),
                self.listings_refreshed[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_moderation_verdicts_total Texts checked against market rules, by verdict.\n# TYPE ferry_moderation_verdicts_total counter");
        for (i, s) in SEVERITIES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ferry_moderation_verdicts_total{{node=\"{n}\",severity=\"{s}\"}} {}",
                self.verdicts[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP ferry_moderation_resolved_total Held comments resolved by moderators.\n# TYPE ferry_moderation_resolved_total counter");
        let _ = writeln!(
            out,
            "ferry_moderation_resolved_total{{node=\"{n}\",action=\"approved\"}} {}",
            self.approved.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "ferry_moderation_resolved_total{{node=\"{n}\",action=\"rejected\"}} {}",
            self.rejected.load(Relaxed)
        );
    }
}
