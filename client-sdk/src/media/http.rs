//! A minimal HTTP/1.1 client for WHIP/WHEP signaling (`http://` only): one request per
//! connection, `Content-Length` or chunked bodies. Enough for tests and the load tester; a
//! browser or OBS does this part in real deployments.

use super::MediaError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP response: status, headers (names lowercased) and body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header named `name` (lowercase), e.g. several `link` headers.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `http://host:port` → (`host:port`, base path without trailing slash).
fn split_base(base: &str) -> Result<(String, String), MediaError> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| MediaError::Url(format!("{base}: only http:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(MediaError::Url(format!("{base}: no host")));
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// Where a `Location` sends a request made to `base`: (new base, path). An absolute
/// `http://` URL names a new base; a path stays on `base`.
pub fn resolve(base: &str, location: &str) -> Result<(String, String), MediaError> {
    if location.starts_with("http://") {
        let (authority, path) = split_base(location)?;
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        return Ok((format!("http://{authority}"), path));
    }
    if location.starts_with('/') {
        return Ok((base.to_owned(), location.to_owned()));
    }
    Err(MediaError::Url(format!(
        "{location}: only http:// URLs and absolute paths are followed"
    )))
}

/// Send one request to `base` + `path` (path may also be an absolute `http://` URL).
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, MediaError> {
    let (authority, prefix, path) = if path.starts_with("http://") {
        let (a, p) = split_base(path)?;
        (a, String::new(), if p.is_empty() { "/".into() } else { p })
    } else {
        let (a, p) = split_base(base)?;
        (a, p, path.to_owned())
    };
    let mut stream = TcpStream::connect(&authority)
        .await
        .map_err(|e| MediaError::Http(format!("connect {authority}: {e}")))?;
    let mut req = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| MediaError::Http(format!("write: {e}")))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| MediaError::Http(format!("read: {e}")))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, MediaError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| MediaError::Http("no end of headers".into()))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| MediaError::Http("headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| MediaError::Http("no status line".into()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&s[..eol])
            .ok()
            .and_then(|v| usize::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let rest = &s[eol + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        s = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_responses() {
        assert_eq!(
            split_base("http://127.0.0.1:8080").expect("ok"),
            ("127.0.0.1:8080".into(), String::new())
        );
        assert_eq!(
            split_base("http://example.test/api/").expect("ok"),
            ("example.test:80".into(), "/api".into())
        );
        assert!(split_base("https://x").is_err());
        assert_eq!(
            resolve("http://a:1", "http://b:2/whep/r").expect("ok"),
            ("http://b:2".into(), "/whep/r".into())
        );
        assert_eq!(
            resolve("http://a:1", "/whep/r/s").expect("ok"),
            ("http://a:1".into(), "/whep/r/s".into())
        );
        assert!(resolve("http://a:1", "https://b/whep/r").is_err());
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nLocation: /whip/r/1\r\nLink: <stun:a>\r\nLink: <stun:b>\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/whip/r/1"));
        assert_eq!(r.headers_named("link").count(), 2);
        assert_eq!(r.body, b"abcde");
    }
}
