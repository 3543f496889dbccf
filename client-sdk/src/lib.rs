//! Ferry's wire protocol and Rust client SDK.
//!
//! [`protocol`] is the one definition of the wire protocol: the server compiles this crate
//! with `default-features = false` to get it without any networking. With the default `net`
//! feature, [`client`] is the SDK used by applications, tests and the load tester.

pub mod protocol;

#[cfg(feature = "net")]
pub mod client;

#[cfg(feature = "media")]
pub mod media;

#[cfg(feature = "net")]
pub use client::{
    new_idempotency_key, Client, ClientError, ClientOptions, ClockEstimate, CommentOutcome, Event,
    Events,
};
