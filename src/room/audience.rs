//! Sans-IO: what each member of a room receives of an event. Most events are the same for
//! everyone and are framed once. A comment (or announcement) with translations is framed once
//! per language group: each connection gets the original, its source language, and only the
//! translation into its own language; a `translation` update likewise. A held comment goes
//! to staff in full and to everyone else as its queue id only. A pinned product likewise
//! carries only the title and description in the member's language.
//!
//! Why one frame per language rather than one frame with every translation: each member still
//! costs one shared-pointer clone, but a member reads one translation instead of all of them
//! (`docs/benchmarks.md`, issue 5, has the bytes and CPU per delivery of both).

use ferry_client::protocol::translation::Translations;
use ferry_client::protocol::RoomEvent;

/// Who receives a frame: the connection's language and whether it is staff.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Audience {
    pub lang: Option<String>,
    pub staff: bool,
}

/// Whether members receive different versions of `event`.
pub fn varies(event: &RoomEvent) -> bool {
    match event {
        RoomEvent::Comment { translations, .. } | RoomEvent::Announcement { translations, .. } => {
            !translations.is_empty()
        }
        RoomEvent::Translation { .. } => true,
        RoomEvent::CommentHeld { held, .. } => held.is_some(),
        RoomEvent::ProductPinned { pinned } => !pinned.product.translations.is_empty(),
        _ => false,
    }
}

fn only(translations: &Translations, lang: Option<&str>) -> Translations {
    lang.and_then(|l| translations.get_key_value(l))
        .map(|(k, v)| [(k.clone(), v.clone())].into())
        .unwrap_or_default()
}

/// `event` as `audience` receives it.
pub fn view_for(event: &RoomEvent, lang: Option<&str>, staff: bool) -> RoomEvent {
    match event {
        RoomEvent::Comment {
            user,
            text,
            lang: source,
            translations,
            held_id,
        } => RoomEvent::Comment {
            user: user.clone(),
            text: text.clone(),
            lang: source.clone(),
            translations: only(translations, lang),
            held_id: held_id.clone(),
        },
        RoomEvent::Announcement {
            user,
            text,
            lang: source,
            translations,
        } => RoomEvent::Announcement {
            user: user.clone(),
            text: text.clone(),
            lang: source.clone(),
            translations: only(translations, lang),
        },
        RoomEvent::Translation {
            offset,
            translations,
        } => RoomEvent::Translation {
            offset: *offset,
            translations: only(translations, lang),
        },
        RoomEvent::CommentHeld { id, held } => RoomEvent::CommentHeld {
            id: id.clone(),
            held: held.as_ref().filter(|_| staff).map(|h| {
                let mut h = h.clone();
                h.translations = only(&h.translations, lang);
                h
            }),
        },
        RoomEvent::ProductPinned { pinned } => {
            let mut pinned = pinned.clone();
            let mut product = std::mem::take(&mut pinned.product.translations);
            if let Some((l, t)) = lang.and_then(|l| product.remove_entry(l)) {
                pinned.product.translations.insert(l, t);
            }
            RoomEvent::ProductPinned { pinned }
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::protocol::translation::{HeldComment, RuleRef, Severity};
    use ferry_client::protocol::{Offset, Role, UserId, UserRef};

    fn user() -> UserRef {
        UserRef {
            id: UserId("u".into()),
            name: "U".into(),
            role: Role::Viewer,
        }
    }

    fn comment() -> RoomEvent {
        RoomEvent::Comment {
            user: user(),
            text: "多少钱".into(),
            lang: Some("zh".into()),
            translations: [
                ("en".to_owned(), "How much?".to_owned()),
                ("es".to_owned(), "¿Cuánto cuesta?".to_owned()),
            ]
            .into(),
            held_id: None,
        }
    }

    #[test]
    fn each_language_gets_its_translation_and_the_original() {
        assert!(varies(&comment()));
        match view_for(&comment(), Some("es"), false) {
            RoomEvent::Comment {
                text,
                lang,
                translations,
                ..
            } => {
                assert_eq!(text, "多少钱");
                assert_eq!(lang.as_deref(), Some("zh"));
                assert_eq!(translations.len(), 1);
                assert_eq!(translations["es"], "¿Cuánto cuesta?");
            }
            other => panic!("{other:?}"),
        }
        for lang in [None, Some("zh"), Some("ja")] {
            match view_for(&comment(), lang, false) {
                RoomEvent::Comment { translations, .. } => assert!(translations.is_empty()),
                other => panic!("{other:?}"),
            }
        }
        let update = RoomEvent::Translation {
            offset: Offset(4),
            translations: [("ja".to_owned(), "いくら".to_owned())].into(),
        };
        assert!(varies(&update));
        assert_eq!(
            view_for(&update, Some("en"), false),
            RoomEvent::Translation {
                offset: Offset(4),
                translations: Default::default()
            }
        );
        assert!(!varies(&RoomEvent::Likes { count: 1 }));
    }

    #[test]
    fn held_comments_reach_staff_only() {
        let held = RoomEvent::CommentHeld {
            id: "h1".into(),
            held: Some(Box::new(HeldComment {
                id: "h1".into(),
                user: user(),
                text: "lottery?".into(),
                lang: Some("en".into()),
                translations: [("zh".to_owned(), "彩票？".to_owned())].into(),
                rule: RuleRef {
                    market: "ae".into(),
                    rule: "gambling".into(),
                    severity: Severity::Yellow,
                    label: String::new(),
                },
                at: 1,
            })),
        };
        assert!(varies(&held));
        assert_eq!(
            view_for(&held, Some("zh"), false),
            RoomEvent::CommentHeld {
                id: "h1".into(),
                held: None
            }
        );
        match view_for(&held, Some("zh"), true) {
            RoomEvent::CommentHeld { held: Some(h), .. } => {
                assert_eq!(h.text, "lottery?");
                assert_eq!(h.translations["zh"], "彩票？");
            }
            other => panic!("{other:?}"),
        }
    }
}
