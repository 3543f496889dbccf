//! `sale-bench`: the flash-sale buy burst benchmark.
//!
//! Starts a Ferry server (embedded engine with a journal in a temp dir, or `--engine redis`
//! with its own `redis-server`), creates a product and a room, connects `--buyers` SDK clients
//! that join the room, launches a sale that starts a few seconds later, and then sends
//! `--buys` buy commands spread evenly over `--window` seconds from the start instant (open
//! model: buy k is due at start + k·window/buys whatever happened before). Latency is measured
//! from each buy's intended send time to its reply. Afterwards it reads the sale's order-event
//! stream as a consumer group and checks the verdicts: never oversold, no buyer above the
//! limit, the successes clients saw = the reservations in the stream.
//!
//! The press (with its retries), the HTTP API and the verdicts are the harness library's
//! (`ferry_loadtest::sale`, `ferry_loadtest::admin`), shared with the scenario runner's `buy`
//! behaviour; `ferry-loadtest run loadtest/scenarios/flash-sale.toml` is the scenario form of
//! this benchmark.
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/bench-target cargo build --release -p ferry -p ferry-loadtest
//! /tmp/bench-target/release/sale-bench --buyers 10000 --buys 20000 --window 1 --stock 1000
//! ```

use clap::{Parser, ValueEnum};
use ferry_client::protocol::commerce::SaleSpec;
use ferry_client::{Client, ClientOptions};
use ferry_loadtest::admin::{self, Claims};
use ferry_loadtest::metrics::{new_histogram, record};
use ferry_loadtest::runner::DEV_SECRET;
use ferry_loadtest::sale::{self, PressPolicy, SaleVerdict, ToldReservation};
use ferry_loadtest::system::{self, SpawnConfig, SpawnedServer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

fn cpu_secs(pid: u32) -> f64 {
    system::process_cpu_secs(&pid.to_string()).unwrap_or(0.0)
}

fn token(key: &jsonwebtoken::EncodingKey, user: String, role: &str) -> Result<String, String> {
    let mut claims = Claims::new(user, role, "*");
    claims.market = Some("us");
    claims.mint(key)
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
    /// Every verdict count of the shared judge (`ferry_loadtest::sale::judge`).
    verdicts: SaleVerdict,
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
            let v = &report.verdicts;
            let ok = report.verdict_reservations_le_stock
                && report.verdict_no_buyer_over_limit
                && report.verdict_client_successes_equal_stream
                && v.double_reservations == 0
                && v.stream_anomalies == 0
                && v.stock_unaccounted == Some(0);
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
    let mut config = SpawnConfig {
        bin,
        sets: vec![
            "limits.join_rate=100000".into(),
            "limits.join_burst=100000".into(),
        ],
        env: vec![(
            "FERRY_COMMERCE__JOURNAL_PATH".into(),
            dir.join("commerce.journal").display().to_string(),
        )],
        log: Some(dir.join("ferry.log")),
    };
    if args.engine == Engine::Redis {
        let rport = system::free_port()?;
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
        config.sets.push("engine.kind=redis".into());
        config.env.push((
            "FERRY_REDIS__URLS".into(),
            format!("redis://127.0.0.1:{rport}/"),
        ));
        redis = Some(child);
    }
    let server = SpawnedServer::start(&config, args.buyers + 1000).await?;
    let addr = system::loopback_target(&server.url).map_err(|e| e.to_string())?;
    let log_path = server.log.clone();
    let server_pid = server.pid;
    let redis_pid = redis.as_ref().and_then(|r| r.id()).unwrap_or(0);
    let key = jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes());
    let host = token(&key, "host".into(), "host")?;
    let admin = token(&key, "ops".into(), "admin")?;
    admin::put_product(addr, &host, "basket", "藤编篮", 5900, &["us".to_owned()])
        .await
        .map_err(|e| e.to_string())?;
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
    let latencies = Arc::new(Mutex::new(new_histogram()));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let told = Arc::new(Mutex::new(Vec::<ToldReservation>::new()));
    let last_reply = Arc::new(Mutex::new((0u64, 0u64)));
    let cpu_before = cpu_secs(server_pid);
    let self_before = cpu_secs(std::process::id());
    let redis_before = cpu_secs(redis_pid);
    let step_us = args.window * 1e6 / args.buys.max(1) as f64;
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, sale_id) = (c.clone(), sale.id.clone());
        let (latencies, outcomes, told, last_reply) = (
            latencies.clone(),
            outcomes.clone(),
            told.clone(),
            last_reply.clone(),
        );
        let (buys, buyers, starts_at) = (args.buys, args.buyers, sale.starts_at);
        tasks.push(tokio::spawn(async move {
            let mut k = i;
            while k < buys {
                // Local instant of the intended send, from the server-clock start.
                let wait_ms = c.ms_until(starts_at) + k as f64 * step_us / 1000.0;
                let now = tokio::time::Instant::now();
                let intended = if wait_ms > 0.0 {
                    now + Duration::from_secs_f64(wait_ms / 1000.0)
                } else {
                    now.checked_sub(Duration::from_secs_f64(-wait_ms / 1000.0))
                        .unwrap_or(now)
                };
                tokio::time::sleep_until(intended).await;
                // The Buy button: same key on every retry (`sale_not_started` before the
                // start as the clock estimates differ by about a round trip, `unavailable`).
                let policy = PressPolicy {
                    give_up_at: intended + Duration::from_secs(30),
                    max_retries: 3,
                    max_wait: Duration::from_secs(1),
                };
                let key = format!("k{k}");
                let result = sale::press(&c, ROOM, &sale_id.0, 1, &key, &policy).await;
                let elapsed = intended.elapsed();
                let now = c.server_now_ms() as u64;
                if let Some(reservation) = result.reservation {
                    if let Ok(mut t) = told.lock() {
                        t.push(ToldReservation {
                            buyer: format!("b{i}"),
                            key,
                            reservation,
                        });
                    }
                    if let Ok(mut l) = last_reply.lock() {
                        l.0 = l.0.max(now);
                    }
                }
                let label = match &result.outcome {
                    sale::BuyOutcome::Error(kind) => format!("error: {kind}"),
                    other => other.name().to_owned(),
                };
                if let Ok(mut h) = latencies.lock() {
                    record(&mut h, elapsed);
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
    let server_cpu = cpu_secs(server_pid) - cpu_before;
    let loadgen_cpu = cpu_secs(std::process::id()) - self_before;
    let redis_cpu = cpu_secs(redis_pid) - redis_before;

    // Verdicts from the order-event stream, read as an order system reads it.
    let stream = admin::consume_order_events(addr, &admin, &sale.id.0, "sale-bench")
        .await
        .map_err(|e| e.to_string())?;
    let audit = admin::audit(addr, &admin, &sale.id.0)
        .await
        .map_err(|e| e.to_string())?;
    let told = told.lock().map(|t| t.clone()).unwrap_or_default();
    let (verdicts, summary) = sale::judge(
        args.stock,
        args.limit,
        &stream.events,
        stream.unreadable,
        &told,
        Some((&audit.0, &audit.1)),
    );
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
    let reserved = outcomes.get("reserved").copied().unwrap_or(0);
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
        reservations_per_s: per_s(reserved, last_ok),
        answers_per_s: per_s(answered, last_any),
        outcomes,
        server_cpu_s: (server_cpu * 100.0).round() / 100.0,
        redis_cpu_s: (redis_cpu * 100.0).round() / 100.0,
        loadgen_cpu_s: (loadgen_cpu * 100.0).round() / 100.0,
        verdict_reserved_in_stream: summary.reserved,
        verdict_reservations_le_stock: verdicts.oversold == 0,
        verdict_no_buyer_over_limit: verdicts.buyers_over_limit == 0,
        verdict_client_successes_equal_stream: verdicts.lost_reservations == 0
            && verdicts.phantom_reservations == 0,
        verdicts,
        server_log: log_path.display().to_string(),
    };
    host_client.close();
    for c in &clients {
        c.close();
    }
    server.stop(Duration::from_secs(10)).await;
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
