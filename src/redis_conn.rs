//! The Redis plumbing every Redis-backed part shares: one multiplexed command connection to
//! standalone Redis or a Redis Cluster ([`RedisConn`]), and the health probe ([`RedisHealth`])
//! that decides whether commands may be sent at all.
//!
//! Owns connecting (timeouts, retries, RESP3 pushes for the engine's subscriptions) and the
//! probe's life cycle. It knows no keys, scripts or domain: the engine, the sale store, the
//! translation cache and the glossary store build their commands on top.
//!
//! The probe has a connection of its own. On the shared command connection a PING waits behind
//! every command queued before it, so a burst of thousands of buy scripts made the PING time
//! out although Redis was answering, and the node then refused buys as `unavailable` for a
//! quarter of a second. On its own socket the PING is answered in Redis's round-robin over
//! clients, so only a Redis that really stopped answering is reported down.

use redis::aio::ConnectionLike;
use redis::FromRedisValue;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where Redis is and how long to wait for it (the `[redis]` keys every component needs).
#[derive(Clone, Debug)]
pub struct RedisTarget {
    /// One URL for standalone Redis; one or more seed nodes for a cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub connect_timeout: Duration,
    /// Bound on each command's answer.
    pub command_timeout: Duration,
}

/// Why a connection to Redis could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("redis.urls is empty")]
    NoUrl,
    #[error("cannot connect to Redis at {url}: {message}")]
    Connect { url: String, message: String },
}

/// A command connection to standalone Redis or a cluster. Cloning shares the connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Reconnect attempts inside one command before it fails.
const RETRIES: usize = 2;

impl RedisConn {
    /// Connect to `target`. With `pushes`, the connection speaks RESP3 and forwards push
    /// messages (published messages of (S)SUBSCRIBEd channels, resubscribed after a reconnect).
    pub async fn connect(
        target: &RedisTarget,
        pushes: Option<mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<RedisConn, RedisStartError> {
        let first = target.urls.first().ok_or(RedisStartError::NoUrl)?;
        let connect_err = |message: String| RedisStartError::Connect {
            url: first.clone(),
            message,
        };
        let url = |u: &String| match pushes {
            Some(_) => resp3(u),
            None => u.clone(),
        };
        let connecting = async {
            if target.cluster {
                let mut builder =
                    redis::cluster::ClusterClientBuilder::new(target.urls.iter().map(url))
                        .connection_timeout(target.connect_timeout)
                        .response_timeout(target.command_timeout)
                        .retries(RETRIES as u32);
                if let Some(tx) = pushes.clone() {
                    builder = builder
                        .use_protocol(redis::ProtocolVersion::RESP3)
                        .push_sender(tx);
                }
                let client = builder.build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            } else {
                let client = redis::Client::open(url(first))?;
                let mut config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(target.connect_timeout))
                    .set_response_timeout(Some(target.command_timeout))
                    .set_number_of_retries(RETRIES)
                    .set_max_delay(Duration::from_secs(2));
                if let Some(tx) = pushes.clone() {
                    config = config.set_push_sender(tx).set_automatic_resubscription();
                }
                Ok(RedisConn::Single(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
        };
        // The connection timeout bounds each attempt; this bounds discovering a whole cluster.
        match tokio::time::timeout(target.connect_timeout * 2, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_err(redis::RedisError::to_string(&e))),
            Err(_) => Err(connect_err("timed out".into())),
        }
    }

    /// Send one command.
    pub async fn cmd<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let v = match self {
            RedisConn::Single(c) => c.req_packed_command(cmd).await?,
            RedisConn::Cluster(c) => c.req_packed_command(cmd).await?,
        };
        redis::from_redis_value(v).map_err(Into::into)
    }

    /// Run a script by its SHA (loading it first when Redis does not know it).
    pub async fn script<T: FromRedisValue>(
        &mut self,
        script: &redis::Script,
        keys: &[String],
        args: &[String],
    ) -> redis::RedisResult<T> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        match self {
            RedisConn::Single(c) => inv.invoke_async(c).await,
            RedisConn::Cluster(c) => inv.invoke_async(c).await,
        }
    }

    /// SCRIPT LOAD `script` (on every primary of a cluster).
    pub async fn load(&mut self, script: &redis::Script) -> redis::RedisResult<String> {
        match self {
            RedisConn::Single(c) => script.load_async(c).await,
            RedisConn::Cluster(c) => script.load_async(c).await,
        }
    }

    /// (S)SUBSCRIBE to `channel` when `on`, else unsubscribe; messages arrive as pushes.
    pub async fn subscribe(&mut self, channel: &str, on: bool) -> redis::RedisResult<()> {
        match (self, on) {
            (RedisConn::Single(c), true) => c.subscribe(channel).await,
            (RedisConn::Single(c), false) => c.unsubscribe(channel).await,
            (RedisConn::Cluster(c), true) => c.ssubscribe(channel).await,
            (RedisConn::Cluster(c), false) => c.sunsubscribe(channel).await,
        }
    }
}

/// `url` asking for RESP3 (needed for pushes on a multiplexed connection).
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

/// How often the probe pings Redis.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Whether Redis is answering, kept current by a probe task on a connection of its own.
///
/// While Redis is down, components fail fast with `unavailable` instead of queueing commands
/// on a dead connection: queued commands would be applied when Redis returns, after their
/// senders were told they failed.
pub struct RedisHealth {
    healthy: AtomicBool,
    /// The probe's own connection (never the command connection; see the module doc).
    probe: RedisConn,
    command_timeout: Duration,
    /// Names the component in log lines ("engine", "sale store").
    component: &'static str,
}

impl RedisHealth {
    /// Open the probe's connection and start probing; the probe ends when the last `Arc` is
    /// dropped.
    pub async fn start(
        target: &RedisTarget,
        component: &'static str,
    ) -> Result<Arc<RedisHealth>, RedisStartError> {
        let health = Arc::new(RedisHealth {
            healthy: AtomicBool::new(true),
            probe: RedisConn::connect(target, None).await?,
            command_timeout: target.command_timeout,
            component,
        });
        let weak = Arc::downgrade(&health);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(health) = weak.upgrade() else { return };
                health.check().await;
            }
        });
        Ok(health)
    }

    /// The last probe's verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Ping now, record and return the verdict.
    pub async fn check(&self) -> bool {
        let mut conn = self.probe.clone();
        let ok = matches!(
            tokio::time::timeout(
                self.command_timeout,
                conn.cmd::<String>(&redis::cmd("PING"))
            )
            .await,
            Ok(Ok(_))
        );
        let was = self.healthy.swap(ok, Relaxed);
        if was != ok {
            if ok {
                tracing::info!(component = self.component, "Redis reachable again");
            } else {
                tracing::warn!(
                    component = self.component,
                    "Redis unreachable: calls that need it answer `unavailable`"
                );
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp3_is_added_once() {
        assert_eq!(resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(resp3("redis://h:1/?x=1"), "redis://h:1/?x=1&protocol=resp3");
        assert_eq!(
            resp3("redis://h:1?protocol=resp2"),
            "redis://h:1?protocol=resp2"
        );
    }
}
