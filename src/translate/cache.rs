//! Translation caches: a bounded in-process LRU (every node) and, on the Redis engine, a
//! shared cache in Redis so a text translated on one node is a hit on every other. Keys are
//! a SHA-256 of (normalized text, source, target, glossary id, glossary version): a glossary
//! change makes its old entries unreachable, and they age out.

use parking_lot::Mutex;
use redis::aio::ConnectionLike;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

/// A cache key: hex SHA-256 of the parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(pub String);

impl CacheKey {
    pub fn new(
        normalized_text: &str,
        source: &str,
        target: &str,
        glossary: Option<(&str, u64)>,
    ) -> CacheKey {
        let mut h = Sha256::new();
        for part in [normalized_text, source, target] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        if let Some((id, version)) = glossary {
            h.update((id.len() as u64).to_le_bytes());
            h.update(id.as_bytes());
            h.update(version.to_le_bytes());
        }
        CacheKey(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// The node's LRU of translations (bounded by entries).
pub struct Lru {
    inner: Mutex<lru::LruCache<CacheKey, Arc<str>>>,
}

impl Lru {
    pub fn new(entries: usize) -> Lru {
        let cap = NonZeroUsize::new(entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Lru {
            inner: Mutex::new(lru::LruCache::new(cap)),
        }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<str>> {
        self.inner.lock().get(key).cloned()
    }

    pub fn put(&self, key: CacheKey, value: Arc<str>) {
        self.inner.lock().put(key, value);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A command connection to standalone Redis or a cluster (for the shared cache and the
/// glossary store).
#[derive(Clone)]
pub enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConn {
    /// Connect with the engine's settings.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<RedisConn, String> {
        let first = urls.first().ok_or("redis.urls is empty")?;
        if cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(connect_timeout)
                .response_timeout(command_timeout)
                .retries(1)
                .build()
                .map_err(|e| e.to_string())?;
            Ok(RedisConn::Cluster(
                client
                    .get_async_connection()
                    .await
                    .map_err(|e| e.to_string())?,
            ))
        } else {
            let client = redis::Client::open(first.as_str()).map_err(|e| e.to_string())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(command_timeout))
                .set_number_of_retries(1);
            Ok(RedisConn::Single(
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| e.to_string())?,
            ))
        }
    }

    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let v = match self.clone() {
            RedisConn::Single(mut c) => c.req_packed_command(cmd).await?,
            RedisConn::Cluster(mut c) => c.req_packed_command(cmd).await?,
        };
        redis::from_redis_value(v).map_err(Into::into)
    }

    pub async fn script<T: redis::FromRedisValue>(
        &self,
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
        match self.clone() {
            RedisConn::Single(mut c) => inv.invoke_async(&mut c).await,
            RedisConn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    }
}

/// The shared cache in Redis: `<prefix>:tr:<key>` → translation, with a TTL.
pub struct SharedCache {
    conn: RedisConn,
    prefix: String,
    ttl: Duration,
}

impl SharedCache {
    pub fn new(conn: RedisConn, prefix: &str, ttl: Duration) -> SharedCache {
        SharedCache {
            conn,
            prefix: prefix.to_owned(),
            ttl,
        }
    }

    fn key(&self, key: &CacheKey) -> String {
        format!("{}:tr:{}", self.prefix, key.0)
    }

    /// `None` on a miss or when Redis does not answer (a cache is never worth an error).
    pub async fn get(&self, key: &CacheKey) -> Option<String> {
        match self
            .conn
            .query::<Option<String>>(redis::cmd("GET").arg(self.key(key)))
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "shared translation cache unavailable");
                None
            }
        }
    }

    pub async fn put(&self, key: &CacheKey, value: &str) {
        let secs = self.ttl.as_secs().max(1);
        if let Err(e) = self
            .conn
            .query::<()>(
                redis::cmd("SET")
                    .arg(self.key(key))
                    .arg(value)
                    .arg("EX")
                    .arg(secs),
            )
            .await
        {
            tracing::debug!(error = %e, "shared translation cache write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_part_and_the_lru_is_bounded() {
        let a = CacheKey::new("hi", "en", "zh", Some(("g", 1)));
        assert_eq!(a, CacheKey::new("hi", "en", "zh", Some(("g", 1))));
        assert_ne!(a, CacheKey::new("hi", "en", "zh", Some(("g", 2))));
        assert_ne!(a, CacheKey::new("hi", "en", "es", Some(("g", 1))));
        assert_ne!(a, CacheKey::new("hi", "en", "zh", None));
        assert_ne!(
            CacheKey::new("ab", "c", "d", None),
            CacheKey::new("a", "bc", "d", None)
        );
        let lru = Lru::new(2);
        for i in 0..5 {
            lru.put(
                CacheKey::new(&i.to_string(), "a", "b", None),
                Arc::from("x"),
            );
        }
        assert_eq!(lru.len(), 2);
    }
}
