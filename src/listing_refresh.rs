//! Keeping product listings' translations current when a glossary changes. A listing is
//! translated when it is saved ([`Chat::prepare_product`]); when the merchant later changes
//! (or deletes) the glossary it was translated with, every affected product is translated
//! again in the background — the same path as a save, so listing rules are checked again —
//! with at most `translation.listing_refresh_concurrency` products in flight.
//!
//! Only the node that accepted the glossary change runs it (products and glossaries are
//! shared on the Redis engine, so that is once per cluster). A newer change of the same
//! glossary supersedes a refresh still running: it stops before its next save and the newer
//! one translates everything again. A product saved by its merchant meanwhile is left alone
//! (that save translated it with the current glossary). A product whose new translation
//! breaks a listing rule keeps its previous translations, with a warning in the log.

use crate::chat::{Chat, ListingError};
use crate::commerce::service::Commerce;
use crate::commerce::Product;
use ferry_client::protocol::commerce::ProductId;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// What became of one product in a refresh (also the metric's `result` label).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// New translations saved.
    Saved,
    /// Translated again, same result: nothing saved.
    Unchanged,
    /// Superseded by a newer change of the glossary, saved by its merchant meanwhile, or
    /// deleted.
    Skipped,
    /// The new translation breaks a listing rule: the previous translations stay.
    Blocked,
    /// The store failed; the product keeps its previous translations.
    Failed,
}

impl Refreshed {
    pub const ALL: [Refreshed; 5] = [
        Refreshed::Saved,
        Refreshed::Unchanged,
        Refreshed::Skipped,
        Refreshed::Blocked,
        Refreshed::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refreshed::Saved => "saved",
            Refreshed::Unchanged => "unchanged",
            Refreshed::Skipped => "skipped",
            Refreshed::Blocked => "blocked",
            Refreshed::Failed => "failed",
        }
    }
}

/// Whether `product` is translated with glossary `glossary`: the one it names, else its
/// merchant's (whose id is the merchant's user id).
pub fn uses_glossary(product: &Product, glossary: &str) -> bool {
    match &product.glossary {
        Some(g) => g == glossary,
        None => !product.merchant.is_empty() && product.merchant == glossary,
    }
}

/// `a` and `b` are the same listing apart from their translations.
fn same_listing(a: &Product, b: &Product) -> bool {
    let strip = |p: &Product| Product {
        translations: Default::default(),
        ..p.clone()
    };
    strip(a) == strip(b)
}

/// Refreshes listings after glossary changes (one per node).
pub struct ListingRefresh {
    chat: Arc<Chat>,
    commerce: Arc<Commerce>,
    concurrency: usize,
    /// Per glossary id, the generation of its latest change: a refresh stops when its own
    /// is no longer the latest.
    generations: Mutex<HashMap<String, u64>>,
}

impl ListingRefresh {
    pub fn new(chat: Arc<Chat>, commerce: Arc<Commerce>, concurrency: usize) -> Arc<Self> {
        Arc::new(ListingRefresh {
            chat,
            commerce,
            concurrency: concurrency.max(1),
            generations: Mutex::new(HashMap::new()),
        })
    }

    /// Glossary `id` changed (or was deleted): refresh its products in the background.
    pub fn glossary_changed(self: &Arc<Self>, id: &str) {
        let generation = {
            let mut g = self.generations.lock();
            let n = g.entry(id.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move { this.run(&id, generation).await });
    }

    fn current(&self, id: &str, generation: u64) -> bool {
        self.generations.lock().get(id) == Some(&generation)
    }

    async fn run(&self, glossary: &str, generation: u64) {
        let products = match self.commerce.store().products().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%glossary, error = %e, "listing translations not refreshed: cannot list products");
                return;
            }
        };
        let affected: Vec<ProductId> = products
            .iter()
            .filter(|p| uses_glossary(p, glossary))
            .map(|p| p.id.clone())
            .collect();
        if affected.is_empty() {
            return;
        }
        tracing::info!(%glossary, products = affected.len(), "glossary changed: refreshing listing translations");
        let outcomes: Vec<Refreshed> = stream::iter(affected)
            .map(|id| self.refresh_one(id, glossary, generation))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let count = |r: Refreshed| outcomes.iter().filter(|o| **o == r).count();
        tracing::info!(
            %glossary,
            saved = count(Refreshed::Saved),
            unchanged = count(Refreshed::Unchanged),
            skipped = count(Refreshed::Skipped),
            blocked = count(Refreshed::Blocked),
            failed = count(Refreshed::Failed),
            "listing translations refreshed"
        );
    }

    async fn refresh_one(&self, id: ProductId, glossary: &str, generation: u64) -> Refreshed {
        let outcome = self.refresh(&id, glossary, generation).await;
        self.chat.translator().metrics().listing_refreshed(outcome);
        outcome
    }

    async fn refresh(&self, id: &ProductId, glossary: &str, generation: u64) -> Refreshed {
        if !self.current(glossary, generation) {
            return Refreshed::Skipped;
        }
        let store = self.commerce.store();
        let before = match store.product(id).await {
            Ok(Some(p)) if uses_glossary(&p, glossary) => p,
            Ok(_) => return Refreshed::Skipped,
            Err(e) => {
                tracing::warn!(product = %id, error = %e, "listing translation not refreshed");
                return Refreshed::Failed;
            }
        };
        let mut product = before.clone();
        if let Err(ListingError::Blocked(rule)) = self.chat.prepare_product(&mut product).await {
            tracing::warn!(product = %id, %glossary, market = %rule.market, rule = %rule.rule, "refreshed listing translation breaks a listing rule; previous translations kept");
            return Refreshed::Blocked;
        }
        if lost_translations(&before, &product) {
            tracing::warn!(product = %id, %glossary, "listing translation not refreshed: the translator did not answer for every language; previous translations kept");
            return Refreshed::Failed;
        }
        if product.translations == before.translations {
            return Refreshed::Unchanged;
        }
        // Translating took a while: a newer glossary change, or a save by the merchant
        // (translated with the current glossary), wins over this result.
        if !self.current(glossary, generation) {
            return Refreshed::Skipped;
        }
        match store.product(id).await {
            Ok(Some(now)) if same_listing(&now, &before) => {}
            Ok(_) => return Refreshed::Skipped,
            Err(e) => {
                tracing::warn!(product = %id, error = %e, "listing translation not refreshed");
                return Refreshed::Failed;
            }
        }
        match self.commerce.put_product(product).await {
            Ok(_) => Refreshed::Saved,
            Err(e) => {
                tracing::warn!(product = %id, error = %e, "listing translation not refreshed");
                Refreshed::Failed
            }
        }
    }
}

/// Whether re-translating lost text `before` had: a language missing, or a description
/// come back empty (a provider that failed or timed out leaves them out; saving that would
/// delete translations instead of refreshing them).
fn lost_translations(before: &Product, after: &Product) -> bool {
    before.translations.iter().any(|(lang, old)| {
        after.translations.get(lang).is_none_or(|new| {
            new.title.is_empty() || (new.description.is_empty() && !old.description.is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(merchant: &str, glossary: Option<&str>) -> Product {
        serde_json::from_value(serde_json::json!({
            "id": "p1",
            "title": "藤编篮",
            "price_cny": 100,
            "merchant": merchant,
            "glossary": glossary,
        }))
        .expect("a product")
    }

    #[test]
    fn a_product_uses_its_named_glossary_else_its_merchants() {
        assert!(uses_glossary(&product("m1", None), "m1"));
        assert!(!uses_glossary(&product("m1", None), "m2"));
        assert!(uses_glossary(&product("m1", Some("shared")), "shared"));
        assert!(!uses_glossary(&product("m1", Some("shared")), "m1"));
        assert!(!uses_glossary(&product("", None), ""));
    }

    #[test]
    fn listings_compare_without_translations() {
        let a = product("m1", None);
        let mut b = a.clone();
        b.translations.insert(
            "en".into(),
            ferry_client::protocol::translation::ProductText {
                title: "rattan basket".into(),
                description: String::new(),
            },
        );
        assert!(same_listing(&a, &b));
        b.title = "藤编篮 大号".into();
        assert!(!same_listing(&a, &b));
    }

    #[test]
    fn a_refresh_missing_a_language_or_a_description_lost_text() {
        let text =
            |title: &str, description: &str| ferry_client::protocol::translation::ProductText {
                title: title.into(),
                description: description.into(),
            };
        let mut before = product("m1", None);
        before
            .translations
            .insert("en".into(), text("rattan basket", "woven by hand"));
        before.translations.insert("ja".into(), text("籐かご", ""));
        let mut after = before.clone();
        assert!(!lost_translations(&before, &after));
        after
            .translations
            .insert("en".into(), text("rattan basket (large)", "woven"));
        after
            .translations
            .insert("es".into(), text("cesta de ratán", ""));
        assert!(
            !lost_translations(&before, &after),
            "changed and added text is no loss"
        );
        after.translations.remove("ja");
        assert!(lost_translations(&before, &after), "a language left out");
        after.translations.insert("ja".into(), text("籐かご", ""));
        after
            .translations
            .insert("en".into(), text("rattan basket", ""));
        assert!(lost_translations(&before, &after), "a description left out");
    }
}
