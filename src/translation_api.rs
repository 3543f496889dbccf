//! HTTP routes of glossaries (documented in `docs/http-api.md`): hosts and admins create,
//! replace, read and delete the glossaries their rooms' comments and their products are
//! translated with. Every change bumps the glossary's version, which is part of every
//! translation cache key, so no translation made with the old terms is served again, and
//! starts a background refresh of the product listings translated with it
//! ([`crate::listing_refresh`]).
//! Everything delegates to [`crate::translate::glossary::Glossaries`].

use crate::auth::Claims;
use crate::http::ApiError;
use crate::server::AppState;
use crate::translate::glossary::{Glossary, GlossaryError};
use crate::ws::bearer;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use ferry_client::protocol::Role;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/glossaries", get(list)).route(
        "/api/glossaries/{id}",
        put(put_glossary).get(get_glossary).delete(delete_glossary),
    )
}

impl From<GlossaryError> for ApiError {
    fn from(e: GlossaryError) -> Self {
        match e {
            GlossaryError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            GlossaryError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("temporarily unavailable, retry: {m}"),
            ),
        }
    }
}

/// Hosts and admins manage glossaries.
fn owner(app: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let claims = app
        .verifier
        .verify(bearer(headers).as_deref())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()))?;
    if !claims.role.owns_rooms() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "needs a host or admin token",
        ));
    }
    Ok(claims)
}

fn may_see(claims: &Claims, g: &Glossary) -> bool {
    claims.role == Role::Admin || g.owner == claims.sub
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "glossary not found")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GlossaryBody {
    #[serde(default)]
    rooms: Vec<String>,
    terms: Vec<BTreeMap<String, String>>,
}

async fn put_glossary(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let claims = owner(&app, &headers)?;
    let body: GlossaryBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid glossary: {e}"),
        )
    })?;
    let glossaries = app.chat.translator().glossaries();
    let owner = match glossaries.get(&id) {
        Some(existing) if existing.glossary.owner != claims.sub => {
            if claims.role != Role::Admin {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this glossary belongs to another merchant",
                ));
            }
            existing.glossary.owner.clone()
        }
        _ => claims.sub.clone(),
    };
    // A host's glossary may only claim rooms the host's token allows.
    if claims.role != Role::Admin {
        if let Some(p) = body
            .rooms
            .iter()
            .find(|p| !claims.allows_room(&ferry_client::protocol::RoomId(p.replace('*', "x"))))
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token does not allow rooms `{p}`"),
            ));
        }
    }
    let saved = glossaries
        .put(Glossary {
            id,
            owner,
            version: 0,
            rooms: body.rooms,
            terms: body.terms,
        })
        .await?;
    tracing::info!(glossary = %saved.id, version = saved.version, terms = saved.terms.len(), user = %claims.sub, "glossary saved");
    app.listings.glossary_changed(&saved.id);
    Ok(Json(json!({ "glossary": saved })).into_response())
}

async fn get_glossary(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = owner(&app, &headers)?;
    let g = app
        .chat
        .translator()
        .glossaries()
        .get(&id)
        .filter(|g| may_see(&claims, &g.glossary))
        .ok_or_else(not_found)?;
    Ok(Json(json!({ "glossary": g.glossary })).into_response())
}

async fn list(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let claims = owner(&app, &headers)?;
    let mut all: Vec<Glossary> = app
        .chat
        .translator()
        .glossaries()
        .list()
        .into_iter()
        .filter(|g| may_see(&claims, g))
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(json!({ "glossaries": all })).into_response())
}

async fn delete_glossary(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let claims = owner(&app, &headers)?;
    let glossaries = app.chat.translator().glossaries();
    let g = glossaries
        .get(&id)
        .filter(|g| may_see(&claims, &g.glossary))
        .ok_or_else(not_found)?;
    glossaries.delete(g.id()).await?;
    tracing::info!(glossary = %id, user = %claims.sub, "glossary deleted");
    app.listings.glossary_changed(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
