//! Flash sales as the harness drives and judges them: when each Buy press is due, how a
//! press is retried (as a Buy button would), what its final answer was, and the correctness
//! verdicts computed from a sale's order-event stream.
//!
//! Everything here but [`press`] is sans-IO: the schedule, the retry decision and the
//! verdicts are plain functions of their inputs, unit-tested with synthetic answers and
//! streams. [`press`] drives one press through the SDK. The scenario runner
//! ([`crate::runner`], the `buy` behaviour) and the `sale-bench` benchmark both use this
//! module, so a press and a verdict mean the same in both.

use ferry_client::protocol::commerce::ReservationReply;
use ferry_client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// The final answer to one Buy press (after the retries a Buy button makes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuyOutcome {
    /// A new reservation (`replayed: false`).
    Reserved,
    /// The key had already reserved: the existing reservation (`replayed: true`), e.g. the
    /// second click of a double-click, or a retry whose first answer was lost.
    Replayed,
    SoldOut,
    LimitReached,
    /// Still `sale_not_started` when the press gave up (its retries ran out of time).
    NotStarted,
    Ended,
    NotInMarket,
    IdempotencyConflict,
    /// `unavailable` (1503) on every attempt.
    Unavailable,
    /// Anything else: another server error (named), a timeout, a lost connection.
    Error(String),
}

impl BuyOutcome {
    /// Classify one answer of the server (or the SDK's failure to get one).
    pub fn of(result: &Result<ReservationReply, ClientError>) -> BuyOutcome {
        match result {
            Ok(r) if r.replayed => BuyOutcome::Replayed,
            Ok(_) => BuyOutcome::Reserved,
            Err(ClientError::Server(e)) => match e.name.as_str() {
                "sold_out" => BuyOutcome::SoldOut,
                "limit_reached" => BuyOutcome::LimitReached,
                "sale_not_started" => BuyOutcome::NotStarted,
                "sale_ended" => BuyOutcome::Ended,
                "not_in_market" => BuyOutcome::NotInMarket,
                "idempotency_conflict" => BuyOutcome::IdempotencyConflict,
                "unavailable" => BuyOutcome::Unavailable,
                other => BuyOutcome::Error(other.to_owned()),
            },
            Err(ClientError::Timeout) => BuyOutcome::Error("timeout".into()),
            Err(ClientError::Disconnected) => BuyOutcome::Error("disconnected".into()),
            Err(ClientError::Closed { .. }) => BuyOutcome::Error("client closed".into()),
            Err(ClientError::Protocol(_)) => BuyOutcome::Error("unexpected reply".into()),
            // Neither answers a WebSocket buy (comments are held, HTTP calls fail); named so a
            // change in the SDK shows up in the report instead of as a miscount.
            Err(ClientError::Held(_)) => BuyOutcome::Error("held".into()),
            Err(ClientError::Http { status, .. }) => BuyOutcome::Error(format!("http {status}")),
        }
    }

    /// The metric counting this answer (`buy_<name>`), and the key of `outcomes` maps.
    pub fn name(&self) -> &'static str {
        match self {
            BuyOutcome::Reserved => "reserved",
            BuyOutcome::Replayed => "replayed",
            BuyOutcome::SoldOut => "sold_out",
            BuyOutcome::LimitReached => "limit_reached",
            BuyOutcome::NotStarted => "not_started",
            BuyOutcome::Ended => "ended",
            BuyOutcome::NotInMarket => "not_in_market",
            BuyOutcome::IdempotencyConflict => "idempotency_conflict",
            BuyOutcome::Unavailable => "unavailable",
            BuyOutcome::Error(_) => "errors",
        }
    }

    /// Every name [`BuyOutcome::name`] can return.
    pub const NAMES: [&'static str; 10] = [
        "reserved",
        "replayed",
        "sold_out",
        "limit_reached",
        "not_started",
        "ended",
        "not_in_market",
        "idempotency_conflict",
        "unavailable",
        "errors",
    ];
}

/// How long a press keeps retrying, and how.
#[derive(Clone, Debug)]
pub struct PressPolicy {
    /// No attempt starts after this instant: the press ends with its last answer.
    pub give_up_at: Instant,
    /// Retries after `unavailable`, a timeout or a lost connection (not after
    /// `sale_not_started`, which is retried until `give_up_at`).
    pub max_retries: u32,
    /// Longest wait between two attempts, whatever `retry_after_ms` says.
    pub max_wait: Duration,
}

/// What to do after an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the same key again after this wait.
    Retry(Duration),
    /// This answer is the press's final answer.
    Done,
}

/// The Buy button's retry rule, as the protocol asks (docs/protocol.md, `buy`): a press that
/// lands before the start (clock estimates differ by about a round trip) waits
/// `retry_after_ms` and retries with the same key; so does a temporary failure (`unavailable`,
/// a lost connection, no reply), a bounded number of times. Business answers are final.
pub fn next_step(
    result: &Result<ReservationReply, ClientError>,
    retries_so_far: u32,
    now: Instant,
    policy: &PressPolicy,
) -> Next {
    let wait = |suggested: Option<u64>, default_ms: u64| {
        Duration::from_millis(suggested.unwrap_or(default_ms).max(1)).min(policy.max_wait)
    };
    let retry = match result {
        Ok(_) => return Next::Done,
        Err(ClientError::Server(e)) if e.name == "sale_not_started" => wait(e.retry_after_ms, 5),
        Err(ClientError::Server(e)) if e.name == "unavailable" => {
            if retries_so_far >= policy.max_retries {
                return Next::Done;
            }
            wait(e.retry_after_ms, 100)
        }
        Err(ClientError::Disconnected | ClientError::Timeout)
            if retries_so_far < policy.max_retries =>
        {
            wait(None, 100)
        }
        Err(_) => return Next::Done,
    };
    if now + retry > policy.give_up_at {
        Next::Done
    } else {
        Next::Retry(retry)
    }
}

/// One press, from its first attempt to its final answer.
#[derive(Clone, Debug)]
pub struct PressResult {
    pub outcome: BuyOutcome,
    /// The reservation the buyer was told about (new or replayed).
    pub reservation: Option<String>,
    /// `sale_not_started` answers that were retried.
    pub not_started_retries: u32,
    /// Other retries (`unavailable`, timeouts, lost connections).
    pub retries: u32,
}

/// Press Buy once: send `buy` with `key`, retrying per [`next_step`] with the **same key**.
pub async fn press(
    client: &Client,
    room: &str,
    sale: &str,
    quantity: u32,
    key: &str,
    policy: &PressPolicy,
) -> PressResult {
    let (mut not_started_retries, mut retries) = (0u32, 0u32);
    loop {
        let result = client.buy(room, sale, quantity, key).await;
        match next_step(&result, retries, Instant::now(), policy) {
            Next::Retry(wait) => {
                if matches!(&result, Err(ClientError::Server(e)) if e.name == "sale_not_started") {
                    not_started_retries += 1;
                } else {
                    retries += 1;
                }
                tokio::time::sleep(wait).await;
            }
            Next::Done => {
                return PressResult {
                    outcome: BuyOutcome::of(&result),
                    reservation: result.ok().map(|r| r.reservation.id.0),
                    not_started_retries,
                    retries,
                }
            }
        }
    }
}

/// One scheduled Buy press.
#[derive(Clone, Debug, PartialEq)]
pub struct Press {
    /// The buyer's n-th press (0-based); each press has its own idempotency key.
    pub seq: u32,
    /// When it is due, after the sale's start instant (server clock).
    pub offset: Duration,
    /// Also sent a second time with the same key (a double-click).
    pub double_click: bool,
}

/// When every buyer presses Buy: `presses` per buyer, all of them spread evenly over
/// `window` from the sale's start (open model: press k of n is due at `k·window/n` whatever
/// happened before). Buyers take turns, so each buyer's presses are `window/presses` apart.
#[derive(Clone, Debug)]
pub struct PressSchedule {
    /// Viewer indexes of the buyers, ascending.
    buyers: Vec<usize>,
    presses: u32,
    window: Duration,
    double_click: f64,
}

impl PressSchedule {
    pub fn new(mut buyers: Vec<usize>, presses: u32, window: Duration, double_click: f64) -> Self {
        buyers.sort_unstable();
        buyers.dedup();
        Self {
            buyers,
            presses,
            window,
            double_click,
        }
    }

    /// Presses in the whole schedule (second clicks not counted).
    pub fn len(&self) -> usize {
        self.buyers.len() * self.presses as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn buyers(&self) -> usize {
        self.buyers.len()
    }

    /// The presses of one viewer, in time order (empty when it is not a buyer).
    pub fn for_viewer(&self, viewer: usize) -> Vec<Press> {
        let Ok(rank) = self.buyers.binary_search(&viewer) else {
            return Vec::new();
        };
        let total = self.len() as f64;
        (0..self.presses)
            .map(|seq| {
                let k = rank + seq as usize * self.buyers.len();
                Press {
                    seq,
                    offset: self.window.mul_f64(k as f64 / total),
                    double_click: crate::scenario::spread(k, 0.29) < self.double_click,
                }
            })
            .collect()
    }
}

/// A reservation's change, as read from the sale's order-event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    pub kind: StreamEventKind,
    pub reservation: String,
    pub buyer: String,
    /// The idempotency key the reservation was made with.
    pub key: String,
    pub quantity: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StreamEventKind {
    Reserved,
    Confirmed,
    Released,
}

impl StreamEvent {
    /// Read one order event (`docs/http-api.md`, "Order events"); `None` when it lacks a
    /// field the verdicts need (counted as an anomaly by the caller).
    pub fn from_json(event: &serde_json::Value) -> Option<StreamEvent> {
        let kind = match event.get("type")?.as_str()? {
            "reserved" => StreamEventKind::Reserved,
            "confirmed" => StreamEventKind::Confirmed,
            "released" => StreamEventKind::Released,
            _ => return None,
        };
        let r = event.get("reservation")?;
        let text = |field: &str| r.get(field)?.as_str().map(str::to_owned);
        Some(StreamEvent {
            kind,
            reservation: text("id")?,
            buyer: text("buyer")?,
            key: text("key")?,
            quantity: r.get("quantity")?.as_u64()?,
        })
    }
}

/// A reservation a client was told about (a `buy` answered `reserved` or `replayed`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ToldReservation {
    /// The buyer's user id (the token's `sub`).
    pub buyer: String,
    pub key: String,
    pub reservation: String,
}

/// A sale's stock counters, read in the same response as the events they sum up
/// (`GET /api/sales/{id}/orders/all`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCounters {
    pub quantity: u64,
    pub remaining: u64,
    pub reserved: u64,
    pub confirmed: u64,
}

/// The correctness verdicts of one sale (the JSON report's `sales[].verdicts`). Every count
/// must be 0 for a correct sale.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleVerdict {
    /// Units held (active reservations + confirmed) beyond the sale's quantity at the worst
    /// instant of the stream.
    pub oversold: u64,
    /// Buyers who held more units than the per-buyer limit at some instant of the stream.
    pub buyers_over_limit: u64,
    /// Reservations a client was told about that are not in the stream: the order system
    /// never hears of them.
    pub lost_reservations: u64,
    /// Reservations in the stream that no client was told about: units held for a buyer who
    /// does not know it.
    pub phantom_reservations: u64,
    /// Idempotency keys (per buyer) that produced more than one reservation: a double-click
    /// or a retry that bought twice.
    pub double_reservations: u64,
    /// Events that break the stream's own rules: a second `reserved` for a reservation, an
    /// end without a reservation or after its end, an event the harness cannot read.
    pub stream_anomalies: u64,
    /// Units the stock counters do not account for: `quantity − remaining − reserved −
    /// confirmed`, and the counters against the units the same snapshot's events hold.
    /// `None` when the counters could not be read.
    pub stock_unaccounted: Option<u64>,
}

/// What replaying a stream in order gives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub events: u64,
    pub reserved: u64,
    pub confirmed: u64,
    pub released: u64,
    /// Most units held (active + confirmed) at any instant.
    pub max_units_held: u64,
    /// Units in active reservations at the end.
    pub active_units: u64,
    /// Units confirmed at the end.
    pub confirmed_units: u64,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Held {
    Active,
    Confirmed,
    Ended,
}

/// Replay a stream in order, calling `over` with (buyer, units the buyer holds) after every
/// step. Returns the summary and the anomalies.
fn replay(events: &[StreamEvent], mut over: impl FnMut(&str, u64)) -> (StreamSummary, u64) {
    let mut summary = StreamSummary::default();
    let mut anomalies = 0u64;
    let mut state: HashMap<&str, (Held, &str, u64)> = HashMap::new();
    let mut per_buyer: HashMap<&str, u64> = HashMap::new();
    let (mut active, mut confirmed) = (0u64, 0u64);
    for e in events {
        summary.events += 1;
        let buyer = per_buyer.entry(e.buyer.as_str()).or_insert(0);
        match (e.kind, state.get(e.reservation.as_str()).copied()) {
            (StreamEventKind::Reserved, None) => {
                summary.reserved += 1;
                state.insert(&e.reservation, (Held::Active, &e.buyer, e.quantity));
                active += e.quantity;
                *buyer += e.quantity;
            }
            (StreamEventKind::Confirmed, Some((Held::Active, _, q))) => {
                summary.confirmed += 1;
                state.insert(&e.reservation, (Held::Confirmed, &e.buyer, q));
                active -= q;
                confirmed += q;
            }
            (StreamEventKind::Released, Some((Held::Active, _, q))) => {
                summary.released += 1;
                state.insert(&e.reservation, (Held::Ended, &e.buyer, q));
                active -= q;
                *buyer = buyer.saturating_sub(q);
            }
            _ => anomalies += 1,
        }
        summary.max_units_held = summary.max_units_held.max(active + confirmed);
        over(&e.buyer, *buyer);
    }
    summary.active_units = active;
    summary.confirmed_units = confirmed;
    (summary, anomalies)
}

/// Judge one sale: `stream` is its order events in stream order (as a consumer group reads
/// them), `told` every reservation a client was answered with, `audit` the counters and
/// events of one `orders/all` snapshot, `unreadable` events of the stream that could not be
/// parsed.
pub fn judge(
    quantity: u64,
    per_buyer_limit: u32,
    stream: &[StreamEvent],
    unreadable: u64,
    told: &[ToldReservation],
    audit: Option<(&StockCounters, &[StreamEvent])>,
) -> (SaleVerdict, StreamSummary) {
    let mut over_limit: HashSet<String> = HashSet::new();
    let (summary, anomalies) = replay(stream, |buyer, held| {
        if held > u64::from(per_buyer_limit) && !over_limit.contains(buyer) {
            over_limit.insert(buyer.to_owned());
        }
    });
    let in_stream: HashSet<&str> = stream
        .iter()
        .filter(|e| e.kind == StreamEventKind::Reserved)
        .map(|e| e.reservation.as_str())
        .collect();
    let told_ids: HashSet<&str> = told.iter().map(|t| t.reservation.as_str()).collect();
    // Per (buyer, key): every reservation id the stream or a client associates with it.
    let mut per_key: BTreeMap<(&str, &str), HashSet<&str>> = BTreeMap::new();
    for e in stream
        .iter()
        .filter(|e| e.kind == StreamEventKind::Reserved)
    {
        per_key
            .entry((&e.buyer, &e.key))
            .or_default()
            .insert(&e.reservation);
    }
    for t in told {
        per_key
            .entry((&t.buyer, &t.key))
            .or_default()
            .insert(&t.reservation);
    }
    let stock_unaccounted = audit.map(|(c, events)| {
        let (snapshot, _) = replay(events, |_, _| {});
        c.quantity.abs_diff(c.remaining + c.reserved + c.confirmed)
            + c.reserved.abs_diff(snapshot.active_units)
            + c.confirmed.abs_diff(snapshot.confirmed_units)
    });
    let verdict = SaleVerdict {
        oversold: summary.max_units_held.saturating_sub(quantity),
        buyers_over_limit: over_limit.len() as u64,
        lost_reservations: told_ids.difference(&in_stream).count() as u64,
        phantom_reservations: in_stream.difference(&told_ids).count() as u64,
        double_reservations: per_key.values().filter(|ids| ids.len() > 1).count() as u64,
        stream_anomalies: anomalies + unreadable,
        stock_unaccounted,
    };
    (verdict, summary)
}

/// The verdict metrics of a run (threshold names), summed over its sales. Empty when there
/// is no sale or any sale could not be judged: no evidence is not a pass, so their
/// thresholds fail with "no data". `stock_unaccounted` needs every sale's audit.
pub fn verdict_metrics(sales: &[Option<&SaleVerdict>]) -> Vec<(&'static str, f64)> {
    let judged: Vec<&SaleVerdict> = sales.iter().flatten().copied().collect();
    if judged.is_empty() || judged.len() != sales.len() {
        return Vec::new();
    }
    let sum = |f: fn(&SaleVerdict) -> u64| judged.iter().map(|v| f(v)).sum::<u64>() as f64;
    let mut out = vec![
        ("oversold", sum(|v| v.oversold)),
        ("buyers_over_limit", sum(|v| v.buyers_over_limit)),
        ("lost_reservations", sum(|v| v.lost_reservations)),
        ("phantom_reservations", sum(|v| v.phantom_reservations)),
        ("double_reservations", sum(|v| v.double_reservations)),
        ("stream_anomalies", sum(|v| v.stream_anomalies)),
    ];
    if judged.iter().all(|v| v.stock_unaccounted.is_some()) {
        out.push((
            "stock_unaccounted",
            sum(|v| v.stock_unaccounted.unwrap_or(0)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::protocol::ErrorBody;

    fn server(name: &str, retry_after_ms: Option<u64>) -> Result<ReservationReply, ClientError> {
        Err(ClientError::Server(ErrorBody {
            code: 1504,
            name: name.into(),
            message: String::new(),
            retry_after_ms,
            rule: None,
        }))
    }

    fn ev(kind: StreamEventKind, id: &str, buyer: &str, key: &str, q: u64) -> StreamEvent {
        StreamEvent {
            kind,
            reservation: id.into(),
            buyer: buyer.into(),
            key: key.into(),
            quantity: q,
        }
    }

    fn told(buyer: &str, key: &str, id: &str) -> ToldReservation {
        ToldReservation {
            buyer: buyer.into(),
            key: key.into(),
            reservation: id.into(),
        }
    }

    use StreamEventKind::{Confirmed, Released, Reserved};

    #[test]
    fn presses_are_spread_evenly_over_the_window() {
        let buyers: Vec<usize> = (0..1000).filter(|i| i % 4 == 1).collect();
        let s = PressSchedule::new(buyers.clone(), 2, Duration::from_secs(1), 0.1);
        assert_eq!(s.len(), 500);
        assert_eq!(s.buyers(), 250);
        let mut all: Vec<Duration> = Vec::new();
        let mut doubles = 0;
        for b in &buyers {
            let presses = s.for_viewer(*b);
            assert_eq!(presses.len(), 2);
            // A buyer's presses are half a window apart, in order, keys distinct by seq.
            assert_eq!(presses[0].seq, 0);
            assert_eq!(presses[1].seq, 1);
            let gap = presses[1].offset - presses[0].offset;
            assert!((gap.as_secs_f64() - 0.5).abs() < 1e-6, "{gap:?}");
            doubles += presses.iter().filter(|p| p.double_click).count();
            all.extend(presses.iter().map(|p| p.offset));
        }
        assert!(s.for_viewer(0).is_empty(), "not a buyer");
        all.sort();
        // Open model: press k of n is due at k·window/n, every one inside the window.
        for (k, offset) in all.iter().enumerate() {
            let due = k as f64 / 500.0;
            assert!((offset.as_secs_f64() - due).abs() < 1e-6, "{k}: {offset:?}");
        }
        assert!(all.last().is_some_and(|d| *d < Duration::from_secs(1)));
        assert!(
            (40..=60).contains(&doubles),
            "{doubles} double-clicks of 500"
        );
        // Deterministic: the same scenario schedules the same presses.
        let again = PressSchedule::new(buyers, 2, Duration::from_secs(1), 0.1);
        assert_eq!(again.for_viewer(5), s.for_viewer(5));
    }

    #[test]
    fn buy_button_retries_not_started_and_temporary_failures_with_limits() {
        let now = Instant::now();
        let policy = PressPolicy {
            give_up_at: now + Duration::from_secs(2),
            max_retries: 2,
            max_wait: Duration::from_millis(500),
        };
        // Before the start: wait what the server says, capped; again and again.
        assert_eq!(
            next_step(&server("sale_not_started", Some(40)), 9, now, &policy),
            Next::Retry(Duration::from_millis(40))
        );
        assert_eq!(
            next_step(&server("sale_not_started", Some(90_000)), 0, now, &policy),
            Next::Retry(Duration::from_millis(500))
        );
        // ...until the press gives up.
        let late = now + Duration::from_millis(1900);
        assert_eq!(
            next_step(&server("sale_not_started", Some(400)), 0, late, &policy),
            Next::Done
        );
        // Temporary failures: a bounded number of retries.
        assert_eq!(
            next_step(&server("unavailable", None), 1, now, &policy),
            Next::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            next_step(&server("unavailable", None), 2, now, &policy),
            Next::Done
        );
        assert_eq!(
            next_step(&Err(ClientError::Timeout), 0, now, &policy),
            Next::Retry(Duration::from_millis(100))
        );
        // Business answers are final.
        for name in ["sold_out", "limit_reached", "sale_ended", "not_in_market"] {
            assert_eq!(next_step(&server(name, None), 0, now, &policy), Next::Done);
        }
        assert_eq!(
            BuyOutcome::of(&server("not_in_market", None)).name(),
            "not_in_market"
        );
        assert_eq!(
            BuyOutcome::of(&server("not_found", None)),
            BuyOutcome::Error("not_found".into())
        );
        assert!(BuyOutcome::NAMES.contains(&BuyOutcome::of(&Err(ClientError::Timeout)).name()));
    }

    #[test]
    fn a_correct_sale_passes_every_verdict() {
        // 3 units, limit 2: a buys 2 (one double-clicked key), b buys 1 and pays, c's hold
        // lapses and d gets the unit back.
        let stream = vec![
            ev(Reserved, "r1", "a", "k1", 1),
            ev(Reserved, "r2", "a", "k2", 1),
            ev(Reserved, "r3", "b", "k1", 1),
            ev(Confirmed, "r3", "b", "k1", 1),
            ev(Released, "r1", "a", "k1", 1),
            ev(Reserved, "r4", "d", "k1", 1),
        ];
        let clients = vec![
            told("a", "k1", "r1"),
            told("a", "k1", "r1"), // the double-click's replay
            told("a", "k2", "r2"),
            told("b", "k1", "r3"),
            told("d", "k1", "r4"),
        ];
        let counters = StockCounters {
            quantity: 3,
            remaining: 0,
            reserved: 2,
            confirmed: 1,
        };
        let (v, s) = judge(3, 2, &stream, 0, &clients, Some((&counters, &stream)));
        assert_eq!(
            v,
            SaleVerdict {
                stock_unaccounted: Some(0),
                ..SaleVerdict::default()
            }
        );
        assert_eq!((s.reserved, s.confirmed, s.released), (4, 1, 1));
        // More reserved events than units is fine when a release gave one back.
        assert_eq!(s.max_units_held, 3);
    }

    #[test]
    fn oversell_and_limit_breaches_are_caught_at_the_instant_they_happen() {
        let stream = vec![
            ev(Reserved, "r1", "a", "k1", 2),
            ev(Reserved, "r2", "b", "k1", 1),
            ev(Reserved, "r3", "a", "k2", 1), // a holds 3 > 2, and 4 units > 3
            ev(Released, "r3", "a", "k2", 1),
        ];
        let clients: Vec<ToldReservation> = stream
            .iter()
            .filter(|e| e.kind == Reserved)
            .map(|e| told(&e.buyer, &e.key, &e.reservation))
            .collect();
        let (v, s) = judge(3, 2, &stream, 0, &clients, None);
        assert_eq!(v.oversold, 1);
        assert_eq!(v.buyers_over_limit, 1);
        assert_eq!(v.stock_unaccounted, None);
        assert_eq!(s.max_units_held, 4);
        assert_eq!(s.active_units, 3);
    }

    #[test]
    fn lost_phantom_and_double_reservations_are_counted() {
        let stream = vec![
            ev(Reserved, "r1", "a", "k1", 1),
            ev(Reserved, "r2", "a", "k1", 1), // the same key reserved twice
            ev(Reserved, "r3", "b", "k1", 1), // nobody was told: phantom
        ];
        let clients = vec![
            told("a", "k1", "r1"),
            told("a", "k1", "r2"),
            told("c", "k9", "r9"), // told, but not in the stream: lost
        ];
        let (v, _) = judge(10, 5, &stream, 0, &clients, None);
        assert_eq!(v.lost_reservations, 1);
        assert_eq!(v.phantom_reservations, 1);
        assert_eq!(v.double_reservations, 1);
        assert_eq!(v.oversold, 0);
        // A client told two reservations for one key is caught even if the stream lost one.
        let (v, _) = judge(
            10,
            5,
            &stream[..1],
            0,
            &[told("a", "k1", "r1"), told("a", "k1", "r2")],
            None,
        );
        assert_eq!((v.double_reservations, v.lost_reservations), (1, 1));
    }

    #[test]
    fn stream_anomalies_and_counter_mismatches_are_counted() {
        let stream = vec![
            ev(Confirmed, "r0", "a", "k0", 1), // ends a reservation never made
            ev(Reserved, "r1", "a", "k1", 1),
            ev(Released, "r1", "a", "k1", 1),
            ev(Confirmed, "r1", "a", "k1", 1), // ends it twice
            ev(Reserved, "r1", "a", "k1", 1),  // reserves it again
        ];
        let clients = vec![told("a", "k1", "r1")];
        // Counters that do not add up (1 unit unaccounted), and that disagree with the
        // snapshot's events (0 active units, counters say 1 reserved).
        let counters = StockCounters {
            quantity: 5,
            remaining: 3,
            reserved: 1,
            confirmed: 0,
        };
        let (v, _) = judge(5, 1, &stream, 2, &clients, Some((&counters, &stream[..3])));
        assert_eq!(v.stream_anomalies, 3 + 2);
        assert_eq!(v.stock_unaccounted, Some(1 + 1));
    }

    #[test]
    fn a_violated_invariant_fails_its_threshold_and_an_unjudged_sale_fails_all() {
        use crate::thresholds::{evaluate, Threshold};
        let thresholds: Vec<Threshold> = [
            "oversold == 0",
            "buyers_over_limit == 0",
            "lost_reservations == 0",
            "phantom_reservations == 0",
            "double_reservations == 0",
            "stock_unaccounted == 0",
        ]
        .iter()
        .map(|t| t.parse().expect("a known metric"))
        .collect();
        let failing = |sales: &[Option<&SaleVerdict>]| -> Vec<String> {
            let metrics = verdict_metrics(sales)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            evaluate(&thresholds, &metrics)
                .into_iter()
                .filter(|r| !r.passed)
                .map(|r| r.metric)
                .collect()
        };
        // A correct sale and one that oversold by a unit and lost a reservation.
        let good_stream = vec![ev(Reserved, "r1", "a", "k1", 1)];
        let (good, _) = judge(1, 1, &good_stream, 0, &[told("a", "k1", "r1")], None);
        let bad_stream = vec![
            ev(Reserved, "r1", "a", "k1", 1),
            ev(Reserved, "r2", "b", "k1", 1),
        ];
        let clients = [
            told("a", "k1", "r1"),
            told("b", "k1", "r2"),
            told("c", "k", "r9"),
        ];
        let (bad, _) = judge(1, 1, &bad_stream, 0, &clients, None);
        // No audit: stock_unaccounted has no data.
        assert_eq!(failing(&[Some(&good)]), ["stock_unaccounted"]);
        assert_eq!(
            failing(&[Some(&good), Some(&bad)]),
            ["oversold", "lost_reservations", "stock_unaccounted"]
        );
        // A sale whose stream could not be read: every verdict fails for lack of evidence.
        assert_eq!(failing(&[Some(&good), None]).len(), thresholds.len());
        assert_eq!(failing(&[]).len(), thresholds.len());
    }

    #[test]
    fn order_events_are_read_from_the_documented_json() {
        let json = serde_json::json!({"at":1,"reason":"cancelled","type":"released",
            "reservation":{"amount_cny":5900,"buyer":"u-2002","id":"s1.94f6","key":"c3",
            "market":"hk","quantity":1,"sale":"s1","state":"released"}});
        assert_eq!(
            StreamEvent::from_json(&json),
            Some(ev(Released, "s1.94f6", "u-2002", "c3", 1))
        );
        assert_eq!(
            StreamEvent::from_json(&serde_json::json!({"type":"x"})),
            None
        );
    }
}
