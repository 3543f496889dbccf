//! Flash sales over real sockets on the embedded engine: catalog and pinning, countdown and
//! start, buying over the WebSocket and HTTP with idempotency keys, the buy burst that must
//! not oversell, holds that lapse, the signed payment webhook, and a restart mid-sale.

mod common;

use common::*;
use ferry::commerce_api::sign_webhook;
use ferry::protocol::commerce::{ReservationState, SaleSpec, SaleStatus};
use ferry::protocol::{ErrorCode, Role, RoomEvent};
use ferry_client::{new_idempotency_key, Client, ClientError, Event, Events};
use serde_json::{json, Value};
use std::time::Duration;

const ROOM: &str = "shop";

fn admin_token(s: &TestServer) -> String {
    s.token("*", "ops", Role::Admin)
}

/// PUT a rattan basket (¥89, sold in us and hk, not in ae).
async fn put_basket(s: &TestServer) {
    let body = json!({
        "title": "藤编篮",
        "description": "手工藤编收纳篮",
        "image_url": "https://img.example/basket.jpg",
        "price_cny": 8900,
        "stock": 1000,
        "markets": {"us": true, "hk": true, "mo": false}
    })
    .to_string();
    let (status, text) = http(
        s.addr(),
        "PUT",
        "/api/products/basket",
        Some(&s.token(ROOM, "host", Role::Host)),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

async fn host_in_room(s: &TestServer) -> (Client, Events) {
    let (host, events) = s.client(ROOM, "host", Role::Host);
    host.join(ROOM)
        .await
        .expect("host joins (creates the room)");
    (host, events)
}

fn spec(quantity: u64, limit: u32, starts_in_secs: Option<u64>, hold_secs: u64) -> SaleSpec {
    SaleSpec {
        product: "basket".into(),
        quantity,
        price_cny: 5900,
        per_buyer_limit: limit,
        starts_at: None,
        starts_in_secs,
        duration_secs: 300,
        hold_secs,
    }
}

fn code_of(e: &ClientError) -> u16 {
    e.code().unwrap_or(0)
}

/// A viewer whose token says `market`, joined to the room.
async fn viewer_in_market(s: &TestServer, user: &str, market: &str) -> Client {
    let mut o = s.options(ROOM, user, Role::Viewer);
    o.token = token_in_market(&s.config, ROOM, user, Role::Viewer, market);
    let (c, _events) = Client::connect(o);
    c.join(ROOM).await.expect("join");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_products_and_sales_reach_viewers_in_their_currency() {
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _host_events) = host_in_room(&s).await;
    let (viewer, mut events) = s.client(ROOM, "v1", Role::Viewer);
    viewer.join(ROOM).await.expect("join");
    // Viewers cannot pin.
    let err = viewer
        .pin_product(ROOM, "basket")
        .await
        .expect_err("viewer");
    assert_eq!(code_of(&err), ErrorCode::Forbidden.code());
    host.pin_product(ROOM, "basket").await.expect("pin");
    let pinned = wait_for(&mut events, |e| match e {
        Event::Room {
            event: RoomEvent::ProductPinned { pinned },
            ..
        } => Some(pinned.clone()),
        _ => None,
    })
    .await;
    let us = pinned.product.offer("us").expect("sold in us");
    // ¥89.00 × 0.1387 = $12.34
    assert_eq!((us.price.currency.as_str(), us.price.minor), ("USD", 1234));
    assert_eq!(us.shipping_estimate.minor, 1500);
    assert!(
        pinned.product.offer("mo").is_none(),
        "not available in Macau"
    );
    assert_eq!(pinned.product.fx_date, "2026-11-20");

    // A sale counting down from 1 s: early buys are refused, then everyone may buy.
    let sale = host
        .start_sale(ROOM, spec(5, 2, Some(1), 60))
        .await
        .expect("start sale");
    assert_eq!(sale.status, SaleStatus::Scheduled);
    assert_eq!(sale.markets["us"].price.minor, 818);
    let early = viewer
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect_err("too early");
    assert_eq!(code_of(&early), ErrorCode::SaleNotStarted.code());
    match &early {
        ClientError::Server(body) => {
            let wait = body.retry_after_ms.expect("retry hint");
            assert!(wait > 0 && wait <= 1_000, "{wait}");
        }
        other => panic!("{other:?}"),
    }
    // The countdown every SDK shows: the same instant on the server's clock.
    let until = viewer.ms_until(sale.starts_at);
    assert!(until > 0.0 && until <= 1_100.0, "{until}");
    let started = wait_for(&mut events, |e| match e {
        Event::Room {
            event: RoomEvent::SaleStarted { stock },
            ..
        } => Some(stock.clone()),
        _ => None,
    })
    .await;
    assert_eq!(started.status, SaleStatus::Open);
    let key = new_idempotency_key();
    let first = viewer
        .buy(ROOM, sale.id.clone(), 2, key.clone())
        .await
        .expect("buy");
    assert!(!first.replayed);
    let r = &first.reservation;
    assert_eq!(r.state, ReservationState::Reserved);
    assert_eq!(r.amount_cny, 11_800);
    assert_eq!(
        (r.amount_display.currency.as_str(), r.amount_display.minor),
        ("USD", 1636)
    );
    // A double click: same key, same reservation, no second hold.
    let again = viewer
        .buy(ROOM, sale.id.clone(), 2, key.clone())
        .await
        .expect("replay");
    assert!(again.replayed);
    assert_eq!(again.reservation.id, r.id);
    let over = viewer
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect_err("limit");
    assert_eq!(code_of(&over), ErrorCode::LimitReached.code());
    // Stock updates reach the room (throttled), and social proof names only the market.
    let stock = wait_for(&mut events, |e| match e {
        Event::Room {
            event: RoomEvent::SaleStock { stock },
            ..
        } if stock.remaining == 3 => Some(stock.clone()),
        _ => None,
    })
    .await;
    assert_eq!((stock.quantity, &stock.sale), (5, &sale.id));
    let proof = wait_for(&mut events, |e| match e {
        Event::Room {
            event: RoomEvent::Purchase { notice },
            ..
        } => Some(notice.clone()),
        _ => None,
    })
    .await;
    assert_eq!(proof.market, "us");
    // A late joiner sees the pin and the sale in the join reply.
    let (late, _late_events) = s.client(ROOM, "late", Role::Viewer);
    let joined = late.join(ROOM).await.expect("late join");
    let state = joined.state;
    assert_eq!(
        state.product.expect("pinned product").product.id.as_str(),
        "basket"
    );
    let current = state.sale.expect("current sale");
    assert_eq!(current.id, sale.id);
    assert_eq!(current.remaining, 3);
    // The buyer cancels: the units go back.
    let cancelled = viewer
        .cancel_reservation(ROOM, r.id.clone())
        .await
        .expect("cancel");
    assert_eq!(cancelled.state, ReservationState::Released);
    let twice = viewer
        .cancel_reservation(ROOM, r.id.clone())
        .await
        .expect_err("already released");
    assert_eq!(code_of(&twice), ErrorCode::ReservationFinal.code());
    // Ending the sale stops buys.
    let ended = host.end_sale(ROOM, sale.id.clone()).await.expect("end");
    assert_eq!(ended.status, SaleStatus::Ended);
    let late_buy = late
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect_err("ended");
    assert_eq!(code_of(&late_buy), ErrorCode::SaleEnded.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markets_the_merchant_switched_off_cannot_buy() {
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _e) = host_in_room(&s).await;
    let sale = host
        .start_sale(ROOM, spec(10, 1, None, 60))
        .await
        .expect("sale");
    let mo = viewer_in_market(&s, "macau", "mo").await;
    let err = mo
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect_err("not in market");
    assert_eq!(code_of(&err), ErrorCode::NotInMarket.code());
    // The merchant switches Hong Kong off mid-sale: Hong Kong buyers are refused from then.
    let hk = viewer_in_market(&s, "hk1", "hk").await;
    hk.buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect("hk may buy");
    let body = json!({"title": "藤编篮", "price_cny": 8900, "markets": {"us": true, "hk": false}})
        .to_string();
    let (status, text) = http(
        s.addr(),
        "PUT",
        "/api/products/basket",
        Some(&s.token(ROOM, "host", Role::Host)),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let hk2 = viewer_in_market(&s, "hk2", "hk").await;
    let err = hk2
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect_err("switched off");
    assert_eq!(code_of(&err), ErrorCode::NotInMarket.code());
    // An unknown market in a product is refused with its name.
    let bad = json!({"title": "x", "price_cny": 1, "markets": {"zz": true}}).to_string();
    let (status, text) = http(
        s.addr(),
        "PUT",
        "/api/products/odd",
        Some(&s.token(ROOM, "host", Role::Host)),
        Some(&bad),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("zz"), "{text}");
}

/// The issue's burst: 2,000 SDK clients make 10,000 buy attempts for 100 units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_buys_from_two_thousand_clients_reserve_exactly_the_stock() {
    let s = TestServer::start(|c| {
        c.limits.join_rate = 100_000.0;
        c.limits.join_burst = 100_000.0;
        common::sales::quiet_room(c);
    })
    .await;
    common::sales::ten_thousand_buys(s.addr(), &s.config, ROOM).await;
}

/// Payment webhooks sent around the deadline race the server's expiry sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_webhooks_race_the_expiry_sweep() {
    let s = TestServer::start(|_| {}).await;
    common::sales::webhooks_race_the_sweep(&s, ROOM).await;
}

async fn webhook(s: &TestServer, body: &Value, secret: &str) -> (u16, String) {
    let text = body.to_string();
    let sig = sign_webhook(secret, ferry::unix_ms() / 1000, text.as_bytes());
    http_with(
        s.addr(),
        "POST",
        "/api/payments/webhook",
        None,
        &[("Ferry-Signature", &sig)],
        Some(&text),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_confirm_once_and_lapsed_holds_return_to_stock() {
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _e) = host_in_room(&s).await;
    let sale = host
        .start_sale(ROOM, spec(1, 1, None, 1))
        .await
        .expect("sale");
    let (a, _ae) = s.client(ROOM, "a", Role::Viewer);
    a.join(ROOM).await.expect("join");
    let (b, _be) = s.client(ROOM, "b", Role::Viewer);
    b.join(ROOM).await.expect("join");
    let held = a
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect("a reserves the only unit")
        .reservation;
    let err = b
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect_err("sold out");
    assert_eq!(code_of(&err), ErrorCode::SoldOut.code());
    // a does not pay within the 1 s hold: the unit goes back on sale by itself.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let late = json!({"id": "evt_late", "type": "payment.succeeded",
        "reservation": held.id, "payment_ref": "pi_late", "amount_cny": 5900});
    let (status, text) = webhook(&s, &late, WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["status"], "released");
    assert_eq!(v["refund_required"], true);
    let got = b
        .buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
        .await
        .expect("b gets the returned unit")
        .reservation;
    // b pays in time: confirmed, and a replayed webhook gets the same answer.
    let paid = json!({"id": "evt_1", "type": "payment.succeeded",
        "reservation": got.id, "payment_ref": "pi_1", "amount_cny": 5900});
    let (status, first) = webhook(&s, &paid, WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{first}");
    let (status, replay) = webhook(&s, &paid, WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(first, replay);
    let v: Value = serde_json::from_str(&first).expect("json");
    assert_eq!(v["status"], "confirmed");
    assert_eq!(v["refund_required"], false);
    // A second, different payment for the same order: flagged for a refund.
    let double = json!({"id": "evt_9", "type": "payment.succeeded",
        "reservation": got.id, "payment_ref": "pi_other", "amount_cny": 5900});
    let (status, text) = webhook(&s, &double, WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (&v["status"], &v["refund_required"], &v["duplicate_payment"]),
        (&json!("confirmed"), &json!(true), &json!(true))
    );
    // Expiry after confirmation changes nothing.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, text) = http(
        s.addr(),
        "GET",
        &format!("/api/reservations/{}", got.id),
        Some(&s.token(ROOM, "b", Role::Viewer)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"confirmed\""), "{text}");
    // Forged, stale and malformed webhooks.
    let (status, _) = webhook(&s, &paid, "wrong-secret").await;
    assert_eq!(status, 401);
    let text = paid.to_string();
    let stale = sign_webhook(
        WEBHOOK_SECRET,
        ferry::unix_ms() / 1000 - 3_600,
        text.as_bytes(),
    );
    let (status, _) = http_with(
        s.addr(),
        "POST",
        "/api/payments/webhook",
        None,
        &[("Ferry-Signature", &stale)],
        Some(&text),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(s.addr(), "POST", "/api/payments/webhook", None, Some(&text)).await;
    assert_eq!(status, 401, "unsigned");
    let (status, body) = webhook(&s, &json!({"id": 1}), WEBHOOK_SECRET).await;
    assert_eq!(status, 400, "{body}");
    let wrong_amount = json!({"id": "evt_2", "type": "payment.succeeded",
        "reservation": got.id, "amount_cny": 1});
    let (status, body) = webhook(&s, &wrong_amount, WEBHOOK_SECRET).await;
    assert_eq!(status, 409, "{body}");
    // The order stream records reserved, released (expired), reserved, confirmed.
    let (_, text) = http(
        s.addr(),
        "GET",
        &format!("/api/sales/{}/orders?group=erp&count=10", sale.id),
        Some(&admin_token(&s)),
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&text).expect("json");
    let events = v["events"].as_array().expect("events");
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event"]["type"].as_str().unwrap_or("?").to_owned(),
                e["event"]["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("reserved".into(), "".into()),
            ("released".into(), "expired".into()),
            ("reserved".into(), "".into()),
            ("confirmed".into(), "".into()),
        ]
    );
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    let (status, text) = http(
        s.addr(),
        "POST",
        &format!("/api/sales/{}/orders/ack", sale.id),
        Some(&admin_token(&s)),
        Some(&json!({"group": "erp", "ids": ids}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"acked\":4"), "{text}");
    // Operators see all of it on /metrics.
    let (_, metrics) = http(s.addr(), "GET", "/metrics", None, None).await;
    let m = |name: &str| metric_value(&metrics, name);
    assert_eq!(
        m("ferry_buys_total{node=\"test-node\",outcome=\"reserved\"}"),
        2.0
    );
    assert_eq!(
        m("ferry_buys_total{node=\"test-node\",outcome=\"sold_out\"}"),
        1.0
    );
    assert_eq!(m("ferry_buy_seconds_count"), 3.0);
    assert_eq!(
        m("ferry_reservations_ended_total{node=\"test-node\",how=\"expired\"}"),
        1.0
    );
    assert_eq!(
        m("ferry_reservations_ended_total{node=\"test-node\",how=\"confirmed\"}"),
        1.0
    );
    assert_eq!(
        m("ferry_payment_webhooks_total{node=\"test-node\",result=\"confirmed\"}"),
        3.0
    );
    assert_eq!(
        m("ferry_payment_webhooks_total{node=\"test-node\",result=\"bad_signature\"}"),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buying_over_http_is_idempotent_and_bad_requests_get_clear_errors() {
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _e) = host_in_room(&s).await;
    let sale = host
        .start_sale(ROOM, spec(10, 3, None, 60))
        .await
        .expect("sale");
    let token = s.token(ROOM, "web", Role::Viewer);
    let path = format!("/api/sales/{}/buy", sale.id);
    let buy = |key: &'static str, body: &'static str| {
        let (path, token) = (path.clone(), token.clone());
        let addr = s.addr();
        async move {
            http_with(
                addr,
                "POST",
                &path,
                Some(&token),
                &[("Idempotency-Key", key)],
                Some(body),
            )
            .await
        }
    };
    let (status, first) = buy("k1", r#"{"quantity":2}"#).await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = buy("k1", r#"{"quantity":2}"#).await;
    assert_eq!(status, 200, "{again}");
    let a: Value = serde_json::from_str(&first).expect("json");
    let b: Value = serde_json::from_str(&again).expect("json");
    assert_eq!(a["reservation"], b["reservation"]);
    assert_eq!(b["replayed"], true);
    let (status, body) = buy("k1", r#"{"quantity":1}"#).await;
    assert_eq!(status, 422, "same key, different request: {body}");
    assert!(body.contains("idempotency_conflict"), "{body}");
    let (status, body) = http(s.addr(), "POST", &path, Some(&token), Some("{}")).await;
    assert_eq!(status, 400, "missing key: {body}");
    let (status, body) = buy("k2", "{not json").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = buy("k3", r#"{"quantity":0}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http_with(
        s.addr(),
        "POST",
        "/api/sales/nope/buy",
        Some(&token),
        &[("Idempotency-Key", "k")],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(s.addr(), "POST", &path, None, Some("{}")).await;
    assert_eq!(status, 401);
    // Malformed sale specs are refused with the reason.
    let (status, body) = http(
        s.addr(),
        "POST",
        &format!("/api/rooms/{ROOM}/sales"),
        Some(&s.token(ROOM, "host", Role::Host)),
        Some(r#"{"product":"basket","quantity":0,"price_cny":1,"duration_secs":60}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("quantity"), "{body}");
    let (status, body) = http(
        s.addr(),
        "POST",
        &format!("/api/rooms/{ROOM}/sales"),
        Some(&s.token(ROOM, "v", Role::Viewer)),
        Some(r#"{"product":"basket","quantity":1,"price_cny":1,"duration_secs":60}"#),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Another host cannot overwrite this merchant's product; an admin can.
    let other = json!({"title": "cheap copy", "price_cny": 1}).to_string();
    let (status, body) = http(
        s.addr(),
        "PUT",
        "/api/products/basket",
        Some(&s.token(ROOM, "rival", Role::Host)),
        Some(&other),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(
        s.addr(),
        "PUT",
        "/api/products/basket",
        Some(&admin_token(&s)),
        Some(&json!({"title": "藤编篮", "price_cny": 8900, "markets": {"us": true}}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"merchant\":\"host\""), "{body}");
    // The room's sales, for its staff.
    let (status, body) = http(
        s.addr(),
        "GET",
        &format!("/api/rooms/{ROOM}/sales"),
        Some(&s.token(ROOM, "host", Role::Host)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(sale.id.as_str()), "{body}");
    // Order reads without a group get a JSON error naming what is expected.
    let (status, body) = http(
        s.addr(),
        "GET",
        &format!("/api/sales/{}/orders", sale.id),
        Some(&admin_token(&s)),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("bad_request") && body.contains("group"),
        "{body}"
    );
    // A sale is invisible to tokens of other rooms.
    let (status, _) = http(
        s.addr(),
        "GET",
        &format!("/api/sales/{}", sale.id),
        Some(&s.token("elsewhere", "x", Role::Viewer)),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_sale_loses_no_reservation_and_no_confirmed_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("commerce.journal");
    let j = journal.clone();
    let s = TestServer::start(move |c| c.commerce.journal_path = j).await;
    put_basket(&s).await;
    let (host, _e) = host_in_room(&s).await;
    let sale = host
        .start_sale(ROOM, spec(10, 5, None, 300))
        .await
        .expect("sale");
    let (v, _ve) = s.client(ROOM, "v", Role::Viewer);
    v.join(ROOM).await.expect("join");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            v.buy(ROOM, sale.id.clone(), 1, new_idempotency_key())
                .await
                .expect("buy")
                .reservation
                .id,
        );
    }
    let paid =
        json!({"id": "e", "type": "payment.succeeded", "reservation": ids[0], "payment_ref": "p"});
    let (status, text) = webhook(&s, &paid, WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{text}");
    v.close();
    host.close();
    // Stop the server without a drain, as a crash would, and start a new one on the journal.
    drop(s);
    let j = journal.clone();
    let s = TestServer::start(move |c| c.commerce.journal_path = j).await;
    let (status, text) = http(
        s.addr(),
        "GET",
        &format!("/api/sales/{}/orders/all", sale.id),
        Some(&admin_token(&s)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let audit: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (&audit["remaining"], &audit["reserved"], &audit["confirmed"]),
        (&json!(7), &json!(2), &json!(1))
    );
    assert_eq!(audit["events"].as_array().map(Vec::len), Some(4));
    let (status, text) = http(
        s.addr(),
        "GET",
        &format!("/api/reservations/{}", ids[0]),
        Some(&s.token(ROOM, "v", Role::Viewer)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"confirmed\""), "{text}");
}

/// The real binary, killed with SIGKILL mid-sale while buyers keep buying: every answered
/// reservation and every confirmed order is there after the restart, and conservation holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sale_loses_no_answered_reservation() {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_ferry");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("commerce.journal");
    let addr = common::sales::free_addr();
    common::sales::sigkill_mid_sale(addr, || {
        Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--set", "limits.command_rate=10000"])
            .args(["--set", "limits.command_burst=10000"])
            .env("FERRY_COMMERCE__JOURNAL_PATH", &journal)
            .env("FERRY_COMMERCE__WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ferry")
    })
    .await;
}

/// A room's sales are listed newest first, a page at a time, from the room's own index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_sales_are_listed_newest_first_in_pages() {
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _e) = host_in_room(&s).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            host.start_sale(ROOM, spec(5, 1, None, 60))
                .await
                .expect("sale")
                .id
                .0,
        );
    }
    // Another room's sale is not listed.
    let (other, _oe) = s.client("other", "host", Role::Host);
    other.join("other").await.expect("join");
    other
        .start_sale("other", spec(5, 1, None, 60))
        .await
        .expect("sale");
    let token = s.token(ROOM, "mod", Role::Moderator);
    let mut before: Option<u64> = None;
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        let path = match before {
            Some(b) => format!("/api/rooms/{ROOM}/sales?limit=2&before={b}"),
            None => format!("/api/rooms/{ROOM}/sales?limit=2"),
        };
        let (status, text) = http(s.addr(), "GET", &path, Some(&token), None).await;
        assert_eq!(status, 200, "{text}");
        let page: Value = serde_json::from_str(&text).expect("json");
        let sales = page["sales"].as_array().expect("sales");
        assert!(sales.len() <= 2);
        assert!(sales
            .iter()
            .all(|v| v["status"] == "open" && v["room"] == ROOM));
        listed.extend(
            sales
                .iter()
                .map(|v| v["id"].as_str().expect("id").to_owned()),
        );
        pages += 1;
        match page["next"].as_u64() {
            Some(n) => before = Some(n),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(listed, ids, "newest first, each once");
    assert_eq!(pages, 3);
    for bad in ["limit=0", "limit=101", "before=x", "page=2"] {
        let (status, text) = http(
            s.addr(),
            "GET",
            &format!("/api/rooms/{ROOM}/sales?{bad}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains("bad_request"), "{text}");
    }
}

/// A host may pin and sell only its own merchant's products; an admin may pin and sell any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_pin_and_sell_only_their_own_products() {
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await; // merchant "host"
    let (host, _he) = host_in_room(&s).await;
    let (rival, _re) = s.client(ROOM, "rival", Role::Host);
    rival.join(ROOM).await.expect("join");
    let err = rival
        .pin_product(ROOM, "basket")
        .await
        .expect_err("another merchant's product");
    assert_eq!(code_of(&err), ErrorCode::Forbidden.code());
    assert!(err.to_string().contains("another merchant"), "{err}");
    let err = rival
        .start_sale(ROOM, spec(5, 1, None, 60))
        .await
        .expect_err("another merchant's product");
    assert_eq!(code_of(&err), ErrorCode::Forbidden.code());
    let rival_token = s.token(ROOM, "rival", Role::Host);
    let (status, body) = http(
        s.addr(),
        "POST",
        &format!("/api/rooms/{ROOM}/product"),
        Some(&rival_token),
        Some(r#"{"product":"basket"}"#),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another merchant"), "{body}");
    let (status, body) = http(
        s.addr(),
        "POST",
        &format!("/api/rooms/{ROOM}/sales"),
        Some(&rival_token),
        Some(r#"{"product":"basket","quantity":1,"price_cny":1,"duration_secs":60}"#),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // The merchant itself, and an admin, may.
    host.pin_product(ROOM, "basket").await.expect("own product");
    let (admin, _ae) = s.client("*", "ops", Role::Admin);
    admin.join(ROOM).await.expect("join");
    admin
        .start_sale(ROOM, spec(5, 1, None, 60))
        .await
        .expect("admins sell any product");
    let (status, body) = http(
        s.addr(),
        "POST",
        &format!("/api/rooms/{ROOM}/product"),
        Some(&admin_token(&s)),
        Some(r#"{"product":"basket"}"#),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    // Nothing the rival tried reached the room: one sale, pinned twice.
    let (status, text) = http(
        s.addr(),
        "GET",
        &format!("/api/rooms/{ROOM}/sales"),
        Some(&rival_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let page: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(page["sales"].as_array().map(Vec::len), Some(1));
}

/// A buy is judged at its arrival: an HTTP request whose head arrived before the sale's
/// start is refused as too early even though its body (and its handling) came after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_buy_that_arrived_before_the_start_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _e) = host_in_room(&s).await;
    let sale = host
        .start_sale(ROOM, spec(10, 2, Some(2), 60))
        .await
        .expect("sale");
    let token = s.token(ROOM, "early", Role::Viewer);
    let until = |t: u64| Duration::from_millis(t.saturating_sub(ferry::unix_ms()));
    // The server runs in this process: its clock is ours.
    tokio::time::sleep(until(sale.starts_at - 400)).await;
    let mut conn = tokio::net::TcpStream::connect(s.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /api/sales/{}/buy HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: k1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        sale.id
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    let sent_head = ferry::unix_ms();
    assert!(
        sent_head + 100 < sale.starts_at,
        "the machine is too slow for this test's timing"
    );
    tokio::time::sleep(until(sale.starts_at + 400)).await;
    conn.write_all(b"{}").await.expect("body");
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.expect("response");
    assert!(raw.starts_with("HTTP/1.1 409"), "{raw}");
    assert!(raw.contains("sale_not_started"), "{raw}");
    // The same request sent whole now is admitted (the sale is open), with the same key.
    let (status, text) = http_with(
        s.addr(),
        "POST",
        &format!("/api/sales/{}/buy", sale.id),
        Some(&token),
        &[("Idempotency-Key", "k1")],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 201, "{text}");
}

/// What viewers see of a sale's stock: a sell-out, units coming back, a second sell-out, the
/// end (once, and nothing after it), each applied with the SDK's `SaleView::apply_stock`; the
/// SDK's HTTP reads give the same sale, the buyer's reservation states and the room's sales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_sell_outs_units_coming_back_and_the_end() {
    use ferry::protocol::commerce::SaleView;
    let s = TestServer::start(|_| {}).await;
    put_basket(&s).await;
    let (host, _he) = host_in_room(&s).await;
    let (viewer, mut events) = s.client(ROOM, "watcher", Role::Viewer);
    viewer.join(ROOM).await.expect("join");
    let sale = host
        .start_sale(ROOM, spec(2, 2, None, 60))
        .await
        .expect("sale");
    let (buyer, _be) = s.client(ROOM, "b", Role::Viewer);
    buyer.join(ROOM).await.expect("join");
    // The viewer's own copy of the sale, kept current from the stock events.
    let mut held: SaleView = wait_for(&mut events, |e| match e {
        Event::Room {
            event: RoomEvent::SaleScheduled { sale },
            ..
        } => Some((**sale).clone()),
        _ => None,
    })
    .await;
    let mut seen: Vec<(String, u64, SaleStatus, u64)> = Vec::new();
    // Wait for the next stock event satisfying `pred`, applying every one on the way.
    macro_rules! until {
        ($pred:expr) => {{
            let pred = $pred;
            wait_for(&mut events, |e| match e {
                Event::Room { event, .. } => {
                    let stock = event.sale_stock()?.clone();
                    let kind = serde_json::to_value(event).ok()?["type"]
                        .as_str()?
                        .to_owned();
                    held.apply_stock(&stock);
                    seen.push((kind.clone(), stock.remaining, stock.status, stock.version));
                    pred(kind.as_str(), &stock).then_some(stock)
                }
                _ => None,
            })
            .await
        }};
    }
    until!(|k: &str, _: &_| k == "sale_started");
    let first = buyer
        .buy(ROOM, sale.id.clone(), 2, new_idempotency_key())
        .await
        .expect("buy both")
        .reservation;
    let sold_out = until!(|k: &str, _: &_| k == "sale_sold_out");
    assert_eq!(
        (sold_out.remaining, sold_out.status),
        (0, SaleStatus::SoldOut)
    );
    // The buyer gives them back: the viewer is told units are on sale again.
    buyer
        .cancel_reservation(ROOM, first.id.clone())
        .await
        .expect("cancel");
    let back = until!(
        |k: &str, s: &ferry::protocol::commerce::SaleStock| k == "sale_stock" && s.remaining == 2
    );
    assert_eq!(back.status, SaleStatus::Open);
    assert!(back.version > sold_out.version);
    // Sold out again: announced again.
    let second = buyer
        .buy(ROOM, sale.id.clone(), 2, new_idempotency_key())
        .await
        .expect("buy again")
        .reservation;
    let again = until!(|k: &str, _: &_| k == "sale_sold_out");
    assert!(again.version > back.version);
    host.end_sale(ROOM, sale.id.clone()).await.expect("end");
    let ended = until!(|k: &str, _: &_| k == "sale_ended");
    assert_eq!(ended.status, SaleStatus::Ended);
    // The holds lapse or get paid after the end: no stock event follows `sale_ended`.
    let paid = json!({"id": "e1", "type": "payment.succeeded", "reservation": second.id, "payment_ref": "p1"});
    let (status, text) = webhook(&s, &paid, WEBHOOK_SECRET).await;
    assert_eq!(status, 200, "{text}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    while let Some(e) = events.try_recv() {
        if let Event::Room { event, .. } = &e {
            assert!(event.sale_stock().is_none(), "after the end: {event:?}");
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, ..)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "sale_sold_out").count(),
        2,
        "{seen:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "sale_ended").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "sale_started").count(), 1);
    // The viewer's copy is the sale's last announced state.
    assert_eq!(
        (held.remaining, held.status, held.version),
        (0, SaleStatus::Ended, ended.version)
    );
    // The SDK's HTTP reads: the sale, the buyer's reservations, the room's sales.
    let http = buyer.http().expect("http client");
    let looked = http.sale(&sale.id).await.expect("sale");
    assert_eq!(
        (looked.sale.id.clone(), looked.sale.status),
        (sale.id.clone(), SaleStatus::Ended)
    );
    assert!(looked.server_time >= sale.starts_at);
    assert_eq!(
        http.reservation(&first.id).await.expect("first").state,
        ReservationState::Released
    );
    assert_eq!(
        http.reservation(&second.id).await.expect("second").state,
        ReservationState::Confirmed
    );
    let other = viewer.http().expect("http client");
    match other.reservation(&second.id).await {
        Err(ClientError::Http { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (404, "not_found"))
        }
        other => panic!("another buyer's reservation: {other:?}"),
    }
    match other.room_sales(&ROOM.into(), None, 10).await {
        Err(ClientError::Http { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "forbidden"))
        }
        other => panic!("a viewer listing sales: {other:?}"),
    }
    let page = host
        .http()
        .expect("http client")
        .room_sales(&ROOM.into(), None, 10)
        .await
        .expect("room sales");
    assert_eq!((page.sales.len(), page.next), (1, None));
    assert_eq!(page.sales[0].id, sale.id);
}
