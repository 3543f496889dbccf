//! Commerce on the wire: products shown in a room, flash sales, and reservations. Part of the
//! one protocol definition (see the parent module); `docs/protocol.md` documents every shape.
//!
//! Money is always an integer amount of a currency's minor units (fen for CNY, cents for USD):
//! no floating point ever touches a price. Prices are set in CNY; each market also gets a
//! display price in its own currency, converted with the FX rate configured on the server
//! (and that rate's date), so every viewer sees the same numbers for the same market.

use super::translation::ProductText;
use super::{RoomId, UserRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

string_newtype!(
    /// A product in the merchant's catalog: `[A-Za-z0-9_.:-]{1,64}`.
    ProductId
);
string_newtype!(
    /// A flash sale (server-assigned).
    SaleId
);
string_newtype!(
    /// A reservation: stock held for one buyer until payment or its deadline.
    ReservationId
);

/// An amount of money in a currency's minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// ISO 4217 code (`CNY`, `USD`, `HKD`, `MOP`...).
    pub currency: String,
    /// Minor units (cents, fen).
    pub minor: i64,
}

/// What a product (or a sale) costs in one market, in that market's display currency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarketOffer {
    /// Whether buyers from this market may buy it.
    pub available: bool,
    /// Price converted from CNY at the server's configured rate.
    pub price: Money,
    /// Buyer-paid tax estimate (import VAT / sales tax), in the display currency.
    pub tax_estimate: Money,
    /// Shipping estimate to this market, in the display currency.
    pub shipping_estimate: Money,
}

/// A product as viewers see it: everything needed to render a product card in any market.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProductView {
    pub id: ProductId,
    /// In the merchant's language (`lang`); the translation feature adds translations.
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub image_url: String,
    /// The merchant's language (BCP 47, e.g. `zh`).
    #[serde(default)]
    pub lang: String,
    /// List price in CNY minor units (fen).
    pub price_cny: i64,
    /// Per market code (`us`, `hk`, `mo`...): availability and display price. Markets the
    /// server has no currency for are absent.
    pub markets: BTreeMap<String, MarketOffer>,
    /// Date of the FX rates used for the display prices (`YYYY-MM-DD`).
    pub fx_date: String,
    /// Title and description in each language of the markets the product is sold in,
    /// translated through the merchant's glossary (absent: not translated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub translations: BTreeMap<String, ProductText>,
}

impl ProductView {
    /// The offer for `market`, if the product is available there.
    pub fn offer(&self, market: &str) -> Option<&MarketOffer> {
        self.markets.get(market).filter(|o| o.available)
    }
}

/// Where a sale is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    /// Announced; buys are refused until `starts_at`.
    Scheduled,
    /// Buys are admitted.
    Open,
    /// Every unit is reserved or sold (units can come back when holds lapse).
    SoldOut,
    /// Past `ends_at`, or ended by the host.
    Ended,
}

impl SaleStatus {
    /// Where the status sits in a sale's life as time passes: `scheduled` (0) before
    /// `open`/`sold_out` (1) before `ended` (2). Two stock objects with the same `version`
    /// have the same counters; the later phase is the newer one.
    pub fn phase(self) -> u8 {
        match self {
            SaleStatus::Scheduled => 0,
            SaleStatus::Open | SaleStatus::SoldOut => 1,
            SaleStatus::Ended => 2,
        }
    }
}

/// The order of a sale's stock objects: `ended` is final; otherwise a higher `version` is
/// newer; at the same version (same counters), a later [`SaleStatus::phase`] is newer.
/// Compare with `>`: a stock object is applied only when its key is greater than the key of
/// what is held ([`SaleView::apply_stock`]).
pub fn stock_order(version: u64, status: SaleStatus) -> (bool, u64, u8) {
    (status == SaleStatus::Ended, version, status.phase())
}

/// A flash sale as viewers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleView {
    pub id: SaleId,
    pub room: RoomId,
    pub product: ProductView,
    /// Units on sale.
    pub quantity: u64,
    /// Units not reserved or sold at the time of this view.
    pub remaining: u64,
    /// Sale price in CNY fen.
    pub price_cny: i64,
    /// Sale price per market (same shape as the product's offers).
    pub markets: BTreeMap<String, MarketOffer>,
    /// Most units one buyer may hold or buy in this sale.
    pub per_buyer_limit: u32,
    /// Server time (Unix ms) when buys open: every client counts down to this instant using
    /// its clock offset, so New York and Macau see the same countdown.
    pub starts_at: u64,
    /// Server time (Unix ms) when the sale ends.
    pub ends_at: u64,
    /// How long a buyer has to pay after reserving, seconds.
    pub hold_secs: u64,
    pub status: SaleStatus,
    /// The sale's change sequence when `remaining` was read: it grows with every change of
    /// the sale's stock in the sale store (a reservation made or ended, the sale ended). A
    /// stock object with a lower version is older than this view ([`SaleView::apply_stock`]).
    #[serde(default)]
    pub version: u64,
}

/// A sale's stock at one moment: what `sale_stock` carries. Kept small because every viewer
/// gets it a few times a second during a sale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleStock {
    pub sale: SaleId,
    pub quantity: u64,
    pub remaining: u64,
    pub status: SaleStatus,
    /// The sale's change sequence when these counters were read (see [`SaleView::version`]):
    /// events published by different nodes can arrive out of order, and an older one must
    /// not undo a newer one.
    #[serde(default)]
    pub version: u64,
}

impl SaleView {
    /// This view's counters, as `sale_stock` (and started, sold-out, ended) events carry them.
    pub fn stock(&self) -> SaleStock {
        SaleStock {
            sale: self.id.clone(),
            quantity: self.quantity,
            remaining: self.remaining,
            status: self.status,
            version: self.version,
        }
    }

    /// Apply a stock object (`sale_started`, `sale_stock`, `sale_sold_out`, `sale_ended`) to
    /// this view: only one of this sale, and only when it is newer than what the view holds
    /// ([`stock_order`]); an older one, delivered late, is ignored. Returns whether the view
    /// changed. Engines keep `state.sale` with it, and clients should keep their sale with it.
    pub fn apply_stock(&mut self, stock: &SaleStock) -> bool {
        if stock.sale != self.id
            || stock_order(stock.version, stock.status) <= stock_order(self.version, self.status)
        {
            return false;
        }
        self.remaining = stock.remaining;
        self.status = stock.status;
        self.version = stock.version;
        true
    }
}

/// What a host sends to launch a sale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleSpec {
    pub product: ProductId,
    pub quantity: u64,
    /// Sale price in CNY fen.
    pub price_cny: i64,
    #[serde(default = "one_u32")]
    pub per_buyer_limit: u32,
    /// Absolute start (server Unix ms). Exactly one of `starts_at` / `starts_in_secs`; neither
    /// means "now".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<u64>,
    /// Countdown: the sale starts this many seconds after the server receives the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_in_secs: Option<u64>,
    /// How long buys are admitted after the start.
    pub duration_secs: u64,
    /// Payment window after a reservation.
    #[serde(default = "default_hold")]
    pub hold_secs: u64,
}

fn one_u32() -> u32 {
    1
}

fn default_hold() -> u64 {
    300
}

/// How a reservation ended (or that it has not yet).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    /// Stock is held until `deadline`.
    Reserved,
    /// Paid: the order is final.
    Confirmed,
    /// The hold lapsed, the buyer cancelled, or payment failed; the units went back on sale.
    Released,
}

/// A buyer's reservation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: ReservationId,
    pub sale: SaleId,
    pub quantity: u32,
    /// What the buyer pays, in CNY fen (sale price × quantity).
    pub amount_cny: i64,
    /// In the buyer's market currency: the unit price shown to that market × `quantity`.
    pub amount_display: Money,
    /// The buyer's market.
    pub market: String,
    /// Server time (Unix ms) by which payment must be confirmed.
    pub deadline: u64,
    pub state: ReservationState,
}

/// Reply to `buy`: the reservation (a retried idempotency key returns the same one, in its
/// current state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationReply {
    pub reservation: ReservationView,
    /// True when this key had already reserved and the original reservation is returned.
    #[serde(default)]
    pub replayed: bool,
}

/// Reply to `start_sale` / `end_sale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleReply {
    pub sale: Box<SaleView>,
}

/// `GET /api/sales/{id}`: a sale with live stock, and the server's clock (Unix ms) when it
/// answered, so a client without a WebSocket can count down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaleLookup {
    pub sale: SaleView,
    pub server_time: u64,
}

/// `GET /api/rooms/{room}/sales`: one page of a room's sales, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomSalesPage {
    pub sales: Vec<SaleView>,
    /// Pass as `before` to get the next (older) page; `None` when this is the last one.
    pub next: Option<u64>,
}

/// `GET /api/reservations/{id}`: a reservation in its current state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationLookup {
    pub reservation: ReservationView,
}

/// Social proof: "someone in Hong Kong just bought this" — the market only, never who.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurchaseNotice {
    pub sale: SaleId,
    pub market: String,
    /// Purchases aggregated into this notice (it is rate-limited).
    pub count: u64,
}

/// Staff action on the room's showcase, carried by `product_pinned` / `product_unpinned`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedProduct {
    pub product: ProductView,
    pub by: UserRef,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> SaleView {
        SaleView {
            id: "s1".into(),
            room: "r".into(),
            product: ProductView {
                id: "p".into(),
                title: "t".into(),
                description: String::new(),
                image_url: String::new(),
                lang: "zh".into(),
                price_cny: 1,
                markets: BTreeMap::new(),
                fx_date: "2026-11-20".into(),
                translations: BTreeMap::new(),
            },
            quantity: 10,
            remaining: 10,
            price_cny: 1,
            markets: BTreeMap::new(),
            per_buyer_limit: 1,
            starts_at: 0,
            ends_at: 1,
            hold_secs: 60,
            status: SaleStatus::Scheduled,
            version: 0,
        }
    }

    fn stock(remaining: u64, status: SaleStatus, version: u64) -> SaleStock {
        SaleStock {
            sale: "s1".into(),
            quantity: 10,
            remaining,
            status,
            version,
        }
    }

    #[test]
    fn stock_patches_apply_in_version_order_only() {
        let mut v = view();
        assert!(v.apply_stock(&stock(10, SaleStatus::Open, 0)), "started");
        assert!(v.apply_stock(&stock(0, SaleStatus::SoldOut, 12)));
        // Late: an older update published before the sell-out.
        assert!(!v.apply_stock(&stock(4, SaleStatus::Open, 7)));
        assert_eq!(
            (v.remaining, v.status, v.version),
            (0, SaleStatus::SoldOut, 12)
        );
        // Same version, earlier phase: older. Same version, later phase: newer.
        assert!(!v.apply_stock(&stock(0, SaleStatus::Scheduled, 12)));
        assert!(v.apply_stock(&stock(0, SaleStatus::Ended, 12)));
        // Ended is final, whatever the version; another sale's stock never applies.
        assert!(!v.apply_stock(&stock(5, SaleStatus::Open, 40)));
        let mut other = stock(5, SaleStatus::Ended, 99);
        other.sale = "s2".into();
        assert!(!v.apply_stock(&other));
        assert_eq!(
            (v.remaining, v.status, v.version),
            (0, SaleStatus::Ended, 12)
        );
        // Objects from a server without versions still parse (version 0).
        let old: SaleStock =
            serde_json::from_str(r#"{"sale":"s1","quantity":10,"remaining":3,"status":"open"}"#)
                .expect("parses");
        assert_eq!(old.version, 0);
    }
}
