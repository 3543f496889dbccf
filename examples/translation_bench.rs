//! What translation adds to a comment's latency, measured end to end on a real server (port
//! 0, loopback) with SDK clients: the time from sending a comment to a reader receiving it,
//! for a reader of each language, in scenarios run back to back in the same process:
//!
//! - `baseline`    every reader reads the comment's language: nothing to translate;
//! - `phrasebook`  readers in zh, es, ja; the comment is a phrasebook phrase;
//! - `cache`       readers in zh, es, ja; the comment was translated before (node LRU);
//! - `provider`    readers in zh, es, ja; every comment is new, and the local provider
//!   (a LibreTranslate-compatible stand-in) answers after 50 ms.
//!
//! ```text
//! cargo run --release --example translation_bench -- [COMMENTS]
//! ```
//!
//! Comments are sent one at a time (the next after every reader got the last), so each
//! sample is one comment's own latency, not a queue's. It also prints provider calls per
//! comment, and the bytes one delivery costs with one frame per language against one frame
//! carrying every translation.

#[path = "../tests/common/providers.rs"]
mod providers;

use ferry::auth::{mint, TokenRequest};
use ferry::config::{Config, ProviderKind};
use ferry::protocol::{Role, RoomEvent, UserId, UserRef};
use ferry_client::{Client, ClientOptions, Event, Events};
use providers::FakeProvider;
use std::time::{Duration, Instant};

struct Reader {
    lang: &'static str,
    events: Events,
    _client: Client,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn connect(
    cfg: &Config,
    url: &str,
    room: &str,
    user: &str,
    role: Role,
    lang: &str,
) -> (Client, Events) {
    let token = mint(
        &cfg.auth,
        &TokenRequest {
            room: room.into(),
            user: user.into(),
            name: None,
            role,
            lang: Some(lang.into()),
            market: Some("us".into()),
            ttl: Duration::from_secs(3600),
        },
    )
    .expect("mint");
    let (c, e) = Client::connect(ClientOptions::new(url, token));
    c.join(room).await.expect("join");
    (c, e)
}

/// Wait until `reader` has the comment `text`; the time it arrived.
async fn arrival(reader: &mut Reader, text: &str) -> (Instant, bool) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), reader.events.recv())
            .await
            .expect("comment in time")
            .expect("events open");
        if let Event::Room {
            event:
                RoomEvent::Comment {
                    text: t,
                    translations,
                    ..
                },
            ..
        } = e
        {
            if t == text {
                return (Instant::now(), translations.contains_key(reader.lang));
            }
        }
    }
}

/// Send `texts` one by one from `sender`; per comment, the latency to each reader (ms).
async fn run(
    sender: &Client,
    room: &str,
    readers: &mut [Reader],
    texts: &[String],
    expect_translated: bool,
) -> Vec<f64> {
    let mut samples = Vec::with_capacity(texts.len() * readers.len());
    for text in texts {
        let sent = Instant::now();
        sender.comment(room, text.clone()).await.expect("comment");
        for r in readers.iter_mut() {
            let (at, translated) = arrival(r, text).await;
            if expect_translated {
                assert!(translated, "{}: `{text}` arrived untranslated", r.lang);
            }
            samples.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    samples
}

fn report(name: &str, s: &[f64], base: &[f64]) {
    let (p50, p99) = (percentile(s, 0.5), percentile(s, 0.99));
    println!(
        "{name:<11} n={:<5} p50={p50:7.2} ms  p99={p99:7.2} ms  max={:7.2} ms  added p50={:+6.2} ms  added p99={:+6.2} ms",
        s.len(),
        s.last().copied().unwrap_or(0.0),
        p50 - percentile(base, 0.5),
        p99 - percentile(base, 0.99),
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let provider = FakeProvider::start(ProviderKind::Libretranslate).await;
    provider.set_delay(Duration::from_millis(50));
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.commerce.journal_path = Default::default();
    cfg.translation.glossary_path = Default::default();
    cfg.translation.providers = vec![provider.config()];
    cfg.limits.comment_rate = 10_000.0;
    cfg.limits.comment_burst = 10_000.0;
    cfg.limits.command_rate = 10_000.0;
    cfg.limits.command_burst = 10_000.0;
    let server = ferry::server::start(cfg.clone()).await.expect("server");
    let url = format!("ws://{}/ws", server.local_addr);

    // Baseline room: every reader reads English, the comments are English.
    let (sender, _se) = connect(&cfg, &url, "base", "sender", Role::Host, "en").await;
    let mut base_readers = Vec::new();
    for i in 0..3 {
        let (c, e) = connect(&cfg, &url, "base", &format!("b{i}"), Role::Viewer, "en").await;
        base_readers.push(Reader {
            lang: "en",
            events: e,
            _client: c,
        });
    }
    // Translated room: readers in zh, es, ja; the sender writes English.
    let (tsender, _tse) = connect(&cfg, &url, "tr", "tsender", Role::Host, "en").await;
    let mut readers = Vec::new();
    for lang in ["zh", "es", "ja"] {
        let (c, e) = connect(&cfg, &url, "tr", &format!("r-{lang}"), Role::Viewer, lang).await;
        readers.push(Reader {
            lang,
            events: e,
            _client: c,
        });
    }

    let unique = |tag: &str| -> Vec<String> {
        (0..n)
            .map(|i| format!("does the {tag} basket number {i} come in blue"))
            .collect()
    };
    // Warm up connections and code paths.
    run(
        &sender,
        "base",
        &mut base_readers,
        &unique("warm")[..20.min(n)],
        false,
    )
    .await;

    let baseline = run(&sender, "base", &mut base_readers, &unique("plain"), false).await;
    let phrases: Vec<String> = [
        "How much?",
        "link please",
        "is it in stock?",
        "what sizes?",
        "thank you",
    ]
    .iter()
    .cycle()
    .take(n)
    .map(|s| (*s).to_owned())
    .collect();
    let phrasebook = run(&tsender, "tr", &mut readers, &phrases, true).await;
    let before = provider.requests();
    let fresh = unique("fresh");
    let provided = run(&tsender, "tr", &mut readers, &fresh, true).await;
    let calls = provider.requests() - before;
    let cached = run(&tsender, "tr", &mut readers, &fresh, true).await;
    let cache_calls = provider.requests() - before - calls;

    println!("translation latency, send → reader receives, {n} comments × 3 readers per scenario");
    report("baseline", &baseline, &baseline);
    report("phrasebook", &phrasebook, &baseline);
    report("cache", &cached, &baseline);
    report("provider", &provided, &baseline);
    println!(
        "provider calls per comment: {:.2} with 3 target languages ({} calls for {n} new comments; {} for {n} repeated)",
        calls as f64 / n as f64,
        calls,
        cache_calls
    );

    // One frame per language vs one frame with every translation, for a typical comment.
    let event = RoomEvent::Comment {
        user: UserRef {
            id: UserId("u-1001".into()),
            name: "Mei".into(),
            role: Role::Viewer,
        },
        text: "这个藤编篮有大号的吗？能寄到美国吗？".into(),
        lang: Some("zh".into()),
        translations: [
            (
                "en",
                "Does this rattan basket come in a large size? Can you ship it to the US?",
            ),
            (
                "es",
                "¿Esta cesta de ratán viene en tamaño grande? ¿Pueden enviarla a Estados Unidos?",
            ),
            (
                "ja",
                "この籐かごは大きいサイズがありますか？アメリカに発送できますか？",
            ),
        ]
        .iter()
        .map(|(l, t)| ((*l).to_owned(), (*t).to_owned()))
        .collect(),
        held_id: None,
    };
    let all = serde_json::to_string(&event).expect("json").len();
    let mut per = 0;
    for lang in ["en", "es", "ja"] {
        per += serde_json::to_string(&ferry::room::audience::view_for(&event, Some(lang), false))
            .expect("json")
            .len();
    }
    let per = per as f64 / 3.0;
    let started = Instant::now();
    let rounds = 100_000;
    for _ in 0..rounds {
        for lang in ["en", "es", "ja"] {
            std::hint::black_box(
                serde_json::to_string(&ferry::room::audience::view_for(&event, Some(lang), false))
                    .ok(),
            );
        }
    }
    let build_us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!(
        "bytes per delivery of a comment with 3 translations: one frame per language {per:.0} B, one frame with all {all} B ({:.0}% more); building the 3 language frames takes {build_us:.2} µs per comment (once per node, not per viewer)",
        (all as f64 / per - 1.0) * 100.0
    );
    server.drain().await;
}
