//! WHIP (RFC 9725) and WHEP HTTP routes: `POST /whip/{room}` and `POST /whep/{room}` take an
//! SDP offer and answer `201 Created` with the SDP answer, the session's `Location` and
//! `ETag`; the session resource takes `PATCH` (trickle ICE, ICE restart) and `DELETE`; every
//! route answers `OPTIONS` with CORS headers. Errors are JSON bodies with documented codes
//! (`docs/http-api.md`), like the rest of the HTTP API.
//!
//! This layer owns authentication and the HTTP contract; it builds each peer's `Rtc` and
//! answer, and hands the peer to the driver. It must not touch media or the UDP socket.

// Helpers return ready-made error responses (`Result<_, Response>`); their size is axum's.
#![allow(clippy::result_large_err)]

use super::driver::new_etag;
use super::sdpfrag::SdpFrag;
use super::{
    AdmitError, Caller, NewSession, PatchOutcome, PatchRequest, SessionError, SessionKind,
};
use crate::auth::Claims;
use crate::config::AutoCreate;
use crate::engine::{LiveHost, RoomRecord};
use crate::http::{check_room_id, ApiError};
use crate::server::AppState;
use crate::ws::bearer;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ferry_client::protocol::{Role, RoomId};
use std::sync::atomic::Ordering::Relaxed;
use str0m::change::SdpOffer;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/whip/{room}",
            post(whip_post)
                .options(endpoint_options)
                .fallback(method_not_allowed),
        )
        .route(
            "/whep/{room}",
            post(whep_post)
                .options(endpoint_options)
                .fallback(method_not_allowed),
        )
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(whip_patch)
                .delete(whip_delete)
                .options(session_options)
                .fallback(method_not_allowed),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(whep_patch)
                .delete(whep_delete)
                .options(session_options)
                .fallback(method_not_allowed),
        )
        .layer(axum::middleware::from_fn_with_state(state, cors))
}

/// CORS on every WHIP/WHEP response, errors included, so browser pages see statuses and the
/// `Location`/`ETag`/`Link` headers.
async fn cors(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = next.run(req).await;
    let allowed = &app.config.sfu.cors_origins;
    let allow = if allowed.iter().any(|o| o == "*") {
        Some(HeaderValue::from_static("*"))
    } else {
        origin.filter(|o| {
            o.to_str()
                .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
        })
    };
    let h = resp.headers_mut();
    if let Some(allow) = allow {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Accept-Post"),
        );
    }
    resp
}

fn preflight_headers(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
}

/// `OPTIONS /whip/{room}`: CORS preflight; no authentication (RFC 9725 §4.1).
async fn endpoint_options() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    preflight_headers(h);
    h.insert("accept-post", HeaderValue::from_static(SDP));
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    resp
}

async fn session_options() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    preflight_headers(h);
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("PATCH, DELETE, OPTIONS"),
    );
    resp
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not supported here"),
    )
}

fn unauthorized(e: impl std::fmt::Display) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string()).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn sfu(app: &AppState) -> Result<&std::sync::Arc<super::Sfu>, Response> {
    app.sfu.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sfu_disabled",
            "live video is disabled on this server (sfu.enabled = false)",
        )
        .into_response()
    })
}

fn refuse(app: &AppState, reason: &str, resp: Response) -> Response {
    if let Some(s) = &app.sfu {
        s.metrics.refused(reason);
    }
    resp
}

/// Authenticate the caller of a WHIP/WHEP endpoint and check role and room.
fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    kind: SessionKind,
) -> Result<Claims, Response> {
    let claims = app
        .verifier
        .verify(bearer(headers).as_deref())
        .map_err(|e| refuse(app, "auth", unauthorized(e)))?;
    if kind == SessionKind::Publisher
        && !app
            .config
            .sfu
            .publisher_roles
            .iter()
            .any(|r| r == claims.role.as_str())
    {
        return Err(refuse(
            app,
            "auth",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "role `{}` may not publish (sfu.publisher_roles)",
                    claims.role.as_str()
                ),
            )
            .into_response(),
        ));
    }
    if !claims.allows_room(room) {
        return Err(refuse(
            app,
            "auth",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token does not allow this room",
            )
            .into_response(),
        ));
    }
    Ok(claims)
}

/// Which directions the offer's media sections have: (sends, receives).
fn offer_directions(sdp: &str) -> (bool, bool) {
    let (mut sends, mut receives) = (false, false);
    let mut in_media: Option<&str> = None;
    let mut dir = "sendrecv";
    let mut close = |kind: Option<&str>, dir: &str| {
        if matches!(kind, Some("audio" | "video")) {
            sends |= matches!(dir, "sendrecv" | "sendonly");
            receives |= matches!(dir, "sendrecv" | "recvonly");
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            close(in_media, dir);
            in_media = m.split(' ').next();
            dir = "sendrecv";
            // A rejected (port 0) section carries nothing.
            if m.split(' ').nth(1) == Some("0") {
                in_media = None;
            }
        } else if let Some(d) = line.strip_prefix("a=") {
            if matches!(d, "sendrecv" | "sendonly" | "recvonly" | "inactive") {
                dir = d;
            }
        }
    }
    close(in_media, dir);
    (sends, receives)
}

async fn whip_post(
    State(app): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create_session(app, room, headers, body, SessionKind::Publisher)
        .await
        .unwrap_or_else(|r| r)
}

async fn whep_post(
    State(app): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create_session(app, room, headers, body, SessionKind::Subscriber)
        .await
        .unwrap_or_else(|r| r)
}

fn bad_sdp(app: &AppState, message: impl Into<String>) -> Response {
    refuse(
        app,
        "bad_sdp",
        ApiError::new(StatusCode::BAD_REQUEST, "bad_sdp", message).into_response(),
    )
}

async fn create_session(
    app: AppState,
    room: String,
    headers: HeaderMap,
    body: Bytes,
    kind: SessionKind,
) -> Result<Response, Response> {
    let sfu = sfu(&app)?.clone();
    let room = check_room_id(&room).map_err(IntoResponse::into_response)?;
    let claims = authorize(&app, &headers, &room, kind)?;
    if !content_type_is(&headers, SDP) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the SDP offer as Content-Type: application/sdp",
        )
        .into_response());
    }
    if body.len() > app.config.sfu.max_sdp_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the offer is larger than {} bytes",
                app.config.sfu.max_sdp_bytes
            ),
        )
        .into_response());
    }
    if app.draining() {
        return Err(refuse(
            &app,
            "draining",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the server is shutting down; retry on another node",
            )
            .into_response(),
        ));
    }
    // A viewer whose room's publisher is on another node goes there, offer unread (RFC 9725
    // §4.5: the client repeats the POST at `Location`).
    if kind == SessionKind::Subscriber {
        let record = ensure_room(&app, &room, kind).await?;
        if let Some(to) = redirect_target(&sfu.host, &record, &room) {
            sfu.metrics.whep_redirects.fetch_add(1, Relaxed);
            tracing::debug!(%room, %to, "WHEP redirected to the hosting node");
            return Ok(redirect(&to));
        }
    }
    let text = std::str::from_utf8(&body).map_err(|_| bad_sdp(&app, "the offer is not UTF-8"))?;
    let (sends, receives) = offer_directions(text);
    match kind {
        SessionKind::Publisher if !sends => {
            return Err(bad_sdp(
                &app,
                "a WHIP offer must send audio or video (sendonly or sendrecv)",
            ))
        }
        SessionKind::Subscriber if !receives => {
            return Err(bad_sdp(
                &app,
                "a WHEP offer must receive audio or video (recvonly or sendrecv)",
            ))
        }
        _ => {}
    }
    let offer = SdpOffer::from_sdp_string(text)
        .map_err(|e| bad_sdp(&app, format!("the offer is not valid SDP: {e}")))?;
    if kind == SessionKind::Publisher {
        ensure_room(&app, &room, kind).await?;
    }
    let mut rtc = sfu.new_rtc(kind);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| bad_sdp(&app, format!("the offer cannot be accepted: {e}")))?;
    let id = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let etag = new_etag();
    let session = NewSession {
        kind,
        id: id.clone(),
        room: room.clone(),
        user: claims.user_ref(),
        rtc: Box::new(rtc),
        offer_sdp: text.to_owned(),
        etag: etag.clone(),
    };
    match sfu.adopt(session).await {
        Some(Ok(())) => {}
        Some(Err(AdmitError::RoomBusy)) => {
            return Err(refuse(
                &app,
                "room_busy",
                ApiError::new(
                    StatusCode::CONFLICT,
                    "already_publishing",
                    "another host is already live in this room",
                )
                .into_response(),
            ))
        }
        Some(Err(AdmitError::Full)) => {
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sfu_full",
                "this node is at its video session limit; retry later or elsewhere",
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return Err(refuse(&app, "full", r));
        }
        Some(Err(AdmitError::Draining)) | None => {
            return Err(refuse(
                &app,
                "draining",
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining",
                    "the server is shutting down; retry on another node",
                )
                .into_response(),
            ))
        }
    }
    let location = format!("/{}/{}/{}", kind.path(), room, id);
    let mut resp = (StatusCode::CREATED, answer.to_sdp_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    for link in ice_server_links(&app) {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(header::LINK, v);
        }
    }
    Ok(resp)
}

/// `Link: <stun:...>; rel="ice-server"` values (RFC 9725 §4.6), TURN with credentials.
fn ice_server_links(app: &AppState) -> Vec<String> {
    let c = &app.config.sfu;
    c.ice_servers
        .iter()
        .map(|url| {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if url.starts_with("turn") && !c.ice_username.is_empty() {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    c.ice_username.replace('"', ""),
                    c.ice_credential.replace('"', "")
                ));
            }
            link
        })
        .collect()
}

/// Where a viewer of `room` must go instead of this node: the WHEP endpoint of the node whose
/// live lease is current, when that is another node with a public URL.
fn redirect_target(me: &LiveHost, record: &RoomRecord, room: &RoomId) -> Option<String> {
    let host = record.live_host.as_ref()?;
    if host.node == me.node || host.url.is_empty() {
        return None;
    }
    Some(format!("{}/whep/{}", host.url, room))
}

/// `307 Temporary Redirect`: the client repeats the same POST (offer, token) at `to`.
fn redirect(to: &str) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TEMPORARY_REDIRECT,
        "redirect",
        format!("the room's stream is served by {to}"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The room must exist and be open; a publisher creates it when `rooms.auto_create` allows.
async fn ensure_room(
    app: &AppState,
    room: &RoomId,
    kind: SessionKind,
) -> Result<RoomRecord, Response> {
    let engine = app.hub.engine();
    let record = engine
        .room(room)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    let record = match record {
        Some(r) => r,
        None if kind == SessionKind::Publisher
            && app.config.rooms.auto_create != AutoCreate::Never =>
        {
            engine
                .create_room(room, "")
                .await
                .map_err(|e| ApiError::from(e).into_response())?
                .0
        }
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "room_not_found",
                "room does not exist",
            )
            .into_response())
        }
    };
    if record.closed {
        return Err(
            ApiError::new(StatusCode::CONFLICT, "room_closed", "the room is closed")
                .into_response(),
        );
    }
    Ok(record)
}

fn caller(app: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let claims = app
        .verifier
        .verify(bearer(headers).as_deref())
        .map_err(unauthorized)?;
    Ok(Caller {
        user: claims.sub,
        admin: claims.role == Role::Admin,
    })
}

fn session_error(e: SessionError) -> Response {
    let (status, code) = match &e {
        SessionError::NotFound => (StatusCode::NOT_FOUND, "session_not_found"),
        SessionError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        SessionError::PreconditionFailed => {
            (StatusCode::PRECONDITION_FAILED, "precondition_failed")
        }
        SessionError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
    };
    ApiError::new(status, code, e.to_string()).into_response()
}

async fn whip_patch(
    State(app): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch_session(app, room, session, headers, body, SessionKind::Publisher)
        .await
        .unwrap_or_else(|r| r)
}

async fn whep_patch(
    State(app): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch_session(app, room, session, headers, body, SessionKind::Subscriber)
        .await
        .unwrap_or_else(|r| r)
}

async fn patch_session(
    app: AppState,
    room: String,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    kind: SessionKind,
) -> Result<Response, Response> {
    let sfu = sfu(&app)?.clone();
    let room = check_room_id(&room).map_err(IntoResponse::into_response)?;
    let caller = caller(&app, &headers)?;
    if !content_type_is(&headers, SDPFRAG) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/trickle-ice-sdpfrag",
        )
        .into_response());
    }
    let Some(if_match) = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "send If-Match with the session's ETag (or * for an ICE restart)",
        )
        .into_response());
    };
    if body.len() > app.config.sfu.max_sdp_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the fragment is too large",
        )
        .into_response());
    }
    let frag = SdpFrag::parse(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_fragment", e.to_string()).into_response()
    })?;
    let request = PatchRequest {
        kind,
        room,
        id,
        caller,
        if_match,
        frag,
    };
    match sfu.patch(request).await {
        Some(Ok(PatchOutcome::Trickled)) => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(Ok(PatchOutcome::Restarted { fragment, etag })) => {
            let mut resp = (StatusCode::OK, fragment).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            Ok(resp)
        }
        Some(Err(e)) => Err(session_error(e)),
        None => Err(session_error(SessionError::NotFound)),
    }
}

async fn whip_delete(
    State(app): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete_session(app, room, session, headers, SessionKind::Publisher)
        .await
        .unwrap_or_else(|r| r)
}

async fn whep_delete(
    State(app): State<AppState>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete_session(app, room, session, headers, SessionKind::Subscriber)
        .await
        .unwrap_or_else(|r| r)
}

async fn delete_session(
    app: AppState,
    room: String,
    id: String,
    headers: HeaderMap,
    kind: SessionKind,
) -> Result<Response, Response> {
    let sfu = sfu(&app)?.clone();
    let room = check_room_id(&room).map_err(IntoResponse::into_response)?;
    let caller = caller(&app, &headers)?;
    match sfu.delete(kind, room, id, caller).await {
        Some(Ok(())) => Ok(StatusCode::OK.into_response()),
        Some(Err(e)) => Err(session_error(e)),
        None => Err(session_error(SessionError::NotFound)),
    }
}

#[cfg(test)]
mod tests {
    use super::offer_directions;

    #[test]
    fn directions_of_offers() {
        let whip = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        assert_eq!(offer_directions(whip), (true, false));
        let whep = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";
        assert_eq!(offer_directions(whep), (false, true));
        let data_only = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(offer_directions(data_only), (false, false));
        let rejected = "v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
        assert_eq!(offer_directions(rejected), (false, false));
        assert_eq!(offer_directions("m=video 9 X 96\r\n"), (true, true));
    }
}
