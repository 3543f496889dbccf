//! The Redis engine against real Redis: the shared conformance suite on a standalone server
//! and on a 3-master Redis Cluster.

mod common;

use common::redis::{RedisCluster, RedisServer};
use ferry::engine::redis::{RedisEngine, RedisEngineOptions};
use ferry::engine::Engine;
use ferry::redis_conn::{RedisConn, RedisHealth, RedisTarget};
use std::sync::Arc;
use std::time::Duration;

fn options(urls: Vec<String>, cluster: bool, history_size: usize) -> RedisEngineOptions {
    RedisEngineOptions {
        redis: RedisTarget {
            urls,
            cluster,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
        },
        prefix: "conf".into(),
        history_size,
        history_ttl: Duration::from_secs(60),
        presence_ttl: Duration::from_secs(10),
        broadcast_capacity: 4096,
        max_held: 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_standalone_redis() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    ferry::engine::conformance::run_all(|history_size| {
        let url = url.clone();
        async move {
            Arc::new(
                RedisEngine::connect(options(vec![url], false, history_size))
                    .await
                    .expect("connect"),
            ) as Arc<dyn Engine>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    ferry::engine::conformance::run_all(|history_size| {
        let urls = urls.clone();
        async move {
            Arc::new(
                RedisEngine::connect(options(urls, true, history_size))
                    .await
                    .expect("connect"),
            ) as Arc<dyn Engine>
        }
    })
    .await;
}

/// The health probe answers for Redis, not for the command connection: commands queued on the
/// shared connection (here a BLPOP that holds it, as a burst of buy scripts did) must not make
/// a busy Redis look down, while a Redis that stops answering (SIGSTOP) or dies must, and a
/// restarted one must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_is_not_queued_behind_commands() {
    let mut redis = RedisServer::start(false);
    let target = RedisTarget {
        urls: vec![redis.url()],
        cluster: false,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_millis(500),
    };
    let slow = RedisTarget {
        command_timeout: Duration::from_secs(5),
        ..target.clone()
    };
    let commands = RedisConn::connect(&slow, None).await.expect("connect");
    let health = RedisHealth::start(&target, "test").await.expect("probe");
    assert!(health.check().await);

    // Hold the command connection for 3 s: Redis answers nothing else on it meanwhile.
    let mut blocked = commands.clone();
    let holder = tokio::spawn(async move {
        blocked
            .cmd::<Option<Vec<String>>>(redis::cmd("BLPOP").arg("nothing-here").arg(3))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut queued = commands.clone();
    let behind = tokio::time::timeout(
        Duration::from_millis(500),
        queued.cmd::<String>(&redis::cmd("PING")),
    )
    .await;
    assert!(
        !matches!(behind, Ok(Ok(_))),
        "a PING on the held command connection should wait behind the BLPOP: {behind:?}"
    );
    assert!(
        health.check().await,
        "the probe's own connection answers while the command connection is held"
    );
    assert!(health.is_healthy());
    let _ = holder.await;

    redis.pause();
    assert!(!health.check().await, "a stopped Redis is reported down");
    assert!(!health.is_healthy());
    redis.resume();
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !health.check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe did not see the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
