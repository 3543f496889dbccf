//! The Redis sale store against real Redis: the shared conformance suite on a standalone
//! server and on a 3-master Redis Cluster, and a Redis SIGKILL + restart (AOF,
//! `appendfsync always`) in the middle of a sale.

mod common;

use common::redis::{RedisCluster, RedisServer};
use ferry::commerce::redis::{RedisSaleStore, RedisSaleStoreOptions};
use ferry::commerce::{
    Bought, BuyRefusal, BuyRequest, OrderEventKind, SaleRecord, SaleStore, Settled, StoreError,
};
use ferry::protocol::commerce::{Money, ProductId, ReservationId, ReservationState, SaleId};
use ferry::protocol::{RoomId, UserId};
use ferry::redis_conn::RedisTarget;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options for tests. The command timeout is generous: the conformance suite fires 10,000
/// buys from 2,000 tasks at once through a debug build on a small shared machine, where a
/// reply can sit behind thousands of others in the client for seconds. The restart and
/// pause tests set short timeouts of their own.
fn options(urls: Vec<String>, cluster: bool) -> RedisSaleStoreOptions {
    RedisSaleStoreOptions {
        redis: RedisTarget {
            urls,
            cluster,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(10),
        },
        prefix: "sales-test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_standalone_redis() {
    let redis = RedisServer::start(false);
    let store = Arc::new(
        RedisSaleStore::connect(options(vec![redis.url()], false))
            .await
            .expect("connect"),
    );
    ferry::commerce::conformance::run_all(|| {
        let store = store.clone();
        async move { store as Arc<dyn SaleStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let store = Arc::new(
        RedisSaleStore::connect(options(cluster.urls(), true))
            .await
            .expect("connect"),
    );
    ferry::commerce::conformance::run_all(|| {
        let store = store.clone();
        async move { store as Arc<dyn SaleStore> }
    })
    .await;
    // The sales really are spread over the shards (each sale's keys on its own slot).
    let masters_with_sales = cluster
        .nodes()
        .iter()
        .filter(|n| n.cli(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(
        masters_with_sales >= 2,
        "sales landed on {masters_with_sales} shard(s)"
    );
}

fn sale(id: &str, quantity: u64, limit: u32) -> SaleRecord {
    SaleRecord {
        id: SaleId(id.into()),
        room: RoomId("room1".into()),
        product: ProductId("basket".into()),
        quantity,
        price_cny: 5900,
        per_buyer_limit: limit,
        starts_at: 1_000,
        ends_at: 10_000_000,
        hold_ms: 60_000,
        markets: ["us".to_owned()].into(),
        ended_at: None,
        created_at: 0,
    }
}

fn buy_req(buyer: &str, key: &str, id: &str, now: u64) -> BuyRequest {
    BuyRequest {
        buyer: UserId(buyer.into()),
        market: "us".into(),
        quantity: 1,
        key: key.into(),
        now,
        new_id: ReservationId(id.into()),
        amount_display: Money {
            currency: "USD".into(),
            minor: 818,
        },
    }
}

/// What a buyer was told, as recorded by the test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Told {
    Reserved,
    Confirmed,
}

/// Redis is SIGKILLed while buyers keep buying and paying, then restarted from its AOF:
/// every reservation a buyer was told about, and every confirmation, is still there; the
/// counters still conserve the quantity; the order stream lists them; buying goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_loses_no_answered_reservation() {
    let mut redis = RedisServer::start(true);
    let mut opts = options(vec![redis.url()], false);
    opts.redis.command_timeout = Duration::from_millis(500);
    let store = Arc::new(RedisSaleStore::connect(opts).await.expect("connect"));
    let id = SaleId("restart".into());
    store
        .create_sale(sale(&id.0, 100_000, 1))
        .await
        .expect("create sale");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..20u32 {
        let (store, id, stop) = (store.clone(), id.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut told: HashMap<ReservationId, Told> = HashMap::new();
            let mut errors = 0u32;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000 {
                n += 1;
                let buyer = format!("t{t}-b{n}");
                let rid = format!("r-{buyer}");
                match store.buy(&id, buy_req(&buyer, "k", &rid, 2_000)).await {
                    Ok(Ok(Bought::New(r, _))) => {
                        told.insert(r.id.clone(), Told::Reserved);
                        // Every other buyer pays at once.
                        if n.is_multiple_of(2) {
                            match store.confirm(&id, &r.id, "pay", 3_000).await {
                                Ok(Some(Settled::Now(c, _))) => {
                                    assert_eq!(c.state, ReservationState::Confirmed);
                                    told.insert(r.id, Told::Confirmed);
                                }
                                Ok(other) => panic!("unexpected confirm answer {other:?}"),
                                Err(StoreError::Unavailable(_)) => errors += 1,
                                Err(e) => panic!("confirm failed: {e}"),
                            }
                        }
                    }
                    Ok(Ok(Bought::Replayed(_))) => panic!("fresh keys never replay"),
                    Ok(Err(BuyRefusal::SoldOut { .. })) => break,
                    Ok(Err(other)) => panic!("unexpected refusal {other:?}"),
                    Err(StoreError::Unavailable(_)) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("buy failed: {e}"),
                }
            }
            (told, errors)
        }));
    }
    // Let the sale get going, then kill Redis mid-sale and bring it back from its AOF.
    let started = Instant::now();
    loop {
        let snap = store.sale(&id).await.expect("sale").expect("exists");
        if snap.remaining <= 99_700 || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| {
        redis.kill();
        std::thread::sleep(Duration::from_millis(300));
        redis.restart();
    });
    // Buying resumes after the restart; let it run a little, then stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut told: HashMap<ReservationId, Told> = HashMap::new();
    let mut errors = 0;
    for t in tasks {
        let (mine, e) = t.await.expect("task");
        told.extend(mine);
        errors += e;
    }
    assert!(errors > 0, "the kill was noticed by some buyers");

    let deadline = Instant::now() + Duration::from_secs(10);
    let snap = loop {
        match store.sale(&id).await {
            Ok(s) => break s.expect("the sale survived the restart"),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("Redis did not come back: {e}"),
        }
    };
    assert_eq!(
        snap.remaining + snap.reserved + snap.confirmed,
        100_000,
        "conservation: {snap:?}"
    );
    let told_confirmed = told.values().filter(|t| **t == Told::Confirmed).count() as u64;
    assert!(told_confirmed > 0 && told.len() as u64 > told_confirmed);
    // Reservations answered and not cancelled, at least; any extra was applied by Redis
    // while its answer was lost (the buyer's retry with the same key would replay it).
    assert!(snap.reserved + snap.confirmed >= told.len() as u64);
    assert!(snap.confirmed >= told_confirmed);
    for (rid, t) in &told {
        let r = store
            .reservation(&id, rid)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("answered reservation {rid} lost"));
        match t {
            Told::Confirmed => assert_eq!(r.state, ReservationState::Confirmed, "{rid}"),
            Told::Reserved => assert_ne!(r.state, ReservationState::Released, "{rid}"),
        }
    }
    // The order stream lists every answered reservation and confirmation, and agrees with
    // the counters.
    let events = store.all_orders(&id).await.expect("orders");
    let mut last: BTreeMap<ReservationId, (OrderEventKind, u32)> = BTreeMap::new();
    for e in &events {
        last.insert(e.reservation.id.clone(), (e.kind, e.reservation.quantity));
    }
    for (rid, t) in &told {
        let (kind, _) = last
            .get(rid)
            .unwrap_or_else(|| panic!("{rid} missing from the order stream"));
        if *t == Told::Confirmed {
            assert_eq!(*kind, OrderEventKind::Confirmed, "{rid}");
        }
    }
    let units = |k: OrderEventKind| {
        last.values()
            .filter(|(kind, _)| *kind == k)
            .map(|(_, q)| u64::from(*q))
            .sum::<u64>()
    };
    assert_eq!(units(OrderEventKind::Reserved), snap.reserved);
    assert_eq!(units(OrderEventKind::Confirmed), snap.confirmed);
    // Still selling after the restart, same rules.
    let after = store
        .buy(&id, buy_req("late", "k", "r-late", 3_000))
        .await
        .expect("store answers");
    assert!(matches!(after, Ok(Bought::New(..))), "{after:?}");
}

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// The same random sequence of steps against the embedded store and the Redis store gives
/// the same answers, step by step: the scripts implement the book's rules exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_answers_exactly_like_the_embedded_store() {
    use ferry::commerce::memory::MemorySaleStore;
    use ferry::commerce::ReleaseReason;
    let redis = RedisServer::start(false);
    let red = RedisSaleStore::connect(options(vec![redis.url()], false))
        .await
        .expect("connect");
    let mem = MemorySaleStore::in_memory();
    let stores: [&dyn SaleStore; 2] = [&mem, &red];
    let mut sales = Vec::new();
    for (n, (quantity, limit)) in [(5u64, 1u32), (8, 2), (3, 3)].into_iter().enumerate() {
        let mut s = sale(&format!("diff{n}"), quantity, limit);
        s.ends_at = 1_500_000;
        s.hold_ms = 5_000;
        s.markets = ["us".to_owned(), "hk".to_owned()].into();
        for st in stores {
            st.create_sale(s.clone()).await.expect("create");
        }
        sales.push(s.id);
    }
    let missing = SaleId("never-created".into());
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let mut seen = std::collections::HashSet::new();
    let mut now = 500u64;
    let mut ids: Vec<(SaleId, ReservationId)> = Vec::new();
    let buyers = ["a", "b", "c", "d", "e", "f"];
    let keys = ["k1", "k2", "k3"];
    let markets = ["us", "hk", "ae"];
    let groups = ["erp", "audit"];
    for step in 0..3_000u32 {
        now = match rng.below(20) {
            0 => now.saturating_sub(rng.below(3_000)),
            1 => now + rng.below(20_000),
            _ => now + rng.below(300),
        };
        let sale_id = if rng.below(50) == 0 {
            missing.clone()
        } else {
            rng.pick(&sales)
        };
        let what = rng.below(100);
        let ctx = format!("step {step} (now {now}, sale {sale_id}, op {what})");
        if what < 45 {
            let (buyer, key) = (rng.pick(&buyers), rng.pick(&keys));
            let mut req = buy_req(buyer, key, &format!("r{step}"), now);
            req.quantity = rng.below(4) as u32;
            req.market = rng.pick(&markets).to_owned();
            let m = mem.buy(&sale_id, req.clone()).await;
            let r = red.buy(&sale_id, req.clone()).await;
            assert_eq!(m, r, "{ctx}");
            seen.insert(match &m {
                Ok(Ok(Bought::New(..))) => "new",
                Ok(Ok(Bought::Replayed(..))) => "replayed",
                Ok(Err(BuyRefusal::KeyConflict)) => "conflict",
                Ok(Err(BuyRefusal::BadQuantity)) => "bad quantity",
                Ok(Err(BuyRefusal::NotStarted { .. })) => "not started",
                Ok(Err(BuyRefusal::Ended)) => "ended",
                Ok(Err(BuyRefusal::NotInMarket)) => "not in market",
                Ok(Err(BuyRefusal::LimitReached { .. })) => "limit",
                Ok(Err(BuyRefusal::SoldOut { .. })) => "sold out",
                Err(StoreError::SaleNotFound) => "buy: no sale",
                Err(_) => "buy: error",
            });
            if let Ok(Ok(Bought::New(..))) = m {
                ids.push((sale_id.clone(), req.new_id.clone()));
            }
        } else if what < 70 && !ids.is_empty() {
            let (s, id) = rng.pick(&ids);
            let id = if rng.below(10) == 0 {
                ReservationId("unknown".into())
            } else {
                id
            };
            if rng.below(2) == 0 {
                let pay = format!("pay\"{step}");
                let m = mem.confirm(&s, &id, &pay, now).await;
                assert_eq!(m, red.confirm(&s, &id, &pay, now).await, "{ctx}");
                seen.insert(match &m {
                    Ok(Some(Settled::Now(r, _))) if r.state == ReservationState::Confirmed => {
                        "confirmed"
                    }
                    Ok(Some(Settled::Now(..))) => "paid too late",
                    Ok(Some(Settled::Already(..))) => "already ended",
                    Ok(None) => "no reservation",
                    Err(_) => "confirm: error",
                });
            } else {
                let reason = rng.pick(&[
                    ReleaseReason::Cancelled,
                    ReleaseReason::PaymentFailed,
                    ReleaseReason::Expired,
                ]);
                assert_eq!(
                    mem.release(&s, &id, reason, now).await,
                    red.release(&s, &id, reason, now).await,
                    "{ctx}"
                );
            }
            assert_eq!(
                mem.reservation(&s, &id).await,
                red.reservation(&s, &id).await,
                "{ctx}"
            );
        } else if what < 80 {
            let max = rng.below(4) as usize;
            let m = mem.expire_due(&sale_id, now, max).await;
            assert_eq!(m, red.expire_due(&sale_id, now, max).await, "{ctx}");
            if m.is_ok_and(|v| !v.is_empty()) {
                seen.insert("expired");
            }
        } else if what < 92 {
            let group = rng.pick(&groups).to_owned();
            let count = rng.below(5) as usize;
            let m = mem.read_orders(&sale_id, &group, count, 1_000, now).await;
            let r = red.read_orders(&sale_id, &group, count, 1_000, now).await;
            let shape = |x: &Result<Vec<ferry::commerce::DeliveredOrderEvent>, StoreError>| {
                x.as_ref()
                    .map(|v| {
                        v.iter()
                            .map(|d| (d.deliveries, d.event.clone()))
                            .collect::<Vec<_>>()
                    })
                    .map_err(Clone::clone)
            };
            assert_eq!(shape(&m), shape(&r), "{ctx}");
            if m.as_ref().is_ok_and(|v| v.iter().any(|d| d.deliveries > 1)) {
                seen.insert("redelivered");
            }
            if let (Ok(m), Ok(r)) = (m, r) {
                // Acknowledge the same events (by position) in both stores, or leave them
                // pending for a redelivery.
                if rng.below(2) == 0 {
                    let pick: Vec<usize> = (0..m.len()).filter(|_| rng.below(2) == 0).collect();
                    let mi: Vec<String> = pick.iter().map(|i| m[*i].id.clone()).collect();
                    let ri: Vec<String> = pick.iter().map(|i| r[*i].id.clone()).collect();
                    assert_eq!(
                        mem.ack_orders(&sale_id, &group, &mi).await,
                        red.ack_orders(&sale_id, &group, &ri).await,
                        "{ctx}"
                    );
                }
            }
        } else if what < 96 {
            assert_eq!(mem.sale(&sale_id).await, red.sale(&sale_id).await, "{ctx}");
        } else if what < 98 {
            let markets: std::collections::BTreeSet<String> = markets
                .iter()
                .filter(|_| rng.below(2) == 0)
                .map(|m| (*m).to_owned())
                .collect();
            assert_eq!(
                mem.set_sale_markets(&sale_id, markets.clone()).await,
                red.set_sale_markets(&sale_id, markets).await,
                "{ctx}"
            );
        } else if rng.below(4) == 0 {
            assert_eq!(
                mem.end_sale(&sale_id, now).await,
                red.end_sale(&sale_id, now).await,
                "{ctx}"
            );
        }
    }
    let mut expected = vec![
        "new",
        "replayed",
        "conflict",
        "bad quantity",
        "not started",
        "ended",
        "not in market",
        "limit",
        "sold out",
        "buy: no sale",
        "confirmed",
        "paid too late",
        "already ended",
        "no reservation",
        "expired",
        "redelivered",
    ];
    expected.retain(|e| !seen.contains(e));
    assert!(
        expected.is_empty(),
        "the sequence never produced {expected:?}"
    );
    for s in &sales {
        assert_eq!(mem.sale(s).await, red.sale(s).await);
        assert_eq!(mem.all_orders(s).await, red.all_orders(s).await);
    }
}

/// While Redis does not answer (SIGSTOP), calls fail with `Unavailable` within the command
/// timeout instead of hanging, and fail fast once the health check noticed; `ready()` says
/// so. When Redis answers again the store serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_unavailable_not_a_hang() {
    let redis = RedisServer::start(false);
    let mut opts = options(vec![redis.url()], false);
    opts.redis.command_timeout = Duration::from_millis(300);
    let store = RedisSaleStore::connect(opts).await.expect("connect");
    let id = SaleId("paused".into());
    store.create_sale(sale(&id.0, 10, 1)).await.expect("create");
    assert!(store.ready().await);
    redis.pause();
    let t = Instant::now();
    let out = store.buy(&id, buy_req("a", "k", "r-a", 2_000)).await;
    assert!(matches!(out, Err(StoreError::Unavailable(_))), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!store.ready().await);
    let t = Instant::now();
    assert!(matches!(
        store.sale(&id).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "fails fast: {:?}",
        t.elapsed()
    );
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The buy sent while Redis was stopped may have been applied on resume: the buyer's
    // retry with the same key replays it.
    let again = loop {
        match store.buy(&id, buy_req("a", "k", "r-a2", 2_000)).await {
            Ok(out) => break out,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    match again {
        Ok(Bought::New(r, _)) => assert_eq!(r.id.0, "r-a2"),
        Ok(Bought::Replayed(r)) => assert_eq!(r.id.0, "r-a"),
        other => panic!("unexpected {other:?}"),
    }
    let snap = store.sale(&id).await.expect("sale").expect("exists");
    assert_eq!((snap.remaining, snap.reserved), (9, 1));
}

/// A Redis written by an earlier version (one `<p>:sales` list, announcements as 7-day claim
/// keys) is folded into the listings once, at connect: sales are listed in their rooms, the
/// running one stays live with its start recorded as announced, the one that ended is
/// recorded as announced and not live; nothing is announced twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_of_an_earlier_version_are_migrated_once() {
    use ferry::commerce::Announcement;
    let redis = RedisServer::start(false);
    let mut opts = options(vec![redis.url()], false);
    opts.prefix = "legacy".into();
    let store = RedisSaleStore::connect(opts.clone())
        .await
        .expect("connect");
    let now = ferry::unix_ms();
    let mut running = sale("running", 10, 1);
    running.ends_at = now + 3_600_000;
    let mut over = sale("over", 10, 1);
    over.starts_at = now - 7_200_000;
    over.ends_at = now - 3_600_000;
    for s in [&running, &over] {
        store.create_sale(s.clone()).await.expect("create");
    }
    drop(store);
    // Make it look like an earlier version wrote it.
    let cli = |args: &[&str]| redis.cli(args);
    for key in [
        "legacy:{sales}:all",
        "legacy:{sales}:live",
        "legacy:{sales}:room:room1",
        "legacy:{sales}:migrated",
    ] {
        cli(&["del", key]);
    }
    cli(&["zadd", "legacy:sales", "1", "running", "2", "over"]);
    cli(&["set", "legacy:claim:started:running", "1", "px", "600000"]);
    let store = RedisSaleStore::connect(opts.clone())
        .await
        .expect("connect");
    let listed: Vec<SaleId> = store
        .room_sales(&RoomId("room1".into()), None, 10)
        .await
        .expect("room sales")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(listed, vec![over.id.clone(), running.id.clone()]);
    let live: Vec<SaleId> = store
        .live_sales(0, 10)
        .await
        .expect("live")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(live, vec![running.id.clone()]);
    let r = store
        .sale(&running.id)
        .await
        .expect("sale")
        .expect("exists");
    assert_eq!((r.announced.started, r.announced.ended), (true, false));
    let o = store.sale(&over.id).await.expect("sale").expect("exists");
    assert!(o.announced.all());
    assert!(!store
        .claim_announcement(&running.id, Announcement::Started, 1_000, now)
        .await
        .expect("claim"));
    // Once only: a later start does not migrate again (the retired sale stays retired).
    store.retire_sale(&running.id).await.expect("retire");
    drop(store);
    let store = RedisSaleStore::connect(opts).await.expect("connect");
    assert!(store.live_sales(0, 10).await.expect("live").is_empty());
}
