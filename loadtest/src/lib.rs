//! `ferry-loadtest`: replay traffic spikes against Ferry and judge them.
//!
//! A [`Scenario`](scenario::Scenario) (TOML, `docs/loadtest.md`) describes open-model arrival
//! phases, who the viewers are and what they do, and the thresholds that decide pass or
//! fail. [`run`](runner::run) drives it with Rust SDK clients against one or more loopback
//! nodes (or a node it spawns) and returns a [`Report`](report::Report): the JSON schema,
//! the summary table, the HTML charts ([`html`]) and the baseline comparison all come from it.
//!
//! Modules: [`scenario`] (the file format), [`schedule`] (arrival times), [`metrics`]
//! (HdrHistograms), [`thresholds`] (SLOs), [`runner`] (the run), [`report`] and [`html`]
//! (output), [`system`] (loopback checks, rlimit, /proc, spawning the server), [`sale`]
//! (flash sales: Buy press schedule, retries, correctness verdicts), [`admin`] (tokens and
//! Ferry's HTTP API: catalog, order events with acks), [`video`] (WHIP publishers, WHEP
//! subscribers: loss, freezes and frames, shared with `video-bench`).

pub mod admin;
pub mod html;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod sale;
pub mod scenario;
pub mod schedule;
pub mod system;
pub mod thresholds;
pub mod video;

pub use report::Report;
pub use runner::{run, RunError, RunOptions};
pub use scenario::Scenario;
pub use system::SpawnConfig;
