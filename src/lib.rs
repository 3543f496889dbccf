//! Ferry: a real-time server for cross-border livestream commerce. See `ARCHITECTURE.md` for
//! the map; the layers are bytes ([`ws`]) → frames and commands ([`session`], the protocol in
//! `ferry_client::protocol`) → rooms ([`hub`], [`room`]) → the engine ([`engine`]).

pub mod auth;
pub mod chat;
pub mod commerce;
pub mod commerce_api;
pub mod config;
pub mod engine;
pub mod hub;
pub mod limits;
pub mod listing_refresh;
pub mod metrics;
pub mod moderation;
pub mod pages;
pub mod redis_conn;
pub mod room;
pub mod session;
pub mod sfu;
pub mod translate;
pub mod translation_api;

pub use ferry_client::protocol;
pub mod http;
pub mod server;
pub mod ws;

/// Wall-clock time, Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
