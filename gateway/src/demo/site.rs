//! The demo's web site at `/demo/`: the client SDK's example app and the SDK itself, read
//! from the `client-sdk/` folder, plus `config.json` (the gateway's URL and the demo tokens).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The example app, within the SDK folder.
const APP: &str = "examples/todos/";
/// The folders of the SDK folder the site serves; nothing else is reachable.
const SERVED: [&str; 2] = ["examples/", "js/"];

#[derive(Clone, Debug)]
pub struct DemoSite {
    /// The `client-sdk/` folder (the SDK built into `js/pkg`).
    pub sdk_dir: PathBuf,
    /// `config.json`: `{"url": …, "tokens": {org: token}}`.
    pub config: String,
}

impl DemoSite {
    /// Whether the SDK has been built (its wasm is in `js/pkg`).
    pub fn sdk_built(&self) -> bool {
        self.sdk_dir.join("js/pkg/sdk_bg.wasm").is_file()
    }
}

pub fn router<S: Clone + Send + Sync + 'static>(site: Arc<DemoSite>) -> Router<S> {
    let config = site.config.clone();
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent(&format!("/demo/{APP}")) }))
        .route("/demo/", get(|| async { Redirect::permanent(&format!("/demo/{APP}")) }))
        .route("/demo/config.json", get(move || async move { ([(header::CONTENT_TYPE, "application/json")], config) }))
        .route("/demo/{*path}", get(move |UrlPath(path): UrlPath<String>| file(site.clone(), path)))
}

async fn file(site: Arc<DemoSite>, path: String) -> Response {
    let path = if path.is_empty() || path.ends_with('/') { format!("{path}index.html") } else { path };
    let Some(kind) = content_type(&path) else { return StatusCode::NOT_FOUND.into_response() };
    if !SERVED.iter().any(|p| path.starts_with(p)) || !safe(Path::new(&path)) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if !site.sdk_built() {
        let why = "The client SDK is not built: scripts/demo.sh builds it (or run build_sdk from scripts/lib/setup.sh), \
                   or pass `gateway demo --sdk-dir` the client-sdk folder of a built checkout.";
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    match tokio::fs::read(site.sdk_dir.join(&path)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Plain relative paths only: no `..`, no hidden files.
fn safe(path: &Path) -> bool {
    path.components().all(|c| matches!(c, std::path::Component::Normal(s) if !s.to_string_lossy().starts_with('.')))
}

fn content_type(path: &str) -> Option<&'static str> {
    Some(match path.rsplit_once('.')?.1 {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_with_known_types_are_served() {
        assert!(safe(Path::new("js/pkg/sdk.js")));
        for bad in ["js/../../Cargo.toml", "/etc/passwd", "js/.hidden.js", "examples/../../../x.html"] {
            assert!(!safe(Path::new(bad)) || content_type(bad).is_none(), "{bad}");
        }
        assert_eq!(content_type("js/index.d.ts"), None);
        assert_eq!(content_type("js/pkg/sdk_bg.wasm"), Some("application/wasm"));
    }
}
