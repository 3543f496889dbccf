//! Market moderation over real sockets: red comments refused with the rule named and seen by
//! nobody, yellow comments held for staff who approve or reject them, green ones passing —
//! with the obfuscated spellings people use — and product listings refused in markets where
//! they are red.

mod common;

use common::*;
use ferry::protocol::{Role, RoomEvent};
use ferry_client::protocol::translation::Severity;
use ferry_client::{Client, ClientError, CommentOutcome, Event, Events};
use std::time::Duration;

/// A client with a token for `market`, reading `lang`, joined to `room`.
async fn member(
    s: &TestServer,
    room: &str,
    user: &str,
    role: Role,
    market: &str,
    lang: &str,
) -> (Client, Events) {
    let mut o = s.options(room, user, role);
    o.token = token_in_market(&s.config, room, user, role, market);
    o.lang = Some(lang.into());
    let (c, e) = Client::connect(o);
    c.join(room).await.expect("join");
    (c, e)
}

fn blocked_rule(e: &ClientError) -> (String, String) {
    match e {
        ClientError::Server(b) => {
            assert_eq!(b.code, 1019, "{b:?}");
            assert_eq!(b.name, "moderation_blocked");
            let r = b.rule.as_ref().expect("the rule is named");
            assert_eq!(r.severity, Severity::Red);
            assert!(b.message.contains(&r.rule), "{}", b.message);
            (r.market.clone(), r.rule.clone())
        }
        other => panic!("expected moderation_blocked, got {other:?}"),
    }
}

async fn wait_for_audience(s: &TestServer, room: &str, market: &str) {
    tokio::time::timeout(WAIT, async {
        while !s
            .server
            .state
            .hub
            .audience(&room.into())
            .markets
            .contains(market)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("market present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_comments_are_refused_naming_the_rule_and_nobody_sees_them() {
    let s = TestServer::start(|c| c.limits.comment_burst = 100.0).await;
    let room = "mod-red";
    let (_host, _he) = member(&s, room, "host", Role::Host, "cn", "zh").await;
    let (us, _ue) = member(&s, room, "us1", Role::Viewer, "us", "en").await;
    let (_ae, mut ae_e) = member(&s, room, "ae1", Role::Viewer, "ae", "en").await;
    wait_for_audience(&s, room, "ae").await;
    for (text, rule) in [
        ("pork belly tonight?", "pork"),
        ("P O R K", "pork"),
        ("ｐｏｒｋ ｒｉｂｓ", "pork"),
        ("PoRk", "pork"),
        ("p.o.o.o.r.k", "pork"),
        ("豬肉乾好吃", "pork"),
        ("猪 肉 干", "pork"),
        ("b-a-c-o-n", "pork"),
        ("WiNe glasses with it?", "alcohol"),
        ("Ｂｅｅｒ", "alcohol"),
        ("啤 酒", "alcohol"),
        ("紅酒", "alcohol"),
    ] {
        let err = us.comment(room, text).await.expect_err(text);
        assert_eq!(blocked_rule(&err), ("ae".into(), rule.into()), "{text}");
    }
    // Words that merely contain a term pass.
    us.comment(room, "we begin at nine, the hamster toy please")
        .await
        .expect("green");
    // The Middle-East viewer sees the green comment first: none of the red ones went out.
    let first = wait_for(&mut ae_e, |e| match e {
        Event::Room {
            event: RoomEvent::Comment { text, .. },
            ..
        } => Some(text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(first, "we begin at nine, the hamster toy please");
    assert_eq!(
        s.metric("ferry_moderation_verdicts_total{node=\"test-node\",severity=\"red\"}"),
        12.0
    );

    // The same words in a room without Middle-East viewers are fine.
    let other = "mod-us-only";
    let (_h2, _h2e) = member(&s, other, "host", Role::Host, "cn", "zh").await;
    let (us2, _u2e) = member(&s, other, "us2", Role::Viewer, "us", "en").await;
    us2.comment(other, "pork belly tonight?")
        .await
        .expect("green in the US");
    // But the sender's own market counts even when nobody else is from there.
    let (ae2, _a2e) = member(&s, other, "ae2", Role::Viewer, "ae", "en").await;
    let err = ae2
        .comment(other, "beer")
        .await
        .expect_err("red for an ae sender");
    assert_eq!(blocked_rule(&err).0, "ae");
}

fn held_event(e: &Event) -> Option<(String, bool, Option<String>)> {
    match e {
        Event::Room {
            event: RoomEvent::CommentHeld { id, held },
            ..
        } => Some((
            id.clone(),
            held.is_some(),
            held.as_ref().map(|h| h.text.clone()),
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yellow_comments_wait_for_a_moderator_who_approves_or_rejects_once() {
    let s = TestServer::start(|c| c.limits.comment_burst = 100.0).await;
    let room = "mod-yellow";
    let (host, mut host_e) = member(&s, room, "host", Role::Host, "cn", "zh").await;
    let (viewer, mut viewer_e) = member(&s, room, "ae1", Role::Viewer, "ae", "en").await;
    wait_for_audience(&s, room, "ae").await;

    // Held: the sender learns it and the rule; staff see the text, viewers only an id.
    let outcome = viewer
        .send_comment(room, "Any LOTTERY tickets?")
        .await
        .expect("held");
    let CommentOutcome::Held(pending) = outcome else {
        panic!("expected held, got {outcome:?}")
    };
    assert_eq!(pending.rule.rule, "gambling");
    assert_eq!(pending.rule.severity, Severity::Yellow);
    let (id, full, text) = wait_for(&mut host_e, held_event).await;
    assert_eq!(id, pending.id);
    assert!(full);
    assert_eq!(text.as_deref(), Some("Any LOTTERY tickets?"));
    let (id, full, _) = wait_for(&mut viewer_e, held_event).await;
    assert_eq!(id, pending.id);
    assert!(!full, "viewers never see a held comment's text");

    // The queue is room state: a staff member joining now gets it; a viewer does not.
    let (mod2, _m2e) = member(&s, room, "mod2", Role::Moderator, "cn", "zh").await;
    let queue = mod2.moderation_queue(room).await.expect("queue");
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].id, pending.id);
    let (late_viewer, _lve) = Client::connect(s.options(room, "late", Role::Viewer));
    assert!(late_viewer
        .join(room)
        .await
        .expect("join")
        .state
        .held
        .is_empty());
    let err = viewer
        .approve_comment(room, pending.id.clone())
        .await
        .expect_err("viewers cannot approve");
    assert_eq!(err.code(), Some(1003));

    // Approve: published once, with the queue id; a second approval is refused.
    let position = host
        .approve_comment(room, pending.id.clone())
        .await
        .expect("approve");
    let (held_id, offset) = wait_for(&mut viewer_e, |e| match e {
        Event::Room {
            position,
            event:
                RoomEvent::Comment {
                    held_id,
                    text,
                    user,
                    ..
                },
            ..
        } => {
            assert_eq!(text, "Any LOTTERY tickets?");
            assert_eq!(user.id.as_str(), "ae1", "published as its author's comment");
            Some((held_id.clone(), position.offset))
        }
        _ => None,
    })
    .await;
    assert_eq!(held_id.as_deref(), Some(pending.id.as_str()));
    assert_eq!(offset, position.offset);
    let err = mod2
        .approve_comment(room, pending.id.clone())
        .await
        .expect_err("already approved");
    assert_eq!(err.code(), Some(1020));
    assert!(mod2.moderation_queue(room).await.expect("queue").is_empty());

    // Reject: a rejection event, and the comment is never published.
    let CommentOutcome::Held(second) = viewer
        .send_comment(room, "c.a.s.i.n.o bonus?")
        .await
        .expect("held")
    else {
        panic!("expected held")
    };
    host.reject_comment(room, second.id.clone())
        .await
        .expect("reject");
    let rejected = wait_for(&mut viewer_e, |e| match e {
        Event::Room {
            event: RoomEvent::CommentRejected { id, .. },
            ..
        } => Some(id.clone()),
        Event::Room {
            event: RoomEvent::Comment { text, .. },
            ..
        } if text.contains("bonus") => panic!("a rejected comment was published"),
        _ => None,
    })
    .await;
    assert_eq!(rejected, second.id);
    let err = host
        .approve_comment(room, second.id.clone())
        .await
        .expect_err("rejected cannot be approved");
    assert_eq!(err.code(), Some(1020));

    // Staff's own yellow words pass; red ones do not.
    host.comment(room, "lottery draw at 9pm!")
        .await
        .expect("staff yellow passes");
    let err = host
        .announce(room, "cold beer for everyone")
        .await
        .expect_err("red for all");
    assert_eq!(blocked_rule(&err).1, "alcohol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_moderator_queue_is_bounded() {
    let s = TestServer::start(|c| {
        c.limits.comment_burst = 100.0;
        c.moderation.max_held_per_room = 3;
    })
    .await;
    let room = "mod-full";
    let (_host, _he) = member(&s, room, "host", Role::Host, "cn", "zh").await;
    let (viewer, _ve) = member(&s, room, "ae1", Role::Viewer, "ae", "en").await;
    wait_for_audience(&s, room, "ae").await;
    for i in 0..3 {
        let out = viewer
            .send_comment(room, format!("casino {i}"))
            .await
            .expect("held");
        assert!(matches!(out, CommentOutcome::Held(_)));
    }
    let err = viewer
        .send_comment(room, "casino 4")
        .await
        .expect_err("queue full");
    let ClientError::Server(body) = err else {
        panic!("expected a server error")
    };
    assert_eq!(body.code, 1505);
    assert!(body.retry_after_ms.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_red_in_a_market_cannot_be_enabled_there() {
    let s = TestServer::start(|c| {
        for code in ["ae", "sa"] {
            c.commerce.markets.insert(
                code.into(),
                ferry::config::MarketConfig {
                    currency: "AED".into(),
                    minor_digits: 2,
                    per_cny: 0.51,
                    tax_percent: 5.0,
                    shipping_minor: 2500,
                },
            );
        }
    })
    .await;
    let host = s.token("*", "merchant", Role::Host);
    let put = |id: &str, body: String| {
        let host = host.clone();
        let addr = s.addr();
        let path = format!("/api/products/{id}");
        async move { http(addr, "PUT", &path, Some(&host), Some(&body)).await }
    };
    // Pork jerky, enabled for the UAE: refused, naming market and rule.
    let (status, body) = put(
        "jerky",
        r#"{"title":"五香豬肉乾","price_cny":3900,"markets":{"ae":true,"us":true}}"#.into(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["code"], "moderation_blocked");
    assert_eq!(v["error"]["rule"]["market"], "ae");
    assert_eq!(v["error"]["rule"]["rule"], "pork");
    // Hidden in the description, in English: still refused.
    let (status, _) = put(
        "gift",
        r#"{"title":"Gift box","description":"Comes with a bottle of W I N E","price_cny":3900,"markets":{"sa":true}}"#.into(),
    )
    .await;
    assert_eq!(status, 422);
    // The same jerky for the US only: fine.
    let (status, body) = put(
        "jerky",
        r#"{"title":"五香豬肉乾","price_cny":3900,"markets":{"ae":false,"us":true}}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Yellow in a listing: saved, with a warning naming the rule.
    let (status, body) = put(
        "swim",
        r#"{"title":"比基尼泳衣","price_cny":9900,"markets":{"ae":true}}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["warnings"][0]["rule"], "modesty");
}
