//! Glossary-pinned product terms: managed over the HTTP API, applied to product listings per
//! market and to comments in the glossary's rooms, with every provider. Every glossary term
//! present in a source text must come out exactly as the merchant specified — 100%.

mod common;

use common::providers::FakeProvider;
use common::*;
use ferry::config::{MarketConfig, ProviderKind};
use ferry::protocol::{Role, RoomEvent};
use ferry_client::{Client, Event};
use serde_json::{json, Value};

/// The merchant's terms: zh → (en, es, ja).
const TERMS: &[(&str, &str, &str, &str)] = &[
    ("藤编篮", "rattan basket", "cesta de ratán", "籐かご"),
    (
        "青花瓷",
        "blue-and-white porcelain",
        "porcelana azul y blanca",
        "青花磁器",
    ),
    (
        "紫砂壶",
        "Yixing clay teapot",
        "tetera de arcilla Yixing",
        "紫砂急須",
    ),
    (
        "真丝围巾",
        "mulberry silk scarf",
        "bufanda de seda de morera",
        "シルクスカーフ",
    ),
    (
        "竹编灯罩",
        "woven bamboo lampshade",
        "pantalla de bambú tejido",
        "竹編みランプシェード",
    ),
    ("手工皂", "handmade soap", "jabón artesanal", "手作り石鹸"),
];

const TITLES: &[&str] = &[
    "藤编篮 手工 大号",
    "景德镇青花瓷茶杯套装",
    "宜兴紫砂壶 原矿 送杯",
    "真丝围巾 + 手工皂 礼盒",
    "竹编灯罩 和 藤编篮 两件套",
    "青花瓷花瓶配藤编篮底座",
    "紫砂壶、青花瓷杯、藤编篮 三件组合",
    "手工皂（玫瑰）",
];

fn glossary_body() -> String {
    let terms: Vec<Value> = TERMS
        .iter()
        .map(|(zh, en, es, ja)| json!({"zh": zh, "en": en, "es": es, "ja": ja}))
        .collect();
    json!({"rooms": ["gl-*"], "terms": terms}).to_string()
}

/// Every source term of `source` must appear in `translated` as its target, as often.
fn assert_terms_exact(source: &str, translated: &str, lang: &str, context: &str) -> usize {
    let mut checked = 0;
    for (zh, en, es, ja) in TERMS {
        let n = source.matches(zh).count();
        if n == 0 {
            continue;
        }
        let target = match lang {
            "en" => en,
            "es" => es,
            _ => ja,
        };
        assert_eq!(
            translated.matches(target).count(),
            n,
            "{context}: `{zh}` must be `{target}` in {lang}: {translated}"
        );
        checked += n;
    }
    assert!(!translated.contains("<x"), "{context}: {translated}");
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_glossary_term_comes_out_exactly_with_every_provider() {
    for kind in [
        ProviderKind::Libretranslate,
        ProviderKind::Deepl,
        ProviderKind::Openai,
    ] {
        let fake = FakeProvider::start(kind).await;
        let s = TestServer::start(|c| {
            c.translation.providers = vec![fake.config()];
            c.limits.command_burst = 200.0;
            c.commerce.markets.insert(
                "jp".into(),
                MarketConfig {
                    currency: "JPY".into(),
                    minor_digits: 0,
                    per_cny: 21.3,
                    tax_percent: 10.0,
                    shipping_minor: 1500,
                },
            );
            c.commerce.markets.insert(
                "es".into(),
                MarketConfig {
                    currency: "EUR".into(),
                    minor_digits: 2,
                    per_cny: 0.13,
                    tax_percent: 21.0,
                    shipping_minor: 1200,
                },
            );
        })
        .await;
        let host = s.token("gl-*", "merchant", Role::Host);
        let (st, body) = http(
            s.addr(),
            "PUT",
            "/api/glossaries/merchant",
            Some(&host),
            Some(&glossary_body()),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        let mut checked = 0;
        // Product listings, per market language.
        for (i, title) in TITLES.iter().enumerate() {
            let product = json!({
                "title": title,
                "description": format!("{title}，现货"),
                "price_cny": 5900,
                "markets": {"us": true, "jp": true, "es": true, "hk": true},
            });
            let (st, body) = http(
                s.addr(),
                "PUT",
                &format!("/api/products/p{i}"),
                Some(&host),
                Some(&product.to_string()),
            )
            .await;
            assert_eq!(st, 200, "{kind:?}: {body}");
            let v: Value = serde_json::from_str(&body).expect("json");
            let tr = &v["view"]["translations"];
            for lang in ["en", "es", "ja"] {
                let t = tr[lang]["title"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{kind:?}: no {lang} title: {v}"));
                checked += assert_terms_exact(title, t, lang, &format!("{kind:?} title {i}"));
                let d = tr[lang]["description"].as_str().expect("description");
                checked += assert_terms_exact(title, d, lang, &format!("{kind:?} description {i}"));
            }
            assert!(
                tr.get("zh").is_none(),
                "the merchant's own language is not translated"
            );
        }
        // Comments in the glossary's rooms.
        let room = "gl-live";
        let (h, _he) = Client::connect(s.options(room, "merchant", Role::Host));
        h.join(room).await.expect("join");
        let mut readers = Vec::new();
        for lang in ["en", "es", "ja"] {
            let mut o = s.options(room, &format!("r-{lang}"), Role::Viewer);
            o.lang = Some(lang.into());
            let (c, e) = Client::connect(o);
            c.join(room).await.expect("join");
            readers.push((lang, c, e));
        }
        let comments: Vec<String> = TITLES
            .iter()
            .map(|t| format!("大家看这个{t}，怎么样？"))
            .collect();
        for c in &comments {
            h.comment(room, c.clone()).await.expect("comment");
        }
        for (lang, _c, events) in readers.iter_mut() {
            for c in &comments {
                let tr = wait_for(events, |e| match e {
                    Event::Room {
                        event:
                            RoomEvent::Comment {
                                text, translations, ..
                            },
                        ..
                    } if text == c => Some(translations.clone()),
                    _ => None,
                })
                .await;
                let t = tr
                    .get(*lang)
                    .unwrap_or_else(|| panic!("{kind:?}: no {lang} for {c}"));
                checked += assert_terms_exact(c, t, lang, &format!("{kind:?} comment"));
            }
        }
        // 8 titles holding 13 term occurrences, each in a title, a description and a
        // comment, into 3 languages: every one exact.
        assert_eq!(checked, 13 * 3 * 3, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glossaries_are_owned_versioned_and_change_translations_at_once() {
    let fake = FakeProvider::start(ProviderKind::Deepl).await;
    let s = TestServer::start(|c| c.translation.providers = vec![fake.config()]).await;
    let a = s.token("gl-*", "merchant-a", Role::Host);
    let b = s.token("gl-*", "merchant-b", Role::Host);
    let admin = s.token("*", "ops", Role::Admin);
    let viewer = s.token("gl-*", "v", Role::Viewer);
    let path = "/api/glossaries/merchant-a";
    let (st, body) = http(s.addr(), "PUT", path, Some(&a), Some(&glossary_body())).await;
    assert_eq!(st, 200, "{body}");
    let v1: Value = serde_json::from_str(&body).expect("json");
    let version1 = v1["glossary"]["version"].as_u64().expect("version");
    assert_eq!(v1["glossary"]["owner"], "merchant-a");
    // Another merchant may neither change nor read it; viewers may not manage glossaries.
    assert_eq!(
        http(s.addr(), "PUT", path, Some(&b), Some(&glossary_body()))
            .await
            .0,
        403
    );
    assert_eq!(http(s.addr(), "GET", path, Some(&b), None).await.0, 404);
    assert_eq!(
        http(s.addr(), "GET", path, Some(&viewer), None).await.0,
        403
    );
    assert_eq!(http(s.addr(), "GET", path, Some(&admin), None).await.0, 200);
    // Rooms the token does not allow are refused.
    let (st, _) = http(
        s.addr(),
        "PUT",
        "/api/glossaries/x",
        Some(&a),
        Some(r#"{"rooms":["other-*"],"terms":[]}"#),
    )
    .await;
    assert_eq!(st, 403);
    // Bad terms are named.
    let (st, body) = http(
        s.addr(),
        "PUT",
        path,
        Some(&a),
        Some(r#"{"terms":[{"zh":"只有一种语言"}]}"#),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("two languages"), "{body}");

    // A comment translated with the glossary...
    let room = "gl-versions";
    let (h, _he) = Client::connect(s.options(room, "merchant-a", Role::Host));
    h.join(room).await.expect("join");
    let mut o = s.options(room, "reader", Role::Viewer);
    o.lang = Some("en".into());
    let (_r, mut re) = Client::connect(o);
    _r.join(room).await.expect("join");
    let next = |text: &'static str| {
        move |e: &Event| match e {
            Event::Room {
                event:
                    RoomEvent::Comment {
                        text: t,
                        translations,
                        ..
                    },
                ..
            } if t == text => translations.get("en").cloned(),
            _ => None,
        }
    };
    h.comment(room, "这个藤编篮结实吗").await.expect("comment");
    let t = wait_for(&mut re, next("这个藤编篮结实吗")).await;
    assert!(t.contains("rattan basket"), "{t}");
    let calls = fake.requests();
    // ...the merchant renames the term: a new version, and the same comment is translated
    // again with it (the cache key has the version), at once.
    let renamed = glossary_body().replace("rattan basket", "hand-woven rattan basket");
    let (st, body) = http(s.addr(), "PUT", path, Some(&a), Some(&renamed)).await;
    assert_eq!(st, 200);
    let v2: Value = serde_json::from_str(&body).expect("json");
    assert!(v2["glossary"]["version"].as_u64().expect("version") > version1);
    h.comment(room, "这个藤编篮结实吗").await.expect("comment");
    let t2 = wait_for(&mut re, next("这个藤编篮结实吗")).await;
    assert!(t2.contains("hand-woven rattan basket"), "{t2}");
    assert_eq!(fake.requests(), calls + 1);

    let (st, body) = http(s.addr(), "GET", "/api/glossaries", Some(&a), None).await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["glossaries"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(http(s.addr(), "DELETE", path, Some(&b), None).await.0, 404);
    assert_eq!(http(s.addr(), "DELETE", path, Some(&a), None).await.0, 204);
    assert_eq!(http(s.addr(), "GET", path, Some(&a), None).await.0, 404);
}

/// A product enabled only in the US has an English listing translation; pinned in a room
/// whose viewers read English, Japanese and Spanish, each viewer receives the card in their
/// own language — the glossary's terms exact — and the provider is asked once per missing
/// language (title and description), not once per viewer. A viewer joining later finds the
/// pin in the room state in their language too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_product_reaches_each_viewer_in_their_language() {
    let fake = FakeProvider::start(ProviderKind::Deepl).await;
    let s = TestServer::start(|c| c.translation.providers = vec![fake.config()]).await;
    let host_token = s.token("gl-*", "merchant", Role::Host);
    let (st, body) = http(
        s.addr(),
        "PUT",
        "/api/glossaries/merchant",
        Some(&host_token),
        Some(&glossary_body()),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let product = json!({
        "title": "藤编篮 手工 大号",
        "description": "藤编篮，现货，送棉布内衬",
        "price_cny": 5900,
        "markets": {"us": true},
    });
    let (st, body) = http(
        s.addr(),
        "PUT",
        "/api/products/basket",
        Some(&host_token),
        Some(&product.to_string()),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let saved: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        saved["view"]["translations"]
            .as_object()
            .map(|t| t.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["en".to_owned()]),
        "the listing is translated into its markets' languages only: {saved}"
    );

    let room = "gl-showcase";
    let (host, _he) = Client::connect(s.options(room, "merchant", Role::Host));
    host.join(room).await.expect("join");
    let mut viewers = Vec::new();
    for (i, lang) in ["en", "ja", "ja", "es", "es"].iter().enumerate() {
        let mut o = s.options(room, &format!("v{i}"), Role::Viewer);
        o.lang = Some((*lang).into());
        let (c, e) = Client::connect(o);
        c.join(room).await.expect("join");
        viewers.push((*lang, c, e));
    }
    let before = fake.log().len();
    host.pin_product(room, "basket").await.expect("pin");
    for (lang, _c, events) in viewers.iter_mut() {
        let pinned = wait_for(events, |e| match e {
            Event::Room {
                event: RoomEvent::ProductPinned { pinned },
                ..
            } => Some(pinned.clone()),
            _ => None,
        })
        .await;
        let tr = &pinned.product.translations;
        assert_eq!(
            tr.keys().collect::<Vec<_>>(),
            vec![*lang],
            "a {lang} viewer gets only the {lang} card: {tr:?}"
        );
        let (term, prefix) = match *lang {
            "en" => ("rattan basket", "en:"),
            "ja" => ("籐かご", "ja:"),
            _ => ("cesta de ratán", "es:"),
        };
        let card = &tr[*lang];
        assert!(card.title.starts_with(prefix), "{card:?}");
        assert_eq!(card.title.matches(term).count(), 1, "{card:?}");
        assert_eq!(card.description.matches(term).count(), 1, "{card:?}");
        assert_eq!(
            pinned.product.title, "藤编篮 手工 大号",
            "the original stays"
        );
    }
    // Japanese and Spanish were missing (English came with the listing): two languages,
    // two texts each, whatever the number of viewers.
    let calls: Vec<(String, String, usize)> = fake.log()[before..].to_vec();
    let mut targets: Vec<String> = calls.iter().map(|(_, t, _)| t.to_lowercase()).collect();
    targets.sort();
    targets.dedup();
    assert_eq!(targets, vec!["es".to_owned(), "ja".to_owned()], "{calls:?}");
    assert_eq!(calls.iter().map(|c| c.2).sum::<usize>(), 4, "{calls:?}");

    // A Japanese viewer joining afterwards: the room state holds the pin in Japanese only.
    let mut o = s.options(room, "late", Role::Viewer);
    o.lang = Some("ja".into());
    let (late, _le) = Client::connect(o);
    let reply = late.join(room).await.expect("join");
    let pinned = reply.state.product.expect("a pinned product");
    assert_eq!(
        pinned.product.translations.keys().collect::<Vec<_>>(),
        vec!["ja"]
    );
    assert!(pinned.product.translations["ja"].title.contains("籐かご"));
}

async fn product_en_title(s: &TestServer, token: &str, id: &str) -> String {
    let (st, body) = http(
        s.addr(),
        "GET",
        &format!("/api/products/{id}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["product"]["translations"]["en"]["title"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Changing a glossary re-translates the listings made with it, in the background, without
/// their merchant saving them again; other merchants' listings are left alone. Deleting it
/// does the same (the terms are then translated like any other text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glossary_change_refreshes_existing_listings() {
    let fake = FakeProvider::start(ProviderKind::Deepl).await;
    let s = TestServer::start(|c| {
        c.translation.providers = vec![fake.config()];
        c.translation.listing_refresh_concurrency = 2;
    })
    .await;
    let a = s.token("gl-*", "merchant-a", Role::Host);
    let b = s.token("gl-*", "merchant-b", Role::Host);
    let path = "/api/glossaries/merchant-a";
    let (st, body) = http(s.addr(), "PUT", path, Some(&a), Some(&glossary_body())).await;
    assert_eq!(st, 200, "{body}");
    let put = |token: &str, id: &str, title: &str| {
        let token = token.to_owned();
        let path = format!("/api/products/{id}");
        let body = json!({"title": title, "price_cny": 100, "markets": {"us": true}}).to_string();
        let addr = s.addr();
        async move {
            let (st, body) = http(addr, "PUT", &path, Some(&token), Some(&body)).await;
            assert_eq!(st, 200, "{body}");
        }
    };
    for i in 0..5 {
        put(&a, &format!("a{i}"), &format!("藤编篮 {i} 号")).await;
    }
    put(&b, "b0", "藤编篮 0 号").await;
    assert!(product_en_title(&s, &a, "a0")
        .await
        .contains("rattan basket"));
    let b_before = product_en_title(&s, &b, "b0").await;
    assert!(!b_before.contains("rattan basket"), "{b_before}");

    let renamed = glossary_body().replace("rattan basket", "hand-woven rattan basket");
    let (st, _) = http(s.addr(), "PUT", path, Some(&a), Some(&renamed)).await;
    assert_eq!(st, 200);
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut done = 0;
        for i in 0..5 {
            if product_en_title(&s, &a, &format!("a{i}"))
                .await
                .contains("hand-woven rattan basket")
            {
                done += 1;
            }
        }
        if done == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {done} of 5 listings refreshed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(product_en_title(&s, &b, "b0").await, b_before);
    let saved = "ferry_translation_listings_refreshed_total{node=\"test-node\",result=\"saved\"}";
    assert_eq!(s.metric(saved), 5.0);

    // Deleted: the listings are translated again without it.
    assert_eq!(http(s.addr(), "DELETE", path, Some(&a), None).await.0, 204);
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while product_en_title(&s, &a, "a4")
        .await
        .contains("rattan basket")
    {
        assert!(tokio::time::Instant::now() < until, "not refreshed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(product_en_title(&s, &a, "a4").await.starts_with("en:"));
}
