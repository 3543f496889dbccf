//! The service around the rooms: slow consumers, REST API, health, metrics.

mod common;

use common::*;
use ferry::protocol::{ErrorCode, Role, RoomEvent};
use ferry_client::Event;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_while_others_continue_and_memory_stays_bounded() {
    let queue = 16;
    let s = TestServer::start(|c| {
        c.websocket.send_queue_frames = queue;
        c.limits.max_comment_chars = 1000;
        c.limits.max_frame_bytes = 4096;
        c.history.size = 10_000;
        // The host publishes in bulk here; the command limit is not under test.
        c.limits.command_rate = 1e6;
        c.limits.command_burst = 1e6;
    })
    .await;
    let (host, mut he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    // The host receives its own comments too: keep reading them.
    tokio::spawn(async move { while he.recv().await.is_some() {} });
    let (viewer, mut ve) = s.client("r", "healthy", Role::Viewer);
    viewer.join("r").await.expect("join");

    // A client that joins and then never reads, with a tiny receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(s.addr()).await.expect("connect");
    let mut req = s.url().into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", s.token("r", "slow", Role::Viewer))
            .parse()
            .expect("header"),
    );
    let (mut slow, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    use futures_util::SinkExt;
    slow.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"id":1,"cmd":"join","room":"r"}"#,
    ))
    .await
    .expect("join");

    let n = 6000usize;
    let collector = tokio::spawn(async move {
        let texts = collect_comments(&mut ve, "r", n).await;
        (texts, ve)
    });
    let text = "藤编篮 rattan basket ".repeat(40);
    let mut max_queued = 0.0f64;
    for i in 0..n {
        host.comment("r", format!("{i} {text}"))
            .await
            .expect("comment");
        if i % 500 == 0 {
            max_queued = max_queued.max(s.metric("ferry_send_queue_frames"));
        }
    }
    let (texts, _ve) = collector.await.expect("collector");
    assert_eq!(texts.len(), n);
    assert!(texts
        .iter()
        .enumerate()
        .all(|(i, t)| t.starts_with(&format!("{i} "))));
    // The slow client was dropped with 3001; the healthy viewer never was.
    tokio::time::timeout(WAIT, async {
        while s.metric("ferry_drops_total{node=\"test-node\",reason=\"slow_consumer\"") < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("slow consumer dropped");
    assert_eq!(
        viewer
            .stats()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Queued frames never exceeded the per-connection bound times connections.
    assert!(max_queued <= (3 * queue) as f64, "queued {max_queued}");
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_creates_describes_and_closes_rooms() {
    let s = TestServer::start(|c| c.rooms.auto_create = ferry::config::AutoCreate::Never).await;
    let host = s.token("shop-*", "merchant", Role::Host);
    let viewer_token = s.token("shop-1", "v", Role::Viewer);

    let (st, body) = http(
        s.addr(),
        "POST",
        "/api/rooms",
        Some(&host),
        Some(r#"{"room":"shop-1","title":"Rattan baskets"}"#),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["title"], "Rattan baskets");
    let (st, _) = http(
        s.addr(),
        "POST",
        "/api/rooms",
        Some(&host),
        Some(r#"{"room":"shop-1"}"#),
    )
    .await;
    assert_eq!(st, 200);

    for (token, body, want) in [
        (None, r#"{"room":"shop-2"}"#, 401),
        (Some(viewer_token.as_str()), r#"{"room":"shop-1"}"#, 403),
        (Some(host.as_str()), r#"{"room":"other"}"#, 403),
        (Some(host.as_str()), r#"{"room":"bad room"}"#, 400),
        (Some(host.as_str()), r#"{"room":"#, 400),
        (
            Some(host.as_str()),
            r#"{"room":"shop-3","color":"red"}"#,
            400,
        ),
    ] {
        let (st, resp) = http(s.addr(), "POST", "/api/rooms", token, Some(body)).await;
        assert_eq!(st, want, "{body} -> {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).expect("error body is JSON");
        assert!(v["error"]["code"].is_string(), "{resp}");
    }

    // Viewers can join the REST-created room; with auto_create = never, not others.
    let mut viewers = Vec::new();
    for i in 0..3 {
        let (c, e) = s.client("shop-1", &format!("v{i}"), Role::Viewer);
        c.join("shop-1").await.expect("join");
        viewers.push((c, e));
    }
    let (h, _he) = s.client("shop-9", "merchant", Role::Host);
    assert_eq!(
        h.join("shop-9").await.expect_err("no room").code(),
        Some(ErrorCode::RoomNotFound.code())
    );

    let count = tokio::time::timeout(WAIT, async {
        loop {
            let (st, body) = http(s.addr(), "GET", "/api/rooms/shop-1", Some(&host), None).await;
            assert_eq!(st, 200);
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            if v["viewers"] == 3 {
                return v["viewers"].as_u64();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("viewer count reaches 3");
    assert_eq!(count, Some(3));
    let (st, _) = http(s.addr(), "GET", "/api/rooms/shop-404", Some(&host), None).await;
    assert_eq!(st, 404);

    let (st, body) = http(s.addr(), "DELETE", "/api/rooms/shop-1", Some(&host), None).await;
    assert_eq!(st, 200, "{body}");
    for (_, e) in viewers.iter_mut() {
        wait_for(e, |ev| {
            matches!(
                ev,
                Event::Room {
                    event: RoomEvent::RoomClosed {},
                    ..
                }
            )
            .then_some(())
        })
        .await;
        wait_for(e, |ev| matches!(ev, Event::Removed { .. }).then_some(())).await;
    }
    let (late, _le) = s.client("shop-1", "late", Role::Viewer);
    assert_eq!(
        late.join("shop-1").await.expect_err("closed").code(),
        Some(ErrorCode::RoomClosed.code())
    );
    // Closing twice is fine.
    let (st, _) = http(s.addr(), "DELETE", "/api/rooms/shop-1", Some(&host), None).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let s = TestServer::start(|_| {}).await;
    let (st, body) = http(s.addr(), "GET", "/healthz", None, None).await;
    assert_eq!((st, body.trim()), (200, "ok"));
    let (st, _) = http(s.addr(), "GET", "/readyz", None, None).await;
    assert_eq!(st, 200);
    let (c, _e) = s.client("r", "h", Role::Host);
    c.join("r").await.expect("join");
    let (st, body) = http(s.addr(), "GET", "/metrics", None, None).await;
    assert_eq!(st, 200);
    for name in [
        "ferry_connections{",
        "ferry_rooms{",
        "ferry_frames_in_total{",
        "ferry_events_delivered_total{",
        "ferry_send_queue_frames{",
        "ferry_drops_total{",
        "ferry_disconnects_total{",
    ] {
        assert!(body.contains(name), "missing {name}");
    }
    assert_eq!(metric_value(&body, "ferry_connections{"), 1.0);
    let (st, body) = http(s.addr(), "GET", "/nope", None, None).await;
    assert_eq!(st, 404);
    assert!(body.contains("not_found"));
}
