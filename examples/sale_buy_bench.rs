//! The single-sale ceiling: raw `redis-benchmark` EVALSHA of the store's own buy script
//! against the Redis sale store's `buy` from Rust, on the same freshly started `redis-server`
//! (loopback, no persistence unless `--aof`), one sale each with plenty of stock.
//!
//! ```text
//! cargo run --release --example sale_buy_bench -- [CONCURRENCY] [SECONDS] [--aof]
//! ```
//!
//! Every call takes the full path of the script: the idempotency key is new, the sale is
//! open, the market admitted, the buyer under the limit, stock is left; it reserves, indexes
//! the key, schedules the deadline and appends the `reserved` order event. `redis-benchmark`
//! gets the same 7 keys and 10 arguments (buyer, key index and reservation id randomized
//! with `__rand_int__`, a reservation JSON of the same size). With `--aof` the server runs
//! `appendonly yes, appendfsync always`, as the durability promise of the store needs.

mod common;

use common::{free_port, proc_cpu_secs};
use ferry::commerce::redis::{RedisSaleStore, RedisSaleStoreOptions, BUY_SCRIPT};
use ferry::commerce::{Bought, BuyRequest, Reservation, SaleRecord, SaleStore};
use ferry::protocol::commerce::{Money, ProductId, ReservationId, ReservationState, SaleId};
use ferry::protocol::{RoomId, UserId};
use ferry::redis_conn::RedisTarget;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PREFIX: &str = "bench";
const QUANTITY: u64 = 1_000_000_000;
const PRICE: i64 = 5900;
const HOLD_MS: u64 = 300_000;

fn sale(id: &str) -> SaleRecord {
    SaleRecord {
        id: SaleId(id.into()),
        room: RoomId("bench".into()),
        product: ProductId("basket".into()),
        quantity: QUANTITY,
        price_cny: PRICE,
        per_buyer_limit: 1_000,
        starts_at: 0,
        ends_at: u64::MAX / 2,
        hold_ms: HOLD_MS,
        markets: ["us".to_owned(), "hk".to_owned()].into(),
        ended_at: None,
        created_at: 0,
    }
}

fn keys(sale: &str) -> Vec<String> {
    ["def", "stock", "res", "keys", "held", "deadlines", "orders"]
        .iter()
        .map(|p| format!("{PREFIX}:{{sale:{sale}}}:{p}"))
        .collect()
}

fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

async fn remaining(store: &RedisSaleStore, id: &str) -> u64 {
    match store.sale(&SaleId(id.into())).await {
        Ok(Some(s)) => s.remaining,
        _ => 0,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let aof = args.iter().any(|a| a == "--aof");
    let nums: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let concurrency: usize = nums.first().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seconds: f64 = nums.get(1).and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("ferry-sale-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut server = Command::new("redis-server");
    server
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir);
    if aof {
        server.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        server.args(["--appendonly", "no"]);
    }
    let mut redis = match server.stdout(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start redis-server: {e}");
            std::process::exit(2);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(port, &["ping"]) != "PONG" {
        if Instant::now() > deadline {
            eprintln!("redis-server did not start");
            let _ = redis.kill();
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let store = match RedisSaleStore::connect(RedisSaleStoreOptions {
        redis: RedisTarget {
            urls: vec![format!("redis://127.0.0.1:{port}/")],
            cluster: false,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
        },
        prefix: PREFIX.into(),
    })
    .await
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("cannot connect the store: {e}");
            let _ = redis.kill();
            std::process::exit(2);
        }
    };
    for id in ["raw", "store"] {
        if let Err(e) = store.create_sale(sale(id)).await {
            eprintln!("create_sale {id}: {e}");
        }
    }

    // 0. Reference points on this machine, same connections: PING, and a script that does
    //    nothing with the same keys and arguments (the cost of EVALSHA itself).
    let csv_rps = |out: std::io::Result<std::process::Output>, prefix: &str| {
        out.ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let row = text.lines().find(|l| l.starts_with(prefix))?.to_owned();
                // The test name may hold JSON (with commas): count fields from the right.
                let cols: Vec<&str> = row.rsplitn(8, ',').collect();
                cols.get(6)?.trim_matches('"').parse::<f64>().ok()
            })
            .unwrap_or(0.0)
    };
    let ping_rps = csv_rps(
        Command::new("redis-benchmark")
            .args(["-p", &port.to_string(), "-c", &concurrency.to_string()])
            .args(["-n", "200000", "--csv", "-t", "ping_mbulk"])
            .output(),
        "\"PING_MBULK",
    );

    // 1. Raw EVALSHA of the buy script, same keys and argument sizes, same connections.
    let sha = cli(port, &["script", "load", BUY_SCRIPT]);
    let sample = Reservation {
        id: ReservationId("r:000000000000".into()),
        sale: SaleId("raw".into()),
        buyer: UserId("b:000000000000".into()),
        market: "us".into(),
        quantity: 1,
        amount_cny: PRICE,
        amount_display: Money {
            currency: "USD".into(),
            minor: 818,
        },
        deadline: 1_800_000_000_000,
        key: "k:000000000000".into(),
        state: ReservationState::Reserved,
        created_at: 1_799_999_700_000,
        ended_at: None,
        payment_ref: None,
        release_reason: None,
    };
    let json = serde_json::to_string(&sample).unwrap_or_default();
    let raw_requests = 300_000u64;
    let evalsha = |sha: &str, n: u64, pipeline: u32| {
        let mut bench = Command::new("redis-benchmark");
        bench
            .args(["-p", &port.to_string(), "-c", &concurrency.to_string()])
            .args(["-P", &pipeline.to_string()])
            .args(["-n", &n.to_string(), "-r", "100000000000", "--csv"])
            .args(["EVALSHA", sha, "7"])
            .args(keys("raw"))
            .args([
                "1799999700000",
                "b:__rand_int__",
                "us",
                "1",
                "i:__rand_int__",
            ])
            .args([
                "r:__rand_int__",
                &json,
                &PRICE.to_string(),
                &HOLD_MS.to_string(),
            ])
            .arg("1800000000000");
        bench.output()
    };
    let noop = cli(port, &["script", "load", "return 1"]);
    let noop_rps = csv_rps(evalsha(&noop, 200_000, 1), "\"EVALSHA");
    let cpu_before = proc_cpu_secs(redis.id());
    let t = Instant::now();
    let out = evalsha(&sha, raw_requests, 1);
    let raw_elapsed = t.elapsed().as_secs_f64();
    let raw_cpu = proc_cpu_secs(redis.id()) - cpu_before;
    let raw_rps = csv_rps(out, "\"EVALSHA");
    // Pipelined (16 per connection), as the store's multiplexed connection sends them:
    // the script's own cost, with little per-request network overhead.
    let cpu_before = proc_cpu_secs(redis.id());
    let t = Instant::now();
    let piped_rps = csv_rps(evalsha(&sha, raw_requests, 16), "\"EVALSHA");
    let piped_cpu = 100.0 * (proc_cpu_secs(redis.id()) - cpu_before) / t.elapsed().as_secs_f64();
    let raw_reserved = QUANTITY - remaining(&store, "raw").await;
    let raw_requests = 2 * raw_requests;

    // 2. The store: `concurrency` tasks buying back to back from one sale.
    let id = SaleId("store".into());
    let bought = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u32>::new()));
    let cpu_before = proc_cpu_secs(redis.id());
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let (store, id) = (store.clone(), id.clone());
        let (bought, other, latencies) = (bought.clone(), other.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let req = BuyRequest {
                    buyer: UserId(format!("b:{task}:{n}")),
                    market: "us".into(),
                    quantity: 1,
                    key: format!("k:{n}"),
                    now: 1_799_999_700_000,
                    new_id: ReservationId(format!("r:{task}:{n}")),
                    amount_display: Money {
                        currency: "USD".into(),
                        minor: 818,
                    },
                };
                let t = Instant::now();
                match store.buy(&id, req).await {
                    Ok(Ok(Bought::New(..))) => {
                        bought.fetch_add(1, Relaxed);
                        mine.push(t.elapsed().as_micros() as u32);
                    }
                    _ => {
                        other.fetch_add(1, Relaxed);
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
    let store_cpu = proc_cpu_secs(redis.id()) - cpu_before;
    let n = bought.load(Relaxed);
    let store_reserved = QUANTITY - remaining(&store, "store").await;
    let mut lat = std::mem::take(&mut *latencies.lock());
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    let rate = n as f64 / elapsed;
    let mode = if aof {
        "AOF appendfsync always"
    } else {
        "no persistence"
    };
    println!("| measurement ({mode}, {concurrency} connections/tasks) | value |");
    println!("|---|---|");
    println!("| raw `redis-benchmark` PING (reference) | {ping_rps:.0} requests/s |");
    println!("| raw `redis-benchmark` EVALSHA of `return 1`, same keys and args (reference) | {noop_rps:.0} requests/s |");
    println!(
        "| raw `redis-benchmark` EVALSHA of the buy script (7 keys, 10 args, {}-byte JSON) | {raw_rps:.0} requests/s ({raw_reserved} of {raw_requests} reserved) |",
        json.len()
    );
    println!(
        "| redis-server CPU during the raw run | {:.0} % of one core |",
        100.0 * raw_cpu / raw_elapsed
    );
    println!("| raw EVALSHA of the buy script, pipelined `-P 16` | {piped_rps:.0} requests/s (redis-server CPU {piped_cpu:.0} % of one core) |");
    println!(
        "| store `buy` calls ({seconds} s) | {rate:.0} /s ({n} reserved, {} other; sale counters say {store_reserved}) |",
        other.load(Relaxed)
    );
    println!(
        "| store buy latency p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "| redis-server CPU during the store run | {:.0} % of one core |",
        100.0 * store_cpu / elapsed
    );
    println!(
        "| store rate / raw script rate (unpipelined; pipelined) | {:.2}; {:.2} |",
        rate / raw_rps.max(1.0),
        rate / piped_rps.max(1.0)
    );
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
