//! Typed configuration and its layering: built-in defaults → TOML file → `FERRY_*` environment
//! → command-line flags. Every layer is merged into one TOML tree which is then deserialized
//! once, strictly: an unknown key or an invalid value is rejected with the key's full path.
//! `config/ferry.toml` documents every key.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration of one Ferry node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub engine: EngineConfig,
    pub history: HistoryConfig,
    pub limits: LimitsConfig,
    pub websocket: WebSocketConfig,
    pub rooms: RoomsConfig,
    pub redis: RedisConfig,
    pub commerce: CommerceConfig,
    pub sfu: SfuConfig,
    pub log: LogConfig,
    /// Comment translation: languages, latency budget, phrasebooks, glossaries, providers.
    pub translation: TranslationConfig,
    /// Per-market moderation rules and the moderator queue.
    pub moderation: ModerationConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one HTTP listener (WebSocket, REST, health, metrics).
    pub listen: SocketAddr,
    /// Name of this node in logs, metrics and the `connected` push; empty = `<hostname>-<pid>`.
    pub node_id: String,
    /// On SIGTERM, how long to wait for clients to leave before closing the rest.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Accept queue length (capped by the kernel's somaxconn).
    pub listen_backlog: u32,
    /// Serve the viewer and host pages and the browser SDK (`/watch/{room}`, `/host/{room}`,
    /// `/sdk/*`, `/pages/*`). Off for nodes that only carry API and WebSocket traffic.
    pub pages: bool,
    /// This node's HTTP base URL as clients reach it (`https://node-a.example.com`), for
    /// redirects: while a room's publisher is on this node, WHEP requests at other nodes are
    /// answered `307` to `<public_url>/whep/{room}`. Empty: never redirected to (viewers
    /// must reach this node themselves).
    pub public_url: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            node_id: String::new(),
            drain_timeout: Duration::from_secs(10),
            listen_backlog: 4096,
            pages: true,
            public_url: String::new(),
        }
    }
}

/// The development secret: usable out of the box, refused nowhere, warned about at start.
pub const DEV_SECRET: &str = "ferry-dev-secret-change-me";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens. Empty disables HS256.
    pub hs256_secret: String,
    /// PEM file with a public key for RS256 or EdDSA tokens (production). Empty disables it.
    pub public_key_file: PathBuf,
    /// Algorithm of `public_key_file`: "RS256" or "EdDSA".
    pub public_key_alg: String,
    /// When set, tokens must carry this `iss`.
    pub issuer: String,
    /// When set, tokens must carry this `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: DEV_SECRET.to_owned(),
            public_key_file: PathBuf::new(),
            public_key_alg: "RS256".to_owned(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Everything in this process: zero setup, one node.
    Memory,
    /// Rooms shared through Redis (standalone or cluster): many nodes.
    Redis,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub kind: EngineKind,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Memory,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Events kept per room for resume.
    pub size: usize,
    /// How long events are kept for resume.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Recent frames each node keeps per room so most resumes need no engine round trip.
    pub node_cache: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(600),
            node_cache: 256,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections this node accepts; more are closed with 3005 (reconnect later/elsewhere).
    pub max_connections: usize,
    /// Largest WebSocket frame/message a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Longest comment, in Unicode characters.
    pub max_comment_chars: usize,
    /// Comments per second per user (token bucket refill); staff are exempt.
    pub comment_rate: f64,
    /// Comment burst per user (token bucket size).
    pub comment_burst: f64,
    /// Commands of any kind per second per connection.
    pub command_rate: f64,
    pub command_burst: f64,
    /// Consecutive rejected or malformed frames before the connection is closed (3505/3502).
    pub strikes_before_close: u32,
    /// Joins per second this node admits; above it joins get `join_rate_limited`.
    pub join_rate: f64,
    pub join_burst: f64,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 200_000,
            max_frame_bytes: 16 * 1024,
            max_comment_chars: 500,
            comment_rate: 1.0,
            comment_burst: 5.0,
            command_rate: 20.0,
            command_burst: 40.0,
            strikes_before_close: 20,
            join_rate: 5000.0,
            join_burst: 10000.0,
            max_rooms_per_connection: 4,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Frames queued per connection before it is closed as a slow consumer (3001).
    pub send_queue_frames: usize,
    /// Most room events coalesced into one frame under load.
    pub max_batch: usize,
    /// A write that takes longer closes the connection (3003).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Interval of the server's WebSocket pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Silence after a ping before the connection is closed (3002).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// tungstenite read buffer per connection (its default, 128 KiB, is far too big for many).
    pub read_buffer_bytes: usize,
    /// tungstenite write buffer target per connection: frames drained together leave in
    /// one write instead of one syscall each.
    pub write_buffer_bytes: usize,
    /// In rooms with at least `batch_min_members` members, wait up to this long after an
    /// event for more, so each fan-out carries several events (0 = never wait).
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    pub batch_min_members: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            send_queue_frames: 256,
            max_batch: 16,
            write_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            read_buffer_bytes: 4096,
            write_buffer_bytes: 8192,
            batch_window: Duration::from_millis(10),
            batch_min_members: 100,
        }
    }
}

/// Who may create a room by joining it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoCreate {
    /// Hosts and admins create their room by joining it.
    Host,
    /// Anyone whose token allows the room.
    Any,
    /// Only the REST API creates rooms.
    Never,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    pub auto_create: AutoCreate,
    /// Likes and join/leave notices are aggregated over this interval.
    #[serde(with = "humantime_serde")]
    pub aggregate_interval: Duration,
    /// Viewer-count pushes are sent at most this often, and only when the count changed.
    #[serde(with = "humantime_serde")]
    pub viewer_count_interval: Duration,
    /// Users named in one joined/left notice (the rest are counted).
    pub presence_sample: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            auto_create: AutoCreate::Host,
            aggregate_interval: Duration::from_secs(1),
            viewer_count_interval: Duration::from_secs(2),
            presence_sample: 10,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Standalone: one URL. Cluster: seed nodes (any subset of the masters).
    pub urls: Vec<String>,
    /// Use Redis Cluster (sharded pub/sub, slot routing).
    pub cluster: bool,
    /// Prefix of every key and channel; lets several Ferry deployments share a Redis.
    pub prefix: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A Redis command that takes longer fails; commands that need Redis then answer
    /// `unavailable` (retry) instead of hanging.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// A node's viewer-count report expires after this (a dead node stops counting).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
}

impl RedisConfig {
    /// Where Redis is, for [`crate::redis_conn::RedisConn::connect`].
    pub fn target(&self) -> crate::redis_conn::RedisTarget {
        crate::redis_conn::RedisTarget {
            urls: self.urls.clone(),
            cluster: self.cluster,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379/".to_owned()],
            cluster: false,
            prefix: "ferry".to_owned(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(10),
        }
    }
}

/// Flash sales, the catalog, prices per market and the payment webhook.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommerceConfig {
    /// Embedded engine: the append-only journal of products, sales, reservations and order
    /// events (fsynced before a buyer is answered). Empty keeps them in memory only.
    pub journal_path: PathBuf,
    /// HMAC-SHA256 secret the payment provider signs webhooks with. Empty disables
    /// `POST /api/payments/webhook` (it answers 503).
    pub webhook_secret: String,
    /// A webhook whose signed timestamp is further than this from the server clock is refused
    /// (replay protection).
    #[serde(with = "humantime_serde")]
    pub webhook_tolerance: Duration,
    /// Stock updates to a room are published at most this often per sale.
    #[serde(with = "humantime_serde")]
    pub stock_update_interval: Duration,
    /// "Someone in Hong Kong just bought this" notices at most this often per sale.
    #[serde(with = "humantime_serde")]
    pub social_proof_interval: Duration,
    /// How often each node looks for lapsed reservations, sale starts and ends.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most live sales one sweep visits (they are visited in turns: bounded work per sweep
    /// however many sales there are).
    pub sweep_max_sales: usize,
    /// A `sale_started`/`sale_ended` whose publish failed (or whose node died while making
    /// it) is tried again after this; longer than a publish can take, so two nodes do not
    /// make it at once.
    #[serde(with = "humantime_serde")]
    pub announce_retry: Duration,
    /// Order events delivered to a consumer group and not acknowledged within this are
    /// delivered again.
    #[serde(with = "humantime_serde")]
    pub redeliver_after: Duration,
    /// Longest a sale may run, and longest hold a reservation may have.
    #[serde(with = "humantime_serde")]
    pub max_sale_duration: Duration,
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
    /// The date of the FX rates below (shown to viewers beside converted prices).
    pub fx_date: String,
    /// Per market code (`us`, `hk`, `mo`...): display currency, FX rate, tax and shipping.
    pub markets: std::collections::BTreeMap<String, MarketConfig>,
}

/// How one market sees prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    /// ISO 4217 code of the display currency.
    pub currency: String,
    /// Minor units per major unit of that currency's smallest coin: 2 for USD (cents).
    #[serde(default = "two")]
    pub minor_digits: u32,
    /// Units of the display currency one CNY buys (e.g. 0.1387 for USD).
    pub per_cny: f64,
    /// Buyer-paid tax estimate, percent of the price.
    #[serde(default)]
    pub tax_percent: f64,
    /// Shipping estimate, in the display currency's minor units.
    #[serde(default)]
    pub shipping_minor: i64,
}

fn two() -> u32 {
    2
}

impl Default for CommerceConfig {
    fn default() -> Self {
        let market =
            |currency: &str, per_cny: f64, tax_percent: f64, shipping_minor: i64| MarketConfig {
                currency: currency.to_owned(),
                minor_digits: 2,
                per_cny,
                tax_percent,
                shipping_minor,
            };
        Self {
            journal_path: PathBuf::from("ferry-data/commerce.journal"),
            webhook_secret: String::new(),
            webhook_tolerance: Duration::from_secs(300),
            stock_update_interval: Duration::from_millis(250),
            social_proof_interval: Duration::from_secs(3),
            sweep_interval: Duration::from_millis(200),
            sweep_max_sales: 1000,
            announce_retry: Duration::from_secs(5),
            redeliver_after: Duration::from_secs(30),
            max_sale_duration: Duration::from_secs(24 * 3600),
            max_hold: Duration::from_secs(3600),
            fx_date: "2026-11-20".to_owned(),
            markets: [
                ("cn".to_owned(), market("CNY", 1.0, 0.0, 0)),
                ("us".to_owned(), market("USD", 0.1387, 0.0, 1500)),
                ("hk".to_owned(), market("HKD", 1.0795, 0.0, 3000)),
                ("mo".to_owned(), market("MOP", 1.1118, 0.0, 3000)),
            ]
            .into(),
        }
    }
}

/// Live video: WHIP ingest, WHEP playback and the SFU that relays between them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// Serve `/whip` and `/whep` and run the SFU. Off: those routes answer 503.
    pub enabled: bool,
    /// The one UDP socket every WebRTC peer of this node uses. Port 0 picks a free port; set
    /// a fixed port when a firewall or a NAT port-forward must know it.
    pub udp_listen: SocketAddr,
    /// Addresses offered to peers as ICE candidates: an IP (the socket's port is used) or
    /// `IP:port` (a port forwarded to `udp_listen`). Empty: the listen address when it is
    /// specific, else the address this host routes from by default.
    pub public_addresses: Vec<String>,
    /// STUN/TURN server URLs advertised to WHIP/WHEP clients in `Link` headers.
    pub ice_servers: Vec<String>,
    /// Username and credential sent with `turn:`/`turns:` entries of `ice_servers`.
    pub ice_username: String,
    pub ice_credential: String,
    /// Token roles allowed to publish (WHIP). Add "moderator" for co-hosts.
    pub publisher_roles: Vec<String>,
    /// Publishers (distinct users) live at once in one room; above 1, co-hosts may join.
    /// A new session of a user already publishing replaces the old one.
    pub max_publishers_per_room: usize,
    /// WHIP + WHEP sessions on this node; more are refused with 503.
    pub max_sessions: usize,
    /// Keyframe requests reaching a publisher, per track and layer, at most this often.
    #[serde(with = "humantime_serde")]
    pub keyframe_interval: Duration,
    /// Estimate each viewer's bandwidth (TWCC) to pick its simulcast layer.
    pub bwe: bool,
    /// Bandwidth assumed for a new viewer until its first estimate, bits/s.
    pub initial_bitrate_bps: u64,
    /// A higher layer must fit a viewer's estimate this long before it switches up.
    #[serde(with = "humantime_serde")]
    pub up_switch_delay: Duration,
    /// Viewers of a room whose stream ended are kept this long for the publisher to come
    /// back (their playback resumes), then their sessions are closed.
    #[serde(with = "humantime_serde")]
    pub viewer_linger: Duration,
    /// A session whose peer never connects (ICE + DTLS) is dropped after this.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `Access-Control-Allow-Origin` for WHIP/WHEP: origins allowed to call from a browser
    /// page ("*" = any; Bearer tokens are not cookies, so "*" is safe).
    pub cors_origins: Vec<String>,
    /// Largest SDP offer or PATCH body accepted.
    pub max_sdp_bytes: usize,
    /// SO_RCVBUF / SO_SNDBUF of the UDP socket (the kernel may cap it at rmem_max/wmem_max).
    pub socket_buffer_bytes: usize,
    /// How long a room stays live in the engine unless the node hosting its publisher renews
    /// it (every third of this). When a node dies with a publisher, viewers get
    /// `stream_ended` (reason `timeout`) within about 1.5x this.
    #[serde(with = "humantime_serde")]
    pub live_lease: Duration,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            public_addresses: Vec::new(),
            ice_servers: Vec::new(),
            ice_username: String::new(),
            ice_credential: String::new(),
            publisher_roles: vec!["host".to_owned(), "admin".to_owned()],
            max_publishers_per_room: 1,
            max_sessions: 5000,
            keyframe_interval: Duration::from_secs(1),
            bwe: true,
            initial_bitrate_bps: 2_500_000,
            up_switch_delay: Duration::from_secs(2),
            viewer_linger: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            cors_origins: vec!["*".to_owned()],
            max_sdp_bytes: 32 * 1024,
            socket_buffer_bytes: 4 * 1024 * 1024,
            live_lease: Duration::from_secs(10),
        }
    }
}

/// Comment translation (see `docs/translation.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranslationConfig {
    /// Languages viewers may read in (primary BCP 47 subtags). Comments are translated into
    /// each of them that is present in the room.
    pub languages: Vec<String>,
    /// How long a comment may wait for its translations before it goes out with the ones
    /// that are ready; the rest follow in `translation` events.
    #[serde(with = "humantime_serde")]
    pub budget: Duration,
    /// Late translations are given up after this (the viewers keep the original).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Directory of phrasebook files (`*.toml`); empty = the phrasebooks shipped in
    /// `config/phrasebook/`, compiled in.
    pub phrasebook_dir: PathBuf,
    /// Translations kept in this node's LRU cache.
    pub cache_entries: usize,
    /// Redis engine: how long translations stay in the shared cache.
    #[serde(with = "humantime_serde")]
    pub shared_cache_ttl: Duration,
    /// Embedded engine: file the glossaries are saved to (empty = memory only).
    pub glossary_path: PathBuf,
    /// Redis engine: how often each node checks whether a glossary changed.
    #[serde(with = "humantime_serde")]
    pub glossary_refresh: Duration,
    /// Most terms one glossary may hold.
    pub max_glossary_terms: usize,
    /// Products translated at once when a glossary change refreshes their listings.
    pub listing_refresh_concurrency: usize,
    /// Market code → the language its product listings are translated into.
    pub market_languages: std::collections::BTreeMap<String, String>,
    /// Machine-translation providers, tried in order for each language pair they support.
    pub providers: Vec<ProviderConfig>,
}

impl Default for TranslationConfig {
    fn default() -> Self {
        let langs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(m, l)| ((*m).to_owned(), (*l).to_owned()))
                .collect()
        };
        Self {
            languages: ["zh", "en", "es", "ja", "ar"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            budget: Duration::from_millis(300),
            deadline: Duration::from_secs(5),
            phrasebook_dir: PathBuf::new(),
            cache_entries: 100_000,
            shared_cache_ttl: Duration::from_secs(7 * 86_400),
            glossary_path: PathBuf::from("ferry-data/glossaries.json"),
            glossary_refresh: Duration::from_secs(2),
            max_glossary_terms: 1000,
            listing_refresh_concurrency: 4,
            market_languages: langs(&[
                ("cn", "zh"),
                ("us", "en"),
                ("hk", "zh"),
                ("mo", "zh"),
                ("ae", "ar"),
                ("sa", "ar"),
                ("jp", "ja"),
                ("es", "es"),
            ]),
            providers: Vec::new(),
        }
    }
}

/// Which API a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// LibreTranslate-compatible `POST /translate`.
    Libretranslate,
    /// DeepL API v2 `POST /v2/translate`.
    Deepl,
    /// OpenAI-compatible `POST /v1/chat/completions`.
    Openai,
}

/// One machine-translation provider.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Name in logs and metrics.
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL (`https://api-free.deepl.com`); the API path is appended.
    pub url: String,
    /// API key (LibreTranslate `api_key`, DeepL `DeepL-Auth-Key`, OpenAI `Bearer`).
    pub api_key: String,
    /// OpenAI-compatible: the model.
    pub model: String,
    /// Languages this provider handles (both source and target); empty = all.
    pub languages: Vec<String>,
    /// One request (all its retries) gives up after this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight to this provider at once.
    pub concurrency: usize,
    /// Texts for the same language pair arriving within this window go in one request.
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// Most texts in one request.
    pub max_batch: usize,
    /// Retries after a failed attempt (timeouts, 429, 5xx), with exponential backoff.
    pub retries: u32,
    /// First retry delay (doubles per retry, with jitter; a 429's Retry-After wins).
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: ProviderKind::Libretranslate,
            url: String::new(),
            api_key: String::new(),
            model: "gpt-4o-mini".to_owned(),
            languages: Vec::new(),
            timeout: Duration::from_secs(2),
            concurrency: 4,
            batch_window: Duration::from_millis(15),
            max_batch: 32,
            retries: 2,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// Per-market moderation (see `docs/translation.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationConfig {
    /// Directory of market rule files (`*.toml`, one market each); empty = the rule sets
    /// shipped in `config/markets/`, compiled in.
    pub markets_dir: PathBuf,
    /// Comments one room's moderator queue holds; more yellow comments are refused with
    /// `moderation_queue_full` (1505) until moderators catch up.
    pub max_held_per_room: usize,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            markets_dir: PathBuf::new(),
            max_held_per_room: 200,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. "info" or "ferry=debug,info". `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Why a configuration could not be loaded. Every variant names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// One `key.path=value` override from the command line.
#[derive(Clone, Debug)]
pub struct Override {
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
        Ok(Override {
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
        })
    }
}

impl Config {
    /// Load with every layer: defaults, the file (if any), `FERRY_*` variables from `env`, then
    /// `overrides` (the command-line flags, as dotted keys).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Key {
            key: "<defaults>".into(),
            message: e.to_string(),
        })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let file_tree: toml::Value =
                toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?;
            merge(&mut tree, file_tree);
        }
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("FERRY_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let known = lookup(&tree, &key).is_some();
            if !known {
                return Err(ConfigError::Env {
                    var,
                    message: format!("no config key `{key}` (use FERRY_SECTION__KEY)"),
                });
            }
            set_key(&mut tree, &key, &value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
        }
        for o in overrides {
            if lookup(&tree, &o.key).is_none() {
                return Err(ConfigError::Key {
                    key: o.key.clone(),
                    message: "unknown config key".into(),
                });
            }
            set_key(&mut tree, &o.key, &o.value).map_err(|message| ConfigError::Key {
                key: o.key.clone(),
                message,
            })?;
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks serde cannot express: ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        }
        if self.auth.hs256_secret.is_empty() && self.auth.public_key_file.as_os_str().is_empty() {
            return bad(
                "auth.hs256_secret",
                "no token key configured (set auth.hs256_secret or auth.public_key_file)",
            );
        }
        if !["RS256", "EdDSA"].contains(&self.auth.public_key_alg.as_str()) {
            return bad("auth.public_key_alg", "must be \"RS256\" or \"EdDSA\"");
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return bad("limits.max_connections", "must be at least 1");
        }
        if l.max_frame_bytes < 256 {
            return bad("limits.max_frame_bytes", "must be at least 256");
        }
        if l.max_comment_chars == 0 {
            return bad("limits.max_comment_chars", "must be at least 1");
        }
        for (key, v) in [
            ("limits.comment_rate", l.comment_rate),
            ("limits.comment_burst", l.comment_burst),
            ("limits.command_rate", l.command_rate),
            ("limits.command_burst", l.command_burst),
            ("limits.join_rate", l.join_rate),
            ("limits.join_burst", l.join_burst),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, "must be a positive number");
            }
        }
        if l.max_rooms_per_connection == 0 {
            return bad("limits.max_rooms_per_connection", "must be at least 1");
        }
        let w = &self.websocket;
        if w.send_queue_frames < 2 {
            return bad("websocket.send_queue_frames", "must be at least 2");
        }
        if w.max_batch == 0 {
            return bad("websocket.max_batch", "must be at least 1");
        }
        if w.read_buffer_bytes < 512 {
            return bad("websocket.read_buffer_bytes", "must be at least 512");
        }
        if w.ping_interval.is_zero() || w.pong_timeout.is_zero() || w.write_timeout.is_zero() {
            return bad(
                "websocket.ping_interval",
                "intervals and timeouts must be > 0",
            );
        }
        let c = &self.commerce;
        for (code, m) in &c.markets {
            if !(m.per_cny.is_finite() && m.per_cny > 0.0) {
                return bad(
                    &format!("commerce.markets.{code}.per_cny"),
                    "must be a positive number",
                );
            }
            if !(m.tax_percent.is_finite() && (0.0..=100.0).contains(&m.tax_percent)) {
                return bad(
                    &format!("commerce.markets.{code}.tax_percent"),
                    "must be 0..=100",
                );
            }
            if m.minor_digits > 4 {
                return bad(
                    &format!("commerce.markets.{code}.minor_digits"),
                    "must be 0..=4",
                );
            }
            if m.currency.len() != 3 || !m.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return bad(
                    &format!("commerce.markets.{code}.currency"),
                    "must be an ISO 4217 code like \"USD\"",
                );
            }
        }
        if c.stock_update_interval.is_zero() || c.sweep_interval.is_zero() {
            return bad(
                "commerce.sweep_interval",
                "intervals must be > 0 (commerce.sweep_interval, commerce.stock_update_interval)",
            );
        }
        if c.sweep_max_sales == 0 {
            return bad("commerce.sweep_max_sales", "must be at least 1");
        }
        if c.announce_retry.is_zero() {
            return bad("commerce.announce_retry", "must be > 0");
        }
        if self.history.size == 0 {
            return bad("history.size", "must be at least 1");
        }
        if self.rooms.aggregate_interval.is_zero() || self.rooms.viewer_count_interval.is_zero() {
            return bad("rooms.aggregate_interval", "intervals must be > 0");
        }
        let v = &self.sfu;
        for role in &v.publisher_roles {
            if role.parse::<ferry_client::protocol::Role>().is_err() {
                return bad(
                    "sfu.publisher_roles",
                    "entries must be viewer, host, moderator or admin",
                );
            }
        }
        for a in &v.public_addresses {
            if a.parse::<std::net::IpAddr>().is_err() && a.parse::<SocketAddr>().is_err() {
                return bad("sfu.public_addresses", "entries must be an IP or IP:port");
            }
        }
        for url in &v.ice_servers {
            if !["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|p| url.starts_with(p))
                || url.contains(['<', '>', '"', ',', ' '])
            {
                return bad(
                    "sfu.ice_servers",
                    "entries must be stun:, stuns:, turn: or turns: URLs",
                );
            }
        }
        if v.max_publishers_per_room == 0 {
            return bad("sfu.max_publishers_per_room", "must be at least 1");
        }
        if v.max_sessions == 0 {
            return bad("sfu.max_sessions", "must be at least 1");
        }
        if v.keyframe_interval.is_zero() || v.connect_timeout.is_zero() {
            return bad(
                "sfu.keyframe_interval",
                "sfu.keyframe_interval and sfu.connect_timeout must be > 0",
            );
        }
        if v.initial_bitrate_bps < 10_000 {
            return bad("sfu.initial_bitrate_bps", "must be at least 10000");
        }
        if v.max_sdp_bytes < 1024 {
            return bad("sfu.max_sdp_bytes", "must be at least 1024");
        }
        if v.live_lease < Duration::from_millis(300) {
            return bad("sfu.live_lease", "must be at least 300ms");
        }
        let url = &self.server.public_url;
        if !url.is_empty()
            && !((url.starts_with("http://") || url.starts_with("https://"))
                && url.parse::<axum::http::Uri>().is_ok())
        {
            return bad(
                "server.public_url",
                "must be an http:// or https:// URL like https://node-a.example.com",
            );
        }
        let t = &self.translation;
        for (i, l) in t.languages.iter().enumerate() {
            if ferry_client::protocol::translation::normalize_lang(l).as_deref() != Some(l) {
                return bad(
                    &format!("translation.languages[{i}]"),
                    "must be a lowercase primary language subtag like \"en\"",
                );
            }
        }
        for (m, l) in &t.market_languages {
            if ferry_client::protocol::translation::normalize_lang(l).as_deref() != Some(l) {
                return bad(
                    &format!("translation.market_languages.{m}"),
                    "must be a lowercase primary language subtag like \"en\"",
                );
            }
        }
        if t.budget > t.deadline {
            return bad("translation.budget", "must not exceed translation.deadline");
        }
        if t.cache_entries == 0 {
            return bad("translation.cache_entries", "must be at least 1");
        }
        if !(1..=64).contains(&t.listing_refresh_concurrency) {
            return bad("translation.listing_refresh_concurrency", "must be 1..=64");
        }
        if t.glossary_refresh.is_zero() {
            return bad("translation.glossary_refresh", "must be > 0");
        }
        for (i, p) in t.providers.iter().enumerate() {
            let key = |k: &str| format!("translation.providers[{i}].{k}");
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return bad(&key("url"), "must be an http:// or https:// URL");
            }
            if p.concurrency == 0 {
                return bad(&key("concurrency"), "must be at least 1");
            }
            if p.max_batch == 0 || p.max_batch > 128 {
                return bad(&key("max_batch"), "must be 1..=128");
            }
            if p.timeout.is_zero() {
                return bad(&key("timeout"), "must be > 0");
            }
        }
        if self.moderation.max_held_per_room == 0 {
            return bad("moderation.max_held_per_room", "must be at least 1");
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return bad("log.level", "not a valid tracing filter");
        }
        Ok(())
    }

    /// The node name: configured, or `<hostname>-<pid>`.
    pub fn node_name(&self) -> String {
        if !self.server.node_id.is_empty() {
            return self.server.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "ferry".into());
        format!("{host}-{}", std::process::id())
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    // Unknown keys are kept so strict deserialization reports them by name.
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn lookup<'a>(tree: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(tree, |node, part| node.get(part))
}

/// Set a dotted key from a string, typed like the value already there (defaults give every
/// key a value, so the type is always known).
fn set_key(tree: &mut toml::Value, key: &str, raw: &str) -> Result<(), String> {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = node
            .get_mut(*part)
            .ok_or_else(|| format!("no config section `{part}`"))?;
    }
    let last = parts[parts.len() - 1];
    let table = node
        .as_table_mut()
        .ok_or_else(|| "not a config section".to_owned())?;
    let slot = table
        .get_mut(last)
        .ok_or_else(|| "unknown config key".to_owned())?;
    let value = match slot {
        toml::Value::String(_) => toml::Value::String(raw.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.parse()
                .map_err(|_| format!("`{raw}` is not an integer"))?,
        ),
        toml::Value::Float(_) => toml::Value::Float(
            raw.parse()
                .map_err(|_| format!("`{raw}` is not a number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.parse()
                .map_err(|_| format!("`{raw}` is not true or false"))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(|v| toml::Value::String(v.trim().to_owned()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ),
        _ => return Err("this key cannot be set from a string".into()),
    };
    *slot = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            f,
            "[limits]\nmax_comment_chars = 200\ncomment_rate = 2.0\n[server]\nlisten = \"127.0.0.1:9000\""
        )
        .expect("write");
        let cfg = Config::load(
            Some(f.path()),
            env(&[("FERRY_LIMITS__MAX_COMMENT_CHARS", "300"), ("PATH", "/bin")]),
            &["server.listen=127.0.0.1:9001".parse().expect("override")],
        )
        .expect("loads");
        assert_eq!(cfg.limits.max_comment_chars, 300);
        assert_eq!(cfg.limits.comment_rate, 2.0);
        assert_eq!(cfg.server.listen.port(), 9001);
        assert_eq!(cfg.limits.max_connections, 200_000);
    }

    #[test]
    fn unknown_keys_are_named() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(f, "[limits]\nmax_comments = 3").expect("write");
        let err = Config::load(Some(f.path()), env(&[]), &[]).expect_err("rejects");
        assert!(err.to_string().contains("limits.max_comments"), "{err}");

        let err = Config::load(None, env(&[("FERRY_LIMITS__NOPE", "1")]), &[]).expect_err("env");
        assert!(err.to_string().contains("FERRY_LIMITS__NOPE"), "{err}");

        let err = Config::load(
            None,
            env(&[]),
            &["server.nope=1".parse().expect("override")],
        )
        .expect_err("flag");
        assert!(err.to_string().contains("server.nope"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = Config::load(None, env(&[("FERRY_LIMITS__MAX_CONNECTIONS", "lots")]), &[])
            .expect_err("rejects");
        assert!(
            err.to_string().contains("FERRY_LIMITS__MAX_CONNECTIONS"),
            "{err}"
        );

        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(f, "[websocket]\nwrite_timeout = \"soon\"").expect("write");
        let err = Config::load(Some(f.path()), env(&[]), &[]).expect_err("rejects");
        assert!(err.to_string().contains("websocket.write_timeout"), "{err}");

        let err =
            Config::load(None, env(&[("FERRY_ENGINE__KIND", "etcd")]), &[]).expect_err("rejects");
        assert!(err.to_string().contains("engine.kind"), "{err}");

        let err = Config::load(None, env(&[("FERRY_LIMITS__COMMENT_RATE", "-1")]), &[])
            .expect_err("rejects");
        assert!(err.to_string().contains("limits.comment_rate"), "{err}");
    }

    #[test]
    fn shipped_config_file_is_valid_and_complete() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ferry.toml");
        Config::load(Some(&path), env(&[]), &[]).expect("config/ferry.toml loads");
        // Every key of the defaults appears in the documented file.
        let text = std::fs::read_to_string(&path).expect("read");
        let documented: toml::Value = toml::from_str(&text).expect("toml");
        let defaults = toml::Value::try_from(Config::default()).expect("defaults");
        for (section, table) in defaults.as_table().expect("table") {
            for key in table.as_table().expect("section").keys() {
                assert!(
                    lookup(&documented, &format!("{section}.{key}")).is_some(),
                    "config/ferry.toml lacks {section}.{key}"
                );
            }
        }
    }
}
