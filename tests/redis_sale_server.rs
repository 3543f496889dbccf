//! Flash sales on the Redis engine through real servers: the buy path's store steps, the
//! 10,000-buy burst, the real binary killed mid-sale (Redis with AOF, `appendfsync always`),
//! and Redis restarted mid-sale under a running node.

mod common;

use common::redis::RedisServer;
use common::*;
use ferry::config::{Config, EngineKind};
use ferry::protocol::commerce::SaleSpec;
use ferry::protocol::Role;
use serde_json::{json, Value};
use std::time::Duration;

const ROOM: &str = "shop";

/// A test config on the Redis engine at `url`.
fn on_redis(c: &mut Config, url: String) {
    c.engine.kind = EngineKind::Redis;
    c.redis.urls = vec![url];
    c.redis.prefix = "ferry-test".into();
}

async fn put_basket(addr: std::net::SocketAddr, cfg: &Config) {
    let body = json!({"title": "藤编篮", "price_cny": 8900, "markets": {"us": true, "hk": true}})
        .to_string();
    let token = token_for(cfg, ROOM, "host", Role::Host);
    let (status, text) = http(
        addr,
        "PUT",
        "/api/products/basket",
        Some(&token),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

fn spec(quantity: u64, limit: u32, starts_in_secs: Option<u64>) -> SaleSpec {
    SaleSpec {
        product: "basket".into(),
        quantity,
        price_cny: 5900,
        per_buyer_limit: limit,
        starts_at: None,
        starts_in_secs,
        duration_secs: 300,
        hold_secs: 300,
    }
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
    put_basket(s.addr(), &s.config).await;
    let (host, _he) = s.client(ROOM, "host", Role::Host);
    host.join(ROOM).await.expect("join");
    let sale = host
        .start_sale(ROOM, spec(100, 5, None))
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
    let audit = audit(&s, &sale.id.0).await;
    assert_eq!(audit["reserved"], 6);
}

/// `GET /api/sales/{id}/orders/all` as an admin.
async fn audit(s: &TestServer, sale: &str) -> Value {
    let (status, text) = http(
        s.addr(),
        "GET",
        &format!("/api/sales/{sale}/orders/all"),
        Some(&s.token("*", "ops", Role::Admin)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("json")
}
