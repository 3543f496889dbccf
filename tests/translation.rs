//! Translation end to end: each provider adapter against a local server speaking that
//! provider's contract (batching, timeouts, retries, errors), and rooms on the real server
//! with viewers reading in zh, en, es and ja — on the embedded engine and on Redis.

mod common;

use common::providers::{Failure, FakeProvider};
use common::redis::RedisServer;
use common::*;
use ferry::config::{EngineKind, ProviderKind, TranslationConfig};
use ferry::protocol::{Offset, Role, RoomEvent};
use ferry::translate::glossary::{FileGlossaryStore, Glossaries, Glossary};
use ferry::translate::phrasebook::Phrasebook;
use ferry::translate::Translator;
use ferry_client::protocol::translation::Translations;
use ferry_client::{Client, Event, Events};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALL_KINDS: [ProviderKind; 3] = [
    ProviderKind::Libretranslate,
    ProviderKind::Deepl,
    ProviderKind::Openai,
];

fn term(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(l, t)| ((*l).to_owned(), (*t).to_owned()))
        .collect()
}

async fn translator_with(
    providers: Vec<ferry::config::ProviderConfig>,
) -> (Arc<Translator>, Arc<Glossaries>) {
    let store = Arc::new(FileGlossaryStore::open(None).expect("memory store"));
    let glossaries = Glossaries::new(store, 100).await.expect("glossaries");
    glossaries
        .put(Glossary {
            id: "m1".into(),
            owner: "m1".into(),
            version: 0,
            rooms: vec!["*".into()],
            terms: vec![term(&[
                ("zh", "藤编篮"),
                ("en", "rattan basket"),
                ("es", "cesta de ratán"),
                ("ja", "籐かご"),
            ])],
        })
        .await
        .expect("glossary");
    let cfg = TranslationConfig {
        providers,
        ..TranslationConfig::default()
    };
    (
        Translator::new(cfg, Phrasebook::default(), glossaries.clone(), None),
        glossaries,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_adapter_speaks_its_contract_and_keeps_glossary_terms() {
    for kind in ALL_KINDS {
        let fake = FakeProvider::start(kind).await;
        let (t, glossaries) = translator_with(vec![fake.config()]).await;
        let g = glossaries.get("m1");
        let text = "这个藤编篮多少钱? 我想要两个藤编篮 & <b>";
        let out = t
            .translate_all(text, "zh", &["en".into(), "es".into()], g.as_ref())
            .await;
        for (lang, term) in [("en", "rattan basket"), ("es", "cesta de ratán")] {
            let got = out
                .get(lang)
                .unwrap_or_else(|| panic!("{kind:?}: no {lang}"));
            assert!(got.starts_with(&format!("{lang}: ")), "{kind:?}: {got}");
            assert_eq!(got.matches(term).count(), 2, "{kind:?}: {got}");
            assert!(
                !got.contains("<x") && !got.contains("藤编篮"),
                "{kind:?}: {got}"
            );
            assert!(
                got.contains("& <B>"),
                "{kind:?}: user markup unescaped: {got}"
            );
        }
        // One request per target language (the two texts of a pair share none here).
        assert_eq!(fake.requests(), 2, "{kind:?}");
        // A text that is only a glossary term needs no provider.
        let out = t
            .translate_all("藤编篮", "zh", &["ja".into()], g.as_ref())
            .await;
        assert_eq!(out["ja"], "籐かご");
        assert_eq!(fake.requests(), 2, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_of_one_pair_are_batched_and_retries_honour_the_provider() {
    for kind in ALL_KINDS {
        let fake = FakeProvider::start(kind).await;
        let mut cfg = fake.config();
        cfg.batch_window = Duration::from_millis(40);
        let (t, _) = translator_with(vec![cfg]).await;
        // 12 texts for the same pair within the window: one request.
        let jobs: Vec<_> = (0..12)
            .flat_map(|i| t.start(&format!("第{i}个问题"), "zh", &["en".into()], None))
            .collect();
        let c =
            Translator::collect(jobs, tokio::time::Instant::now() + Duration::from_secs(3)).await;
        assert_eq!(
            c.ready.len(),
            1,
            "one language; the map keeps the last text"
        );
        assert_eq!(fake.requests(), 1, "{kind:?}: {:?}", fake.log());
        assert_eq!(fake.log()[0].2, 12, "{kind:?}");

        // Rate limited once (Retry-After: 0), then fine: retried, translated.
        fake.fail_next(Failure::RateLimited(0));
        let out = t
            .translate_all("限流之后", "zh", &["en".into()], None)
            .await;
        assert_eq!(out["en"], "en: 限流之后", "{kind:?}");
        assert_eq!(fake.requests(), 3, "{kind:?}");
        // A server error, then fine.
        fake.fail_next(Failure::Status(503));
        let out = t
            .translate_all("服务器错误之后", "zh", &["en".into()], None)
            .await;
        assert!(out.contains_key("en"), "{kind:?}");
        assert_eq!(fake.requests(), 5, "{kind:?}");
        let m = t.metrics();
        let stats = &m.providers[0];
        assert_eq!(stats.calls(), 5, "{kind:?}");
        let mut text = String::new();
        m.render("n", &mut text);
        assert_eq!(
            metric_value(&text, "ferry_translation_provider_retries_total"),
            2.0
        );
        assert_eq!(
            metric_value(
                &text,
                "ferry_translation_provider_errors_total{node=\"n\",provider=\"fake-"
            ) as u64,
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_auth_timeouts_and_dead_providers_fail_fast_without_retrying_hopeless_requests() {
    // DeepL's quota answer (456) is not retried.
    let fake = FakeProvider::start(ProviderKind::Deepl).await;
    let (t, _) = translator_with(vec![fake.config()]).await;
    fake.fail_next(Failure::Quota);
    assert!(t
        .translate_all("配额", "zh", &["en".into()], None)
        .await
        .is_empty());
    assert_eq!(fake.requests(), 1);
    // A wrong key: 403 / 401, not retried.
    for kind in ALL_KINDS {
        let fake = FakeProvider::start(kind).await;
        let mut cfg = fake.config();
        cfg.api_key = "wrong".into();
        let (t, _) = translator_with(vec![cfg]).await;
        assert!(t
            .translate_all("密钥", "zh", &["en".into()], None)
            .await
            .is_empty());
        assert_eq!(fake.requests(), 1, "{kind:?}");
        let mut text = String::new();
        t.metrics().render("n", &mut text);
        assert!(text.contains("kind=\"auth\"} 1"), "{kind:?}");
    }
    // Slower than the provider timeout: given up at the timeout.
    let slow = FakeProvider::start(ProviderKind::Libretranslate).await;
    slow.set_delay(Duration::from_millis(800));
    let mut cfg = slow.config();
    cfg.timeout = Duration::from_millis(150);
    cfg.retries = 0;
    let (t, _) = translator_with(vec![cfg]).await;
    let started = Instant::now();
    assert!(t
        .translate_all("太慢了", "zh", &["en".into()], None)
        .await
        .is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    // Nobody listening: connection refused, retried within the timeout, then given up; a
    // second provider in the chain answers.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let backup = FakeProvider::start(ProviderKind::Openai).await;
    let mut dead = backup.config();
    dead.name = "dead".into();
    dead.url = format!("http://127.0.0.1:{dead_port}");
    dead.timeout = Duration::from_millis(300);
    let (t, _) = translator_with(vec![dead, backup.config()]).await;
    let out = t.translate_all("备用", "zh", &["en".into()], None).await;
    assert_eq!(out["en"], "en: 备用");
    let mut text = String::new();
    t.metrics().render("n", &mut text);
    assert!(
        text.contains("provider=\"dead\",kind=\"connect\"}"),
        "{text}"
    );
}

/// A client reading `lang` in `room`.
async fn reader(
    s: &TestServer,
    room: &str,
    user: &str,
    role: Role,
    lang: &str,
) -> (Client, Events) {
    let mut o = s.options(room, user, role);
    o.lang = Some(lang.into());
    let (c, mut e) = Client::connect(o);
    let got = wait_for(&mut e, |ev| match ev {
        Event::Connected { lang, .. } => Some(lang.clone()),
        _ => None,
    })
    .await;
    assert_eq!(got.as_deref(), Some(lang));
    c.join(room).await.expect("join");
    (c, e)
}

/// The next comment in `events`: (offset, source language, translations).
async fn next_comment(events: &mut Events) -> (Offset, Option<String>, Translations, String) {
    wait_for(events, |e| match e {
        Event::Room {
            position,
            event:
                RoomEvent::Comment {
                    lang,
                    translations,
                    text,
                    ..
                },
            ..
        } => Some((
            position.offset,
            lang.clone(),
            translations.clone(),
            text.clone(),
        )),
        _ => None,
    })
    .await
}

/// The comment `text` in `events`: (offset, source language, translations).
async fn comment_with(events: &mut Events, want: &str) -> (Offset, Option<String>, Translations) {
    wait_for(events, |e| match e {
        Event::Room {
            position,
            event:
                RoomEvent::Comment {
                    lang,
                    translations,
                    text,
                    ..
                },
            ..
        } if text == want => Some((position.offset, lang.clone(), translations.clone())),
        _ => None,
    })
    .await
}

fn provider_config(c: &mut ferry::config::Config, fake: &FakeProvider) {
    c.translation.providers = vec![fake.config()];
    c.limits.comment_burst = 50.0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_in_four_languages_translates_once_per_language() {
    let fake = FakeProvider::start(ProviderKind::Libretranslate).await;
    let s = TestServer::start(|c| provider_config(c, &fake)).await;
    let room = "tr-room";
    let (_host, mut host_e) = reader(&s, room, "host", Role::Host, "zh").await;
    let (en1, mut en1_e) = reader(&s, room, "en1", Role::Viewer, "en").await;
    let (en2, mut en2_e) = reader(&s, room, "en2", Role::Viewer, "en").await;
    let (_es, mut es_e) = reader(&s, room, "es1", Role::Viewer, "es").await;
    let (_ja, mut ja_e) = reader(&s, room, "ja1", Role::Viewer, "ja").await;
    let (_zh, mut zh_e) = reader(&s, room, "zh1", Role::Viewer, "zh").await;

    let text = "Does the basket come in blue";
    let first_pos = en1.comment(room, text).await.expect("comment");
    let expect = |lang: &str| format!("{lang}: {}", text.to_uppercase());
    for (lang, events) in [
        ("zh", &mut host_e),
        ("zh", &mut zh_e),
        ("es", &mut es_e),
        ("ja", &mut ja_e),
    ] {
        let (_, source, tr, original) = next_comment(events).await;
        assert_eq!(original, text, "the original always comes along");
        assert_eq!(source.as_deref(), Some("en"));
        assert_eq!(tr.len(), 1, "{lang}: only its own language: {tr:?}");
        assert_eq!(tr[lang], expect(lang));
    }
    for events in [&mut en1_e, &mut en2_e] {
        let (_, source, tr, _) = next_comment(events).await;
        assert_eq!(source.as_deref(), Some("en"));
        assert!(
            tr.is_empty(),
            "readers of the source language get no translation"
        );
    }
    // Six readers, three target languages: three provider calls.
    assert_eq!(fake.requests(), 3, "{:?}", fake.log());

    // The same comment again: every language from the cache, no provider call.
    let again = en1.comment(room, text).await.expect("comment again");
    for (lang, events) in [("ja", &mut ja_e), ("zh", &mut zh_e)] {
        let (offset, _, tr) = comment_with(events, text).await;
        if offset < again.offset {
            // The first one, still queued for this reader.
            let (offset, _, tr) = comment_with(events, text).await;
            assert_eq!(offset, again.offset);
            assert_eq!(tr[lang], expect(lang));
        } else {
            assert_eq!(tr[lang], expect(lang));
        }
    }
    assert_eq!(fake.requests(), 3);
    assert!(s.metric("ferry_translation_lookups_total{node=\"test-node\",tier=\"lru\"}") >= 3.0);

    // A phrasebook phrase: answered at once, no provider.
    en1.comment(room, "How much??").await.expect("phrase");
    let (_, _, tr) = comment_with(&mut zh_e, "How much??").await;
    assert_eq!(tr["zh"], "多少钱？");
    let (_, _, tr) = comment_with(&mut es_e, "How much??").await;
    assert_eq!(tr["es"], "¿Cuánto cuesta?");
    assert_eq!(fake.requests(), 3);

    // Resuming replays translated comments in the resumer's language (node cache).
    let first = Offset(first_pos.offset.0 - 1);
    let mut o = s.options(room, "ja-late", Role::Viewer);
    o.lang = Some("ja".into());
    let (late, mut late_e) = Client::connect(o);
    let reply = late
        .request(ferry::protocol::Command::Join {
            room: room.into(),
            since: Some(ferry::protocol::StreamPosition {
                epoch: again.epoch.clone(),
                offset: first,
            }),
        })
        .await
        .expect("resume");
    assert!(matches!(
        reply,
        ferry::protocol::ReplyBody::Joined(ref j) if j.recovered == Some(true)
    ));
    let (_, _, tr) = comment_with(&mut late_e, text).await;
    assert_eq!(tr.len(), 1);
    assert_eq!(tr["ja"], expect("ja"));

    // Changing language takes effect at once: en2 now reads Japanese.
    en2.set_language("ja").await.expect("set_language");
    let err = en2
        .set_language("tlh")
        .await
        .expect_err("Klingon is not served");
    assert_eq!(err.code(), Some(1018));
    en1.comment(room, "So cute").await.expect("comment");
    let tr = wait_for(&mut en2_e, |e| match e {
        Event::Room {
            event: RoomEvent::Comment {
                text, translations, ..
            },
            ..
        } if text == "So cute" => Some(translations.clone()),
        _ => None,
    })
    .await;
    assert_eq!(tr["ja"], "ja: SO CUTE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_dead_providers_never_hold_the_room_back() {
    let fake = FakeProvider::start(ProviderKind::Deepl).await;
    fake.set_delay(Duration::from_millis(400));
    let s = TestServer::start(|c| {
        provider_config(c, &fake);
        c.translation.budget = Duration::from_millis(100);
    })
    .await;
    let room = "tr-late";
    let (host, _he) = reader(&s, room, "host", Role::Host, "zh").await;
    let (_en, mut en_e) = reader(&s, room, "en1", Role::Viewer, "en").await;
    let (_es, mut es_e) = reader(&s, room, "es1", Role::Viewer, "es").await;
    let started = Instant::now();
    let pos = host
        .comment(room, "这个篮子是手工编的吗")
        .await
        .expect("comment");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "the sender waited {:?}",
        started.elapsed()
    );
    // The original goes out at once, without translations...
    let (offset, source, tr, _) = next_comment(&mut en_e).await;
    assert_eq!(offset, pos.offset);
    assert_eq!(source.as_deref(), Some("zh"));
    assert!(tr.is_empty());
    // ...then a translation update for that offset, in each reader's language.
    for (lang, events) in [("en", &mut en_e), ("es", &mut es_e)] {
        // Languages arriving apart are separate updates; each reader's has its language.
        let (of, tr) = wait_for(events, |e| match e {
            Event::Room {
                event:
                    RoomEvent::Translation {
                        offset,
                        translations,
                    },
                ..
            } if !translations.is_empty() => Some((*offset, translations.clone())),
            _ => None,
        })
        .await;
        assert_eq!(of, pos.offset);
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[lang], format!("{lang}: 这个篮子是手工编的吗"));
    }
    assert!(s.metric("ferry_translation_late_published_total") >= 1.0);

    // Provider down: the original is delivered all the same, nothing else follows.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut dead = fake.config();
    dead.url = format!("http://127.0.0.1:{dead_port}");
    dead.timeout = Duration::from_millis(300);
    let s2 = TestServer::start(|c| {
        c.translation.providers = vec![dead.clone()];
        c.translation.budget = Duration::from_millis(100);
    })
    .await;
    let (host, _he) = reader(&s2, room, "host", Role::Host, "zh").await;
    let (_en, mut en_e) = reader(&s2, room, "en1", Role::Viewer, "en").await;
    host.comment(room, "服务商挂了")
        .await
        .expect("comment goes out");
    let (_, _, tr, original) = next_comment(&mut en_e).await;
    assert_eq!(original, "服务商挂了");
    assert!(tr.is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    while let Some(e) = en_e.try_recv() {
        assert!(
            !matches!(
                e,
                Event::Room {
                    event: RoomEvent::Translation { .. },
                    ..
                }
            ),
            "no translation can follow from a dead provider: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_each_comment_is_translated_once_for_the_whole_cluster() {
    let redis = RedisServer::start(false);
    let fake = FakeProvider::start(ProviderKind::Openai).await;
    let node = |name: &'static str| {
        let url = redis.url();
        let cfg = fake.config();
        move |c: &mut ferry::config::Config| {
            c.engine.kind = EngineKind::Redis;
            c.redis.urls = vec![url];
            c.redis.prefix = "tr".into();
            c.server.node_id = name.into();
            c.translation.providers = vec![cfg];
            c.limits.comment_burst = 50.0;
        }
    };
    let a = TestServer::start(node("node-a")).await;
    let b = TestServer::start(node("node-b")).await;
    let room = "tr-cluster";
    let (host_a, _ha) = reader(&a, room, "host-a", Role::Host, "zh").await;
    let (_ja, mut ja_e) = reader(&a, room, "ja1", Role::Viewer, "ja").await;
    let (host_b, _hb) = reader(&b, room, "host-b", Role::Host, "zh").await;
    let (_en, mut en_e) = reader(&b, room, "en1", Role::Viewer, "en").await;
    let (_es, mut es_e) = reader(&b, room, "es1", Role::Viewer, "es").await;
    // Node A learns node B's languages at its next presence tick.
    let deadline = Instant::now() + WAIT;
    loop {
        let langs = a.server.state.hub.audience(&room.into()).langs;
        if ["en", "es", "ja", "zh"].iter().all(|l| langs.contains(*l)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node A never saw node B's languages: {langs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = "这个篮子能放水果吗";
    host_a.comment(room, text).await.expect("comment on node A");
    for (lang, events) in [("en", &mut en_e), ("es", &mut es_e), ("ja", &mut ja_e)] {
        let (_, _, tr, _) = next_comment(events).await;
        assert_eq!(tr[lang], format!("{lang}: {text}"), "{lang}");
    }
    assert_eq!(
        fake.requests(),
        3,
        "once per language, cluster-wide: {:?}",
        fake.log()
    );
    // The same text on node B: node B never translated it, the shared cache has it.
    host_b.comment(room, text).await.expect("comment on node B");
    let (_, _, tr, _) = next_comment(&mut ja_e).await;
    assert_eq!(tr["ja"], format!("ja: {text}"));
    let (_, _, tr, _) = next_comment(&mut en_e).await;
    assert_eq!(tr["en"], format!("en: {text}"));
    assert_eq!(fake.requests(), 3);
    assert!(b.metric("ferry_translation_lookups_total{node=\"test-node\",tier=\"shared\"}") >= 3.0);
}
