//! Commerce: the merchant's catalog, flash sales, reservations and the order-event stream.
//!
//! Layers, bottom up:
//! - [`book`]: the sale rules, sans-IO ([`book::SaleBook`]): stock, per-buyer limits,
//!   idempotency keys, reservation deadlines; fed requests and the time.
//! - [`SaleStore`]: one trait, two engines. [`memory::MemorySaleStore`] keeps books in memory
//!   and journals every change to an fsynced append-only file before answering; the Redis
//!   store runs the same rules as one Lua script per step, every key of a sale under the hash
//!   tag `{sale:<id>}`. [`conformance`] holds both to the same behaviour.
//! - [`service::Commerce`]: what the WebSocket and HTTP front ends call: permissions, prices
//!   in each market's currency, room events (pins, sale updates throttled, social proof), the
//!   expiry sweep.
//!
//! Order events (`reserved`, `confirmed`, `released`) are the durable record an order system
//! consumes, per sale, with acknowledgements (consumer groups; redelivery of unacknowledged
//! events after `commerce.redeliver_after`).

pub mod book;
pub mod conformance;
pub mod memory;
pub mod metrics;
pub mod pricing;
pub mod redis;
pub mod service;

use async_trait::async_trait;
use ferry_client::protocol::commerce::{
    Money, ProductId, ReservationId, ReservationState, ReservationView, SaleId,
};
use ferry_client::protocol::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use book::{Bought, BuyRefusal, BuyRequest, Settled};

/// A catalog product as the merchant defines it (prices in CNY fen).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    pub id: ProductId,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub image_url: String,
    /// The merchant's language.
    #[serde(default = "default_lang")]
    pub lang: String,
    /// List price, CNY fen.
    pub price_cny: i64,
    /// Units the merchant has (informational; a sale's quantity is its own).
    #[serde(default)]
    pub stock: u64,
    /// Market code → whether the merchant sells there.
    #[serde(default)]
    pub markets: BTreeMap<String, bool>,
    /// The user who created the product (set by the server): only they, or an admin, may
    /// change it.
    #[serde(default)]
    pub merchant: String,
    /// The glossary its title and description are translated with (default: the
    /// merchant's glossary, whose id is the merchant's user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glossary: Option<String>,
    /// Title and description per language of the enabled markets (set by the server when
    /// the product is saved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub translations: BTreeMap<String, ferry_client::protocol::translation::ProductText>,
}

fn default_lang() -> String {
    "zh".to_owned()
}

impl Product {
    pub fn enabled_markets(&self) -> BTreeSet<String> {
        self.markets
            .iter()
            .filter(|(_, on)| **on)
            .map(|(m, _)| m.clone())
            .collect()
    }
}

/// A flash sale's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleRecord {
    pub id: SaleId,
    pub room: RoomId,
    pub product: ProductId,
    pub quantity: u64,
    /// Sale price, CNY fen.
    pub price_cny: i64,
    pub per_buyer_limit: u32,
    /// Unix ms.
    pub starts_at: u64,
    pub ends_at: u64,
    /// Payment window after a reservation, ms.
    pub hold_ms: u64,
    /// Markets buyers may come from (the product's enabled markets).
    pub markets: BTreeSet<String>,
    /// Set when the host ended the sale before `ends_at`.
    #[serde(default)]
    pub ended_at: Option<u64>,
    pub created_at: u64,
}

/// Why a reservation went back to stock.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The payment deadline passed.
    Expired,
    /// The buyer cancelled.
    Cancelled,
    /// The payment provider reported a failed payment.
    PaymentFailed,
}

/// A reservation with everything the store keeps about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub sale: SaleId,
    pub buyer: UserId,
    pub market: String,
    pub quantity: u32,
    pub amount_cny: i64,
    pub amount_display: Money,
    /// Unix ms.
    pub deadline: u64,
    pub key: String,
    pub state: ReservationState,
    pub created_at: u64,
    pub ended_at: Option<u64>,
    pub payment_ref: Option<String>,
    pub release_reason: Option<ReleaseReason>,
}

impl Reservation {
    pub fn view(&self) -> ReservationView {
        ReservationView {
            id: self.id.clone(),
            sale: self.sale.clone(),
            quantity: self.quantity,
            amount_cny: self.amount_cny,
            amount_display: self.amount_display.clone(),
            market: self.market.clone(),
            deadline: self.deadline,
            state: self.state,
        }
    }
}

/// What happened to a reservation.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "reason")]
pub enum OrderEventKind {
    Reserved,
    Confirmed,
    Released(ReleaseReason),
}

/// One entry of a sale's order-event stream (documented in `docs/http-api.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    #[serde(flatten)]
    pub kind: OrderEventKind,
    pub reservation: Reservation,
    /// Unix ms.
    pub at: u64,
}

impl OrderEvent {
    pub fn of(kind: OrderEventKind, reservation: &Reservation, at: u64) -> Self {
        Self {
            kind,
            reservation: reservation.clone(),
            at,
        }
    }
}

/// An order event delivered to a consumer, with the id to acknowledge it by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveredOrderEvent {
    /// Stream id (`<ms>-<seq>`); ids increase along the stream.
    pub id: String,
    /// How many times this event has been delivered to the group (1 = first time).
    pub deliveries: u64,
    pub event: OrderEvent,
}

/// A sale's one-time room announcements (`sale_started`, `sale_ended`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Announcement {
    Started,
    Ended,
}

impl Announcement {
    pub fn name(self) -> &'static str {
        match self {
            Announcement::Started => "started",
            Announcement::Ended => "ended",
        }
    }
}

/// Which of a sale's announcements were published and recorded as such, durably and with
/// the sale: a recorded announcement is never made again, by any node, after any restart.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    pub started: bool,
    pub ended: bool,
}

impl Announced {
    pub fn get(&self, what: Announcement) -> bool {
        match what {
            Announcement::Started => self.started,
            Announcement::Ended => self.ended,
        }
    }

    pub fn set(&mut self, what: Announcement) {
        match what {
            Announcement::Started => self.started = true,
            Announcement::Ended => self.ended = true,
        }
    }

    /// Both made: nothing left to announce.
    pub fn all(&self) -> bool {
        self.started && self.ended
    }
}

/// A sale's place in the sale listings: grows by one with every sale created (1, 2, ...).
/// Listings page by it (`live_sales` after a position, `room_sales` before one).
pub type SalePosition = u64;

/// A sale's definition plus its live counters.
#[derive(Clone, Debug, PartialEq)]
pub struct SaleSnapshot {
    pub sale: SaleRecord,
    pub remaining: u64,
    pub reserved: u64,
    pub confirmed: u64,
    /// The sale's change sequence: its number of order events, plus one once a host ended
    /// it early. Read atomically with the counters, so a stock event built from this
    /// snapshot carries it and clients can drop an older event that arrives late.
    pub version: u64,
    /// Announcements already made (recorded with [`SaleStore::mark_announced`]).
    pub announced: Announced,
}

/// Why a store operation failed (not a business refusal: those are values).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("sale not found")]
    SaleNotFound,
    #[error("a sale with this id already exists")]
    SaleExists,
    /// The backing store (journal disk, Redis) failed; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Catalog, sales, reservations and order events. Every method that changes state has made
/// the change durable (journal fsync, or Redis with AOF) before it returns `Ok`.
#[async_trait]
pub trait SaleStore: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    async fn put_product(&self, product: Product) -> Result<(), StoreError>;
    async fn product(&self, id: &ProductId) -> Result<Option<Product>, StoreError>;
    async fn products(&self) -> Result<Vec<Product>, StoreError>;

    /// Create a sale (its id must be new). It is listed in its room's sales and in the live
    /// sales (those the sweep visits) until [`SaleStore::retire_sale`].
    async fn create_sale(&self, sale: SaleRecord) -> Result<(), StoreError>;
    async fn sale(&self, id: &SaleId) -> Result<Option<SaleSnapshot>, StoreError>;
    /// Every sale ever created, oldest first: for tests and audits only (it grows without
    /// bound; the server's paths use [`SaleStore::live_sales`] and [`SaleStore::room_sales`]).
    async fn sales(&self) -> Result<Vec<SaleId>, StoreError>;
    /// Sales that may still need the sweep (not retired), oldest first, with a position
    /// greater than `after` (0: from the first); at most `limit`.
    async fn live_sales(
        &self,
        after: SalePosition,
        limit: usize,
    ) -> Result<Vec<(SalePosition, SaleId)>, StoreError>;
    /// Take a sale off the live list: it ended, both announcements are recorded and no hold
    /// is left, so the sweep has nothing more to do for it. Idempotent.
    async fn retire_sale(&self, id: &SaleId) -> Result<(), StoreError>;
    /// A room's sales, newest first, with a position lower than `before` (`None`: from the
    /// newest); at most `limit`.
    async fn room_sales(
        &self,
        room: &RoomId,
        before: Option<SalePosition>,
        limit: usize,
    ) -> Result<Vec<(SalePosition, SaleId)>, StoreError>;
    /// End a sale now (buys are refused from `now`); returns its snapshot.
    async fn end_sale(&self, id: &SaleId, now: u64) -> Result<SaleSnapshot, StoreError>;
    /// Replace the markets a sale admits buyers from.
    async fn set_sale_markets(
        &self,
        id: &SaleId,
        markets: BTreeSet<String>,
    ) -> Result<(), StoreError>;

    /// The atomic buy step: open window, market, per-buyer limit, stock and idempotency key
    /// checked together, then a reservation with a deadline and its `reserved` order event.
    async fn buy(
        &self,
        sale: &SaleId,
        req: BuyRequest,
    ) -> Result<Result<Bought, BuyRefusal>, StoreError>;
    /// Payment succeeded. `None`: no such reservation.
    async fn confirm(
        &self,
        sale: &SaleId,
        id: &ReservationId,
        payment_ref: &str,
        now: u64,
    ) -> Result<Option<Settled>, StoreError>;
    /// Give the units back (cancel, failed payment, expiry). `None`: no such reservation.
    async fn release(
        &self,
        sale: &SaleId,
        id: &ReservationId,
        reason: ReleaseReason,
        now: u64,
    ) -> Result<Option<Settled>, StoreError>;
    async fn reservation(
        &self,
        sale: &SaleId,
        id: &ReservationId,
    ) -> Result<Option<Reservation>, StoreError>;
    /// Release every reservation of `sale` whose deadline passed by `now` (at most `max`).
    async fn expire_due(
        &self,
        sale: &SaleId,
        now: u64,
        max: usize,
    ) -> Result<Vec<Reservation>, StoreError>;

    /// Read order events for consumer group `group`: first those delivered to the group more
    /// than `redeliver_after_ms` ago and not acknowledged, then new ones; at most `count`.
    async fn read_orders(
        &self,
        sale: &SaleId,
        group: &str,
        count: usize,
        redeliver_after_ms: u64,
        now: u64,
    ) -> Result<Vec<DeliveredOrderEvent>, StoreError>;
    /// Acknowledge order events; returns how many were pending.
    async fn ack_orders(
        &self,
        sale: &SaleId,
        group: &str,
        ids: &[String],
    ) -> Result<u64, StoreError>;
    /// Every order event of a sale, in order (audits and the load tester's verdicts).
    async fn all_orders(&self, sale: &SaleId) -> Result<Vec<OrderEvent>, StoreError>;

    /// Claim `what` for `ttl_ms` cluster-wide: true for exactly one caller until it lapses.
    /// Used so room updates (stock, social proof) stay throttled across nodes.
    async fn claim(&self, what: &str, ttl_ms: u64, now: u64) -> Result<bool, StoreError>;

    /// Take the lease to publish announcement `what` of `sale`: true for one caller at a
    /// time until the lease lapses (`lease_ms` after `now`, on the callers' clocks), and never
    /// once the announcement is recorded. A caller that published calls
    /// [`SaleStore::mark_announced`]; one that failed (or died) lets the lease lapse, and a
    /// later sweep tries again: announcements are made at least once.
    async fn claim_announcement(
        &self,
        sale: &SaleId,
        what: Announcement,
        lease_ms: u64,
        now: u64,
    ) -> Result<bool, StoreError>;
    /// Record, durably and with the sale, that `what` was published: it is never claimed
    /// again.
    async fn mark_announced(&self, sale: &SaleId, what: Announcement) -> Result<(), StoreError>;

    /// Whether the store can serve requests (drives `/readyz`).
    async fn ready(&self) -> bool;
}
