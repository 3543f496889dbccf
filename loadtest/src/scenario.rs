//! Scenario files: what load to apply and what counts as passing.
//!
//! A scenario is a TOML file (see `docs/loadtest.md`). Every table rejects unknown keys with
//! their name, so a typo never silently changes a run. [`Scenario::from_toml`] parses and
//! validates; [`Scenario::load`] reads a file.

use crate::thresholds::Threshold;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Why a scenario could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("invalid scenario: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A whole scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario proves (free text, copied into reports).
    #[serde(default)]
    pub description: String,
    /// Limits of the run: caps, hold and drain times, the hard deadline.
    #[serde(default)]
    pub run: RunSettings,
    /// Arrival phases (open model): viewers arrive at these rates whatever the server does.
    pub phases: Vec<Phase>,
    /// The rooms viewers join.
    #[serde(default)]
    pub rooms: RoomSettings,
    /// Who the viewers are: languages and markets, minted into their tokens.
    #[serde(default)]
    pub mix: ViewerMix,
    /// What viewers do once joined. Every viewer watches; the others apply to a share.
    #[serde(default)]
    pub behaviours: Vec<Behaviour>,
    /// SLOs such as `"comment_latency_p99_ms < 100"`; any failure fails the run.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// Nodes to load when `--target` is not given on the command line.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Settings for a server started with `--spawn`.
    #[serde(default)]
    pub server: ServerSettings,
}

/// Caps and timings of a run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Most viewers that arrive in total (the phases stop adding once reached).
    pub max_viewers: usize,
    /// How long everyone stays connected (and keeps chatting) after the last phase.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// After sending stops: longest wait for every event to reach every viewer.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// A viewer that has not joined this long after its arrival time counts as a failed join.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Hard stop for the whole run; 0 = phases + hold + drain + join timeout + 30 s.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Most connections per source address (127.0.0.1, .2, ...): each address has ~28k
    /// ephemeral ports.
    pub per_source: usize,
    /// Most connections being opened at once; arrivals beyond wait (and that wait counts in
    /// their join time, which is measured from the arrival time).
    pub max_connecting: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            max_viewers: 1000,
            hold: Duration::from_secs(5),
            drain: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
            deadline: Duration::ZERO,
            per_source: 10_000,
            max_connecting: 1000,
        }
    }
}

/// One arrival phase. Rates are viewers per second.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// The rate moves linearly from `from` to `to` over `duration`.
    Ramp {
        from: f64,
        to: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// A constant rate.
    Hold {
        rate: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// A sudden jump to `rate` (no ramp) for `duration`, then back to the next phase.
    Spike {
        rate: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// No arrivals.
    Pause {
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

impl Phase {
    pub fn duration(&self) -> Duration {
        match self {
            Phase::Ramp { duration, .. }
            | Phase::Hold { duration, .. }
            | Phase::Spike { duration, .. }
            | Phase::Pause { duration } => *duration,
        }
    }

    /// Arrival rate at the start and at the end of the phase.
    pub fn rates(&self) -> (f64, f64) {
        match self {
            Phase::Ramp { from, to, .. } => (*from, *to),
            Phase::Hold { rate, .. } | Phase::Spike { rate, .. } => (*rate, *rate),
            Phase::Pause { .. } => (0.0, 0.0),
        }
    }
}

/// The rooms of a run: `count` rooms named `<prefix>-0`, `<prefix>-1`, ...; viewer `i`
/// joins room `i mod count`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomSettings {
    pub count: usize,
    pub prefix: String,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            count: 1,
            prefix: "loadtest".into(),
        }
    }
}

impl RoomSettings {
    pub fn room_of(&self, viewer: usize) -> String {
        format!("{}-{}", self.prefix, viewer % self.count.max(1))
    }
}

/// Languages and markets with relative weights, e.g. `languages = { en = 6, zh = 3, ar = 1 }`.
/// They become the `lang` and `market` claims of each viewer's token.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewerMix {
    pub languages: BTreeMap<String, f64>,
    pub markets: BTreeMap<String, f64>,
}

/// The golden-ratio sequence: `frac(i * φ)` spreads indices evenly over [0, 1) with no
/// randomness, so runs are reproducible and shares hold even for small counts.
pub fn spread(index: usize, salt: f64) -> f64 {
    const PHI_FRACTION: f64 = 0.618_033_988_749_895;
    ((index as f64 + 1.0) * PHI_FRACTION + salt).fract()
}

/// Pick a key from a weight map for a viewer (deterministic; `None` when the map is empty).
pub fn pick_weighted(weights: &BTreeMap<String, f64>, index: usize, salt: f64) -> Option<&str> {
    let total: f64 = weights.values().sum();
    if weights.is_empty() || total <= 0.0 {
        return None;
    }
    let mut point = spread(index, salt) * total;
    for (key, weight) in weights {
        if point < *weight {
            return Some(key);
        }
        point -= weight;
    }
    weights.keys().last().map(String::as_str)
}

/// What a viewer does. New kinds plug in here: a kind is a variant with its settings,
/// validated in [`Scenario::validate`], planned per viewer in the runner's `plan_for`, and
/// measured with its own metrics.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Behaviour {
    /// Every viewer watches: stays joined and receives every room event, and is judged for
    /// completeness. Listing it is optional.
    Watch {},
    /// A share of viewers comment, each at `rate` comments per second on its own open-model
    /// schedule (the server's default per-user limit is 1/s with a burst of 5).
    Chat {
        share: f64,
        rate: f64,
        /// Comment length in bytes (the timing marker plus padding).
        #[serde(default = "default_text_bytes")]
        text_bytes: usize,
    },
    /// A share of viewers send `count` likes every `every`.
    Likes {
        share: f64,
        #[serde(with = "humantime_serde")]
        every: Duration,
        #[serde(default = "default_like_count")]
        count: u32,
    },
    /// A share of viewers drop their connection every `every` and come back with a new one
    /// (a fresh join, as an app restart does); the time to be back in the room is recorded.
    Churn {
        share: f64,
        #[serde(with = "humantime_serde")]
        every: Duration,
    },
    /// A flash sale: a host pins a product and launches a sale in every room, and a share of
    /// the viewers press Buy within `window` after the sale's start instant (on the server's
    /// clock). At most one `buy` behaviour per scenario.
    Buy(Box<BuySettings>),
    /// Live video: a synthetic publisher in every room before the first arrival (optional),
    /// and a share of the viewers also play the room's video over WHEP. At most one `video`
    /// behaviour per scenario.
    Video(Box<VideoSettings>),
}

/// The `video` behaviour: the synthetic publishers and the WHEP subscribers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSettings {
    /// Share of the viewers who also subscribe over WHEP (at their arrival, beside their
    /// WebSocket join).
    pub share: f64,
    /// A gap between two consecutive complete video frames longer than this is a freeze.
    #[serde(default = "default_freeze_threshold", with = "humantime_serde")]
    pub freeze_threshold: Duration,
    /// A subscriber without a first frame this long after its arrival time has failed.
    #[serde(default = "default_first_frame_timeout", with = "humantime_serde")]
    pub first_frame_timeout: Duration,
    /// Start a synthetic WHIP publisher in every room before the first arrival. `false`:
    /// something else publishes (the run only subscribes).
    #[serde(default = "yes")]
    pub publish: bool,
    /// How long the publishers send before the first viewer arrives.
    #[serde(default = "default_publish_lead", with = "humantime_serde")]
    pub publish_lead: Duration,
    /// The publishers' video codec: `vp8` or `h264` (synthetic payloads shaped like them).
    #[serde(default)]
    pub codec: VideoCodecName,
    /// Video bitrate without simulcast, bits per second.
    #[serde(default = "default_video_bitrate")]
    pub bitrate_bps: u64,
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// A keyframe at least this often (and whenever the server asks for one).
    #[serde(default = "default_keyframe_interval", with = "humantime_serde")]
    pub keyframe_interval: Duration,
    /// Also send an Opus-shaped audio track (50 packets/s).
    #[serde(default = "yes")]
    pub audio: bool,
    /// Simulcast layers, lowest first, instead of one stream at `bitrate_bps`.
    #[serde(default)]
    pub simulcast: Vec<SimulcastLayerSettings>,
}

/// The synthetic video's codec.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodecName {
    #[default]
    Vp8,
    H264,
}

/// One simulcast layer of the synthetic publisher.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulcastLayerSettings {
    /// The layer's RTP stream id (`rid`), e.g. `"l"`, `"m"`, `"h"`.
    pub rid: String,
    pub bitrate_bps: u64,
}

/// The `buy` behaviour: the sale the host launches and how viewers press Buy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuySettings {
    /// Share of the viewers who press Buy.
    pub share: f64,
    /// Buy presses per buyer, each with its own idempotency key.
    #[serde(default = "one")]
    pub presses: u32,
    /// Presses are spread evenly over this window after the sale's start instant.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Units asked per press.
    #[serde(default = "one")]
    pub quantity: u32,
    /// Share of presses clicked twice: the same key sent again `double_click_gap` later.
    #[serde(default)]
    pub double_click: f64,
    #[serde(default = "default_double_click_gap", with = "humantime_serde")]
    pub double_click_gap: Duration,
    /// When the host launches the sale, from the start of the run. Default: when the
    /// arrivals end.
    #[serde(default, with = "humantime_serde")]
    pub launch_at: Option<Duration>,
    /// From the launch to the sale's start instant.
    #[serde(default = "default_countdown", with = "humantime_serde")]
    pub countdown: Duration,
    /// Units on sale (per room).
    pub stock: u64,
    /// Sale price, CNY fen.
    #[serde(default = "default_price")]
    pub price_cny: i64,
    /// Most units one buyer may hold.
    #[serde(default = "one")]
    pub per_buyer_limit: u32,
    /// How long buys are admitted after the start (whole seconds).
    #[serde(default = "default_sale_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// Payment window of each reservation (whole seconds).
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold: Duration,
    /// Markets the product is sold in. Default: every market of the mix. Viewers of a mix
    /// market left out here are answered `not_in_market`.
    #[serde(default)]
    pub markets: Option<Vec<String>>,
}

impl BuySettings {
    /// The markets the product is enabled in.
    pub fn product_markets(&self, mix: &ViewerMix) -> Vec<String> {
        match &self.markets {
            Some(m) => m.clone(),
            None => mix.markets.keys().cloned().collect(),
        }
    }
}

fn one() -> u32 {
    1
}

fn default_window() -> Duration {
    Duration::from_secs(1)
}

fn default_double_click_gap() -> Duration {
    Duration::from_millis(30)
}

fn default_countdown() -> Duration {
    Duration::from_secs(3)
}

fn default_price() -> i64 {
    5900
}

fn default_sale_duration() -> Duration {
    Duration::from_secs(60)
}

fn default_hold() -> Duration {
    Duration::from_secs(300)
}

fn yes() -> bool {
    true
}

fn default_freeze_threshold() -> Duration {
    Duration::from_millis(500)
}

fn default_first_frame_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_publish_lead() -> Duration {
    Duration::from_secs(1)
}

fn default_video_bitrate() -> u64 {
    1_500_000
}

fn default_fps() -> u32 {
    30
}

fn default_keyframe_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_text_bytes() -> usize {
    48
}

fn default_like_count() -> u32 {
    1
}

/// Settings for `--spawn`: extra `--set key=value` overrides for the server.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub set: Vec<String>,
}

impl Scenario {
    /// Read and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ScenarioError::Parse(m) => ScenarioError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parse and validate scenario text.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// The thresholds, parsed.
    pub fn parsed_thresholds(&self) -> Result<Vec<Threshold>, ScenarioError> {
        self.thresholds
            .iter()
            .map(|t| t.parse::<Threshold>().map_err(|e| invalid("thresholds", e)))
            .collect()
    }

    /// Sum of the phase durations.
    pub fn arrival_duration(&self) -> Duration {
        self.phases.iter().map(Phase::duration).sum()
    }

    /// The `buy` behaviour, if any (there is at most one).
    pub fn buy(&self) -> Option<&BuySettings> {
        self.behaviours.iter().find_map(|b| match b {
            Behaviour::Buy(settings) => Some(settings.as_ref()),
            _ => None,
        })
    }

    /// The `video` behaviour, if any (there is at most one).
    pub fn video(&self) -> Option<&VideoSettings> {
        self.behaviours.iter().find_map(|b| match b {
            Behaviour::Video(settings) => Some(settings.as_ref()),
            _ => None,
        })
    }

    /// Time before the first arrival that the video publishers may take at most: their
    /// connection (bounded by [`PUBLISHER_CONNECT_TIMEOUT`]) and the `publish_lead`.
    pub fn setup_duration(&self) -> Duration {
        match self.video() {
            Some(v) if v.publish => PUBLISHER_CONNECT_TIMEOUT + v.publish_lead,
            _ => Duration::ZERO,
        }
    }

    /// When activity ends at the latest, planned: the phases, or the end of the buy window
    /// (launch + countdown + window, plus a second for the launch itself).
    pub fn activity_duration(&self) -> Duration {
        let arrivals = self.arrival_duration();
        match self.buy() {
            Some(b) => arrivals.max(
                b.launch_at.unwrap_or(arrivals) + b.countdown + b.window + Duration::from_secs(1),
            ),
            None => arrivals,
        }
    }

    /// The hard deadline of a run of this scenario.
    pub fn deadline(&self) -> Duration {
        if self.run.deadline > Duration::ZERO {
            return self.run.deadline;
        }
        self.setup_duration()
            + self.activity_duration()
            + self.run.hold
            + self.run.drain
            + self.run.join_timeout
            + Duration::from_secs(30)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        if self.phases.is_empty() {
            return Err(invalid("phases", "at least one phase is needed"));
        }
        for (i, phase) in self.phases.iter().enumerate() {
            let (a, b) = phase.rates();
            if !(a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0) {
                return Err(invalid(
                    format!("phases[{i}]"),
                    "rates must be finite and ≥ 0",
                ));
            }
            if phase.duration().is_zero() {
                return Err(invalid(format!("phases[{i}].duration"), "must be > 0"));
            }
        }
        if self.run.max_viewers == 0 {
            return Err(invalid("run.max_viewers", "must be > 0"));
        }
        if self.run.per_source == 0 || self.run.per_source > 28_000 {
            return Err(invalid(
                "run.per_source",
                "must be 1..=28000 (ephemeral ports per source address)",
            ));
        }
        if self.run.max_connecting == 0 {
            return Err(invalid("run.max_connecting", "must be > 0"));
        }
        if self.run.join_timeout.is_zero() {
            return Err(invalid("run.join_timeout", "must be > 0"));
        }
        let sources = self.run.max_viewers.div_ceil(self.run.per_source);
        if sources > 250 {
            return Err(invalid(
                "run.per_source",
                format!("{sources} source addresses would be needed; at most 250 (127.0.0.1-250)"),
            ));
        }
        if self.rooms.count == 0 {
            return Err(invalid("rooms.count", "must be > 0"));
        }
        let room_ok = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
        if self.rooms.prefix.is_empty()
            || self.rooms.prefix.len() > 50
            || !self.rooms.prefix.chars().all(room_ok)
        {
            return Err(invalid(
                "rooms.prefix",
                "1-50 characters of [A-Za-z0-9_.:-]",
            ));
        }
        for (name, map) in [
            ("mix.languages", &self.mix.languages),
            ("mix.markets", &self.mix.markets),
        ] {
            if map.values().any(|w| !w.is_finite() || *w < 0.0) {
                return Err(invalid(name, "weights must be finite and ≥ 0"));
            }
        }
        for (i, b) in self.behaviours.iter().enumerate() {
            let key = format!("behaviours[{i}]");
            let share_ok = |s: f64| (0.0..=1.0).contains(&s);
            match b {
                Behaviour::Watch {} => {}
                Behaviour::Chat {
                    share,
                    rate,
                    text_bytes,
                } => {
                    if !share_ok(*share) {
                        return Err(invalid(key + ".share", "must be within 0..=1"));
                    }
                    if !(rate.is_finite() && *rate > 0.0) {
                        return Err(invalid(key + ".rate", "must be > 0"));
                    }
                    if !(MIN_TEXT_BYTES..=500).contains(text_bytes) {
                        return Err(invalid(
                            key + ".text_bytes",
                            format!("must be within {MIN_TEXT_BYTES}..=500"),
                        ));
                    }
                }
                Behaviour::Likes {
                    share,
                    every,
                    count,
                } => {
                    if !share_ok(*share) {
                        return Err(invalid(key + ".share", "must be within 0..=1"));
                    }
                    if every.is_zero() {
                        return Err(invalid(key + ".every", "must be > 0"));
                    }
                    if !(1..=100).contains(count) {
                        return Err(invalid(key + ".count", "must be within 1..=100"));
                    }
                }
                Behaviour::Churn { share, every } => {
                    if !share_ok(*share) {
                        return Err(invalid(key + ".share", "must be within 0..=1"));
                    }
                    if every.is_zero() {
                        return Err(invalid(key + ".every", "must be > 0"));
                    }
                }
                Behaviour::Buy(b) => b.validate(&key)?,
                Behaviour::Video(v) => v.validate(&key)?,
            }
        }
        let buys = self
            .behaviours
            .iter()
            .filter(|b| matches!(b, Behaviour::Buy(_)))
            .count();
        if buys > 1 {
            return Err(invalid("behaviours", "at most one `buy` behaviour"));
        }
        let videos = self
            .behaviours
            .iter()
            .filter(|b| matches!(b, Behaviour::Video(_)))
            .count();
        if videos > 1 {
            return Err(invalid("behaviours", "at most one `video` behaviour"));
        }
        for set in &self.server.set {
            if !set.contains('=') {
                return Err(invalid("server.set", format!("`{set}` is not KEY=VALUE")));
            }
        }
        self.parsed_thresholds()?;
        Ok(())
    }
}

impl BuySettings {
    fn validate(&self, key: &str) -> Result<(), ScenarioError> {
        let at = |field: &str| format!("{key}.{field}");
        if !(0.0..=1.0).contains(&self.share) {
            return Err(invalid(at("share"), "must be within 0..=1"));
        }
        if !(0.0..=1.0).contains(&self.double_click) {
            return Err(invalid(at("double_click"), "must be within 0..=1"));
        }
        if !(1..=100).contains(&self.presses) {
            return Err(invalid(at("presses"), "must be within 1..=100"));
        }
        if self.window.is_zero() {
            return Err(invalid(at("window"), "must be > 0"));
        }
        if !(1..=1000).contains(&self.quantity) {
            return Err(invalid(
                at("quantity"),
                "must be within 1..=1000 (Ferry's limit)",
            ));
        }
        if self.double_click_gap > Duration::from_secs(5) {
            return Err(invalid(at("double_click_gap"), "must be at most 5s"));
        }
        if self.countdown < Duration::from_millis(500) {
            return Err(invalid(
                at("countdown"),
                "must be at least 500ms (every viewer must learn the start before it)",
            ));
        }
        if self.stock == 0 {
            return Err(invalid(at("stock"), "must be > 0"));
        }
        if self.price_cny < 0 {
            return Err(invalid(at("price_cny"), "must be ≥ 0"));
        }
        if self.per_buyer_limit == 0 {
            return Err(invalid(at("per_buyer_limit"), "must be ≥ 1"));
        }
        for (field, d) in [("duration", self.duration), ("hold", self.hold)] {
            if d.is_zero() || d.subsec_nanos() != 0 {
                return Err(invalid(at(field), "must be whole seconds, at least 1s"));
            }
        }
        if let Some(markets) = &self.markets {
            if markets.iter().any(|m| m.is_empty()) {
                return Err(invalid(at("markets"), "market codes must not be empty"));
            }
        }
        Ok(())
    }
}

impl VideoSettings {
    fn validate(&self, key: &str) -> Result<(), ScenarioError> {
        let at = |field: &str| format!("{key}.{field}");
        if !(0.0..=1.0).contains(&self.share) {
            return Err(invalid(at("share"), "must be within 0..=1"));
        }
        if !(1..=120).contains(&self.fps) {
            return Err(invalid(at("fps"), "must be within 1..=120"));
        }
        // Below two frame intervals every frame would be a freeze.
        let two_frames = Duration::from_secs(2) / self.fps;
        if self.freeze_threshold < two_frames {
            return Err(invalid(
                at("freeze_threshold"),
                format!("must be at least two frame intervals ({two_frames:?} at this fps)"),
            ));
        }
        if self.first_frame_timeout.is_zero() {
            return Err(invalid(at("first_frame_timeout"), "must be > 0"));
        }
        if self.publish_lead > Duration::from_secs(60) {
            return Err(invalid(at("publish_lead"), "must be at most 60s"));
        }
        let bitrate_ok = |b: u64| (MIN_VIDEO_BITRATE..=MAX_VIDEO_BITRATE).contains(&b);
        if !bitrate_ok(self.bitrate_bps) {
            return Err(invalid(
                at("bitrate_bps"),
                format!("must be within {MIN_VIDEO_BITRATE}..={MAX_VIDEO_BITRATE}"),
            ));
        }
        if self.keyframe_interval < Duration::from_millis(100) {
            return Err(invalid(at("keyframe_interval"), "must be at least 100ms"));
        }
        if self.simulcast.len() > MAX_SIMULCAST_LAYERS {
            return Err(invalid(
                at("simulcast"),
                format!("at most {MAX_SIMULCAST_LAYERS} layers"),
            ));
        }
        for (i, layer) in self.simulcast.iter().enumerate() {
            let field = at(&format!("simulcast[{i}]"));
            if layer.rid.is_empty()
                || layer.rid.len() > 16
                || !layer.rid.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(invalid(field + ".rid", "1-16 characters of [A-Za-z0-9]"));
            }
            if self.simulcast[..i].iter().any(|l| l.rid == layer.rid) {
                return Err(invalid(field + ".rid", "rids must be distinct"));
            }
            if !bitrate_ok(layer.bitrate_bps) {
                return Err(invalid(
                    field + ".bitrate_bps",
                    format!("must be within {MIN_VIDEO_BITRATE}..={MAX_VIDEO_BITRATE}"),
                ));
            }
            if i > 0 && layer.bitrate_bps <= self.simulcast[i - 1].bitrate_bps {
                return Err(invalid(
                    field + ".bitrate_bps",
                    "layers go lowest first: each above the one before",
                ));
            }
        }
        Ok(())
    }
}

/// Longest wait for a scenario's video publishers to connect (ICE + DTLS) before the
/// arrivals start; a publisher not connected by then is noted and the run goes on.
pub const PUBLISHER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of a synthetic video bitrate (bits per second).
pub const MIN_VIDEO_BITRATE: u64 = 10_000;
pub const MAX_VIDEO_BITRATE: u64 = 50_000_000;
/// Most simulcast layers of a synthetic publisher.
pub const MAX_SIMULCAST_LAYERS: usize = 3;

/// The shortest comment: the timing marker needs this many bytes.
pub const MIN_TEXT_BYTES: usize = 24;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[[phases]]
kind = "hold"
rate = 10
duration = "2s"
"#;

    #[test]
    fn minimal_scenario_gets_defaults() {
        let s = Scenario::from_toml(MINIMAL).expect("valid");
        assert_eq!(s.rooms.count, 1);
        assert_eq!(s.run.max_viewers, 1000);
        assert_eq!(s.phases[0].rates(), (10.0, 10.0));
        assert!(s.deadline() > Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        for (extra, name) in [
            ("colour = 1\n", "colour"),
            ("[run]\nmax_viewer = 3\n", "max_viewer"),
            ("[mix]\nlanguage = {}\n", "language"),
        ] {
            let text = format!("{extra}{MINIMAL}");
            let text = if extra.starts_with('[') {
                format!("{MINIMAL}{extra}")
            } else {
                text
            };
            let err = Scenario::from_toml(&text).expect_err("unknown key");
            assert!(err.to_string().contains(name), "{err}");
        }
        let bad_phase =
            "name = \"t\"\n[[phases]]\nkind = \"hold\"\nrate = 1\nduration = \"1s\"\nramp = 3\n";
        let err = Scenario::from_toml(bad_phase).expect_err("unknown phase key");
        assert!(err.to_string().contains("ramp"), "{err}");
        let bad_behaviour =
            format!("{MINIMAL}[[behaviours]]\nkind = \"chat\"\nshare = 0.1\nrate = 1\nspeed = 2\n");
        let err = Scenario::from_toml(&bad_behaviour).expect_err("unknown behaviour key");
        assert!(err.to_string().contains("speed"), "{err}");
        let unknown_kind = format!("{MINIMAL}[[behaviours]]\nkind = \"audio\"\n");
        assert!(Scenario::from_toml(&unknown_kind).is_err());
        let bad_video =
            format!("{MINIMAL}[[behaviours]]\nkind = \"video\"\nshare = 1\nbitrate = 5\n");
        let err = Scenario::from_toml(&bad_video).expect_err("unknown video key");
        assert!(err.to_string().contains("bitrate"), "{err}");
        let bad_buy =
            format!("{MINIMAL}[[behaviours]]\nkind = \"buy\"\nshare = 0.5\nstock = 3\nprice = 1\n");
        let err = Scenario::from_toml(&bad_buy).expect_err("unknown buy key");
        assert!(err.to_string().contains("price"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let text =
            format!("{MINIMAL}[[behaviours]]\nkind = \"likes\"\nshare = 2\nevery = \"1s\"\n");
        let err = Scenario::from_toml(&text).expect_err("share > 1");
        assert!(err.to_string().contains("behaviours[0].share"), "{err}");
        let text = format!("thresholds = [\"joins_p99 < 3\"]\n{MINIMAL}");
        let err = Scenario::from_toml(&text).expect_err("unknown metric");
        assert!(err.to_string().contains("joins_p99"), "{err}");
    }

    #[test]
    fn buy_behaviour_gets_defaults_and_checked_values() {
        let text = format!("{MINIMAL}[[behaviours]]\nkind = \"buy\"\nshare = 0.5\nstock = 3\n");
        let s = Scenario::from_toml(&text).expect("valid");
        let b = s.buy().expect("a buy behaviour");
        assert_eq!((b.presses, b.quantity, b.per_buyer_limit), (1, 1, 1));
        assert_eq!(b.window, Duration::from_secs(1));
        assert_eq!(b.hold, Duration::from_secs(300));
        // The run lasts until the buy window closed: launch (end of arrivals, 2 s) +
        // countdown 3 s + window 1 s + 1 s.
        assert_eq!(s.activity_duration(), Duration::from_secs(7));
        for (extra, key) in [
            ("duration = \"1500ms\"\n", "behaviours[0].duration"),
            ("countdown = \"100ms\"\n", "behaviours[0].countdown"),
            ("quantity = 0\n", "behaviours[0].quantity"),
            ("double_click = 1.5\n", "behaviours[0].double_click"),
        ] {
            let err = Scenario::from_toml(&format!("{text}{extra}")).expect_err(extra);
            assert!(err.to_string().contains(key), "{err}");
        }
        let twice = format!("{text}[[behaviours]]\nkind = \"buy\"\nshare = 0.1\nstock = 1\n");
        assert!(Scenario::from_toml(&twice).is_err());
    }

    #[test]
    fn video_behaviour_gets_defaults_and_checked_values() {
        let text = format!("{MINIMAL}[[behaviours]]\nkind = \"video\"\nshare = 0.25\n");
        let s = Scenario::from_toml(&text).expect("valid");
        let v = s.video().expect("a video behaviour");
        assert_eq!(v.freeze_threshold, Duration::from_millis(500));
        assert_eq!(v.first_frame_timeout, Duration::from_secs(10));
        assert_eq!(
            (v.bitrate_bps, v.fps, v.codec),
            (1_500_000, 30, VideoCodecName::Vp8)
        );
        assert!(v.publish && v.audio && v.simulcast.is_empty());
        // The deadline leaves room for the publishers to connect and lead.
        assert_eq!(
            s.setup_duration(),
            PUBLISHER_CONNECT_TIMEOUT + Duration::from_secs(1)
        );
        let plain = Scenario::from_toml(MINIMAL).expect("valid");
        assert_eq!(s.deadline() - plain.deadline(), s.setup_duration());
        let simulcast = format!(
            "{text}codec = \"h264\"\n[[behaviours.simulcast]]\nrid = \"l\"\nbitrate_bps = 150000\n\
             [[behaviours.simulcast]]\nrid = \"h\"\nbitrate_bps = 1500000\n"
        );
        let s = Scenario::from_toml(&simulcast).expect("valid simulcast");
        let v = s.video().expect("video");
        assert_eq!(v.codec, VideoCodecName::H264);
        assert_eq!(v.simulcast.len(), 2);
        for (extra, key) in [
            (
                "freeze_threshold = \"40ms\"\n",
                "behaviours[0].freeze_threshold",
            ),
            ("fps = 0\n", "behaviours[0].fps"),
            ("bitrate_bps = 5\n", "behaviours[0].bitrate_bps"),
            (
                "first_frame_timeout = \"0s\"\n",
                "behaviours[0].first_frame_timeout",
            ),
            (
                "keyframe_interval = \"10ms\"\n",
                "behaviours[0].keyframe_interval",
            ),
        ] {
            let err = Scenario::from_toml(&format!("{text}{extra}")).expect_err(extra);
            assert!(err.to_string().contains(key), "{err}");
        }
        let descending = format!(
            "{text}[[behaviours.simulcast]]\nrid = \"h\"\nbitrate_bps = 1500000\n\
             [[behaviours.simulcast]]\nrid = \"l\"\nbitrate_bps = 150000\n"
        );
        let err = Scenario::from_toml(&descending).expect_err("descending layers");
        assert!(
            err.to_string().contains("simulcast[1].bitrate_bps"),
            "{err}"
        );
        let same_rid = format!(
            "{text}[[behaviours.simulcast]]\nrid = \"l\"\nbitrate_bps = 150000\n\
             [[behaviours.simulcast]]\nrid = \"l\"\nbitrate_bps = 500000\n"
        );
        let err = Scenario::from_toml(&same_rid).expect_err("same rid");
        assert!(err.to_string().contains("simulcast[1].rid"), "{err}");
        let bad_codec = format!("{text}codec = \"av1\"\n");
        assert!(Scenario::from_toml(&bad_codec).is_err());
        let twice = format!("{text}[[behaviours]]\nkind = \"video\"\nshare = 0.1\n");
        let err = Scenario::from_toml(&twice).expect_err("two video behaviours");
        assert!(err.to_string().contains("at most one `video`"), "{err}");
    }

    #[test]
    fn weighted_picks_follow_weights() {
        let weights: BTreeMap<String, f64> =
            [("en".to_owned(), 3.0), ("zh".to_owned(), 1.0)].into();
        let en = (0..10_000)
            .filter(|&i| pick_weighted(&weights, i, 0.1) == Some("en"))
            .count();
        assert!((7400..7600).contains(&en), "{en}");
        assert_eq!(pick_weighted(&BTreeMap::new(), 3, 0.0), None);
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios directory") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 5, "expected the shipped scenarios, found {seen}");
    }
}
