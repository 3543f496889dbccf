//! Bad input over real sockets: each case gets its documented error reply or close code,
//! never a panic, and other clients in the room are unaffected.

mod common;

use common::*;
use ferry::auth::{mint_claims, unix_now, Claims};
use ferry::protocol::{CloseCode, ErrorCode, Role, RoomEvent};
use ferry_client::Event;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Raw = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(s: &TestServer, token: Option<&str>) -> Raw {
    let url = match token {
        Some(t) => format!("{}?token={t}", s.url()),
        None => s.url(),
    };
    connect_async(url).await.expect("upgrade").0
}

/// Read until the server closes; the close code.
async fn close_code(ws: &mut Raw) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("server closes in time")
}

/// Send a text frame and return the next reply's JSON (skipping pushes).
async fn ask(ws: &mut Raw, text: &str) -> serde_json::Value {
    ws.send(Message::text(text)).await.expect("send");
    tokio::time::timeout(WAIT, async {
        loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("connection ended")
            };
            for line in t.as_str().lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("server sends JSON");
                if v.get("id").is_some() {
                    return v;
                }
            }
        }
    })
    .await
    .expect("reply in time")
}

fn error_code(v: &serde_json::Value) -> u64 {
    v["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an error: {v}"))
}

/// A viewer who must keep receiving comments whatever others do.
async fn bystander(
    s: &TestServer,
) -> (
    ferry_client::Client,
    ferry_client::Events,
    ferry_client::Client,
) {
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let (viewer, events) = s.client("r", "bystander", Role::Viewer);
    viewer.join("r").await.expect("join");
    (viewer, events, host)
}

async fn bystander_still_served(
    host: &ferry_client::Client,
    events: &mut ferry_client::Events,
    text: &str,
) {
    host.comment("r", text).await.expect("comment");
    wait_for(events, |e| match e {
        Event::Room {
            event: RoomEvent::Comment { text: t, .. },
            ..
        } if t == text => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_terminal_codes() {
    let s = TestServer::start(|_| {}).await;
    let (_v, mut events, host) = bystander(&s).await;

    let mut ws = raw(&s, None).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::InvalidToken.code())
    );

    let mut ws = raw(&s, Some("not.a.jwt")).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::InvalidToken.code())
    );

    let mut forged_cfg = s.config.clone();
    forged_cfg.auth.hs256_secret = "attacker-secret".into();
    let forged = token_for(&forged_cfg, "r", "mallory", Role::Admin);
    let mut ws = raw(&s, Some(&forged)).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::InvalidToken.code())
    );

    let expired = mint_claims(
        s.config.auth.hs256_secret.as_bytes(),
        &Claims {
            sub: "late".into(),
            name: None,
            role: Role::Viewer,
            room: "r".into(),
            lang: None,
            market: None,
            exp: unix_now() - 3600,
            iat: None,
            iss: None,
            aud: None,
        },
    )
    .expect("mint");
    let mut ws = raw(&s, Some(&expired)).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::TokenExpired.code())
    );

    // Header tokens work as well as query tokens (the SDK uses the header).
    let (c, _e) = s.client("r", "header-user", Role::Viewer);
    c.join("r").await.expect("header token accepted");

    bystander_still_served(&host, &mut events, "still here").await;
    assert!(s.metric("ferry_disconnects_total{node=\"test-node\",code=\"3500\"") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_get_error_replies() {
    let s = TestServer::start(|_| {}).await;
    let (_v, mut events, host) = bystander(&s).await;
    let token = s.token("r", "fuzzy", Role::Viewer);
    let mut ws = raw(&s, Some(&token)).await;

    let v = ask(&mut ws, "{this is not json").await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::BadRequest.code()));
    assert_eq!(v["id"], 0);

    let v = ask(&mut ws, r#"{"id":7,"cmd":"teleport"}"#).await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::UnknownCommand.code()));
    assert_eq!(v["id"], 7);

    let v = ask(&mut ws, r#"{"id":8,"cmd":"comment","room":"r"}"#).await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::BadRequest.code()));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("text"),
        "{v}"
    );

    let v = ask(
        &mut ws,
        r#"{"id":9,"cmd":"comment","room":"r","text":"hi"}"#,
    )
    .await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::NotJoined.code()));

    let v = ask(&mut ws, r#"{"id":10,"cmd":"join","room":"r"}"#).await;
    assert_eq!(v["ok"]["room"], "r");
    let v = ask(
        &mut ws,
        r#"{"id":11,"cmd":"comment","room":"r","text":"bad\u0000byte"}"#,
    )
    .await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::InvalidComment.code()));
    let v = ask(
        &mut ws,
        r#"{"id":12,"cmd":"like","room":"r","count":100000}"#,
    )
    .await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::BadRequest.code()));
    let v = ask(&mut ws, r#"[1,2,3]"#).await;
    assert_eq!(error_code(&v), u64::from(ErrorCode::BadRequest.code()));

    bystander_still_served(&host, &mut events, "unaffected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_the_connection() {
    let s = TestServer::start(|c| c.limits.max_frame_bytes = 1024).await;
    let (_v, mut events, host) = bystander(&s).await;
    let token = s.token("r", "rude", Role::Viewer);

    // Oversize frame.
    let mut ws = raw(&s, Some(&token)).await;
    let big = format!(
        r#"{{"id":1,"cmd":"comment","room":"r","text":"{}"}}"#,
        "x".repeat(4096)
    );
    let _ = ws.send(Message::text(big)).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::MessageTooBig.code())
    );

    // Binary frame where text is expected.
    let mut ws = raw(&s, Some(&token)).await;
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::BadRequest.code())
    );

    // Invalid UTF-8 in a text frame, written as raw bytes (masked with a zero key).
    let mut ws = raw(&s, Some(&token)).await;
    let frame = [0x81u8, 0x84, 0, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc];
    match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(&frame).await.expect("write raw frame"),
        _ => unreachable!("plain TCP in tests"),
    }
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::BadRequest.code())
    );

    // Join of a room the token does not allow.
    let mut ws = raw(&s, Some(&token)).await;
    ws.send(Message::text(r#"{"id":1,"cmd":"join","room":"elsewhere"}"#))
        .await
        .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Forbidden.code()));

    // A flood of commands: rate limited, then closed.
    let mut ws = raw(&s, Some(&token)).await;
    for i in 0..200 {
        if ws
            .send(Message::text(format!(r#"{{"id":{i},"cmd":"ping"}}"#)))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Flood.code()));

    // Repeated garbage: closed as a bad client.
    let mut ws = raw(&s, Some(&token)).await;
    for _ in 0..30 {
        if ws.send(Message::text("garbage")).await.is_err() {
            break;
        }
    }
    assert_eq!(
        close_code(&mut ws).await,
        Some(CloseCode::BadRequest.code())
    );

    bystander_still_served(&host, &mut events, "nothing happened").await;
    assert!(s.metric("ferry_disconnects_total{node=\"test-node\",code=\"3504\"") >= 1.0);
    assert!(s.metric("ferry_disconnects_total{node=\"test-node\",code=\"3505\"") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_full_refuses_with_a_reconnect_code() {
    let s = TestServer::start(|c| c.limits.max_connections = 2).await;
    let (a, _ae) = s.client("r", "a", Role::Host);
    a.join("r").await.expect("join");
    let (b, _be) = s.client("r", "b", Role::Viewer);
    b.join("r").await.expect("join");
    let token = s.token("r", "c", Role::Viewer);
    let mut ws = raw(&s, Some(&token)).await;
    let code = close_code(&mut ws).await;
    assert_eq!(code, Some(CloseCode::NodeFull.code()));
    assert!(ferry::protocol::close_code_reconnects(
        CloseCode::NodeFull.code()
    ));
    // The two admitted clients still work.
    a.comment("r", "ok").await.expect("comment");
}

/// Malformed commerce commands (ill-typed or missing fields, a bad key, a huge quantity,
/// unknown fields in a sale spec, a buy in a room not joined, a viewer's host command) get
/// their documented error codes; the connection stays usable, and other clients in the room
/// are served throughout (a comment and a buy of theirs go through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commerce_commands_get_their_error_codes() {
    use ferry::protocol::commerce::SaleSpec;
    let s = TestServer::start(|_| {}).await;
    let (bystander, mut events, host) = bystander(&s).await;
    let product = r#"{"title":"藤编篮","price_cny":8900,"markets":{"us":true}}"#;
    let (status, text) = http(
        s.addr(),
        "PUT",
        "/api/products/basket",
        Some(&s.token("r", "host", Role::Host)),
        Some(product),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let sale = host
        .start_sale(
            "r",
            SaleSpec {
                product: "basket".into(),
                quantity: 10,
                price_cny: 5900,
                per_buyer_limit: 2,
                starts_at: None,
                starts_in_secs: None,
                duration_secs: 300,
                hold_secs: 60,
            },
        )
        .await
        .expect("sale");
    let id = sale.id.as_str();
    let code = |c: ErrorCode| u64::from(c.code());

    let mut viewer = raw(&s, Some(&s.token("r", "fuzzy", Role::Viewer))).await;
    let buy = format!(r#"{{"id":1,"cmd":"buy","room":"r","sale":"{id}","key":"k1"}}"#);
    let v = ask(&mut viewer, &buy).await;
    assert_eq!(error_code(&v), code(ErrorCode::NotJoined), "{v}");
    let v = ask(&mut viewer, r#"{"id":2,"cmd":"join","room":"r"}"#).await;
    assert_eq!(v["ok"]["room"], "r", "{v}");
    let long_key = "k".repeat(129);
    let cases: Vec<(String, ErrorCode, &str)> = vec![
        // (frame, code, what the message must say: the field's name, or for an ill-typed
        // value the type expected)
        (format!(r#"{{"id":3,"cmd":"buy","room":"r","sale":"{id}"}}"#), ErrorCode::BadRequest, "key"),
        (format!(r#"{{"id":4,"cmd":"buy","room":"r","sale":"{id}","key":""}}"#), ErrorCode::BadRequest, "key"),
        (format!(r#"{{"id":5,"cmd":"buy","room":"r","sale":"{id}","key":"{long_key}"}}"#), ErrorCode::BadRequest, "key"),
        (format!(r#"{{"id":6,"cmd":"buy","room":"r","sale":"{id}","key":"k","quantity":"two"}}"#), ErrorCode::BadRequest, "expected u32"),
        (format!(r#"{{"id":7,"cmd":"buy","room":"r","sale":"{id}","key":"k","quantity":1001}}"#), ErrorCode::BadRequest, "quantity"),
        (format!(r#"{{"id":8,"cmd":"buy","room":"r","sale":"{id}","key":"k","quantity":0}}"#), ErrorCode::BadRequest, "quantity"),
        (format!(r#"{{"id":9,"cmd":"buy","room":"r","sale":"{id}","key":"k","quantity":99999999999999}}"#), ErrorCode::BadRequest, "expected u32"),
        (r#"{"id":10,"cmd":"buy","room":"r","sale":42,"key":"k"}"#.to_owned(), ErrorCode::BadRequest, "expected a string"),
        (r#"{"id":11,"cmd":"buy","room":"r","sale":"s0000000000000000","key":"k"}"#.to_owned(), ErrorCode::NotFound, "sale"),
        (r#"{"id":12,"cmd":"cancel_reservation","room":"r","reservation":"nope"}"#.to_owned(), ErrorCode::NotFound, "reservation"),
        (r#"{"id":13,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":1,"price_cny":1,"duration_secs":60}}"#.to_owned(), ErrorCode::Forbidden, "host"),
    ];
    for (frame, expected, word) in &cases {
        let v = ask(&mut viewer, frame).await;
        assert_eq!(error_code(&v), code(*expected), "{frame}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(word), "{frame}: {v}");
        assert!(v["error"]["retry_after_ms"].is_null(), "permanent: {v}");
    }
    // The host's malformed sale specs and pins.
    let mut host_ws = raw(&s, Some(&s.token("r", "host", Role::Host))).await;
    let v = ask(&mut host_ws, r#"{"id":1,"cmd":"join","room":"r"}"#).await;
    assert_eq!(v["ok"]["room"], "r", "{v}");
    let host_cases: Vec<(&str, ErrorCode, &str)> = vec![
        (
            r#"{"id":2,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":1,"price_cny":1,"duration_secs":60,"discount":50}}"#,
            ErrorCode::BadRequest,
            "discount",
        ),
        (
            r#"{"id":3,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":1,"price_cny":1}}"#,
            ErrorCode::BadRequest,
            "duration_secs",
        ),
        (
            r#"{"id":4,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":-1,"price_cny":1,"duration_secs":60}}"#,
            ErrorCode::BadRequest,
            "expected u64",
        ),
        (
            r#"{"id":5,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":0,"price_cny":1,"duration_secs":60}}"#,
            ErrorCode::BadRequest,
            "quantity",
        ),
        (
            r#"{"id":6,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":99999999999,"price_cny":1,"duration_secs":60}}"#,
            ErrorCode::BadRequest,
            "quantity",
        ),
        (
            r#"{"id":7,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":1,"price_cny":1,"duration_secs":60,"hold_secs":0}}"#,
            ErrorCode::BadRequest,
            "hold_secs",
        ),
        (
            r#"{"id":8,"cmd":"start_sale","room":"r","sale":{"product":"basket","quantity":1,"price_cny":1,"duration_secs":60,"starts_at":1,"starts_in_secs":1}}"#,
            ErrorCode::BadRequest,
            "starts",
        ),
        (
            r#"{"id":9,"cmd":"start_sale","room":"r","sale":"basket"}"#,
            ErrorCode::BadRequest,
            "invalid type",
        ),
        (
            r#"{"id":10,"cmd":"start_sale","room":"r","sale":{"product":"nothing","quantity":1,"price_cny":1,"duration_secs":60}}"#,
            ErrorCode::NotFound,
            "product",
        ),
        (
            r#"{"id":11,"cmd":"pin_product","room":"r"}"#,
            ErrorCode::BadRequest,
            "product",
        ),
        (
            r#"{"id":12,"cmd":"end_sale","room":"r","sale":"s0000000000000000"}"#,
            ErrorCode::NotFound,
            "sale",
        ),
    ];
    for (frame, expected, word) in &host_cases {
        let v = ask(&mut host_ws, frame).await;
        assert_eq!(error_code(&v), code(*expected), "{frame}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(word), "{frame}: {v}");
    }
    // Every refusal left the sale alone, and both connections still work.
    let v = ask(&mut viewer, &buy.replace("\"id\":1", "\"id\":20")).await;
    assert_eq!(v["ok"]["reservation"]["state"], "reserved", "{v}");
    bystander
        .buy("r", sale.id.clone(), 1, ferry_client::new_idempotency_key())
        .await
        .expect("a bystander buys");
    bystander_still_served(&host, &mut events, "still selling").await;
    let (status, text) = http(
        s.addr(),
        "GET",
        &format!("/api/sales/{id}/orders/all"),
        Some(&s.token("*", "ops", Role::Admin)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let audit: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (audit["reserved"].as_u64(), audit["remaining"].as_u64()),
        (Some(2), Some(8))
    );
}
