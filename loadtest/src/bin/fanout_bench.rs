//! `fanout-bench`: the comment fan-out benchmark.
//!
//! It spawns the server under test itself (Ferry, or the no-logic `baseline-broadcast`),
//! connects N viewers to one room spread over source addresses 127.0.0.1..127.0.0.x, then C
//! chatters that post comments at an aggregate rate R for D seconds on an open-model schedule
//! (comment k is due at t0 + k/R whatever happened to comment k-1). Each comment text carries
//! the chatter id, a per-chatter sequence number, its intended send time and its actual send
//! time (Unix µs), so every receiver computes end-to-end latency itself. Latency is measured
//! from the *intended* send time, so a load generator that falls behind shows up as latency
//! instead of silently lowering the load (no coordinated omission); the send lag is reported
//! separately.
//!
//! Viewers and chatters are raw tokio-tungstenite connections (4 KiB read buffer, write buffer
//! 0) that send one `join` and afterwards only scan frames for the comment marker: no JSON
//! parsing on the hot path, so the load generator spends as little CPU as possible on the
//! machine it shares with the server.
//!
//! Everything is bounded: each phase has a timeout, and a watchdog thread kills the server
//! and exits once the hard deadline passes. Only loopback addresses are used.
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/bench-target cargo build --release -p ferry -p ferry-loadtest
//! /tmp/bench-target/release/fanout-bench --target both --json /tmp/fanout.json
//! ```

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const DEV_SECRET: &str = "ferry-dev-secret-change-me";
/// Marker that starts the machine-readable part of every benchmark comment.
const MARKER: &str = "fb|";
/// Latencies above this (µs) are clamped into the top bucket.
const MAX_LATENCY_US: u64 = 600_000_000;
/// Histogram shards viewers record into (a lock per frame, rarely contended).
const SHARDS: usize = 64;
/// `/proc/PID/stat` reports CPU times in USER_HZ, fixed at 100 on Linux ABIs.
const USER_HZ: f64 = 100.0;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    Ferry,
    Baseline,
    /// Ferry (one node, embedded engine), then the no-logic baseline; prints ratios.
    Both,
    /// Ferry on one node with the embedded engine, then `--nodes` Ferry nodes on Redis with
    /// the same clients spread over them; prints what the Redis engine adds.
    Engines,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Engine {
    Memory,
    Redis,
}

/// One run: which server, on which engine, over how many nodes.
#[derive(Copy, Clone, Debug)]
struct RunSpec {
    target: Target,
    engine: Engine,
    nodes: usize,
}

impl RunSpec {
    fn label(&self) -> String {
        match (self.target, self.engine) {
            (Target::Baseline, _) => "baseline".to_owned(),
            (Target::Ferry, Engine::Memory) if self.nodes == 1 => "ferry".to_owned(),
            (Target::Ferry, Engine::Memory) => format!("ferry-memory-{}n", self.nodes),
            (Target::Ferry, Engine::Redis) => format!("ferry-redis-{}n", self.nodes),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Ferry,
    Baseline,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "fanout-bench",
    about = "Comment fan-out benchmark for Ferry (and a no-logic broadcast baseline)"
)]
struct Args {
    /// Server(s) to benchmark; `both` runs ferry, then baseline, and prints ratios.
    #[arg(long, value_enum, default_value = "ferry")]
    target: TargetArg,
    /// Ferry nodes (clients are spread over them round-robin); more than one needs
    /// `--engine redis`. Applies to `--target ferry` and to the Redis run of `engines`.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Ferry's engine for `--target ferry`. With `redis` the benchmark starts its own
    /// `redis-server` on a free port and measures raw `redis-benchmark` PUBLISH on it first.
    #[arg(long, value_enum, default_value = "memory")]
    engine: Engine,
    /// redis-server binary (for the Redis engine).
    #[arg(long, default_value = "redis-server")]
    redis_server_bin: PathBuf,
    /// redis-benchmark binary (the raw PUBLISH baseline).
    #[arg(long, default_value = "redis-benchmark")]
    redis_benchmark_bin: PathBuf,
    /// Viewers in the room (receive only).
    #[arg(long, default_value_t = 10_000)]
    viewers: usize,
    /// Chatters (send comments, also receive).
    #[arg(long, default_value_t = 100)]
    chatters: usize,
    /// Aggregate comment rate, comments per second across all chatters.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Send phase length, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Ferry binary (default: /tmp/bench-target/release/ferry, else `ferry` next to this exe).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Baseline binary (default: `baseline-broadcast` next to this exe).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Baseline broadcast queue (messages a connection may lag before it is closed).
    #[arg(long, default_value_t = 256)]
    baseline_queue: usize,
    /// Extra `--set key=value` overrides passed to Ferry (repeatable).
    #[arg(long = "server-set", value_name = "KEY=VALUE")]
    server_set: Vec<String>,
    /// Most connections per source address (ephemeral ports per address are ~28k).
    #[arg(long, default_value_t = 5_000)]
    per_source: usize,
    /// Connections being set up at once.
    /// Connections being set up at once. Kept under the servers' listen backlog (128, the
    /// std/mio default both use) so the join time measures the server, not SYN retransmits.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Comment text length in bytes (the marker fields plus padding).
    #[arg(long, default_value_t = 64)]
    comment_bytes: usize,
    /// Room id.
    #[arg(long, default_value = "bench")]
    room: String,
    /// Client tungstenite read buffer, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Seconds to wait after the last send for deliveries to arrive.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds to let the server settle after connecting, before measuring idle RSS.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Longest the connect phase may take, seconds.
    #[arg(long, default_value_t = 180.0)]
    connect_timeout: f64,
    /// Hard deadline for the whole run, seconds (default: derived from the phases).
    #[arg(long)]
    deadline: Option<f64>,
    /// Load-generator runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// HS256 secret for tokens (Ferry's development default).
    #[arg(long, default_value = DEV_SECRET)]
    secret: String,
    /// Before each run, wait up to this many seconds for other processes to leave the CPU
    /// (under 15 % busy); the run starts anyway afterwards and reports the interference.
    #[arg(long, default_value_t = 0.0)]
    wait_quiet: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for server logs.
    #[arg(long, default_value = "/tmp")]
    log_dir: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Small helpers: time, /proc, histograms.

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// utime + stime of a process, seconds.
fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn proc_status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn mem_total_gib() -> f64 {
    proc_status_like("/proc/meminfo", "MemTotal").map_or(0.0, |kib| kib as f64 / 1048576.0)
}

fn proc_status_like(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Machine-wide CPU time from /proc/stat, seconds: (busy, steal, total).
fn machine_cpu() -> Option<(f64, f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    let total: u64 = v.iter().sum();
    Some((
        busy as f64 / USER_HZ,
        v[7] as f64 / USER_HZ,
        total as f64 / USER_HZ,
    ))
}

/// Bytes sitting in loopback TCP buffers around the server at `port`, from /proc/net/tcp:
/// (received by client sockets but not yet read by the load generator, written by the server
/// but not yet acknowledged).
fn tcp_backlog(port: u16) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return (0, 0);
    };
    let port_of = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let (mut client_unread, mut server_unacked) = (0u64, 0u64);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().take(5).collect();
        let (Some(local), Some(remote), Some(queues)) = (f.get(1), f.get(2), f.get(4)) else {
            continue;
        };
        let Some((tx, rx)) = queues.split_once(':') else {
            continue;
        };
        let tx = u64::from_str_radix(tx, 16).unwrap_or(0);
        let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
        if port_of(remote) == Some(port) {
            client_unread += rx;
        } else if port_of(local) == Some(port) {
            server_unacked += tx;
        }
    }
    (client_unread, server_unacked)
}

/// A system-wide TcpExt counter from /proc/net/netstat (e.g. ListenOverflows).
fn tcp_ext(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: impl Into<String>) {
    *lock(map).entry(key.into()).or_insert(0) += 1;
}

#[derive(Clone, Debug, Default, Serialize)]
struct Percentiles {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens.

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    name: String,
    role: &'a str,
    room: &'a str,
    exp: u64,
}

fn mint(key: &jsonwebtoken::EncodingKey, user: String, room: &str) -> Result<String, String> {
    let claims = Claims {
        name: user.clone(),
        sub: user,
        role: "viewer",
        room,
        exp: unix_us() / 1_000_000 + 3600,
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)
        .map_err(|e| format!("cannot mint token: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The server under test.

/// PIDs of servers we started, for the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

struct Server {
    child: tokio::process::Child,
    pid: String,
    addr: SocketAddr,
    bin: PathBuf,
    log: PathBuf,
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

fn resolve_bin(target: Target, args: &Args) -> Result<PathBuf, String> {
    let (explicit, name) = match target {
        Target::Ferry => (&args.server_bin, "ferry"),
        Target::Baseline => (&args.baseline_bin, "baseline-broadcast"),
    };
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    let default = PathBuf::from("/tmp/bench-target/release").join(name);
    let found = match target {
        Target::Ferry => Some(default.clone())
            .filter(|p| p.exists())
            .or_else(|| sibling(name)),
        Target::Baseline => sibling(name).or_else(|| Some(default.clone()).filter(|p| p.exists())),
    };
    found.ok_or_else(|| {
        format!(
            "cannot find the {name} binary (looked at {} and next to this executable); build it with \
             `CARGO_TARGET_DIR=/tmp/bench-target cargo build --release -p ferry -p ferry-loadtest` or pass --{}",
            default.display(),
            if target == Target::Ferry { "server-bin" } else { "baseline-bin" }
        )
    })
}

/// The `redis-server` a Redis-engine run starts for itself (no persistence).
struct RedisProc {
    child: tokio::process::Child,
    pid: String,
    port: u16,
    log: PathBuf,
}

impl RedisProc {
    async fn start(args: &Args) -> Result<RedisProc, String> {
        let port = free_port()?;
        let log = args
            .log_dir
            .join(format!("fanout-bench-redis-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&args.redis_server_bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.redis_server_bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "redis-server exited at once".to_owned())?;
        lock(&CHILDREN).push(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not listen on {port}; see {}",
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(RedisProc {
            child,
            pid: pid.to_string(),
            port,
            log,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Raw `redis-benchmark` PUBLISH on this server: requests per second and p50/p99 (ms), with
    /// `clients` connections and no pipelining (Ferry publishes one comment per script call).
    fn publish_baseline(&self, args: &Args, clients: usize) -> Result<RawRedis, String> {
        let payload = "x".repeat(args.comment_bytes.max(48) + 100);
        let out = std::process::Command::new(&args.redis_benchmark_bin)
            .args(["-p", &self.port.to_string(), "-n", "200000", "-c"])
            .arg(clients.to_string())
            .args(["--csv", "PUBLISH", "fanout-bench-raw"])
            .arg(&payload)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", args.redis_benchmark_bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let row = text
            .lines()
            .find(|l| l.starts_with("\"PUBLISH"))
            .ok_or_else(|| format!("no PUBLISH row in redis-benchmark output: {text}"))?;
        let cols: Vec<f64> = row
            .split(',')
            .skip(1)
            .filter_map(|c| c.trim_matches('"').parse().ok())
            .collect();
        let col = |i: usize| cols.get(i).copied().unwrap_or(0.0);
        Ok(RawRedis {
            command: format!(
                "{} -p PORT -n 200000 -c {clients} --csv PUBLISH fanout-bench-raw <{}-byte payload>",
                args.redis_benchmark_bin.display(),
                payload.len()
            ),
            requests_per_s: col(0),
            p50_ms: col(3),
            p99_ms: col(5),
        })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        lock(&CHILDREN).retain(|p| p.to_string() != self.pid);
    }
}

/// Raw Redis PUBLISH throughput on the same server, measured in the same run.
#[derive(Clone, Debug, Default, Serialize)]
struct RawRedis {
    command: String,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn start_server(
    spec: RunSpec,
    args: &Args,
    node: usize,
    redis: Option<&RedisProc>,
) -> Result<Server, String> {
    let target = spec.target;
    let bin = resolve_bin(target, args)?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = args.log_dir.join(format!(
        "fanout-bench-{}-{node}-{}.log",
        spec.label(),
        std::process::id()
    ));
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err_file = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = tokio::process::Command::new(&bin);
    match target {
        Target::Ferry => {
            cmd.arg("serve").arg("--listen").arg(addr.to_string());
            for set in [
                "limits.max_connections=200000",
                "limits.join_rate=100000",
                "limits.join_burst=100000",
                "rooms.auto_create=any",
                "limits.comment_rate=100",
                "limits.comment_burst=100",
            ] {
                cmd.arg("--set").arg(set);
            }
            for set in &args.server_set {
                cmd.arg("--set").arg(set);
            }
            cmd.arg("--node-id").arg(format!("bench-{node}"));
            if let Some(redis) = redis {
                cmd.arg("--set").arg("engine.kind=redis");
                cmd.env("FERRY_REDIS__URLS", redis.url());
            }
        }
        Target::Baseline => {
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--queue")
                .arg(args.baseline_queue.to_string());
        }
    }
    // Fan-out does not touch commerce: no journal file left behind in the working directory.
    cmd.env("NO_COLOR", "1")
        .env("FERRY_COMMERCE__JOURNAL_PATH", "")
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| "server exited at once".to_owned())?;
    lock(&CHILDREN).push(pid);
    let mut server = Server {
        child,
        pid: pid.to_string(),
        addr,
        bin,
        log,
    };
    // Ready when the port accepts connections (and, for Ferry, /healthz answers).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!(
                "{} exited during start ({status}); see {}",
                server.bin.display(),
                server.log.display()
            ));
        }
        let ready = match target {
            Target::Ferry => http_get(addr, "/healthz")
                .await
                .is_ok_and(|body| body.contains("200 OK")),
            Target::Baseline => TcpStream::connect(addr).await.is_ok(),
        };
        if ready {
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not become ready on {addr}; see {}",
                server.bin.display(),
                server.log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.0 GET; returns the whole response.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// [`ferry_metrics`] summed over every node.
async fn all_ferry_metrics(addrs: &[SocketAddr]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for addr in addrs {
        for (k, v) in ferry_metrics(*addr).await {
            *out.entry(k).or_insert(0.0) += v;
        }
    }
    out
}

/// Interesting counters from Ferry's /metrics (summed over labels).
async fn ferry_metrics(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(text) = http_get(addr, "/metrics").await else {
        return out;
    };
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("ferry_") {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = match name_labels.split_once('{') {
            Some((n, labels)) if n == "ferry_drops_total" || n == "ferry_disconnects_total" => {
                // Keep the reason: these are the ones that explain missing deliveries.
                let reason = labels
                    .split("reason=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?");
                format!("{n}{{{reason}}}")
            }
            Some((n, _)) => n.to_owned(),
            None => name_labels.to_owned(),
        };
        *out.entry(name).or_insert(0.0) += v;
    }
    out
}

impl Server {
    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    async fn stop(mut self, grace: Duration) -> String {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(&self.pid)
            .status();
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(s)) => format!("exited after SIGTERM: {s}"),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("did not exit within {grace:?} of SIGTERM; killed")
            }
        };
        lock(&CHILDREN).retain(|p| p.to_string() != self.pid);
        status
    }
}

#[derive(Clone, Debug, Default, Serialize)]
struct LogScan {
    lines: u64,
    warn: u64,
    error: u64,
    closed_by_server: u64,
    /// Distinct WARN/ERROR/close messages (timestamps stripped) and how often they appeared.
    messages: BTreeMap<String, u64>,
}

impl LogScan {
    fn merge(&mut self, other: LogScan) {
        self.lines += other.lines;
        self.warn += other.warn;
        self.error += other.error;
        self.closed_by_server += other.closed_by_server;
        for (k, v) in other.messages {
            *self.messages.entry(k).or_insert(0) += v;
        }
    }
}

fn scan_log(path: &Path) -> LogScan {
    let mut scan = LogScan::default();
    let mut text = String::new();
    if std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return scan;
    }
    for line in text.lines() {
        scan.lines += 1;
        let warn = line.contains(" WARN ");
        let error = line.contains(" ERROR ");
        let closed = line.contains("connection closed by server")
            || line.contains("slow consumer")
            || line.contains("closing on bad input");
        scan.warn += u64::from(warn);
        scan.error += u64::from(error);
        scan.closed_by_server += u64::from(line.contains("connection closed by server"));
        if warn || error || closed {
            // Drop the timestamp and per-connection ids so equal messages group together.
            let msg = line
                .split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .split_whitespace()
                .filter(|w| !w.starts_with("conn=") && !w.starts_with("user="))
                .collect::<Vec<_>>()
                .join(" ");
            let msg: String = msg.chars().take(200).collect();
            *scan.messages.entry(msg).or_insert(0) += 1;
        }
    }
    if scan.messages.len() > 20 {
        let keep: BTreeMap<String, u64> = scan
            .messages
            .iter()
            .take(20)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        scan.messages = keep;
    }
    scan
}

// ---------------------------------------------------------------------------------------------
// Clients.

type Ws = WebSocketStream<TcpStream>;

/// State shared by every client task of one run.
struct Ctx {
    target: Target,
    /// The nodes; client i connects to `addrs[i % len]`.
    addrs: Vec<SocketAddr>,
    room: String,
    read_buffer: usize,
    chatters: usize,
    /// Viewer latency histograms (from the intended send time), sharded by viewer.
    shards: Vec<Mutex<Histogram<u64>>>,
    /// Viewer latency from the actual send time.
    shards_actual: Vec<Mutex<Histogram<u64>>>,
    tcp_hist: Mutex<Histogram<u64>>,
    connect_hist: Mutex<Histogram<u64>>,
    join_hist: Mutex<Histogram<u64>>,
    send_lag: Mutex<Histogram<u64>>,
    /// Comment sent → its `ok` reply (the publish round trip, through Redis on that engine).
    ack_hist: Mutex<Histogram<u64>>,
    last_ack_us: AtomicU64,
    viewers_ready: AtomicUsize,
    viewers_failed: AtomicUsize,
    chatters_ready: AtomicUsize,
    chatters_failed: AtomicUsize,
    viewer_deliveries: AtomicU64,
    chatter_deliveries: AtomicU64,
    last_delivery_us: AtomicU64,
    sent: AtomicU64,
    acked_ok: AtomicU64,
    acked_err: AtomicU64,
    send_failures: AtomicU64,
    reject_reasons: Mutex<BTreeMap<String, u64>>,
    connect_errors: Mutex<BTreeMap<String, u64>>,
    /// Why viewer/chatter connections ended before the benchmark stopped them.
    early_ends: Mutex<BTreeMap<String, u64>>,
}

impl Ctx {
    fn new(target: Target, addrs: Vec<SocketAddr>, args: &Args) -> Self {
        Self {
            target,
            addrs,
            room: args.room.clone(),
            read_buffer: args.read_buffer,
            chatters: args.chatters,
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            shards_actual: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            tcp_hist: Mutex::new(new_histogram()),
            connect_hist: Mutex::new(new_histogram()),
            join_hist: Mutex::new(new_histogram()),
            send_lag: Mutex::new(new_histogram()),
            ack_hist: Mutex::new(new_histogram()),
            last_ack_us: AtomicU64::new(0),
            viewers_ready: AtomicUsize::new(0),
            viewers_failed: AtomicUsize::new(0),
            chatters_ready: AtomicUsize::new(0),
            chatters_failed: AtomicUsize::new(0),
            viewer_deliveries: AtomicU64::new(0),
            chatter_deliveries: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked_ok: AtomicU64::new(0),
            acked_err: AtomicU64::new(0),
            send_failures: AtomicU64::new(0),
            reject_reasons: Mutex::new(BTreeMap::new()),
            connect_errors: Mutex::new(BTreeMap::new()),
            early_ends: Mutex::new(BTreeMap::new()),
        }
    }

    fn join_frame(&self) -> String {
        format!(r#"{{"id":1,"cmd":"join","room":"{}"}}"#, self.room)
    }
}

/// TCP connect from `bind`, then the WebSocket handshake.
async fn open(ctx: &Ctx, client: usize, bind: IpAddr, token: &str) -> Result<Ws, String> {
    let started = Instant::now();
    let addr = ctx.addrs[client % ctx.addrs.len()];
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(bind, 0))
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = lock(&ctx.tcp_hist).record(started.elapsed().as_micros().max(1) as u64);
    let _ = stream.set_nodelay(true);
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| "token is not a header value".to_owned())?;
    request.headers_mut().insert("authorization", auth);
    let config = WebSocketConfig::default()
        .read_buffer_size(ctx.read_buffer)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Outcome of a join attempt.
enum Joined {
    Ok(Box<Ws>),
    /// Temporary refusal (join rate limit): try again later.
    Retry(String),
    Failed(String),
}

/// Connect and join. Ferry answers the join (`{"id":1,"ok":...}`); the baseline does not,
/// so there the client counts as joined once its join frame is written.
async fn connect_and_join(ctx: &Ctx, client: usize, bind: IpAddr, token: &str) -> Joined {
    let started = Instant::now();
    let mut ws = match open(ctx, client, bind, token).await {
        Ok(ws) => ws,
        Err(e) => return Joined::Failed(e),
    };
    let _ = lock(&ctx.connect_hist).record(started.elapsed().as_micros().max(1) as u64);
    if let Err(e) = ws.send(Message::text(ctx.join_frame())).await {
        return Joined::Failed(format!("send join: {e}"));
    }
    if ctx.target == Target::Baseline {
        let _ = lock(&ctx.join_hist).record(started.elapsed().as_micros().max(1) as u64);
        return Joined::Ok(Box::new(ws));
    }
    let wait = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(text)) => {
                    for line in text.as_str().split('\n') {
                        if !line.starts_with("{\"id\":1,") {
                            continue;
                        }
                        if line.starts_with("{\"id\":1,\"ok\"") {
                            return Ok(());
                        }
                        let temporary = line.contains("\"code\":15");
                        let name = json_str_field(line, "name").unwrap_or("?");
                        return Err((temporary, format!("join refused: {name}")));
                    }
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.map_or(0, |f| u16::from(f.code));
                    return Err((false, format!("closed {code} while joining")));
                }
                Ok(_) => {}
                Err(e) => return Err((false, format!("read while joining: {e}"))),
            }
        }
        Err((false, "eof while joining".to_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(())) => {
            let _ = lock(&ctx.join_hist).record(started.elapsed().as_micros().max(1) as u64);
            Joined::Ok(Box::new(ws))
        }
        Ok(Err((true, e))) => Joined::Retry(e),
        Ok(Err((false, e))) => Joined::Failed(e),
        Err(_) => Joined::Failed("no join reply within 30 s".into()),
    }
}

/// Connect and join with a few retries for temporary failures.
async fn setup(ctx: &Ctx, client: usize, bind: IpAddr, token: &str) -> Result<Ws, String> {
    let mut last = String::new();
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        match connect_and_join(ctx, client, bind, token).await {
            Joined::Ok(ws) => return Ok(*ws),
            Joined::Retry(e) => last = e,
            Joined::Failed(e) => {
                // Resource errors (ports, descriptors) may pass; protocol refusals will not.
                let retryable = e.starts_with("connect") || e.starts_with("handshake");
                last = e;
                if !retryable {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// A JSON string field's value, if it needs no unescaping (enough for names and codes).
fn json_str_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line.get(start..)?.find('"')?;
    line.get(start..start + len)
}

/// One comment found in a frame.
struct Seen {
    chatter: usize,
    seq: u64,
    intended_us: u64,
    sent_us: u64,
}

/// Every benchmark comment in a frame (Ferry events or baseline echoes alike).
fn scan_comments(text: &str) -> impl Iterator<Item = Seen> + '_ {
    text.match_indices(MARKER).filter_map(|(i, _)| {
        let mut fields = text.get(i + MARKER.len()..)?.splitn(5, '|');
        Some(Seen {
            chatter: fields.next()?.parse().ok()?,
            seq: fields.next()?.parse().ok()?,
            intended_us: fields.next()?.parse().ok()?,
            sent_us: fields.next()?.parse().ok()?,
        })
    })
}

/// What one viewer saw.
#[derive(Default)]
struct ViewerResult {
    joined: bool,
    received: u64,
    /// Comments that arrived with a sequence number not above the last one from the same
    /// chatter (duplicates or reordering).
    out_of_order: u64,
    /// Sequence numbers skipped (missing comments, or comments the server refused).
    skipped: u64,
}

async fn viewer(
    ctx: Arc<Ctx>,
    idx: usize,
    bind: IpAddr,
    token: String,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> ViewerResult {
    let mut result = ViewerResult::default();
    let ws = {
        let Ok(_permit) = gate.acquire().await else {
            return result;
        };
        match setup(&ctx, idx, bind, &token).await {
            Ok(ws) => ws,
            Err(e) => {
                ctx.viewers_failed.fetch_add(1, Relaxed);
                bump(&ctx.connect_errors, e);
                return result;
            }
        }
    };
    drop(token);
    result.joined = true;
    ctx.viewers_ready.fetch_add(1, Relaxed);
    let mut ws = ws;
    let shard = idx % SHARDS;
    let mut last_seq = vec![0u64; ctx.chatters];
    // One registration for the whole run (not one per frame on a shared notifier).
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let end = loop {
        tokio::select! {
            _ = &mut stopped => break None,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let now = unix_us();
                    let mut n = 0u64;
                    let mut h = None;
                    for seen in scan_comments(text.as_str()) {
                        let h = h.get_or_insert_with(|| {
                            (lock(&ctx.shards[shard]), lock(&ctx.shards_actual[shard]))
                        });
                        let _ = h.0.record(now.saturating_sub(seen.intended_us).clamp(1, MAX_LATENCY_US));
                        let _ = h.1.record(now.saturating_sub(seen.sent_us).clamp(1, MAX_LATENCY_US));
                        n += 1;
                        if let Some(last) = last_seq.get_mut(seen.chatter) {
                            if seen.seq <= *last {
                                result.out_of_order += 1;
                            } else {
                                result.skipped += seen.seq - *last - 1;
                                *last = seen.seq;
                            }
                        }
                    }
                    drop(h);
                    if n > 0 {
                        result.received += n;
                        ctx.viewer_deliveries.fetch_add(n, Relaxed);
                        ctx.last_delivery_us.fetch_max(now, Relaxed);
                    }
                    if ctx.target == Target::Ferry && text.as_str().contains("{\"push\":\"left\"") {
                        break Some("viewer removed from room (left push)".to_owned());
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Some(match frame {
                        Some(f) => format!("viewer closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "viewer closed by server (no code)".to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("viewer read error: {e}")),
                None => break Some("viewer connection ended (eof)".to_owned()),
            }
        }
    };
    match end {
        Some(reason) => {
            bump(&ctx.early_ends, reason);
            // Keep the task (not the socket) alive until the end so results are collected alike.
            let _ = (&mut stopped).await;
        }
        None => close_cleanly(&mut ws).await,
    }
    result
}

/// Close handshake (bounded), so the server sees an orderly close rather than a reset.
async fn close_cleanly(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// The send schedule shared by all chatters: comment k is due `k / rate` after `t0`.
#[derive(Clone, Copy)]
struct Schedule {
    t0: Instant,
    t0_unix_us: u64,
    rate: f64,
    total: u64,
    comment_bytes: usize,
}

impl Schedule {
    fn offset_us(&self, k: u64) -> u64 {
        (k as f64 * 1_000_000.0 / self.rate) as u64
    }
}

async fn chatter(
    ctx: Arc<Ctx>,
    id: usize,
    ws: Ws,
    schedule: Schedule,
    mut stop: watch::Receiver<bool>,
) {
    let mut ws = ws;
    let chatters = ctx.chatters.max(1) as u64;
    // This chatter sends global comments id, id + C, id + 2C, ...
    let mut k = id as u64;
    let mut seq = 0u64;
    let mut next_id = 2u64;
    // Command id → actual send time (µs), for the ack round trip.
    let mut in_flight: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let pad = "x".repeat(schedule.comment_bytes);
    let mut sending = k < schedule.total;
    let first_due = schedule.t0 + Duration::from_micros(schedule.offset_us(k));
    let due = tokio::time::sleep_until(first_due);
    tokio::pin!(due);
    // One registration for the whole run (not one per frame on a shared notifier).
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let end = loop {
        tokio::select! {
            _ = &mut stopped => break None,
            _ = &mut due, if sending => {
                seq += 1;
                let intended = schedule.t0_unix_us + schedule.offset_us(k);
                let sent_us = unix_us();
                let _ = lock(&ctx.send_lag).record(sent_us.saturating_sub(intended).clamp(1, MAX_LATENCY_US));
                let mut text = format!("{MARKER}{id}|{seq}|{intended}|{sent_us}|");
                let fill = schedule.comment_bytes.saturating_sub(text.len());
                text.push_str(&pad[..fill]);
                let frame = format!(
                    r#"{{"id":{next_id},"cmd":"comment","room":"{}","text":"{text}"}}"#,
                    ctx.room
                );
                next_id += 1;
                if let Err(e) = ws.send(Message::text(frame)).await {
                    ctx.send_failures.fetch_add(1, Relaxed);
                    break Some(format!("chatter send failed: {e}"));
                }
                ctx.sent.fetch_add(1, Relaxed);
                if ctx.target == Target::Ferry {
                    in_flight.insert(next_id - 1, sent_us);
                }
                k += chatters;
                if k < schedule.total {
                    due.as_mut().reset(schedule.t0 + Duration::from_micros(schedule.offset_us(k)));
                } else {
                    sending = false;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    let n = scan_comments(text).count() as u64;
                    ctx.chatter_deliveries.fetch_add(n, Relaxed);
                    // The baseline echoes comment commands (which also start with {"id":) and
                    // sends no replies; only Ferry's replies are acknowledgements.
                    let replies = if ctx.target == Target::Ferry { text } else { "" };
                    for line in replies.split('\n') {
                        // Replies to comments (ids >= 2); pushes start with {"push".
                        if !line.starts_with("{\"id\":") || line.starts_with("{\"id\":1,") {
                            continue;
                        }
                        let now = unix_us();
                        let id = line
                            .get(6..)
                            .and_then(|rest| rest.split(',').next())
                            .and_then(|n| n.parse::<u64>().ok());
                        if let Some(sent_us) = id.and_then(|id| in_flight.remove(&id)) {
                            let _ = lock(&ctx.ack_hist).record(now.saturating_sub(sent_us).clamp(1, MAX_LATENCY_US));
                            ctx.last_ack_us.fetch_max(now, Relaxed);
                        }
                        if line.contains("\"ok\":") {
                            ctx.acked_ok.fetch_add(1, Relaxed);
                        } else {
                            ctx.acked_err.fetch_add(1, Relaxed);
                            bump(&ctx.reject_reasons, json_str_field(line, "name").unwrap_or("?"));
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Some(match frame {
                        Some(f) => format!("chatter closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "chatter closed by server (no code)".to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("chatter read error: {e}")),
                None => break Some("chatter connection ended (eof)".to_owned()),
            }
        }
    };
    match end {
        Some(reason) => bump(&ctx.early_ends, reason),
        None => close_cleanly(&mut ws).await,
    }
}

// ---------------------------------------------------------------------------------------------
// One run against one target.

#[derive(Clone, Debug, Default, Serialize)]
struct Report {
    target: String,
    engine: String,
    nodes: usize,
    server_bin: String,
    /// One log per node, comma-separated.
    server_log: String,
    viewers_requested: usize,
    viewers_connected: usize,
    viewer_connect_failures: usize,
    connect_errors: BTreeMap<String, u64>,
    chatters_requested: usize,
    chatters_connected: usize,
    source_addresses: Vec<String>,
    connect_phase_s: f64,
    /// TcpExt ListenOverflows during the connect phase (system-wide; SYNs dropped because the
    /// server's accept queue was full, each costing the client a 1 s SYN retransmit).
    listen_overflows: u64,
    /// TCP connect alone (SYN → established).
    tcp_connect_ms_p50: f64,
    tcp_connect_ms_p99: f64,
    tcp_connect_ms_max: f64,
    /// TCP + WebSocket handshake.
    connect_ms_p50: f64,
    connect_ms_p99: f64,
    /// Connect start to join reply (baseline: to join written; it sends no reply).
    join_ms_p50: f64,
    join_ms_p99: f64,
    join_ms_max: f64,
    comments_scheduled: u64,
    comments_sent: u64,
    comments_accepted: u64,
    comments_rejected: u64,
    reject_reasons: BTreeMap<String, u64>,
    send_lag_ms_p99: f64,
    send_lag_ms_max: f64,
    /// Comment sent → `ok` reply (Ferry only): the publish round trip.
    ack_ms_p50: f64,
    ack_ms_p99: f64,
    ack_ms_max: f64,
    /// Accepted comments per second, first send → last reply.
    comments_accepted_per_s: f64,
    deliveries_expected: u64,
    deliveries_received: u64,
    completeness_pct: f64,
    viewers_complete: usize,
    out_of_order: u64,
    seq_skipped: u64,
    chatter_deliveries: u64,
    /// End-to-end latency from the intended send time (what a viewer experiences).
    latency: Percentiles,
    /// End-to-end latency from the actual send time (excludes load-generator lag).
    latency_from_actual_send: Percentiles,
    measure_window_s: f64,
    deliveries_per_s: f64,
    /// Summed over all nodes.
    server_cpu_s: f64,
    server_cpu_s_per_million: f64,
    /// The Redis server's CPU over the same window (Redis engine only).
    redis_cpu_s: f64,
    redis_rss_mib: f64,
    /// Raw `redis-benchmark` PUBLISH on the same Redis, just before the nodes started.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_redis_publish: Option<RawRedis>,
    loadgen_cpu_s: f64,
    /// Whole machine over the same window: busy share of all cores, steal share, and busy CPU
    /// not accounted to the server or the load generator (other processes, kernel threads).
    machine_busy_before_pct: f64,
    machine_busy_pct: f64,
    machine_steal_pct: f64,
    other_cpu_s: f64,
    server_rss_base_mib: f64,
    server_rss_idle_mib: f64,
    server_rss_per_idle_conn_kib: f64,
    server_rss_after_mib: f64,
    server_rss_peak_mib: f64,
    /// Sampled once a second during send + drain: where undelivered data waits.
    max_server_queued_frames: f64,
    max_server_unacked_kib: f64,
    max_client_unread_kib: f64,
    early_connection_ends: BTreeMap<String, u64>,
    server_metrics: BTreeMap<String, f64>,
    server_log_scan: LogScan,
    server_exit: String,
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn run_target(spec: RunSpec, args: &Args, run_index: usize) -> Result<Report, String> {
    let label = spec.label();
    let redis = match (spec.target, spec.engine) {
        (Target::Ferry, Engine::Redis) => {
            let redis = RedisProc::start(args).await?;
            eprintln!(
                "== {label}: redis-server pid {} on port {} (log {})",
                redis.pid,
                redis.port,
                redis.log.display()
            );
            Some(redis)
        }
        _ => None,
    };
    let mut raw = None;
    if let Some(redis) = &redis {
        let r = redis.publish_baseline(args, 50);
        match &r {
            Ok(r) => eprintln!(
                "== {label}: raw redis-benchmark PUBLISH: {:.0} requests/s (p50 {} ms, p99 {} ms)",
                r.requests_per_s, r.p50_ms, r.p99_ms
            ),
            Err(e) => eprintln!("== {label}: raw redis-benchmark failed: {e}"),
        }
        raw = r.ok();
    }
    let mut servers = Vec::with_capacity(spec.nodes);
    let mut started = Ok(());
    for node in 0..spec.nodes {
        match start_server(spec, args, node, redis.as_ref()).await {
            Ok(server) => {
                eprintln!(
                    "== {label}: node {node}: {} pid {} on {} (log {})",
                    server.bin.display(),
                    server.pid,
                    server.addr,
                    server.log.display()
                );
                servers.push(server);
            }
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => drive(spec, args, run_index, &servers, redis.as_ref()).await,
        Err(e) => Err(e),
    };
    let logs: Vec<PathBuf> = servers.iter().map(|s| s.log.clone()).collect();
    // Ferry drains for up to server.drain_timeout (10 s) on SIGTERM; allow a little more.
    let mut exits = Vec::new();
    for server in servers {
        exits.push(server.stop(Duration::from_secs(15)).await);
    }
    if let Some(redis) = redis {
        redis.stop().await;
    }
    let exit = exits.join("; ");
    eprintln!("== {label}: servers {exit}");
    let mut report = result?;
    report.server_exit = exit;
    report.raw_redis_publish = raw;
    let mut scan = LogScan::default();
    for log in &logs {
        scan.merge(scan_log(log));
    }
    report.server_log_scan = scan;
    Ok(report)
}

async fn drive(
    spec: RunSpec,
    args: &Args,
    run_index: usize,
    servers: &[Server],
    redis: Option<&RedisProc>,
) -> Result<Report, String> {
    let target = spec.target;
    let label = spec.label();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let ctx = Arc::new(Ctx::new(target, addrs.clone(), args));
    let pids: Vec<&str> = servers.iter().map(|s| s.pid.as_str()).collect();
    let sum_kib = |key: &str| -> u64 {
        pids.iter()
            .map(|p| proc_status_kib(p, key).unwrap_or(0))
            .sum()
    };
    let sum_cpu = || -> f64 { pids.iter().map(|p| proc_cpu_secs(p).unwrap_or(0.0)).sum() };
    let total_clients = args.viewers + args.chatters;
    let per_source = args.per_source.max(1);
    let sources = total_clients.div_ceil(per_source).max(1);
    // Each run uses its own source addresses, so a second run never competes with the first
    // run's TIME_WAIT sockets for ephemeral ports.
    let first = 1 + run_index * sources;
    if first + sources > 255 {
        return Err(format!(
            "{sources} source addresses per run do not fit in 127.0.0.1..127.0.0.254; raise --per-source"
        ));
    }
    let source_ips: Vec<IpAddr> = (0..sources)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, (first + i) as u8)))
        .collect();
    let bind_for = |i: usize| source_ips[i % sources];

    let key = jsonwebtoken::EncodingKey::from_secret(args.secret.as_bytes());
    let mut report = Report {
        target: label.clone(),
        engine: format!("{:?}", spec.engine).to_lowercase(),
        nodes: spec.nodes,
        server_bin: servers
            .first()
            .map(|s| s.bin.display().to_string())
            .unwrap_or_default(),
        server_log: servers
            .iter()
            .map(|s| s.log.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        viewers_requested: args.viewers,
        chatters_requested: args.chatters,
        source_addresses: source_ips.iter().map(|ip| ip.to_string()).collect(),
        ..Report::default()
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflows_before = tcp_ext("ListenOverflows").unwrap_or(0);
    let rss_base = sum_kib("VmRSS");

    // Viewers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connect_start = Instant::now();
    let mut viewers = Vec::with_capacity(args.viewers);
    for i in 0..args.viewers {
        let token = mint(&key, format!("v{i}"), &args.room)?;
        viewers.push(tokio::spawn(viewer(
            ctx.clone(),
            i,
            bind_for(i),
            token,
            gate.clone(),
            stop_rx.clone(),
        )));
    }
    let connect_deadline = connect_start + Duration::from_secs_f64(args.connect_timeout);
    let mut last_print = Instant::now();
    loop {
        let ready = ctx.viewers_ready.load(Relaxed);
        let failed = ctx.viewers_failed.load(Relaxed);
        if ready + failed >= args.viewers {
            break;
        }
        if Instant::now() > connect_deadline {
            eprintln!(
                "== {}: connect phase timed out with {ready} joined, {failed} failed",
                label
            );
            break;
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "   {}: viewers joined {ready}/{} (failed {failed}) after {:.1} s",
                label,
                args.viewers,
                connect_start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.connect_phase_s = round(connect_start.elapsed().as_secs_f64(), 2);
    report.viewers_connected = ctx.viewers_ready.load(Relaxed);
    report.viewer_connect_failures = ctx.viewers_failed.load(Relaxed);
    eprintln!(
        "== {}: {} viewers joined in {:.1} s ({} failed); settling {:.1} s",
        label,
        report.viewers_connected,
        report.connect_phase_s,
        report.viewer_connect_failures,
        args.settle
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_idle = sum_kib("VmRSS");

    // Chatters (after the idle RSS reading, so it covers viewers only).
    let mut chatter_ws = Vec::with_capacity(args.chatters);
    {
        let mut pending = Vec::with_capacity(args.chatters);
        for c in 0..args.chatters {
            let token = mint(&key, format!("c{c}"), &args.room)?;
            let ctx = ctx.clone();
            let gate = gate.clone();
            let bind = bind_for(args.viewers + c);
            pending.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.ok()?;
                // Chatter c talks to node c mod N, like viewer c.
                match setup(&ctx, c, bind, &token).await {
                    Ok(ws) => Some(ws),
                    Err(e) => {
                        bump(&ctx.connect_errors, format!("chatter: {e}"));
                        None
                    }
                }
            }));
        }
        for (c, p) in pending.into_iter().enumerate() {
            match tokio::time::timeout_at(
                connect_deadline.max(Instant::now()) + Duration::from_secs(60),
                p,
            )
            .await
            {
                Ok(Ok(Some(ws))) => chatter_ws.push((c, ws)),
                _ => {
                    ctx.chatters_failed.fetch_add(1, Relaxed);
                }
            }
        }
    }
    report.listen_overflows = tcp_ext("ListenOverflows")
        .unwrap_or(0)
        .saturating_sub(overflows_before);
    report.chatters_connected = chatter_ws.len();
    ctx.chatters_ready.store(chatter_ws.len(), Relaxed);
    if report.viewers_connected == 0 || chatter_ws.is_empty() {
        let _ = stop_tx.send(true);
        report.connect_errors = lock(&ctx.connect_errors).clone();
        return Err(format!(
            "{}: nothing to measure: {} viewers, {} chatters connected; errors: {:?}",
            label, report.viewers_connected, report.chatters_connected, report.connect_errors
        ));
    }
    // Let the join notices of the chatters go out before the clock starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Send phase.
    let total = (args.rate * args.duration).floor() as u64;
    let now_instant = Instant::now();
    let now_unix = unix_us();
    let lead = Duration::from_millis(200);
    let schedule = Schedule {
        t0: now_instant + lead,
        t0_unix_us: now_unix + lead.as_micros() as u64,
        rate: args.rate,
        total,
        comment_bytes: args.comment_bytes.max(48),
    };
    report.comments_scheduled = total;
    let machine_before = machine_cpu().unwrap_or_default();
    let cpu_before = sum_cpu();
    let redis_cpu_before = redis.and_then(|r| proc_cpu_secs(&r.pid)).unwrap_or(0.0);
    let self_cpu_before = proc_cpu_secs("self").unwrap_or(0.0);
    let mut chatters = Vec::with_capacity(chatter_ws.len());
    for (c, ws) in chatter_ws {
        chatters.push(tokio::spawn(chatter(
            ctx.clone(),
            c,
            ws,
            schedule,
            stop_rx.clone(),
        )));
    }
    eprintln!(
        "== {}: sending {total} comments at {}/s for {} s from {} chatters to {} viewers",
        label, args.rate, args.duration, report.chatters_connected, report.viewers_connected
    );
    let send_end = schedule.t0 + Duration::from_secs_f64(args.duration);
    let drain_deadline = send_end + Duration::from_secs_f64(args.drain);
    let mut last_print = Instant::now();
    let mut last_sample = Instant::now();
    let viewers_joined = report.viewers_connected as u64;
    loop {
        let sent = ctx.sent.load(Relaxed);
        let ok = ctx.acked_ok.load(Relaxed);
        let err = ctx.acked_err.load(Relaxed);
        let got = ctx.viewer_deliveries.load(Relaxed);
        let accepted = match target {
            Target::Ferry => ok,
            Target::Baseline => sent,
        };
        let all_sent = sent + ctx.send_failures.load(Relaxed) >= total
            || Instant::now() > send_end + Duration::from_secs(2);
        let all_acked = target == Target::Baseline || ok + err >= sent;
        if Instant::now() >= send_end && all_sent && all_acked && got >= accepted * viewers_joined {
            break;
        }
        if Instant::now() > drain_deadline {
            eprintln!(
                "== {}: drain timed out: {got} of {} deliveries",
                label,
                accepted * viewers_joined
            );
            break;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            let (client_unread, server_unacked) = addrs
                .iter()
                .map(|a| tcp_backlog(a.port()))
                .fold((0, 0), |acc, b| (acc.0 + b.0, acc.1 + b.1));
            let queued = if target == Target::Ferry {
                all_ferry_metrics(&addrs)
                    .await
                    .get("ferry_send_queue_frames")
                    .copied()
                    .unwrap_or(0.0)
            } else {
                0.0
            };
            report.max_client_unread_kib = report
                .max_client_unread_kib
                .max(round(client_unread as f64 / 1024.0, 1));
            report.max_server_unacked_kib = report
                .max_server_unacked_kib
                .max(round(server_unacked as f64 / 1024.0, 1));
            report.max_server_queued_frames = report.max_server_queued_frames.max(queued);
            if last_print.elapsed() > Duration::from_secs(2) {
                eprintln!(
                    "   {}: t={:.1} s sent {sent} acked {ok}+{err} deliveries {got}; server queued frames {queued}, \
                     unread by clients {} KiB, unacked from server {} KiB",
                    label,
                    Instant::now()
                        .saturating_duration_since(schedule.t0)
                        .as_secs_f64(),
                    client_unread / 1024,
                    server_unacked / 1024,
                );
                last_print = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = sum_cpu();
    let redis_cpu_after = redis.and_then(|r| proc_cpu_secs(&r.pid)).unwrap_or(0.0);
    let self_cpu_after = proc_cpu_secs("self").unwrap_or(0.0);
    let machine_after = machine_cpu().unwrap_or_default();
    let window_end_unix = unix_us();
    let rss_after = sum_kib("VmRSS");
    let rss_peak = sum_kib("VmHWM");
    if target == Target::Ferry {
        report.server_metrics = all_ferry_metrics(&addrs).await;
    }
    report.redis_cpu_s = round(redis_cpu_after - redis_cpu_before, 2);
    report.redis_rss_mib = round(
        kib_to_mib(
            redis
                .and_then(|r| proc_status_kib(&r.pid, "VmRSS"))
                .unwrap_or(0),
        ),
        1,
    );

    // Stop every client and collect.
    let _ = stop_tx.send(true);
    let mut viewer_results = Vec::with_capacity(viewers.len());
    for v in viewers {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), v).await {
            viewer_results.push(r);
        }
    }
    for c in chatters {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }

    let sent = ctx.sent.load(Relaxed);
    let ok = ctx.acked_ok.load(Relaxed);
    let err = ctx.acked_err.load(Relaxed);
    let accepted = match target {
        Target::Ferry => ok,
        Target::Baseline => sent,
    };
    let received = ctx.viewer_deliveries.load(Relaxed);
    let expected = accepted * viewers_joined;
    report.comments_sent = sent;
    report.comments_accepted = accepted;
    report.comments_rejected = err;
    report.reject_reasons = lock(&ctx.reject_reasons).clone();
    report.deliveries_expected = expected;
    report.deliveries_received = received;
    report.completeness_pct = if expected > 0 {
        round(100.0 * received as f64 / expected as f64, 3)
    } else {
        0.0
    };
    report.viewers_complete = viewer_results
        .iter()
        .filter(|r| r.joined && r.received == accepted)
        .count();
    report.out_of_order = viewer_results.iter().map(|r| r.out_of_order).sum();
    report.seq_skipped = viewer_results.iter().map(|r| r.skipped).sum();
    report.chatter_deliveries = ctx.chatter_deliveries.load(Relaxed);

    let mut latency = new_histogram();
    let mut latency_actual = new_histogram();
    for (a, b) in ctx.shards.iter().zip(&ctx.shards_actual) {
        latency
            .add(&*lock(a))
            .map_err(|e| format!("histogram merge: {e}"))?;
        latency_actual
            .add(&*lock(b))
            .map_err(|e| format!("histogram merge: {e}"))?;
    }
    report.latency = Percentiles::of(&latency);
    report.latency_from_actual_send = Percentiles::of(&latency_actual);
    {
        let t = lock(&ctx.tcp_hist);
        report.tcp_connect_ms_p50 = t.value_at_quantile(0.5) as f64 / 1000.0;
        report.tcp_connect_ms_p99 = t.value_at_quantile(0.99) as f64 / 1000.0;
        report.tcp_connect_ms_max = t.max() as f64 / 1000.0;
        let c = lock(&ctx.connect_hist);
        report.connect_ms_p50 = c.value_at_quantile(0.5) as f64 / 1000.0;
        report.connect_ms_p99 = c.value_at_quantile(0.99) as f64 / 1000.0;
        let j = lock(&ctx.join_hist);
        report.join_ms_p50 = j.value_at_quantile(0.5) as f64 / 1000.0;
        report.join_ms_p99 = j.value_at_quantile(0.99) as f64 / 1000.0;
        report.join_ms_max = j.max() as f64 / 1000.0;
        let s = lock(&ctx.send_lag);
        report.send_lag_ms_p99 = s.value_at_quantile(0.99) as f64 / 1000.0;
        report.send_lag_ms_max = s.max() as f64 / 1000.0;
        let a = lock(&ctx.ack_hist);
        if !a.is_empty() {
            report.ack_ms_p50 = a.value_at_quantile(0.5) as f64 / 1000.0;
            report.ack_ms_p99 = a.value_at_quantile(0.99) as f64 / 1000.0;
            report.ack_ms_max = a.max() as f64 / 1000.0;
        }
    }
    let last = ctx
        .last_delivery_us
        .load(Relaxed)
        .max(schedule.t0_unix_us + 1);
    let window_us = last
        .min(window_end_unix)
        .saturating_sub(schedule.t0_unix_us);
    report.measure_window_s = round(window_us as f64 / 1e6, 3);
    report.deliveries_per_s = if window_us > 0 {
        round(received as f64 / (window_us as f64 / 1e6), 1)
    } else {
        0.0
    };
    let last_ack = ctx.last_ack_us.load(Relaxed);
    if last_ack > schedule.t0_unix_us {
        report.comments_accepted_per_s = round(
            accepted as f64 / ((last_ack - schedule.t0_unix_us) as f64 / 1e6),
            1,
        );
    }
    report.server_cpu_s = round(cpu_after - cpu_before, 2);
    let all_deliveries = received + report.chatter_deliveries;
    report.server_cpu_s_per_million = if all_deliveries > 0 {
        round(report.server_cpu_s / all_deliveries as f64 * 1e6, 3)
    } else {
        0.0
    };
    report.loadgen_cpu_s = round(self_cpu_after - self_cpu_before, 2);
    let total = machine_after.2 - machine_before.2;
    if total > 0.0 {
        let busy = machine_after.0 - machine_before.0;
        report.machine_busy_pct = round(100.0 * busy / total, 1);
        report.machine_steal_pct = round(100.0 * (machine_after.1 - machine_before.1) / total, 1);
        report.other_cpu_s = round(
            (busy - report.server_cpu_s - report.loadgen_cpu_s - report.redis_cpu_s).max(0.0),
            2,
        );
    }
    report.server_rss_base_mib = round(kib_to_mib(rss_base), 1);
    report.server_rss_idle_mib = round(kib_to_mib(rss_idle), 1);
    report.server_rss_per_idle_conn_kib = if report.viewers_connected > 0 {
        round(
            rss_idle.saturating_sub(rss_base) as f64 / report.viewers_connected as f64,
            2,
        )
    } else {
        0.0
    };
    report.server_rss_after_mib = round(kib_to_mib(rss_after), 1);
    report.server_rss_peak_mib = round(kib_to_mib(rss_peak), 1);
    report.connect_errors = lock(&ctx.connect_errors).clone();
    report.early_connection_ends = lock(&ctx.early_ends).clone();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Output.

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn table(r: &Report, args: &Args) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    row("server", format!("`{}`", r.server_bin));
    row(
        "engine / nodes",
        format!("{} / {} (clients spread round-robin)", r.engine, r.nodes),
    );
    row(
        "viewers connected (joined)",
        format!("{} / {}", r.viewers_connected, r.viewers_requested),
    );
    row(
        "chatters connected",
        format!("{} / {}", r.chatters_connected, r.chatters_requested),
    );
    row("connect failures", fmt_map(&r.connect_errors));
    row("source addresses", r.source_addresses.join(", "));
    row("connect phase", format!("{:.1} s", r.connect_phase_s));
    row(
        "listen queue overflows while connecting",
        r.listen_overflows.to_string(),
    );
    row(
        "TCP connect p50 / p99 / max",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            r.tcp_connect_ms_p50, r.tcp_connect_ms_p99, r.tcp_connect_ms_max
        ),
    );
    row(
        "connect (TCP+WS handshake) p50 / p99",
        format!("{:.2} / {:.2} ms", r.connect_ms_p50, r.connect_ms_p99),
    );
    let join_label = if r.target == "baseline" {
        "join time p50 / p99 / max (no join reply: = join written)"
    } else {
        "join time p50 / p99 / max (connect start → join reply)"
    };
    row(
        join_label,
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            r.join_ms_p50, r.join_ms_p99, r.join_ms_max
        ),
    );
    row(
        "comments scheduled / sent / accepted",
        format!(
            "{} / {} / {}",
            r.comments_scheduled, r.comments_sent, r.comments_accepted
        ),
    );
    if r.comments_rejected > 0 {
        row(
            "comments rejected",
            format!("{} ({})", r.comments_rejected, fmt_map(&r.reject_reasons)),
        );
    }
    row(
        "send lag behind schedule p99 / max",
        format!("{:.2} / {:.2} ms", r.send_lag_ms_p99, r.send_lag_ms_max),
    );
    row(
        "deliveries received / expected (viewers)",
        format!("{} / {}", r.deliveries_received, r.deliveries_expected),
    );
    row("completeness", format!("{:.3} %", r.completeness_pct));
    row(
        "viewers with every comment",
        format!("{} / {}", r.viewers_complete, r.viewers_connected),
    );
    row(
        "out-of-order / skipped seq (viewers)",
        format!("{} / {}", r.out_of_order, r.seq_skipped),
    );
    let l = &r.latency;
    row(
        "e2e latency p50 / p90 / p99 / p99.9 / max",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        ),
    );
    let a = &r.latency_from_actual_send;
    row(
        "e2e from actual send p50 / p99 / max",
        format!("{:.2} / {:.2} / {:.2} ms", a.p50_ms, a.p99_ms, a.max_ms),
    );
    if r.ack_ms_p99 > 0.0 {
        row(
            "comment ack (send → ok reply) p50 / p99 / max",
            format!(
                "{:.2} / {:.2} / {:.2} ms",
                r.ack_ms_p50, r.ack_ms_p99, r.ack_ms_max
            ),
        );
        row(
            "comments accepted/s (first send → last reply)",
            format!("{:.1}", r.comments_accepted_per_s),
        );
    }
    row(
        "deliveries/s (viewers)",
        format!("{:.0} over {:.2} s", r.deliveries_per_s, r.measure_window_s),
    );
    row(
        "chatter deliveries (also fanned out)",
        r.chatter_deliveries.to_string(),
    );
    row(
        "server CPU during send+drain",
        format!("{:.2} s", r.server_cpu_s),
    );
    row(
        "server CPU s per 1M deliveries (viewers+chatters)",
        format!("{:.3} s", r.server_cpu_s_per_million),
    );
    if r.engine == "redis" {
        row(
            "redis-server CPU during send+drain / RSS after",
            format!("{:.2} s / {:.1} MiB", r.redis_cpu_s, r.redis_rss_mib),
        );
        if let Some(raw) = &r.raw_redis_publish {
            row(
                "raw redis-benchmark PUBLISH (same Redis, before the run)",
                format!(
                    "{:.0} requests/s, p50 {} ms, p99 {} ms",
                    raw.requests_per_s, raw.p50_ms, raw.p99_ms
                ),
            );
        }
    }
    row(
        "load-generator CPU during send+drain",
        format!("{:.2} s", r.loadgen_cpu_s),
    );
    row(
        "machine CPU busy / steal during send+drain (all cores)",
        format!(
            "{:.1} % / {:.1} % (other processes {:.2} s; {:.1} % busy just before the run)",
            r.machine_busy_pct, r.machine_steal_pct, r.other_cpu_s, r.machine_busy_before_pct
        ),
    );
    row(
        "server RSS base / idle / after / peak",
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} MiB",
            r.server_rss_base_mib,
            r.server_rss_idle_mib,
            r.server_rss_after_mib,
            r.server_rss_peak_mib
        ),
    );
    row(
        "server RSS per idle connection",
        format!("{:.2} KiB", r.server_rss_per_idle_conn_kib),
    );
    row(
        "backlog max (1 s samples): server queues / server→client in flight / unread by clients",
        format!(
            "{} frames / {:.0} KiB / {:.0} KiB",
            if r.target.starts_with("ferry") {
                format!("{:.0}", r.max_server_queued_frames)
            } else {
                "n/a".to_owned()
            },
            r.max_server_unacked_kib,
            r.max_client_unread_kib
        ),
    );
    row("connections ended early", fmt_map(&r.early_connection_ends));
    if !r.server_metrics.is_empty() {
        let keys = [
            "ferry_events_published_total",
            "ferry_events_delivered_total",
            "ferry_frames_out_total",
            "ferry_drops_total{slow_consumer}",
            "ferry_drops_total{stream_gap}",
            "ferry_errors_sent_total",
            "ferry_rate_limited_total",
            "ferry_joins_refused_total",
        ];
        let parts: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                r.server_metrics
                    .get(*k)
                    .map(|v| format!("{}={v}", k.trim_start_matches("ferry_")))
            })
            .collect();
        row("server metrics", parts.join(", "));
        let closes: Vec<String> = r
            .server_metrics
            .iter()
            .filter(|(k, v)| k.starts_with("ferry_disconnects_total") && **v > 0.0)
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("ferry_disconnects_total")))
            .collect();
        if !closes.is_empty() {
            row("server disconnects by reason", closes.join(", "));
        }
    }
    let s = &r.server_log_scan;
    row(
        "server log",
        format!(
            "{} lines, {} WARN, {} ERROR, {} closed-by-server (`{}`)",
            s.lines, s.warn, s.error, s.closed_by_server, r.server_log
        ),
    );
    row("server exit", r.server_exit.clone());

    let mut out = format!(
        "\n### {} — {} viewers, {} chatters, {}/s for {} s\n\n| metric | value |\n|---|---|\n",
        r.target, args.viewers, args.chatters, args.rate, args.duration
    );
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {} |\n", v.replace('|', "\\|")));
    }
    let notes = caveats(r);
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&format!("> ⚠ {n}\n"));
        }
    }
    if !s.messages.is_empty() {
        out.push_str("\nServer log WARN/ERROR/close messages (count × message):\n");
        for (m, n) in &s.messages {
            out.push_str(&format!("- {n} × `{m}`\n"));
        }
    }
    out
}

/// What a reader must know before trusting a run's numbers.
fn caveats(r: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if r.completeness_pct < 99.9 {
        notes.push(format!(
            "{}: only {:.1} % of expected deliveries arrived; latency percentiles cover only \
             delivered comments and CPU per 1M is per delivered event",
            r.target, r.completeness_pct
        ));
    }
    if r.machine_busy_pct > 90.0 {
        notes.push(format!(
            "{}: the machine was {:.0} % busy during the send phase (server {:.1} s + load \
             generator {:.1} s CPU): saturated, latency is mostly queueing",
            r.target, r.machine_busy_pct, r.server_cpu_s, r.loadgen_cpu_s
        ));
    }
    if r.other_cpu_s > 1.0 + 0.05 * (r.server_cpu_s + r.loadgen_cpu_s) {
        notes.push(format!(
            "{}: other processes used {:.1} s of CPU during the send phase (interference)",
            r.target, r.other_cpu_s
        ));
    }
    if r.send_lag_ms_p99 > 100.0 {
        notes.push(format!(
            "{}: the load generator fell behind its schedule (send lag p99 {:.0} ms); latency is \
             still measured from the intended send time",
            r.target, r.send_lag_ms_p99
        ));
    }
    notes
}

#[derive(Serialize)]
struct Ratios {
    p99_latency: f64,
    p50_latency: f64,
    cpu_per_million: f64,
    rss_per_connection: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        round(a / b, 2)
    } else {
        f64::NAN
    }
}

fn comparison(f: &Report, b: &Report) -> (String, Ratios) {
    let ratios = Ratios {
        p99_latency: ratio(f.latency.p99_ms, b.latency.p99_ms),
        p50_latency: ratio(f.latency.p50_ms, b.latency.p50_ms),
        cpu_per_million: ratio(f.server_cpu_s_per_million, b.server_cpu_s_per_million),
        rss_per_connection: ratio(
            f.server_rss_per_idle_conn_kib,
            b.server_rss_per_idle_conn_kib,
        ),
    };
    let mut out = String::from(
        "\n### ferry vs baseline\n\n| metric | ferry | baseline | ferry / baseline |\n|---|---|---|---|\n",
    );
    let mut line = |k: &str, a: f64, bb: f64, unit: &str| {
        out.push_str(&format!(
            "| {k} | {a:.3} {unit} | {bb:.3} {unit} | {} |\n",
            if bb > 0.0 {
                format!("{:.2}×", a / bb)
            } else {
                "n/a".to_owned()
            }
        ));
    };
    line("completeness", f.completeness_pct, b.completeness_pct, "%");
    line("e2e latency p50", f.latency.p50_ms, b.latency.p50_ms, "ms");
    line("e2e latency p99", f.latency.p99_ms, b.latency.p99_ms, "ms");
    line(
        "e2e latency p99.9",
        f.latency.p999_ms,
        b.latency.p999_ms,
        "ms",
    );
    line("e2e latency max", f.latency.max_ms, b.latency.max_ms, "ms");
    line(
        "server CPU per 1M deliveries",
        f.server_cpu_s_per_million,
        b.server_cpu_s_per_million,
        "s",
    );
    line(
        "server CPU (send+drain)",
        f.server_cpu_s,
        b.server_cpu_s,
        "s",
    );
    line(
        "server RSS per idle connection",
        f.server_rss_per_idle_conn_kib,
        b.server_rss_per_idle_conn_kib,
        "KiB",
    );
    line(
        "server RSS idle",
        f.server_rss_idle_mib,
        b.server_rss_idle_mib,
        "MiB",
    );
    line("join time p99", f.join_ms_p99, b.join_ms_p99, "ms");
    if f.completeness_pct < 99.9 || b.completeness_pct < 99.9 {
        out.push_str(
            "\n> ⚠ Completeness differs from 100 %: latency and CPU-per-delivery ratios compare \
             different sets of delivered events and are not like-for-like.\n",
        );
    }
    (out, ratios)
}

/// What the Redis engine (over N nodes) adds to single-node, embedded-engine delivery.
#[derive(Serialize)]
struct EngineDelta {
    p50_latency_added_ms: f64,
    p99_latency_added_ms: f64,
    ack_p99_added_ms: f64,
    server_cpu_per_million_ratio: f64,
    redis_cpu_s: f64,
    /// Ferry's accepted comments/s over raw `redis-benchmark` PUBLISH requests/s.
    publish_rate_over_raw_publish: f64,
}

fn engine_comparison(m: &Report, r: &Report) -> (String, EngineDelta) {
    let raw = r.raw_redis_publish.clone().unwrap_or_default();
    let delta = EngineDelta {
        p50_latency_added_ms: round(r.latency.p50_ms - m.latency.p50_ms, 3),
        p99_latency_added_ms: round(r.latency.p99_ms - m.latency.p99_ms, 3),
        ack_p99_added_ms: round(r.ack_ms_p99 - m.ack_ms_p99, 3),
        server_cpu_per_million_ratio: ratio(r.server_cpu_s_per_million, m.server_cpu_s_per_million),
        redis_cpu_s: r.redis_cpu_s,
        publish_rate_over_raw_publish: if raw.requests_per_s > 0.0 {
            round(r.comments_accepted_per_s / raw.requests_per_s, 4)
        } else {
            f64::NAN
        },
    };
    let mut out = format!(
        "\n### {} vs {} (embedded engine, one node)\n\n| metric | {} | {} | difference |\n|---|---|---|---|\n",
        r.target, m.target, m.target, r.target
    );
    let mut line = |k: &str, a: f64, b: f64, unit: &str| {
        out.push_str(&format!(
            "| {k} | {a:.3} {unit} | {b:.3} {unit} | {:+.3} {unit} |\n",
            b - a
        ));
    };
    line("completeness", m.completeness_pct, r.completeness_pct, "%");
    line("e2e latency p50", m.latency.p50_ms, r.latency.p50_ms, "ms");
    line("e2e latency p99", m.latency.p99_ms, r.latency.p99_ms, "ms");
    line("e2e latency max", m.latency.max_ms, r.latency.max_ms, "ms");
    line("comment ack p99", m.ack_ms_p99, r.ack_ms_p99, "ms");
    line("deliveries/s", m.deliveries_per_s, r.deliveries_per_s, "");
    line(
        "server CPU per 1M deliveries (all nodes)",
        m.server_cpu_s_per_million,
        r.server_cpu_s_per_million,
        "s",
    );
    line("Redis CPU (send+drain)", 0.0, r.redis_cpu_s, "s");
    if raw.requests_per_s > 0.0 {
        out.push_str(&format!(
            "\nRaw `redis-benchmark` PUBLISH on the same Redis in this run: {:.0} requests/s \
             (p50 {} ms, p99 {} ms); Ferry accepted {:.1} comments/s (each one publish script), \
             {:.4} of the raw rate. Command: `{}`\n",
            raw.requests_per_s,
            raw.p50_ms,
            raw.p99_ms,
            r.comments_accepted_per_s,
            delta.publish_rate_over_raw_publish,
            raw.command
        ));
    }
    (out, delta)
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    mem_gib: f64,
    loadgen_threads: usize,
    note: String,
}

#[derive(Serialize)]
struct Output<'a> {
    config: serde_json::Value,
    machine: &'a Machine,
    runs: &'a [Report],
    failures: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    ratios_ferry_over_baseline: Option<Ratios>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_engine_over_memory: Option<EngineDelta>,
}

// ---------------------------------------------------------------------------------------------

/// Share of all cores busy over `window` (other processes, before a run).
fn busy_over(window: Duration) -> f64 {
    let a = machine_cpu().unwrap_or_default();
    std::thread::sleep(window);
    let b = machine_cpu().unwrap_or_default();
    let total = b.2 - a.2;
    if total > 0.0 {
        100.0 * (b.0 - a.0) / total
    } else {
        0.0
    }
}

fn raise_nofile(needed: u64) -> Result<u64, String> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE
        .get()
        .map_err(|e| format!("getrlimit: {e}"))?;
    let nr_open = proc_status_like_plain("/proc/sys/fs/nr_open").unwrap_or(hard);
    let want = needed.max(soft);
    if want > hard {
        // Raising the hard limit needs CAP_SYS_RESOURCE; try, and fall back to the soft one.
        let new_hard = want.max(hard).min(nr_open);
        match Resource::NOFILE.set(new_hard, new_hard) {
            Ok(()) => return Ok(new_hard),
            Err(e) => eprintln!(
                "fanout-bench: cannot raise the hard RLIMIT_NOFILE from {hard} to {new_hard}: {e}"
            ),
        }
    }
    rlimit::increase_nofile_limit(u64::MAX).map_err(|e| format!("setrlimit: {e}"))
}

fn proc_status_like_plain(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn watchdog(deadline: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!(
            "fanout-bench: hard deadline of {deadline:?} reached; killing the server and exiting"
        );
        for pid in lock(&CHILDREN).iter() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        let _ = std::io::stderr().flush();
        std::process::exit(3);
    });
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.rate <= 0.0 || args.duration <= 0.0 || args.viewers == 0 || args.chatters == 0 {
        eprintln!("error: --rate, --duration, --viewers and --chatters must be positive");
        return ExitCode::from(2);
    }
    let single = |target| RunSpec {
        target,
        engine: Engine::Memory,
        nodes: 1,
    };
    let clustered = RunSpec {
        target: Target::Ferry,
        engine: Engine::Redis,
        nodes: args.nodes.max(1),
    };
    let targets: Vec<RunSpec> = match args.target {
        TargetArg::Ferry => vec![RunSpec {
            target: Target::Ferry,
            engine: args.engine,
            nodes: args.nodes.max(1),
        }],
        TargetArg::Baseline => vec![single(Target::Baseline)],
        TargetArg::Both => vec![single(Target::Ferry), single(Target::Baseline)],
        TargetArg::Engines => vec![single(Target::Ferry), clustered],
    };
    if targets
        .iter()
        .any(|t| t.nodes > 1 && t.engine == Engine::Memory)
    {
        eprintln!(
            "error: more than one node needs --engine redis (memory nodes do not share rooms)"
        );
        return ExitCode::from(2);
    }
    // Client sockets plus slack; the server raises its own limit (and inherits a raised hard
    // limit from us).
    let needed = (args.viewers + args.chatters) as u64 + 1024;
    match raise_nofile(needed) {
        Ok(n) if n < (args.viewers + args.chatters) as u64 + 256 => {
            eprintln!(
                "error: RLIMIT_NOFILE is {n}, too low for {} connections",
                args.viewers + args.chatters
            );
            return ExitCode::from(2);
        }
        Ok(n) => eprintln!("fanout-bench: RLIMIT_NOFILE {n}"),
        Err(e) => eprintln!("fanout-bench: cannot raise RLIMIT_NOFILE: {e}"),
    }
    let per_target =
        args.connect_timeout + 60.0 + args.settle + 2.0 + args.duration + args.drain + 2.0 + 40.0;
    let deadline = args
        .deadline
        .unwrap_or(per_target * targets.len() as f64 + 30.0);
    watchdog(Duration::from_secs_f64(deadline));

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let machine = Machine {
        cores,
        mem_gib: round(mem_total_gib(), 1),
        loadgen_threads: threads,
        note: format!(
            "load generator and server share this machine ({cores} cores, {:.1} GiB); \
             latency and CPU include contention between them; loopback only",
            mem_total_gib()
        ),
    };

    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let waited = Instant::now();
        let mut quiet = busy_over(Duration::from_secs(1));
        while quiet > 15.0 && waited.elapsed().as_secs_f64() < args.wait_quiet {
            eprintln!(
                "fanout-bench: machine {quiet:.0} % busy (other processes); waiting for it to quiet down ({:.0} s left)",
                args.wait_quiet - waited.elapsed().as_secs_f64()
            );
            quiet = busy_over(Duration::from_secs(2));
        }
        eprintln!(
            "fanout-bench: machine CPU busy before the {} run: {quiet:.1} %",
            target.label()
        );
        match runtime.block_on(run_target(*target, &args, i)) {
            Ok(mut r) => {
                r.machine_busy_before_pct = round(quiet, 1);
                reports.push(r)
            }
            Err(e) => {
                eprintln!("fanout-bench: {} run failed: {e}", target.label());
                failures.push(format!("{}: {e}", target.label()));
            }
        }
        // Let the closed connections' teardown finish before the next server starts.
        if i + 1 < targets.len() {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));

    println!(
        "\n## fanout-bench: {} viewers, {} chatters, {} comments/s for {} s, {}-byte comments",
        args.viewers, args.chatters, args.rate, args.duration, args.comment_bytes
    );
    println!("\n> Note: {}.", machine.note);
    println!(
        "> Latency = receive time − intended send time (open-model schedule), measured by every \
         viewer on the same clock; deliveries/s over first send → last delivery; server CPU from \
         /proc/PID/stat over send + drain."
    );
    for r in &reports {
        print!("{}", table(r, &args));
    }
    let mut ratios = None;
    if let (Some(f), Some(b)) = (
        reports.iter().find(|r| r.target == "ferry"),
        reports.iter().find(|r| r.target == "baseline"),
    ) {
        let (text, rt) = comparison(f, b);
        print!("{text}");
        ratios = Some(rt);
    }
    let mut engine_delta = None;
    if let (Some(m), Some(r)) = (
        reports.iter().find(|r| r.target == "ferry"),
        reports.iter().find(|r| r.engine == "redis"),
    ) {
        let (text, delta) = engine_comparison(m, r);
        print!("{text}");
        engine_delta = Some(delta);
    }
    for f in &failures {
        println!("\n**run failed**: {f}");
    }
    if let Some(path) = &args.json {
        let config = serde_json::json!({
            "target": format!("{:?}", args.target).to_lowercase(),
            "viewers": args.viewers,
            "chatters": args.chatters,
            "rate": args.rate,
            "duration_s": args.duration,
            "comment_bytes": args.comment_bytes,
            "per_source": args.per_source,
            "connect_concurrency": args.connect_concurrency,
            "read_buffer": args.read_buffer,
            "room": args.room,
            "server_set": args.server_set,
            "nodes": args.nodes,
            "engine": format!("{:?}", args.engine).to_lowercase(),
            "baseline_queue": args.baseline_queue,
        });
        let out = Output {
            config,
            machine: &machine,
            runs: &reports,
            failures: &failures,
            ratios_ferry_over_baseline: ratios,
            redis_engine_over_memory: engine_delta,
        };
        match serde_json::to_string_pretty(&out) {
            Ok(text) => match std::fs::write(path, text + "\n") {
                Ok(()) => eprintln!("fanout-bench: wrote {}", path.display()),
                Err(e) => eprintln!("fanout-bench: cannot write {}: {e}", path.display()),
            },
            Err(e) => eprintln!("fanout-bench: cannot encode JSON: {e}"),
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
