//! The `ferry` binary: config checks, token minting, and graceful shutdown on SIGTERM.

mod common;

use common::*;
use ferry::protocol::Role;
use ferry_client::{Client, ClientOptions, Event};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn check_config_names_the_bad_key() {
    let out = Command::new(BIN)
        .args(["check-config", "--set", "limits.max_comments=3"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_comments"));

    let out = Command::new(BIN)
        .args(["check-config"])
        .env("FERRY_WEBSOCKET__PING_INTERVAL", "often")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("websocket.ping_interval"));

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ferry.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", shipped])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn token_command_mints_verifiable_tokens() {
    let out = Command::new(BIN)
        .args([
            "token", "--room", "shop-*", "--user", "ann", "--role", "host", "--lang", "zh",
            "--ttl", "2h",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let verifier = ferry::auth::Verifier::from_config(&ferry::config::AuthConfig::default())
        .expect("verifier");
    let claims = verifier.verify(Some(&token)).expect("valid");
    assert_eq!(claims.role, Role::Host);
    assert_eq!(claims.lang.as_deref(), Some("zh"));
    assert!(claims.exp > ferry::auth::unix_now() + 7000);
    let out = Command::new(BIN)
        .args(["token", "--room", "r", "--user", "u", "--role", "emperor"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_with_a_reconnect_code() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--set",
            "server.drain_timeout=3s",
        ])
        .env("RUST_LOG", "warn")
        .env("FERRY_COMMERCE__JOURNAL_PATH", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("server up");
    let cfg = test_config();
    let mut opts = ClientOptions::new(
        format!("ws://{addr}/ws"),
        token_for(&cfg, "r", "host", Role::Host),
    );
    opts.min_backoff = Duration::from_secs(5);
    let (client, mut events) = Client::connect(opts);
    client.join("r").await.expect("join");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let (code, reconnecting) = wait_for(&mut events, |e| match e {
        Event::Disconnected {
            code, reconnecting, ..
        } => Some((*code, *reconnecting)),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(3000));
    assert!(reconnecting);
    let status = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("server exits after draining");
    assert!(status.success(), "{status:?}");
    client.close();
}
