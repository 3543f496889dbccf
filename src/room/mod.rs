//! Sans-IO room logic: what a node decides about one room, fed publications, joins and the
//! current time, with no sockets or tasks. [`crate::hub`] drives it.
//!
//! - [`StreamTracker`] follows the room's stream on this node: detects gaps and epoch changes,
//!   keeps a small cache of recent frames, and plans each resume (from the cache, from engine
//!   history, or "cannot recover").
//! - [`Aggregator`] turns many likes and joins/leaves into one event per interval.
//! - [`ViewerThrottle`] limits viewer-count pushes.
//! - [`state_change_of`] says which durable state an event changes.
//! - [`audience`] says what each member receives of an event (translations per language,
//!   held comments for staff).

pub mod audience;

use crate::engine::{Publication, StateChange};
use ferry_client::protocol::{Epoch, Offset, RoomEvent, StreamPosition, UserRef};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do with a publication arriving from the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The next event: deliver it.
    Deliver,
    /// Already delivered (or older than what this node started from): skip.
    Duplicate,
    /// Events `after < offset < this one` were missed: fetch them from history first.
    Gap { after: Offset, until: Offset },
    /// The stream's epoch changed: history was lost; every member must resync.
    EpochChanged,
}

/// How to bring a joining client up to date.
#[derive(Debug, PartialEq)]
pub enum ResumePlan<F> {
    /// A fresh join (no `since`): nothing to replay.
    Fresh,
    /// Replay these cached frames (possibly none), then go live.
    FromCache(Vec<F>),
    /// The cache does not reach back far enough: read `after < offset <= until` from the
    /// engine's history, then plan again from `until`.
    NeedHistory { after: Offset, until: Offset },
    /// The position cannot be resumed (other epoch, too old, or from the future).
    NotRecoverable,
}

/// This node's view of one room's stream. `F` is the encoded frame type (shared bytes).
#[derive(Debug)]
pub struct StreamTracker<F> {
    epoch: Epoch,
    /// Last offset delivered to members on this node.
    last: Offset,
    /// Recent frames `(offset, frame)`, contiguous, ending at `last`.
    cache: VecDeque<(Offset, F)>,
    cache_capacity: usize,
}

impl<F: Clone> StreamTracker<F> {
    /// Start following from a snapshot taken at `last` (events up to `last` are reflected in
    /// the snapshot and are not delivered again).
    pub fn new(epoch: Epoch, last: Offset, cache_capacity: usize) -> Self {
        Self {
            epoch,
            last,
            cache: VecDeque::with_capacity(cache_capacity.min(64)),
            cache_capacity,
        }
    }

    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.last,
        }
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    pub fn last(&self) -> Offset {
        self.last
    }

    /// Classify a publication from the engine.
    pub fn classify(&self, p: &Publication) -> Incoming {
        if p.epoch != self.epoch {
            return Incoming::EpochChanged;
        }
        if p.offset <= self.last {
            Incoming::Duplicate
        } else if p.offset == self.last.next() {
            Incoming::Deliver
        } else {
            Incoming::Gap {
                after: self.last,
                until: Offset(p.offset.0 - 1),
            }
        }
    }

    /// Record that the event at `offset` (which must be `last + 1`) was delivered as `frame`.
    pub fn delivered(&mut self, offset: Offset, frame: F) {
        debug_assert_eq!(offset, self.last.next());
        self.last = offset;
        if self.cache_capacity == 0 {
            return;
        }
        if self.cache.len() == self.cache_capacity {
            self.cache.pop_front();
        }
        self.cache.push_back((offset, frame));
    }

    /// Start over on a new epoch (after history loss), from `last`.
    pub fn reset(&mut self, epoch: Epoch, last: Offset) {
        self.epoch = epoch;
        self.last = last;
        self.cache.clear();
    }

    /// Plan a join from `since` (the client's last seen position, if resuming).
    pub fn plan_resume(&self, since: Option<&StreamPosition>) -> ResumePlan<F> {
        let Some(since) = since else {
            return ResumePlan::Fresh;
        };
        if since.epoch != self.epoch || since.offset > self.last {
            return ResumePlan::NotRecoverable;
        }
        if since.offset == self.last {
            return ResumePlan::FromCache(Vec::new());
        }
        match self.cache.front() {
            Some((first, _)) if *first <= since.offset.next() => {
                let skip = (since.offset.next().0 - first.0) as usize;
                ResumePlan::FromCache(
                    self.cache
                        .iter()
                        .skip(skip)
                        .map(|(_, f)| f.clone())
                        .collect(),
                )
            }
            _ => ResumePlan::NeedHistory {
                after: since.offset,
                until: self.last,
            },
        }
    }
}

/// Aggregates likes and join/leave notices over an interval.
#[derive(Debug, Default)]
pub struct Aggregator {
    likes: u64,
    joined: u64,
    joined_sample: Vec<UserRef>,
    left: u64,
    left_sample: Vec<UserRef>,
    sample_size: usize,
}

impl Aggregator {
    pub fn new(sample_size: usize) -> Self {
        Self {
            sample_size,
            ..Self::default()
        }
    }

    pub fn like(&mut self, n: u64) {
        self.likes = self.likes.saturating_add(n);
    }

    pub fn joined(&mut self, user: &UserRef) {
        self.joined += 1;
        if self.joined_sample.len() < self.sample_size
            && !self.joined_sample.iter().any(|u| u.id == user.id)
        {
            self.joined_sample.push(user.clone());
        }
    }

    pub fn left(&mut self, user: &UserRef) {
        self.left += 1;
        if self.left_sample.len() < self.sample_size
            && !self.left_sample.iter().any(|u| u.id == user.id)
        {
            self.left_sample.push(user.clone());
        }
    }

    /// The events for the interval that just ended (none if nothing happened).
    pub fn flush(&mut self) -> Vec<RoomEvent> {
        let mut out = Vec::new();
        if self.likes > 0 {
            out.push(RoomEvent::Likes {
                count: std::mem::take(&mut self.likes),
            });
        }
        if self.joined > 0 {
            out.push(RoomEvent::Joined {
                count: std::mem::take(&mut self.joined),
                sample: std::mem::take(&mut self.joined_sample),
            });
        }
        if self.left > 0 {
            out.push(RoomEvent::Left {
                count: std::mem::take(&mut self.left),
                sample: std::mem::take(&mut self.left_sample),
            });
        }
        out
    }
}

/// Pushes a viewer count at most once per interval, and only when it changed.
#[derive(Debug)]
pub struct ViewerThrottle {
    interval: Duration,
    last_sent: Option<(u64, Instant)>,
}

impl ViewerThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
        }
    }

    /// Whether `count` should be pushed now; records it if so.
    pub fn should_push(&mut self, count: u64, now: Instant) -> bool {
        let due = match self.last_sent {
            None => true,
            Some((prev, at)) => prev != count && now.duration_since(at) >= self.interval,
        };
        if due {
            self.last_sent = Some((count, now));
        }
        due
    }

    pub fn last(&self) -> Option<u64> {
        self.last_sent.map(|(c, _)| c)
    }
}

/// The durable state change an event carries, if any.
pub fn state_change_of(event: &RoomEvent) -> Option<StateChange> {
    Some(match event {
        RoomEvent::Pinned { pinned } => StateChange::Pin(pinned.clone()),
        RoomEvent::Unpinned { .. } => StateChange::Unpin,
        RoomEvent::UserMuted { user, until, .. } => StateChange::Mute {
            user: user.clone(),
            until: *until,
        },
        RoomEvent::UserUnmuted { user, .. } => StateChange::Unmute { user: user.clone() },
        RoomEvent::UserBanned { user, .. } => StateChange::Ban { user: user.clone() },
        RoomEvent::SlowMode { seconds, .. } => StateChange::SlowMode(*seconds),
        RoomEvent::Likes { count } => StateChange::Likes(*count),
        RoomEvent::RoomClosed {} => StateChange::Close,
        RoomEvent::ProductPinned { pinned } => StateChange::Product(Some(pinned.clone())),
        RoomEvent::ProductUnpinned { .. } => StateChange::Product(None),
        RoomEvent::SaleScheduled { sale } => StateChange::Sale(sale.clone()),
        RoomEvent::SaleStarted { stock }
        | RoomEvent::SaleStock { stock }
        | RoomEvent::SaleSoldOut { stock }
        | RoomEvent::SaleEnded { stock } => StateChange::SaleStock(stock.clone()),
        RoomEvent::StreamStarted { .. } => StateChange::Live(true),
        RoomEvent::StreamEnded { .. } => StateChange::Live(false),
        // Approving a held comment publishes it and takes it off the queue in one step.
        RoomEvent::Comment {
            held_id: Some(id), ..
        }
        | RoomEvent::CommentRejected { id, .. } => StateChange::Resolve(id.clone()),
        RoomEvent::CommentHeld { held: Some(h), .. } => StateChange::Hold(h.clone()),
        RoomEvent::Comment { .. }
        | RoomEvent::CommentHeld { .. }
        | RoomEvent::Translation { .. }
        | RoomEvent::Joined { .. }
        | RoomEvent::Left { .. }
        | RoomEvent::Announcement { .. }
        | RoomEvent::CommentDeleted { .. }
        | RoomEvent::Purchase { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_client::protocol::{Role, UserId};

    fn publication(epoch: &str, offset: u64) -> Publication {
        Publication {
            epoch: Epoch(epoch.into()),
            offset: Offset(offset),
            body: Bytes::new(),
        }
    }

    fn pos(epoch: &str, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: Epoch(epoch.into()),
            offset: Offset(offset),
        }
    }

    #[test]
    fn tracker_classifies_in_order_duplicates_gaps_and_epochs() {
        let t: StreamTracker<u64> = StreamTracker::new(Epoch("e".into()), Offset(10), 4);
        assert_eq!(t.classify(&publication("e", 11)), Incoming::Deliver);
        assert_eq!(t.classify(&publication("e", 10)), Incoming::Duplicate);
        assert_eq!(t.classify(&publication("e", 3)), Incoming::Duplicate);
        assert_eq!(
            t.classify(&publication("e", 14)),
            Incoming::Gap {
                after: Offset(10),
                until: Offset(13)
            }
        );
        assert_eq!(t.classify(&publication("x", 11)), Incoming::EpochChanged);
    }

    #[test]
    fn resume_plans_use_cache_then_history_then_give_up() {
        let mut t: StreamTracker<u64> = StreamTracker::new(Epoch("e".into()), Offset(0), 4);
        for o in 1..=10 {
            t.delivered(Offset(o), o * 100);
        }
        // Cache holds 7..=10.
        assert_eq!(t.plan_resume(None), ResumePlan::Fresh);
        assert_eq!(
            t.plan_resume(Some(&pos("e", 10))),
            ResumePlan::FromCache(vec![])
        );
        assert_eq!(
            t.plan_resume(Some(&pos("e", 6))),
            ResumePlan::FromCache(vec![700, 800, 900, 1000])
        );
        assert_eq!(
            t.plan_resume(Some(&pos("e", 8))),
            ResumePlan::FromCache(vec![900, 1000])
        );
        assert_eq!(
            t.plan_resume(Some(&pos("e", 2))),
            ResumePlan::NeedHistory {
                after: Offset(2),
                until: Offset(10)
            }
        );
        assert_eq!(
            t.plan_resume(Some(&pos("other", 8))),
            ResumePlan::NotRecoverable
        );
        assert_eq!(
            t.plan_resume(Some(&pos("e", 11))),
            ResumePlan::NotRecoverable
        );
        t.reset(Epoch("f".into()), Offset(0));
        assert_eq!(
            t.plan_resume(Some(&pos("e", 10))),
            ResumePlan::NotRecoverable
        );
    }

    #[test]
    fn aggregator_emits_one_event_per_kind_per_interval() {
        let mut a = Aggregator::new(2);
        assert!(a.flush().is_empty());
        for _ in 0..1000 {
            a.like(1);
        }
        for i in 0..5 {
            a.joined(&UserRef {
                id: UserId(format!("u{i}")),
                name: format!("U{i}"),
                role: Role::Viewer,
            });
        }
        let events = a.flush();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], RoomEvent::Likes { count: 1000 });
        match &events[1] {
            RoomEvent::Joined { count, sample } => {
                assert_eq!(*count, 5);
                assert_eq!(sample.len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(a.flush().is_empty());
    }

    #[test]
    fn viewer_throttle_pushes_changes_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut v = ViewerThrottle::new(Duration::from_secs(2));
        assert!(v.should_push(5, t0));
        assert!(!v.should_push(6, t0 + Duration::from_secs(1)));
        assert!(v.should_push(6, t0 + Duration::from_secs(2)));
        assert!(!v.should_push(6, t0 + Duration::from_secs(10)));
        assert!(v.should_push(7, t0 + Duration::from_secs(10)));
    }
}
