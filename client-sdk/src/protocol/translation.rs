//! Translation and moderation on the wire: languages, the translations a comment carries,
//! late `translation` updates, the moderator queue of held comments, and the rule a refused
//! comment broke. Part of the one protocol definition (see the parent module);
//! `docs/protocol.md` documents every shape (section 14).
//!
//! What a viewer receives is per connection: the server keeps each comment's translations into
//! every language present in the room, but sends each connection only the translation into
//! *its* language (plus the original `text` and its source `lang`). So `translations` on the
//! wire holds at most one entry, keyed by the receiving connection's language.

use super::UserRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Translations of one text, keyed by language code (`en`, `zh`, `es`, `ja`...).
pub type Translations = BTreeMap<String, String>;

/// Normalize a BCP 47 language tag to the code Ferry uses: its primary subtag, lowercase
/// (`en-US` → `en`, `zh-Hant-TW` → `zh`, `ES` → `es`). `None` when the tag is not
/// well-formed (primary subtag of 2–3 ASCII letters, subtags of 1–8 alphanumerics).
pub fn normalize_lang(tag: &str) -> Option<String> {
    let tag = tag.trim();
    let mut parts = tag.split(['-', '_']);
    let primary = parts.next()?;
    if !(2..=3).contains(&primary.len()) || !primary.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    for p in parts {
        if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
    }
    Some(primary.to_ascii_lowercase())
}

/// How severe a moderation rule is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Passes.
    Green,
    /// Held for a moderator (comments); allowed with a warning (product listings).
    Yellow,
    /// Refused: the sender gets `moderation_blocked` (1019) and nobody else sees it; a
    /// product cannot be enabled in that market.
    Red,
}

/// The moderation rule a text matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// Market whose rule set contains the rule (`ae`, `sa`, `us`...).
    pub market: String,
    /// The rule's id within that market (`alcohol`, `pork`...).
    pub rule: String,
    pub severity: Severity,
    /// Human-readable description of the rule, for the sender or the moderator.
    #[serde(default)]
    pub label: String,
}

/// A comment waiting in the moderator queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldComment {
    /// Queue id (server-assigned), used by `approve_comment` / `reject_comment`.
    pub id: String,
    /// Who wrote it.
    pub user: UserRef,
    pub text: String,
    /// Detected source language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// Translations ready when it was held (staff receive the one into their language).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub translations: Translations,
    /// Why it was held.
    pub rule: RuleRef,
    /// Server time (Unix ms) when it was held.
    pub at: u64,
}

/// Reply to a `comment` that was held for a moderator instead of published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingReply {
    pub pending: PendingComment,
}

/// Where a held comment waits, as its sender sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingComment {
    /// Queue id.
    pub id: String,
    /// The rule that held it.
    pub rule: RuleRef,
}

/// Reply to `moderation_queue`: every held comment of the room, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueReply {
    pub held: Vec<HeldComment>,
}

/// A product's title and description in one language (server-translated through the
/// merchant's glossary).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductText {
    pub title: String,
    #[serde(default)]
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags_normalize_to_primary_subtag() {
        assert_eq!(normalize_lang("en-US").as_deref(), Some("en"));
        assert_eq!(normalize_lang("zh_Hant_TW").as_deref(), Some("zh"));
        assert_eq!(normalize_lang(" ES ").as_deref(), Some("es"));
        assert_eq!(normalize_lang("fil").as_deref(), Some("fil"));
        assert_eq!(normalize_lang("e"), None);
        assert_eq!(normalize_lang("english"), None);
        assert_eq!(normalize_lang("en-"), None);
        assert_eq!(normalize_lang("日本"), None);
        assert_eq!(normalize_lang(""), None);
    }

    #[test]
    fn severities_order_green_yellow_red() {
        assert!(Severity::Red > Severity::Yellow && Severity::Yellow > Severity::Green);
    }
}
