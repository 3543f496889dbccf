//! The commerce service: what the WebSocket session driver and the HTTP API call. It owns
//! validation and permissions of commerce commands, prices per market, the room events that
//! commerce produces (pins, sale scheduled/started/stock/sold-out/ended, social proof), and the
//! background sweep that releases lapsed holds and announces starts and ends. The sale rules
//! themselves live in the store ([`super::SaleStore`]), never here.
//!
//! Cluster behaviour: every node sweeps the live sales, a bounded batch per sweep (releases
//! are atomic, so two nodes sweeping the same reservation release it once). Throttled
//! updates are claimed through the store, so one node publishes each. `sale_started` and
//! `sale_ended` are made at least once: a node takes a lease on the announcement, publishes,
//! and records it with the sale; a failed claim or publish (or a node dying in between) is
//! tried again by a later sweep once the lease lapses, and a recorded announcement is never
//! made again. A viewer can see one twice only if a publish succeeded but recording it failed
//! (or its node died in between), or a publish that timed out was applied after all.

use super::pricing::{money, product_view, sale_view};
use super::{
    Announced, Announcement, Bought, BuyRefusal, BuyRequest, Product, ReleaseReason, Reservation,
    SalePosition, SaleRecord, SaleSnapshot, SaleStore, Settled, StoreError,
};
use crate::config::CommerceConfig;
use crate::engine::EngineError;
use crate::hub::Hub;
use ferry_client::protocol::commerce::{
    PinnedProduct, ProductId, ProductView, PurchaseNotice, ReservationId, ReservationView, SaleId,
    SaleSpec, SaleStatus, SaleView,
};
use ferry_client::protocol::{ErrorCode, Role, RoomEvent, RoomId, UserId, UserRef};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Why a commerce command failed; each maps to a documented error code and HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommerceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Refused(#[from] BuyRefusal),
    #[error("the reservation is already {0}")]
    Final(&'static str),
    #[error("room: {0}")]
    Room(EngineError),
    #[error("temporarily unavailable, retry: {0}")]
    Unavailable(String),
}

impl From<StoreError> for CommerceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SaleNotFound => CommerceError::NotFound("sale"),
            StoreError::SaleExists => CommerceError::Invalid("sale id taken".into()),
            StoreError::Unavailable(why) => CommerceError::Unavailable(why),
        }
    }
}

impl CommerceError {
    /// The wire error code, and how long to wait before retrying (temporary errors).
    pub fn code(&self) -> (ErrorCode, Option<u64>) {
        match self {
            CommerceError::Invalid(_) => (ErrorCode::BadRequest, None),
            CommerceError::Forbidden(_) => (ErrorCode::Forbidden, None),
            CommerceError::NotFound(_) => (ErrorCode::NotFound, None),
            CommerceError::Final(_) => (ErrorCode::ReservationFinal, None),
            CommerceError::Room(EngineError::RoomNotFound) => (ErrorCode::RoomNotFound, None),
            CommerceError::Room(EngineError::RoomClosed) => (ErrorCode::RoomClosed, None),
            CommerceError::Room(EngineError::Unavailable(_)) | CommerceError::Unavailable(_) => {
                (ErrorCode::Unavailable, Some(1000))
            }
            CommerceError::Room(e) => e.wire_code(),
            CommerceError::Refused(r) => match r {
                BuyRefusal::NotStarted { .. } => (ErrorCode::SaleNotStarted, None),
                BuyRefusal::Ended => (ErrorCode::SaleEnded, None),
                BuyRefusal::NotInMarket => (ErrorCode::NotInMarket, None),
                BuyRefusal::SoldOut { .. } => (ErrorCode::SoldOut, None),
                BuyRefusal::LimitReached { .. } => (ErrorCode::LimitReached, None),
                BuyRefusal::KeyConflict => (ErrorCode::IdempotencyConflict, None),
                BuyRefusal::BadQuantity => (ErrorCode::BadRequest, None),
            },
        }
    }
}

/// Adds what a room's viewers need to read a pinned product: its title and description in
/// the languages read in the room. The chat service implements it (translation lives there);
/// the server sets it once at start ([`Commerce::set_showcase_translator`]).
#[async_trait::async_trait]
pub trait ShowcaseTranslator: Send + Sync {
    async fn translate_pin(&self, room: &RoomId, product: &Product, view: &mut ProductView);
}

/// Who is buying: from the verified token.
#[derive(Clone, Debug)]
pub struct Buyer {
    pub user: UserId,
    pub market: String,
}

/// Per-sale throttling state on this node.
#[derive(Default)]
struct Pending {
    /// Stock changed since this node last published (or saw published) an update.
    stock_dirty: bool,
    /// Purchases not yet announced, and the market of the latest.
    purchases: u64,
    last_market: String,
}

/// How long after its end a sale stays live (visited by the sweep) once announced and
/// without holds: covers nodes whose clocks run behind, which may still admit a buy (and
/// create a hold to sweep) until their clock reaches the end.
const RETIRE_AFTER_END_MS: u64 = 60_000;

pub struct Commerce {
    cfg: CommerceConfig,
    metrics: super::metrics::CommerceMetrics,
    store: Arc<dyn SaleStore>,
    hub: Arc<Hub>,
    pending: Mutex<HashMap<SaleId, Pending>>,
    /// Where the next sweep resumes in the live sales (0: from the first).
    sweep_cursor: Mutex<SalePosition>,
    /// Room and price per sale (immutable), so buys skip a store read.
    basics: Mutex<HashMap<SaleId, (RoomId, i64)>>,
    /// Translates pinned products for the room (unset: pins carry the listing's own
    /// translations only).
    showcase: std::sync::OnceLock<Arc<dyn ShowcaseTranslator>>,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reservation ids start with their sale's id, so a webhook naming only the reservation
/// finds its sale without a lookup: `<sale>.<random>`.
pub fn sale_of(reservation: &ReservationId) -> Option<SaleId> {
    let (sale, rest) = reservation.as_str().rsplit_once('.')?;
    (!sale.is_empty() && !rest.is_empty()).then(|| SaleId(sale.to_owned()))
}

impl Commerce {
    pub fn new(cfg: CommerceConfig, store: Arc<dyn SaleStore>, hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            metrics: Default::default(),
            store,
            hub,
            pending: Mutex::new(HashMap::new()),
            sweep_cursor: Mutex::new(0),
            basics: Mutex::new(HashMap::new()),
            showcase: std::sync::OnceLock::new(),
        })
    }

    /// Set the translator of pinned products (once; later calls are ignored).
    pub fn set_showcase_translator(&self, t: Arc<dyn ShowcaseTranslator>) {
        let _ = self.showcase.set(t);
    }

    pub fn store(&self) -> &Arc<dyn SaleStore> {
        &self.store
    }

    pub fn config(&self) -> &CommerceConfig {
        &self.cfg
    }

    pub fn metrics(&self) -> &super::metrics::CommerceMetrics {
        &self.metrics
    }

    // -- catalog ----------------------------------------------------------------------

    /// Create or replace a product. Switching a market off also closes it in the product's
    /// live sales.
    pub async fn put_product(&self, product: Product) -> Result<Product, CommerceError> {
        if !valid_id(product.id.as_str()) {
            return Err(CommerceError::Invalid(
                "product id must match [A-Za-z0-9_.:-]{1,64}".into(),
            ));
        }
        if product.title.trim().is_empty() || product.title.chars().count() > 200 {
            return Err(CommerceError::Invalid(
                "title must be 1..=200 characters".into(),
            ));
        }
        if product.description.chars().count() > 5000 {
            return Err(CommerceError::Invalid(
                "description must be at most 5000 characters".into(),
            ));
        }
        if product.price_cny < 0 {
            return Err(CommerceError::Invalid("price_cny must be >= 0".into()));
        }
        if let Some(unknown) = product
            .markets
            .keys()
            .find(|m| !self.cfg.markets.contains_key(*m))
        {
            return Err(CommerceError::Invalid(format!(
                "unknown market `{unknown}` (configured: {})",
                self.cfg
                    .markets
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.store.put_product(product.clone()).await?;
        // The sales that can still admit buyers are live (a retired one has ended).
        let enabled = product.enabled_markets();
        let mut after = 0;
        loop {
            let page = self.store.live_sales(after, 1000).await?;
            for (_, id) in &page {
                if let Some(s) = self.store.sale(id).await? {
                    if s.sale.product == product.id && s.sale.markets != enabled {
                        self.store.set_sale_markets(id, enabled.clone()).await?;
                    }
                }
            }
            match page.last() {
                Some((position, _)) if page.len() == 1000 => after = *position,
                _ => break,
            }
        }
        Ok(product)
    }

    async fn product(&self, id: &ProductId) -> Result<Product, CommerceError> {
        self.store
            .product(id)
            .await?
            .ok_or(CommerceError::NotFound("product"))
    }

    /// A host may show and sell only its own merchant's products (admins any; a product
    /// saved before products had merchants belongs to nobody and may be used by any host).
    fn check_merchant(product: &Product, by: &UserRef) -> Result<(), CommerceError> {
        if by.role == Role::Admin || product.merchant.is_empty() || product.merchant == by.id.0 {
            return Ok(());
        }
        Err(CommerceError::Forbidden(
            "this product belongs to another merchant".into(),
        ))
    }

    // -- room showcase ----------------------------------------------------------------

    pub async fn pin_product(
        &self,
        room: &RoomId,
        product: &ProductId,
        by: &UserRef,
    ) -> Result<(), CommerceError> {
        let product = self.product(product).await?;
        Self::check_merchant(&product, by)?;
        let mut view = product_view(&product, &self.cfg);
        if let Some(t) = self.showcase.get() {
            t.translate_pin(room, &product, &mut view).await;
        }
        let event = RoomEvent::ProductPinned {
            pinned: Box::new(PinnedProduct {
                product: view,
                by: by.clone(),
            }),
        };
        self.hub
            .publish(room, &event)
            .await
            .map_err(CommerceError::Room)?;
        Ok(())
    }

    pub async fn unpin_product(&self, room: &RoomId, by: &UserRef) -> Result<(), CommerceError> {
        let event = RoomEvent::ProductUnpinned { by: by.clone() };
        self.hub
            .publish(room, &event)
            .await
            .map_err(CommerceError::Room)?;
        Ok(())
    }

    // -- sales ------------------------------------------------------------------------

    pub async fn start_sale(
        &self,
        room: &RoomId,
        spec: SaleSpec,
        now: u64,
        by: &UserRef,
    ) -> Result<SaleView, CommerceError> {
        let product = self.product(&spec.product).await?;
        Self::check_merchant(&product, by)?;
        if spec.quantity == 0 || spec.quantity > 10_000_000 {
            return Err(CommerceError::Invalid(
                "quantity must be 1..=10000000".into(),
            ));
        }
        if spec.price_cny < 0 {
            return Err(CommerceError::Invalid("price_cny must be >= 0".into()));
        }
        if spec.per_buyer_limit == 0 {
            return Err(CommerceError::Invalid(
                "per_buyer_limit must be >= 1".into(),
            ));
        }
        let starts_at = match (spec.starts_at, spec.starts_in_secs) {
            (Some(_), Some(_)) => {
                return Err(CommerceError::Invalid(
                    "give starts_at or starts_in_secs, not both".into(),
                ))
            }
            (Some(at), None) => at.max(now),
            (None, Some(secs)) if secs <= 86_400 => now + secs * 1000,
            (None, Some(_)) => {
                return Err(CommerceError::Invalid(
                    "starts_in_secs must be <= 86400".into(),
                ))
            }
            (None, None) => now,
        };
        if starts_at > now + 7 * 86_400_000 {
            return Err(CommerceError::Invalid(
                "a sale must start within 7 days".into(),
            ));
        }
        let duration_ms = spec.duration_secs.saturating_mul(1000);
        if duration_ms == 0 || duration_ms > self.cfg.max_sale_duration.as_millis() as u64 {
            return Err(CommerceError::Invalid(format!(
                "duration_secs must be 1..={}",
                self.cfg.max_sale_duration.as_secs()
            )));
        }
        let hold_ms = spec.hold_secs.saturating_mul(1000);
        if hold_ms == 0 || hold_ms > self.cfg.max_hold.as_millis() as u64 {
            return Err(CommerceError::Invalid(format!(
                "hold_secs must be 1..={}",
                self.cfg.max_hold.as_secs()
            )));
        }
        // Make sure the room exists before the sale does.
        match self.hub.engine().room(room).await {
            Ok(Some(r)) if !r.closed => {}
            Ok(Some(_)) => return Err(CommerceError::Room(EngineError::RoomClosed)),
            Ok(None) => return Err(CommerceError::Room(EngineError::RoomNotFound)),
            Err(e) => return Err(CommerceError::Room(e)),
        }
        let sale = SaleRecord {
            id: SaleId(format!("s{}", random_hex(8))),
            room: room.clone(),
            product: product.id.clone(),
            quantity: spec.quantity,
            price_cny: spec.price_cny,
            per_buyer_limit: spec.per_buyer_limit,
            starts_at,
            ends_at: starts_at + duration_ms,
            hold_ms,
            markets: product.enabled_markets(),
            ended_at: None,
            created_at: now,
        };
        self.store.create_sale(sale.clone()).await?;
        let snapshot = SaleSnapshot {
            remaining: sale.quantity,
            reserved: 0,
            confirmed: 0,
            version: 0,
            announced: Announced::default(),
            sale,
        };
        let view = sale_view(&snapshot, &product, &self.cfg, now);
        // The full view goes out once; started, stock, sold-out and ended events carry only
        // the counters (every viewer gets them, at the busiest moments of the sale).
        let event = RoomEvent::SaleScheduled {
            sale: Box::new(view.clone()),
        };
        self.hub
            .publish(room, &event)
            .await
            .map_err(CommerceError::Room)?;
        tracing::info!(sale = %view.id, %room, product = %view.product.id, quantity = view.quantity, starts_at, "sale created");
        Ok(view)
    }

    /// The sale's current view (live stock and status).
    pub async fn sale(&self, id: &SaleId, now: u64) -> Result<SaleView, CommerceError> {
        let snap = self
            .store
            .sale(id)
            .await?
            .ok_or(CommerceError::NotFound("sale"))?;
        let product = self.product(&snap.sale.product).await?;
        Ok(sale_view(&snap, &product, &self.cfg, now))
    }

    /// One page of a room's sales, newest first (at most `limit`, 1..=100), each with live
    /// stock, and the position to ask the next page `before` (`None`: no more).
    pub async fn room_sales(
        &self,
        room: &RoomId,
        before: Option<SalePosition>,
        limit: usize,
        now: u64,
    ) -> Result<(Vec<SaleView>, Option<SalePosition>), CommerceError> {
        let limit = limit.clamp(1, 100);
        let mut page = self.store.room_sales(room, before, limit + 1).await?;
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more {
            page.last().map(|(position, _)| *position)
        } else {
            None
        };
        let mut sales = Vec::with_capacity(page.len());
        for (_, id) in &page {
            match self.sale(id, now).await {
                Ok(view) => sales.push(view),
                // Listed but gone (Redis lost it): skip it.
                Err(CommerceError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((sales, next))
    }

    pub async fn end_sale(
        &self,
        room: Option<&RoomId>,
        id: &SaleId,
        now: u64,
    ) -> Result<SaleView, CommerceError> {
        let snap = self
            .store
            .sale(id)
            .await?
            .ok_or(CommerceError::NotFound("sale"))?;
        if room.is_some_and(|r| *r != snap.sale.room) {
            return Err(CommerceError::NotFound("sale"));
        }
        self.store.end_sale(id, now).await?;
        let view = self.sale(id, now).await?;
        if view.status == SaleStatus::Ended {
            self.announce(&view, Announcement::Ended, now).await;
        }
        Ok(view)
    }

    /// Make a sale's `sale_started` or `sale_ended` (at least once, recorded so it is never
    /// made again). Without the lease (another node is making it, or it was made) this does
    /// nothing; when the claim or the publish fails, the lease lapses after
    /// `commerce.announce_retry` and a later sweep tries again.
    async fn announce(&self, view: &SaleView, what: Announcement, now: u64) {
        let lease = self.cfg.announce_retry.as_millis() as u64;
        match self
            .store
            .claim_announcement(&view.id, what, lease, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(sale = %view.id, what = what.name(), error = %e, "cannot claim the announcement; a later sweep tries again");
                return;
            }
        }
        let event = match what {
            Announcement::Started => RoomEvent::SaleStarted {
                stock: view.stock(),
            },
            Announcement::Ended => RoomEvent::SaleEnded {
                stock: view.stock(),
            },
        };
        match self.hub.publish(&view.room, &event).await {
            Ok(_) => {}
            // Nobody can see it: the room is closed, or gone (a memory engine restart).
            Err(e @ (EngineError::RoomNotFound | EngineError::RoomClosed)) => {
                tracing::info!(sale = %view.id, room = %view.room, what = what.name(), error = %e, "announcement dropped: no room to make it in");
            }
            // Moderator-queue refusals answer only `hold`/`resolve` state changes, which a
            // sale announcement never carries.
            Err(
                e @ (EngineError::NotHeld
                | EngineError::HeldQueueFull
                | EngineError::LiveElsewhere
                | EngineError::NotLive),
            ) => {
                tracing::error!(sale = %view.id, what = what.name(), error = %e, "announcement refused with a moderation or live-state error (a bug)");
            }
            Err(e @ EngineError::Unavailable(_)) => {
                tracing::warn!(sale = %view.id, what = what.name(), error = %e, "announcement not published; tried again after commerce.announce_retry");
                return;
            }
        }
        if let Err(e) = self.store.mark_announced(&view.id, what).await {
            tracing::warn!(sale = %view.id, what = what.name(), error = %e, "announcement published but not recorded; it may be made again");
        }
    }

    // -- buying -----------------------------------------------------------------------

    /// Reserve units for `buyer`. `Ok((view, replayed))`.
    pub async fn buy(
        &self,
        room: Option<&RoomId>,
        sale: &SaleId,
        buyer: &Buyer,
        quantity: u32,
        key: &str,
        now: u64,
    ) -> Result<(ReservationView, bool), CommerceError> {
        let started = std::time::Instant::now();
        let result = self.buy_inner(room, sale, buyer, quantity, key, now).await;
        let outcome = match &result {
            Ok((_, false)) => "reserved",
            Ok((_, true)) => "replayed",
            Err(CommerceError::Refused(r)) => match r {
                BuyRefusal::SoldOut { .. } => "sold_out",
                BuyRefusal::LimitReached { .. } => "limit_reached",
                BuyRefusal::NotStarted { .. } => "not_started",
                BuyRefusal::Ended => "ended",
                BuyRefusal::NotInMarket => "not_in_market",
                BuyRefusal::KeyConflict => "key_conflict",
                BuyRefusal::BadQuantity => "invalid",
            },
            Err(CommerceError::Unavailable(_)) => "unavailable",
            Err(_) => "invalid",
        };
        self.metrics.buy(outcome, started.elapsed().as_secs_f64());
        result
    }

    async fn buy_inner(
        &self,
        room: Option<&RoomId>,
        sale: &SaleId,
        buyer: &Buyer,
        quantity: u32,
        key: &str,
        now: u64,
    ) -> Result<(ReservationView, bool), CommerceError> {
        if key.is_empty() || key.len() > 128 {
            return Err(CommerceError::Invalid(
                "an idempotency key of 1..=128 bytes is required".into(),
            ));
        }
        if !(1..=1000).contains(&quantity) {
            return Err(CommerceError::Invalid("quantity must be 1..=1000".into()));
        }
        if !valid_id(sale.as_str()) {
            return Err(CommerceError::NotFound("sale"));
        }
        let (sale_room, price_cny) = self.sale_basics(sale).await?;
        if room.is_some_and(|r| *r != sale_room) {
            return Err(CommerceError::NotFound("sale"));
        }
        // Buyers from a market without a configured currency cannot be priced.
        let Some(market) = self.cfg.markets.get(&buyer.market) else {
            return Err(CommerceError::Refused(BuyRefusal::NotInMarket));
        };
        // The unit price the viewer saw, times the quantity (converting the total instead
        // could differ by a rounding step from what was displayed).
        let unit = money(price_cny, market);
        let amount_display = ferry_client::protocol::commerce::Money {
            currency: unit.currency,
            minor: unit.minor.saturating_mul(i64::from(quantity)),
        };
        let req = BuyRequest {
            buyer: buyer.user.clone(),
            market: buyer.market.clone(),
            quantity,
            key: key.to_owned(),
            now,
            new_id: ReservationId(format!("{sale}.{}", random_hex(8))),
            amount_display,
        };
        match self.store.buy(sale, req).await? {
            Ok(Bought::New(r, _)) => {
                {
                    let mut pending = self.pending.lock();
                    let p = pending.entry(sale.clone()).or_default();
                    p.stock_dirty = true;
                    p.purchases += 1;
                    p.last_market = r.market.clone();
                }
                Ok((r.view(), false))
            }
            Ok(Bought::Replayed(r)) => Ok((r.view(), true)),
            Err(refusal) => Err(CommerceError::Refused(refusal)),
        }
    }

    /// The room a sale runs in, from the same cache as buys (no store step once cached).
    pub async fn sale_room(&self, sale: &SaleId) -> Result<RoomId, CommerceError> {
        if !valid_id(sale.as_str()) {
            return Err(CommerceError::NotFound("sale"));
        }
        Ok(self.sale_basics(sale).await?.0)
    }

    /// A sale's room and price, which never change: cached, so a buy costs the store one
    /// step (one script on Redis) rather than two.
    async fn sale_basics(&self, sale: &SaleId) -> Result<(RoomId, i64), CommerceError> {
        if let Some(hit) = self.basics.lock().get(sale) {
            return Ok(hit.clone());
        }
        let snap = self
            .store
            .sale(sale)
            .await?
            .ok_or(CommerceError::NotFound("sale"))?;
        let basics = (snap.sale.room, snap.sale.price_cny);
        let mut cache = self.basics.lock();
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(sale.clone(), basics.clone());
        Ok(basics)
    }

    /// The buyer gives a reservation back (`room`, when given, must be the sale's).
    pub async fn cancel(
        &self,
        room: Option<&RoomId>,
        reservation: &ReservationId,
        buyer: &UserId,
        now: u64,
    ) -> Result<ReservationView, CommerceError> {
        let sale = sale_of(reservation).ok_or(CommerceError::NotFound("reservation"))?;
        if let Some(room) = room {
            let snap = self.store.sale(&sale).await?;
            if snap.is_none_or(|s| s.sale.room != *room) {
                return Err(CommerceError::NotFound("reservation"));
            }
        }
        let r = self
            .store
            .reservation(&sale, reservation)
            .await?
            .ok_or(CommerceError::NotFound("reservation"))?;
        if r.buyer != *buyer {
            return Err(CommerceError::NotFound("reservation"));
        }
        match self
            .store
            .release(&sale, reservation, ReleaseReason::Cancelled, now)
            .await?
        {
            Some(Settled::Now(r, _)) => {
                self.metrics.released_cancelled.fetch_add(1, Relaxed);
                self.mark_dirty(&sale);
                Ok(r.view())
            }
            Some(Settled::Already(r)) => Err(CommerceError::Final(state_name(&r))),
            None => Err(CommerceError::NotFound("reservation")),
        }
    }

    /// A payment succeeded (`paid`) or failed, as reported by the payment webhook.
    pub async fn settle_payment(
        &self,
        reservation: &ReservationId,
        paid: bool,
        payment_ref: &str,
        now: u64,
    ) -> Result<Settled, CommerceError> {
        let sale = sale_of(reservation).ok_or(CommerceError::NotFound("reservation"))?;
        let outcome = if paid {
            self.store
                .confirm(&sale, reservation, payment_ref, now)
                .await?
        } else {
            self.store
                .release(&sale, reservation, ReleaseReason::PaymentFailed, now)
                .await?
        };
        let outcome = outcome.ok_or(CommerceError::NotFound("reservation"))?;
        if let Settled::Now(r, _) = &outcome {
            if r.state == ferry_client::protocol::commerce::ReservationState::Released {
                match r.release_reason {
                    Some(ReleaseReason::Expired) => &self.metrics.released_expired,
                    _ => &self.metrics.released_payment_failed,
                }
                .fetch_add(1, Relaxed);
                self.mark_dirty(&sale);
            } else {
                self.metrics.confirmed.fetch_add(1, Relaxed);
            }
            tracing::info!(reservation = %r.id, state = state_name(r), "payment settled");
        }
        Ok(outcome)
    }

    fn mark_dirty(&self, sale: &SaleId) {
        self.pending
            .lock()
            .entry(sale.clone())
            .or_default()
            .stock_dirty = true;
    }

    /// Publish the sale's stock (or sold-out) update if this node wins the throttle.
    ///
    /// The counters are read after the claim, so they are the freshest this node can give,
    /// and carry the sale's version: an event that reaches the room late (a slow publish on
    /// one node while another node publishes a newer one) is ignored by the engines' room
    /// state and by clients, instead of undoing the newer one.
    async fn publish_stock(&self, sale: &SaleId, now: u64) {
        // Sold-out notices share the stock throttle: a sale that sells out, gets units back
        // and sells out again announces each change (the dirty flag keeps a throttled change
        // for the next sweep).
        let ttl = self.cfg.stock_update_interval.as_millis() as u64;
        match self.store.claim(&format!("stock:{sale}"), ttl, now).await {
            Ok(true) => {}
            _ => return,
        }
        if let Some(p) = self.pending.lock().get_mut(sale) {
            p.stock_dirty = false;
        }
        let published = match self.sale(sale, now).await {
            Ok(view) => {
                let event = if view.status == SaleStatus::SoldOut {
                    RoomEvent::SaleSoldOut {
                        stock: view.stock(),
                    }
                } else {
                    RoomEvent::SaleStock {
                        stock: view.stock(),
                    }
                };
                self.hub.publish(&view.room, &event).await.map(|_| ())
            }
            Err(e) => Err(EngineError::Unavailable(e.to_string())),
        };
        if let Err(e) = published {
            tracing::debug!(%sale, error = %e, "stock update not published; retried");
            self.mark_dirty(sale);
        }
    }

    // -- background -------------------------------------------------------------------

    /// One sweep: release lapsed holds, announce starts and ends, flush throttled updates.
    ///
    /// It visits at most `commerce.sweep_max_sales` live sales, in turns (the next sweep
    /// resumes after the last one visited), plus the sales this node changed since its last
    /// sweep (their stock updates and social proof are due).
    pub async fn sweep(&self, now: u64) {
        let batch = self.cfg.sweep_max_sales.max(1);
        let after = *self.sweep_cursor.lock();
        let page = match self.store.live_sales(after, batch).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, "sweep: cannot list the live sales");
                return;
            }
        };
        *self.sweep_cursor.lock() = match page.last() {
            Some((position, _)) if page.len() == batch => *position,
            _ => 0,
        };
        let mut visited = HashSet::with_capacity(page.len());
        for (_, id) in page {
            if let Err(e) = self.sweep_sale(&id, now).await {
                tracing::debug!(sale = %id, error = %e, "sweep failed");
            }
            visited.insert(id);
        }
        let local: Vec<SaleId> = self
            .pending
            .lock()
            .iter()
            .filter(|(id, p)| (p.stock_dirty || p.purchases > 0) && !visited.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in local {
            if let Err(e) = self.sweep_sale(&id, now).await {
                tracing::debug!(sale = %id, error = %e, "sweep failed");
            }
        }
        // Nothing pending is the same as no entry.
        self.pending
            .lock()
            .retain(|_, p| p.stock_dirty || p.purchases > 0);
    }

    async fn sweep_sale(&self, id: &SaleId, now: u64) -> Result<(), CommerceError> {
        let released = self.store.expire_due(id, now, 1000).await?;
        if !released.is_empty() {
            self.metrics
                .released_expired
                .fetch_add(released.len() as u64, Relaxed);
            tracing::debug!(sale = %id, released = released.len(), "holds lapsed");
            self.mark_dirty(id);
        }
        let Some(snap) = self.store.sale(id).await? else {
            // Gone from the store (Redis lost it): nothing left to sweep.
            self.store.retire_sale(id).await?;
            self.pending.lock().remove(id);
            return Ok(());
        };
        let product = self.product(&snap.sale.product).await?;
        let view = sale_view(&snap, &product, &self.cfg, now);
        let ended = view.status == SaleStatus::Ended;
        if !snap.announced.started {
            if ended {
                // Over before anyone announced its start: its end is what viewers need.
                self.store.mark_announced(id, Announcement::Started).await?;
            } else if now >= view.starts_at {
                self.announce(&view, Announcement::Started, now).await;
            }
        }
        if ended {
            if !snap.announced.ended {
                self.announce(&view, Announcement::Ended, now).await;
            }
            let end = snap
                .sale
                .ended_at
                .map_or(snap.sale.ends_at, |t| t.min(snap.sale.ends_at));
            if snap.announced.all()
                && snap.reserved == 0
                && now >= end.saturating_add(RETIRE_AFTER_END_MS)
            {
                self.store.retire_sale(id).await?;
                self.pending.lock().remove(id);
                tracing::debug!(sale = %id, "sale retired: nothing left to sweep");
            }
            return Ok(());
        }
        let (dirty, purchases, market) = {
            let mut pending = self.pending.lock();
            match pending.get_mut(id) {
                Some(p) => (
                    p.stock_dirty,
                    std::mem::take(&mut p.purchases),
                    p.last_market.clone(),
                ),
                None => (false, 0, String::new()),
            }
        };
        if dirty {
            self.publish_stock(id, now).await;
        }
        if purchases > 0 {
            let what = format!("proof:{id}");
            let ttl = self.cfg.social_proof_interval.as_millis() as u64;
            if let Ok(true) = self.store.claim(&what, ttl, now).await {
                let event = RoomEvent::Purchase {
                    notice: PurchaseNotice {
                        sale: id.clone(),
                        market,
                        count: purchases,
                    },
                };
                let _ = self.hub.publish(&view.room, &event).await;
            } else if let Some(p) = self.pending.lock().get_mut(id) {
                // Someone else announced recently: carry ours to a later notice.
                p.purchases += purchases;
            }
        }
        Ok(())
    }

    /// Run [`Commerce::sweep`] every `commerce.sweep_interval` until the process ends.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let every = self.cfg.sweep_interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { break };
                me.sweep(crate::unix_ms()).await;
            }
        })
    }

    /// Every order event of a sale (for audits).
    pub async fn orders(&self, sale: &SaleId) -> Result<Vec<super::OrderEvent>, CommerceError> {
        Ok(self.store.all_orders(sale).await?)
    }

    pub async fn reservation(&self, id: &ReservationId) -> Result<Reservation, CommerceError> {
        let sale = sale_of(id).ok_or(CommerceError::NotFound("reservation"))?;
        self.store
            .reservation(&sale, id)
            .await?
            .ok_or(CommerceError::NotFound("reservation"))
    }
}

fn state_name(r: &Reservation) -> &'static str {
    use ferry_client::protocol::commerce::ReservationState as S;
    match r.state {
        S::Reserved => "reserved",
        S::Confirmed => "confirmed",
        S::Released => "released",
    }
}

#[cfg(test)]
mod tests {
    //! The sweep's announcements against the real memory engine and sale store, with
    //! publishes failing on purpose (a Redis hiccup at the worst moment) and restarts.
    use super::*;
    use crate::commerce::memory::MemorySaleStore;
    use crate::config::Config;
    use crate::engine::memory::{MemoryEngine, MemoryEngineOptions};
    use crate::engine::{Engine, History, Publication, RoomRecord, StateChange, Subscription};
    use crate::hub::HubConfig;
    use async_trait::async_trait;
    use bytes::Bytes;
    use ferry_client::protocol::{Epoch, Offset};
    use std::collections::BTreeMap;

    /// The memory engine, except that publishes of the named event types fail
    /// (`unavailable`) as many times as asked.
    struct FlakyEngine {
        inner: MemoryEngine,
        failures: Mutex<HashMap<String, u32>>,
    }

    #[async_trait]
    impl Engine for FlakyEngine {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn create_room(
            &self,
            room: &RoomId,
            title: &str,
        ) -> Result<(RoomRecord, bool), EngineError> {
            self.inner.create_room(room, title).await
        }
        async fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>, EngineError> {
            self.inner.room(room).await
        }
        async fn publish(
            &self,
            room: &RoomId,
            body: Bytes,
            change: Option<StateChange>,
        ) -> Result<Publication, EngineError> {
            let kind = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if let Some(left) = self.failures.lock().get_mut(&kind).filter(|n| **n > 0) {
                *left -= 1;
                return Err(EngineError::Unavailable("injected".into()));
            }
            self.inner.publish(room, body, change).await
        }
        async fn subscribe(&self, room: &RoomId) -> Result<Subscription, EngineError> {
            self.inner.subscribe(room).await
        }
        async fn history(
            &self,
            room: &RoomId,
            epoch: &Epoch,
            after: Offset,
            until: Offset,
        ) -> Result<History, EngineError> {
            self.inner.history(room, epoch, after, until).await
        }
        async fn report_presence(
            &self,
            room: &RoomId,
            node: &str,
            count: u64,
        ) -> Result<(), EngineError> {
            self.inner.report_presence(room, node, count).await
        }
        async fn viewer_count(&self, room: &RoomId) -> Result<u64, EngineError> {
            self.inner.viewer_count(room).await
        }
        async fn record_viewer(&self, room: &RoomId, user: &UserId) -> Result<(), EngineError> {
            self.inner.record_viewer(room, user).await
        }
        async fn unique_viewers(&self, room: &RoomId) -> Result<u64, EngineError> {
            self.inner.unique_viewers(room).await
        }
        async fn report_audience(
            &self,
            room: &RoomId,
            node: &str,
            counts: &BTreeMap<String, u64>,
        ) -> Result<(), EngineError> {
            self.inner.report_audience(room, node, counts).await
        }
        async fn audience(&self, room: &RoomId) -> Result<BTreeMap<String, u64>, EngineError> {
            self.inner.audience(room).await
        }
        async fn claim_live(
            &self,
            room: &RoomId,
            host: &crate::engine::LiveHost,
            ttl: std::time::Duration,
        ) -> Result<(), EngineError> {
            self.inner.claim_live(room, host, ttl).await
        }
        async fn renew_live(
            &self,
            room: &RoomId,
            node: &str,
            ttl: std::time::Duration,
        ) -> Result<bool, EngineError> {
            self.inner.renew_live(room, node, ttl).await
        }
        async fn lapsed_live(&self, limit: usize) -> Result<Vec<RoomId>, EngineError> {
            self.inner.lapsed_live(limit).await
        }
        async fn ready(&self) -> bool {
            true
        }
    }

    const ROOM: &str = "shop";
    const T0: u64 = 1_800_000_000_000;

    struct Node {
        commerce: Arc<Commerce>,
        engine: Arc<FlakyEngine>,
    }

    async fn node(store: Arc<dyn SaleStore>, edit: impl FnOnce(&mut CommerceConfig)) -> Node {
        let cfg = Config::default();
        let engine = Arc::new(FlakyEngine {
            inner: MemoryEngine::new(MemoryEngineOptions::default()),
            failures: Mutex::new(HashMap::new()),
        });
        let hub = Hub::new(
            engine.clone(),
            HubConfig::from_config(&cfg, "n1".into()),
            Arc::new(crate::metrics::Metrics::default()),
        );
        let mut commerce_cfg = cfg.commerce.clone();
        commerce_cfg.announce_retry = Duration::from_secs(1);
        edit(&mut commerce_cfg);
        engine
            .create_room(&RoomId(ROOM.into()), "t")
            .await
            .expect("room");
        Node {
            commerce: Commerce::new(commerce_cfg, store, hub),
            engine,
        }
    }

    impl Node {
        fn fail(&self, kind: &str, times: u32) {
            self.engine.failures.lock().insert(kind.to_owned(), times);
        }

        /// How many events of each type the room holds.
        async fn published(&self) -> BTreeMap<String, u32> {
            let e = &self.engine.inner;
            let rec = e
                .room(&RoomId(ROOM.into()))
                .await
                .expect("room")
                .expect("exists");
            let History::Events(events) = e
                .history(&RoomId(ROOM.into()), &rec.epoch, Offset(0), rec.offset)
                .await
                .expect("history")
            else {
                panic!("history lost");
            };
            let mut out = BTreeMap::new();
            for p in events {
                let v: serde_json::Value = serde_json::from_slice(&p.body).expect("json");
                *out.entry(v["type"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
            }
            out
        }

        async fn count(&self, kind: &str) -> u32 {
            self.published().await.get(kind).copied().unwrap_or(0)
        }

        async fn start(&self, starts_at: u64, duration_secs: u64) -> SaleId {
            let host = UserRef {
                id: UserId("host".into()),
                name: "Host".into(),
                role: Role::Host,
            };
            let spec = SaleSpec {
                product: "basket".into(),
                quantity: 10,
                price_cny: 5900,
                per_buyer_limit: 1,
                starts_at: Some(starts_at),
                starts_in_secs: None,
                duration_secs,
                hold_secs: 60,
            };
            self.commerce
                .start_sale(&RoomId(ROOM.into()), spec, T0, &host)
                .await
                .expect("sale")
                .id
        }
    }

    async fn with_product(store: &Arc<dyn SaleStore>) {
        store
            .put_product(Product {
                id: "basket".into(),
                title: "藤编篮".into(),
                description: String::new(),
                image_url: String::new(),
                lang: "zh".into(),
                price_cny: 8900,
                stock: 0,
                markets: [("us".to_owned(), true)].into(),
                merchant: "host".into(),
                glossary: None,
                translations: BTreeMap::new(),
            })
            .await
            .expect("product");
    }

    /// A publish that fails after the claim was taken is made by a later sweep, once the
    /// lease lapses; the announcement reaches the room exactly once.
    #[tokio::test]
    async fn a_failed_announcement_is_made_by_a_later_sweep_exactly_once() {
        let store: Arc<dyn SaleStore> = Arc::new(MemorySaleStore::in_memory());
        with_product(&store).await;
        let n = node(store.clone(), |_| {}).await;
        let sale = n.start(T0, 10).await;
        n.fail("sale_started", 1);
        n.commerce.sweep(T0).await;
        assert_eq!(n.count("sale_started").await, 0, "the publish failed");
        n.commerce.sweep(T0 + 200).await;
        assert_eq!(n.count("sale_started").await, 0, "the lease still runs");
        n.commerce.sweep(T0 + 1_001).await;
        assert_eq!(n.count("sale_started").await, 1, "tried again");
        for t in [T0 + 1_200, T0 + 5_000] {
            n.commerce.sweep(t).await;
        }
        assert_eq!(n.count("sale_started").await, 1, "and made once");
        let end = T0 + 10_000;
        n.fail("sale_ended", 2);
        n.commerce.sweep(end).await;
        n.commerce.sweep(end + 1_001).await;
        n.commerce.sweep(end + 1_500).await;
        assert_eq!(n.count("sale_ended").await, 0, "failed twice");
        n.commerce.sweep(end + 2_002).await;
        n.commerce.sweep(end + 4_000).await;
        assert_eq!(n.count("sale_ended").await, 1);
        // Weeks later: nothing is announced again, and the sale left the sweep's list.
        n.commerce.sweep(end + 8 * 86_400_000).await;
        n.commerce.sweep(end + 30 * 86_400_000).await;
        let counts = n.published().await;
        assert_eq!(
            (counts["sale_started"], counts["sale_ended"]),
            (1, 1),
            "{counts:?}"
        );
        let live = store.live_sales(0, 100).await.expect("live");
        assert!(live.iter().all(|(_, id)| *id != sale), "{live:?}");
    }

    /// Announcements are recorded with the sale in the journal: after a restart (or on any
    /// node), however long after, they are not made again; a sale that ended while nobody
    /// swept is announced ended, not started.
    #[tokio::test]
    async fn announcements_are_never_repeated_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let open =
            || -> Arc<dyn SaleStore> { Arc::new(MemorySaleStore::open(&path).expect("journal")) };
        let store = open();
        with_product(&store).await;
        let n = node(store, |_| {}).await;
        let announced = n.start(T0, 10).await;
        let missed = n.start(T0 + 1_000, 1).await;
        n.commerce.sweep(T0).await;
        // Nobody sweeps during the second sale; the first one ends too.
        n.commerce.sweep(T0 + 12_000).await;
        let counts = n.published().await;
        assert_eq!(
            (counts["sale_started"], counts["sale_ended"]),
            (1, 2),
            "{counts:?}"
        );
        drop(n);
        // A restart: same journal, new engine and room.
        for later in [8, 9, 40] {
            let store = open();
            let n = node(store.clone(), |_| {}).await;
            n.commerce.sweep(T0 + later * 86_400_000).await;
            let counts = n.published().await;
            assert_eq!(counts.get("sale_started"), None, "{counts:?}");
            assert_eq!(counts.get("sale_ended"), None, "{counts:?}");
            // Announced, ended, nothing held: not even visited.
            assert!(store.live_sales(0, 100).await.expect("live").is_empty());
            for id in [&announced, &missed] {
                let snap = store.sale(id).await.expect("sale").expect("exists");
                assert!(snap.announced.all());
            }
        }
    }

    /// However many sales are live, a sweep visits at most `sweep_max_sales` of them, in
    /// turns.
    #[tokio::test]
    async fn a_sweep_visits_a_bounded_batch_of_live_sales_in_turns() {
        let store: Arc<dyn SaleStore> = Arc::new(MemorySaleStore::in_memory());
        with_product(&store).await;
        let n = node(store, |c| c.sweep_max_sales = 2).await;
        for _ in 0..5 {
            n.start(T0, 60).await;
        }
        let mut seen = Vec::new();
        for t in 0..4 {
            n.commerce.sweep(T0 + t).await;
            seen.push(n.count("sale_started").await);
        }
        assert_eq!(seen, vec![2, 4, 5, 5]);
    }
}
