//! The Redis engine against real Redis: the shared conformance suite on a standalone server
//! and on a 3-master Redis Cluster.

mod common;

use common::redis::{RedisCluster, RedisServer};
use ferry::engine::redis::{RedisEngine, RedisEngineOptions};
use ferry::engine::Engine;
use std::sync::Arc;
use std::time::Duration;

fn options(urls: Vec<String>, cluster: bool, history_size: usize) -> RedisEngineOptions {
    RedisEngineOptions {
        urls,
        cluster,
        prefix: "conf".into(),
        history_size,
        history_ttl: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
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
