//! Rate limiting primitives, sans-IO: the caller passes the current time.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take `n` tokens, or say how long until they would be available.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            let missing = n - self.tokens;
            Err(Duration::from_secs_f64(missing / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0, t0);
        assert!(b.try_take(1.0, t0).is_ok());
        assert!(b.try_take(1.0, t0).is_ok());
        assert!(b.try_take(1.0, t0).is_ok());
        let wait = b.try_take(1.0, t0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(1.0, t0 + Duration::from_millis(499)).is_err());
        assert!(b.try_take(1.0, t0 + Duration::from_millis(1000)).is_ok());
        // Never above burst after a long idle.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(1.0, later).is_ok());
        }
        assert!(b.try_take(1.0, later).is_err());
    }
}

/// Why a comment was refused by the per-user limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommentRefusal {
    /// The room's slow mode: one comment per `every_secs`; the next is allowed after `wait`.
    SlowMode { wait: Duration, every_secs: u64 },
    /// The user's comment rate: retry after this long.
    RateLimited(Duration),
}

/// Comment limits per user across all of the user's connections on this node: one token
/// bucket per user and the time of their last comment per room (for slow mode). Entries
/// live while the user has a connection here.
#[derive(Debug)]
pub struct UserLimits {
    rate: f64,
    burst: f64,
    users: std::collections::HashMap<ferry_client::protocol::UserId, UserEntry>,
}

#[derive(Debug)]
struct UserEntry {
    connections: u32,
    bucket: TokenBucket,
    last_comment: std::collections::HashMap<ferry_client::protocol::RoomId, Instant>,
}

/// Slow mode is at most an hour, so older last-comment times no longer matter.
const SLOW_MODE_MAX: Duration = Duration::from_secs(3600);

impl UserLimits {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            users: std::collections::HashMap::new(),
        }
    }

    pub fn connected(&mut self, user: &ferry_client::protocol::UserId, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.users
            .entry(user.clone())
            .or_insert_with(|| UserEntry {
                connections: 0,
                bucket: TokenBucket::new(rate, burst, now),
                last_comment: std::collections::HashMap::new(),
            })
            .connections += 1;
    }

    pub fn disconnected(&mut self, user: &ferry_client::protocol::UserId) {
        if let Some(e) = self.users.get_mut(user) {
            e.connections = e.connections.saturating_sub(1);
            if e.connections == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Users currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    /// Admit a comment by `user` in `room` whose slow mode is `slow_secs` (0 = off).
    pub fn try_comment(
        &mut self,
        user: &ferry_client::protocol::UserId,
        room: &ferry_client::protocol::RoomId,
        slow_secs: u64,
        now: Instant,
    ) -> Result<(), CommentRefusal> {
        let (rate, burst) = (self.rate, self.burst);
        // A comment from a connection we were not told about still gets limits.
        let entry = self.users.entry(user.clone()).or_insert_with(|| UserEntry {
            connections: 0,
            bucket: TokenBucket::new(rate, burst, now),
            last_comment: std::collections::HashMap::new(),
        });
        if slow_secs > 0 {
            if let Some(last) = entry.last_comment.get(room) {
                let next = *last + Duration::from_secs(slow_secs);
                if next > now {
                    return Err(CommentRefusal::SlowMode {
                        wait: next - now,
                        every_secs: slow_secs,
                    });
                }
            }
        }
        entry
            .bucket
            .try_take(1.0, now)
            .map_err(CommentRefusal::RateLimited)?;
        if entry.last_comment.len() >= 16 {
            entry
                .last_comment
                .retain(|_, at| now.saturating_duration_since(*at) < SLOW_MODE_MAX);
        }
        entry.last_comment.insert(room.clone(), now);
        Ok(())
    }
}

#[cfg(test)]
mod user_limit_tests {
    use super::*;
    use ferry_client::protocol::{RoomId, UserId};

    #[test]
    fn limits_are_shared_by_a_users_connections_and_freed_after() {
        let t0 = Instant::now();
        let mut l = UserLimits::new(1.0, 2.0);
        let (u, r) = (UserId::from("u"), RoomId::from("r"));
        l.connected(&u, t0);
        l.connected(&u, t0);
        assert!(l.try_comment(&u, &r, 0, t0).is_ok());
        assert!(l.try_comment(&u, &r, 0, t0).is_ok());
        // Two connections share one bucket.
        assert!(matches!(
            l.try_comment(&u, &r, 0, t0),
            Err(CommentRefusal::RateLimited(_))
        ));
        // Slow mode per room.
        let later = t0 + Duration::from_secs(5);
        assert!(matches!(
            l.try_comment(&u, &r, 10, later),
            Err(CommentRefusal::SlowMode { every_secs: 10, .. })
        ));
        assert!(l.try_comment(&u, &RoomId::from("other"), 10, later).is_ok());
        l.disconnected(&u);
        assert_eq!(l.tracked(), 1);
        l.disconnected(&u);
        assert_eq!(l.tracked(), 0);
    }
}
