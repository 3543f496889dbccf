//! The engine conformance suite: one set of checks every [`Engine`] must pass. Engines' own
//! tests call [`run_all`] with a factory; the checks use fresh random room ids so they can
//! share a backing store.

use super::{Engine, EngineError, History, LiveHost, StateChange};
use bytes::Bytes;
use ferry_client::protocol::{Epoch, Offset, Pinned, Role, RoomId, UserId, UserRef};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

fn room() -> RoomId {
    use rand::Rng;
    RoomId(format!("conf-{:016x}", rand::rng().random::<u64>()))
}

fn body(i: u64) -> Bytes {
    Bytes::from(format!("{{\"type\":\"likes\",\"count\":{i}}}"))
}

/// Run every check against engines built by `factory`, which takes the history size
/// (events kept per room).
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn(usize) -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn Engine>> + Send,
{
    let e = factory(1000).await;
    rooms_are_created_once(&*e).await;
    offsets_are_contiguous_and_delivered_in_order(&*e).await;
    history_is_all_or_nothing(&*e).await;
    state_changes_apply_with_their_event(&*e).await;
    closed_rooms_refuse_publications(&*e).await;
    presence_sums_nodes(&*e).await;
    concurrent_publishers_get_unique_offsets(e.clone()).await;
    held_comments_resolve_once(&*e).await;
    audience_sums_nodes(&*e).await;
    live_leases_lapse_and_end_once(&*e).await;
    let small = factory(10).await;
    history_window_is_enforced(&*small).await;
}

pub async fn rooms_are_created_once(e: &dyn Engine) {
    let r = room();
    assert_eq!(e.room(&r).await.expect("room"), None);
    let (rec, created) = e.create_room(&r, "Rattan baskets").await.expect("create");
    assert!(created);
    assert_eq!(rec.offset, Offset(0));
    assert_eq!(rec.title, "Rattan baskets");
    let (again, created) = e.create_room(&r, "other").await.expect("create again");
    assert!(!created);
    assert_eq!(again.epoch, rec.epoch);
    assert_eq!(again.title, "Rattan baskets");
    let missing = room();
    assert_eq!(
        e.publish(&missing, body(1), None).await,
        Err(EngineError::RoomNotFound)
    );
}

pub async fn offsets_are_contiguous_and_delivered_in_order(e: &dyn Engine) {
    let r = room();
    let (rec, _) = e.create_room(&r, "").await.expect("create");
    let mut a = e.subscribe(&r).await.expect("subscribe a");
    let mut b = e.subscribe(&r).await.expect("subscribe b");
    for i in 1..=50u64 {
        let p = e.publish(&r, body(i), None).await.expect("publish");
        assert_eq!(p.offset, Offset(i));
        assert_eq!(p.epoch, rec.epoch);
    }
    for sub in [&mut a, &mut b] {
        for i in 1..=50u64 {
            let p = tokio::time::timeout(Duration::from_secs(5), sub.rx.recv())
                .await
                .expect("delivered in time")
                .expect("no lag");
            assert_eq!(p.offset, Offset(i));
            assert_eq!(p.body, body(i));
        }
    }
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert_eq!(rec.offset, Offset(50));
}

pub async fn history_is_all_or_nothing(e: &dyn Engine) {
    let r = room();
    let (rec, _) = e.create_room(&r, "").await.expect("create");
    for i in 1..=20u64 {
        e.publish(&r, body(i), None).await.expect("publish");
    }
    let h = e
        .history(&r, &rec.epoch, Offset(5), Offset(12))
        .await
        .expect("history");
    let History::Events(events) = h else {
        panic!("expected events, got {h:?}")
    };
    let offsets: Vec<u64> = events.iter().map(|p| p.offset.0).collect();
    assert_eq!(offsets, (6..=12).collect::<Vec<_>>());
    assert_eq!(events[0].body, body(6));
    // Asking past the top is clamped to the top.
    let History::Events(tail) = e
        .history(&r, &rec.epoch, Offset(18), Offset(99))
        .await
        .expect("history")
    else {
        panic!("expected events")
    };
    assert_eq!(tail.len(), 2);
    // Up to date: empty, not an error.
    assert_eq!(
        e.history(&r, &rec.epoch, Offset(20), Offset(20))
            .await
            .expect("history"),
        History::Events(vec![])
    );
    // Another epoch is never trusted.
    assert_eq!(
        e.history(&r, &Epoch("bogus".into()), Offset(5), Offset(12))
            .await
            .expect("history"),
        History::NotRecoverable
    );
    // An offset from the future is not trusted either.
    assert_eq!(
        e.history(&r, &rec.epoch, Offset(25), Offset(30))
            .await
            .expect("history"),
        History::NotRecoverable
    );
}

pub async fn history_window_is_enforced(e: &dyn Engine) {
    let r = room();
    let (rec, _) = e.create_room(&r, "").await.expect("create");
    for i in 1..=30u64 {
        e.publish(&r, body(i), None).await.expect("publish");
    }
    // Window of 10: offsets 21..=30 are kept.
    assert_eq!(
        e.history(&r, &rec.epoch, Offset(5), Offset(30))
            .await
            .expect("history"),
        History::NotRecoverable
    );
    let History::Events(kept) = e
        .history(&r, &rec.epoch, Offset(20), Offset(30))
        .await
        .expect("history")
    else {
        panic!("expected events")
    };
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0].offset, Offset(21));
}

pub async fn state_changes_apply_with_their_event(e: &dyn Engine) {
    let r = room();
    e.create_room(&r, "").await.expect("create");
    let host = UserRef {
        id: UserId("h".into()),
        name: "Host".into(),
        role: Role::Host,
    };
    let pinned = Pinned {
        text: "Free shipping today".into(),
        by: host,
    };
    let p = e
        .publish(&r, body(1), Some(StateChange::Pin(pinned.clone())))
        .await
        .expect("pin");
    let viewer = UserId("v1".into());
    e.publish(
        &r,
        body(2),
        Some(StateChange::Mute {
            user: viewer.clone(),
            until: Some(123),
        }),
    )
    .await
    .expect("mute");
    e.publish(
        &r,
        body(3),
        Some(StateChange::Ban {
            user: UserId("v2".into()),
        }),
    )
    .await
    .expect("ban");
    e.publish(&r, body(4), Some(StateChange::SlowMode(30)))
        .await
        .expect("slow");
    e.publish(&r, body(5), Some(StateChange::Likes(7)))
        .await
        .expect("likes");
    e.publish(&r, body(6), Some(StateChange::Likes(5)))
        .await
        .expect("likes");
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert_eq!(rec.pinned, Some(pinned));
    assert_eq!(rec.muted.get(&viewer), Some(&Some(123)));
    assert!(rec.banned.contains(&UserId("v2".into())));
    assert_eq!(rec.slow_mode_secs, 30);
    assert_eq!(rec.likes, 12);
    assert_eq!(rec.offset, Offset(p.offset.0 + 5));
    e.publish(&r, body(7), Some(StateChange::Unpin))
        .await
        .expect("unpin");
    e.publish(
        &r,
        body(8),
        Some(StateChange::Unmute {
            user: viewer.clone(),
        }),
    )
    .await
    .expect("unmute");
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert_eq!(rec.pinned, None);
    assert!(!rec.muted.contains_key(&viewer));
    assert!(!rec.live);
    e.publish(&r, body(9), Some(StateChange::Live(true)))
        .await
        .expect("live");
    assert!(e.room(&r).await.expect("room").expect("exists").live);
    e.publish(&r, body(9), Some(StateChange::Live(false)))
        .await
        .expect("ended");
    assert!(!e.room(&r).await.expect("room").expect("exists").live);
    commerce_state_applies(e, &r).await;
}

/// The showcase product and the current sale live in the room's state; stock updates patch
/// the sale's counters.
async fn commerce_state_applies(e: &dyn Engine, r: &RoomId) {
    use ferry_client::protocol::commerce::{
        PinnedProduct, ProductView, SaleStatus, SaleStock, SaleView,
    };
    let product = ProductView {
        id: "basket".into(),
        title: "藤编篮".into(),
        description: String::new(),
        image_url: String::new(),
        lang: "zh".into(),
        price_cny: 8900,
        markets: Default::default(),
        fx_date: "2026-11-20".into(),
        translations: Default::default(),
    };
    let by = UserRef {
        id: UserId("h".into()),
        name: "Host".into(),
        role: Role::Host,
    };
    let pinned = PinnedProduct {
        product: product.clone(),
        by,
    };
    e.publish(
        r,
        body(9),
        Some(StateChange::Product(Some(Box::new(pinned.clone())))),
    )
    .await
    .expect("pin product");
    let sale = SaleView {
        id: "s1".into(),
        room: r.clone(),
        product,
        quantity: 100,
        remaining: 100,
        price_cny: 5900,
        markets: Default::default(),
        per_buyer_limit: 2,
        starts_at: 1_795_313_637_269,
        ends_at: 1_795_313_937_269,
        hold_secs: 300,
        status: SaleStatus::Scheduled,
        version: 0,
    };
    let mut n = 9;
    let mut publish = |change: StateChange| {
        n += 1;
        let b = body(n);
        async move { e.publish(r, b, Some(change)).await.expect("publish") }
    };
    publish(StateChange::Sale(Box::new(sale.clone()))).await;
    let stock = |sale: &str, remaining, status, version| SaleStock {
        sale: sale.into(),
        quantity: 100,
        remaining,
        status,
        version,
    };
    let state = || async { e.room(r).await.expect("room").expect("exists").sale };
    let patched = |view: &SaleView, remaining, status, version| {
        let mut v = view.clone();
        v.remaining = remaining;
        v.status = status;
        v.version = version;
        Some(v)
    };
    // Started (same version, later phase), then a stock update.
    publish(StateChange::SaleStock(stock(
        "s1",
        100,
        SaleStatus::Open,
        0,
    )))
    .await;
    assert_eq!(state().await, patched(&sale, 100, SaleStatus::Open, 0));
    publish(StateChange::SaleStock(stock(
        "s1",
        40,
        SaleStatus::Open,
        60,
    )))
    .await;
    let rec = e.room(r).await.expect("room").expect("exists");
    assert_eq!(rec.product, Some(pinned));
    assert_eq!(rec.sale, patched(&sale, 40, SaleStatus::Open, 60));
    // An older patch delivered late (published by a slower node) does not undo a newer one.
    publish(StateChange::SaleStock(stock(
        "s1",
        0,
        SaleStatus::SoldOut,
        100,
    )))
    .await;
    publish(StateChange::SaleStock(stock("s1", 3, SaleStatus::Open, 97))).await;
    assert_eq!(
        state().await,
        patched(&sale, 0, SaleStatus::SoldOut, 100),
        "a stale stock patch"
    );
    // Units come back (newer version); the same version with an earlier phase is older.
    publish(StateChange::SaleStock(stock(
        "s1",
        2,
        SaleStatus::Open,
        102,
    )))
    .await;
    publish(StateChange::SaleStock(stock(
        "s1",
        2,
        SaleStatus::Scheduled,
        102,
    )))
    .await;
    assert_eq!(state().await, patched(&sale, 2, SaleStatus::Open, 102));
    // Two sales in one room: stock of another sale (not the room's latest) leaves the
    // latest one with its own latest patch (read straight after, nothing republished).
    publish(StateChange::SaleStock(stock(
        "s2",
        0,
        SaleStatus::SoldOut,
        500,
    )))
    .await;
    assert_eq!(
        state().await,
        patched(&sale, 2, SaleStatus::Open, 102),
        "another sale's stock"
    );
    publish(StateChange::SaleStock(stock(
        "s1",
        35,
        SaleStatus::Open,
        130,
    )))
    .await;
    publish(StateChange::SaleStock(stock(
        "s2",
        0,
        SaleStatus::SoldOut,
        501,
    )))
    .await;
    assert_eq!(
        state().await,
        patched(&sale, 35, SaleStatus::Open, 130),
        "the latest patch of the latest sale"
    );
    // Ended is final: a later stock update of a lagging node does not reopen it.
    publish(StateChange::SaleStock(stock(
        "s1",
        35,
        SaleStatus::Ended,
        131,
    )))
    .await;
    publish(StateChange::SaleStock(stock(
        "s1",
        36,
        SaleStatus::Open,
        140,
    )))
    .await;
    assert_eq!(state().await, patched(&sale, 35, SaleStatus::Ended, 131));
    // A newer sale takes over: its view as announced, then its own patches; the older
    // sale's stock no longer touches the room's state.
    let mut second = sale.clone();
    second.id = "s2".into();
    publish(StateChange::Sale(Box::new(second.clone()))).await;
    publish(StateChange::SaleStock(stock(
        "s1",
        10,
        SaleStatus::Ended,
        150,
    )))
    .await;
    assert_eq!(
        state().await,
        Some(second.clone()),
        "a new view replaces the patch"
    );
    publish(StateChange::SaleStock(stock(
        "s2",
        60,
        SaleStatus::Open,
        40,
    )))
    .await;
    publish(StateChange::SaleStock(stock(
        "s1",
        5,
        SaleStatus::Ended,
        151,
    )))
    .await;
    publish(StateChange::Product(None)).await;
    let rec = e.room(r).await.expect("room").expect("exists");
    assert_eq!(rec.sale, patched(&second, 60, SaleStatus::Open, 40));
    assert_eq!(rec.product, None);
}

pub async fn closed_rooms_refuse_publications(e: &dyn Engine) {
    let r = room();
    e.create_room(&r, "").await.expect("create");
    e.publish(&r, body(1), Some(StateChange::Close))
        .await
        .expect("close");
    let rec = e.room(&r).await.expect("room").expect("still readable");
    assert!(rec.closed);
    assert_eq!(
        e.publish(&r, body(2), None).await,
        Err(EngineError::RoomClosed)
    );
}

pub async fn presence_sums_nodes(e: &dyn Engine) {
    let r = room();
    e.create_room(&r, "").await.expect("create");
    e.report_presence(&r, "node-a", 10).await.expect("report");
    e.report_presence(&r, "node-b", 5).await.expect("report");
    assert_eq!(e.viewer_count(&r).await.expect("count"), 15);
    e.report_presence(&r, "node-a", 3).await.expect("report");
    assert_eq!(e.viewer_count(&r).await.expect("count"), 8);
    e.report_presence(&r, "node-b", 0).await.expect("report");
    assert_eq!(e.viewer_count(&r).await.expect("count"), 3);
    for u in ["a", "b", "a", "c", "b"] {
        e.record_viewer(&r, &UserId(u.into()))
            .await
            .expect("record");
    }
    assert_eq!(e.unique_viewers(&r).await.expect("unique"), 3);
}

pub async fn concurrent_publishers_get_unique_offsets(e: Arc<dyn Engine>) {
    let r = room();
    e.create_room(&r, "").await.expect("create");
    let mut sub = e.subscribe(&r).await.expect("subscribe");
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let e = e.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let mut last = 0;
                for i in 0..100u64 {
                    let p = e
                        .publish(&r, body(t * 1000 + i), None)
                        .await
                        .expect("publish");
                    // One publisher's events land in its publish order.
                    assert!(p.offset.0 > last);
                    last = p.offset.0;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
    for i in 1..=800u64 {
        let p = tokio::time::timeout(Duration::from_secs(5), sub.rx.recv())
            .await
            .expect("delivered")
            .expect("no lag");
        assert_eq!(p.offset, Offset(i));
    }
}

fn held(id: &str, at: u64) -> ferry_client::protocol::translation::HeldComment {
    use ferry_client::protocol::translation::{HeldComment, RuleRef, Severity};
    HeldComment {
        id: id.into(),
        user: UserRef {
            id: UserId("v1".into()),
            name: "Viewer".into(),
            role: Role::Viewer,
        },
        text: "any lottery tickets?".into(),
        lang: Some("en".into()),
        translations: [("zh".to_owned(), "有彩票吗？".to_owned())].into(),
        rule: RuleRef {
            market: "ae".into(),
            rule: "gambling".into(),
            severity: Severity::Yellow,
            label: "Gambling is held for review".into(),
        },
        at,
    }
}

/// The moderator queue is room state: holding and resolving are atomic with their events,
/// a comment is resolved at most once, and the queue is bounded by the engine's `max_held`
/// (engines under test are built with at least 3 and at most 1000).
pub async fn held_comments_resolve_once(e: &dyn Engine) {
    let r = room();
    e.create_room(&r, "").await.expect("create");
    e.publish(
        &r,
        body(1),
        Some(StateChange::Hold(Box::new(held("h1", 10)))),
    )
    .await
    .expect("hold h1");
    e.publish(
        &r,
        body(2),
        Some(StateChange::Hold(Box::new(held("h2", 20)))),
    )
    .await
    .expect("hold h2");
    let rec = e.room(&r).await.expect("room").expect("exists");
    let ids: Vec<&str> = rec.held.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["h1", "h2"]);
    assert_eq!(rec.held[0], held("h1", 10));
    let top = rec.offset;
    e.publish(&r, body(3), Some(StateChange::Resolve("h1".into())))
        .await
        .expect("resolve h1");
    // A second resolution of the same comment is refused and publishes nothing.
    assert_eq!(
        e.publish(&r, body(4), Some(StateChange::Resolve("h1".into())))
            .await,
        Err(EngineError::NotHeld)
    );
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert_eq!(rec.offset, Offset(top.0 + 1));
    assert_eq!(rec.held.len(), 1);
    // Fill the queue: the engine refuses holds past its bound.
    let mut n = 3u64;
    loop {
        match e
            .publish(
                &r,
                body(n),
                Some(StateChange::Hold(Box::new(held(&format!("h{n}"), n)))),
            )
            .await
        {
            Ok(_) => n += 1,
            Err(EngineError::HeldQueueFull) => break,
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(n < 2000, "the moderator queue is unbounded");
    }
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert!(rec.held.len() >= 3);
    assert_eq!(rec.held.len() as u64, n - 2);
}

pub async fn audience_sums_nodes(e: &dyn Engine) {
    use std::collections::BTreeMap;
    let r = room();
    e.create_room(&r, "").await.expect("create");
    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    };
    e.report_audience(&r, "node-a", &counts(&[("lang:en", 3), ("lang:zh", 1)]))
        .await
        .expect("report a");
    e.report_audience(&r, "node-b", &counts(&[("lang:en", 2), ("market:ae", 1)]))
        .await
        .expect("report b");
    assert_eq!(
        e.audience(&r).await.expect("audience"),
        counts(&[("lang:en", 5), ("lang:zh", 1), ("market:ae", 1)])
    );
    // A new report replaces the node's previous one; an empty one withdraws it.
    e.report_audience(&r, "node-a", &counts(&[("lang:ja", 1)]))
        .await
        .expect("report a again");
    e.report_audience(&r, "node-b", &BTreeMap::new())
        .await
        .expect("withdraw b");
    assert_eq!(
        e.audience(&r).await.expect("audience"),
        counts(&[("lang:ja", 1)])
    );
}

/// The live lease: held by the node that claimed it last, renewed only by its holder, shown
/// while current; a stream is ended once, by its holder or by one lapse sweep, never by a
/// node that lost the lease.
pub async fn live_leases_lapse_and_end_once(e: &dyn Engine) {
    let r = room();
    e.create_room(&r, "").await.expect("create");
    let a = LiveHost {
        node: "node-a".into(),
        url: "http://a.example".into(),
    };
    let b = LiveHost {
        node: "node-b".into(),
        url: "http://b.example".into(),
    };
    let ttl = Duration::from_millis(400);
    e.claim_live(&r, &a, ttl).await.expect("claim");
    e.publish(&r, body(1), Some(StateChange::Live(true)))
        .await
        .expect("live");
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert!(rec.live);
    assert_eq!(rec.live_host.as_ref(), Some(&a));
    // Current: not lapsed, and only the holder renews.
    assert_eq!(
        e.publish(&r, body(2), Some(StateChange::LiveLapsed)).await,
        Err(EngineError::LiveElsewhere)
    );
    assert!(e.renew_live(&r, "node-a", ttl).await.expect("renew"));
    assert!(!e.renew_live(&r, "node-b", ttl).await.expect("renew b"));
    assert!(!e.lapsed_live(100).await.expect("lapsed").contains(&r));
    // The publisher moves to node b: node a can no longer end the stream.
    e.claim_live(&r, &b, ttl).await.expect("claim b");
    assert!(!e.renew_live(&r, "node-a", ttl).await.expect("renew a"));
    assert_eq!(
        e.publish(
            &r,
            body(3),
            Some(StateChange::LiveEnd {
                node: "node-a".into()
            })
        )
        .await,
        Err(EngineError::LiveElsewhere)
    );
    assert_eq!(
        e.room(&r).await.expect("room").expect("exists").live_host,
        Some(b)
    );
    // Node b stops renewing (crashed): the lease lapses, the room is found by the sweep and
    // ended once.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert!(rec.live, "live until the lapse is published");
    assert_eq!(rec.live_host, None, "a lapsed lease names no host");
    assert!(e.lapsed_live(100).await.expect("lapsed").contains(&r));
    e.publish(&r, body(4), Some(StateChange::LiveLapsed))
        .await
        .expect("lapse");
    assert_eq!(
        e.publish(&r, body(5), Some(StateChange::LiveLapsed)).await,
        Err(EngineError::NotLive),
        "a second sweeper publishes nothing"
    );
    assert!(!e.lapsed_live(100).await.expect("lapsed").contains(&r));
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert!(!rec.live);
    assert_eq!(rec.live_host, None);
    assert!(!e
        .renew_live(&r, "node-b", ttl)
        .await
        .expect("renew after lapse"));
    // A normal end by the holder; a second end is refused.
    e.claim_live(&r, &a, ttl).await.expect("claim again");
    e.publish(&r, body(6), Some(StateChange::Live(true)))
        .await
        .expect("live again");
    e.publish(
        &r,
        body(7),
        Some(StateChange::LiveEnd {
            node: "node-a".into(),
        }),
    )
    .await
    .expect("end");
    assert_eq!(
        e.publish(
            &r,
            body(8),
            Some(StateChange::LiveEnd {
                node: "node-a".into()
            })
        )
        .await,
        Err(EngineError::NotLive)
    );
    let rec = e.room(&r).await.expect("room").expect("exists");
    assert!(!rec.live);
    assert_eq!(rec.live_host, None);
    assert!(!e.lapsed_live(100).await.expect("lapsed").contains(&r));
    // A room closed while live: its lease is not renewed any more, and the sweep drops it
    // (at most one refused lapse on the way) instead of finding it again forever.
    e.claim_live(&r, &a, ttl).await.expect("claim before close");
    e.publish(&r, body(9), Some(StateChange::Live(true)))
        .await
        .expect("live before close");
    e.publish(&r, body(10), Some(StateChange::Close))
        .await
        .expect("close");
    assert!(!e.renew_live(&r, "node-a", ttl).await.expect("renew closed"));
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    if e.lapsed_live(100).await.expect("lapsed").contains(&r) {
        assert_eq!(
            e.publish(&r, body(11), Some(StateChange::LiveLapsed)).await,
            Err(EngineError::RoomClosed)
        );
    }
    assert!(
        !e.lapsed_live(100).await.expect("lapsed").contains(&r),
        "a closed room leaves the sweep's list"
    );
}
