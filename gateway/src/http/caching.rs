//! What makes shape answers cacheable and collapsible: `cache-control` by case, the
//! `electric-cursor`, the request's offset in the `etag`, and the 409 that sends a client
//! to a shape's replacement.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shapes::wire::MUST_REFETCH;

use super::AppState;
use super::request::{RequestOffset, ShapeRequest};
use crate::fanout::live_shape::LiveShape;

/// The next `electric-cursor`: the end of the current long-poll interval, so clients at
/// the same position share one URL (CDN collapsing) that changes every interval.
pub fn next_cursor(previous: u64, interval_secs: u64, now_unix: u64) -> u64 {
    const EPOCH: u64 = 1_728_432_000; // 2024-10-09T00:00:00Z
    if interval_secs == 0 {
        return 0;
    }
    let now = now_unix.saturating_sub(EPOCH);
    let next = now.div_ceil(interval_secs) * interval_secs;
    if next > previous { next } else { previous + rand::random_range(1..=3600) }
}

pub(super) fn cursor_for(state: &AppState, req: &ShapeRequest) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    next_cursor(req.cursor, state.settings.long_poll_timeout.as_secs(), now)
}

pub(super) fn offset_text(req: &ShapeRequest) -> String {
    match req.offset {
        RequestOffset::Start => "-1".into(),
        RequestOffset::Now => "now".into(),
        RequestOffset::At(o) => o.to_string(),
    }
}

/// The `cache-control` of a shape answer. With tokens, answers are `private` (browser
/// caches only) unless `--shared-cache-by-caller` vouches for a shared cache that keys on
/// the caller, like the chart's nginx tier: RFC 9111 lets shared caches store an
/// authenticated answer marked `public`, and several CDNs do not key on `Vary`.
pub(super) fn cache_control(state: &AppState, public: &str) -> HeaderValue {
    if !state.auth.enabled() || state.settings.shared_cache_by_caller {
        return HeaderValue::from_str(public).unwrap_or(HeaderValue::from_static("no-cache"));
    }
    let private: Vec<&str> = public
        .split(", ")
        .filter(|d| !d.starts_with("s-maxage"))
        .map(|d| if d == "public" { "private" } else { d })
        .collect();
    HeaderValue::from_str(&private.join(", ")).unwrap_or(HeaderValue::from_static("private, no-cache"))
}

/// 409: the handle is gone or belongs to another definition; `current` is its replacement.
pub(super) fn must_refetch(state: &AppState, current: Option<&LiveShape>) -> Response {
    let mut resp = (StatusCode::CONFLICT, MUST_REFETCH).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    match current.and_then(|s| HeaderValue::from_str(s.handle.as_str()).ok()) {
        Some(v) => {
            h.insert("electric-handle", v);
            h.insert(header::CACHE_CONTROL, cache_control(state, "public, max-age=60, must-revalidate"));
        }
        None => {
            h.insert(header::CACHE_CONTROL, cache_control(state, "public, max-age=1, must-revalidate"));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_moves_to_the_next_interval_and_never_repeats() {
        let epoch = 1_728_432_000;
        assert_eq!(next_cursor(0, 20, epoch + 45), 60);
        assert_eq!(next_cursor(59, 20, epoch + 45), 60);
        let bumped = next_cursor(60, 20, epoch + 45);
        assert!(bumped > 60 && bumped <= 3660);
    }
}
