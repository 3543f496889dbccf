//! Shared test harness: a real server on port 0, tokens, SDK clients, a TCP proxy that can cut
//! the network, and a minimal HTTP client.
#![allow(dead_code)]

pub mod providers;
pub mod redis;
pub mod sales;

use ferry::auth::{mint, TokenRequest};
use ferry::config::Config;
use ferry::protocol::{Role, RoomEvent, RoomId};
use ferry::server::RunningServer;
use ferry_client::{Client, ClientOptions, Event, Events};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, port 0, fast aggregation.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.server.node_id = "test-node".into();
    cfg.server.drain_timeout = Duration::from_secs(2);
    // The SFU's UDP socket on loopback: the ICE candidate is 127.0.0.1.
    cfg.sfu.udp_listen = "127.0.0.1:0".parse().expect("addr");
    cfg.rooms.aggregate_interval = Duration::from_millis(100);
    cfg.rooms.viewer_count_interval = Duration::from_millis(100);
    // Memory only unless a test asks for a journal (its own temp dir).
    cfg.commerce.journal_path = std::path::PathBuf::new();
    cfg.commerce.sweep_interval = Duration::from_millis(50);
    cfg.commerce.webhook_secret = WEBHOOK_SECRET.into();
    // Glossaries in memory only (each test server starts empty).
    cfg.translation.glossary_path = std::path::PathBuf::new();
    cfg
}

/// The payment webhook secret of test servers.
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

pub struct TestServer {
    pub server: RunningServer,
    pub config: Config,
}

impl TestServer {
    pub async fn start(edit: impl FnOnce(&mut Config)) -> TestServer {
        // Server logs when RUST_LOG is set (e.g. RUST_LOG=ferry=debug cargo test).
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let mut config = test_config();
        edit(&mut config);
        config.validate().expect("valid test config");
        let server = ferry::server::start(config.clone())
            .await
            .expect("server starts");
        TestServer { server, config }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    pub fn token(&self, room: &str, user: &str, role: Role) -> String {
        token_for(&self.config, room, user, role)
    }

    /// An SDK client for `user` in `room` with `role`, connected to this server.
    pub fn client(&self, room: &str, user: &str, role: Role) -> (Client, Events) {
        Client::connect(self.options(room, user, role))
    }

    pub fn options(&self, room: &str, user: &str, role: Role) -> ClientOptions {
        let mut o = ClientOptions::new(self.url(), self.token(room, user, role));
        o.min_backoff = Duration::from_millis(20);
        o.max_backoff = Duration::from_millis(200);
        o
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let mut text = self.server.state.metrics.render("test-node");
        self.server
            .state
            .chat
            .translator()
            .metrics()
            .render("test-node", &mut text);
        metric_value(&text, name_and_labels)
    }
}

pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub fn token_for(cfg: &Config, room: &str, user: &str, role: Role) -> String {
    token_in_market(cfg, room, user, role, "us")
}

/// A token whose `market` claim is `market`.
pub fn token_in_market(cfg: &Config, room: &str, user: &str, role: Role, market: &str) -> String {
    mint(
        &cfg.auth,
        &TokenRequest {
            room: room.into(),
            user: user.into(),
            name: Some(format!("name-{user}")),
            role,
            lang: Some("en".into()),
            market: Some(market.into()),
            ttl: Duration::from_secs(3600),
        },
    )
    .expect("mint")
}

/// Wait for the first event matching `pred`, skipping others.
pub async fn wait_for<T>(events: &mut Events, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.recv().await.expect("event stream open");
            if let Some(t) = pred(&e) {
                return t;
            }
        }
    })
    .await
    .expect("expected event in time")
}

/// The reason of the next `stream_ended` room event, skipping others.
pub async fn wait_stream_ended(events: &mut Events) -> ferry::protocol::StreamEndReason {
    wait_for(events, |e| match e {
        Event::Room {
            event: RoomEvent::StreamEnded { reason },
            ..
        } => Some(*reason),
        _ => None,
    })
    .await
}

/// Wait until `pred` holds for a WHEP subscriber's stats; fails with them after [`WAIT`].
pub async fn wait_stats(
    v: &ferry_client::media::Subscriber,
    what: &str,
    pred: impl Fn(&ferry_client::media::SubscriberStats) -> bool,
) -> ferry_client::media::SubscriberStats {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st = v.stats();
        if pred(&st) {
            return st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collect the texts of `n` comments in `room`, in arrival order.
pub async fn collect_comments(events: &mut Events, room: &str, n: usize) -> Vec<String> {
    let room = RoomId::from(room);
    let mut out = Vec::with_capacity(n);
    tokio::time::timeout(WAIT * 3, async {
        while out.len() < n {
            match events.recv().await.expect("event stream open") {
                Event::Room {
                    room: r,
                    event: RoomEvent::Comment { text, .. },
                    ..
                } if r == room => out.push(text),
                Event::Room { .. } | Event::Viewers { .. } => {}
                other => eprintln!("collect_comments: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got {} of {n} comments", out.len()));
    out
}

/// A loopback TCP proxy whose connections can be cut and whose listener can refuse for a
/// while: a network drop, as a client sees it.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drop every proxied connection and refuse new ones.
    pub fn go_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn come_up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    http_with(addr, method, path, token, &[], body).await
}

/// [`http`] with extra request headers.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    try_http_with(addr, method, path, token, headers, body)
        .await
        .expect("http request")
}

/// [`http_with`] that reports a refused or dropped connection instead of panicking (for
/// servers being killed under the request).
pub async fn try_http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
