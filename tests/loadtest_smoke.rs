//! The shipped `smoke` load-test scenario, run through the `ferry-loadtest` library against
//! the real `ferry` binary: it must pass its thresholds on the embedded engine and on the
//! Redis engine (a real `redis-server` on a free port), and it must FAIL them against a
//! deliberately crippled node (a two-frame send queue with batching off, so viewers are
//! kicked as slow consumers).
//!
//! The runs share the machine's cores, so they take turns (one at a time) to keep their
//! latency thresholds meaningful.

use ferry_loadtest::{run, Report, RunOptions, Scenario, SpawnConfig};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// One load run at a time.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn smoke() -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios/smoke.toml");
    Scenario::load(&path).expect("the shipped smoke scenario is valid")
}

async fn run_smoke(sets: &[String]) -> Report {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let options = RunOptions {
        spawn: Some(SpawnConfig {
            bin: FERRY.into(),
            sets: sets.to_vec(),
            ..SpawnConfig::default()
        }),
        ..RunOptions::default()
    };
    let report = run(&smoke(), options)
        .await
        .expect("the run is carried out");
    // The JSON report always parses back with its schema version.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
    assert_eq!(json["schema_version"], 1);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_on_the_embedded_engine() {
    let report = run_smoke(&[]).await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.metrics["viewers_joined"], 200.0);
    assert!(report.metrics["comment_deliveries"] > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_on_the_redis_engine() {
    let redis = RedisProcess::start();
    let report = run_smoke(&[
        "engine.kind=redis".to_owned(),
        format!("redis.urls=redis://127.0.0.1:{}/", redis.port),
    ])
    .await;
    assert!(report.passed, "{}", report.summary());
    assert_eq!(report.metrics["viewers_joined"], 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_fails_against_a_crippled_node() {
    let report = run_smoke(&[
        "websocket.send_queue_frames=2".to_owned(),
        "websocket.max_batch=1".to_owned(),
        "websocket.batch_window=0ms".to_owned(),
    ])
    .await;
    assert!(!report.passed, "{}", report.summary());
    let failed: Vec<&str> = report
        .thresholds
        .iter()
        .filter(|t| !t.passed)
        .map(|t| t.metric.as_str())
        .collect();
    assert!(
        failed.contains(&"server_disconnects"),
        "{}",
        report.summary()
    );
}

/// A throwaway `redis-server` on a free loopback port, killed when dropped.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    fn start() -> RedisProcess {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server (is it installed?)");
            let mut redis = RedisProcess { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = redis.child.try_wait() {
                    break; // port taken: try another
                }
                let pong = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "ping"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
                if pong {
                    return redis;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = redis.child.kill();
        }
        panic!("redis-server did not start");
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
