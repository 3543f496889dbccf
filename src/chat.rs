//! The chat service: what happens to a comment or announcement between the session (which
//! checked permissions, limits and text rules) and the hub (which publishes). On the node
//! that accepted the text, once for the whole cluster:
//!
//! 1. **Moderation.** The rules of every market present in the room (the viewers' markets,
//!    cluster-wide, plus the sender's) are applied together, strictest first: a comment is
//!    shown to everyone in the room, so it must be acceptable in every market watching. Red:
//!    refused with `moderation_blocked` naming the rule, published nowhere. Yellow (viewers
//!    only; staff texts pass): published as a `comment_held` event that staff see in full and
//!    others as an id, kept in the room's moderator queue (engine state, so it works the same
//!    on both engines) until a moderator approves (the comment is published, taking it off
//!    the queue in the same step) or rejects it.
//! 2. **Language.** The source language is detected among the languages in play.
//! 3. **Translation.** Once per target language present in the room (not per viewer), through
//!    the [`Translator`] tiers, waiting at most `translation.budget`; what is ready goes out
//!    with the event, the rest follows in `translation` events as it arrives (up to
//!    `translation.deadline`). The room's task is never involved in waiting.
//!
//! It also prepares product listings: their translations per market language (through the
//! merchant's glossary) and the listing rules of every market a product is enabled in.

use crate::commerce::service::ShowcaseTranslator;
use crate::commerce::Product;
use crate::engine::EngineError;
use crate::hub::Hub;
use crate::moderation::{Moderator, Usage};
use crate::translate::glossary::Compiled;
use crate::translate::{Collected, Translator};
use ferry_client::protocol::commerce::ProductView;
use ferry_client::protocol::translation::{
    HeldComment, PendingComment, ProductText, RuleRef, Severity, Translations,
};
use ferry_client::protocol::{
    ErrorBody, ErrorCode, Offset, RoomEvent, RoomId, StreamPosition, UserRef,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::time::Instant;

/// Who sent a text.
#[derive(Clone, Copy, Debug)]
pub struct Sender<'a> {
    pub user: &'a UserRef,
    /// The sender's reading language (a hint for detection, and a target like any other).
    pub lang: Option<&'a str>,
    pub market: Option<&'a str>,
}

/// What became of a published text.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Published(StreamPosition),
    /// Held for a moderator.
    Held(PendingComment),
}

/// Why a chat command failed; each maps to a wire error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("blocked in market {} by rule `{}`: {}", .0.market, .0.rule, .0.label)]
    Blocked(RuleRef),
    #[error("unsupported language `{0}` (this server translates into: {1})")]
    UnsupportedLanguage(String, String),
}

impl ChatError {
    /// The wire error body.
    pub fn body(&self) -> ErrorBody {
        match self {
            ChatError::Engine(e) => {
                let (code, retry) = e.wire_code();
                code.body(e.to_string(), retry)
            }
            ChatError::Blocked(rule) => {
                let mut b = ErrorCode::ModerationBlocked.body(self.to_string(), None);
                b.rule = Some(Box::new(rule.clone()));
                b
            }
            ChatError::UnsupportedLanguage(..) => {
                ErrorCode::UnsupportedLanguage.body(self.to_string(), None)
            }
        }
    }
}

/// Why a product listing cannot be saved as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ListingError {
    #[error("the listing cannot be enabled in market {}: rule `{}` ({})", .0.market, .0.rule, .0.label)]
    Blocked(RuleRef),
}

pub struct Chat {
    hub: Arc<Hub>,
    translator: Arc<Translator>,
    moderator: Arc<Moderator>,
}

fn new_held_id() -> String {
    use rand::Rng;
    format!("h{:x}{:04x}", crate::unix_ms(), rand::rng().random::<u16>())
}

impl Chat {
    pub fn new(hub: Arc<Hub>, translator: Arc<Translator>, moderator: Arc<Moderator>) -> Arc<Chat> {
        Arc::new(Chat {
            hub,
            translator,
            moderator,
        })
    }

    pub fn translator(&self) -> &Arc<Translator> {
        &self.translator
    }

    pub fn moderator(&self) -> &Arc<Moderator> {
        &self.moderator
    }

    /// Whether viewers may read in `lang`; the error lists the languages that are.
    pub fn check_language(&self, lang: &str) -> Result<(), ChatError> {
        if self.translator.supports(lang) {
            Ok(())
        } else {
            Err(ChatError::UnsupportedLanguage(
                lang.to_owned(),
                self.translator.config().languages.join(", "),
            ))
        }
    }

    /// Publish a room event; comments and announcements go through moderation and
    /// translation first.
    pub async fn publish(
        &self,
        room: &RoomId,
        event: RoomEvent,
        sender: Sender<'_>,
    ) -> Result<Outcome, ChatError> {
        match event {
            RoomEvent::Comment { text, .. } => self.text(room, text, sender, false).await,
            RoomEvent::Announcement { text, .. } => self.text(room, text, sender, true).await,
            other => Ok(Outcome::Published(self.hub.publish(room, &other).await?)),
        }
    }

    /// The languages to translate into and the markets whose rules apply.
    fn audience(&self, room: &RoomId, sender: Sender<'_>) -> (Vec<String>, BTreeSet<String>) {
        let a = self.hub.audience(room);
        let mut langs: BTreeSet<String> = a
            .langs
            .into_iter()
            .filter(|l| self.translator.supports(l))
            .collect();
        if let Some(l) = sender.lang.filter(|l| self.translator.supports(l)) {
            langs.insert(l.to_owned());
        }
        let mut markets = a.markets;
        if let Some(m) = sender.market {
            markets.insert(m.to_owned());
        }
        (langs.into_iter().collect(), markets)
    }

    /// Translate `text` for the room's languages within the budget.
    async fn translate(
        &self,
        room: &RoomId,
        text: &str,
        langs: &[String],
        hint: Option<&str>,
    ) -> (Option<String>, Collected) {
        let source = self.translator.detect(text, langs, hint);
        let Some(src) = source.clone() else {
            return (
                None,
                Collected {
                    ready: Translations::new(),
                    pending: Vec::new(),
                },
            );
        };
        let glossary = self.translator.glossaries().for_room(room.as_str());
        let jobs = self.translator.start(text, &src, langs, glossary.as_ref());
        let deadline = Instant::now() + self.translator.config().budget;
        (source, Translator::collect(jobs, deadline).await)
    }

    async fn text(
        &self,
        room: &RoomId,
        text: String,
        sender: Sender<'_>,
        announcement: bool,
    ) -> Result<Outcome, ChatError> {
        let (langs, markets) = self.audience(room, sender);
        let verdict =
            self.moderator
                .check(&text, markets.iter().map(String::as_str), Usage::Comments);
        let metrics = self.translator.metrics();
        metrics.verdict(match verdict.severity {
            Severity::Green => "green",
            Severity::Yellow => "yellow",
            Severity::Red => "red",
        });
        if let (Severity::Red, Some(rule)) = (verdict.severity, &verdict.rule) {
            tracing::info!(%room, user = %sender.user.id, market = %rule.market, rule = %rule.rule, "text blocked by moderation");
            return Err(ChatError::Blocked(rule.clone()));
        }
        let hold = verdict.severity == Severity::Yellow && !sender.user.role.is_staff();
        let (lang, collected) = self.translate(room, &text, &langs, sender.lang).await;
        if let (true, Some(rule)) = (hold, verdict.rule) {
            // Pending translations keep running into the caches, so approval finds them.
            let id = new_held_id();
            let held = HeldComment {
                id: id.clone(),
                user: sender.user.clone(),
                text,
                lang,
                translations: collected.ready,
                rule: rule.clone(),
                at: crate::unix_ms(),
            };
            self.hub
                .publish(
                    room,
                    &RoomEvent::CommentHeld {
                        id: id.clone(),
                        held: Some(Box::new(held)),
                    },
                )
                .await?;
            tracing::info!(%room, user = %sender.user.id, held = %id, rule = %rule.rule, "comment held for a moderator");
            return Ok(Outcome::Held(PendingComment { id, rule }));
        }
        let event = if announcement {
            RoomEvent::Announcement {
                user: sender.user.clone(),
                text,
                lang,
                translations: collected.ready,
            }
        } else {
            RoomEvent::Comment {
                user: sender.user.clone(),
                text,
                lang,
                translations: collected.ready,
                held_id: None,
            }
        };
        let position = self.hub.publish(room, &event).await?;
        self.follow_up(room, position.offset, collected.pending);
        Ok(Outcome::Published(position))
    }

    /// Publish late translations of the event at `offset` as they arrive.
    fn follow_up(
        &self,
        room: &RoomId,
        offset: Offset,
        pending: Vec<(String, tokio::task::JoinHandle<Option<String>>)>,
    ) {
        if pending.is_empty() {
            return;
        }
        let metrics = self.translator.metrics().clone();
        metrics.budget_misses.fetch_add(1, Relaxed);
        let hub = self.hub.clone();
        let room = room.clone();
        let deadline = Instant::now() + self.translator.config().deadline;
        tokio::spawn(async move {
            let mut aborts = Vec::new();
            let mut running: FuturesUnordered<_> = pending
                .into_iter()
                .map(|(lang, handle)| {
                    aborts.push(handle.abort_handle());
                    handle.map(move |r| (lang, r.ok().flatten()))
                })
                .collect();
            let mut left = running.len();
            while left > 0 {
                let first = match tokio::time::timeout_at(deadline, running.next()).await {
                    Ok(Some(done)) => done,
                    Ok(None) => break,
                    Err(_) => {
                        metrics.late_abandoned.fetch_add(left as u64, Relaxed);
                        for a in &aborts {
                            a.abort();
                        }
                        break;
                    }
                };
                left -= 1;
                let mut translations = Translations::new();
                let mut add = |(lang, t): (String, Option<String>)| {
                    if let Some(t) = t {
                        translations.insert(lang, t);
                    }
                };
                add(first);
                // Others that finished at the same moment go in the same event.
                while let Some(Some(done)) = running.next().now_or_never() {
                    left -= 1;
                    add(done);
                }
                if translations.is_empty() {
                    continue;
                }
                let event = RoomEvent::Translation {
                    offset,
                    translations,
                };
                match hub.publish(&room, &event).await {
                    Ok(_) => {
                        metrics.late_published.fetch_add(1, Relaxed);
                    }
                    Err(e) => tracing::debug!(%room, error = %e, "late translation not published"),
                }
            }
        });
    }

    /// The room's moderator queue (read from the engine, so it is current cluster-wide),
    /// with translations into `lang` only.
    pub async fn queue(
        &self,
        room: &RoomId,
        lang: Option<&str>,
    ) -> Result<Vec<HeldComment>, ChatError> {
        let record = self
            .hub
            .engine()
            .room(room)
            .await?
            .ok_or(EngineError::RoomNotFound)?;
        Ok(record
            .held
            .into_iter()
            .map(|mut h| {
                h.translations.retain(|l, _| Some(l.as_str()) == lang);
                h
            })
            .collect())
    }

    /// Publish a held comment: translated for the room as it is now, taking it off the queue
    /// in the same step (a second approval, or one after a rejection, gets `not_held`).
    pub async fn approve(
        &self,
        room: &RoomId,
        id: &str,
        by: &UserRef,
    ) -> Result<StreamPosition, ChatError> {
        let held = self
            .queue(room, None)
            .await?
            .into_iter()
            .find(|h| h.id == id)
            .ok_or(EngineError::NotHeld)?;
        let (langs, _) = self.audience(
            room,
            Sender {
                user: by,
                lang: None,
                market: None,
            },
        );
        let mut translations = held.translations.clone();
        let mut pending = Vec::new();
        if let Some(src) = &held.lang {
            let missing: Vec<String> = langs
                .iter()
                .filter(|l| !translations.contains_key(*l))
                .cloned()
                .collect();
            let glossary = self.translator.glossaries().for_room(room.as_str());
            let jobs = self
                .translator
                .start(&held.text, src, &missing, glossary.as_ref());
            let c =
                Translator::collect(jobs, Instant::now() + self.translator.config().budget).await;
            translations.extend(c.ready);
            pending = c.pending;
        }
        let event = RoomEvent::Comment {
            user: held.user.clone(),
            text: held.text.clone(),
            lang: held.lang.clone(),
            translations,
            held_id: Some(held.id.clone()),
        };
        let position = self.hub.publish(room, &event).await?;
        self.translator.metrics().approved.fetch_add(1, Relaxed);
        tracing::info!(%room, held = %id, by = %by.id, "held comment approved");
        self.follow_up(room, position.offset, pending);
        Ok(position)
    }

    pub async fn reject(
        &self,
        room: &RoomId,
        id: &str,
        by: &UserRef,
    ) -> Result<StreamPosition, ChatError> {
        let event = RoomEvent::CommentRejected {
            id: id.to_owned(),
            by: by.clone(),
        };
        let position = self.hub.publish(room, &event).await?;
        self.translator.metrics().rejected.fetch_add(1, Relaxed);
        tracing::info!(%room, held = %id, by = %by.id, "held comment rejected");
        Ok(position)
    }

    /// The glossary a product is translated with: the one it names, else its merchant's.
    fn product_glossary(&self, product: &Product) -> Option<Arc<Compiled>> {
        let id = product.glossary.as_deref().unwrap_or(&product.merchant);
        self.translator.glossaries().get(id)
    }

    /// Check a product listing against the rules of every market it is enabled in and
    /// translate its title and description into those markets' languages (through its
    /// glossary). Red in a market refuses the listing; yellow hits are returned as warnings.
    pub async fn prepare_product(
        &self,
        product: &mut Product,
    ) -> Result<Vec<RuleRef>, ListingError> {
        let enabled: Vec<String> = product.enabled_markets().into_iter().collect();
        let mut warnings: Vec<RuleRef> = Vec::new();
        let mut check = |text: &str, market: &str| -> Result<(), ListingError> {
            let v = self.moderator.check(text, [market], Usage::Listings);
            match (v.severity, v.rule) {
                (Severity::Red, Some(rule)) => Err(ListingError::Blocked(rule)),
                (Severity::Yellow, Some(rule)) => {
                    if !warnings.contains(&rule) {
                        warnings.push(rule);
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let original = format!("{}\n{}", product.title, product.description);
        for m in &enabled {
            check(&original, m)?;
        }
        let cfg = self.translator.config();
        let targets: BTreeSet<String> = enabled
            .iter()
            .filter_map(|m| cfg.market_languages.get(m))
            .filter(|l| **l != product.lang)
            .cloned()
            .collect();
        let targets: Vec<String> = targets.into_iter().collect();
        let glossary = self.product_glossary(product);
        let titles = self
            .translator
            .translate_all(&product.title, &product.lang, &targets, glossary.as_ref())
            .await;
        let descriptions = if product.description.trim().is_empty() {
            Translations::new()
        } else {
            self.translator
                .translate_all(
                    &product.description,
                    &product.lang,
                    &targets,
                    glossary.as_ref(),
                )
                .await
        };
        product.translations.clear();
        for lang in &targets {
            let Some(title) = titles.get(lang) else {
                continue;
            };
            let description = descriptions.get(lang).cloned().unwrap_or_default();
            product.translations.insert(
                lang.clone(),
                ProductText {
                    title: title.clone(),
                    description,
                },
            );
        }
        for m in &enabled {
            if let Some(t) = cfg
                .market_languages
                .get(m)
                .and_then(|l| product.translations.get(l))
            {
                check(&format!("{}\n{}", t.title, t.description), m)?;
            }
        }
        Ok(warnings)
    }
}

/// A pinned product is shown to the whole room: its title and description go out in every
/// language read there (cluster-wide), once per language, through the product's glossary —
/// the listing's own translations (its markets' languages) are reused, the others are made
/// here, waiting at most `translation.budget` (a language not ready by then goes without;
/// its translation still lands in the caches for the next pin). Each viewer then receives
/// only the translation into their language ([`crate::room::audience`]).
#[async_trait::async_trait]
impl ShowcaseTranslator for Chat {
    async fn translate_pin(&self, room: &RoomId, product: &Product, view: &mut ProductView) {
        let missing: Vec<String> = self
            .hub
            .audience_anywhere(room)
            .await
            .langs
            .into_iter()
            .filter(|l| {
                self.translator.supports(l)
                    && *l != product.lang
                    && !view.translations.contains_key(l)
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        let glossary = self.product_glossary(product);
        let deadline = Instant::now() + self.translator.config().budget;
        // Both texts are started before waiting, so a provider batches them together.
        let titles =
            self.translator
                .start(&product.title, &product.lang, &missing, glossary.as_ref());
        let descriptions = if product.description.trim().is_empty() {
            Vec::new()
        } else {
            self.translator.start(
                &product.description,
                &product.lang,
                &missing,
                glossary.as_ref(),
            )
        };
        let titles = Translator::collect(titles, deadline).await;
        let descriptions = Translator::collect(descriptions, deadline).await;
        let mut added = 0;
        for (lang, title) in titles.ready {
            if !product.description.trim().is_empty() && !descriptions.ready.contains_key(&lang) {
                // Half a translation would mix languages on the card.
                continue;
            }
            let description = descriptions.ready.get(&lang).cloned().unwrap_or_default();
            view.translations
                .insert(lang, ProductText { title, description });
            added += 1;
        }
        tracing::debug!(%room, product = %product.id, languages = missing.len(), added, "pinned product translated for the room");
    }
}
