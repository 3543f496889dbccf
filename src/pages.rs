//! The browser pages and the browser SDK, served from the binary: the viewer page
//! (`GET /watch/{room}`), the host page (`GET /host/{room}`), the SDK's ES modules
//! (`GET /sdk/{file}.js`) and the pages' own scripts and stylesheet (`GET /pages/{file}`).
//!
//! Every file is compiled in with `include_str!` from `client-sdk/js/`, so a node needs no
//! static directory and the pages always match the server they came from. This module owns
//! the table of served files, their content types and the security headers; it must not hold
//! page logic (that is the JavaScript's) and never inserts anything from the request into a
//! response body: the pages read the room from their own URL, so the HTML is the same for
//! every room. Served only when `server.pages` is on.
//!
//! Security headers on every response: a Content-Security-Policy that allows only this
//! origin's scripts, styles and connections (no inline code, no CDNs; product images may come
//! from any `https:` host), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`
//! (a token passed in `?token=` never leaks to an image host) and `frame-ancestors 'none'`.

use crate::http::{check_room_id, ApiError};
use crate::server::AppState;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// A file compiled into the binary.
struct Asset {
    name: &'static str,
    body: &'static str,
}

macro_rules! assets {
    ($dir:literal: $($name:literal),+ $(,)?) => {
        &[$(Asset { name: $name, body: include_str!(concat!("../client-sdk/js/", $dir, "/", $name)) }),+]
    };
}

/// The SDK's modules, served at `/sdk/{name}`. Every `.js` file of `client-sdk/js/sdk/` must be
/// listed (a test checks it): the modules import each other by relative path.
const SDK: &[Asset] = assets!("sdk":
    "ferry.js", "client.js", "emitter.js", "protocol.js", "clock.js", "stream.js", "backoff.js",
    "token.js", "sales.js", "video.js", "chat.js", "http.js",
);

/// The pages' scripts and stylesheet, served at `/pages/{name}`. Every `.js` and `.css` file of
/// `client-sdk/js/pages/` must be listed (a test checks it).
const PAGE_ASSETS: &[Asset] = assets!("pages":
    "common.js", "watch.js", "host.js", "pages.css",
);

const WATCH_HTML: &str = include_str!("../client-sdk/js/pages/watch.html");
const HOST_HTML: &str = include_str!("../client-sdk/js/pages/host.html");

/// Only this origin's code and connections; images from this origin, `https:` or `data:`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; \
     media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The page and SDK routes (merged by `http::router` when `server.pages` is on).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/watch/{room}", get(watch_page))
        .route("/host/{room}", get(host_page))
        .route("/sdk/{file}", get(sdk_file))
        .route("/pages/{file}", get(page_asset))
}

/// A response with `body`, its content type and the security headers.
fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidate every time, so a node upgrade serves its own SDK at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such {what}"),
    )
}

async fn watch_page(Path(room): Path<String>) -> Result<Response, ApiError> {
    check_room_id(&room)?;
    Ok(serve("text/html; charset=utf-8", WATCH_HTML))
}

async fn host_page(Path(room): Path<String>) -> Result<Response, ApiError> {
    check_room_id(&room)?;
    Ok(serve("text/html; charset=utf-8", HOST_HTML))
}

async fn sdk_file(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = SDK
        .iter()
        .find(|a| a.name == file)
        .ok_or_else(|| not_found("SDK module"))?;
    Ok(serve("text/javascript; charset=utf-8", asset.body))
}

async fn page_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = PAGE_ASSETS
        .iter()
        .find(|a| a.name == file)
        .ok_or_else(|| not_found("page asset"))?;
    Ok(serve(content_type_of(asset.name), asset.body))
}

fn content_type_of(name: &str) -> &'static str {
    if name.ends_with(".css") {
        "text/css; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The files of `client-sdk/js/{dir}` whose names end with one of `exts`.
    fn files_in(dir: &str, exts: &[&str]) -> BTreeSet<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("client-sdk/js")
            .join(dir);
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| exts.iter().any(|ext| name.ends_with(ext)))
            .collect()
    }

    #[test]
    fn every_sdk_module_and_page_asset_is_served() {
        let served: BTreeSet<String> = SDK.iter().map(|a| a.name.to_owned()).collect();
        assert_eq!(
            served,
            files_in("sdk", &[".js"]),
            "SDK table vs client-sdk/js/sdk"
        );
        let served: BTreeSet<String> = PAGE_ASSETS.iter().map(|a| a.name.to_owned()).collect();
        assert_eq!(
            served,
            files_in("pages", &[".js", ".css"]),
            "page assets vs client-sdk/js/pages"
        );
    }

    #[test]
    fn pages_reference_only_served_files() {
        for html in [WATCH_HTML, HOST_HTML] {
            for reference in html
                .split(['"', '\''])
                .filter(|s| s.starts_with("/pages/") || s.starts_with("/sdk/"))
            {
                let (dir, name) = reference[1..].split_once('/').expect("a path");
                let table = if dir == "sdk" { SDK } else { PAGE_ASSETS };
                assert!(
                    table.iter().any(|a| a.name == name),
                    "{reference} is not served"
                );
            }
            // CSP: no inline script or style.
            assert!(!html.contains("<script>") && !html.contains("style="));
        }
    }
}
