//! Publish throughput of the Redis engine against raw `redis-benchmark` PUBLISH, measured in
//! the same run on the same freshly started `redis-server` (no persistence, loopback).
//!
//! ```text
//! cargo run --release --example engine_publish_bench -- [CONCURRENCY] [SECONDS]
//! ```
//!
//! Each publish is the engine's whole step: one Lua script that assigns the next offset,
//! appends to the room's capped stream and publishes on the room's channel (with this process
//! subscribed, so Redis also delivers every message to one subscriber).

mod common;

use bytes::Bytes;
use common::{free_port, proc_cpu_secs};
use ferry::engine::redis::{RedisEngine, RedisEngineOptions};
use ferry::engine::Engine;
use ferry::protocol::RoomId;
use ferry::redis_conn::RedisTarget;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let concurrency: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(50);
    let seconds: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let port = free_port();
    let mut redis = match Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start redis-server: {e}");
            std::process::exit(2);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            eprintln!("redis-server did not start");
            let _ = redis.kill();
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = Bytes::from(format!(
        r#"{{"type":"comment","user":{{"id":"u1","name":"bench","role":"viewer"}},"text":"{}"}}"#,
        "x".repeat(64)
    ));

    // 1. Raw PUBLISH with the same payload size and the same number of connections.
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-n", "200000", "-c"])
        .arg(concurrency.to_string())
        .args(["--csv", "PUBLISH", "raw-bench"])
        .arg(String::from_utf8_lossy(&body).as_ref())
        .output();
    let raw_rps = out
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let row = text
                .lines()
                .find(|l| l.starts_with("\"PUBLISH"))?
                .to_owned();
            // The test name holds the payload (with commas): count fields from the right.
            let cols: Vec<&str> = row.rsplitn(8, ',').collect();
            cols.get(6)?.trim_matches('"').parse::<f64>().ok()
        })
        .unwrap_or(0.0);

    // 2. The engine: `concurrency` tasks publishing back to back into one room.
    let engine = match RedisEngine::connect(RedisEngineOptions {
        redis: RedisTarget {
            urls: vec![format!("redis://127.0.0.1:{port}/")],
            cluster: false,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
        },
        prefix: "bench".into(),
        history_size: 1000,
        history_ttl: Duration::from_secs(600),
        presence_ttl: Duration::from_secs(10),
        broadcast_capacity: 1 << 16,
        max_held: 200,
    })
    .await
    {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("cannot connect the engine: {e}");
            let _ = redis.kill();
            std::process::exit(2);
        }
    };
    let room = RoomId("bench".into());
    if let Err(e) = engine.create_room(&room, "bench").await {
        eprintln!("create_room: {e}");
    }
    // Subscribed, like a node with viewers: Redis also delivers every publication to us.
    let _subscription = engine.subscribe(&room).await.ok();
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u32>::new()));
    let cpu_before = proc_cpu_secs(redis.id());
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (engine, room, body) = (engine.clone(), room.clone(), body.clone());
        let (published, failed, latencies) = (published.clone(), failed.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                match engine.publish(&room, body.clone(), None).await {
                    Ok(_) => {
                        published.fetch_add(1, Relaxed);
                        mine.push(t.elapsed().as_micros() as u32);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            }
            latencies.lock().extend(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis_cpu = proc_cpu_secs(redis.id()) - cpu_before;
    let n = published.load(Relaxed);
    let mut lat = std::mem::take(&mut *latencies.lock());
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    let rate = n as f64 / elapsed;
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| raw `redis-benchmark -c {concurrency} PUBLISH` ({}-byte payload) | {raw_rps:.0} requests/s |", body.len());
    println!("| engine publishes ({concurrency} concurrent, {seconds} s) | {rate:.0} /s ({n} ok, {} failed) |", failed.load(Relaxed));
    println!(
        "| engine publish latency p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "| redis-server CPU during the engine run | {redis_cpu:.2} s ({:.0} % of one core) |",
        100.0 * redis_cpu / elapsed
    );
    println!(
        "| engine rate / raw PUBLISH rate | {:.2} |",
        if raw_rps > 0.0 {
            rate / raw_rps
        } else {
            f64::NAN
        }
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
