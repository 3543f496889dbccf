//! The sale rules, sans-IO: one [`SaleBook`] per flash sale holds its stock, its reservations
//! and who holds what, and is fed buy, confirm, release and expiry requests with the current
//! time. It never reads a clock, touches a file or a socket; the embedded store keeps books in
//! memory behind a lock and journals what they decide, and the Redis store's scripts implement
//! the same rules (the conformance suite holds both to them).
//!
//! Invariants, checked by [`SaleBook::check`] in tests after every step:
//! - never oversold: active reservations + confirmed ≤ quantity;
//! - conservation: quantity = remaining + active reservations + confirmed units;
//! - no buyer holds more than the per-buyer limit (active + confirmed);
//! - one idempotency key of one buyer yields at most one reservation;
//! - a reservation ends exactly once: `Reserved` → `Confirmed` or `Released`, never both.

use super::{OrderEvent, OrderEventKind, ReleaseReason, Reservation, SaleRecord};
use ferry_client::protocol::commerce::{Money, ReservationId, ReservationState, SaleStatus};
use ferry_client::protocol::UserId;
use std::collections::{BTreeSet, HashMap};

/// A buy as the rules see it.
#[derive(Clone, Debug, PartialEq)]
pub struct BuyRequest {
    pub buyer: UserId,
    pub market: String,
    pub quantity: u32,
    /// Idempotency key, scoped to this buyer and this sale.
    pub key: String,
    /// Server time, Unix ms.
    pub now: u64,
    /// The id to give a new reservation (unused when the key replays).
    pub new_id: ReservationId,
    /// The sale's unit price shown in the buyer's display currency × `quantity` (computed by
    /// the caller from the configured FX rate, so the rules stay free of configuration).
    pub amount_display: Money,
}

/// A buy that reserved stock.
#[derive(Clone, Debug, PartialEq)]
pub enum Bought {
    /// A new reservation (and its `reserved` order event).
    New(Reservation, Box<OrderEvent>),
    /// The key had already reserved: the original reservation, in its current state.
    Replayed(Reservation),
}

/// Why a buy reserved nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuyRefusal {
    #[error("the sale starts at {starts_at} (server time, Unix ms)")]
    NotStarted { starts_at: u64 },
    #[error("the sale has ended")]
    Ended,
    #[error("this product is not available in your market")]
    NotInMarket,
    #[error("sold out ({remaining} left)")]
    SoldOut { remaining: u64 },
    #[error("limit of {limit} per buyer reached (you hold {held})")]
    LimitReached { limit: u32, held: u32 },
    #[error("this idempotency key was used for a different request")]
    KeyConflict,
    #[error("quantity must be at least 1")]
    BadQuantity,
}

/// The outcome of a confirm (payment succeeded) or a release (cancel, failed payment, expiry).
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    /// This call ended the reservation; here is the order event it produced.
    Now(Reservation, Box<OrderEvent>),
    /// The reservation had already ended (in the state shown): nothing changed.
    Already(Reservation),
}

/// One sale's stock and reservations.
#[derive(Clone, Debug)]
pub struct SaleBook {
    pub sale: SaleRecord,
    /// Units neither reserved nor sold.
    pub remaining: u64,
    /// Units sold (confirmed reservations).
    pub confirmed: u64,
    /// Change sequence: one per order event (reserve, confirm, release), plus one when the
    /// sale is ended early. Stock events carry it so an older one cannot undo a newer one.
    pub version: u64,
    reservations: HashMap<ReservationId, Reservation>,
    /// (buyer, key) → reservation: the idempotency index.
    by_key: HashMap<(UserId, String), ReservationId>,
    /// Units each buyer holds (active + confirmed), for the per-buyer limit.
    held: HashMap<UserId, u32>,
    /// Active reservations by deadline, for the expiry sweep.
    deadlines: BTreeSet<(u64, ReservationId)>,
}

impl SaleBook {
    pub fn new(sale: SaleRecord) -> Self {
        Self {
            remaining: sale.quantity,
            confirmed: 0,
            version: 0,
            sale,
            reservations: HashMap::new(),
            by_key: HashMap::new(),
            held: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Where the sale is at `now`.
    pub fn status(&self, now: u64) -> SaleStatus {
        if self.sale.ended_at.is_some_and(|t| t <= now) || now >= self.sale.ends_at {
            SaleStatus::Ended
        } else if now < self.sale.starts_at {
            SaleStatus::Scheduled
        } else if self.remaining == 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Open
        }
    }

    /// Units held by active reservations.
    pub fn reserved_units(&self) -> u64 {
        self.sale.quantity - self.remaining - self.confirmed
    }

    pub fn reservation(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// Reserve stock for a buyer: the one atomic step of a flash sale.
    pub fn buy(&mut self, req: BuyRequest) -> Result<Bought, BuyRefusal> {
        let index = (req.buyer.clone(), req.key.clone());
        if let Some(id) = self.by_key.get(&index) {
            let existing = &self.reservations[id];
            if existing.quantity != req.quantity {
                return Err(BuyRefusal::KeyConflict);
            }
            return Ok(Bought::Replayed(existing.clone()));
        }
        if req.quantity == 0 {
            return Err(BuyRefusal::BadQuantity);
        }
        match self.status(req.now) {
            SaleStatus::Scheduled => {
                return Err(BuyRefusal::NotStarted {
                    starts_at: self.sale.starts_at,
                })
            }
            SaleStatus::Ended => return Err(BuyRefusal::Ended),
            SaleStatus::Open | SaleStatus::SoldOut => {}
        }
        if !self.sale.markets.contains(&req.market) {
            return Err(BuyRefusal::NotInMarket);
        }
        let held = self.held.get(&req.buyer).copied().unwrap_or(0);
        if held.saturating_add(req.quantity) > self.sale.per_buyer_limit {
            return Err(BuyRefusal::LimitReached {
                limit: self.sale.per_buyer_limit,
                held,
            });
        }
        if self.remaining < u64::from(req.quantity) {
            return Err(BuyRefusal::SoldOut {
                remaining: self.remaining,
            });
        }
        self.remaining -= u64::from(req.quantity);
        *self.held.entry(req.buyer.clone()).or_insert(0) += req.quantity;
        let reservation = Reservation {
            id: req.new_id.clone(),
            sale: self.sale.id.clone(),
            buyer: req.buyer,
            market: req.market,
            quantity: req.quantity,
            amount_cny: self.sale.price_cny.saturating_mul(i64::from(req.quantity)),
            amount_display: req.amount_display,
            deadline: req.now.saturating_add(self.sale.hold_ms),
            key: req.key,
            state: ReservationState::Reserved,
            created_at: req.now,
            ended_at: None,
            payment_ref: None,
            release_reason: None,
        };
        self.deadlines
            .insert((reservation.deadline, reservation.id.clone()));
        self.by_key.insert(index, reservation.id.clone());
        self.reservations
            .insert(reservation.id.clone(), reservation.clone());
        self.version += 1;
        let event = Box::new(OrderEvent::of(
            OrderEventKind::Reserved,
            &reservation,
            req.now,
        ));
        Ok(Bought::New(reservation, event))
    }

    /// Payment succeeded. Confirms an active reservation whose deadline has not passed; a
    /// reservation past its deadline is released instead (payment came too late: refund).
    pub fn confirm(&mut self, id: &ReservationId, payment_ref: &str, now: u64) -> Option<Settled> {
        let current = self.reservations.get(id)?;
        if current.state != ReservationState::Reserved {
            return Some(Settled::Already(current.clone()));
        }
        if now > current.deadline {
            return self.release(id, ReleaseReason::Expired, now);
        }
        let quantity = u64::from(current.quantity);
        let deadline = current.deadline;
        let r = self.reservations.get_mut(id)?;
        r.state = ReservationState::Confirmed;
        r.ended_at = Some(now);
        r.payment_ref = Some(payment_ref.to_owned());
        let r = r.clone();
        self.deadlines.remove(&(deadline, id.clone()));
        self.confirmed += quantity;
        self.version += 1;
        let event = Box::new(OrderEvent::of(OrderEventKind::Confirmed, &r, now));
        Some(Settled::Now(r, event))
    }

    /// Give an active reservation's units back to the sale.
    pub fn release(
        &mut self,
        id: &ReservationId,
        reason: ReleaseReason,
        now: u64,
    ) -> Option<Settled> {
        let current = self.reservations.get(id)?;
        if current.state != ReservationState::Reserved {
            return Some(Settled::Already(current.clone()));
        }
        let r = self.reservations.get_mut(id)?;
        r.state = ReservationState::Released;
        r.ended_at = Some(now);
        r.release_reason = Some(reason);
        let r = r.clone();
        self.deadlines.remove(&(r.deadline, id.clone()));
        self.remaining += u64::from(r.quantity);
        if let Some(held) = self.held.get_mut(&r.buyer) {
            *held = held.saturating_sub(r.quantity);
        }
        self.version += 1;
        let event = Box::new(OrderEvent::of(OrderEventKind::Released(reason), &r, now));
        Some(Settled::Now(r, event))
    }

    /// Active reservations whose deadline passed by `now` (at most `max`).
    pub fn due(&self, now: u64, max: usize) -> Vec<ReservationId> {
        self.deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline < now)
            .take(max)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// End the sale now (host action). Active reservations keep their deadlines.
    pub fn end(&mut self, now: u64) {
        if self.sale.ended_at.is_none() && now < self.sale.ends_at {
            self.sale.ended_at = Some(now);
            self.version += 1;
        }
    }

    /// Replace the definition with a journaled later one (ended early, markets changed),
    /// keeping the stock and reservations.
    pub fn redefine(&mut self, sale: SaleRecord) {
        if self.sale.ended_at.is_none() && sale.ended_at.is_some() {
            self.version += 1;
        }
        self.sale = sale;
    }

    /// Replace the set of markets buyers may come from (the merchant switched one).
    pub fn set_markets(&mut self, markets: BTreeSet<String>) {
        self.sale.markets = markets;
    }

    /// Re-apply a journaled reservation (replay after a restart), trusting its recorded state.
    /// Each journaled reservation entry is one change (one order event) of the sale.
    pub fn restore(&mut self, r: Reservation) {
        self.version += 1;
        if let Some(old) = self.reservations.remove(&r.id) {
            self.undo(&old);
        }
        self.by_key
            .insert((r.buyer.clone(), r.key.clone()), r.id.clone());
        match r.state {
            ReservationState::Reserved => {
                self.remaining = self.remaining.saturating_sub(u64::from(r.quantity));
                *self.held.entry(r.buyer.clone()).or_insert(0) += r.quantity;
                self.deadlines.insert((r.deadline, r.id.clone()));
            }
            ReservationState::Confirmed => {
                self.remaining = self.remaining.saturating_sub(u64::from(r.quantity));
                self.confirmed += u64::from(r.quantity);
                *self.held.entry(r.buyer.clone()).or_insert(0) += r.quantity;
            }
            ReservationState::Released => {}
        }
        self.reservations.insert(r.id.clone(), r);
    }

    fn undo(&mut self, r: &Reservation) {
        match r.state {
            ReservationState::Reserved => {
                self.remaining += u64::from(r.quantity);
                if let Some(h) = self.held.get_mut(&r.buyer) {
                    *h = h.saturating_sub(r.quantity);
                }
                self.deadlines.remove(&(r.deadline, r.id.clone()));
            }
            ReservationState::Confirmed => {
                self.remaining += u64::from(r.quantity);
                self.confirmed = self.confirmed.saturating_sub(u64::from(r.quantity));
                if let Some(h) = self.held.get_mut(&r.buyer) {
                    *h = h.saturating_sub(r.quantity);
                }
            }
            ReservationState::Released => {}
        }
    }

    /// Check every invariant; `Err` names the first broken one.
    pub fn check(&self) -> Result<(), String> {
        let mut active = 0u64;
        let mut confirmed = 0u64;
        let mut held: HashMap<&UserId, u32> = HashMap::new();
        for r in self.reservations.values() {
            match r.state {
                ReservationState::Reserved => active += u64::from(r.quantity),
                ReservationState::Confirmed => confirmed += u64::from(r.quantity),
                ReservationState::Released => continue,
            }
            *held.entry(&r.buyer).or_insert(0) += r.quantity;
        }
        if active + confirmed > self.sale.quantity {
            return Err(format!(
                "oversold: {active} reserved + {confirmed} confirmed > {}",
                self.sale.quantity
            ));
        }
        if self.remaining + active + confirmed != self.sale.quantity {
            return Err(format!(
                "conservation: {} remaining + {active} reserved + {confirmed} confirmed != {}",
                self.remaining, self.sale.quantity
            ));
        }
        if confirmed != self.confirmed {
            return Err(format!(
                "confirmed counter {} != {confirmed}",
                self.confirmed
            ));
        }
        if let Some((buyer, n)) = held.iter().find(|(_, n)| **n > self.sale.per_buyer_limit) {
            return Err(format!("buyer {buyer} holds {n} > limit"));
        }
        if self.by_key.len() != self.reservations.len() {
            return Err("an idempotency key maps to more than one reservation".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::protocol::commerce::{ProductId, SaleId};
    use ferry_client::protocol::RoomId;

    fn sale(quantity: u64, limit: u32) -> SaleRecord {
        SaleRecord {
            id: SaleId("s1".into()),
            room: RoomId("r".into()),
            product: ProductId("basket".into()),
            quantity,
            price_cny: 5900,
            per_buyer_limit: limit,
            starts_at: 1_000,
            ends_at: 301_000,
            hold_ms: 60_000,
            markets: ["us".to_owned(), "hk".to_owned()].into(),
            ended_at: None,
            created_at: 0,
        }
    }

    fn buy(buyer: &str, key: &str, qty: u32, now: u64, n: u32) -> BuyRequest {
        BuyRequest {
            buyer: UserId(buyer.into()),
            market: "us".into(),
            quantity: qty,
            key: key.into(),
            now,
            new_id: ReservationId(format!("res{n}")),
            amount_display: Money {
                currency: "USD".into(),
                minor: 820 * i64::from(qty),
            },
        }
    }

    fn reserved(b: Result<Bought, BuyRefusal>) -> Reservation {
        match b {
            Ok(Bought::New(r, _)) => r,
            other => panic!("expected a new reservation, got {other:?}"),
        }
    }

    #[test]
    fn refuses_before_start_after_end_and_outside_markets() {
        let mut book = SaleBook::new(sale(10, 2));
        assert_eq!(
            book.buy(buy("a", "k", 1, 999, 1)),
            Err(BuyRefusal::NotStarted { starts_at: 1_000 })
        );
        let mut req = buy("a", "k", 1, 1_000, 1);
        req.market = "ae".into();
        assert_eq!(book.buy(req), Err(BuyRefusal::NotInMarket));
        assert_eq!(
            book.buy(buy("a", "k", 1, 301_000, 1)),
            Err(BuyRefusal::Ended)
        );
        book.end(2_000);
        assert_eq!(book.buy(buy("a", "k", 1, 2_000, 1)), Err(BuyRefusal::Ended));
        book.check().expect("invariants");
    }

    #[test]
    fn never_oversells_and_enforces_the_per_buyer_limit() {
        let mut book = SaleBook::new(sale(5, 2));
        let mut ok = 0;
        for i in 0..50u32 {
            let r = book.buy(buy(&format!("b{}", i % 10), &format!("k{i}"), 1, 1_000, i));
            if let Ok(Bought::New(..)) = r {
                ok += 1;
            }
            book.check().expect("invariants after every buy");
        }
        assert_eq!(ok, 5);
        assert_eq!(book.remaining, 0);
        assert_eq!(book.status(1_000), SaleStatus::SoldOut);
        let mut book = SaleBook::new(sale(100, 2));
        reserved(book.buy(buy("a", "k1", 2, 1_000, 1)));
        assert_eq!(
            book.buy(buy("a", "k2", 1, 1_000, 2)),
            Err(BuyRefusal::LimitReached { limit: 2, held: 2 })
        );
    }

    #[test]
    fn the_same_key_replays_the_same_reservation() {
        let mut book = SaleBook::new(sale(5, 2));
        let first = reserved(book.buy(buy("a", "k", 1, 1_000, 1)));
        match book.buy(buy("a", "k", 1, 1_001, 2)) {
            Ok(Bought::Replayed(r)) => assert_eq!(r, first),
            other => panic!("expected replay, got {other:?}"),
        }
        assert_eq!(
            book.buy(buy("a", "k", 2, 1_001, 3)),
            Err(BuyRefusal::KeyConflict)
        );
        // Another buyer's identical key is a different request.
        reserved(book.buy(buy("b", "k", 1, 1_000, 4)));
        assert_eq!(book.remaining, 3);
        book.check().expect("invariants");
    }

    #[test]
    fn a_reservation_ends_exactly_once_when_confirm_and_expiry_race() {
        let mut book = SaleBook::new(sale(1, 1));
        let r = reserved(book.buy(buy("a", "k", 1, 1_000, 1)));
        assert_eq!(book.due(61_000, 10), Vec::<ReservationId>::new());
        assert_eq!(book.due(61_001, 10), vec![r.id.clone()]);
        // Expiry wins: a later confirm is told it was released.
        assert!(matches!(
            book.release(&r.id, ReleaseReason::Expired, 61_001),
            Some(Settled::Now(_, _))
        ));
        match book.confirm(&r.id, "pay1", 61_002) {
            Some(Settled::Already(x)) => assert_eq!(x.state, ReservationState::Released),
            other => panic!("expected already released, got {other:?}"),
        }
        assert_eq!(book.remaining, 1);
        // Confirm wins: a later expiry changes nothing.
        let r2 = reserved(book.buy(buy("b", "k", 1, 62_000, 2)));
        assert!(matches!(
            book.confirm(&r2.id, "pay2", 62_001),
            Some(Settled::Now(..))
        ));
        match book.release(&r2.id, ReleaseReason::Expired, 200_000) {
            Some(Settled::Already(x)) => assert_eq!(x.state, ReservationState::Confirmed),
            other => panic!("expected already confirmed, got {other:?}"),
        }
        assert_eq!((book.remaining, book.confirmed), (0, 1));
        // A payment after the deadline releases instead of confirming.
        let mut late = SaleBook::new(sale(1, 1));
        let r3 = reserved(late.buy(buy("c", "k", 1, 1_000, 3)));
        match late.confirm(&r3.id, "pay3", 61_001) {
            Some(Settled::Now(x, _)) => assert_eq!(x.state, ReservationState::Released),
            other => panic!("expected a release, got {other:?}"),
        }
        book.check().expect("invariants");
        late.check().expect("invariants");
    }

    #[test]
    fn restore_rebuilds_the_same_book() {
        let mut book = SaleBook::new(sale(10, 3));
        let a = reserved(book.buy(buy("a", "k1", 2, 1_000, 1)));
        let b = reserved(book.buy(buy("b", "k2", 3, 1_000, 2)));
        let _ = book.confirm(&a.id, "p", 2_000);
        let _ = book.release(&b.id, ReleaseReason::Cancelled, 2_000);
        let mut replayed = SaleBook::new(sale(10, 3));
        for r in book.reservations() {
            replayed.restore(r.clone());
        }
        replayed.check().expect("invariants");
        assert_eq!(
            (replayed.remaining, replayed.confirmed),
            (book.remaining, book.confirmed)
        );
    }
}
