//! Translation: a tiered translator for short livestream texts. For each target language of a
//! text, the first tier that answers wins:
//!
//! 1. **glossary** — the text is only merchant terms: their target texts, no provider;
//! 2. **phrasebook** — a frequent phrase ([`phrasebook`]), answered at once;
//! 3. **lru** — this node translated it before (key: normalized text, pair, glossary version);
//! 4. **shared** — another node did (Redis engine: the shared cache in Redis);
//! 5. **provider** — machine translation, batched per language pair, with the glossary's
//!    terms protected by placeholders and restored exactly ([`glossary`]).
//!
//! Tiers 1–3 answer synchronously ([`Job::Ready`]); 4–5 run in a task ([`Job::Pending`]) so a
//! caller can wait for them up to its latency budget and let the rest finish later. The
//! sans-IO parts (keys, detection, phrasebook, placeholders) are plain functions in
//! [`text`], [`phrasebook`] and [`glossary`]; this module and [`provider`] only move bytes.

pub mod cache;
pub mod glossary;
pub mod metrics;
pub mod phrasebook;
pub mod provider;
pub mod text;

use crate::config::TranslationConfig;
use cache::{CacheKey, Lru, SharedCache};
use ferry_client::protocol::translation::Translations;
use glossary::{protect, restore, Compiled, Glossaries};
use metrics::TranslationMetrics;
use phrasebook::Phrasebook;
use provider::Provider;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One target language's translation, as far as it got synchronously.
pub enum Job {
    Ready(String),
    /// No tier could translate it (no provider for the pair).
    Failed,
    /// A task is asking the shared cache and the providers.
    Pending(JoinHandle<Option<String>>),
}

/// Translations ready within a budget, and the ones still running.
pub struct Collected {
    pub ready: Translations,
    pub pending: Vec<(String, JoinHandle<Option<String>>)>,
}

/// The node's translator.
pub struct Translator {
    cfg: TranslationConfig,
    phrasebook: Phrasebook,
    glossaries: Arc<Glossaries>,
    lru: Arc<Lru>,
    shared: Option<Arc<SharedCache>>,
    providers: Vec<Arc<Provider>>,
    metrics: Arc<TranslationMetrics>,
}

impl Translator {
    pub fn new(
        cfg: TranslationConfig,
        phrasebook: Phrasebook,
        glossaries: Arc<Glossaries>,
        shared: Option<Arc<SharedCache>>,
    ) -> Arc<Translator> {
        let names: Vec<String> = cfg
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.name.is_empty() {
                    format!("provider{i}")
                } else {
                    p.name.clone()
                }
            })
            .collect();
        let metrics = Arc::new(TranslationMetrics::new(&names));
        let providers = cfg
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut p = p.clone();
                p.name = names[i].clone();
                Provider::spawn(p, metrics.clone(), i)
            })
            .collect();
        Arc::new(Translator {
            lru: Arc::new(Lru::new(cfg.cache_entries)),
            cfg,
            phrasebook,
            glossaries,
            shared,
            providers,
            metrics,
        })
    }

    pub fn config(&self) -> &TranslationConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &Arc<TranslationMetrics> {
        &self.metrics
    }

    pub fn glossaries(&self) -> &Arc<Glossaries> {
        &self.glossaries
    }

    pub fn phrasebook(&self) -> &Phrasebook {
        &self.phrasebook
    }

    /// Whether viewers may read in `lang`.
    pub fn supports(&self, lang: &str) -> bool {
        self.cfg.languages.iter().any(|l| l == lang)
    }

    /// Detect `text`'s language among `candidates` (see [`text::detect`]).
    pub fn detect(&self, text: &str, candidates: &[String], hint: Option<&str>) -> Option<String> {
        text::detect(text, candidates, hint, &|key| {
            self.phrasebook.languages_of(key)
        })
    }

    /// Start translating `text` from `source` into each of `targets` (the source itself is
    /// skipped).
    pub fn start(
        &self,
        text: &str,
        source: &str,
        targets: &[String],
        glossary: Option<&Arc<Compiled>>,
    ) -> Vec<(String, Job)> {
        let mut jobs = Vec::with_capacity(targets.len());
        for target in targets {
            if target == source || jobs.iter().any(|(t, _)| t == target) {
                continue;
            }
            let job = self.start_one(text, source, target, glossary);
            jobs.push((target.clone(), job));
        }
        jobs
    }

    fn start_one(
        &self,
        text: &str,
        source: &str,
        target: &str,
        glossary: Option<&Arc<Compiled>>,
    ) -> Job {
        let protected = protect(text, source, target, glossary.map(|g| &**g));
        if protected.only_terms {
            self.metrics.lookup("glossary");
            return Job::Ready(protected.substituted);
        }
        if protected.restores.is_empty() {
            if let Some(t) = self.phrasebook.translate(text, source, target) {
                self.metrics.lookup("phrasebook");
                return Job::Ready(t);
            }
        }
        let key = CacheKey::new(
            &text::cache_text(text),
            source,
            target,
            glossary.map(|g| (g.id(), g.version())),
        );
        if let Some(hit) = self.lru.get(&key) {
            self.metrics.lookup("lru");
            return Job::Ready(hit.to_string());
        }
        let providers: Vec<Arc<Provider>> = self
            .providers
            .iter()
            .filter(|p| p.supports(source, target))
            .cloned()
            .collect();
        if providers.is_empty() && self.shared.is_none() {
            self.metrics.lookup("failed");
            return Job::Failed;
        }
        let shared = self.shared.clone();
        let metrics = self.metrics.clone();
        let (source, target) = (source.to_owned(), target.to_owned());
        let lru = self.lru.clone();
        Job::Pending(tokio::spawn(async move {
            if let Some(shared) = &shared {
                if let Some(hit) = shared.get(&key).await {
                    metrics.lookup("shared");
                    lru.put(key.clone(), Arc::from(hit.as_str()));
                    return Some(hit);
                }
            }
            for p in &providers {
                match p
                    .translate(protected.markup.clone(), &source, &target)
                    .await
                {
                    Ok(out) => match restore(&out, &protected.restores) {
                        Ok(t) => {
                            metrics.lookup("provider");
                            lru.put(key.clone(), Arc::from(t.as_str()));
                            if let Some(shared) = &shared {
                                shared.put(&key, &t).await;
                            }
                            return Some(t);
                        }
                        Err(e) => {
                            if let Some(stats) =
                                metrics.providers.iter().find(|s| s.name == p.name())
                            {
                                stats.error("placeholder");
                            }
                            tracing::warn!(provider = p.name(), error = %e, "translation dropped: glossary placeholders not kept");
                        }
                    },
                    Err(e) => {
                        tracing::debug!(provider = p.name(), error = %e, "provider failed; trying the next");
                    }
                }
            }
            metrics.lookup("failed");
            None
        }))
    }

    /// Wait for `jobs` until `deadline`; what is not ready keeps running.
    pub async fn collect(jobs: Vec<(String, Job)>, deadline: Instant) -> Collected {
        let mut ready = Translations::new();
        let mut pending = Vec::new();
        for (lang, job) in jobs {
            match job {
                Job::Ready(t) => {
                    ready.insert(lang, t);
                }
                Job::Failed => {}
                Job::Pending(mut handle) => {
                    match tokio::time::timeout_at(deadline, &mut handle).await {
                        Ok(Ok(Some(t))) => {
                            ready.insert(lang, t);
                        }
                        Ok(_) => {}
                        Err(_) => pending.push((lang, handle)),
                    }
                }
            }
        }
        Collected { ready, pending }
    }

    /// Translate `text` into `targets`, waiting up to `translation.deadline` (product
    /// listings: nobody waits in a room for them).
    pub async fn translate_all(
        &self,
        text: &str,
        source: &str,
        targets: &[String],
        glossary: Option<&Arc<Compiled>>,
    ) -> Translations {
        let jobs = self.start(text, source, targets, glossary);
        let c = Self::collect(jobs, Instant::now() + self.cfg.deadline).await;
        for (_, h) in c.pending {
            h.abort();
        }
        c.ready
    }
}
