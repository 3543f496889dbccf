//! Local stand-ins for the paid translation APIs, each speaking its provider's published
//! contract: LibreTranslate `POST /translate`, DeepL `POST /v2/translate` (with
//! `Authorization: DeepL-Auth-Key`), OpenAI-compatible `POST /v1/chat/completions` (with
//! `Authorization: Bearer`). They check the request shape and the key, answer in the
//! provider's response format, and can be told to be slow or to fail with the provider's own
//! error answers (429 with `Retry-After`, DeepL's 456, 5xx, a wrong key's 403/401).
//!
//! The "translation" is deterministic: `"<target>: "` before the text, with the text outside
//! glossary placeholders uppercased. Each fake treats placeholders the way its provider
//! would: DeepL keeps `<x>` spans (`ignore_tags`) untouched, LibreTranslate (HTML mode)
//! keeps the tags but translates their content, and the OpenAI stand-in moves the first
//! placeholder to the end, as a model reordering words would.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ferry::config::{ProviderConfig, ProviderKind};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub const KEY: &str = "test-provider-key";

/// An injected failure, answered instead of the next request.
#[derive(Clone, Debug)]
pub enum Failure {
    /// The provider's rate-limit answer, with `Retry-After: <secs>`.
    RateLimited(u64),
    /// DeepL's quota-exceeded answer (456); other providers answer 429 without Retry-After.
    Quota,
    /// A server error with this status.
    Status(u16),
}

pub struct FakeState {
    pub kind: ProviderKind,
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Texts in successful requests.
    pub texts: AtomicU64,
    /// (source, target, texts) of each successful request.
    pub log: Mutex<Vec<(String, String, usize)>>,
    pub delay: Mutex<Duration>,
    pub failures: Mutex<VecDeque<Failure>>,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start(kind: ProviderKind) -> FakeProvider {
        let state = Arc::new(FakeState {
            kind,
            requests: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            failures: Mutex::new(VecDeque::new()),
        });
        let app = Router::new()
            .route("/translate", post(libretranslate))
            .route("/v2/translate", post(deepl))
            .route("/v1/chat/completions", post(openai))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A provider config pointing at this fake.
    pub fn config(&self) -> ProviderConfig {
        ProviderConfig {
            name: format!("fake-{:?}", self.state.kind).to_lowercase(),
            kind: self.state.kind,
            url: self.url(),
            api_key: KEY.into(),
            model: "fake-model".into(),
            timeout: Duration::from_secs(2),
            batch_window: Duration::from_millis(5),
            retry_backoff: Duration::from_millis(20),
            ..ProviderConfig::default()
        }
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Relaxed)
    }

    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock() = d;
    }

    pub fn fail_next(&self, f: Failure) {
        self.state.failures.lock().push_back(f);
    }

    pub fn log(&self) -> Vec<(String, String, usize)> {
        self.state.log.lock().clone()
    }
}

/// The fake translation of `markup` into `target` for provider `kind`.
pub fn fake_translate(kind: ProviderKind, markup: &str, target: &str) -> String {
    // Split into (is_placeholder, text) pieces.
    let mut pieces: Vec<(bool, String)> = Vec::new();
    let mut rest = markup;
    while let Some(p) = rest.find("<x ") {
        pieces.push((false, rest[..p].to_owned()));
        let tail = &rest[p..];
        let end = tail.find("</x>").map(|e| e + 4).unwrap_or(tail.len());
        pieces.push((true, tail[..end].to_owned()));
        rest = &tail[end..];
    }
    pieces.push((false, rest.to_owned()));
    let upper = |s: &str| {
        s.to_uppercase()
            .replace("&AMP;", "&amp;")
            .replace("&LT;", "&lt;")
            .replace("&GT;", "&gt;")
            .replace("&QUOT;", "&quot;")
    };
    let mut out: Vec<String> = pieces
        .iter()
        .map(|(ph, text)| match (ph, kind) {
            (false, _) => upper(text),
            (true, ProviderKind::Libretranslate) => {
                // HTML mode: tags kept, their content translated.
                let open_end = text.find('>').map(|i| i + 1).unwrap_or(0);
                let inner = text
                    .get(open_end..text.len().saturating_sub(4))
                    .unwrap_or_default();
                format!("{}{}</x>", &text[..open_end], upper(inner))
            }
            (true, _) => text.clone(),
        })
        .collect();
    if kind == ProviderKind::Openai {
        if let Some(i) = pieces.iter().position(|(ph, _)| *ph) {
            let moved = out.remove(i);
            out.push(format!(" {moved}"));
        }
    }
    format!("{target}: {}", out.concat())
}

fn injected(state: &FakeState) -> Option<Response> {
    let failure = state.failures.lock().pop_front()?;
    let kind = state.kind;
    Some(match failure {
        Failure::RateLimited(secs) => {
            let body = match kind {
                ProviderKind::Libretranslate => json!({"error": "Slowdown: 1 per 1 second"}),
                ProviderKind::Deepl => json!({"message": "Too many requests"}),
                ProviderKind::Openai => {
                    json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})
                }
            };
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                Json(body),
            )
                .into_response()
        }
        Failure::Quota => match kind {
            ProviderKind::Deepl => (
                StatusCode::from_u16(456).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                Json(json!({"message": "Quota exceeded"})),
            )
                .into_response(),
            _ => (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": "quota"})),
            )
                .into_response(),
        },
        Failure::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({"error": "injected failure"})),
        )
            .into_response(),
    })
}

async fn common(state: &FakeState) -> Option<Response> {
    state.requests.fetch_add(1, Relaxed);
    let delay = *state.delay.lock();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    injected(state)
}

fn bad(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg}))).into_response()
}

async fn libretranslate(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    if let Some(r) = common(&state).await {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("Invalid request: body is not JSON");
    };
    if v.get("api_key").and_then(Value::as_str) != Some(KEY) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "Invalid API key"})),
        )
            .into_response();
    }
    let (Some(source), Some(target)) = (
        v.get("source").and_then(Value::as_str),
        v.get("target").and_then(Value::as_str),
    ) else {
        return bad("Invalid request: missing source or target parameter");
    };
    if v.get("format").and_then(Value::as_str) != Some("html") {
        return bad("expected format=html (glossary placeholders are markup)");
    }
    let kind = state.kind;
    let (answer, n) = match v.get("q") {
        Some(Value::String(q)) => (json!(fake_translate(kind, q, target)), 1),
        Some(Value::Array(qs)) => {
            let out: Vec<String> = qs
                .iter()
                .filter_map(Value::as_str)
                .map(|q| fake_translate(kind, q, target))
                .collect();
            let n = out.len();
            (json!(out), n)
        }
        _ => return bad("Invalid request: missing q parameter"),
    };
    state.texts.fetch_add(n as u64, Relaxed);
    state.log.lock().push((source.into(), target.into(), n));
    Json(json!({"translatedText": answer})).into_response()
}

async fn deepl(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = common(&state).await {
        return r;
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("DeepL-Auth-Key {KEY}") {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "Wrong endpoint or auth key"})),
        )
            .into_response();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("Invalid request");
    };
    let Some(texts) = v.get("text").and_then(Value::as_array) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "Parameter 'text' not specified."})),
        )
            .into_response();
    };
    let Some(target) = v.get("target_lang").and_then(Value::as_str) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "Value for 'target_lang' not supported."})),
        )
            .into_response();
    };
    if v.get("tag_handling").and_then(Value::as_str) != Some("xml")
        || v.get("ignore_tags") != Some(&json!(["x"]))
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"message": "expected tag_handling=xml, ignore_tags=[x]"})),
        )
            .into_response();
    }
    let source = v
        .get("source_lang")
        .and_then(Value::as_str)
        .unwrap_or("EN")
        .to_owned();
    let lang = target.split('-').next().unwrap_or(target).to_lowercase();
    let translations: Vec<Value> = texts
        .iter()
        .filter_map(Value::as_str)
        .map(|t| json!({"detected_source_language": source, "text": fake_translate(ProviderKind::Deepl, t, &lang)}))
        .collect();
    state.texts.fetch_add(translations.len() as u64, Relaxed);
    state
        .log
        .lock()
        .push((source.to_lowercase(), lang, translations.len()));
    Json(json!({ "translations": translations })).into_response()
}

async fn openai(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = common(&state).await {
        return r;
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {KEY}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})),
        )
            .into_response();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return bad("invalid JSON");
    };
    let (Some(_model), Some(messages)) = (
        v.get("model").and_then(Value::as_str),
        v.get("messages").and_then(Value::as_array),
    ) else {
        return bad("model and messages are required");
    };
    let system = messages
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    // "... from Chinese (Simplified) to English. ..." → the target's name.
    let target_name = system
        .split(" to ")
        .nth(1)
        .and_then(|s| s.split('.').next())
        .unwrap_or_default();
    let target = match target_name {
        "English" => "en",
        "Chinese (Simplified)" => "zh",
        "Spanish" => "es",
        "Japanese" => "ja",
        "Arabic" => "ar",
        _ => "xx",
    };
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let Ok(texts) = serde_json::from_str::<Vec<String>>(user) else {
        return bad("user content is not a JSON array of strings");
    };
    let out: Vec<String> = texts
        .iter()
        .map(|t| fake_translate(ProviderKind::Openai, t, target))
        .collect();
    state.texts.fetch_add(out.len() as u64, Relaxed);
    state
        .log
        .lock()
        .push(("?".into(), target.into(), out.len()));
    Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": serde_json::to_string(&out).unwrap_or_default()},
            "finish_reason": "stop"
        }]
    }))
    .into_response()
}
