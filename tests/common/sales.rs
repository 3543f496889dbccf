//! Flash-sale scenarios shared by the embedded-engine and Redis-engine tests: the buy burst
//! of 2,000 SDK clients, payment webhooks racing the expiry sweep, buyers over HTTP that keep
//! buying and paying while a server or Redis is killed, and the audit that proves nothing
//! answered was lost.

use super::*;
use ferry::commerce_api::sign_webhook;
use ferry::protocol::commerce::SaleSpec;
use ferry::protocol::ErrorCode;
use ferry_client::{ClientError, ClientOptions};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// PUT the rattan basket (¥89, sold in us and hk) as merchant `host`.
pub async fn put_basket(addr: SocketAddr, cfg: &Config, room: &str) {
    let body = json!({"title": "藤编篮", "price_cny": 8900, "stock": 1000,
        "markets": {"us": true, "hk": true, "mo": false}})
    .to_string();
    let token = token_for(cfg, room, "host", Role::Host);
    let (status, text) = http(
        addr,
        "PUT",
        "/api/products/basket",
        Some(&token),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

pub fn spec(quantity: u64, limit: u32, starts_in_secs: Option<u64>, hold_secs: u64) -> SaleSpec {
    SaleSpec {
        product: "basket".into(),
        quantity,
        price_cny: 5900,
        per_buyer_limit: limit,
        starts_at: None,
        starts_in_secs,
        duration_secs: 300,
        hold_secs,
    }
}

/// `GET /api/sales/{sale}/orders/all` as an admin.
pub async fn audit(addr: SocketAddr, cfg: &Config, sale: &str) -> Value {
    let (status, text) = http(
        addr,
        "GET",
        &format!("/api/sales/{sale}/orders/all"),
        Some(&token_for(cfg, "*", "ops", Role::Admin)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("json")
}

/// Invariants of an audit taken while the sale changes: its counters (one atomic snapshot)
/// conserve the quantity and never oversell, and in its order stream every reservation has
/// one `reserved` event before at most one ending one. (The stream and the counters are read
/// one after the other, so they are compared only by [`check_audit`], once things are still.)
pub fn check_audit_live(audit: &Value) -> Result<(), String> {
    check_audit_parts(audit, false)
}

/// [`check_audit_live`], and the counters agree with the order stream: what it holds as
/// reserved and as confirmed, unit for unit.
pub fn check_audit(audit: &Value) -> Result<(), String> {
    check_audit_parts(audit, true)
}

fn check_audit_parts(audit: &Value, cross_check: bool) -> Result<(), String> {
    let n = |k: &str| audit[k].as_u64().unwrap_or(u64::MAX);
    let (q, remaining, reserved, confirmed) =
        (n("quantity"), n("remaining"), n("reserved"), n("confirmed"));
    if reserved + confirmed > q || remaining + reserved + confirmed != q {
        return Err(format!(
            "counters: {remaining} remaining + {reserved} reserved + {confirmed} confirmed vs {q}"
        ));
    }
    let mut per: HashMap<&str, (u32, u32, &str)> = HashMap::new();
    let empty = Vec::new();
    for e in audit["events"].as_array().unwrap_or(&empty) {
        let id = e["reservation"]["id"].as_str().unwrap_or("?");
        let entry = per.entry(id).or_insert((0, 0, ""));
        match e["type"].as_str() {
            Some("reserved") => entry.0 += 1,
            Some(kind) => {
                entry.1 += 1;
                entry.2 = kind;
            }
            None => return Err(format!("an event without a type: {e}")),
        }
        if entry.0 != 1 || entry.1 > 1 {
            return Err(format!("{id}: {} reserved, {} endings", entry.0, entry.1));
        }
    }
    let units = |kind: &str, ended: bool| -> u64 {
        audit["events"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter(|e| {
                let id = e["reservation"]["id"].as_str().unwrap_or("?");
                let (_, endings, last) = per[id];
                e["type"] == "reserved" && (endings > 0) == ended && (!ended || last == kind)
            })
            .map(|e| e["reservation"]["quantity"].as_u64().unwrap_or(0))
            .sum()
    };
    if cross_check && (units("", false) != reserved || units("confirmed", true) != confirmed) {
        return Err(format!(
            "the order stream holds {} reserved and {} confirmed units, the counters {reserved} and {confirmed}",
            units("", false),
            units("confirmed", true)
        ));
    }
    Ok(())
}

/// Ids of the reservations whose events include one of `kind`.
pub fn ids_with(audit: &Value, kind: &str) -> HashSet<String> {
    audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["reservation"]["id"].as_str().expect("id").to_owned())
        .collect()
}

/// What buyers were told, collected from many tasks.
#[derive(Default)]
pub struct Told(Mutex<(HashSet<String>, HashSet<String>)>);

impl Told {
    pub fn reserved(&self, id: String) {
        if let Ok(mut g) = self.0.lock() {
            g.0.insert(id);
        }
    }
    pub fn confirmed(&self, id: String) {
        if let Ok(mut g) = self.0.lock() {
            g.1.insert(id);
        }
    }
    /// (answered reservations, confirmed ones).
    pub fn take(&self) -> (HashSet<String>, HashSet<String>) {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Check that nothing a buyer was told is missing after a crash: every answered reservation
/// is in the order stream and was not released (holds outlast the test), every confirmed
/// order is there as confirmed, and the audit's invariants hold.
pub fn nothing_answered_was_lost(audit: &Value, told: &Told) {
    let (reserved, confirmed) = told.take();
    let in_stream = ids_with(audit, "reserved");
    let released = ids_with(audit, "released");
    for id in reserved.iter().chain(&confirmed) {
        assert!(in_stream.contains(id), "answered reservation {id} lost");
        assert!(!released.contains(id), "answered reservation {id} released");
    }
    let confirmed_in_stream = ids_with(audit, "confirmed");
    for id in &confirmed {
        assert!(
            confirmed_in_stream.contains(id),
            "confirmed order {id} lost"
        );
    }
    check_audit(audit).expect("audit invariants");
}

/// Sign and send a payment webhook; `None` if the server could not be reached.
pub async fn send_webhook(addr: SocketAddr, event: &Value) -> Option<(u16, String)> {
    let text = event.to_string();
    let sig = sign_webhook(WEBHOOK_SECRET, ferry::unix_ms() / 1000, text.as_bytes());
    tokio::time::timeout(
        Duration::from_secs(3),
        try_http_with(
            addr,
            "POST",
            "/api/payments/webhook",
            None,
            &[("Ferry-Signature", &sig)],
            Some(&text),
        ),
    )
    .await
    .ok()?
    .ok()
}

/// Buyers over HTTP: `buyers` of them, `per_buyer` buys each with fresh keys (every fifth
/// one paid at once through the webhook). With `retry`, a buy or webhook that fails (503, a
/// dropped connection) is retried with the same key or event until it is answered or the
/// buyers are stopped; without, a buyer stops at the first failure (its server died).
pub struct HttpBuyers<'a> {
    pub addr: SocketAddr,
    pub cfg: &'a Config,
    pub room: &'a str,
    pub sale: &'a str,
    pub buyers: u32,
    pub per_buyer: u32,
    pub retry: bool,
}

/// Start [`HttpBuyers`], recording what each buyer was told in `told`, until `stop`.
pub fn http_buyers(
    how: HttpBuyers<'_>,
    told: Arc<Told>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let HttpBuyers {
        addr,
        cfg,
        room,
        sale,
        buyers,
        per_buyer,
        retry,
    } = how;
    (0..buyers)
        .map(|b| {
            let (told, stop) = (told.clone(), stop.clone());
            let token = token_for(cfg, room, &format!("hb{b}"), Role::Viewer);
            let path = format!("/api/sales/{sale}/buy");
            tokio::spawn(async move {
                for i in 0..per_buyer {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let key = format!("k{i}");
                    let id = loop {
                        let answer = tokio::time::timeout(
                            Duration::from_secs(2),
                            try_http_with(
                                addr,
                                "POST",
                                &path,
                                Some(&token),
                                &[("Idempotency-Key", &key)],
                                Some("{}"),
                            ),
                        )
                        .await;
                        match answer {
                            Ok(Ok((200 | 201, text))) => {
                                let v: Value = serde_json::from_str(&text).expect("json");
                                break v["reservation"]["id"].as_str().expect("id").to_owned();
                            }
                            Ok(Ok((409, text))) if text.contains("sold_out") => return,
                            _ if retry && !stop.load(Ordering::Relaxed) => {
                                tokio::time::sleep(Duration::from_millis(30)).await
                            }
                            _ => return,
                        }
                    };
                    if i % 5 != 0 {
                        told.reserved(id);
                        continue;
                    }
                    let event = json!({"id": format!("evt-{id}"), "type": "payment.succeeded",
                        "reservation": id, "payment_ref": "p"});
                    loop {
                        match send_webhook(addr, &event).await {
                            Some((200, text)) if text.contains("\"confirmed\"") => {
                                told.confirmed(id);
                                break;
                            }
                            Some((200, text)) => panic!("unexpected webhook answer {text}"),
                            _ if retry && !stop.load(Ordering::Relaxed) => {
                                tokio::time::sleep(Duration::from_millis(30)).await
                            }
                            // Not confirmed as far as anyone was told; it was reserved.
                            _ => {
                                told.reserved(id);
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Room pushes slowed for the burst tests: 2,000 members in one room get every stock
/// update, joined/left aggregate and viewer count, and on a shared 2-core machine that
/// fan-out (not the buys) would dominate the test's time. The buys, their answers and the
/// order stream are what the burst checks.
pub fn quiet_room(c: &mut Config) {
    c.rooms.viewer_count_interval = Duration::from_secs(60);
    c.rooms.aggregate_interval = Duration::from_secs(5);
    c.commerce.stock_update_interval = Duration::from_secs(5);
    c.commerce.social_proof_interval = Duration::from_secs(60);
}

/// The burst: 2,000 SDK clients make 10,000 buy attempts (double clicks included)
/// for 100 units, limit 2, all pressing Buy at the same instant on the server's clock.
/// Exactly 100 are reserved, nobody holds more than the limit, every other attempt is told
/// sold out (or, for a buyer already holding 2, limit reached), and the order stream lists
/// exactly the reservations clients were told about.
pub async fn ten_thousand_buys(addr: SocketAddr, cfg: &Config, room: &str) {
    put_basket(addr, cfg, room).await;
    let url = format!("ws://{addr}/ws");
    let options = |user: &str, role: Role| {
        let mut o = ClientOptions::new(url.clone(), token_for(cfg, room, user, role));
        o.min_backoff = Duration::from_millis(20);
        o.max_backoff = Duration::from_millis(200);
        o
    };
    let (host, _e) = ferry_client::Client::connect(options("host", Role::Host));
    host.join(room).await.expect("host joins");
    let sale = host
        .start_sale(room, spec(100, 2, Some(3), 300))
        .await
        .expect("sale");
    let mut tasks = Vec::new();
    for b in 0..2_000u32 {
        let mut o = options(&format!("b{b}"), Role::Viewer);
        o.read_buffer_bytes = 4096;
        o.event_buffer = 64;
        // One clock sample each: the server is on this machine, and 8,000 extra pings would
        // cost as much as the buys.
        o.clock_burst = 0;
        // A shared 2-core machine: 2,000 joins may queue for a while.
        o.request_timeout = Duration::from_secs(30);
        let (sale_id, starts_at, room) = (sale.id.clone(), sale.starts_at, room.to_owned());
        tasks.push(tokio::spawn(async move {
            let (c, events) = ferry_client::Client::connect(o);
            drop(events);
            c.join(room.as_str()).await.expect("join");
            // Everyone presses Buy at the same instant on the server's clock.
            let wait = c.ms_until(starts_at).max(0.0);
            tokio::time::sleep(Duration::from_millis(wait as u64 + 1)).await;
            let mut outcomes = Vec::new();
            for attempt in 0..5u32 {
                // A double click on the first press: attempts 0 and 1 share a key.
                let key = format!("press-{}", attempt.max(1));
                loop {
                    // A clock estimate off by a few ms can press just before the start, and a
                    // busy store can answer `unavailable`: the server says how long to wait,
                    // and the same key is retried (a timed-out buy that did reserve is then
                    // answered with its reservation).
                    match c.buy(room.as_str(), sale_id.clone(), 1, key.clone()).await {
                        Err(ClientError::Server(e))
                            if e.code == ErrorCode::SaleNotStarted.code()
                                || e.code == ErrorCode::Unavailable.code() =>
                        {
                            let wait = e.retry_after_ms.unwrap_or(10);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        other => {
                            outcomes.push(other);
                            break;
                        }
                    }
                }
            }
            c.close();
            (b, outcomes)
        }));
    }
    let mut held: HashMap<u32, HashSet<String>> = HashMap::new();
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut at_limit_refusals: Vec<u32> = Vec::new();
    for t in tasks {
        let (b, outcomes) = t.await.expect("buyer task");
        for o in outcomes {
            let kind = match o {
                Ok(r) => {
                    held.entry(b).or_default().insert(r.reservation.id.0);
                    if r.replayed {
                        "replayed"
                    } else {
                        "reserved"
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::SoldOut.code()) => "sold_out",
                Err(e) if e.code() == Some(ErrorCode::LimitReached.code()) => {
                    at_limit_refusals.push(b);
                    "limit_reached"
                }
                Err(e) => panic!("unexpected answer {e:?}"),
            };
            *counts.entry(kind).or_default() += 1;
        }
    }
    let reservations: usize = held.values().map(HashSet::len).sum();
    // Exactly 100 distinct reservations. (Most are answered `reserved`; a buy whose answer
    // was `unavailable` and that had reserved is answered `replayed` on its retry.)
    assert_eq!(reservations, 100, "{counts:?}");
    assert!(
        counts.get("reserved").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );
    assert!(held.values().all(|r| r.len() <= 2), "per-buyer limit");
    // Only a buyer who holds the limit is told so; everyone else is told sold out.
    assert!(
        at_limit_refusals
            .iter()
            .all(|b| held.get(b).map_or(0, HashSet::len) == 2),
        "limit_reached for a buyer under the limit"
    );
    assert_eq!(
        counts.values().sum::<u64>(),
        10_000,
        "every attempt answered: {counts:?}"
    );
    // The order stream agrees: 100 reservations, the very ones clients were told about.
    let audit = audit(addr, cfg, &sale.id.0).await;
    assert_eq!(
        (audit["remaining"].as_u64(), audit["reserved"].as_u64()),
        (Some(0), Some(100))
    );
    let told: HashSet<String> = held.into_values().flatten().collect();
    assert_eq!(ids_with(&audit, "reserved"), told);
    check_audit(&audit).expect("audit invariants");
}

/// Payment webhooks race the server's expiry sweep at the deadline: 120 reservations with a
/// 1 s hold, each paid by a webhook sent between 40 ms before and 40 ms after its deadline,
/// while the sweep (every 50 ms) releases lapsed holds. A watcher checks the audit's
/// invariants throughout. Afterwards each reservation ended exactly once, and what its
/// webhook answered (confirmed, or released with a refund) is its final state.
pub async fn webhooks_race_the_sweep(s: &TestServer, room: &str) {
    put_basket(s.addr(), &s.config, room).await;
    let (host, _e) = s.client(room, "host", Role::Host);
    host.join(room).await.expect("host joins");
    const N: u32 = 120;
    let sale = host
        .start_sale(room, spec(u64::from(N), 1, None, 1))
        .await
        .expect("sale");
    let path = format!("/api/sales/{}/buy", sale.id);
    let mut reservations = Vec::new();
    for b in 0..N {
        let token = token_for(&s.config, room, &format!("w{b}"), Role::Viewer);
        let (status, text) = http_with(
            s.addr(),
            "POST",
            &path,
            Some(&token),
            &[("Idempotency-Key", "k")],
            Some("{}"),
        )
        .await;
        assert_eq!(status, 201, "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        let r = &v["reservation"];
        reservations.push((
            r["id"].as_str().expect("id").to_owned(),
            r["deadline"].as_u64().expect("deadline"),
        ));
    }
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (addr, cfg, id, running) = (
            s.addr(),
            s.config.clone(),
            sale.id.0.clone(),
            running.clone(),
        );
        tokio::spawn(async move {
            let mut checks = 0u32;
            while running.load(Ordering::Relaxed) || checks < 2 {
                let a = audit(addr, &cfg, &id).await;
                check_audit_live(&a).unwrap_or_else(|e| panic!("during the race: {e}"));
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            checks
        })
    };
    let mut payers = Vec::new();
    for (n, (id, deadline)) in reservations.iter().enumerate() {
        // The server runs in this process: its clock is ours.
        let at = deadline - 40 + (n as u64 * 13) % 81;
        let (addr, id) = (s.addr(), id.clone());
        payers.push(tokio::spawn(async move {
            let wait = at.saturating_sub(ferry::unix_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let event = json!({"id": format!("evt-{id}"), "type": "payment.succeeded",
                "reservation": id, "payment_ref": format!("pay-{id}")});
            let (status, text) = send_webhook(addr, &event).await.expect("webhook answered");
            assert_eq!(status, 200, "{text}");
            let v: Value = serde_json::from_str(&text).expect("json");
            (
                id,
                v["status"].as_str().expect("status").to_owned(),
                v["refund_required"] == true,
            )
        }));
    }
    let mut answered: HashMap<String, String> = HashMap::new();
    for p in payers {
        let (id, status, refund) = p.await.expect("payer");
        assert_eq!(
            refund,
            status == "released",
            "{id}: refund only for a lapsed hold"
        );
        answered.insert(id, status);
    }
    // Let the sweep release whatever is left (nothing should be: every one was paid).
    let deadline = tokio::time::Instant::now() + WAIT;
    let final_audit = loop {
        let a = audit(s.addr(), &s.config, &sale.id.0).await;
        if a["reserved"] == 0 {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "holds left: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    running.store(false, Ordering::Relaxed);
    assert!(watcher.await.expect("watcher") >= 2);
    check_audit(&final_audit).expect("after the race");
    let confirmed = ids_with(&final_audit, "confirmed");
    let released = ids_with(&final_audit, "released");
    assert!(
        confirmed.is_disjoint(&released),
        "a reservation ended twice"
    );
    for (id, status) in &answered {
        let ended = if confirmed.contains(id) {
            "confirmed"
        } else if released.contains(id) {
            "released"
        } else {
            panic!("{id} never ended")
        };
        assert_eq!(
            ended, status,
            "{id}: the webhook's answer is the final state"
        );
    }
    assert!(
        !confirmed.is_empty() && !released.is_empty(),
        "both sides won some"
    );
    assert_eq!(
        final_audit["confirmed"].as_u64(),
        Some(confirmed.len() as u64)
    );
}

/// Wait until the node at `addr` answers `/readyz` with 200.
pub async fn ready(addr: SocketAddr) {
    tokio::time::timeout(WAIT * 2, async {
        loop {
            let (status, _) = match TcpStream::connect(addr).await {
                Ok(_) => http(addr, "GET", "/readyz", None, None).await,
                Err(_) => (0, String::new()),
            };
            if status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("server up")
}

/// The real binary, killed with SIGKILL mid-sale while 20 buyers keep buying over HTTP and
/// paying every fifth reservation: after a restart (`spawn` starts `ferry serve` on `addr`
/// with the same storage), every answered reservation and every confirmed order is there
/// and `quantity = remaining + reserved + confirmed`.
pub async fn sigkill_mid_sale(addr: SocketAddr, spawn: impl Fn() -> std::process::Child) {
    let mut child = spawn();
    ready(addr).await;
    let cfg = test_config();
    put_basket(addr, &cfg, "shop").await;
    let mut opts = ClientOptions::new(
        format!("ws://{addr}/ws"),
        token_for(&cfg, "shop", "host", Role::Host),
    );
    opts.max_reconnect_attempts = Some(0);
    let (host, _he) = ferry_client::Client::connect(opts);
    host.join("shop").await.expect("join");
    let sale = host
        .start_sale("shop", spec(1_000, 1_000, None, 300))
        .await
        .expect("sale");
    host.close();
    let told = Arc::new(Told::default());
    let stop = Arc::new(AtomicBool::new(false));
    let how = HttpBuyers {
        addr,
        cfg: &cfg,
        room: "shop",
        sale: &sale.id.0,
        buyers: 20,
        per_buyer: 1_000,
        retry: false,
    };
    let buyers = http_buyers(how, told.clone(), stop);
    // Kill once enough was answered to prove something, well before the 1,000 units sell out
    // (on a quiet machine 20 buyers sell them in a fraction of a second, so a fixed delay
    // could find the sale sold out and leave nothing to buy after the restart).
    tokio::time::timeout(WAIT * 2, async {
        loop {
            let (reserved, confirmed) = told.take();
            if reserved.len() + confirmed.len() >= 100 && !confirmed.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("buyers answered before the kill");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = child.wait();
    for b in buyers {
        let _ = b.await;
    }
    let (reserved, confirmed) = told.take();
    assert!(
        reserved.len() + confirmed.len() > 20 && !confirmed.is_empty(),
        "the kill came too early to prove anything: {} answered",
        reserved.len() + confirmed.len()
    );
    let mut child = spawn();
    ready(addr).await;
    let a = audit(addr, &cfg, &sale.id.0).await;
    nothing_answered_was_lost(&a, &told);
    assert_eq!(a["quantity"], 1_000);
    // And the sale goes on.
    let (status, text) = http_with(
        addr,
        "POST",
        &format!("/api/sales/{}/buy", sale.id),
        Some(&token_for(&cfg, "shop", "after", Role::Viewer)),
        &[("Idempotency-Key", "k")],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A free loopback port.
pub fn free_addr() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    SocketAddr::from(([127, 0, 0, 1], port))
}
