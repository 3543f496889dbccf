//! The WebSocket driver: one task per connection that moves bytes between the socket, the
//! sans-IO [`Session`] and the [`Hub`]. It authenticates the upgrade, writes queued frames
//! (several per flush), answers commands, pings the client and closes with the right code.
//! All decisions about commands live in [`crate::session`]; all room decisions in
//! [`crate::hub`].

use crate::auth::{AuthError, Claims};
use crate::chat::{ChatError, Outcome, Sender};
use crate::commerce::service::{Buyer, CommerceError};
use crate::commerce::BuyRefusal;
use crate::config::AutoCreate;
use crate::engine::EngineError;
use crate::hub::{ConnSignal, JoinError, Member, Outbound};
use crate::server::AppState;
use crate::session::{Action, CommerceOp, ModerationOp, Session};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ferry_client::protocol::commerce::{ReservationReply, SaleReply};
use ferry_client::protocol::translation::{PendingReply, QueueReply};
use ferry_client::protocol::{
    CloseCode, EmptyReply, ErrorCode, PongReply, PublishReply, Push, Reply, ReplyBody, ReplyResult,
    RoomId, PROTOCOL_VERSION,
};
use serde::Deserialize;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    /// The language to read comments in (overrides the token's `lang` claim).
    lang: Option<String>,
}

/// The token from `Authorization: Bearer` or the `token` query parameter.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
}

pub async fn ws_handler(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = bearer(&headers).or(q.token);
    let auth = app.verifier.verify(token.as_deref());
    let w = &app.config.websocket;
    let max = app.config.limits.max_frame_bytes;
    ws.read_buffer_size(w.read_buffer_bytes)
        .write_buffer_size(w.write_buffer_bytes)
        .max_write_buffer_size(w.write_buffer_bytes.max(64 * 1024) + max)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run_connection(app, socket, auth, q.lang))
}

pub fn unix_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Send a close frame and finish the closing handshake: read (and discard) what the client
/// still sends until its close frame, for at most a second. Closing with unread input would
/// make the kernel reset the connection, and the client would never see the close code.
async fn close_with(socket: &mut WebSocket, code: CloseCode) {
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn reply_text(reply: &Reply) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(reply).unwrap_or_default())
}

fn ok_reply(id: u64, body: ReplyBody) -> Utf8Bytes {
    reply_text(&Reply {
        id,
        result: ReplyResult::Ok(body),
    })
}

fn error_reply(
    id: u64,
    code: ErrorCode,
    message: impl Into<String>,
    retry_ms: Option<u64>,
) -> Utf8Bytes {
    reply_text(&Reply {
        id,
        result: ReplyResult::Error(code.body(message, retry_ms)),
    })
}

struct Conn {
    app: AppState,
    id: u64,
    session: Session,
    signal: Arc<ConnSignal>,
    tx: mpsc::Sender<Outbound>,
    queued: Arc<AtomicI64>,
    last_seen: Instant,
}

async fn run_connection(
    app: AppState,
    mut socket: WebSocket,
    auth: Result<Claims, AuthError>,
    query_lang: Option<String>,
) {
    let metrics = app.metrics.clone();
    let claims = match auth {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "connection refused: token");
            metrics.connections_refused.fetch_add(1, Relaxed);
            metrics.disconnect(Some(e.close_code()));
            close_with(&mut socket, e.close_code()).await;
            return;
        }
    };
    if app.draining() {
        metrics.connections_refused.fetch_add(1, Relaxed);
        metrics.disconnect(Some(CloseCode::Shutdown));
        close_with(&mut socket, CloseCode::Shutdown).await;
        return;
    }
    let open = metrics.connections.fetch_add(1, Relaxed) + 1;
    if open as usize > app.config.limits.max_connections {
        metrics.connections.fetch_sub(1, Relaxed);
        metrics.connections_refused.fetch_add(1, Relaxed);
        metrics.disconnect(Some(CloseCode::NodeFull));
        tracing::info!(open, "connection refused: node full");
        close_with(&mut socket, CloseCode::NodeFull).await;
        return;
    }
    metrics.connections_total.fetch_add(1, Relaxed);
    let (tx, mut rx) = mpsc::channel(app.config.websocket.send_queue_frames);
    let id = app.next_conn_id();
    let signal = Arc::new(ConnSignal::default());
    app.conns.insert(id, signal.clone());
    // `?lang=` wins over the token's claim; an unsupported language reads originals.
    let lang = query_lang
        .or_else(|| claims.lang.clone())
        .and_then(|l| ferry_client::protocol::translation::normalize_lang(&l))
        .filter(|l| app.chat.check_language(l).is_ok());
    let mut session = Session::new(claims, app.config.limits.clone(), Instant::now());
    session.set_lang(lang);
    let mut conn = Conn {
        session,
        app: app.clone(),
        id,
        signal,
        tx,
        queued: Arc::new(AtomicI64::new(0)),
        last_seen: Instant::now(),
    };
    app.hub.user_connected(&conn.session.user().id);
    let code = conn.run(&mut socket, &mut rx).await;
    app.hub.user_disconnected(&conn.session.user().id);
    metrics.disconnect(code);
    if let Some(code) = code {
        if code != CloseCode::Shutdown {
            tracing::info!(conn = id, user = %conn.session.user().id, code = code.code(), reason = code.reason(), "connection closed by server");
        }
        close_with(&mut socket, code).await;
    }
    let rooms: Vec<RoomId> = conn.session.rooms().cloned().collect();
    for room in rooms {
        app.hub.leave(&room, id).await;
    }
    app.conns.remove(&id);
    rx.close();
    let left = conn.queued.swap(0, Relaxed);
    metrics.queued_frames.fetch_sub(left, Relaxed);
    metrics.connections.fetch_sub(1, Relaxed);
}

impl Conn {
    /// Drive the connection until it ends; the close code to send, if the server closes it.
    async fn run(
        &mut self,
        socket: &mut WebSocket,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Option<CloseCode> {
        let connected = Push::Connected {
            version: PROTOCOL_VERSION,
            node: self.app.hub.node().to_owned(),
            user: self.session.user().clone(),
            server_time: unix_ms_f64(),
            lang: self.session.lang().map(str::to_owned),
        };
        let hello = Utf8Bytes::from(serde_json::to_string(&connected).unwrap_or_default());
        if let Err(code) = self.write(socket, hello).await {
            return Some(code);
        }
        let cfg = self.app.config.websocket.clone();
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + cfg.ping_interval,
            cfg.ping_interval,
        );
        loop {
            tokio::select! {
                biased;
                _ = self.signal.notify.notified() => {
                    return self.signal.code();
                }
                out = rx.recv() => {
                    let Some(out) = out else { return Some(CloseCode::InternalError) };
                    if let Err(code) = self.write_queued(socket, rx, out).await {
                        return Some(code);
                    }
                }
                msg = socket.recv() => {
                    // Stamped as the frame comes off the socket, before anything else: the
                    // receive time commerce commands are judged by.
                    let received_at = unix_ms_f64() as u64;
                    let msg = match msg {
                        None => return None,
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return read_error_code(&e),
                    };
                    self.last_seen = Instant::now();
                    self.app.metrics.frames_in.fetch_add(1, Relaxed);
                    let action = match msg {
                        Message::Text(text) => {
                            let now = Instant::now();
                            self.session.handle_text(text.as_str(), now, received_at, &*self.app.hub)
                        }
                        Message::Binary(_) => {
                            tracing::info!(conn = self.id, "binary frame refused");
                            self.session.handle_binary()
                        }
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Close(_) => return None,
                    };
                    // Boxed: commands are rare next to idle time, and inlining their
                    // futures (join, publish) would make every idle connection's task bigger.
                    if let Err(code) = Box::pin(self.execute(socket, action)).await {
                        return Some(code);
                    }
                }
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > cfg.ping_interval + cfg.pong_timeout {
                        return Some(CloseCode::HeartbeatTimeout);
                    }
                    if let Err(code) = self.send_raw(socket, Message::Ping(bytes::Bytes::new())).await {
                        return Some(code);
                    }
                }
            }
        }
    }

    async fn send_raw(&self, socket: &mut WebSocket, msg: Message) -> Result<(), CloseCode> {
        match tokio::time::timeout(self.app.config.websocket.write_timeout, socket.send(msg)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseCode::WriteTimeout),
            Err(_) => Err(CloseCode::WriteTimeout),
        }
    }

    async fn write(&self, socket: &mut WebSocket, text: Utf8Bytes) -> Result<(), CloseCode> {
        self.send_raw(socket, Message::Text(text)).await
    }

    /// Write one queued item and whatever else is already queued, with one flush.
    async fn write_queued(
        &mut self,
        socket: &mut WebSocket,
        rx: &mut mpsc::Receiver<Outbound>,
        first: Outbound,
    ) -> Result<(), CloseCode> {
        use futures_util::SinkExt;
        let mut item = Some(first);
        let mut taken = 0i64;
        let timeout = self.app.config.websocket.write_timeout;
        let work = async {
            while let Some(out) = item.take() {
                let text = match out {
                    Outbound::Frame(f) => {
                        taken += 1;
                        f
                    }
                    Outbound::Removed { room, frame } => {
                        self.session.left(&room);
                        frame
                    }
                };
                socket.feed(Message::Text(text)).await?;
                if taken < 64 {
                    item = rx.try_recv().ok();
                }
            }
            socket.flush().await
        };
        // A blocked write gives way to a close signal (e.g. the room found our queue full).
        let signal = self.signal.clone();
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, work) => match r {
                Ok(Ok(())) => Ok(()),
                _ => Err(CloseCode::WriteTimeout),
            },
            _ = signal.notify.notified() => Err(signal.code().unwrap_or(CloseCode::InternalError)),
        };
        self.queued.fetch_sub(taken, Relaxed);
        self.app.metrics.queued_frames.fetch_sub(taken, Relaxed);
        result
    }

    async fn execute(&mut self, socket: &mut WebSocket, action: Action) -> Result<(), CloseCode> {
        let m = &self.app.metrics;
        let reply = match action {
            Action::Reply(reply) => {
                if let ReplyResult::Error(e) = &reply.result {
                    m.errors_sent.fetch_add(1, Relaxed);
                    if e.code == ErrorCode::RateLimited.code()
                        || e.code == ErrorCode::SlowMode.code()
                    {
                        m.rate_limited.fetch_add(1, Relaxed);
                    }
                    tracing::debug!(conn = self.id, code = e.code, message = %e.message, "command refused");
                }
                reply_text(&reply)
            }
            Action::Close(code) => {
                tracing::info!(conn = self.id, user = %self.session.user().id, code = code.code(), "closing on bad input");
                return Err(code);
            }
            Action::Pong { id, t } => {
                let server_recv = unix_ms_f64();
                m.commands_in.fetch_add(1, Relaxed);
                ok_reply(
                    id,
                    ReplyBody::Pong(PongReply {
                        t,
                        server_recv,
                        server_send: unix_ms_f64(),
                    }),
                )
            }
            Action::Join { id, room, since } => {
                m.commands_in.fetch_add(1, Relaxed);
                let role = self.session.user().role;
                let may_create = match self.app.config.rooms.auto_create {
                    AutoCreate::Any => true,
                    AutoCreate::Host => role.owns_rooms(),
                    AutoCreate::Never => false,
                };
                let member = Member {
                    conn: self.id,
                    user: self.session.user().clone(),
                    lang: self.session.lang().map(str::to_owned),
                    market: self.session.claims().market.clone(),
                    tx: self.tx.clone(),
                    signal: self.signal.clone(),
                    queued: self.queued.clone(),
                };
                match self
                    .app
                    .hub
                    .join(&room, member, id, since, may_create)
                    .await
                {
                    Ok(()) => {
                        self.session.join_finished(&room, true);
                        return Ok(()); // The join reply was queued by the room.
                    }
                    Err(JoinError::Refused(code, message)) => {
                        self.session.join_finished(&room, false);
                        m.errors_sent.fetch_add(1, Relaxed);
                        tracing::debug!(conn = self.id, %room, code = code.code(), %message, "join refused");
                        let retry = code.is_temporary().then_some(1000);
                        error_reply(id, code, message, retry)
                    }
                    Err(JoinError::Busy(retry_ms)) => {
                        self.session.join_finished(&room, false);
                        m.errors_sent.fetch_add(1, Relaxed);
                        m.rate_limited.fetch_add(1, Relaxed);
                        error_reply(
                            id,
                            ErrorCode::JoinRateLimited,
                            format!("node busy, retry in {retry_ms} ms"),
                            Some(retry_ms),
                        )
                    }
                    Err(JoinError::Close(code)) => {
                        self.session.join_finished(&room, false);
                        return Err(code);
                    }
                }
            }
            Action::Leave { id, room } => {
                m.commands_in.fetch_add(1, Relaxed);
                self.app.hub.leave(&room, self.id).await;
                ok_reply(id, ReplyBody::Empty(EmptyReply {}))
            }
            Action::Like { id, room, count } => {
                m.commands_in.fetch_add(1, Relaxed);
                self.app.hub.like(&room, count);
                ok_reply(id, ReplyBody::Empty(EmptyReply {}))
            }
            Action::Commerce {
                id,
                room,
                op,
                received_at,
            } => {
                m.commands_in.fetch_add(1, Relaxed);
                // The command is judged at the time it was read off the connection, not when
                // it is handled: under load a buy read just before a sale's start and
                // handled just after is still refused as too early.
                let now = received_at;
                match self.commerce(&room, op, now).await {
                    Ok(body) => ok_reply(id, body),
                    Err(e) => {
                        m.errors_sent.fetch_add(1, Relaxed);
                        let (code, mut retry) = e.code();
                        if let CommerceError::Refused(BuyRefusal::NotStarted { starts_at }) = &e {
                            retry = Some(starts_at.saturating_sub(now).max(1));
                        }
                        tracing::debug!(conn = self.id, %room, code = code.code(), error = %e, "commerce command refused");
                        error_reply(id, code, e.to_string(), retry)
                    }
                }
            }
            Action::Publish { id, room, event } => {
                m.commands_in.fetch_add(1, Relaxed);
                let user = self.session.user().clone();
                let sender = Sender {
                    user: &user,
                    lang: self.session.lang(),
                    market: self.session.claims().market.as_deref(),
                };
                match self.app.chat.publish(&room, event, sender).await {
                    Ok(Outcome::Published(position)) => {
                        ok_reply(id, ReplyBody::Published(PublishReply { position }))
                    }
                    Ok(Outcome::Held(pending)) => {
                        ok_reply(id, ReplyBody::Pending(PendingReply { pending }))
                    }
                    Err(e) => self.chat_error(id, &room, e),
                }
            }
            Action::SetLanguage { id, lang } => {
                m.commands_in.fetch_add(1, Relaxed);
                match self.app.chat.check_language(&lang) {
                    Ok(()) => {
                        self.session.set_lang(Some(lang.clone()));
                        let rooms: Vec<RoomId> = self.session.rooms().cloned().collect();
                        for room in rooms {
                            self.app
                                .hub
                                .set_language(&room, self.id, Some(lang.clone()))
                                .await;
                        }
                        ok_reply(id, ReplyBody::Empty(EmptyReply {}))
                    }
                    Err(e) => {
                        m.errors_sent.fetch_add(1, Relaxed);
                        reply_text(&Reply {
                            id,
                            result: ReplyResult::Error(e.body()),
                        })
                    }
                }
            }
            Action::Moderate { id, room, op } => {
                m.commands_in.fetch_add(1, Relaxed);
                let by = self.session.user().clone();
                let chat = &self.app.chat;
                let result = match op {
                    ModerationOp::Approve(held) => chat
                        .approve(&room, &held, &by)
                        .await
                        .map(|position| ReplyBody::Published(PublishReply { position })),
                    ModerationOp::Reject(held) => chat
                        .reject(&room, &held, &by)
                        .await
                        .map(|position| ReplyBody::Published(PublishReply { position })),
                    ModerationOp::Queue => chat
                        .queue(&room, self.session.lang())
                        .await
                        .map(|held| ReplyBody::Queue(QueueReply { held })),
                };
                match result {
                    Ok(body) => ok_reply(id, body),
                    Err(e) => self.chat_error(id, &room, e),
                }
            }
        };
        self.write(socket, reply).await
    }
}

impl Conn {
    /// The error reply for a chat command, logged and counted.
    fn chat_error(&self, id: u64, room: &RoomId, e: ChatError) -> Utf8Bytes {
        let m = &self.app.metrics;
        m.errors_sent.fetch_add(1, Relaxed);
        match &e {
            ChatError::Engine(EngineError::Unavailable(_)) => {
                tracing::warn!(conn = self.id, %room, error = %e, "publish failed")
            }
            _ => tracing::info!(conn = self.id, %room, error = %e, "chat command refused"),
        }
        reply_text(&Reply {
            id,
            result: ReplyResult::Error(e.body()),
        })
    }

    /// Carry out a commerce command for this connection's user.
    async fn commerce(
        &self,
        room: &RoomId,
        op: CommerceOp,
        now: u64,
    ) -> Result<ReplyBody, CommerceError> {
        let commerce = &self.app.commerce;
        let user = self.session.user();
        let empty = || ReplyBody::Empty(EmptyReply {});
        Ok(match op {
            CommerceOp::PinProduct(product) => {
                commerce.pin_product(room, &product, user).await?;
                empty()
            }
            CommerceOp::UnpinProduct => {
                commerce.unpin_product(room, user).await?;
                empty()
            }
            CommerceOp::StartSale(spec) => ReplyBody::Sale(SaleReply {
                sale: Box::new(commerce.start_sale(room, *spec, now, user).await?),
            }),
            CommerceOp::EndSale(sale) => ReplyBody::Sale(SaleReply {
                sale: Box::new(commerce.end_sale(Some(room), &sale, now).await?),
            }),
            CommerceOp::Buy {
                sale,
                quantity,
                key,
            } => {
                let buyer = Buyer {
                    user: user.id.clone(),
                    market: self.session.claims().market.clone().unwrap_or_default(),
                };
                let (reservation, replayed) = commerce
                    .buy(Some(room), &sale, &buyer, quantity, &key, now)
                    .await?;
                ReplyBody::Reservation(ReservationReply {
                    reservation,
                    replayed,
                })
            }
            CommerceOp::Cancel(reservation) => ReplyBody::Reservation(ReservationReply {
                reservation: commerce
                    .cancel(Some(room), &reservation, &user.id, now)
                    .await?,
                replayed: false,
            }),
        })
    }
}

/// The close code for a failed read: oversize and invalid UTF-8 are the client's fault.
fn read_error_code(e: &axum::Error) -> Option<CloseCode> {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            use tokio_tungstenite::tungstenite::Error as T;
            return match t {
                T::Capacity(_) => {
                    tracing::info!(error = %t, "frame too large");
                    Some(CloseCode::MessageTooBig)
                }
                // The client (or its network) went away without a close frame: not its fault.
                T::Protocol(tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)
                | T::ConnectionClosed
                | T::AlreadyClosed
                | T::Io(_) => None,
                T::Utf8(_) | T::Protocol(_) => {
                    tracing::info!(error = %t, "protocol violation");
                    Some(CloseCode::BadRequest)
                }
                _ => None,
            };
        }
        source = s.source();
    }
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
    {
        tracing::info!(error = %text, "frame too large");
        Some(CloseCode::MessageTooBig)
    } else if text.contains("UTF-8") || text.contains("utf-8") {
        tracing::info!(error = %text, "invalid UTF-8");
        Some(CloseCode::BadRequest)
    } else {
        tracing::debug!(error = %text, "read error");
        None
    }
}
