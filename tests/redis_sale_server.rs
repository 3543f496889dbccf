//! Flash sales on the Redis engine through real servers: the buy path's store steps, the
//! 10,000-buy burst, the real binary killed mid-sale (Redis with AOF, `appendfsync always`),
//! and Redis restarted mid-sale under a running node.

mod common;

use common::redis::RedisServer;
use common::sales;
use common::*;
use ferry::config::{Config, EngineKind};
use ferry::protocol::Role;
use serde_json::Value;
use std::time::Duration;

const ROOM: &str = "shop";

/// A test config on the Redis engine at `url`.
fn on_redis(c: &mut Config, url: String) {
    c.engine.kind = EngineKind::Redis;
    c.redis.urls = vec![url];
    c.redis.prefix = "ferry-test".into();
}

/// `cmdstat_<name>` calls from `INFO commandstats` (0 when the command never ran).
fn calls(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A buy over HTTP takes the path of a WebSocket buy: the sale's room and price come from
/// the node's cache, so once cached a buy is one script on Redis and reads no snapshot of
/// the sale (a snapshot is the only reader of `XLEN`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_buys_take_the_cached_path() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let s = TestServer::start(move |c| {
        on_redis(c, url);
        // Keep the sweep (which reads snapshots) out of the counted window.
        c.commerce.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    sales::put_basket(s.addr(), &s.config, ROOM).await;
    let (host, _he) = s.client(ROOM, "host", Role::Host);
    host.join(ROOM).await.expect("join");
    let sale = host
        .start_sale(ROOM, sales::spec(100, 5, None, 300))
        .await
        .expect("sale");
    let path = format!("/api/sales/{}/buy", sale.id);
    let buy = |user: String, key: &'static str| {
        let (path, token) = (path.clone(), s.token(ROOM, &user, Role::Viewer));
        let addr = s.addr();
        async move {
            http_with(
                addr,
                "POST",
                &path,
                Some(&token),
                &[("Idempotency-Key", key)],
                Some("{}"),
            )
            .await
        }
    };
    let (status, text) = buy("first".into(), "k").await;
    assert_eq!(status, 201, "{text}");
    redis.cli(&["config", "resetstat"]);
    for n in 0..5 {
        let (status, text) = buy(format!("b{n}"), "k").await;
        assert_eq!(status, 201, "{text}");
    }
    let info = redis.cli(&["info", "commandstats"]);
    assert_eq!(
        calls(&info, "xlen"),
        0,
        "a buy read a sale snapshot:\n{info}"
    );
    assert!(calls(&info, "evalsha") >= 5, "{info}");
    // The answers are the same as before: a forbidden room, an unknown sale.
    let (status, _) = http_with(
        s.addr(),
        "POST",
        &path,
        Some(&s.token("elsewhere", "x", Role::Viewer)),
        &[("Idempotency-Key", "k")],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http_with(
        s.addr(),
        "POST",
        "/api/sales/s0000000000000000/buy",
        Some(&s.token(ROOM, "x", Role::Viewer)),
        &[("Idempotency-Key", "k")],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 404);
    let audit = sales::audit(s.addr(), &s.config, &sale.id.0).await;
    assert_eq!(audit["reserved"], 6);
}

/// The burst on the Redis engine: 2,000 SDK clients, 10,000 buy attempts, 100 units;
/// every buy is one script on Redis. The node is the real binary, in its own process (and
/// runtime), so the 2,000 clients of this process do not compete with its Redis connection
/// for the same scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_buys_from_two_thousand_clients_on_the_redis_engine() {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_ferry");
    let redis = RedisServer::start(false);
    let addr = sales::free_addr();
    let mut node = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--set", "engine.kind=redis"])
        .args(["--set", "limits.join_rate=100000"])
        .args(["--set", "limits.join_burst=100000"])
        // A reply can wait behind thousands of others on a shared 2-core machine.
        .args(["--set", "redis.command_timeout=5s"])
        // Room pushes slowed as in `sales::quiet_room`.
        .args(["--set", "rooms.viewer_count_interval=60s"])
        .args(["--set", "rooms.aggregate_interval=5s"])
        .args(["--set", "commerce.stock_update_interval=5s"])
        .args(["--set", "commerce.social_proof_interval=60s"])
        .env("FERRY_REDIS__URLS", redis.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry");
    sales::ready(addr).await;
    sales::ten_thousand_buys(addr, &test_config(), ROOM).await;
    let _ = node.kill();
    let _ = node.wait();
}

/// Payment webhooks sent around the deadline race the sweep, on the Redis sale store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_webhooks_race_the_expiry_sweep_on_the_redis_engine() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let s = TestServer::start(move |c| on_redis(c, url)).await;
    sales::webhooks_race_the_sweep(&s, ROOM).await;
}

/// The real binary on the Redis engine (Redis with AOF, `appendfsync always`), killed with
/// SIGKILL mid-sale while buyers buy and pay over HTTP: after a restart nothing answered is
/// lost and conservation holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_sale_on_the_redis_engine_loses_no_answered_reservation() {
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_ferry");
    let redis = RedisServer::start(true);
    let addr = sales::free_addr();
    sales::sigkill_mid_sale(addr, || {
        Command::new(BIN)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--set", "engine.kind=redis"])
            .args(["--set", "limits.command_rate=10000"])
            .args(["--set", "limits.command_burst=10000"])
            .env("FERRY_REDIS__URLS", redis.url())
            .env("FERRY_COMMERCE__WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ferry")
    })
    .await;
}

/// Redis (AOF, `appendfsync always`) is killed with SIGKILL mid-sale and restarted from its
/// AOF under a running node, while buyers keep buying and paying over HTTP and retry what
/// failed (same idempotency key, same webhook): no answered reservation and no confirmed
/// order is lost, conservation holds throughout and after, and the sale goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_sale_under_a_running_node_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    let mut redis = RedisServer::start(true);
    let url = redis.url();
    let s = TestServer::start(move |c| {
        on_redis(c, url);
        c.redis.command_timeout = Duration::from_millis(500);
    })
    .await;
    sales::put_basket(s.addr(), &s.config, ROOM).await;
    let (host, _he) = s.client(ROOM, "host", Role::Host);
    host.join(ROOM).await.expect("join");
    let sale = host
        .start_sale(ROOM, sales::spec(100_000, 100_000, None, 300))
        .await
        .expect("sale");
    let told = Arc::new(sales::Told::default());
    let stop = Arc::new(AtomicBool::new(false));
    let how = sales::HttpBuyers {
        addr: s.addr(),
        cfg: &s.config,
        room: ROOM,
        sale: &sale.id.0,
        buyers: 16,
        per_buyer: 100_000,
        retry: true,
    };
    let buyers = sales::http_buyers(how, told.clone(), stop.clone());
    // A watcher holds the invariants whenever Redis answers.
    let watcher = {
        let (addr, cfg, id, stop) = (s.addr(), s.config.clone(), sale.id.0.clone(), stop.clone());
        tokio::spawn(async move {
            let mut checked = 0u32;
            while !stop.load(Relaxed) {
                if let Ok(Ok((200, text))) = tokio::time::timeout(
                    Duration::from_secs(2),
                    try_http_with(
                        addr,
                        "GET",
                        &format!("/api/sales/{id}/orders/all"),
                        Some(&token_for(&cfg, "*", "ops", Role::Admin)),
                        &[],
                        None,
                    ),
                )
                .await
                {
                    let a: Value = serde_json::from_str(&text).expect("json");
                    sales::check_audit_live(&a).unwrap_or_else(|e| panic!("during the sale: {e}"));
                    checked += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            checked
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = told.take();
    tokio::task::block_in_place(|| {
        redis.kill();
        std::thread::sleep(Duration::from_millis(300));
        redis.restart();
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Relaxed);
    for b in buyers {
        b.await.expect("buyer");
    }
    assert!(watcher.await.expect("watcher") >= 3);
    let (reserved, confirmed) = told.take();
    assert!(
        before.0.len() + before.1.len() > 20,
        "answers before the kill"
    );
    assert!(
        reserved.len() + confirmed.len() > before.0.len() + before.1.len(),
        "buying went on after the restart"
    );
    let audit = sales::audit(s.addr(), &s.config, &sale.id.0).await;
    sales::nothing_answered_was_lost(&audit, &told);
}
