//! Sans-IO connection session: one per WebSocket, fed each text frame and the current time,
//! answering with the [`Action`] the driver ([`crate::ws`]) must carry out. It owns the
//! per-connection rules — parsing, permissions, which rooms are joined, command and comment
//! rate limits, slow mode, mutes, strikes toward closing abusive connections — and nothing
//! that touches a socket, a task or the engine.

use crate::auth::Claims;
use crate::config::LimitsConfig;
use crate::limits::{CommentRefusal, TokenBucket};
use ferry_client::protocol::commerce::{ProductId, ReservationId, SaleId, SaleSpec};
use ferry_client::protocol::{
    ClientFrame, CloseCode, Command, ErrorCode, Offset, Pinned, Reply, ReplyResult, RoomEvent,
    RoomId, StreamPosition, UserId, UserRef,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the session needs from state shared beyond its connection: the room's mutes, and the
/// per-user comment limits (rate and slow mode) that all of a user's connections share.
pub trait RoomView {
    /// `None` = not muted; `Some(None)` = muted until unmuted; `Some(Some(ms))` = until then.
    fn muted_until(&self, room: &RoomId, user: &UserId) -> Option<Option<u64>>;
    /// Admit a comment by `user` in `room` at `now` under the room's slow mode and the user's
    /// comment rate.
    fn try_comment(&self, room: &RoomId, user: &UserId, now: Instant)
        -> Result<(), CommentRefusal>;
}

/// What the driver must do with a frame.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this reply (usually an error).
    Reply(Reply),
    /// Close the connection with this code.
    Close(CloseCode),
    /// Answer a clock ping with the server's times.
    Pong {
        id: u64,
        t: Option<f64>,
    },
    /// Join (or resume in) a room; call [`Session::join_finished`] with the outcome.
    Join {
        id: u64,
        room: RoomId,
        since: Option<StreamPosition>,
    },
    Leave {
        id: u64,
        room: RoomId,
    },
    /// Publish this event to the room and reply with its position.
    Publish {
        id: u64,
        room: RoomId,
        event: RoomEvent,
    },
    /// Add likes to the room's aggregate and reply `{}`.
    Like {
        id: u64,
        room: RoomId,
        count: u32,
    },
    /// Hand a commerce command to the commerce service and reply with its answer.
    Commerce {
        id: u64,
        room: RoomId,
        op: CommerceOp,
        /// When the frame was read off the connection (Unix ms): the time the command is
        /// judged by (a buy before the sale's start is refused by this, not by when it was
        /// handled).
        received_at: u64,
    },
    /// Read comments in `lang` from now on (already normalized; the driver checks the server
    /// supports it, then calls [`Session::set_lang`]).
    SetLanguage {
        id: u64,
        lang: String,
    },
    /// A staff command on the moderator queue.
    Moderate {
        id: u64,
        room: RoomId,
        op: ModerationOp,
    },
}

/// Moderator-queue commands (staff only; checked here).
#[derive(Debug, PartialEq)]
pub enum ModerationOp {
    Approve(String),
    Reject(String),
    Queue,
}

/// Commerce commands, checked for permission; the commerce service checks the rest.
#[derive(Debug, PartialEq)]
pub enum CommerceOp {
    PinProduct(ProductId),
    UnpinProduct,
    StartSale(Box<SaleSpec>),
    EndSale(SaleId),
    Buy {
        sale: SaleId,
        quantity: u32,
        key: String,
    },
    Cancel(ReservationId),
}

/// Per-connection protocol state.
pub struct Session {
    claims: Claims,
    user: UserRef,
    limits: LimitsConfig,
    /// Rooms joined (`true`) or with a join in flight (`false`).
    rooms: HashMap<RoomId, bool>,
    commands: TokenBucket,
    /// Consecutive frames refused for being malformed or over a rate limit.
    strikes: u32,
    /// The language this connection reads comments in.
    lang: Option<String>,
}

fn valid_room_id(room: &RoomId) -> bool {
    let s = room.as_str();
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn error(id: u64, code: ErrorCode, message: impl Into<String>, retry: Option<Duration>) -> Action {
    Action::Reply(Reply {
        id,
        result: ReplyResult::Error(code.body(message, retry.map(|d| d.as_millis().max(1) as u64))),
    })
}

impl Session {
    pub fn new(claims: Claims, limits: LimitsConfig, now: Instant) -> Self {
        let user = claims.user_ref();
        Self {
            commands: TokenBucket::new(limits.command_rate, limits.command_burst, now),
            claims,
            user,
            limits,
            rooms: HashMap::new(),
            strikes: 0,
            lang: None,
        }
    }

    /// The language this connection reads comments in.
    pub fn lang(&self) -> Option<&str> {
        self.lang.as_deref()
    }

    pub fn set_lang(&mut self, lang: Option<String>) {
        self.lang = lang;
    }

    pub fn user(&self) -> &UserRef {
        &self.user
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Rooms this connection is in (joined or joining).
    pub fn rooms(&self) -> impl Iterator<Item = &RoomId> {
        self.rooms.keys()
    }

    /// The driver reports how a [`Action::Join`] ended.
    pub fn join_finished(&mut self, room: &RoomId, ok: bool) {
        if ok {
            self.rooms.insert(room.clone(), true);
        } else {
            self.rooms.remove(room);
        }
    }

    /// The server removed this connection from a room (closed, banned...).
    pub fn left(&mut self, room: &RoomId) {
        self.rooms.remove(room);
    }

    /// A binary frame: Ferry's protocol is text only.
    pub fn handle_binary(&mut self) -> Action {
        Action::Close(CloseCode::BadRequest)
    }

    fn strike(&mut self, action: Action, close: CloseCode) -> Action {
        self.strikes += 1;
        if self.strikes >= self.limits.strikes_before_close {
            Action::Close(close)
        } else {
            action
        }
    }

    /// Handle one text frame received at `now` (`unix_ms` is the wall clock when the frame was
    /// read off the connection: mutes compare with it, and commerce commands carry it).
    pub fn handle_text(
        &mut self,
        text: &str,
        now: Instant,
        unix_ms: u64,
        view: &dyn RoomView,
    ) -> Action {
        if let Err(wait) = self.commands.try_take(1.0, now) {
            let id = peek_id(text);
            let reply = error(id, ErrorCode::RateLimited, "too many commands", Some(wait));
            return self.strike(reply, CloseCode::Flood);
        }
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let reply = self.parse_error(text, &e);
                return self.strike(reply, CloseCode::BadRequest);
            }
        };
        let action = self.handle_command(frame, now, unix_ms, view);
        match &action {
            Action::Reply(Reply {
                result: ReplyResult::Error(body),
                ..
            }) if body.code == ErrorCode::RateLimited.code() => {
                return self.strike(action, CloseCode::Flood)
            }
            _ => self.strikes = 0,
        }
        action
    }

    fn parse_error(&self, text: &str, e: &serde_json::Error) -> Action {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return error(0, ErrorCode::BadRequest, format!("invalid JSON: {e}"), None),
        };
        let id = value.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
        match value.get("cmd").and_then(|c| c.as_str()) {
            None => error(id, ErrorCode::BadRequest, "missing `cmd`", None),
            Some(cmd) if !KNOWN_COMMANDS.contains(&cmd) => error(
                id,
                ErrorCode::UnknownCommand,
                format!("unknown command `{}`", truncate(cmd, 40)),
                None,
            ),
            Some(_) => error(id, ErrorCode::BadRequest, e.to_string(), None),
        }
    }

    fn handle_command(
        &mut self,
        frame: ClientFrame,
        now: Instant,
        unix_ms: u64,
        view: &dyn RoomView,
    ) -> Action {
        let id = frame.id;
        let cmd = frame.command;
        if let Some(room) = cmd.room() {
            if !valid_room_id(room) {
                return error(
                    id,
                    ErrorCode::BadRequest,
                    "room id must match [A-Za-z0-9_.:-]{1,64}",
                    None,
                );
            }
        }
        match cmd {
            Command::Ping { t } => Action::Pong { id, t },
            Command::SetLanguage { lang } => {
                match ferry_client::protocol::translation::normalize_lang(&lang) {
                    Some(lang) => Action::SetLanguage { id, lang },
                    None => error(
                        id,
                        ErrorCode::UnsupportedLanguage,
                        format!("`{}` is not a language tag", truncate(&lang, 40)),
                        None,
                    ),
                }
            }
            Command::Join { room, since } => {
                if !self.claims.allows_room(&room) {
                    return Action::Close(CloseCode::Forbidden);
                }
                if self.rooms.contains_key(&room) {
                    return error(id, ErrorCode::AlreadyJoined, "already in this room", None);
                }
                if self.rooms.len() >= self.limits.max_rooms_per_connection {
                    return error(id, ErrorCode::TooManyRooms, "leave a room first", None);
                }
                self.rooms.insert(room.clone(), false);
                Action::Join { id, room, since }
            }
            other => {
                let Some(room) = other.room().cloned() else {
                    return error(id, ErrorCode::BadRequest, "command needs a room", None);
                };
                if self.rooms.get(&room) != Some(&true) {
                    return error(id, ErrorCode::NotJoined, "join the room first", None);
                }
                let role = self.user.role;
                match other {
                    Command::Leave { .. } => {
                        self.rooms.remove(&room);
                        Action::Leave { id, room }
                    }
                    Command::Comment { text, .. } => {
                        if let Err(msg) = check_text(&text, self.limits.max_comment_chars) {
                            return error(id, ErrorCode::InvalidComment, msg, None);
                        }
                        if !role.is_staff() {
                            match view.muted_until(&room, &self.user.id) {
                                Some(None) => {
                                    return error(
                                        id,
                                        ErrorCode::Muted,
                                        "you are muted in this room",
                                        None,
                                    )
                                }
                                Some(Some(until)) if until > unix_ms => {
                                    return error(
                                        id,
                                        ErrorCode::Muted,
                                        format!(
                                            "you are muted for {} more seconds",
                                            (until - unix_ms).div_ceil(1000)
                                        ),
                                        None,
                                    )
                                }
                                _ => {}
                            }
                            match view.try_comment(&room, &self.user.id, now) {
                                Ok(()) => {}
                                Err(CommentRefusal::SlowMode { wait, every_secs }) => {
                                    return error(
                                        id,
                                        ErrorCode::SlowMode,
                                        format!("slow mode: one comment every {every_secs} s"),
                                        Some(wait),
                                    )
                                }
                                Err(CommentRefusal::RateLimited(wait)) => {
                                    return error(
                                        id,
                                        ErrorCode::RateLimited,
                                        "commenting too fast",
                                        Some(wait),
                                    )
                                }
                            }
                        }
                        Action::Publish {
                            id,
                            room,
                            event: RoomEvent::Comment {
                                user: self.user.clone(),
                                text,
                                lang: None,
                                translations: Default::default(),
                                held_id: None,
                            },
                        }
                    }
                    Command::Like { count, .. } => {
                        if !(1..=100).contains(&count) {
                            return error(id, ErrorCode::BadRequest, "count must be 1..=100", None);
                        }
                        Action::Like { id, room, count }
                    }
                    Command::Announce { text, .. } => {
                        if !role.owns_rooms() {
                            return error(id, ErrorCode::Forbidden, "only hosts announce", None);
                        }
                        if let Err(msg) = check_text(&text, self.limits.max_comment_chars) {
                            return error(id, ErrorCode::InvalidComment, msg, None);
                        }
                        Action::Publish {
                            id,
                            room,
                            event: RoomEvent::Announcement {
                                user: self.user.clone(),
                                text,
                                lang: None,
                                translations: Default::default(),
                            },
                        }
                    }
                    Command::Buy {
                        sale,
                        quantity,
                        key,
                        ..
                    } => Action::Commerce {
                        id,
                        room,
                        op: CommerceOp::Buy {
                            sale,
                            quantity,
                            key,
                        },
                        received_at: unix_ms,
                    },
                    Command::CancelReservation { reservation, .. } => Action::Commerce {
                        id,
                        room,
                        op: CommerceOp::Cancel(reservation),
                        received_at: unix_ms,
                    },
                    host_command @ (Command::PinProduct { .. }
                    | Command::UnpinProduct { .. }
                    | Command::StartSale { .. }
                    | Command::EndSale { .. }) => {
                        if !role.owns_rooms() {
                            return error(
                                id,
                                ErrorCode::Forbidden,
                                format!("`{}` needs a host or admin", host_command.name()),
                                None,
                            );
                        }
                        let op = match host_command {
                            Command::PinProduct { product, .. } => CommerceOp::PinProduct(product),
                            Command::StartSale { sale, .. } => {
                                CommerceOp::StartSale(Box::new(sale))
                            }
                            Command::EndSale { sale, .. } => CommerceOp::EndSale(sale),
                            _ => CommerceOp::UnpinProduct,
                        };
                        Action::Commerce {
                            id,
                            room,
                            op,
                            received_at: unix_ms,
                        }
                    }
                    moderation @ (Command::ApproveComment { .. }
                    | Command::RejectComment { .. }
                    | Command::ModerationQueue { .. }) => {
                        if !role.is_staff() {
                            return error(
                                id,
                                ErrorCode::Forbidden,
                                format!("`{}` needs a host, moderator or admin", moderation.name()),
                                None,
                            );
                        }
                        let op = match moderation {
                            Command::ApproveComment { held, .. } => ModerationOp::Approve(held),
                            Command::RejectComment { held, .. } => ModerationOp::Reject(held),
                            _ => ModerationOp::Queue,
                        };
                        if let ModerationOp::Approve(h) | ModerationOp::Reject(h) = &op {
                            if h.is_empty() || h.len() > 64 {
                                return error(id, ErrorCode::BadRequest, "bad held id", None);
                            }
                        }
                        Action::Moderate { id, room, op }
                    }
                    staff_command => {
                        if !role.is_staff() {
                            return error(
                                id,
                                ErrorCode::Forbidden,
                                format!(
                                    "`{}` needs a host, moderator or admin",
                                    staff_command.name()
                                ),
                                None,
                            );
                        }
                        self.staff_event(id, room, staff_command, unix_ms)
                    }
                }
            }
        }
    }

    fn staff_event(&self, id: u64, room: RoomId, cmd: Command, unix_ms: u64) -> Action {
        let by = self.user.clone();
        let event = match cmd {
            Command::Pin { text, .. } => {
                if let Err(msg) = check_text(&text, self.limits.max_comment_chars) {
                    return error(id, ErrorCode::InvalidComment, msg, None);
                }
                RoomEvent::Pinned {
                    pinned: Pinned { text, by },
                }
            }
            Command::Unpin { .. } => RoomEvent::Unpinned { by },
            Command::DeleteComment { offset, .. } => {
                if offset == Offset(0) {
                    return error(id, ErrorCode::BadRequest, "offset must be >= 1", None);
                }
                RoomEvent::CommentDeleted { offset, by }
            }
            Command::Mute { user, seconds, .. } => RoomEvent::UserMuted {
                user,
                until: seconds
                    .filter(|s| *s > 0)
                    .map(|s| unix_ms.saturating_add(s.saturating_mul(1000))),
                by,
            },
            Command::Unmute { user, .. } => RoomEvent::UserUnmuted { user, by },
            Command::Ban { user, .. } => RoomEvent::UserBanned { user, by },
            Command::SlowMode { seconds, .. } => {
                if seconds > 3600 {
                    return error(
                        id,
                        ErrorCode::BadRequest,
                        "slow mode is at most 3600 s",
                        None,
                    );
                }
                RoomEvent::SlowMode { seconds, by }
            }
            _ => return error(id, ErrorCode::BadRequest, "not a staff command", None),
        };
        Action::Publish { id, room, event }
    }
}

const KNOWN_COMMANDS: &[&str] = &[
    "join",
    "leave",
    "comment",
    "like",
    "ping",
    "announce",
    "pin",
    "unpin",
    "delete_comment",
    "mute",
    "unmute",
    "ban",
    "slow_mode",
    "pin_product",
    "unpin_product",
    "start_sale",
    "end_sale",
    "buy",
    "cancel_reservation",
    "set_language",
    "approve_comment",
    "reject_comment",
    "moderation_queue",
];

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Best-effort id of a frame we will not parse fully (for the rate-limit reply).
fn peek_id(text: &str) -> u64 {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_str::<IdOnly>(text)
        .map(|f| f.id)
        .unwrap_or(0)
}

/// Comments, announcements and pins: non-blank, not too long, no control characters.
fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text is empty".into());
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(format!(
            "text is {chars} characters; the limit is {max_chars}"
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err("text contains control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_client::protocol::Role;

    struct View {
        slow: u64,
        muted: Option<Option<u64>>,
        limits: std::cell::RefCell<crate::limits::UserLimits>,
    }

    impl Default for View {
        fn default() -> Self {
            let l = LimitsConfig::default();
            View {
                slow: 0,
                muted: None,
                limits: std::cell::RefCell::new(crate::limits::UserLimits::new(
                    l.comment_rate,
                    l.comment_burst,
                )),
            }
        }
    }

    impl RoomView for View {
        fn muted_until(&self, _: &RoomId, _: &UserId) -> Option<Option<u64>> {
            self.muted
        }
        fn try_comment(
            &self,
            room: &RoomId,
            user: &UserId,
            now: Instant,
        ) -> Result<(), CommentRefusal> {
            self.limits
                .borrow_mut()
                .try_comment(user, room, self.slow, now)
        }
    }

    fn claims(role: Role, room: &str) -> Claims {
        Claims {
            sub: "u1".into(),
            name: None,
            role,
            room: room.into(),
            lang: None,
            market: None,
            exp: u64::MAX,
            iat: None,
            iss: None,
            aud: None,
        }
    }

    fn session(role: Role) -> (Session, Instant) {
        let now = Instant::now();
        (
            Session::new(claims(role, "r*"), LimitsConfig::default(), now),
            now,
        )
    }

    fn joined(role: Role) -> (Session, Instant) {
        let (mut s, now) = session(role);
        let a = s.handle_text(
            r#"{"id":1,"cmd":"join","room":"r1"}"#,
            now,
            0,
            &View::default(),
        );
        assert!(matches!(a, Action::Join { .. }), "{a:?}");
        s.join_finished(&"r1".into(), true);
        (s, now)
    }

    fn error_code(a: &Action) -> Option<u16> {
        match a {
            Action::Reply(Reply {
                result: ReplyResult::Error(e),
                ..
            }) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn malformed_frames_get_their_error_codes() {
        let (mut s, now) = session(Role::Viewer);
        let v = View::default();
        let a = s.handle_text("{nope", now, 0, &v);
        assert_eq!(error_code(&a), Some(ErrorCode::BadRequest.code()));
        let a = s.handle_text(r#"{"id":4,"cmd":"teleport"}"#, now, 0, &v);
        assert_eq!(error_code(&a), Some(ErrorCode::UnknownCommand.code()));
        let a = s.handle_text(r#"{"id":5,"cmd":"comment","room":"r1"}"#, now, 0, &v);
        assert_eq!(error_code(&a), Some(ErrorCode::BadRequest.code()));
        let a = s.handle_text(
            r#"{"id":6,"cmd":"comment","room":"r1","text":"hi"}"#,
            now,
            0,
            &v,
        );
        assert_eq!(error_code(&a), Some(ErrorCode::NotJoined.code()));
        let a = s.handle_text(r#"{"id":7,"cmd":"join","room":"bad room!"}"#, now, 0, &v);
        assert_eq!(error_code(&a), Some(ErrorCode::BadRequest.code()));
        assert_eq!(s.handle_binary(), Action::Close(CloseCode::BadRequest));
    }

    /// Commerce commands carry the time their frame was read off the connection (what the
    /// driver passes as `unix_ms`), so a buy is judged by when it arrived, not by when it is
    /// handled.
    #[test]
    fn commerce_commands_carry_their_receive_time() {
        let (mut s, now) = joined(Role::Host);
        let v = View::default();
        let frames = [
            r#"{"id":2,"cmd":"buy","room":"r1","sale":"s1","key":"k"}"#,
            r#"{"id":3,"cmd":"cancel_reservation","room":"r1","reservation":"s1.r"}"#,
            r#"{"id":4,"cmd":"start_sale","room":"r1","sale":{"product":"p","quantity":1,"price_cny":1,"duration_secs":60}}"#,
        ];
        for (n, frame) in frames.iter().enumerate() {
            let received = 1_732_240_299_990 + n as u64;
            match s.handle_text(frame, now, received, &v) {
                Action::Commerce { received_at, .. } => assert_eq!(received_at, received),
                other => panic!("{frame}: {other:?}"),
            }
        }
    }

    #[test]
    fn join_outside_token_closes_forbidden() {
        let (mut s, now) = session(Role::Viewer);
        let a = s.handle_text(
            r#"{"id":1,"cmd":"join","room":"other"}"#,
            now,
            0,
            &View::default(),
        );
        assert_eq!(a, Action::Close(CloseCode::Forbidden));
    }

    #[test]
    fn repeated_bad_frames_close_the_connection() {
        let (mut s, now) = session(Role::Viewer);
        let mut last = None;
        for _ in 0..LimitsConfig::default().strikes_before_close {
            last = Some(s.handle_text("not json", now, 0, &View::default()));
        }
        assert_eq!(last, Some(Action::Close(CloseCode::BadRequest)));
    }

    #[test]
    fn command_flood_is_limited_then_closed() {
        let (mut s, now) = session(Role::Viewer);
        let limits = LimitsConfig::default();
        let v = View::default();
        for i in 0..limits.command_burst as u64 {
            let a = s.handle_text(&format!(r#"{{"id":{i},"cmd":"ping"}}"#), now, 0, &v);
            assert!(matches!(a, Action::Pong { .. }));
        }
        let a = s.handle_text(r#"{"id":99,"cmd":"ping"}"#, now, 0, &v);
        assert_eq!(error_code(&a), Some(ErrorCode::RateLimited.code()));
        let mut last = a;
        for _ in 0..limits.strikes_before_close {
            last = s.handle_text(r#"{"id":99,"cmd":"ping"}"#, now, 0, &v);
        }
        assert_eq!(last, Action::Close(CloseCode::Flood));
    }

    #[test]
    fn comments_are_validated_and_rate_limited() {
        let (mut s, now) = joined(Role::Viewer);
        let v = View::default();
        let long = "x".repeat(501);
        let a = s.handle_text(
            &format!(r#"{{"id":2,"cmd":"comment","room":"r1","text":"{long}"}}"#),
            now,
            0,
            &v,
        );
        assert_eq!(error_code(&a), Some(ErrorCode::InvalidComment.code()));
        let a = s.handle_text(
            r#"{"id":2,"cmd":"comment","room":"r1","text":"   "}"#,
            now,
            0,
            &v,
        );
        assert_eq!(error_code(&a), Some(ErrorCode::InvalidComment.code()));
        for i in 0..5 {
            let a = s.handle_text(
                &format!(r#"{{"id":{i},"cmd":"comment","room":"r1","text":"多少钱 {i}"}}"#),
                now,
                0,
                &v,
            );
            assert!(matches!(a, Action::Publish { .. }), "{a:?}");
        }
        let a = s.handle_text(
            r#"{"id":9,"cmd":"comment","room":"r1","text":"again"}"#,
            now,
            0,
            &v,
        );
        assert_eq!(error_code(&a), Some(ErrorCode::RateLimited.code()));
        let later = now + Duration::from_secs(1);
        let a = s.handle_text(
            r#"{"id":10,"cmd":"comment","room":"r1","text":"again"}"#,
            later,
            0,
            &v,
        );
        assert!(matches!(a, Action::Publish { .. }));
    }

    #[test]
    fn slow_mode_and_mutes_apply_to_viewers_not_staff() {
        let slow = View {
            slow: 10,
            ..View::default()
        };
        let (mut s, now) = joined(Role::Viewer);
        let c = r#"{"id":2,"cmd":"comment","room":"r1","text":"hi"}"#;
        assert!(matches!(
            s.handle_text(c, now, 0, &slow),
            Action::Publish { .. }
        ));
        let a = s.handle_text(c, now + Duration::from_secs(3), 0, &slow);
        assert_eq!(error_code(&a), Some(ErrorCode::SlowMode.code()));
        assert!(matches!(
            s.handle_text(c, now + Duration::from_secs(10), 0, &slow),
            Action::Publish { .. }
        ));
        let muted = View {
            muted: Some(Some(5_000)),
            ..View::default()
        };
        let (mut s, now) = joined(Role::Viewer);
        assert_eq!(
            error_code(&s.handle_text(c, now, 1_000, &muted)),
            Some(ErrorCode::Muted.code())
        );
        assert!(matches!(
            s.handle_text(c, now, 6_000, &muted),
            Action::Publish { .. }
        ));

        let (mut host, now) = joined(Role::Host);
        for _ in 0..20 {
            assert!(matches!(
                host.handle_text(c, now, 0, &slow),
                Action::Publish { .. }
            ));
        }
    }

    #[test]
    fn languages_normalize_and_moderation_needs_staff() {
        let (mut s, now) = joined(Role::Viewer);
        let v = View::default();
        let a = s.handle_text(
            r#"{"id":1,"cmd":"set_language","lang":"es-MX"}"#,
            now,
            0,
            &v,
        );
        assert_eq!(
            a,
            Action::SetLanguage {
                id: 1,
                lang: "es".into()
            }
        );
        let a = s.handle_text(
            r#"{"id":2,"cmd":"set_language","lang":"español"}"#,
            now,
            0,
            &v,
        );
        assert_eq!(error_code(&a), Some(ErrorCode::UnsupportedLanguage.code()));
        for cmd in [
            r#"{"id":3,"cmd":"approve_comment","room":"r1","held":"h1"}"#,
            r#"{"id":3,"cmd":"reject_comment","room":"r1","held":"h1"}"#,
            r#"{"id":3,"cmd":"moderation_queue","room":"r1"}"#,
        ] {
            assert_eq!(
                error_code(&s.handle_text(cmd, now, 0, &v)),
                Some(ErrorCode::Forbidden.code())
            );
        }
        let (mut m, now) = joined(Role::Moderator);
        assert_eq!(
            m.handle_text(
                r#"{"id":4,"cmd":"approve_comment","room":"r1","held":"h1"}"#,
                now,
                0,
                &v
            ),
            Action::Moderate {
                id: 4,
                room: "r1".into(),
                op: ModerationOp::Approve("h1".into())
            }
        );
    }

    #[test]
    fn staff_commands_need_staff() {
        let (mut s, now) = joined(Role::Viewer);
        let v = View::default();
        for cmd in [
            r#"{"id":1,"cmd":"pin","room":"r1","text":"x"}"#,
            r#"{"id":1,"cmd":"ban","room":"r1","user":"u2"}"#,
            r#"{"id":1,"cmd":"announce","room":"r1","text":"x"}"#,
            r#"{"id":1,"cmd":"slow_mode","room":"r1","seconds":5}"#,
        ] {
            assert_eq!(
                error_code(&s.handle_text(cmd, now, 0, &v)),
                Some(ErrorCode::Forbidden.code())
            );
        }
        let (mut m, now) = joined(Role::Moderator);
        let a = m.handle_text(
            r#"{"id":1,"cmd":"mute","room":"r1","user":"u2","seconds":60}"#,
            now,
            1000,
            &v,
        );
        match a {
            Action::Publish {
                event: RoomEvent::UserMuted { until, .. },
                ..
            } => assert_eq!(until, Some(61_000)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
