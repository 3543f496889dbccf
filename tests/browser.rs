//! The pages Ferry serves, tested in a real Chromium (Debian's `/usr/bin/chromium`, driven by
//! playwright-core from `client-sdk/js/node_modules`) against a real server on port 0.
//!
//! Each test starts the server, creates what the scenario needs, mints the tokens, and runs
//! `node client-sdk/js/test/e2e.mjs <scenario>`. The node script drives the pages; this harness
//! plays the Rust SDK's side: the script asks for an action with a `@ferry {"id":..,"op":..}`
//! line on its stdout and gets `{"id":..,"ok":..}` or `{"id":..,"error":".."}` on its stdin.
//! The test fails if the script exits non-zero (any failed check in the browser), if a
//! harness action fails, or after a time limit.
//!
//! Needs `npm ci` in `client-sdk/js` (scripts/test.sh and .ci/run do it) and Chromium
//! (`apt-get install chromium`; .ci/run installs it). Screenshots go to
//! `target/tmp/browser-e2e/`.

mod common;

use common::providers::FakeProvider;
use common::*;
use ferry::config::ProviderKind;
use ferry::protocol::{Role, RoomEvent};
use ferry_client::{new_idempotency_key, Client, Event, Events};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Mutex;

/// One Chromium at a time: the machine has two cores, and video encoding is heavy.
static CHROMIUM: Mutex<()> = Mutex::const_new(());

/// The longest a scenario may take before it is killed and the test fails.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

const ROOM: &str = "e2e";

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client-sdk/js")
}

/// Check the prerequisites and say how to get them, instead of failing obscurely.
fn prerequisites() {
    let playwright = js_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: run `npm ci` in client-sdk/js (scripts/test.sh does)",
        playwright.display()
    );
    let chromium =
        std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install -y chromium` (.ci/run does)"
    );
}

/// The Rust SDK side of a scenario.
struct RustSide {
    server: TestServer,
    viewer: Client,
    events: Events,
    buyer: Client,
}

impl RustSide {
    async fn handle(&mut self, op: &str, req: &Value) -> Result<Value, String> {
        match op {
            "rust_comment" => {
                let text = req["text"].as_str().ok_or("text")?;
                self.viewer
                    .comment(ROOM, text)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json!({}))
            }
            "rust_wait_comment" => {
                let want = req["text"].as_str().ok_or("text")?.to_owned();
                let user = tokio::time::timeout(WAIT, async {
                    loop {
                        match self.events.recv().await {
                            Some(Event::Room {
                                event: RoomEvent::Comment { user, text, .. },
                                ..
                            }) if text == want => return Ok(user),
                            Some(_) => {}
                            None => return Err("event stream ended".to_owned()),
                        }
                    }
                })
                .await
                .map_err(|_| format!("no comment {want:?} reached the Rust client"))??;
                Ok(json!({"id": user.id.0, "name": user.name, "role": user.role.as_str()}))
            }
            "rust_buy" => {
                let sale = req["sale"].as_str().ok_or("sale")?;
                let quantity = req["quantity"].as_u64().ok_or("quantity")? as u32;
                // `as`: which Rust client buys ("buyer" by default, or "viewer").
                let client = match req["as"].as_str() {
                    Some("viewer") => &self.viewer,
                    _ => &self.buyer,
                };
                match client
                    .buy(ROOM, sale, quantity, new_idempotency_key())
                    .await
                {
                    Ok(r) => Ok(serde_json::to_value(&r.reservation).map_err(|e| e.to_string())?),
                    Err(ferry_client::ClientError::Server(e)) => Ok(json!({"error": e.name})),
                    Err(e) => Err(e.to_string()),
                }
            }
            "rust_ms_until_start" => {
                let sale = req["sale"].as_str().ok_or("sale")?;
                let token = self.server.token(ROOM, "rust-viewer", Role::Viewer);
                let (status, body) = http(
                    self.server.addr(),
                    "GET",
                    &format!("/api/sales/{sale}"),
                    Some(&token),
                    None,
                )
                .await;
                if status != 200 {
                    return Err(format!("GET /api/sales/{sale}: {status} {body}"));
                }
                let parsed: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let starts_at = parsed["sale"]["starts_at"].as_u64().ok_or("starts_at")?;
                Ok(json!(self.viewer.ms_until(starts_at)))
            }
            "server_metrics" => {
                // The server's Prometheus lines starting with `prefix` (for failure reports).
                let prefix = req["prefix"].as_str().unwrap_or("ferry_");
                let (_, body) = http(self.server.addr(), "GET", "/metrics", None, None).await;
                Ok(json!(body
                    .lines()
                    .filter(|l| l.starts_with(prefix))
                    .collect::<Vec<_>>()))
            }
            other => Err(format!("unknown op {other}")),
        }
    }
}

/// Start the server and the Rust clients, then run `scenario` in Chromium to the end.
///
/// The `translation` scenario also gets a local LibreTranslate-compatible provider that
/// answers after 800 ms (past the 300 ms latency budget, so its translations arrive as late
/// `translation` events), and the host's glossary (藤编篮 = "rattan basket") before the
/// product is saved, so the product view carries an English title.
async fn run_scenario(scenario: &str) {
    prerequisites();
    let _one_at_a_time = CHROMIUM.lock().await;
    let provider = if scenario == "translation" {
        let fake = FakeProvider::start(ProviderKind::Libretranslate).await;
        fake.set_delay(Duration::from_millis(800));
        Some(fake)
    } else {
        None
    };
    let server = TestServer::start(|c| {
        if let Some(fake) = &provider {
            c.translation.providers = vec![fake.config()];
            // Announced in WHEP answers as `Link: rel="ice-server"`; the page must apply it
            // (nothing listens there: the WHEP sessions of this scenario carry no video).
            c.sfu.ice_servers = vec!["turn:127.0.0.1:9?transport=udp".into()];
            c.sfu.ice_username = "e2e-user".into();
            c.sfu.ice_credential = "e2e-secret".into();
        }
    })
    .await;
    let host_token = server.token(ROOM, "browser-host", Role::Host);
    if provider.is_some() {
        let (status, body) = http(
            server.addr(),
            "PUT",
            "/api/glossaries/browser-host",
            Some(&host_token),
            Some(
                &json!({"rooms": [ROOM], "terms": [{"zh": "藤编篮", "en": "rattan basket"}]})
                    .to_string(),
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // The catalog product the host page pins and sells: ¥89.00, sold in the US and Hong Kong.
    let (status, body) = http(
        server.addr(),
        "PUT",
        "/api/products/basket-01",
        Some(&host_token),
        Some(
            &json!({"title": "藤编篮", "description": "手工藤编收纳篮", "price_cny": 8900,
                    "markets": {"us": true, "hk": true}})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        server.addr(),
        "POST",
        "/api/rooms",
        Some(&host_token),
        Some(&json!({"room": ROOM, "title": "Rattan night"}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let (viewer, mut events) = server.client(ROOM, "rust-viewer", Role::Viewer);
    viewer.join(ROOM).await.expect("Rust viewer joins");
    wait_for(&mut events, |e| {
        matches!(e, Event::Joined { .. }).then_some(())
    })
    .await;
    let (buyer, _buyer_events) = server.client(ROOM, "rust-buyer", Role::Viewer);
    buyer.join(ROOM).await.expect("Rust buyer joins");
    let tokens = json!({
        "viewer": server.token(ROOM, "browser-viewer", Role::Viewer),
        "viewer2": server.token(ROOM, "browser-viewer-2", Role::Viewer),
        "host": host_token,
    });
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-e2e");
    let mut side = RustSide {
        server,
        viewer,
        events,
        buyer,
    };

    let started = Instant::now();
    let mut child = Command::new("node")
        .arg("test/e2e.mjs")
        .arg(scenario)
        .current_dir(js_dir())
        .env("FERRY_BASE", format!("http://{}", side.server.addr()))
        .env("FERRY_ROOM", ROOM)
        .env("FERRY_TOKENS", tokens.to_string())
        .env("FERRY_ARTIFACTS", &artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start node (is Node.js installed?)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();

    let outcome = tokio::time::timeout(SCENARIO_LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("read node's stdout") {
            let Some(request) = line.strip_prefix("@ferry ") else {
                eprintln!("{line}");
                continue;
            };
            let req: Value = serde_json::from_str(request).expect("a JSON request");
            let id = req["id"].clone();
            let op = req["op"].as_str().unwrap_or_default().to_owned();
            let reply = match side.handle(&op, &req).await {
                Ok(ok) => json!({"id": id, "ok": ok}),
                Err(error) => {
                    eprintln!("[harness] {op} failed: {error}");
                    json!({"id": id, "error": error})
                }
            };
            stdin
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .expect("write to node's stdin");
        }
        child.wait().await.expect("node exits")
    })
    .await;
    let status = match outcome {
        Ok(status) => status,
        Err(_) => {
            let _ = child.kill().await;
            panic!("scenario {scenario} did not finish within {SCENARIO_LIMIT:?}");
        }
    };
    eprintln!(
        "[harness] scenario {scenario}: {status} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "the browser scenario {scenario} failed: see the [e2e] lines above"
    );
    let stats = side.viewer.stats();
    assert_eq!(
        stats.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(stats.gaps.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// The viewer page joins and shows comments sent by a Rust SDK client; its own comments reach
/// the Rust client; the host page pins a product and launches a flash sale whose countdown,
/// price in the viewer's currency, stock, reservation, limit, sell-out, cancellation and end
/// all show on the viewer page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_and_host_pages_chat_and_sell_in_chromium() {
    run_scenario("chat-and-sales").await;
}

/// The host page goes live from Chromium's fake camera (WHIP); the viewer page plays it (WHEP)
/// and decodes frames (`framesDecoded > 0` from `getStats`); a screenshot of the playing page
/// is saved; stopping on the host page ends the stream on the viewer page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_page_publishes_the_camera_and_the_viewer_page_plays_it() {
    run_scenario("video").await;
}

/// Translation and moderation on the pages: two viewer pages in English and Chinese (the
/// second picks its language on the page) and the host page in Chinese. A phrasebook comment
/// shows translated at once with the original on click; a provider translation that misses
/// the latency budget replaces the text in place; a yellow comment waits in the host page's
/// moderator queue and reaches the viewers once approved (another is rejected, and its sender
/// told); a red comment shows its rule to the sender only; the pinned product's title is in
/// each viewer's language. The viewer pages' WHEP sessions apply the TURN server the answer
/// announces in a `Link: rel="ice-server"` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_translate_comments_and_moderate_in_chromium() {
    run_scenario("translation").await;
}

/// The pages and SDK modules are served with their content types and security headers, and
/// the room in a page's path is validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_sdk_are_served_with_content_types_and_csp() {
    let s = TestServer::start(|_| {}).await;
    for (path, kind) in [
        ("/watch/shop-42", "text/html; charset=utf-8"),
        ("/host/shop-42", "text/html; charset=utf-8"),
        ("/sdk/ferry.js", "text/javascript; charset=utf-8"),
        ("/sdk/video.js", "text/javascript; charset=utf-8"),
        ("/pages/watch.js", "text/javascript; charset=utf-8"),
        ("/pages/pages.css", "text/css; charset=utf-8"),
    ] {
        let (status, head, body) = raw_get(s.addr(), path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{path}");
        assert!(head.contains("referrer-policy: no-referrer"), "{path}");
        assert!(!body.is_empty());
    }
    let (status, _, body) = raw_get(s.addr(), "/watch/bad%20room").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"));
    for path in [
        "/sdk/nope.js",
        "/sdk/..%2Fpackage.json",
        "/pages/watch.html",
    ] {
        let (status, _, body) = raw_get(s.addr(), path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }

    // server.pages = false turns them off.
    let off = TestServer::start(|c| c.server.pages = false).await;
    let (status, _, _) = raw_get(off.addr(), "/watch/shop-42").await;
    assert_eq!(status, 404);
    let (status, _, _) = raw_get(off.addr(), "/sdk/ferry.js").await;
    assert_eq!(status, 404);
}

/// GET `path`; returns (status, lowercased head, body).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}
