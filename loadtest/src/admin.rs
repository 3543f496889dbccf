//! Ferry's HTTP API and tokens as the harness uses them: minting tokens with the server's
//! HS256 secret, a minimal HTTP/1.1 client (loopback only, one request per connection),
//! the catalog (`PUT /api/products/{id}`), and a sale's order events read **as an order
//! system reads them**: a consumer group with acknowledgements (`docs/http-api.md`, "Order
//! events"), plus the audit snapshot with the stock counters.

use crate::sale::{StockCounters, StreamEvent};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The claims of a Ferry token (`src/auth.rs`).
#[derive(Clone, Debug, Serialize)]
pub struct Claims<'a> {
    pub sub: String,
    pub name: String,
    /// `viewer`, `host` or `admin`.
    pub role: &'a str,
    /// Room pattern (`*` glob).
    pub room: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market: Option<&'a str>,
}

impl<'a> Claims<'a> {
    /// A token for `user` with `role` in rooms matching `room`, valid for 6 hours.
    pub fn new(user: impl Into<String>, role: &'a str, room: impl Into<String>) -> Self {
        let sub = user.into();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Claims {
            name: sub.clone(),
            sub,
            role,
            room: room.into(),
            exp: now + 6 * 3600,
            lang: None,
            market: None,
        }
    }

    /// Sign with the server's HS256 secret.
    pub fn mint(&self, key: &jsonwebtoken::EncodingKey) -> Result<String, String> {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), self, key)
            .map_err(|e| format!("cannot mint a token: {e}"))
    }
}

/// Why an HTTP call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{method} {path}: {message}")]
    Io {
        method: String,
        path: String,
        message: String,
    },
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{method} {path}: bad response: {message}")]
    Malformed {
        method: String,
        path: String,
        message: String,
    },
}

/// Longest wait for one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request (`Connection: close`) with a bearer token and an optional JSON body.
/// Returns the status and the body (content-length or chunked, decoded).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, String), HttpError> {
    let io = |message: String| HttpError::Io {
        method: method.to_owned(),
        path: path.to_owned(),
        message,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| io(format!("connect {addr}: {e}")))?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        stream
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .map_err(|e| io(e.to_string()))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| io(e.to_string()))?;
        Ok(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| io(format!("no answer within {HTTP_TIMEOUT:?}")))??;
    parse_response(&raw).map_err(|message| HttpError::Malformed {
        method: method.to_owned(),
        path: path.to_owned(),
        message,
    })
}

/// Split a whole HTTP/1.1 response into status and body.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let payload = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(payload)?
    } else {
        payload.to_vec()
    };
    String::from_utf8(body)
        .map(|b| (status, b))
        .map_err(|_| "body is not UTF-8".to_owned())
}

/// Decode a chunked body.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

/// A request that must answer 200 with a JSON body.
pub async fn json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, HttpError> {
    let text = body.map(serde_json::Value::to_string);
    let (status, reply) = request(addr, method, path, token, text.as_deref()).await?;
    if status != 200 {
        let mut body = reply;
        body.truncate(300);
        return Err(HttpError::Status {
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            body,
        });
    }
    serde_json::from_str(&reply).map_err(|e| HttpError::Malformed {
        method: method.to_owned(),
        path: path.to_owned(),
        message: format!("not JSON: {e}"),
    })
}

/// Create or replace a catalog product (host or admin token), sold in `markets`.
pub async fn put_product(
    addr: SocketAddr,
    token: &str,
    id: &str,
    title: &str,
    price_cny: i64,
    markets: &[String],
) -> Result<(), HttpError> {
    let markets: serde_json::Map<String, serde_json::Value> = markets
        .iter()
        .map(|m| (m.clone(), serde_json::Value::Bool(true)))
        .collect();
    let body = serde_json::json!({"title": title, "price_cny": price_cny, "markets": markets});
    json(
        addr,
        "PUT",
        &format!("/api/products/{id}"),
        token,
        Some(&body),
    )
    .await
    .map(|_| ())
}

/// A sale's order events as one consumer group received them, in stream order.
#[derive(Clone, Debug, Default)]
pub struct ConsumedStream {
    pub events: Vec<StreamEvent>,
    /// Events the harness could not read (missing fields).
    pub unreadable: u64,
    /// Events delivered more than once to the group (redeliveries); kept once.
    pub redelivered: u64,
}

/// Most batches one read of a stream takes (1,000 events each): bounds the loop.
const MAX_BATCHES: usize = 10_000;

/// Read every order event of `sale` as consumer group `group` (`GET
/// /api/sales/{id}/orders`), acknowledging each batch (`POST .../orders/ack`), until a read
/// returns nothing: what an order system consuming the sale would have received.
pub async fn consume_order_events(
    addr: SocketAddr,
    admin_token: &str,
    sale: &str,
    group: &str,
) -> Result<ConsumedStream, HttpError> {
    let mut out = ConsumedStream::default();
    let mut seen = std::collections::HashSet::new();
    let read_path = format!("/api/sales/{sale}/orders?group={group}&count=1000");
    let ack_path = format!("/api/sales/{sale}/orders/ack");
    for _ in 0..MAX_BATCHES {
        let batch = json(addr, "GET", &read_path, admin_token, None).await?;
        let entries = batch
            .get("events")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| HttpError::Malformed {
                method: "GET".into(),
                path: read_path.clone(),
                message: "no `events` array".into(),
            })?;
        if entries.is_empty() {
            return Ok(out);
        }
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            let id = entry
                .get("id")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !seen.insert(id.clone()) {
                out.redelivered += 1;
            } else {
                match entry.get("event").and_then(StreamEvent::from_json) {
                    Some(e) => out.events.push(e),
                    None => out.unreadable += 1,
                }
            }
            ids.push(serde_json::Value::String(id));
        }
        let ack = serde_json::json!({"group": group, "ids": ids});
        json(addr, "POST", &ack_path, admin_token, Some(&ack)).await?;
    }
    Err(HttpError::Malformed {
        method: "GET".into(),
        path: read_path,
        message: format!("still more events after {MAX_BATCHES} batches"),
    })
}

/// One `GET /api/sales/{id}/orders/all` snapshot: the stock counters and the events they
/// sum up.
pub async fn audit(
    addr: SocketAddr,
    admin_token: &str,
    sale: &str,
) -> Result<(StockCounters, Vec<StreamEvent>), HttpError> {
    let path = format!("/api/sales/{sale}/orders/all");
    let all = json(addr, "GET", &path, admin_token, None).await?;
    let counters: StockCounters =
        serde_json::from_value(all.clone()).map_err(|e| HttpError::Malformed {
            method: "GET".into(),
            path: path.clone(),
            message: format!("stock counters: {e}"),
        })?;
    let events = all
        .get("events")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(StreamEvent::from_json).collect())
        .unwrap_or_default();
    Ok((counters, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_or_chunks_are_decoded() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(plain), Ok((200, "{\"a\":1}".to_owned())));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((503, "{\"a\":1}".to_owned())));
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn tokens_carry_the_documented_claims() {
        let key = jsonwebtoken::EncodingKey::from_secret(b"s");
        let mut claims = Claims::new("lt-host", "host", "flash-*");
        claims.market = Some("us");
        let token = claims.mint(&key).expect("mint");
        let mut validation = jsonwebtoken::Validation::default();
        validation.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s"),
            &validation,
        )
        .expect("decode");
        assert_eq!(decoded.claims["sub"], "lt-host");
        assert_eq!(decoded.claims["role"], "host");
        assert_eq!(decoded.claims["room"], "flash-*");
        assert_eq!(decoded.claims["market"], "us");
        assert!(decoded.claims.get("lang").is_none());
    }
}
