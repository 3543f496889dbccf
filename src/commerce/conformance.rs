//! The conformance suite every [`SaleStore`] must pass, written once and run against the
//! embedded store (unit tests) and the Redis store on a real Redis and a real Redis Cluster
//! (integration tests).

use super::{
    Bought, BuyRefusal, BuyRequest, Product, ReleaseReason, SaleRecord, SaleStore, Settled,
    StoreError,
};
use ferry_client::protocol::commerce::{Money, ProductId, ReservationId, ReservationState, SaleId};
use ferry_client::protocol::{RoomId, UserId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

static NEXT: AtomicU64 = AtomicU64::new(1);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
}

/// Run every check against stores built by `factory`.
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn SaleStore>> + Send,
{
    let s = factory().await;
    products_round_trip(&*s).await;
    sales_are_created_once(&*s).await;
    buys_follow_the_rules(&*s).await;
    keys_replay(&*s).await;
    reservations_end_exactly_once(&*s).await;
    expiry_returns_stock(&*s).await;
    order_events_are_consumed_with_acks(&*s).await;
    claims_are_exclusive(&*s).await;
    announcements_are_leased_then_recorded(&*s).await;
    sales_are_listed_per_room_and_while_live(&*s).await;
    concurrent_buyers_never_oversell(s.clone()).await;
    confirmations_race_the_expiry_sweep(s.clone()).await;
}

fn product(id: &str) -> Product {
    Product {
        id: ProductId(id.into()),
        title: "藤编篮".into(),
        description: "Hand-woven rattan basket".into(),
        image_url: "https://example.com/basket.jpg".into(),
        lang: "zh".into(),
        price_cny: 8900,
        stock: 500,
        markets: [
            ("us".to_owned(), true),
            ("hk".to_owned(), true),
            ("ae".to_owned(), false),
        ]
        .into(),
        merchant: "m1".into(),
        glossary: None,
        translations: Default::default(),
    }
}

/// A sale open from t=1,000 to t=1,000,000 with a 60 s hold.
fn sale(quantity: u64, limit: u32) -> SaleRecord {
    SaleRecord {
        id: SaleId(unique("s")),
        room: RoomId("room1".into()),
        product: ProductId("basket".into()),
        quantity,
        price_cny: 5900,
        per_buyer_limit: limit,
        starts_at: 1_000,
        ends_at: 1_000_000,
        hold_ms: 60_000,
        markets: ["us".to_owned(), "hk".to_owned()].into(),
        ended_at: None,
        created_at: 0,
    }
}

fn req(buyer: &str, key: &str, quantity: u32, now: u64) -> BuyRequest {
    BuyRequest {
        buyer: UserId(buyer.into()),
        market: "us".into(),
        quantity,
        key: key.into(),
        now,
        new_id: ReservationId(unique("r")),
        amount_display: Money {
            currency: "USD".into(),
            minor: 818 * i64::from(quantity),
        },
    }
}

async fn new_sale(s: &dyn SaleStore, quantity: u64, limit: u32) -> SaleId {
    let sale = sale(quantity, limit);
    let id = sale.id.clone();
    s.create_sale(sale).await.expect("create sale");
    id
}

async fn buy(s: &dyn SaleStore, sale: &SaleId, r: BuyRequest) -> Result<Bought, BuyRefusal> {
    s.buy(sale, r).await.expect("store answers")
}

fn new_reservation(b: Result<Bought, BuyRefusal>) -> super::Reservation {
    match b {
        Ok(Bought::New(r, _)) => r,
        other => panic!("expected a new reservation, got {other:?}"),
    }
}

pub async fn products_round_trip(s: &dyn SaleStore) {
    let id = unique("p");
    let mut p = product(&id);
    s.put_product(p.clone()).await.expect("put");
    assert_eq!(s.product(&p.id).await.expect("get"), Some(p.clone()));
    p.markets.insert("us".into(), false);
    s.put_product(p.clone()).await.expect("update");
    assert_eq!(s.product(&p.id).await.expect("get"), Some(p.clone()));
    assert!(s
        .products()
        .await
        .expect("list")
        .iter()
        .any(|x| x.id == p.id));
    assert_eq!(
        s.product(&ProductId(unique("missing"))).await.expect("get"),
        None
    );
}

pub async fn sales_are_created_once(s: &dyn SaleStore) {
    let sale = sale(10, 2);
    s.create_sale(sale.clone()).await.expect("create");
    assert_eq!(
        s.create_sale(sale.clone()).await,
        Err(StoreError::SaleExists)
    );
    let snap = s.sale(&sale.id).await.expect("get").expect("exists");
    assert_eq!(snap.sale, sale);
    assert_eq!((snap.remaining, snap.reserved, snap.confirmed), (10, 0, 0));
    assert_eq!(snap.version, 0);
    assert!(s.sales().await.expect("list").contains(&sale.id));
    assert_eq!(s.sale(&SaleId(unique("nope"))).await.expect("get"), None);
    let ended = s.end_sale(&sale.id, 5_000).await.expect("end");
    assert_eq!(ended.sale.ended_at, Some(5_000));
    assert_eq!(ended.version, 1, "ending early is a change");
    let again = s.end_sale(&sale.id, 6_000).await.expect("end again");
    assert_eq!((again.sale.ended_at, again.version), (Some(5_000), 1));
    assert_eq!(
        buy(s, &sale.id, req("a", "k", 1, 5_000)).await,
        Err(BuyRefusal::Ended)
    );
}

pub async fn buys_follow_the_rules(s: &dyn SaleStore) {
    let id = new_sale(s, 3, 2).await;
    assert_eq!(
        buy(s, &id, req("a", "k0", 1, 999)).await,
        Err(BuyRefusal::NotStarted { starts_at: 1_000 })
    );
    assert_eq!(
        buy(s, &id, req("a", "k0", 1, 1_000_000)).await,
        Err(BuyRefusal::Ended)
    );
    let mut foreign = req("a", "k0", 1, 2_000);
    foreign.market = "ae".into();
    assert_eq!(buy(s, &id, foreign).await, Err(BuyRefusal::NotInMarket));
    let r = new_reservation(buy(s, &id, req("a", "k1", 2, 2_000)).await);
    assert_eq!(r.state, ReservationState::Reserved);
    assert_eq!(r.amount_cny, 11_800);
    assert_eq!(r.deadline, 62_000);
    assert_eq!(r.amount_display.minor, 1636);
    assert_eq!(
        buy(s, &id, req("a", "k2", 1, 2_000)).await,
        Err(BuyRefusal::LimitReached { limit: 2, held: 2 })
    );
    assert_eq!(
        buy(s, &id, req("b", "k1", 2, 2_000)).await,
        Err(BuyRefusal::SoldOut { remaining: 1 })
    );
    new_reservation(buy(s, &id, req("b", "k1", 1, 2_000)).await);
    assert_eq!(
        buy(s, &id, req("c", "k1", 1, 2_000)).await,
        Err(BuyRefusal::SoldOut { remaining: 0 })
    );
    let snap = s.sale(&id).await.expect("get").expect("exists");
    assert_eq!((snap.remaining, snap.reserved, snap.confirmed), (0, 3, 0));
    // Markets can be switched off mid-sale.
    let id = new_sale(s, 3, 2).await;
    s.set_sale_markets(&id, ["hk".to_owned()].into())
        .await
        .expect("markets");
    assert_eq!(
        buy(s, &id, req("a", "k", 1, 2_000)).await,
        Err(BuyRefusal::NotInMarket)
    );
}

pub async fn keys_replay(s: &dyn SaleStore) {
    let id = new_sale(s, 5, 2).await;
    let first = new_reservation(buy(s, &id, req("a", "click", 1, 2_000)).await);
    match buy(s, &id, req("a", "click", 1, 2_500)).await {
        Ok(Bought::Replayed(r)) => assert_eq!(r, first),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(
        buy(s, &id, req("a", "click", 2, 2_500)).await,
        Err(BuyRefusal::KeyConflict)
    );
    let snap = s.sale(&id).await.expect("get").expect("exists");
    assert_eq!(snap.remaining, 4);
    // After confirmation the key still answers with the (now confirmed) reservation.
    s.confirm(&id, &first.id, "pay-1", 3_000)
        .await
        .expect("confirm");
    match buy(s, &id, req("a", "click", 1, 4_000)).await {
        Ok(Bought::Replayed(r)) => assert_eq!(r.state, ReservationState::Confirmed),
        other => panic!("expected a replay, got {other:?}"),
    }
}

pub async fn reservations_end_exactly_once(s: &dyn SaleStore) {
    let id = new_sale(s, 5, 5).await;
    let r = new_reservation(buy(s, &id, req("a", "k", 2, 2_000)).await);
    match s
        .confirm(&id, &r.id, "pay-7", 3_000)
        .await
        .expect("confirm")
    {
        Some(Settled::Now(c, event)) => {
            assert_eq!(c.state, ReservationState::Confirmed);
            assert_eq!(c.payment_ref.as_deref(), Some("pay-7"));
            assert_eq!(event.kind, super::OrderEventKind::Confirmed);
        }
        other => panic!("expected a confirmation, got {other:?}"),
    }
    match s.confirm(&id, &r.id, "pay-7", 3_001).await.expect("again") {
        Some(Settled::Already(c)) => assert_eq!(c.state, ReservationState::Confirmed),
        other => panic!("expected already confirmed, got {other:?}"),
    }
    match s
        .release(&id, &r.id, ReleaseReason::Cancelled, 3_002)
        .await
        .expect("release")
    {
        Some(Settled::Already(c)) => assert_eq!(c.state, ReservationState::Confirmed),
        other => panic!("expected already confirmed, got {other:?}"),
    }
    let r2 = new_reservation(buy(s, &id, req("b", "k", 1, 2_000)).await);
    match s
        .release(&id, &r2.id, ReleaseReason::Cancelled, 2_500)
        .await
        .expect("release")
    {
        Some(Settled::Now(c, _)) => {
            assert_eq!(c.state, ReservationState::Released);
            assert_eq!(c.release_reason, Some(ReleaseReason::Cancelled));
        }
        other => panic!("expected a release, got {other:?}"),
    }
    match s
        .confirm(&id, &r2.id, "late", 2_600)
        .await
        .expect("confirm")
    {
        Some(Settled::Already(c)) => assert_eq!(c.state, ReservationState::Released),
        other => panic!("expected already released, got {other:?}"),
    }
    // Payment after the deadline releases instead.
    let r3 = new_reservation(buy(s, &id, req("c", "k", 1, 2_000)).await);
    match s
        .confirm(&id, &r3.id, "late", 62_001)
        .await
        .expect("confirm")
    {
        Some(Settled::Now(c, _)) => {
            assert_eq!(c.state, ReservationState::Released);
            assert_eq!(c.release_reason, Some(ReleaseReason::Expired));
        }
        other => panic!("expected a release, got {other:?}"),
    }
    assert_eq!(
        s.confirm(&id, &ReservationId(unique("nope")), "x", 2_000)
            .await
            .expect("confirm"),
        None
    );
    let snap = s.sale(&id).await.expect("get").expect("exists");
    assert_eq!((snap.remaining, snap.reserved, snap.confirmed), (3, 0, 2));
    // One change per order event; replays and already-ended answers change nothing.
    assert_eq!(snap.version, 6);
    let got = s
        .reservation(&id, &r.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.state, ReservationState::Confirmed);
}

pub async fn expiry_returns_stock(s: &dyn SaleStore) {
    let id = new_sale(s, 2, 2).await;
    let a = new_reservation(buy(s, &id, req("a", "k", 2, 2_000)).await);
    assert_eq!(
        buy(s, &id, req("b", "k", 1, 2_000)).await,
        Err(BuyRefusal::SoldOut { remaining: 0 })
    );
    assert!(s
        .expire_due(&id, 62_000, 100)
        .await
        .expect("sweep")
        .is_empty());
    let released = s.expire_due(&id, 62_001, 100).await.expect("sweep");
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].id, a.id);
    assert_eq!(released[0].release_reason, Some(ReleaseReason::Expired));
    assert!(s
        .expire_due(&id, 62_002, 100)
        .await
        .expect("sweep")
        .is_empty());
    new_reservation(buy(s, &id, req("b", "k", 2, 62_003)).await);
}

pub async fn order_events_are_consumed_with_acks(s: &dyn SaleStore) {
    let id = new_sale(s, 10, 10).await;
    let a = new_reservation(buy(s, &id, req("a", "k", 1, 2_000)).await);
    s.confirm(&id, &a.id, "p", 2_100).await.expect("confirm");
    let b = new_reservation(buy(s, &id, req("b", "k", 1, 2_200)).await);
    s.release(&id, &b.id, ReleaseReason::Cancelled, 2_300)
        .await
        .expect("release");
    let all = s.all_orders(&id).await.expect("all");
    let kinds: Vec<_> = all.iter().map(|e| e.kind).collect();
    use super::OrderEventKind as K;
    assert_eq!(
        kinds,
        vec![
            K::Reserved,
            K::Confirmed,
            K::Reserved,
            K::Released(ReleaseReason::Cancelled)
        ]
    );
    let first = s
        .read_orders(&id, "erp", 3, 30_000, 10_000)
        .await
        .expect("read");
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|d| d.deliveries == 1));
    // Ack the first two; the third stays pending and is redelivered after the timeout.
    let ids: Vec<String> = first.iter().take(2).map(|d| d.id.clone()).collect();
    assert_eq!(s.ack_orders(&id, "erp", &ids).await.expect("ack"), 2);
    let next = s
        .read_orders(&id, "erp", 10, 30_000, 10_001)
        .await
        .expect("read");
    assert_eq!(next.len(), 1, "only the never-delivered 4th: {next:?}");
    assert_eq!(next[0].event.kind, K::Released(ReleaseReason::Cancelled));
    let later = s
        .read_orders(&id, "erp", 10, 30_000, 50_000)
        .await
        .expect("read");
    let mut redelivered: Vec<_> = later.iter().map(|d| (d.id.clone(), d.deliveries)).collect();
    redelivered.sort();
    let mut expected = vec![(first[2].id.clone(), 2), (next[0].id.clone(), 2)];
    expected.sort();
    assert_eq!(redelivered, expected);
    // Another group sees everything from the start.
    let other = s
        .read_orders(&id, "audit", 10, 30_000, 50_000)
        .await
        .expect("read");
    assert_eq!(other.len(), 4);
}

pub async fn claims_are_exclusive(s: &dyn SaleStore) {
    let what = unique("claim:");
    assert!(s.claim(&what, 1_000, 10_000).await.expect("claim"));
    assert!(!s.claim(&what, 1_000, 10_500).await.expect("claim"));
}

/// One caller at a time holds an announcement's lease; a lapsed lease may be taken again
/// (the announcement was not made); a recorded announcement is never claimed again, and the
/// sale's snapshot says so.
pub async fn announcements_are_leased_then_recorded(s: &dyn SaleStore) {
    use super::Announcement::{Ended, Started};
    let id = new_sale(s, 5, 1).await;
    assert!(s
        .claim_announcement(&id, Started, 1_000, 10_000)
        .await
        .expect("claim"));
    assert!(!s
        .claim_announcement(&id, Started, 1_000, 10_500)
        .await
        .expect("claim"));
    // The holder failed to publish: once the lease lapses, another caller may try.
    assert!(s
        .claim_announcement(&id, Started, 1_000, 11_001)
        .await
        .expect("claim"));
    // Leases are per announcement.
    assert!(s
        .claim_announcement(&id, Ended, 1_000, 11_001)
        .await
        .expect("claim"));
    s.mark_announced(&id, Started).await.expect("mark");
    s.mark_announced(&id, Started)
        .await
        .expect("marking twice is fine");
    let far = 11_001 + 30 * 86_400_000;
    assert!(!s
        .claim_announcement(&id, Started, 1_000, far)
        .await
        .expect("claim"));
    let snap = s.sale(&id).await.expect("sale").expect("exists");
    assert_eq!(
        (snap.announced.started, snap.announced.ended),
        (true, false)
    );
    assert!(s
        .claim_announcement(&id, Ended, 1_000, far)
        .await
        .expect("claim"));
    s.mark_announced(&id, Ended).await.expect("mark");
    assert!(s
        .sale(&id)
        .await
        .expect("sale")
        .expect("exists")
        .announced
        .all());
    let nope = SaleId(unique("nope"));
    assert_eq!(
        s.claim_announcement(&nope, Started, 1_000, 0).await,
        Err(StoreError::SaleNotFound)
    );
    assert_eq!(
        s.mark_announced(&nope, Ended).await,
        Err(StoreError::SaleNotFound)
    );
}

/// A room's sales come newest first, a page at a time; the live list holds sales until they
/// are retired, oldest first after a position.
pub async fn sales_are_listed_per_room_and_while_live(s: &dyn SaleStore) {
    let (room, other) = (RoomId(unique("lr")), RoomId(unique("lr")));
    let mut ids = Vec::new();
    for n in 0..5 {
        let mut sale = sale(5, 1);
        sale.room = if n == 2 { other.clone() } else { room.clone() };
        ids.push(sale.id.clone());
        s.create_sale(sale).await.expect("create");
    }
    let page = s.room_sales(&room, None, 3).await.expect("page");
    let listed: Vec<&SaleId> = page.iter().map(|(_, id)| id).collect();
    assert_eq!(listed, vec![&ids[4], &ids[3], &ids[1]], "newest first");
    assert!(page.windows(2).all(|w| w[0].0 > w[1].0));
    let rest = s.room_sales(&room, Some(page[2].0), 3).await.expect("page");
    let listed: Vec<&SaleId> = rest.iter().map(|(_, id)| id).collect();
    assert_eq!(listed, vec![&ids[0]]);
    let theirs = s.room_sales(&other, None, 10).await.expect("page");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].1, ids[2]);
    assert!(s
        .room_sales(&RoomId(unique("empty")), None, 10)
        .await
        .expect("page")
        .is_empty());
    // Live: every new sale, in creation order, paged after a position.
    let live = |all: Vec<(u64, SaleId)>| -> Vec<SaleId> {
        all.into_iter()
            .map(|(_, id)| id)
            .filter(|id| ids.contains(id))
            .collect()
    };
    let first = rest[0].0; // ids[0], the first of these sales
    let from_mine = s.live_sales(first - 1, 100_000).await.expect("live");
    assert!(
        from_mine.windows(2).all(|w| w[0].0 < w[1].0),
        "oldest first"
    );
    assert_eq!(live(from_mine.clone()), ids);
    let after_two = s.live_sales(from_mine[1].0, 2).await.expect("live");
    assert_eq!(after_two.len(), 2);
    assert_eq!(after_two[0].0, from_mine[2].0);
    s.retire_sale(&ids[1]).await.expect("retire");
    s.retire_sale(&ids[1]).await.expect("retire twice");
    let mut expected = ids.clone();
    expected.remove(1);
    assert_eq!(
        live(s.live_sales(first - 1, 100_000).await.expect("live")),
        expected
    );
    // Retiring takes a sale off the sweep's list only: it is still listed in its room.
    assert_eq!(s.room_sales(&room, None, 10).await.expect("page").len(), 4);
    assert!(s.sale(&ids[1]).await.expect("sale").is_some());
}

/// 2,000 buyers × 5 attempts (double clicks included) racing for 100 units, limit 2.
pub async fn concurrent_buyers_never_oversell(s: Arc<dyn SaleStore>) {
    let id = new_sale(&*s, 100, 2).await;
    let mut tasks = Vec::new();
    for b in 0..2_000u32 {
        let (s, id) = (s.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for attempt in 0..5u32 {
                // Attempts 0 and 1 share a key: a double click.
                let key = format!("k{}", attempt.max(1));
                let out = s
                    .buy(&id, req(&format!("b{b}"), &key, 1, 2_000))
                    .await
                    .expect("store answers");
                mine.push(out);
            }
            (b, mine)
        }));
    }
    let mut reserved: HashMap<u32, HashSet<ReservationId>> = HashMap::new();
    let mut sold_out = 0;
    for t in tasks {
        let (b, outcomes) = t.await.expect("task");
        for o in outcomes {
            match o {
                Ok(Bought::New(r, _)) | Ok(Bought::Replayed(r)) => {
                    reserved.entry(b).or_default().insert(r.id);
                }
                Err(BuyRefusal::SoldOut { .. }) => sold_out += 1,
                Err(BuyRefusal::LimitReached { .. }) => {}
                Err(other) => panic!("unexpected refusal {other:?}"),
            }
        }
    }
    let total: usize = reserved.values().map(HashSet::len).sum();
    assert_eq!(total, 100, "exactly the quantity is reserved");
    assert!(reserved.values().all(|r| r.len() <= 2), "per-buyer limit");
    assert!(sold_out > 0);
    let snap = s.sale(&id).await.expect("get").expect("exists");
    assert_eq!((snap.remaining, snap.reserved), (0, 100));
    // The order stream agrees with what clients were told.
    let events = s.all_orders(&id).await.expect("orders");
    let in_stream: BTreeMap<ReservationId, u32> = events
        .iter()
        .map(|e| (e.reservation.id.clone(), e.reservation.quantity))
        .collect();
    assert_eq!(in_stream.len(), 100);
    let told: HashSet<ReservationId> = reserved.into_values().flatten().collect();
    assert_eq!(told, in_stream.keys().cloned().collect());
}

/// Invariants of a sale's snapshot at one instant: never oversold, and conservation.
fn check_snapshot(snap: &super::SaleSnapshot) -> Result<(), String> {
    let q = snap.sale.quantity;
    if snap.reserved + snap.confirmed > q {
        return Err(format!("oversold: {snap:?}"));
    }
    if snap.remaining + snap.reserved + snap.confirmed != q {
        return Err(format!("conservation: {snap:?}"));
    }
    Ok(())
}

/// Invariants of an order stream at one instant: every reservation has exactly one
/// `reserved` event before at most one ending event.
fn check_orders(events: &[super::OrderEvent]) -> Result<(), String> {
    use super::OrderEventKind as K;
    let mut seen: HashMap<&ReservationId, (u32, u32)> = HashMap::new();
    for e in events {
        let (reserved, ended) = seen.entry(&e.reservation.id).or_default();
        match e.kind {
            K::Reserved => *reserved += 1,
            K::Confirmed | K::Released(_) => *ended += 1,
        }
        if *reserved != 1 || *ended > 1 {
            return Err(format!(
                "{}: {reserved} reserved, {ended} endings so far",
                e.reservation.id
            ));
        }
    }
    Ok(())
}

/// Payment confirmations race the expiry sweep at the payment deadline, on real concurrent
/// tasks: 300 reservations share one deadline; two in three get a confirmation stamped a few
/// ms either side of it, while four sweepers whose clocks have just passed it release what
/// is due.
/// While this runs, a watcher checks the sale's counters and its order stream over and
/// over. Afterwards: each reservation ended exactly once (exactly one caller was told
/// `Settled::Now`), its one ending order event is the one that caller got, and its final
/// state is that outcome.
pub async fn confirmations_race_the_expiry_sweep(s: Arc<dyn SaleStore>) {
    use std::sync::atomic::AtomicBool;
    const N: u64 = 300;
    let id = new_sale(&*s, N, 1).await;
    let mut ids = Vec::new();
    for b in 0..N {
        let r = new_reservation(buy(&*s, &id, req(&format!("racer{b}"), "k", 1, 2_000)).await);
        ids.push(r.id);
    }
    let deadline = 62_000u64; // 2_000 + the 60 s hold
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (s, id, running) = (s.clone(), id.clone(), running.clone());
        tokio::spawn(async move {
            let mut checks = 0u32;
            let mut last_version = 0;
            while running.load(Relaxed) || checks < 3 {
                let snap = s.sale(&id).await.expect("sale").expect("exists");
                check_snapshot(&snap).unwrap_or_else(|e| panic!("during the race: {e}"));
                assert!(snap.version >= last_version, "the version went back");
                last_version = snap.version;
                if checks.is_multiple_of(4) {
                    let events = s.all_orders(&id).await.expect("orders");
                    check_orders(&events).unwrap_or_else(|e| panic!("during the race: {e}"));
                }
                checks += 1;
                tokio::task::yield_now().await;
            }
            checks
        })
    };
    // Everyone starts at once.
    let paying: Vec<(usize, &ReservationId)> =
        ids.iter().enumerate().filter(|(n, _)| n % 3 != 0).collect();
    let start = Arc::new(tokio::sync::Barrier::new(paying.len() + 4));
    let mut confirmers = Vec::new();
    for (n, rid) in paying {
        let (s, id, rid, start) = (s.clone(), id.clone(), rid.clone(), start.clone());
        // deadline − 3 ..= deadline + 3: some in time, some too late.
        let now = deadline - 3 + (n as u64) % 7;
        confirmers.push(tokio::spawn(async move {
            start.wait().await;
            let out = s
                .confirm(&id, &rid, &format!("pay-{rid}"), now)
                .await
                .expect("confirm");
            (rid, now, out)
        }));
    }
    let mut sweepers = Vec::new();
    for k in 0..4u64 {
        let (s, id, start) = (s.clone(), id.clone(), start.clone());
        sweepers.push(tokio::spawn(async move {
            start.wait().await;
            let mut released = Vec::new();
            for step in 0..40u64 {
                let now = deadline + 1 + (step + k) / 10;
                released.extend(s.expire_due(&id, now, 3).await.expect("sweep"));
                tokio::task::yield_now().await;
            }
            released
        }));
    }
    let mut winner: HashMap<ReservationId, (&'static str, ReservationState)> = HashMap::new();
    let mut lost_to_the_sweep = 0u32;
    let mut settle = |rid: &ReservationId, how: &'static str, state: ReservationState| {
        let before = winner.insert(rid.clone(), (how, state));
        assert!(before.is_none(), "{rid} ended twice: {before:?} and {how}");
    };
    for t in confirmers {
        let (rid, now, out) = t.await.expect("confirmer");
        match out {
            Some(Settled::Now(r, event)) => {
                assert_eq!(event.reservation, r);
                if now > deadline {
                    assert_eq!(r.state, ReservationState::Released, "paid too late");
                    assert_eq!(r.release_reason, Some(ReleaseReason::Expired));
                } else {
                    assert_eq!(r.state, ReservationState::Confirmed);
                }
                settle(&rid, "confirm", r.state);
            }
            // The sweep got there first.
            Some(Settled::Already(r)) => {
                assert_eq!(r.state, ReservationState::Released, "{rid}");
                assert_eq!(r.release_reason, Some(ReleaseReason::Expired));
                lost_to_the_sweep += 1;
            }
            None => panic!("{rid} vanished"),
        }
    }
    for t in sweepers {
        for r in t.await.expect("sweeper") {
            assert_eq!(r.state, ReservationState::Released);
            settle(&r.id, "sweep", r.state);
        }
    }
    // The sweep keeps going until nothing is left (confirmations before the deadline that
    // lost no race are confirmed; everything else lapses).
    for r in s
        .expire_due(&id, deadline + 10, 1_000)
        .await
        .expect("sweep")
    {
        settle(&r.id, "sweep", r.state);
    }
    running.store(false, Relaxed);
    let checks = watcher.await.expect("watcher");
    assert!(checks >= 3);
    assert_eq!(winner.len() as u64, N, "every reservation ended");
    let confirmed = winner
        .values()
        .filter(|(_, st)| *st == ReservationState::Confirmed)
        .count() as u64;
    assert!(confirmed > 0, "some confirmations won");
    assert!(
        winner.values().any(|(how, _)| *how == "sweep"),
        "some expiries won"
    );
    tracing::debug!(lost_to_the_sweep, confirmed, "confirm/expiry race");
    let events = s.all_orders(&id).await.expect("orders");
    check_orders(&events).expect("after the race");
    use super::OrderEventKind as K;
    for e in events.iter().filter(|e| e.kind != K::Reserved) {
        let (_, state) = winner[&e.reservation.id];
        assert_eq!(e.reservation.state, state, "{}", e.reservation.id);
    }
    assert_eq!(
        events.len() as u64,
        2 * N,
        "one reserved and one ending event each"
    );
    for rid in &ids {
        let r = s
            .reservation(&id, rid)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(r.state, winner[rid].1, "{rid}");
    }
    let snap = s.sale(&id).await.expect("sale").expect("exists");
    check_snapshot(&snap).expect("after the race");
    assert_eq!(
        (snap.reserved, snap.confirmed, snap.remaining),
        (0, confirmed, N - confirmed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::memory::MemorySaleStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_conforms() {
        run_all(|| async { Arc::new(MemorySaleStore::in_memory()) as Arc<dyn SaleStore> }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journaled_store_conforms_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j").join("commerce.journal");
        let store = Arc::new(MemorySaleStore::open(&path).expect("open"));
        run_all({
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store as Arc<dyn SaleStore> }
            }
        })
        .await;
        let sales = store.sales().await.expect("sales");
        let mut before = Vec::new();
        for id in &sales {
            before.push((
                store.sale(id).await.expect("sale"),
                store.all_orders(id).await.expect("orders"),
            ));
        }
        drop(store);
        // A torn last line (crash mid-write) is dropped on replay.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("append");
            f.write_all(b"{\"t\":\"reservation\",\"reserv")
                .expect("write");
        }
        let reopened = MemorySaleStore::open(&path).expect("reopen");
        let mut after = Vec::new();
        for id in &sales {
            after.push((
                reopened.sale(id).await.expect("sale"),
                reopened.all_orders(id).await.expect("orders"),
            ));
        }
        assert_eq!(before, after);
        // Consumer-group progress survived too: "erp" acked 2 of the 4 events of that sale.
        let again = reopened
            .read_orders(&sales[6], "erp", 10, 30_000, 1_000_000)
            .await
            .expect("read");
        assert_eq!(again.len(), 2, "{again:?}");
    }
}
