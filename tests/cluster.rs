//! A Ferry cluster: several `ferry serve` processes on one Redis. Delivery across nodes,
//! presence across nodes, a node killed with SIGKILL, Redis restarted, Redis unreachable;
//! video across nodes: a node killed with a live publisher ends the stream when its live
//! lease lapses, and WHEP viewers are redirected to the node hosting the publisher.

mod common;

use common::redis::RedisServer;
use common::*;
use ferry::protocol::{ErrorCode, Role, RoomEvent};
use ferry_client::{Client, ClientError, ClientOptions, Event, Events};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// A `ferry serve` process on the Redis engine.
struct Node {
    addr: SocketAddr,
    child: Child,
}

impl Node {
    async fn start(name: &str, redis_url: &str) -> Node {
        Node::start_with(name, redis_url, |_| Vec::new()).await
    }

    /// A node with extra `--set` overrides, made from its own address (`http://host:port`).
    async fn start_with(
        name: &str,
        redis_url: &str,
        sets: impl FnOnce(&str) -> Vec<String>,
    ) -> Node {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let extra: Vec<String> = sets(&format!("http://{addr}"))
            .into_iter()
            .flat_map(|kv| ["--set".to_owned(), kv])
            .collect();
        let child = Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string(), "--node-id", name])
            .args(["--set", "engine.kind=redis"])
            .args(["--set", "rooms.aggregate_interval=200ms"])
            .args(["--set", "rooms.viewer_count_interval=200ms"])
            .args(["--set", "redis.presence_ttl=2s"])
            .args(["--set", "limits.comment_rate=1000"])
            .args(["--set", "limits.comment_burst=1000"])
            .args(["--set", "limits.command_rate=1000"])
            .args(["--set", "limits.command_burst=1000"])
            .args(["--set", "server.drain_timeout=1s"])
            .args(["--set", "sfu.udp_listen=127.0.0.1:0"])
            .args(&extra)
            .env("FERRY_REDIS__URLS", redis_url)
            .env("FERRY_COMMERCE__JOURNAL_PATH", "")
            .env(
                "RUST_LOG",
                std::env::var("TEST_FERRY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var("TEST_FERRY_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn ferry");
        let node = Node { addr, child };
        tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    drop(s);
                    let (st, _) = http(addr, "GET", "/readyz", None, None).await;
                    if st == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("node ready");
        node
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn http_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(urls: Vec<String>, room: &str, user: &str, role: Role) -> (Client, Events) {
    let cfg = test_config();
    let mut o = ClientOptions::new(urls[0].clone(), token_for(&cfg, room, user, role));
    o.urls = urls;
    o.min_backoff = Duration::from_millis(50);
    o.max_backoff = Duration::from_millis(300);
    Client::connect(o)
}

/// Publish, retrying temporary errors as a client should (Redis may be restarting).
async fn publish_retrying(c: &Client, room: &str, text: String) {
    tokio::time::timeout(WAIT * 3, async {
        loop {
            match c.comment(room, text.clone()).await {
                Ok(_) => return,
                Err(ClientError::Server(e))
                    if ErrorCode::from_code(e.code).is_some_and(|c| c.is_temporary()) => {}
                Err(ClientError::Disconnected | ClientError::Timeout) => {}
                Err(e) => panic!("comment failed: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("comment eventually accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_reach_every_node_once_in_order_and_counts_add_up() {
    let redis = RedisServer::start(false);
    let nodes = [
        Node::start("a", &redis.url()).await,
        Node::start("b", &redis.url()).await,
        Node::start("c", &redis.url()).await,
    ];
    let (host, mut host_events) = client(vec![nodes[0].url()], "r", "host", Role::Host);
    host.join("r").await.expect("host creates the room");
    tokio::spawn(async move { while host_events.recv().await.is_some() {} });
    let mut viewers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for v in 0..4 {
            let (c, e) = client(vec![node.url()], "r", &format!("v{i}-{v}"), Role::Viewer);
            c.join("r").await.expect("join");
            viewers.push((c, e));
        }
    }
    // One chatter per node, 20 comments each, interleaved.
    let mut chatters = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (c, mut e) = client(vec![node.url()], "r", &format!("chatter{i}"), Role::Viewer);
        c.join("r").await.expect("join");
        tokio::spawn(async move { while e.recv().await.is_some() {} });
        chatters.push(c);
    }
    let sends = chatters.iter().enumerate().map(|(i, c)| async move {
        for n in 0..20 {
            c.comment("r", format!("{i}:{n}")).await.expect("comment");
        }
    });
    futures_util::future::join_all(sends).await;
    for (c, e) in viewers.iter_mut() {
        let got = collect_comments(e, "r", 60).await;
        for i in 0..3 {
            let mine: Vec<&String> = got
                .iter()
                .filter(|t| t.starts_with(&format!("{i}:")))
                .collect();
            let want: Vec<String> = (0..20).map(|n| format!("{i}:{n}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>(), "per-sender order");
        }
        assert_eq!(c.stats().duplicates.load(Relaxed), 0);
        assert_eq!(c.stats().gaps.load(Relaxed), 0);
    }
    // 12 viewers + 3 chatters + 1 host, on three nodes, counted once each.
    let host_token = token_for(&test_config(), "r", "host", Role::Host);
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, body) = http(
                nodes[1].addr,
                "GET",
                "/api/rooms/r",
                Some(&host_token),
                None,
            )
            .await;
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            if v["viewers"] == 16 && v["unique_viewers"] == 16 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("viewer counts add up across nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_on_another_with_no_gap() {
    let redis = RedisServer::start(false);
    let mut a = Node::start("a", &redis.url()).await;
    let mut b = Node::start("b", &redis.url()).await;
    let (host, mut he) = client(vec![a.url()], "r", "host", Role::Host);
    host.join("r").await.expect("join");
    tokio::spawn(async move { while he.recv().await.is_some() {} });
    let mut viewers = Vec::new();
    for v in 0..5 {
        let (c, e) = client(vec![b.url(), a.url()], "r", &format!("v{v}"), Role::Viewer);
        c.join("r").await.expect("join");
        viewers.push((c, e));
    }
    let total = 120;
    let publisher = {
        let host = host.clone();
        tokio::spawn(async move {
            for i in 0..total {
                publish_retrying(&host, "r", format!("c{i}")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    b.kill();
    publisher.await.expect("publisher");
    let want: Vec<String> = (0..total).map(|i| format!("c{i}")).collect();
    for (c, e) in viewers.iter_mut() {
        assert_eq!(collect_comments(e, "r", total).await, want);
        assert_eq!(c.stats().duplicates.load(Relaxed), 0);
        assert_eq!(c.stats().gaps.load(Relaxed), 0);
        assert_eq!(c.stats().unrecovered.load(Relaxed), 0);
        assert!(c.stats().connects.load(Relaxed) >= 2, "moved to node a");
    }
    a.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_loses_nothing_silently() {
    let mut redis = RedisServer::start(true);
    let a = Node::start("a", &redis.url()).await;
    let b = Node::start("b", &redis.url()).await;
    let (host, mut he) = client(vec![a.url()], "r", "host", Role::Host);
    host.join("r").await.expect("join");
    tokio::spawn(async move { while he.recv().await.is_some() {} });
    let mut viewers = Vec::new();
    for v in 0..3 {
        let (c, e) = client(vec![b.url()], "r", &format!("v{v}"), Role::Viewer);
        c.join("r").await.expect("join");
        viewers.push((c, e));
    }
    let total = 100;
    let publisher = {
        let host = host.clone();
        tokio::spawn(async move {
            for i in 0..total {
                publish_retrying(&host, "r", format!("c{i}")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.shutdown();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    publisher.await.expect("publisher");
    let want: Vec<String> = (0..total).map(|i| format!("c{i}")).collect();
    for (c, e) in viewers.iter_mut() {
        // AOF with appendfsync always and a clean restart lose nothing: every comment, in
        // order, once — and the viewers never had to be told "cannot recover".
        assert_eq!(collect_comments(e, "r", total).await, want);
        assert_eq!(c.stats().gaps.load(Relaxed), 0);
        assert_eq!(c.stats().duplicates.load(Relaxed), 0);
        assert_eq!(c.stats().unrecovered.load(Relaxed), 0);
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_for_ten_seconds() {
    let redis = RedisServer::start(false);
    let a = Node::start("a", &redis.url()).await;
    let (host, mut he) = client(vec![a.url()], "r", "host", Role::Host);
    host.join("r").await.expect("join");
    tokio::spawn(async move { while he.recv().await.is_some() {} });
    let (viewer, mut ve) = client(vec![a.url()], "r", "v", Role::Viewer);
    viewer.join("r").await.expect("join");
    host.comment("r", "before").await.expect("comment");
    collect_comments(&mut ve, "r", 1).await;

    redis.pause();
    let started = std::time::Instant::now();
    // Readiness fails; commands that need Redis say "unavailable, retry"; nobody is dropped.
    // Wait for the room engine's own verdict (the sale store may notice first): from then on
    // its commands fail fast instead of waiting on the dead connection.
    tokio::time::timeout(WAIT, async {
        loop {
            let (st, body) = http(a.addr, "GET", "/readyz", None, None).await;
            if st == 503 && body.contains("engine unavailable") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("readyz fails while Redis is unreachable");
    let err = host.comment("r", "during").await.expect_err("unavailable");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable.code()), "{err:?}");
    let (st, _) = http(a.addr, "GET", "/healthz", None, None).await;
    assert_eq!(st, 200, "the node itself is alive");
    let remaining = Duration::from_secs(10).saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    redis.resume();

    tokio::time::timeout(WAIT, async {
        loop {
            let (st, _) = http(a.addr, "GET", "/readyz", None, None).await;
            if st == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("ready again");
    publish_retrying(&host, "r", "after".into()).await;
    let got = collect_comments(&mut ve, "r", 1).await;
    assert_eq!(got, vec!["after".to_string()]);
    // The viewer never lost its connection.
    assert_eq!(viewer.stats().connects.load(Relaxed), 1);
    while let Some(e) = ve.try_recv() {
        assert!(
            !matches!(e, Event::Disconnected { .. }),
            "viewer was disconnected"
        );
        assert!(
            !matches!(e, Event::Room { event: RoomEvent::Comment { ref text, .. }, .. } if text == "during")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_is_never_a_silent_gap() {
    // No AOF: a restart loses every room. Clients must be told, not left in a dead room.
    let mut redis = RedisServer::start(false);
    let a = Node::start("a", &redis.url()).await;
    let (host, mut he) = client(vec![a.url()], "r", "host", Role::Host);
    host.join("r").await.expect("join");
    let (viewer, mut ve) = client(vec![a.url()], "r", "v", Role::Viewer);
    viewer.join("r").await.expect("join");
    for i in 0..5 {
        host.comment("r", format!("old {i}"))
            .await
            .expect("comment");
    }
    collect_comments(&mut ve, "r", 5).await;
    redis.restart();
    // The viewer is moved out of the vanished room and rejoins: it is told the room is gone,
    // or (if the host's client recreated it first) that its history cannot be recovered.
    let told = wait_for(&mut ve, |e| match e {
        Event::Removed { code, .. } if *code == ErrorCode::RoomNotFound.code() => Some("gone"),
        Event::Joined { reply, .. } if reply.recovered == Some(false) => Some("unrecovered"),
        Event::Joined { reply, .. } if reply.recovered == Some(true) => Some("WRONG"),
        _ => None,
    })
    .await;
    assert_ne!(told, "WRONG");
    // The host's client rejoins and recreates the room on a new epoch; new comments flow.
    let rejoined = wait_for(&mut he, |e| match e {
        Event::Joined { reply, .. } => Some(reply.clone()),
        _ => None,
    })
    .await;
    assert_ne!(
        rejoined.recovered,
        Some(true),
        "history is gone: never 'recovered'"
    );
    publish_retrying(&host, "r", "new".into()).await;
    assert_eq!(viewer.stats().gaps.load(Relaxed), 0);
}

/// A flash sale on a cluster: the host launches it on node A, buyers on A and B race for the
/// stock held in Redis, viewers on B see the sale, and either node reports the same orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_across_nodes_sells_exactly_the_stock() {
    use ferry::protocol::commerce::SaleSpec;
    use ferry_client::new_idempotency_key;
    let redis = RedisServer::start(false);
    let a = Node::start("a", &redis.url()).await;
    let b = Node::start("b", &redis.url()).await;
    let cfg = test_config();
    let host_token = token_for(&cfg, "shop", "host", Role::Host);
    let product = r#"{"title":"藤编篮","price_cny":8900,"markets":{"us":true}}"#;
    let (status, text) = http(
        a.addr,
        "PUT",
        "/api/products/basket",
        Some(&host_token),
        Some(product),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (host, _he) = client(vec![a.url()], "shop", "host", Role::Host);
    host.join("shop").await.expect("host joins");
    let (watcher, mut watcher_events) = client(vec![b.url()], "shop", "watcher", Role::Viewer);
    watcher.join("shop").await.expect("watcher joins on b");
    let sale = host
        .start_sale(
            "shop",
            SaleSpec {
                product: "basket".into(),
                quantity: 30,
                price_cny: 5900,
                per_buyer_limit: 1,
                starts_at: None,
                starts_in_secs: None,
                duration_secs: 300,
                hold_secs: 300,
            },
        )
        .await
        .expect("sale");
    let scheduled = wait_for(&mut watcher_events, |e| match e {
        Event::Room {
            event: RoomEvent::SaleScheduled { sale },
            ..
        } => Some(sale.id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(scheduled, sale.id);
    let mut tasks = Vec::new();
    for i in 0..80 {
        let url = if i % 2 == 0 { a.url() } else { b.url() };
        let sale_id = sale.id.clone();
        tasks.push(tokio::spawn(async move {
            let (c, _e) = client(vec![url], "shop", &format!("buyer{i}"), Role::Viewer);
            c.join("shop").await.expect("join");
            let out = c.buy("shop", sale_id, 1, new_idempotency_key()).await;
            c.close();
            out.map(|r| r.reservation.id.0)
                .map_err(|e| e.code().unwrap_or(0))
        }));
    }
    let mut reserved = std::collections::HashSet::new();
    let mut sold_out = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(id) => {
                reserved.insert(id);
            }
            Err(code) if code == ErrorCode::SoldOut.code() => sold_out += 1,
            Err(code) => panic!("unexpected refusal {code}"),
        }
    }
    assert_eq!((reserved.len(), sold_out), (30, 50));
    let admin = token_for(&cfg, "*", "ops", Role::Admin);
    for node in [&a, &b] {
        let (status, text) = http(
            node.addr,
            "GET",
            &format!("/api/sales/{}/orders/all", sale.id),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            (v["remaining"].as_u64(), v["reserved"].as_u64()),
            (Some(0), Some(30))
        );
        let ids: std::collections::HashSet<String> = v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["reservation"]["id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(ids, reserved);
    }
}

/// A synthetic SDK publisher live in `room` on `node`.
async fn go_live(node: &Node, room: &str) -> ferry_client::media::Publisher {
    let token = token_for(&test_config(), room, "host", Role::Host);
    let opts = ferry_client::media::PublishOptions {
        video_bitrate_bps: 200_000,
        ..ferry_client::media::PublishOptions::default()
    };
    let mut p = ferry_client::media::publish(&node.http_base(), room, &token, opts)
        .await
        .expect("publish");
    p.wait_connected(WAIT).await.expect("publisher connects");
    p
}

/// Wait until a WebSocket join on `node` says the room is live (the publisher's node has
/// published `stream_started`).
async fn wait_live(node: &Node, room: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            let (c, _e) = client(vec![node.url()], room, "probe", Role::Viewer);
            if let Ok(j) = c.join(room).await {
                if j.state.live {
                    return;
                }
            }
            c.close();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the room goes live");
}

/// SIGKILL of the node hosting a live publisher: its live lease lapses, another node
/// publishes `stream_ended` (reason `timeout`) once, and late joiners see the room not live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_publisher_node_ends_the_stream_when_its_live_lease_lapses() {
    let redis = RedisServer::start(false);
    let lease = |_: &str| vec!["sfu.live_lease=1s".to_owned()];
    let mut a = Node::start_with("a", &redis.url(), lease).await;
    let b = Node::start_with("b", &redis.url(), lease).await;
    let c = Node::start_with("c", &redis.url(), lease).await;
    let publisher = go_live(&a, "crash").await;
    wait_live(&b, "crash").await;
    let (viewer, mut events) = client(vec![b.url()], "crash", "viewer", Role::Viewer);
    assert!(viewer.join("crash").await.expect("join").state.live);
    // Longer than the lease: renewals keep it live while node a is up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (steady, _e) = client(vec![c.url()], "crash", "steady", Role::Viewer);
    assert!(
        steady.join("crash").await.expect("join").state.live,
        "a renewed lease keeps the room live"
    );
    a.kill();
    let killed = std::time::Instant::now();
    assert_eq!(
        wait_stream_ended(&mut events).await,
        ferry::protocol::StreamEndReason::Timeout
    );
    let took = killed.elapsed();
    // Lapses after at most one lease (1 s) past the last renewal, found within half a lease.
    assert!(
        took < Duration::from_secs(5),
        "stream ended {took:?} after the kill"
    );
    let (late, _e) = client(vec![c.url()], "crash", "late", Role::Viewer);
    assert!(!late.join("crash").await.expect("join").state.live);
    // Nodes b and c both sweep: the lapse is published once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut more = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), events.recv()).await {
        if matches!(
            e,
            Event::Room {
                event: RoomEvent::StreamEnded { .. },
                ..
            }
        ) {
            more += 1;
        }
    }
    assert_eq!(more, 0, "stream_ended published once");
    drop(publisher);
}

/// A WHEP request at a node without the room's publisher is answered 307 with the hosting
/// node's WHEP URL; the SDK follows it and plays from that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_at_another_node_is_redirected_to_the_hosting_node() {
    let redis = RedisServer::start(false);
    let public = |me: &str| vec![format!("server.public_url={me}")];
    let a = Node::start_with("a", &redis.url(), public).await;
    let b = Node::start_with("b", &redis.url(), public).await;
    let publisher = go_live(&a, "moved").await;
    wait_live(&b, "moved").await;
    let viewer = token_for(&test_config(), "moved", "watcher", Role::Viewer);
    // The raw answer: 307 to node a's endpoint, whatever the offer.
    let offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n";
    let auth = format!("Bearer {viewer}");
    let r = ferry_client::media::http::request(
        &b.http_base(),
        "POST",
        "/whep/moved",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/sdp"),
        ],
        offer.as_bytes(),
    )
    .await
    .expect("post");
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("{}/whep/moved", a.http_base()).as_str())
    );
    // Node a answers its own viewers itself.
    let mut v = ferry_client::media::subscribe(
        &b.http_base(),
        "moved",
        &viewer,
        ferry_client::media::SubscribeOptions::default(),
    )
    .await
    .expect("subscribe through b");
    assert_eq!(v.info.base, a.http_base(), "the session lives on node a");
    assert!(v.info.location.starts_with("/whep/moved/"));
    v.wait_connected(WAIT).await.expect("viewer connects");
    tokio::time::timeout(WAIT, async {
        while v.stats().video_frames < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("frames from node a");
    let (_, metrics) = http(b.addr, "GET", "/metrics", None, None).await;
    assert!(
        metric_value(&metrics, "ferry_sfu_whep_redirects_total{") >= 2.0,
        "{metrics}"
    );
    assert_eq!(v.close().await.expect("delete on node a"), 200);
    // When the stream ends, nobody is redirected (the viewer waits on the node it asked).
    assert_eq!(publisher.close().await.expect("delete"), 200);
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let r = ferry_client::media::http::request(
                &b.http_base(),
                "POST",
                "/whep/moved",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/sdp"),
                ],
                offer.as_bytes(),
            )
            .await
            .expect("post");
            if r.status != 307 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("redirects stop once the stream ended");
    assert_ne!(r.status, 307);
}
