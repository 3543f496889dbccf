//! Translation caches: a bounded in-process LRU (every node) and, on the Redis engine, a
//! shared cache in Redis so a text translated on one node is a hit on every other. Keys are
//! a SHA-256 of (normalized text, source, target, glossary id, glossary version): a glossary
//! change makes its old entries unreachable, and they age out.

use crate::redis_conn::RedisConn;
use parking_lot::Mutex;
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
            .clone()
            .cmd::<Option<String>>(redis::cmd("GET").arg(self.key(key)))
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
            .clone()
            .cmd::<()>(
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
