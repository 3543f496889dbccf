//! The Ferry wire protocol, version 1: the single definition compiled into both the server
//! and this SDK.
//!
//! Every WebSocket text frame carries one or more JSON objects separated by `\n` (the server
//! coalesces several pushes into one frame under load; clients always send one object per
//! frame). Clients send [`ClientFrame`]s (a command with an `id`); the server answers each with
//! a [`Reply`] carrying the same `id`, and sends [`Push`]es on its own. `docs/protocol.md` is the
//! human-readable version of this module.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Protocol version spoken by this build. Sent by the server in the `connected` push.
pub const PROTOCOL_VERSION: u32 = 1;

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Borrow the id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_newtype!(
    /// A live room's id: `[A-Za-z0-9_.:-]{1,64}`.
    RoomId
);
string_newtype!(
    /// A user's id, as issued by the platform in the token's `sub` claim.
    UserId
);
string_newtype!(
    /// A room stream's epoch: changes whenever the room's history is lost, so offsets from an
    /// older epoch are never trusted.
    Epoch
);

pub mod commerce;
pub mod translation;
use commerce::{
    PinnedProduct, ProductId, PurchaseNotice, ReservationId, ReservationReply, SaleId, SaleReply,
    SaleSpec, SaleStock, SaleView,
};
use translation::{HeldComment, PendingReply, QueueReply, RuleRef, Translations};

/// A position in a room's event stream. Offsets increase by exactly one per published event
/// within an epoch; the first event of an epoch has offset 1, so offset 0 means "nothing yet".
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset that follows this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a client is in a room's stream: the last event it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: Epoch,
    pub offset: Offset,
}

/// What a user may do; carried in the token's `role` claim.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Host,
    Moderator,
    Admin,
}

impl Role {
    /// Hosts, moderators and admins moderate rooms and are exempt from comment limits.
    pub fn is_staff(self) -> bool {
        !matches!(self, Role::Viewer)
    }

    /// Hosts and admins own rooms: they may create and close rooms and post announcements.
    pub fn owns_rooms(self) -> bool {
        matches!(self, Role::Host | Role::Admin)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Host => "host",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "host" => Ok(Role::Host),
            "moderator" => Ok(Role::Moderator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected viewer, host, moderator or admin)"
            )),
        }
    }
}

/// The public face of a user inside room events: no personal data beyond the display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: UserId,
    pub name: String,
    pub role: Role,
}

/// A command frame sent by a client. `id` is chosen by the client and echoed in the reply;
/// it should be unique among the client's outstanding commands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: u64,
    #[serde(flatten)]
    pub command: Command,
}

/// Every command a client can send. Field `cmd` selects the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Join a room. With `since`, resume from that position: the server sends every missed
    /// event, or answers `recovered: false` when it cannot.
    Join {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
    },
    Leave {
        room: RoomId,
    },
    /// Post a comment (1..=`limits.max_comment_chars` characters).
    Comment {
        room: RoomId,
        text: String,
    },
    /// Like the stream `count` times (1..=100). Likes are aggregated per interval.
    Like {
        room: RoomId,
        #[serde(default = "one")]
        count: u32,
    },
    /// Clock sample: `t` is the client's clock in Unix milliseconds when it sent the frame.
    Ping {
        #[serde(default)]
        t: Option<f64>,
    },
    /// Host announcement (hosts and admins).
    Announce {
        room: RoomId,
        text: String,
    },
    /// Pin a message above the chat (staff).
    Pin {
        room: RoomId,
        text: String,
    },
    Unpin {
        room: RoomId,
    },
    /// Delete a comment by its offset (staff).
    DeleteComment {
        room: RoomId,
        offset: Offset,
    },
    /// Mute a user for `seconds` (staff; 0 or absent = until unmuted).
    Mute {
        room: RoomId,
        user: UserId,
        #[serde(default)]
        seconds: Option<u64>,
    },
    Unmute {
        room: RoomId,
        user: UserId,
    },
    /// Ban a user from the room: they are disconnected and cannot rejoin (staff).
    Ban {
        room: RoomId,
        user: UserId,
    },
    /// Per-room slow mode: each viewer may comment once per `seconds` (0 turns it off; staff).
    SlowMode {
        room: RoomId,
        seconds: u64,
    },
    /// Show a catalog product above the chat (hosts and admins).
    PinProduct {
        room: RoomId,
        product: ProductId,
    },
    UnpinProduct {
        room: RoomId,
    },
    /// Launch a flash sale in the room (hosts and admins); replies with the sale.
    StartSale {
        room: RoomId,
        sale: SaleSpec,
    },
    /// End a sale early (hosts and admins).
    EndSale {
        room: RoomId,
        sale: SaleId,
    },
    /// Reserve `quantity` units of a sale. `key` is the idempotency key: the SDK makes one
    /// per Buy press and reuses it on retries, so a double click or a retried request never
    /// reserves twice.
    Buy {
        room: RoomId,
        sale: SaleId,
        #[serde(default = "one")]
        quantity: u32,
        key: String,
    },
    /// Give a reservation back before paying (its buyer only).
    CancelReservation {
        room: RoomId,
        reservation: ReservationId,
    },
    // -- translation and moderation (docs/protocol.md section 14) --
    /// Choose the language this connection reads comments in (a BCP 47 tag; the server keeps
    /// its primary subtag). Applies at once to every room of the connection and to later
    /// joins.
    SetLanguage {
        lang: String,
    },
    /// Publish a held comment from the moderator queue (staff).
    ApproveComment {
        room: RoomId,
        held: String,
    },
    /// Drop a held comment from the moderator queue (staff).
    RejectComment {
        room: RoomId,
        held: String,
    },
    /// The room's moderator queue (staff).
    ModerationQueue {
        room: RoomId,
    },
}

fn one() -> u32 {
    1
}

impl Command {
    /// The wire name of the command (its `cmd` field).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Comment { .. } => "comment",
            Command::Like { .. } => "like",
            Command::Ping { .. } => "ping",
            Command::Announce { .. } => "announce",
            Command::Pin { .. } => "pin",
            Command::Unpin { .. } => "unpin",
            Command::DeleteComment { .. } => "delete_comment",
            Command::Mute { .. } => "mute",
            Command::Unmute { .. } => "unmute",
            Command::Ban { .. } => "ban",
            Command::SlowMode { .. } => "slow_mode",
            Command::PinProduct { .. } => "pin_product",
            Command::UnpinProduct { .. } => "unpin_product",
            Command::StartSale { .. } => "start_sale",
            Command::EndSale { .. } => "end_sale",
            Command::Buy { .. } => "buy",
            Command::CancelReservation { .. } => "cancel_reservation",
            Command::SetLanguage { .. } => "set_language",
            Command::ApproveComment { .. } => "approve_comment",
            Command::RejectComment { .. } => "reject_comment",
            Command::ModerationQueue { .. } => "moderation_queue",
        }
    }

    /// The room a command targets, if any.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            Command::Ping { .. } | Command::SetLanguage { .. } => None,
            Command::Join { room, .. }
            | Command::Leave { room }
            | Command::Comment { room, .. }
            | Command::Like { room, .. }
            | Command::Announce { room, .. }
            | Command::Pin { room, .. }
            | Command::Unpin { room }
            | Command::DeleteComment { room, .. }
            | Command::Mute { room, .. }
            | Command::Unmute { room, .. }
            | Command::Ban { room, .. }
            | Command::SlowMode { room, .. }
            | Command::PinProduct { room, .. }
            | Command::UnpinProduct { room }
            | Command::StartSale { room, .. }
            | Command::EndSale { room, .. }
            | Command::Buy { room, .. }
            | Command::CancelReservation { room, .. }
            | Command::ApproveComment { room, .. }
            | Command::RejectComment { room, .. }
            | Command::ModerationQueue { room } => Some(room),
        }
    }
}

/// Every server frame: a reply to a command, or a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Reply(Reply),
    Push(Push),
}

/// The answer to one command: exactly one of `ok` or `error` is present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    #[serde(flatten)]
    pub result: ReplyResult,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyResult {
    Ok(ReplyBody),
    Error(ErrorBody),
}

/// Successful reply bodies. Untagged: the shape tells which command it answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplyBody {
    Joined(JoinReply),
    Published(PublishReply),
    Pong(PongReply),
    Reservation(ReservationReply),
    Sale(SaleReply),
    /// A `comment` held for a moderator (not published).
    Pending(PendingReply),
    /// `moderation_queue`.
    Queue(QueueReply),
    Empty(EmptyReply),
}

/// `{}`: the command succeeded and has nothing to say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyReply {}

/// Reply to `join`. When `recovered` is true the missed events follow this reply, in order,
/// before any live event. When false the client must reset its view of the room from `state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinReply {
    pub room: RoomId,
    /// The room's position at the moment of joining: events after it will follow.
    pub position: StreamPosition,
    /// Present when the client asked to resume: whether every missed event follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// How many missed events follow this reply.
    #[serde(default)]
    pub missed: u64,
    pub state: RoomState,
}

/// A room's current state, sent on join so late joiners need no history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub viewers: u64,
    #[serde(default)]
    pub likes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pinned>,
    #[serde(default)]
    pub slow_mode_secs: u64,
    #[serde(default)]
    pub closed: bool,
    /// The product pinned in the room's showcase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<Box<PinnedProduct>>,
    /// The room's current (or last) flash sale, with its stock at the time of the view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale: Option<Box<SaleView>>,
    /// The host's video is live: play it with WHEP (`POST /whep/{room}`).
    #[serde(default)]
    pub live: bool,
    /// The moderator queue, oldest first: sent to staff only (absent for viewers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldComment>,
}

/// A message pinned above the chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    pub text: String,
    pub by: UserRef,
}

/// Reply to commands that publish a room event: where the event landed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishReply {
    pub position: StreamPosition,
}

/// Reply to `ping`: the echoed client time and the server's receive/send times (Unix ms),
/// from which the SDK estimates the clock offset NTP-style.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PongReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
    pub server_recv: f64,
    pub server_send: f64,
}

/// A command error. `code` is stable; `retry_after_ms` is set for temporary errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    pub name: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// `moderation_blocked`: the rule the text broke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Box<RuleRef>>,
}

/// Frames the server sends on its own. Field `push` selects the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "snake_case")]
pub enum Push {
    /// First frame on every connection.
    Connected {
        version: u32,
        node: String,
        user: UserRef,
        /// Server time (Unix ms) when the connection was accepted.
        server_time: f64,
        /// The language this connection reads comments in (from `?lang=`, else the token's
        /// `lang` claim, when the server supports it); change it with `set_language`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lang: Option<String>,
    },
    /// A room stream event with its position. Clients remember the last position per room
    /// and send it as `since` when they rejoin.
    Event {
        room: RoomId,
        epoch: Epoch,
        offset: Offset,
        event: RoomEvent,
    },
    /// The room's viewer count across the cluster (throttled; not part of the stream).
    Viewers { room: RoomId, count: u64 },
    /// The server removed this connection from a room (today: the room was closed). Bans and
    /// stream loss close the whole connection instead (3506, 3004).
    Left {
        room: RoomId,
        code: u16,
        reason: String,
    },
}

/// Events in a room's stream. Field `type` selects the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RoomEvent {
    Comment {
        user: UserRef,
        /// The original text, always.
        text: String,
        /// Detected source language.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lang: Option<String>,
        /// The translation into the receiving connection's language, when there is one
        /// (section 14). More may follow in a `translation` event.
        #[serde(default, skip_serializing_if = "Translations::is_empty")]
        translations: Translations,
        /// Set when a moderator approved this comment from the queue: the queue id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held_id: Option<String>,
    },
    /// Likes received in one aggregation interval on one node.
    Likes {
        count: u64,
    },
    /// Users who joined during one aggregation interval: `count` in all, `sample` names a few.
    Joined {
        count: u64,
        sample: Vec<UserRef>,
    },
    /// Users who left during one aggregation interval.
    Left {
        count: u64,
        sample: Vec<UserRef>,
    },
    Announcement {
        user: UserRef,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lang: Option<String>,
        #[serde(default, skip_serializing_if = "Translations::is_empty")]
        translations: Translations,
    },
    Pinned {
        pinned: Pinned,
    },
    Unpinned {
        by: UserRef,
    },
    CommentDeleted {
        offset: Offset,
        by: UserRef,
    },
    UserMuted {
        user: UserId,
        /// Unix ms when the mute ends; absent = until unmuted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
        by: UserRef,
    },
    UserUnmuted {
        user: UserId,
        by: UserRef,
    },
    UserBanned {
        user: UserId,
        by: UserRef,
    },
    SlowMode {
        seconds: u64,
        by: UserRef,
    },
    RoomClosed {},
    ProductPinned {
        pinned: Box<PinnedProduct>,
    },
    ProductUnpinned {
        by: UserRef,
    },
    /// A sale was announced (it may start later: count down to `sale.starts_at`).
    SaleScheduled {
        sale: Box<SaleView>,
    },
    /// The start instant passed: buys are admitted.
    SaleStarted {
        stock: SaleStock,
    },
    /// Stock changed (throttled to a few per second): just the counters.
    SaleStock {
        stock: SaleStock,
    },
    SaleSoldOut {
        stock: SaleStock,
    },
    SaleEnded {
        stock: SaleStock,
    },
    /// Social proof, rate-limited; names a market, never a buyer.
    Purchase {
        notice: PurchaseNotice,
    },
    /// The host went live (a WHIP publisher connected): start or resume WHEP playback.
    StreamStarted {
        by: UserRef,
    },
    /// The room's last publisher left: the video stopped. WHEP sessions stay open for
    /// `sfu.viewer_linger` and resume if the host comes back (`stream_started`).
    StreamEnded {
        reason: StreamEndReason,
    },
    /// Translations of an earlier comment or announcement that were not ready within the
    /// server's latency budget.
    Translation {
        /// Offset of the comment or announcement these translate.
        offset: Offset,
        /// At most the receiving connection's language (possibly empty).
        #[serde(default)]
        translations: Translations,
    },
    /// A comment was held for a moderator. Staff receive it in `held`; other connections
    /// receive only the queue `id`.
    CommentHeld {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held: Option<Box<HeldComment>>,
    },
    /// A moderator rejected a held comment (approval publishes the `comment` with `held_id`).
    CommentRejected {
        id: String,
        by: UserRef,
    },
}

/// Why a room's stream ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEndReason {
    /// The host ended the session (WHIP DELETE).
    Left,
    /// The host's connection was lost (ICE timeout).
    Timeout,
    /// The host's new session replaced the old one (a `stream_started` follows).
    Replaced,
    /// The server is shutting down.
    Shutdown,
}

impl RoomEvent {
    /// The stock object of `sale_started`, `sale_stock`, `sale_sold_out` and `sale_ended`:
    /// apply it to the sale it names with `SaleView::apply_stock`, which ignores an older one
    /// arriving late.
    pub fn sale_stock(&self) -> Option<&SaleStock> {
        match self {
            RoomEvent::SaleStarted { stock }
            | RoomEvent::SaleStock { stock }
            | RoomEvent::SaleSoldOut { stock }
            | RoomEvent::SaleEnded { stock } => Some(stock),
            _ => None,
        }
    }
}

/// Error codes in replies. 1000–1499: the command is wrong and retrying it unchanged will fail
/// again. 1500–1999: temporary; retry after `retry_after_ms`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownCommand,
    NotJoined,
    Forbidden,
    RoomNotFound,
    InvalidComment,
    Muted,
    TooManyRooms,
    AlreadyJoined,
    RoomClosed,
    Internal,
    RateLimited,
    SlowMode,
    JoinRateLimited,
    Unavailable,
    SoldOut,
    LimitReached,
    SaleEnded,
    NotInMarket,
    NotFound,
    IdempotencyConflict,
    ReservationFinal,
    SaleNotStarted,
    UnsupportedLanguage,
    ModerationBlocked,
    NotHeld,
    ModerationQueueFull,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::NotJoined,
        ErrorCode::Forbidden,
        ErrorCode::RoomNotFound,
        ErrorCode::InvalidComment,
        ErrorCode::Muted,
        ErrorCode::TooManyRooms,
        ErrorCode::AlreadyJoined,
        ErrorCode::RoomClosed,
        ErrorCode::Internal,
        ErrorCode::RateLimited,
        ErrorCode::SlowMode,
        ErrorCode::JoinRateLimited,
        ErrorCode::Unavailable,
        ErrorCode::SoldOut,
        ErrorCode::LimitReached,
        ErrorCode::SaleEnded,
        ErrorCode::NotInMarket,
        ErrorCode::NotFound,
        ErrorCode::IdempotencyConflict,
        ErrorCode::ReservationFinal,
        ErrorCode::SaleNotStarted,
        ErrorCode::UnsupportedLanguage,
        ErrorCode::ModerationBlocked,
        ErrorCode::NotHeld,
        ErrorCode::ModerationQueueFull,
    ];

    pub fn code(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1000,
            ErrorCode::UnknownCommand => 1001,
            ErrorCode::NotJoined => 1002,
            ErrorCode::Forbidden => 1003,
            ErrorCode::RoomNotFound => 1004,
            ErrorCode::InvalidComment => 1005,
            ErrorCode::Muted => 1006,
            ErrorCode::TooManyRooms => 1007,
            ErrorCode::AlreadyJoined => 1008,
            ErrorCode::RoomClosed => 1009,
            ErrorCode::Internal => 1010,
            ErrorCode::RateLimited => 1500,
            ErrorCode::SlowMode => 1501,
            ErrorCode::JoinRateLimited => 1502,
            ErrorCode::Unavailable => 1503,
            ErrorCode::SoldOut => 1011,
            ErrorCode::LimitReached => 1012,
            ErrorCode::SaleEnded => 1013,
            ErrorCode::NotInMarket => 1014,
            ErrorCode::NotFound => 1015,
            ErrorCode::IdempotencyConflict => 1016,
            ErrorCode::ReservationFinal => 1017,
            ErrorCode::SaleNotStarted => 1504,
            ErrorCode::UnsupportedLanguage => 1018,
            ErrorCode::ModerationBlocked => 1019,
            ErrorCode::NotHeld => 1020,
            ErrorCode::ModerationQueueFull => 1505,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::InvalidComment => "invalid_comment",
            ErrorCode::Muted => "muted",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::Internal => "internal",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SlowMode => "slow_mode",
            ErrorCode::JoinRateLimited => "join_rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SoldOut => "sold_out",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::SaleEnded => "sale_ended",
            ErrorCode::NotInMarket => "not_in_market",
            ErrorCode::NotFound => "not_found",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::ReservationFinal => "reservation_final",
            ErrorCode::SaleNotStarted => "sale_not_started",
            ErrorCode::UnsupportedLanguage => "unsupported_language",
            ErrorCode::ModerationBlocked => "moderation_blocked",
            ErrorCode::NotHeld => "not_held",
            ErrorCode::ModerationQueueFull => "moderation_queue_full",
        }
    }

    pub fn from_code(code: u16) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Temporary errors (1500–1999): the same command may succeed later.
    pub fn is_temporary(self) -> bool {
        self.code() >= 1500
    }

    /// Build an error body with this code.
    pub fn body(self, message: impl Into<String>, retry_after_ms: Option<u64>) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            name: self.name().to_owned(),
            message: message.into(),
            retry_after_ms,
            rule: None,
        }
    }
}

/// WebSocket close codes. 3000–3499: reconnect (with backoff, resuming from the last
/// position). 3500–3999: terminal; do not reconnect without fixing the cause (new token...).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The node is shutting down; reconnect (to another node).
    Shutdown,
    /// The client did not read fast enough; its send queue overflowed.
    SlowConsumer,
    /// No pong to the server's ping in time.
    HeartbeatTimeout,
    /// A write to the client did not complete in time.
    WriteTimeout,
    /// The node lost part of a room's stream and cannot deliver it in order; resume.
    StreamGap,
    /// The node is at its connection limit.
    NodeFull,
    /// Something went wrong on the server.
    InternalError,
    /// The token is missing, malformed, forged, or signed with an unknown key.
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// The client broke the protocol (binary frame, invalid UTF-8, repeated bad frames).
    BadRequest,
    /// The token does not allow this room.
    Forbidden,
    /// A frame exceeded `limits.max_frame_bytes`.
    MessageTooBig,
    /// The client kept sending after being rate limited.
    Flood,
    /// The user was banned from a room.
    Banned,
}

impl CloseCode {
    pub const ALL: [CloseCode; 14] = [
        CloseCode::Shutdown,
        CloseCode::SlowConsumer,
        CloseCode::HeartbeatTimeout,
        CloseCode::WriteTimeout,
        CloseCode::StreamGap,
        CloseCode::NodeFull,
        CloseCode::InternalError,
        CloseCode::InvalidToken,
        CloseCode::TokenExpired,
        CloseCode::BadRequest,
        CloseCode::Forbidden,
        CloseCode::MessageTooBig,
        CloseCode::Flood,
        CloseCode::Banned,
    ];

    pub fn code(self) -> u16 {
        match self {
            CloseCode::Shutdown => 3000,
            CloseCode::SlowConsumer => 3001,
            CloseCode::HeartbeatTimeout => 3002,
            CloseCode::WriteTimeout => 3003,
            CloseCode::StreamGap => 3004,
            CloseCode::NodeFull => 3005,
            CloseCode::InternalError => 3006,
            CloseCode::InvalidToken => 3500,
            CloseCode::TokenExpired => 3501,
            CloseCode::BadRequest => 3502,
            CloseCode::Forbidden => 3503,
            CloseCode::MessageTooBig => 3504,
            CloseCode::Flood => 3505,
            CloseCode::Banned => 3506,
        }
    }

    /// Short reason text sent in the close frame (well under the 123-byte limit).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown, reconnect",
            CloseCode::SlowConsumer => "slow consumer, reconnect",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::WriteTimeout => "write timeout",
            CloseCode::StreamGap => "stream gap, resume",
            CloseCode::NodeFull => "node full, retry later",
            CloseCode::InternalError => "internal error",
            CloseCode::InvalidToken => "invalid token",
            CloseCode::TokenExpired => "token expired",
            CloseCode::BadRequest => "bad request",
            CloseCode::Forbidden => "forbidden",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::Flood => "flood",
            CloseCode::Banned => "banned",
        }
    }

    pub fn from_code(code: u16) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Whether a client should reconnect after a close with this code. Codes outside Ferry's
/// ranges follow the WebSocket standard: 1000/1001 and abnormal closes reconnect, protocol
/// violations (1002, 1003, 1007, 1008, 1009, 1010) do not.
pub fn close_code_reconnects(code: u16) -> bool {
    match code {
        3000..=3499 | 4000..=4499 => true,
        3500..=3999 | 4500..=4999 => false,
        1002 | 1003 | 1007 | 1008 | 1009 | 1010 => false,
        _ => true,
    }
}

/// Split a server text frame into its JSON objects (one per line).
pub fn split_frame(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').filter(|line| !line.trim().is_empty())
}

/// Parse one server JSON object.
pub fn parse_server_frame(line: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_with_documented_shape() {
        let frame: ClientFrame =
            serde_json::from_str(r#"{"id":7,"cmd":"comment","room":"r1","text":"hi"}"#)
                .expect("valid command");
        assert_eq!(
            frame.command,
            Command::Comment {
                room: "r1".into(),
                text: "hi".into()
            }
        );
        let like: ClientFrame =
            serde_json::from_str(r#"{"id":1,"cmd":"like","room":"r"}"#).expect("valid like");
        assert_eq!(
            like.command,
            Command::Like {
                room: "r".into(),
                count: 1
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"id":1,"cmd":"nope"}"#).is_err());
    }

    #[test]
    fn replies_parse_to_their_shape() {
        let pong = r#"{"id":3,"ok":{"t":5.0,"server_recv":10.0,"server_send":11.0}}"#;
        match parse_server_frame(pong).expect("pong parses") {
            ServerFrame::Reply(Reply {
                id: 3,
                result: ReplyResult::Ok(ReplyBody::Pong(p)),
            }) => assert_eq!(p.server_send, 11.0),
            other => panic!("unexpected {other:?}"),
        }
        let empty = r#"{"id":4,"ok":{}}"#;
        assert!(matches!(
            parse_server_frame(empty).expect("empty parses"),
            ServerFrame::Reply(Reply {
                result: ReplyResult::Ok(ReplyBody::Empty(_)),
                ..
            })
        ));
        let err = r#"{"id":5,"error":{"code":1500,"name":"rate_limited","message":"x","retry_after_ms":200}}"#;
        assert!(matches!(
            parse_server_frame(err).expect("error parses"),
            ServerFrame::Reply(Reply {
                result: ReplyResult::Error(_),
                ..
            })
        ));
    }

    #[test]
    fn codes_are_in_their_documented_ranges() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert_eq!(c.is_temporary(), (1500..2000).contains(&c.code()));
        }
        for c in CloseCode::ALL {
            assert!((3000..4000).contains(&c.code()));
            assert!(c.reason().len() < 123);
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert!(close_code_reconnects(CloseCode::SlowConsumer.code()));
        assert!(!close_code_reconnects(CloseCode::InvalidToken.code()));
    }

    #[test]
    fn batched_frames_split_per_line() {
        let text = "{\"push\":\"viewers\",\"room\":\"r\",\"count\":1}\n{\"push\":\"viewers\",\"room\":\"r\",\"count\":2}";
        let frames: Vec<_> = split_frame(text)
            .map(|l| parse_server_frame(l).expect("parses"))
            .collect();
        assert_eq!(frames.len(), 2);
    }
}
