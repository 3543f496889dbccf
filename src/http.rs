//! HTTP routes on the one listener: the WebSocket endpoint, health, readiness, metrics, and
//! the room REST API for hosts and admins (documented in `docs/http-api.md`), with the
//! commerce routes (`commerce_api`) and the browser pages (`pages`) merged in.

use crate::auth::Claims;
use crate::engine::EngineError;
use crate::server::AppState;
use crate::ws::{bearer, ws_handler};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_client::protocol::{Pinned, RoomEvent, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub fn router(state: AppState) -> Router {
    let pages = if state.config.server.pages {
        crate::pages::routes()
    } else {
        Router::new()
    };
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/rooms", axum::routing::post(create_room))
        .route("/api/rooms/{room}", get(room_info).delete(close_room))
        .merge(crate::commerce_api::routes())
        .merge(crate::sfu::api::routes(state.clone()))
        .merge(pages)
        .merge(crate::translation_api::routes())
        .fallback(not_found)
        .with_state(state)
}

/// A documented API error: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl ApiError {
    /// The documented error code (`bad_request`, `sold_out`...).
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::info!(status = self.status.as_u16(), code = self.code, message = %self.message, "api error");
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::RoomNotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "room_not_found",
                "room does not exist",
            ),
            EngineError::RoomClosed => {
                ApiError::new(StatusCode::CONFLICT, "room_closed", "the room is closed")
            }
            EngineError::Unavailable(why) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("temporarily unavailable, retry: {why}"),
            ),
            e @ EngineError::NotHeld => {
                ApiError::new(StatusCode::CONFLICT, "not_held", e.to_string())
            }
            e @ EngineError::HeldQueueFull => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "moderation_queue_full",
                e.to_string(),
            ),
            // Only the SFU's live-state changes get these; no HTTP route publishes one.
            e @ (EngineError::LiveElsewhere | EngineError::NotLive) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !app.hub.engine().ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "engine unavailable\n").into_response();
    }
    if !app.commerce.store().ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "sale store unavailable\n").into_response();
    }
    if app.sfu.as_ref().is_some_and(|s| !s.ready()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "sfu socket failed\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        {
            let mut text = app.metrics.render(app.hub.node());
            app.commerce.metrics().render(app.hub.node(), &mut text);
            if let Some(sfu) = &app.sfu {
                sfu.metrics.render(app.hub.node(), &mut text);
            }
            app.chat
                .translator()
                .metrics()
                .render(app.hub.node(), &mut text);
            text
        },
    )
        .into_response()
}

/// Authenticate a REST caller; staff only, and the token must allow the room.
pub(crate) fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    owner: bool,
) -> Result<Claims, ApiError> {
    let claims = app
        .verifier
        .verify(bearer(headers).as_deref())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
    let allowed = if owner {
        claims.role.owns_rooms()
    } else {
        claims.role.is_staff()
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            if owner {
                "needs a host or admin token"
            } else {
                "needs a host, moderator or admin token"
            },
        ));
    }
    if !claims.allows_room(room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not allow this room",
        ));
    }
    Ok(claims)
}

pub(crate) fn check_room_id(room: &str) -> Result<RoomId, ApiError> {
    let ok = !room.is_empty()
        && room.len() <= 64
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(RoomId(room.to_owned()))
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "room id must match [A-Za-z0-9_.:-]{1,64}",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    room: String,
    #[serde(default)]
    title: String,
}

/// Room information returned by the REST API.
#[derive(Serialize)]
struct RoomInfo {
    room: RoomId,
    title: String,
    epoch: String,
    offset: u64,
    viewers: u64,
    viewers_on_node: u64,
    /// Distinct users who joined this room's stream.
    unique_viewers: u64,
    likes: u64,
    pinned: Option<Pinned>,
    slow_mode_secs: u64,
    closed: bool,
    created_at: u64,
}

async fn info(app: &AppState, room: &RoomId) -> Result<RoomInfo, ApiError> {
    let rec = app.hub.engine().room(room).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "room_not_found",
            "room does not exist",
        )
    })?;
    let viewers = app.hub.engine().viewer_count(room).await?;
    let on_node = app.hub.local_members(room);
    let unique_viewers = app.hub.engine().unique_viewers(room).await?;
    Ok(RoomInfo {
        room: room.clone(),
        title: rec.title,
        epoch: rec.epoch.0,
        offset: rec.offset.0,
        viewers: viewers.max(on_node),
        viewers_on_node: on_node,
        unique_viewers,
        likes: rec.likes,
        pinned: rec.pinned,
        slow_mode_secs: rec.slow_mode_secs,
        closed: rec.closed,
        created_at: rec.created_at,
    })
}

async fn create_room(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateRoom = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid body: {e}"),
        )
    })?;
    let room = check_room_id(&req.room)?;
    if req.title.chars().count() > 200 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "title is longer than 200 characters",
        ));
    }
    let claims = authorize(&app, &headers, &room, true)?;
    let (rec, created) = app.hub.engine().create_room(&room, &req.title).await?;
    if rec.closed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "room_closed",
            "a closed room with this id still exists",
        ));
    }
    tracing::info!(%room, user = %claims.sub, created, "room created");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info(&app, &room).await?)).into_response())
}

async fn room_info(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Json<RoomInfo>, ApiError> {
    let room = check_room_id(&room)?;
    authorize(&app, &headers, &room, false)?;
    Ok(Json(info(&app, &room).await?))
}

async fn close_room(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Json<RoomInfo>, ApiError> {
    let room = check_room_id(&room)?;
    let claims = authorize(&app, &headers, &room, true)?;
    match app.hub.publish(&room, &RoomEvent::RoomClosed {}).await {
        Ok(_) | Err(EngineError::RoomClosed) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%room, user = %claims.sub, "room closed");
    Ok(Json(info(&app, &room).await?))
}
