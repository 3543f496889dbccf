//! HTTP routes of commerce (documented in `docs/http-api.md`): the catalog for hosts and
//! admins, pinning and sales per room, buying for clients without a WebSocket, the signed
//! payment webhook, and the per-sale order-event stream an order system consumes with
//! acknowledgements. Everything delegates to [`crate::commerce::service::Commerce`].

use crate::auth::Claims;
use crate::commerce::service::{sale_of, Buyer, CommerceError};
use crate::commerce::{BuyRefusal, Product, Settled};
use crate::http::{authorize, check_room_id, ApiError};
use crate::server::AppState;
use crate::ws::bearer;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ferry_client::protocol::commerce::{
    ProductId, ReservationId, ReservationLookup, ReservationReply, ReservationState, RoomSalesPage,
    SaleId, SaleLookup, SaleSpec,
};
use ferry_client::protocol::ErrorCode;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/products", get(list_products))
        .route("/api/products/{id}", put(put_product).get(get_product))
        .route(
            "/api/rooms/{room}/product",
            post(pin_product).delete(unpin_product),
        )
        .route("/api/rooms/{room}/sales", post(start_sale).get(room_sales))
        .route("/api/sales/{id}", get(get_sale))
        .route("/api/sales/{id}/end", post(end_sale))
        .route("/api/sales/{id}/buy", post(buy))
        .route("/api/sales/{id}/orders", get(read_orders))
        .route("/api/sales/{id}/orders/ack", post(ack_orders))
        .route("/api/sales/{id}/orders/all", get(all_orders))
        .route("/api/reservations/{id}", get(get_reservation))
        .route("/api/reservations/{id}/cancel", post(cancel))
        .route("/api/payments/webhook", post(webhook))
        .layer(axum::middleware::from_fn(stamp_arrival))
}

/// When a request arrived (Unix ms), stamped as soon as its head was read and before its
/// body is: a decision that depends on the time — a buy before the sale's start, a payment
/// before the deadline, a countdown's start — uses the arrival, not the moment the handler
/// ran (under load, or with a body that is slow to come, those can be far apart).
#[derive(Clone, Copy, Debug)]
pub struct Arrival(pub u64);

async fn stamp_arrival(mut req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    req.extensions_mut().insert(Arrival(crate::unix_ms()));
    next.run(req).await
}

impl From<CommerceError> for ApiError {
    fn from(e: CommerceError) -> Self {
        let (code, _) = e.code();
        let status = match code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Forbidden | ErrorCode::NotInMarket => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::RoomNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, code.name(), e.to_string())
    }
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid body: {e}"),
        )
    })
}

fn verify(app: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    app.verifier
        .verify(bearer(headers).as_deref())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))
}

/// Hosts and admins manage the catalog.
fn catalog_owner(app: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let claims = verify(app, headers)?;
    if !claims.role.owns_rooms() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "needs a host or admin token",
        ));
    }
    Ok(claims)
}

fn admin(app: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let claims = verify(app, headers)?;
    if claims.role != ferry_client::protocol::Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "needs an admin token",
        ));
    }
    Ok(claims)
}

// -- catalog ---------------------------------------------------------------------------

async fn put_product(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let claims = catalog_owner(&app, &headers)?;
    let mut value: serde_json::Value = body(&bytes)?;
    // The id comes from the path; a body id must agree.
    if let Some(obj) = value.as_object_mut() {
        match obj.get("id").and_then(|v| v.as_str()) {
            Some(body_id) if body_id != id => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body's id differs from the path's",
                ))
            }
            _ => {
                obj.insert("id".into(), json!(id));
            }
        }
    }
    let mut product: Product = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid product: {e}"),
        )
    })?;
    // The catalog is shared: a product belongs to the host who created it.
    let existing = app
        .commerce
        .store()
        .product(&product.id)
        .await
        .map_err(CommerceError::from)?;
    product.merchant = match existing {
        Some(p) if !p.merchant.is_empty() && p.merchant != claims.sub => {
            if claims.role != ferry_client::protocol::Role::Admin {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this product belongs to another merchant",
                ));
            }
            p.merchant
        }
        _ => claims.sub.clone(),
    };
    // Listing rules of every enabled market, and translations into their languages.
    let warnings = match app.chat.prepare_product(&mut product).await {
        Ok(w) => w,
        Err(crate::chat::ListingError::Blocked(rule)) => {
            tracing::info!(product = %product.id, market = %rule.market, rule = %rule.rule, "listing refused by moderation");
            return Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": {
                    "code": "moderation_blocked",
                    "message": format!(
                        "the product cannot be enabled in market {}: rule `{}` ({})",
                        rule.market, rule.rule, rule.label
                    ),
                    "rule": rule,
                }})),
            )
                .into_response());
        }
    };
    let product = app.commerce.put_product(product).await?;
    tracing::info!(product = %product.id, user = %claims.sub, "product saved");
    let view = crate::commerce::pricing::product_view(&product, app.commerce.config());
    Ok(Json(json!({"product": product, "view": view, "warnings": warnings})).into_response())
}

async fn get_product(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    verify(&app, &headers)?;
    let product = app
        .commerce
        .store()
        .product(&ProductId(id))
        .await
        .map_err(CommerceError::from)?
        .ok_or(CommerceError::NotFound("product"))?;
    let view = crate::commerce::pricing::product_view(&product, app.commerce.config());
    Ok(Json(json!({ "product": view })).into_response())
}

async fn list_products(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    catalog_owner(&app, &headers)?;
    let products = app
        .commerce
        .store()
        .products()
        .await
        .map_err(CommerceError::from)?;
    Ok(Json(json!({ "products": products })).into_response())
}

// -- room showcase and sales -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    product: ProductId,
}

async fn pin_product(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let room = check_room_id(&room)?;
    let claims = authorize(&app, &headers, &room, true)?;
    let req: PinBody = body(&bytes)?;
    app.commerce
        .pin_product(&room, &req.product, &claims.user_ref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn unpin_product(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = check_room_id(&room)?;
    let claims = authorize(&app, &headers, &room, true)?;
    app.commerce
        .unpin_product(&room, &claims.user_ref())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_sale(
    State(app): State<AppState>,
    Extension(Arrival(now)): Extension<Arrival>,
    headers: HeaderMap,
    Path(room): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let room = check_room_id(&room)?;
    let claims = authorize(&app, &headers, &room, true)?;
    let spec: SaleSpec = body(&bytes)?;
    let sale = app
        .commerce
        .start_sale(&room, spec, now, &claims.user_ref())
        .await?;
    tracing::info!(sale = %sale.id, %room, user = %claims.sub, "sale started over HTTP");
    Ok((StatusCode::CREATED, Json(json!({ "sale": sale }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomSalesQuery {
    #[serde(default = "default_page")]
    limit: usize,
    #[serde(default)]
    before: Option<u64>,
}

fn default_page() -> usize {
    20
}

/// A room's sales, newest first, a page at a time (staff of the room).
async fn room_sales(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
    query: Result<Query<RoomSalesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let room = check_room_id(&room)?;
    authorize(&app, &headers, &room, false)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{e} (expected ?limit=1..100&before=POSITION)"),
        )
    })?;
    if !(1..=100).contains(&q.limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be 1..=100",
        ));
    }
    let (sales, next) = app
        .commerce
        .room_sales(&room, q.before, q.limit, crate::unix_ms())
        .await?;
    Ok(Json(RoomSalesPage { sales, next }).into_response())
}

async fn get_sale(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = verify(&app, &headers)?;
    let sale = app.commerce.sale(&SaleId(id), crate::unix_ms()).await?;
    if !claims.allows_room(&sale.room) {
        return Err(CommerceError::NotFound("sale").into());
    }
    let server_time = crate::unix_ms();
    Ok(Json(SaleLookup { sale, server_time }).into_response())
}

async fn end_sale(
    State(app): State<AppState>,
    Extension(Arrival(now)): Extension<Arrival>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = SaleId(id);
    verify(&app, &headers)?;
    let room = app.commerce.sale(&id, now).await?.room;
    authorize(&app, &headers, &room, true)?;
    let sale = app.commerce.end_sale(None, &id, now).await?;
    Ok(Json(json!({ "sale": sale })).into_response())
}

// -- buying ----------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BuyBody {
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

async fn buy(
    State(app): State<AppState>,
    Extension(Arrival(now)): Extension<Arrival>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let claims = verify(&app, &headers)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let req: BuyBody = if bytes.is_empty() {
        BuyBody { quantity: 1 }
    } else {
        body(&bytes)?
    };
    let buyer = Buyer {
        user: claims.user_id(),
        market: claims.market.clone().unwrap_or_default(),
    };
    // Judged at the request's arrival (`now`), like a WebSocket buy at its frame's receipt.
    let sale = SaleId(id);
    // The token must allow the sale's room, like joining it would. The room comes from the
    // cache WebSocket buys use: once cached, a buy is one store step here too.
    let room = app.commerce.sale_room(&sale).await?;
    if !claims.allows_room(&room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not allow this sale's room",
        ));
    }
    match app
        .commerce
        .buy(Some(&room), &sale, &buyer, req.quantity, &key, now)
        .await
    {
        Ok((reservation, replayed)) => {
            let status = if replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((
                status,
                Json(ReservationReply {
                    reservation,
                    replayed,
                }),
            )
                .into_response())
        }
        Err(CommerceError::Refused(BuyRefusal::NotStarted { starts_at })) => Ok((
            StatusCode::CONFLICT,
            [(
                axum::http::header::RETRY_AFTER,
                starts_at.saturating_sub(now).div_ceil(1000).to_string(),
            )],
            Json(json!({"error": {
                "code": "sale_not_started",
                "message": format!("the sale starts at {starts_at} (server time, Unix ms)"),
                "starts_at": starts_at,
                "server_time": now,
            }})),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

fn reservation_id(id: String) -> Result<ReservationId, ApiError> {
    let id = ReservationId(id);
    if sale_of(&id).is_none() || id.as_str().len() > 160 {
        return Err(CommerceError::NotFound("reservation").into());
    }
    Ok(id)
}

async fn get_reservation(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = verify(&app, &headers)?;
    let r = app.commerce.reservation(&reservation_id(id)?).await?;
    if r.buyer != claims.user_id() && claims.role != ferry_client::protocol::Role::Admin {
        return Err(CommerceError::NotFound("reservation").into());
    }
    Ok(Json(ReservationLookup {
        reservation: r.view(),
    })
    .into_response())
}

async fn cancel(
    State(app): State<AppState>,
    Extension(Arrival(now)): Extension<Arrival>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = verify(&app, &headers)?;
    let view = app
        .commerce
        .cancel(None, &reservation_id(id)?, &claims.user_id(), now)
        .await?;
    Ok(Json(json!({ "reservation": view })).into_response())
}

// -- payment webhook -------------------------------------------------------------------

/// The provider's notification (see `docs/http-api.md`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentEvent {
    /// The provider's event id (logged; idempotency comes from the reservation's state).
    id: String,
    #[serde(rename = "type")]
    kind: String,
    reservation: ReservationId,
    #[serde(default)]
    payment_ref: String,
    /// When present, must equal the reservation's CNY amount.
    #[serde(default)]
    amount_cny: Option<i64>,
}

/// Check `Ferry-Signature: t=<unix s>,v1=<hex hmac>` over `"<t>.<body>"`.
fn check_signature(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), &'static str> {
    let header = header.ok_or("missing Ferry-Signature header")?;
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or("signature without a valid t=")?;
    if t.abs_diff(now_s) > tolerance_s {
        return Err("signature timestamp outside the tolerance");
    }
    for sig in sigs {
        let Some(raw) = decode_hex(sig) else { continue };
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return Err("bad secret");
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&raw).is_ok() {
            return Ok(());
        }
    }
    Err("signature does not match")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Sign like a payment provider would (tests, scripts, the load tester).
pub fn sign_webhook(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

async fn webhook(
    State(app): State<AppState>,
    Extension(Arrival(now)): Extension<Arrival>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let result = webhook_inner(&app, &headers, &bytes, now).await;
    let label = match &result {
        Ok((label, _)) => label,
        Err(e) if e.code() == "bad_signature" => "bad_signature",
        Err(e) if e.code() == "bad_request" => "bad_request",
        Err(_) => "error",
    };
    app.commerce.metrics().webhook(label);
    result.map(|(_, response)| response)
}

/// `now`: when the notification arrived (a payment that arrived before the deadline is in
/// time, however long it waited to be handled).
async fn webhook_inner(
    app: &AppState,
    headers: &HeaderMap,
    bytes: &[u8],
    now: u64,
) -> Result<(&'static str, Response), ApiError> {
    let cfg = app.commerce.config();
    if cfg.webhook_secret.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook_disabled",
            "commerce.webhook_secret is not configured",
        ));
    }
    let signature = headers.get("ferry-signature").and_then(|v| v.to_str().ok());
    if let Err(why) = check_signature(
        &cfg.webhook_secret,
        signature,
        bytes,
        now / 1000,
        cfg.webhook_tolerance.as_secs(),
    ) {
        tracing::warn!(reason = why, "payment webhook refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            why,
        ));
    }
    let event: PaymentEvent = body(bytes)?;
    let paid = match event.kind.as_str() {
        "payment.succeeded" => true,
        "payment.failed" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("unknown event type `{other}` (payment.succeeded, payment.failed)"),
            ))
        }
    };
    let id = reservation_id(event.reservation.0.clone())?;
    if let Some(amount) = event.amount_cny {
        let r = app.commerce.reservation(&id).await?;
        if r.amount_cny != amount {
            tracing::warn!(reservation = %id, expected = r.amount_cny, got = amount, event = %event.id, "payment amount mismatch");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "amount_mismatch",
                format!("the reservation's amount is {} CNY fen", r.amount_cny),
            ));
        }
    }
    let settled = app
        .commerce
        .settle_payment(&id, paid, &event.payment_ref, now)
        .await?;
    let (r, already) = match settled {
        Settled::Now(r, _) => (r, false),
        Settled::Already(r) => (r, true),
    };
    // A second, different payment for an order already paid: the buyer was charged twice.
    let duplicate_payment = paid
        && already
        && r.state == ReservationState::Confirmed
        && !event.payment_ref.is_empty()
        && r.payment_ref.as_deref() != Some(event.payment_ref.as_str());
    if duplicate_payment {
        tracing::warn!(reservation = %id, event = %event.id, payment = %event.payment_ref, "second payment for a confirmed reservation: refund it");
    }
    tracing::info!(reservation = %id, event = %event.id, state = ?r.state, "payment webhook processed");
    let status = match r.state {
        ReservationState::Confirmed => "confirmed",
        ReservationState::Released => "released",
        ReservationState::Reserved => "reserved",
    };
    // A success for a reservation that lapsed first must be refunded by the operator.
    let refund_required = paid && r.state == ReservationState::Released || duplicate_payment;
    let label = if r.state == ReservationState::Confirmed {
        "confirmed"
    } else {
        "released"
    };
    Ok((
        label,
        Json(json!({
            "status": status,
            "refund_required": refund_required,
            "duplicate_payment": duplicate_payment,
            "reservation": r.view(),
        }))
        .into_response(),
    ))
}

// -- order events ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    group: String,
    #[serde(default = "default_count")]
    count: usize,
}

fn default_count() -> usize {
    100
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if group.is_empty()
        || group.len() > 64
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "group must match [A-Za-z0-9_.-]{1,64}",
        ));
    }
    Ok(())
}

async fn read_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    admin(&app, &headers)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{e} (expected ?group=NAME&count=N)"),
        )
    })?;
    check_group(&q.group)?;
    let events = app
        .commerce
        .store()
        .read_orders(
            &SaleId(id),
            &q.group,
            q.count.clamp(1, 1000),
            app.commerce.config().redeliver_after.as_millis() as u64,
            crate::unix_ms(),
        )
        .await
        .map_err(CommerceError::from)?;
    Ok(Json(json!({ "events": events })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    group: String,
    ids: Vec<String>,
}

async fn ack_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    admin(&app, &headers)?;
    let req: AckBody = body(&bytes)?;
    check_group(&req.group)?;
    if req.ids.len() > 1000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "at most 1000 ids per ack",
        ));
    }
    let acked = app
        .commerce
        .store()
        .ack_orders(&SaleId(id), &req.group, &req.ids)
        .await
        .map_err(CommerceError::from)?;
    Ok(Json(json!({ "acked": acked })).into_response())
}

async fn all_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin(&app, &headers)?;
    let sale = SaleId(id);
    let events = app.commerce.orders(&sale).await?;
    let snapshot = app
        .commerce
        .store()
        .sale(&sale)
        .await
        .map_err(CommerceError::from)?
        .ok_or(CommerceError::NotFound("sale"))?;
    Ok(Json(json!({
        "events": events,
        "quantity": snapshot.sale.quantity,
        "remaining": snapshot.remaining,
        "reserved": snapshot.reserved,
        "confirmed": snapshot.confirmed,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_expire() {
        let body = br#"{"id":"e1"}"#;
        let header = sign_webhook("s3cret", 1_000, body);
        assert_eq!(
            check_signature("s3cret", Some(&header), body, 1_010, 300),
            Ok(())
        );
        assert!(check_signature("other", Some(&header), body, 1_010, 300).is_err());
        assert!(check_signature("s3cret", Some(&header), b"{}", 1_010, 300).is_err());
        assert!(check_signature("s3cret", Some(&header), body, 2_000, 300).is_err());
        assert!(check_signature("s3cret", None, body, 1_000, 300).is_err());
        assert!(check_signature("s3cret", Some("t=1000,v1=zz"), body, 1_000, 300).is_err());
    }
}
