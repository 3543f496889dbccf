//! Ferry's wire protocol and Rust client SDK.
//!
//! [`protocol`] is the one definition of the wire protocol: the server compiles this crate
//! with `default-features = false` to get it without any networking. With the default `net`
//! feature, [`client`] is the SDK used by applications, tests and the load tester, and
//! [`http`] its HTTP reads of flash sales (reservation state, sales, a room's sales). A sale
//! view held by an application is kept current with `SaleView::apply_stock` on each stock
//! event (`RoomEvent::sale_stock`), which drops a late, older one.

pub mod protocol;
pub mod rtp;

#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod http;

#[cfg(feature = "media")]
pub mod media;

#[cfg(feature = "net")]
pub use client::{
    new_idempotency_key, Client, ClientError, ClientOptions, ClockEstimate, CommentOutcome, Event,
    Events,
};
#[cfg(feature = "net")]
pub use http::HttpClient;
