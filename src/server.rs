//! Server lifecycle: build the engine and hub from config, bind the listener, serve, and drain
//! gracefully (stop accepting, close every connection with 3000 so clients reconnect
//! elsewhere, wait up to `server.drain_timeout`).

use crate::auth::{KeyError, Verifier};
use crate::chat::Chat;
use crate::commerce::memory::MemorySaleStore;
use crate::commerce::redis::{RedisSaleStore, RedisSaleStoreOptions};
use crate::commerce::service::Commerce;
use crate::commerce::SaleStore;
use crate::config::{Config, EngineKind, DEV_SECRET};
use crate::engine::memory::{MemoryEngine, MemoryEngineOptions};
use crate::engine::redis::{RedisEngine, RedisEngineOptions};
use crate::engine::Engine;
use crate::hub::{ConnSignal, Hub, HubConfig};
use crate::metrics::Metrics;
use crate::moderation::Moderator;
use crate::redis_conn::RedisConn;
use crate::redis_conn::RedisStartError;
use crate::sfu::{Sfu, SfuStartError};
use crate::translate::cache::SharedCache;
use crate::translate::glossary::{
    FileGlossaryStore, Glossaries, GlossaryStore, RedisGlossaryStore,
};
use crate::translate::phrasebook::Phrasebook;
use crate::translate::Translator;
use axum::serve::ListenerExt;
use dashmap::DashMap;
use ferry_client::protocol::CloseCode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Shared state of the HTTP handlers and connection tasks.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    /// Catalog, flash sales and orders.
    pub commerce: Arc<Commerce>,
    /// Live video (WHIP/WHEP and the SFU); `None` when `sfu.enabled` is false.
    pub sfu: Option<Arc<Sfu>>,
    /// Comment moderation and translation, glossaries.
    pub chat: Arc<Chat>,
    /// Re-translates product listings when a glossary changes.
    pub listings: Arc<crate::listing_refresh::ListingRefresh>,
    /// Every open connection's close signal, for draining.
    pub conns: Arc<DashMap<u64, Arc<ConnSignal>>>,
    draining: Arc<AtomicBool>,
    next_conn: Arc<AtomicU64>,
}

impl AppState {
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Relaxed)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Redis(#[from] RedisStartError),
    #[error("commerce store: {0}")]
    Commerce(String),
    #[error(transparent)]
    Sfu(#[from] SfuStartError),
    /// Phrasebooks, market rules, glossaries or the shared translation cache.
    #[error("translation: {0}")]
    Translation(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running server.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub state: AppState,
    stop_accepting: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
}

async fn build_engine(cfg: &Config) -> Result<Arc<dyn Engine>, StartError> {
    Ok(match cfg.engine.kind {
        EngineKind::Memory => {
            let engine = MemoryEngine::new(MemoryEngineOptions {
                history_size: cfg.history.size,
                history_ttl: cfg.history.ttl,
                max_held: cfg.moderation.max_held_per_room,
                ..MemoryEngineOptions::default()
            });
            let sweeper = engine.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    sweeper.sweep();
                }
            });
            Arc::new(engine)
        }
        EngineKind::Redis => {
            let r = &cfg.redis;
            Arc::new(
                RedisEngine::connect(RedisEngineOptions {
                    redis: r.target(),
                    prefix: r.prefix.clone(),
                    history_size: cfg.history.size,
                    history_ttl: cfg.history.ttl,
                    presence_ttl: r.presence_ttl,
                    broadcast_capacity: 4096,
                    max_held: cfg.moderation.max_held_per_room,
                })
                .await?,
            )
        }
    })
}

async fn build_sale_store(cfg: &Config) -> Result<Arc<dyn SaleStore>, StartError> {
    let path = &cfg.commerce.journal_path;
    let journaled = || -> Result<Arc<dyn SaleStore>, StartError> {
        if path.as_os_str().is_empty() {
            tracing::warn!("commerce.journal_path is empty: sales and orders are kept in memory only and lost on restart");
            return Ok(Arc::new(MemorySaleStore::in_memory()));
        }
        Ok(Arc::new(
            MemorySaleStore::open(path).map_err(StartError::Commerce)?,
        ))
    };
    match cfg.engine.kind {
        EngineKind::Memory => journaled(),
        EngineKind::Redis => {
            // Sales, reservations and order events live in Redis, shared by every node.
            let r = &cfg.redis;
            Ok(Arc::new(
                RedisSaleStore::connect(RedisSaleStoreOptions {
                    redis: r.target(),
                    prefix: r.prefix.clone(),
                })
                .await?,
            ))
        }
    }
}

/// Phrasebooks, market rules, glossaries and caches, from config: the translator and
/// moderator behind [`Chat`].
pub async fn build_chat(cfg: &Config, hub: Arc<Hub>) -> Result<Arc<Chat>, StartError> {
    let t = &cfg.translation;
    let err = |e: String| StartError::Translation(e);
    let phrasebook = if t.phrasebook_dir.as_os_str().is_empty() {
        Phrasebook::parse(crate::translate::phrasebook::BUILTIN.iter().copied())
    } else {
        Phrasebook::load_dir(&t.phrasebook_dir)
    }
    .map_err(|e| err(format!("translation.phrasebook_dir: {e}")))?;
    let markets = if cfg.moderation.markets_dir.as_os_str().is_empty() {
        crate::moderation::parse_markets(crate::moderation::BUILTIN_MARKETS.iter().copied())
    } else {
        crate::moderation::load_markets_dir(&cfg.moderation.markets_dir)
    }
    .map_err(|e| err(format!("moderation.markets_dir: {e}")))?;
    let moderator = Arc::new(Moderator::new(&markets).map_err(|e| err(e.to_string()))?);
    let (store, shared): (Arc<dyn GlossaryStore>, Option<Arc<SharedCache>>) = match cfg.engine.kind
    {
        EngineKind::Memory => {
            let path = Some(t.glossary_path.clone()).filter(|p| !p.as_os_str().is_empty());
            (
                Arc::new(
                    FileGlossaryStore::open(path)
                        .map_err(|e| err(format!("translation.glossary_path: {e}")))?,
                ),
                None,
            )
        }
        EngineKind::Redis => {
            let r = &cfg.redis;
            let conn = RedisConn::connect(&r.target(), None)
                .await
                .map_err(|e| err(format!("Redis: {e}")))?;
            (
                Arc::new(RedisGlossaryStore::new(conn.clone(), &r.prefix)),
                Some(Arc::new(SharedCache::new(
                    conn,
                    &r.prefix,
                    t.shared_cache_ttl,
                ))),
            )
        }
    };
    let glossaries = Glossaries::new(store, t.max_glossary_terms)
        .await
        .map_err(|e| err(format!("glossaries: {e}")))?;
    if cfg.engine.kind == EngineKind::Redis {
        // Other nodes change glossaries too: pick their changes up.
        let weak = Arc::downgrade(&glossaries);
        let every = t.glossary_refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(g) = weak.upgrade() else { return };
                if let Err(e) = g.refresh().await {
                    tracing::debug!(error = %e, "glossary refresh failed");
                }
            }
        });
    }
    tracing::info!(
        phrases = phrasebook.len(),
        markets = moderator.markets().len(),
        rules = moderator.rule_count(),
        providers = t.providers.len(),
        "translation and moderation ready"
    );
    let translator = Translator::new(t.clone(), phrasebook, glossaries, shared);
    Ok(Chat::new(hub, translator, moderator))
}

/// Bind and start serving.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    let verifier = Arc::new(Verifier::from_config(&config.auth)?);
    if config.auth.hs256_secret == DEV_SECRET {
        tracing::warn!("auth.hs256_secret is the development default: anyone can mint tokens; set your own secret");
    }
    let node = config.node_name();
    let metrics = Arc::new(Metrics::default());
    let engine = build_engine(&config).await?;
    let hub = Hub::new(
        engine,
        HubConfig::from_config(&config, node.clone()),
        metrics.clone(),
    );
    let commerce = Commerce::new(
        config.commerce.clone(),
        build_sale_store(&config).await?,
        hub.clone(),
    );
    commerce.spawn_sweeper();
    let sfu = if config.sfu.enabled {
        let host = crate::engine::LiveHost {
            node: node.clone(),
            url: config.server.public_url.trim_end_matches('/').to_owned(),
        };
        Some(Sfu::start(config.sfu.clone(), hub.clone(), host).await?)
    } else {
        None
    };
    let chat = build_chat(&config, hub.clone()).await?;
    commerce.set_showcase_translator(chat.clone());
    let listings = crate::listing_refresh::ListingRefresh::new(
        chat.clone(),
        commerce.clone(),
        config.translation.listing_refresh_concurrency,
    );
    let state = AppState {
        listings,
        sfu,
        chat,
        config: Arc::new(config),
        hub,
        metrics,
        verifier,
        commerce,
        conns: Arc::new(DashMap::new()),
        draining: Arc::new(AtomicBool::new(false)),
        next_conn: Arc::new(AtomicU64::new(1)),
    };
    let addr = state.config.server.listen;
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // A join spike opens thousands of connections at once: a deep accept queue turns
        // them into a short wait instead of dropped SYNs (the kernel caps it at somaxconn).
        socket.listen(state.config.server.listen_backlog)
    };
    let listener = bind().map_err(|source| StartError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let (stop_accepting, mut stop_rx) = watch::channel(false);
    let app = crate::http::router(state.clone());
    let serve = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        // Small frames (replies, single comments) must not wait for Nagle + delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(%local_addr, %node, engine = state.hub.engine().name(), "ferry listening");
    Ok(RunningServer {
        local_addr,
        state,
        stop_accepting,
        serve,
    })
}

impl RunningServer {
    /// Graceful drain: readiness fails, no new connections, every client is told to
    /// reconnect elsewhere (3000), and we wait up to `drain_timeout` for them to go.
    pub async fn drain(self) {
        let state = self.state;
        state.draining.store(true, Relaxed);
        let _ = self.stop_accepting.send(true);
        if let Some(sfu) = &state.sfu {
            // Video sessions end first, so viewers still connected get `stream_ended`.
            sfu.drain().await;
            tracing::info!("sfu sessions closed");
        }
        let open = state.conns.len();
        tracing::info!(open, "draining: closing connections with 3000");
        for c in state.conns.iter() {
            c.value().close(CloseCode::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + state.config.server.drain_timeout;
        while state.metrics.connections.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = state.metrics.connections.load(Relaxed);
        if left > 0 {
            tracing::warn!(left, "drain timeout: dropping remaining connections");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.serve).await;
        tracing::info!("drained");
    }
}
