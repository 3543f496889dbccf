//! Machine-translation providers. Each speaks one published API exactly:
//!
//! - **LibreTranslate** `POST {url}/translate`, JSON `{q, source, target, format, api_key}` →
//!   `{translatedText}` (`q` and `translatedText` are arrays for a batch). Errors are
//!   `{"error": "..."}` with 400, 403 (bad key), 429 (slow down), 500.
//! - **DeepL v2** `POST {url}/v2/translate`, header `Authorization: DeepL-Auth-Key <key>`,
//!   JSON `{text[], source_lang, target_lang, tag_handling, ignore_tags}` →
//!   `{translations[{detected_source_language, text}]}`. 403 bad key, 456 quota exceeded,
//!   429/529 too many requests.
//! - **OpenAI-compatible** `POST {url}/v1/chat/completions`, `Authorization: Bearer <key>`,
//!   `{model, messages[{role, content}], temperature}` → `{choices[{message{content}}]}`;
//!   the texts go as a JSON array in the user message and come back as one.
//!
//! Request building and response parsing are plain functions ([`build`], [`parse`]); a
//! [`Provider`] drives them: texts for the same language pair that arrive within
//! `batch_window` go in one request (up to `max_batch`), at most `concurrency` requests are in
//! flight, and failed attempts (timeouts, connection errors, 429, 5xx) are retried with
//! exponential backoff and jitter — a 429's `Retry-After` is honoured — until the provider's
//! `timeout`. Auth, quota and bad-request errors are not retried.

use super::metrics::TranslationMetrics;
use crate::config::{ProviderConfig, ProviderKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// Why a provider request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    #[error("quota exceeded")]
    Quota,
    #[error("authentication refused")]
    Auth,
    #[error("HTTP {0}: {1}")]
    Client(u16, String),
    #[error("HTTP {0}")]
    Server(u16),
    #[error("undecodable answer: {0}")]
    Decode(String),
    #[error("provider stopped")]
    Stopped,
}

impl ProviderError {
    /// The metric label of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Timeout => "timeout",
            ProviderError::Connect(_) | ProviderError::Stopped => "connect",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Quota => "quota",
            ProviderError::Auth => "auth",
            ProviderError::Client(..) => "http_4xx",
            ProviderError::Server(_) => "http_5xx",
            ProviderError::Decode(_) => "decode",
        }
    }

    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Timeout
                | ProviderError::Connect(_)
                | ProviderError::RateLimited { .. }
                | ProviderError::Server(_)
        )
    }
}

/// A request to send: path below the base URL, headers, JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

/// DeepL's code for a target language.
pub fn deepl_target(lang: &str) -> String {
    match lang {
        "en" => "EN-US".into(),
        "pt" => "PT-BR".into(),
        "zh" => "ZH-HANS".into(),
        other => other.to_ascii_uppercase(),
    }
}

fn language_name(code: &str) -> &str {
    match code {
        "zh" => "Chinese (Simplified)",
        "en" => "English",
        "es" => "Spanish",
        "ja" => "Japanese",
        "ar" => "Arabic",
        "ko" => "Korean",
        "fr" => "French",
        "de" => "German",
        "pt" => "Portuguese",
        "ru" => "Russian",
        "th" => "Thai",
        other => other,
    }
}

/// The system message of the OpenAI-compatible provider.
pub fn openai_instructions(source: &str, target: &str) -> String {
    format!(
        "You translate livestream shopping chat messages from {} to {}. The user message is a \
         JSON array of strings. Answer with only a JSON array of the same length, each string \
         translated. The strings are XML-escaped text: keep every <x i=\"N\">...</x> element \
         exactly as it is (it is a product name the merchant fixed), and keep entities such as \
         &amp; and &lt; as they are.",
        language_name(source),
        language_name(target)
    )
}

/// Build the request for `texts` (XML-escaped markup with `<x i="N">` placeholders).
pub fn build(cfg: &ProviderConfig, texts: &[String], source: &str, target: &str) -> HttpRequest {
    match cfg.kind {
        ProviderKind::Libretranslate => {
            let q = if texts.len() == 1 {
                json!(texts[0])
            } else {
                json!(texts)
            };
            let mut body = json!({"q": q, "source": source, "target": target, "format": "html"});
            if !cfg.api_key.is_empty() {
                body["api_key"] = json!(cfg.api_key);
            }
            HttpRequest {
                path: "/translate",
                headers: Vec::new(),
                body,
            }
        }
        ProviderKind::Deepl => HttpRequest {
            path: "/v2/translate",
            headers: vec![("authorization", format!("DeepL-Auth-Key {}", cfg.api_key))],
            body: json!({
                "text": texts,
                "source_lang": source.to_ascii_uppercase(),
                "target_lang": deepl_target(target),
                "tag_handling": "xml",
                "ignore_tags": ["x"],
            }),
        },
        ProviderKind::Openai => HttpRequest {
            path: "/v1/chat/completions",
            headers: vec![("authorization", format!("Bearer {}", cfg.api_key))],
            body: json!({
                "model": cfg.model,
                "temperature": 0,
                "messages": [
                    {"role": "system", "content": openai_instructions(source, target)},
                    {"role": "user", "content": serde_json::to_string(texts).unwrap_or_default()},
                ],
            }),
        },
    }
}

/// Read a `Retry-After` header value (seconds; HTTP dates are not used by these APIs).
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// Parse an answer to a request of `n` texts.
pub fn parse(
    kind: ProviderKind,
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
    n: usize,
) -> Result<Vec<String>, ProviderError> {
    let message = || {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error")
                    .map(|e| match e {
                        Value::String(s) => s.clone(),
                        other => other
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .or_else(|| v.get("message").and_then(Value::as_str).map(str::to_owned))
            })
            .unwrap_or_default()
    };
    match status {
        200 => {}
        429 | 529 => {
            return Err(ProviderError::RateLimited {
                retry_after: retry_after(retry_after_header),
            })
        }
        456 => return Err(ProviderError::Quota),
        401 | 403 => return Err(ProviderError::Auth),
        402 if kind == ProviderKind::Openai => return Err(ProviderError::Quota),
        s if (500..600).contains(&s) => return Err(ProviderError::Server(s)),
        s => return Err(ProviderError::Client(s, message())),
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ProviderError::Decode(e.to_string()))?;
    let out: Vec<String> = match kind {
        ProviderKind::Libretranslate => match v.get("translatedText") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| ProviderError::Decode("translatedText: not strings".into()))?,
            _ => return Err(ProviderError::Decode("no translatedText".into())),
        },
        ProviderKind::Deepl => v
            .get("translations")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::Decode("no translations".into()))?
            .iter()
            .map(|t| t.get("text").and_then(Value::as_str).map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| ProviderError::Decode("translations[].text missing".into()))?,
        ProviderKind::Openai => {
            let content = v
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| ProviderError::Decode("no choices[0].message.content".into()))?;
            // Models sometimes wrap the array in a code fence.
            let trimmed = content
                .trim()
                .trim_start_matches("```json")
                .trim_start_matches("```")
                .trim_end_matches("```")
                .trim();
            serde_json::from_str::<Vec<String>>(trimmed)
                .map_err(|e| ProviderError::Decode(format!("content is not a JSON array: {e}")))?
        }
    };
    if out.len() != n {
        return Err(ProviderError::Decode(format!(
            "{} translations for {n} texts",
            out.len()
        )));
    }
    Ok(out)
}

struct Item {
    text: String,
    reply: oneshot::Sender<Result<String, ProviderError>>,
}

struct Shared {
    cfg: ProviderConfig,
    http: reqwest::Client,
    permits: Semaphore,
    metrics: Arc<TranslationMetrics>,
    index: usize,
}

/// One configured provider with its batcher task.
pub struct Provider {
    shared: Arc<Shared>,
    tx: mpsc::Sender<((String, String), Item)>,
}

impl Provider {
    /// Start the provider's batcher. `index` is its position in the metrics.
    pub fn spawn(
        cfg: ProviderConfig,
        metrics: Arc<TranslationMetrics>,
        index: usize,
    ) -> Arc<Provider> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .build()
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            permits: Semaphore::new(cfg.concurrency.max(1)),
            cfg,
            http,
            metrics,
            index,
        });
        // Bounded: a provider that cannot keep up makes callers fail fast (they keep the
        // original) instead of queueing without end.
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_batcher(shared.clone(), rx));
        Arc::new(Provider { shared, tx })
    }

    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// Whether this provider handles `source` → `target`.
    pub fn supports(&self, source: &str, target: &str) -> bool {
        let l = &self.shared.cfg.languages;
        l.is_empty() || (l.iter().any(|x| x == source) && l.iter().any(|x| x == target))
    }

    /// Translate one text (batched with others of the same pair).
    pub async fn translate(
        &self,
        markup: String,
        source: &str,
        target: &str,
    ) -> Result<String, ProviderError> {
        let (reply, rx) = oneshot::channel();
        let item = Item {
            text: markup,
            reply,
        };
        self.tx
            .try_send(((source.to_owned(), target.to_owned()), item))
            .map_err(|_| ProviderError::Stopped)?;
        // The batch window plus the request's own timeout bound the wait.
        let limit =
            self.shared.cfg.timeout + self.shared.cfg.batch_window + Duration::from_millis(50);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProviderError::Stopped),
            Err(_) => Err(ProviderError::Timeout),
        }
    }
}

type Pair = (String, String);

async fn run_batcher(shared: Arc<Shared>, mut rx: mpsc::Receiver<(Pair, Item)>) {
    let mut pending: HashMap<Pair, (Instant, Vec<Item>)> = HashMap::new();
    loop {
        let next = pending.values().map(|(at, _)| *at).min();
        tokio::select! {
            got = rx.recv() => {
                let Some((pair, item)) = got else { break };
                let deadline = Instant::now() + shared.cfg.batch_window;
                let entry = pending.entry(pair.clone()).or_insert_with(|| (deadline, Vec::new()));
                entry.1.push(item);
                if entry.1.len() >= shared.cfg.max_batch {
                    if let Some((_, items)) = pending.remove(&pair) {
                        tokio::spawn(send_batch(shared.clone(), pair, items));
                    }
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                let due: Vec<Pair> = pending
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for pair in due {
                    if let Some((_, items)) = pending.remove(&pair) {
                        tokio::spawn(send_batch(shared.clone(), pair, items));
                    }
                }
            }
        }
    }
}

async fn send_batch(shared: Arc<Shared>, pair: Pair, items: Vec<Item>) {
    let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let result = match shared.permits.acquire().await {
        Ok(_permit) => call_with_retries(&shared, &texts, &pair.0, &pair.1).await,
        Err(_) => Err(ProviderError::Stopped),
    };
    match result {
        Ok(out) => {
            for (item, text) in items.into_iter().zip(out) {
                let _ = item.reply.send(Ok(text));
            }
        }
        Err(e) => {
            tracing::warn!(provider = %shared.cfg.name, source = %pair.0, target = %pair.1, texts = texts.len(), error = %e, "translation request failed");
            for item in items {
                let _ = item.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn call_with_retries(
    shared: &Shared,
    texts: &[String],
    source: &str,
    target: &str,
) -> Result<Vec<String>, ProviderError> {
    let cfg = &shared.cfg;
    let stats = &shared.metrics.providers[shared.index];
    let deadline = Instant::now() + cfg.timeout;
    let mut attempt = 0u32;
    loop {
        let started = Instant::now();
        let result =
            match tokio::time::timeout_at(deadline, send_once(shared, texts, source, target)).await
            {
                Ok(r) => r,
                Err(_) => Err(ProviderError::Timeout),
            };
        stats.call(texts.len(), started.elapsed().as_secs_f64());
        let e = match result {
            Ok(out) => return Ok(out),
            Err(e) => e,
        };
        stats.error(e.kind());
        if !e.retryable() || attempt >= cfg.retries {
            return Err(e);
        }
        let backoff = {
            use rand::Rng;
            let base = cfg.retry_backoff.saturating_mul(1 << attempt.min(10));
            base / 2 + base.mul_f64(rand::rng().random::<f64>() / 2.0)
        };
        let delay = match &e {
            ProviderError::RateLimited {
                retry_after: Some(d),
            } => *d,
            _ => backoff,
        };
        if Instant::now() + delay >= deadline {
            return Err(e);
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
        stats.retry();
    }
}

async fn send_once(
    shared: &Shared,
    texts: &[String],
    source: &str,
    target: &str,
) -> Result<Vec<String>, ProviderError> {
    let cfg = &shared.cfg;
    let req = build(cfg, texts, source, target);
    let url = format!("{}{}", cfg.url.trim_end_matches('/'), req.path);
    let mut builder = shared.http.post(url).json(&req.body);
    for (k, v) in &req.headers {
        builder = builder.header(*k, v);
    }
    let response = builder.send().await.map_err(|e| {
        if e.is_timeout() {
            ProviderError::Timeout
        } else {
            ProviderError::Connect(e.to_string())
        }
    })?;
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::Connect(e.to_string()))?;
    parse(cfg.kind, status, retry.as_deref(), &body, texts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ProviderKind) -> ProviderConfig {
        ProviderConfig {
            name: "p".into(),
            kind,
            url: "http://127.0.0.1:1".into(),
            api_key: "k".into(),
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn requests_follow_each_published_contract() {
        let texts = vec!["a".to_owned(), "b".to_owned()];
        let r = build(&cfg(ProviderKind::Libretranslate), &texts, "zh", "en");
        assert_eq!(r.path, "/translate");
        assert_eq!(r.body["q"], json!(["a", "b"]));
        assert_eq!(r.body["format"], "html");
        assert_eq!(r.body["api_key"], "k");
        let one = build(&cfg(ProviderKind::Libretranslate), &texts[..1], "zh", "en");
        assert_eq!(one.body["q"], "a");
        let r = build(&cfg(ProviderKind::Deepl), &texts, "zh", "en");
        assert_eq!(r.path, "/v2/translate");
        assert_eq!(
            r.headers,
            vec![("authorization", "DeepL-Auth-Key k".to_owned())]
        );
        assert_eq!(r.body["target_lang"], "EN-US");
        assert_eq!(r.body["source_lang"], "ZH");
        assert_eq!(r.body["ignore_tags"], json!(["x"]));
        let r = build(&cfg(ProviderKind::Openai), &texts, "zh", "en");
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.body["messages"][1]["content"], "[\"a\",\"b\"]");
    }

    #[test]
    fn answers_and_errors_parse() {
        use ProviderKind::*;
        assert_eq!(
            parse(
                Libretranslate,
                200,
                None,
                br#"{"translatedText":["x","y"]}"#,
                2
            ),
            Ok(vec!["x".into(), "y".into()])
        );
        assert_eq!(
            parse(
                Deepl,
                200,
                None,
                br#"{"translations":[{"detected_source_language":"ZH","text":"x"}]}"#,
                1
            ),
            Ok(vec!["x".into()])
        );
        assert_eq!(
            parse(Openai, 200, None, br#"{"choices":[{"message":{"role":"assistant","content":"```json\n[\"x\"]\n```"}}]}"#, 1),
            Ok(vec!["x".into()])
        );
        assert_eq!(
            parse(Deepl, 429, Some("2"), b"", 1),
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(parse(Deepl, 456, None, b"", 1), Err(ProviderError::Quota));
        assert_eq!(parse(Deepl, 403, None, b"", 1), Err(ProviderError::Auth));
        assert_eq!(
            parse(Openai, 503, None, b"", 1),
            Err(ProviderError::Server(503))
        );
        assert_eq!(
            parse(
                Libretranslate,
                400,
                None,
                br#"{"error":"Invalid request"}"#,
                1
            ),
            Err(ProviderError::Client(400, "Invalid request".into()))
        );
        assert!(matches!(
            parse(Libretranslate, 200, None, br#"{"translatedText":["x"]}"#, 2),
            Err(ProviderError::Decode(_))
        ));
    }
}
