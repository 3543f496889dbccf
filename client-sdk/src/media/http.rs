//! WHIP/WHEP signaling over HTTP (`http://` only): URLs (a base, a `Location`, a redirect)
//! and one request per call through the SDK's HTTP client ([`crate::http`], hyper). Enough
//! for tests and the load tester; a browser or OBS does this part in real deployments.

use super::MediaError;

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
/// `http://` URL names a new base; an absolute path stays on `base`'s origin and replaces
/// its path (RFC 3986 §5.2.2: `http://h/api` + `/whep/r` is `http://h/whep/r`).
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
        let (authority, _) = split_base(base)?;
        return Ok((format!("http://{authority}"), location.to_owned()));
    }
    Err(MediaError::Url(format!(
        "{location}: only http:// URLs and absolute paths are followed"
    )))
}

/// Send one request to `base` + `path` (path may also be an absolute `http://` URL), through
/// the SDK's one HTTP client ([`crate::http`]).
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
    let answer = crate::http::send(
        &authority,
        method,
        &format!("{prefix}{path}"),
        headers,
        hyper::body::Bytes::copy_from_slice(body),
    )
    .await
    .map_err(|e| MediaError::Http(format!("{method} {prefix}{path} on {authority}: {e}")))?;
    Ok(HttpResponse {
        status: answer.status,
        headers: answer.headers,
        body: answer.body.to_vec(),
    })
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
        assert_eq!(
            resolve("http://a:1/api", "/whep/r/s").expect("ok"),
            ("http://a:1".into(), "/whep/r/s".into()),
            "an absolute path replaces the base's path prefix"
        );
        assert!(resolve("http://a:1", "https://b/whep/r").is_err());
    }
}
