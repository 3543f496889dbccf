//! The HTTP reads of flash sales a client needs beside its WebSocket: a reservation's state
//! (Ferry sends no push when a payment confirms it or its hold lapses), a sale with live stock
//! and the server's clock, and a room's sales page by page. `docs/http-api.md` documents the
//! endpoints; the response bodies are the protocol's own types.
//!
//! One HTTP/1.1 request per call, over a fresh TCP connection (hyper's client half), bounded
//! by a timeout. Plain `http://` only, like the SDK's `ws://`. [`send`] is that request, also
//! used by the `media` feature's WHIP/WHEP signaling.

use crate::client::ClientError;
use crate::protocol::commerce::{
    ReservationId, ReservationLookup, ReservationView, RoomSalesPage, SaleId, SaleLookup,
};
use crate::protocol::RoomId;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest response body read (a page of 100 sales with their products is far below it).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Reads a Ferry node's flash-sale endpoints with a token (`Authorization: Bearer`).
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// `host:port` of the node.
    authority: String,
    token: String,
    timeout: Duration,
}

/// The `error` object of an HTTP error answer.
#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl HttpClient {
    /// A client for the node at `url`: `http://host:port`, or the node's WebSocket URL
    /// (`ws://host:port/ws`; the path is ignored). 10 s timeout per call.
    pub fn new(url: &str, token: impl Into<String>) -> Result<HttpClient, ClientError> {
        let rest = ["http://", "ws://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "`{url}`: only http:// and ws:// URLs are supported"
                ))
            })?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(ClientError::Protocol(format!("`{url}`: no host:port")));
        }
        Ok(HttpClient {
            authority: authority.to_owned(),
            token: token.into(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Bound every call by `timeout` instead of 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// `GET /api/reservations/{id}`: the reservation in its current state (`reserved`,
    /// `confirmed` or `released`). Only its buyer (or an admin) may read it; anyone else gets
    /// `not_found`, as for an unknown id.
    pub async fn reservation(&self, id: &ReservationId) -> Result<ReservationView, ClientError> {
        let path = format!("/api/reservations/{}", escape(id.as_str()));
        let answer: ReservationLookup = self.get(&path).await?;
        Ok(answer.reservation)
    }

    /// `GET /api/sales/{id}`: the sale with live stock and status, and the server's clock.
    pub async fn sale(&self, id: &SaleId) -> Result<SaleLookup, ClientError> {
        self.get(&format!("/api/sales/{}", escape(id.as_str())))
            .await
    }

    /// `GET /api/rooms/{room}/sales`: one page of the room's sales, newest first (`limit`
    /// 1..=100). Pass the page's `next` as `before` for the next page; `next` is `None` on
    /// the last one. Needs a host, moderator or admin token for the room.
    pub async fn room_sales(
        &self,
        room: &RoomId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<RoomSalesPage, ClientError> {
        let mut path = format!("/api/rooms/{}/sales?limit={limit}", escape(room.as_str()));
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        self.get(&path).await
    }

    /// GET `path` and decode a 200 answer; other statuses become [`ClientError::Http`].
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = tokio::time::timeout(self.timeout, self.fetch(path))
            .await
            .map_err(|_| ClientError::Timeout)??;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| {
                ClientError::Protocol(format!("unexpected answer to GET {path}: {e}"))
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorAnswer>(&body) {
            Ok(a) => (a.error.code, a.error.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        };
        Err(ClientError::Http {
            status,
            code,
            message,
        })
    }

    async fn fetch(&self, path: &str) -> Result<(u16, Bytes), ClientError> {
        let auth = format!("Bearer {}", self.token);
        let headers = [
            ("authorization", auth.as_str()),
            ("accept", "application/json"),
        ];
        let answer = send(&self.authority, "GET", path, &headers, Bytes::new())
            .await
            .map_err(|e| ClientError::Protocol(format!("GET {path} on {}: {e}", self.authority)))?;
        Ok((answer.status, answer.body))
    }
}

/// An HTTP answer as [`send`] returns it.
pub(crate) struct Answer {
    pub status: u16,
    /// Header names lowercased, in order (repeated names kept: several `Link`s).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// One HTTP/1.1 request to `authority` (`host:port`) over a fresh TCP connection, on hyper's
/// client half; the body read is capped at [`MAX_BODY`]. The SDK's only HTTP code: the sale
/// reads above and WHIP/WHEP signaling (`media::http`) both use it. Not time-bounded:
/// callers wrap it in their timeout.
pub(crate) async fn send(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    // The connection task ends when the answer has been read (or the call is dropped).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Percent-encode everything but unreserved characters (ids are plain, but a path segment
/// must never be able to change the route).
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        let c = HttpClient::new("ws://127.0.0.1:8080/ws", "t").expect("ws url");
        assert_eq!(c.authority, "127.0.0.1:8080");
        let c = HttpClient::new("http://ferry.local:80", "t").expect("http url");
        assert_eq!(c.authority, "ferry.local:80");
        assert!(HttpClient::new("https://x", "t").is_err());
        assert!(HttpClient::new("http:///ws", "t").is_err());
        assert_eq!(escape("s1.ab:c"), "s1.ab:c");
        assert_eq!(escape("a/../b c"), "a%2F..%2Fb%20c");
    }
}
