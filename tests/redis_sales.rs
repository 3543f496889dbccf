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
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn options(urls: Vec<String>, cluster: bool) -> RedisSaleStoreOptions {
    RedisSaleStoreOptions {
        urls,
        cluster,
        prefix: "sales-test".into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
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
    opts.command_timeout = Duration::from_millis(500);
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
                        if n % 2 == 0 {
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
