//! `sale-bench`: the flash-sale buy burst benchmark.
//!
//! Starts a Ferry server (embedded engine with a journal in a temp dir, or `--engine redis`
//! with its own `redis-server`), creates a product and a room, connects `--buyers` SDK clients
//! that join the room, launches a sale that starts a few seconds later, and then sends
//! `--buys` buy commands spread evenly over `--window` seconds from the start instant (open
//! model: buy k is due at start + k·window/buys whatever happened before). Latency is measured
//! from each buy's intended send time to its reply. Afterwards it reads the sale's order-event
//! stream and checks the verdicts: reservations = min(stock, successes), no buyer above the
//! limit, every success the client saw is in the stream.
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/bench-target cargo build --release -p ferry -p ferry-loadtest
//! /tmp/bench-target/release/sale-bench --buyers 10000 --buys 20000 --window 1 --stock 1000
//! ```

use clap::{Parser, ValueEnum};
use ferry_client::protocol::commerce::SaleSpec;
use ferry_client::{Client, ClientError, ClientOptions};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEV_SECRET: &str = "ferry-dev-secret-change-me";
const ROOM: &str = "sale-bench";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Engine {
    Memory,
    Redis,
}

#[derive(Parser, Debug)]
#[command(
    name = "sale-bench",
    about = "Flash-sale buy burst benchmark for Ferry"
)]
struct Args {
    /// Buyers (SDK connections), spread over 127.0.0.x source addresses.
    #[arg(long, default_value_t = 10_000)]
    buyers: usize,
    /// Buy commands in the burst (buyer i sends buys i, i+buyers, ...; each with its own key).
    #[arg(long, default_value_t = 20_000)]
    buys: usize,
    /// The burst lasts this long from the sale's start instant, seconds.
    #[arg(long, default_value_t = 1.0)]
    window: f64,
    /// Units on sale.
    #[arg(long, default_value_t = 1_000)]
    stock: u64,
    /// Per-buyer limit.
    #[arg(long, default_value_t = 2)]
    limit: u32,
    #[arg(long, value_enum, default_value = "memory")]
    engine: Engine,
    /// Ferry binary (default: `ferry` next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Most connections per source address.
    #[arg(long, default_value_t = 5_000)]
    per_source: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    sub: String,
    name: String,
    role: &'a str,
    room: &'a str,
    market: &'a str,
    exp: u64,
}

fn token(key: &jsonwebtoken::EncodingKey, user: String, role: &str) -> Result<String, String> {
    let claims = TokenClaims {
        name: user.clone(),
        sub: user,
        role,
        room: "*",
        market: "us",
        exp: unix_ms() / 1000 + 3600,
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, key)
        .map_err(|e| format!("cannot mint a token: {e}"))
}

/// A minimal HTTP/1.1 request; returns status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or("no status line")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies: good enough to strip the size lines for JSON parsing.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()) || l.is_empty())
            .collect::<Vec<_>>()
            .join("")
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

#[derive(Default, Serialize)]
struct Report {
    engine: String,
    buyers: usize,
    buyers_joined: usize,
    buys_scheduled: usize,
    stock: u64,
    per_buyer_limit: u32,
    window_s: f64,
    outcomes: BTreeMap<String, u64>,
    latency_ms_p50: f64,
    latency_ms_p90: f64,
    latency_ms_p99: f64,
    latency_ms_p999: f64,
    latency_ms_max: f64,
    /// Reservations per second over first send → last reservation reply.
    reservations_per_s: f64,
    /// Answers (any outcome) per second over first send → last reply.
    answers_per_s: f64,
    server_cpu_s: f64,
    redis_cpu_s: f64,
    loadgen_cpu_s: f64,
    verdict_reserved_in_stream: u64,
    verdict_reservations_le_stock: bool,
    verdict_no_buyer_over_limit: bool,
    verdict_client_successes_equal_stream: bool,
    server_log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Hard deadline: the benchmark stops by itself.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        eprintln!("sale-bench: deadline reached, exiting");
        std::process::exit(3);
    });
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            print_report(&report);
            if let Some(path) = &args.json {
                if let Ok(text) = serde_json::to_string_pretty(&report) {
                    let _ = std::fs::write(path, text + "\n");
                }
            }
            let ok = report.verdict_reservations_le_stock
                && report.verdict_no_buyer_over_limit
                && report.verdict_client_successes_equal_stream;
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("sale-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<Report, String> {
    let _ = rlimit::increase_nofile_limit((args.buyers as u64 + 2048).max(1024));
    let dir = std::env::temp_dir().join(format!("sale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("ferry")))
            .ok_or("cannot find the ferry binary; pass --server-bin")?,
    };
    let mut redis = None;
    let mut cmd = tokio::process::Command::new(&bin);
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    cmd.args(["serve", "--listen", &addr.to_string()])
        .args(["--set", "limits.max_connections=200000"])
        .args([
            "--set",
            "limits.join_rate=100000",
            "--set",
            "limits.join_burst=100000",
        ])
        .args(["--set", "rooms.auto_create=any"])
        .env("FERRY_COMMERCE__JOURNAL_PATH", dir.join("commerce.journal"));
    if args.engine == Engine::Redis {
        let rport = free_port()?;
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &rport.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", rport))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cmd.args(["--set", "engine.kind=redis"])
            .env("FERRY_REDIS__URLS", format!("redis://127.0.0.1:{rport}/"));
        redis = Some(child);
    }
    let log_path = dir.join("ferry.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut server = cmd
        .env("NO_COLOR", "1")
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let server_pid = server.id().unwrap_or(0);
    let redis_pid = redis.as_ref().and_then(|r| r.id()).unwrap_or(0);
    let key = jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes());
    let host = token(&key, "host".into(), "host")?;
    let admin = token(&key, "ops".into(), "admin")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(http(addr, "GET", "/readyz", &host, "").await, Ok((200, _))) {
        if Instant::now() > deadline {
            return Err(format!("server not ready; see {}", log_path.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let product = r#"{"title":"藤编篮","price_cny":5900,"markets":{"us":true}}"#;
    let (status, text) = http(addr, "PUT", "/api/products/basket", &host, product).await?;
    if status != 200 {
        return Err(format!("PUT product: {status} {text}"));
    }
    let url = format!("ws://{addr}/ws");
    let (host_client, _host_events) = Client::connect(ClientOptions::new(url.clone(), host));
    host_client
        .join(ROOM)
        .await
        .map_err(|e| format!("host join: {e}"))?;

    // Buyers connect and join.
    eprintln!("sale-bench: connecting {} buyers", args.buyers);
    let sources = args.buyers.div_ceil(args.per_source.max(1)).max(1);
    let mut clients = Vec::with_capacity(args.buyers);
    let mut joins = Vec::new();
    for i in 0..args.buyers {
        let mut o = ClientOptions::new(url.clone(), token(&key, format!("b{i}"), "viewer")?);
        o.bind = Some(IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1,
            1 + (i % sources) as u8,
        )));
        o.read_buffer_bytes = 4096;
        o.event_buffer = 16;
        o.request_timeout = Duration::from_secs(30);
        let (c, events) = Client::connect(o);
        drop(events);
        let c = Arc::new(c);
        clients.push(c.clone());
        joins.push(tokio::spawn(async move { c.join(ROOM).await.is_ok() }));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut joined = 0;
    for j in joins {
        if matches!(j.await, Ok(true)) {
            joined += 1;
        }
    }
    eprintln!("sale-bench: {joined} buyers joined; launching the sale");
    let spec = SaleSpec {
        product: "basket".into(),
        quantity: args.stock,
        price_cny: 5900,
        per_buyer_limit: args.limit,
        starts_at: None,
        starts_in_secs: Some(3),
        duration_secs: 600,
        hold_secs: 300,
    };
    let sale = host_client
        .start_sale(ROOM, spec)
        .await
        .map_err(|e| format!("start sale: {e}"))?;

    // The burst: buy k is due at start + k·window/buys on the server's clock.
    let latencies = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?,
    ));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let successes = Arc::new(Mutex::new(HashMap::<usize, HashSet<String>>::new()));
    let last_reply = Arc::new(Mutex::new((0u64, 0u64)));
    let cpu_before = proc_cpu_secs(server_pid);
    let self_before = proc_cpu_secs(std::process::id());
    let redis_before = proc_cpu_secs(redis_pid);
    let step_us = args.window * 1e6 / args.buys.max(1) as f64;
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, sale_id) = (c.clone(), sale.id.clone());
        let (latencies, outcomes, successes, last_reply) = (
            latencies.clone(),
            outcomes.clone(),
            successes.clone(),
            last_reply.clone(),
        );
        let (buys, buyers, starts_at) = (args.buys, args.buyers, sale.starts_at);
        tasks.push(tokio::spawn(async move {
            let mut k = i;
            while k < buys {
                // Local instant of the intended send, from the server-clock start.
                let due_server_ms = starts_at as f64 + k as f64 * step_us / 1000.0;
                let wait = due_server_ms - c.server_now_ms();
                if wait > 0.0 {
                    tokio::time::sleep(Duration::from_micros((wait * 1000.0) as u64)).await;
                }
                let intended =
                    Instant::now() - Duration::from_micros(((-wait).max(0.0) * 1000.0) as u64);
                // A press that lands a few ms before the start (clock estimates differ by
                // about a round trip) is told how long to wait; the same key is retried,
                // like a Buy button would.
                let result = loop {
                    match c.buy(ROOM, sale_id.clone(), 1, format!("k{k}")).await {
                        Err(ClientError::Server(e)) if e.name == "sale_not_started" => {
                            let wait = e.retry_after_ms.unwrap_or(5).min(1_000);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        other => break other,
                    }
                };
                let elapsed = intended.elapsed().as_micros().max(1) as u64;
                let now = unix_ms();
                let label = match &result {
                    Ok(r) => {
                        if let Ok(mut s) = successes.lock() {
                            s.entry(i).or_default().insert(r.reservation.id.0.clone());
                        }
                        if let Ok(mut l) = last_reply.lock() {
                            l.0 = l.0.max(now);
                        }
                        "reserved".to_owned()
                    }
                    Err(ClientError::Server(e)) => e.name.clone(),
                    Err(e) => format!("client: {e}"),
                };
                if let Ok(mut h) = latencies.lock() {
                    let _ = h.record(elapsed);
                }
                if let Ok(mut o) = outcomes.lock() {
                    *o.entry(label).or_default() += 1;
                }
                if let Ok(mut l) = last_reply.lock() {
                    l.1 = l.1.max(now);
                }
                k += buyers;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let server_cpu = proc_cpu_secs(server_pid) - cpu_before;
    let loadgen_cpu = proc_cpu_secs(std::process::id()) - self_before;
    let redis_cpu = proc_cpu_secs(redis_pid) - redis_before;

    // Verdicts from the order-event stream.
    let (status, text) = http(
        addr,
        "GET",
        &format!("/api/sales/{}/orders/all", sale.id),
        &admin,
        "",
    )
    .await?;
    if status != 200 {
        return Err(format!("orders/all: {status} {text}"));
    }
    let audit: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("orders/all JSON: {e}"))?;
    let mut in_stream: HashMap<String, String> = HashMap::new();
    if let Some(events) = audit["events"].as_array() {
        for e in events.iter().filter(|e| e["type"] == "reserved") {
            let r = &e["reservation"];
            in_stream.insert(
                r["id"].as_str().unwrap_or_default().to_owned(),
                r["buyer"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    let mut per_buyer: HashMap<&str, u32> = HashMap::new();
    for b in in_stream.values() {
        *per_buyer.entry(b.as_str()).or_default() += 1;
    }
    let told: HashSet<String> = successes
        .lock()
        .map(|s| s.values().flatten().cloned().collect())
        .unwrap_or_default();
    let h = latencies.lock().map_err(|_| "poisoned")?.clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let (last_ok, last_any) = last_reply.lock().map(|l| *l).unwrap_or((0, 0));
    let start = sale.starts_at;
    let per_s = |n: u64, last: u64| {
        if last > start {
            n as f64 / ((last - start) as f64 / 1000.0)
        } else {
            0.0
        }
    };
    let outcomes = outcomes.lock().map(|o| o.clone()).unwrap_or_default();
    let answered: u64 = outcomes.values().sum();
    let report = Report {
        engine: format!("{:?}", args.engine).to_lowercase(),
        buyers: args.buyers,
        buyers_joined: joined,
        buys_scheduled: args.buys,
        stock: args.stock,
        per_buyer_limit: args.limit,
        window_s: args.window,
        latency_ms_p50: ms(0.5),
        latency_ms_p90: ms(0.9),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: h.max() as f64 / 1000.0,
        reservations_per_s: per_s(told.len() as u64, last_ok),
        answers_per_s: per_s(answered, last_any),
        outcomes,
        server_cpu_s: (server_cpu * 100.0).round() / 100.0,
        redis_cpu_s: (redis_cpu * 100.0).round() / 100.0,
        loadgen_cpu_s: (loadgen_cpu * 100.0).round() / 100.0,
        verdict_reserved_in_stream: in_stream.len() as u64,
        verdict_reservations_le_stock: in_stream.len() as u64 <= args.stock,
        verdict_no_buyer_over_limit: per_buyer.values().all(|n| *n <= args.limit),
        verdict_client_successes_equal_stream: told
            == in_stream.keys().cloned().collect::<HashSet<_>>(),
        server_log: log_path.display().to_string(),
    };
    host_client.close();
    for c in &clients {
        c.close();
    }
    let _ = server.kill().await;
    if let Some(mut r) = redis {
        let _ = r.kill().await;
    }
    Ok(report)
}

fn print_report(r: &Report) {
    println!(
        "\n## sale-bench: {} buys from {} buyers within {} s, {} units, limit {} ({} engine)\n",
        r.buys_scheduled, r.buyers_joined, r.window_s, r.stock, r.per_buyer_limit, r.engine
    );
    println!("| metric | value |\n|---|---|");
    println!(
        "| buy latency p50 / p90 / p99 / p99.9 / max (from intended send) | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms |",
        r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_p999, r.latency_ms_max
    );
    println!("| answers | {:?} |", r.outcomes);
    println!(
        "| answers/s (sale start → last answer) | {:.0} |",
        r.answers_per_s
    );
    println!(
        "| reservations/s (sale start → last reservation) | {:.0} |",
        r.reservations_per_s
    );
    println!(
        "| server / load-generator CPU during the burst | {:.2} s / {:.2} s |",
        r.server_cpu_s, r.loadgen_cpu_s
    );
    if r.engine == "redis" {
        println!(
            "| redis-server CPU during the burst | {:.2} s |",
            r.redis_cpu_s
        );
    }
    println!(
        "| verdicts: reserved in stream ≤ stock / no buyer over limit / client successes = stream | {} ({}) / {} / {} |",
        r.verdict_reservations_le_stock,
        r.verdict_reserved_in_stream,
        r.verdict_no_buyer_over_limit,
        r.verdict_client_successes_equal_stream
    );
}
