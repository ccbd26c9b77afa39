//! `GET /v1/shape` and `DELETE /v1/shape`: resolve the shape, then serve the snapshot
//! chunk, the live log from an offset, a long-poll, or hand over to SSE.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use shapes::log::LogVersion;
use shapes::offset::{LogOffset, Lsn};
use shapes::wire::up_to_date;

use super::AppState;
use super::caching::{cache_control, cursor_for, must_refetch, offset_text};
use super::error::ApiError;
use super::live::{next_version, read_failed, read_live, token_deadline};
use super::parts_body::PartsBody;
use super::request::{self, RequestOffset, ShapeRequest};
use super::resolve::{authorized, resolve};
use crate::auth::AuthError;
use crate::fanout::live_shape::LiveShape;

const CACHE_INITIAL: &str = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746";
const CACHE_LIVE: &str = "public, max-age=5, stale-while-revalidate=5";
/// How often a client ahead of this gateway checks whether it has caught up.
const SEEN_POLL: Duration = Duration::from_millis(20);
/// How long a first request waits for its snapshot to produce a chunk.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

/// Not an `async fn`: its arguments would be copied into the future a second time (async
/// fns move their arguments into locals), and every waiting long-poll holds this future.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
pub fn get_shape(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> impl Future<Output = Result<Response, ApiError>> + Send {
    async move {
        // Boxed, as each step below that does not wait on the log: authentication (which
        // may fetch a key set) would otherwise be inlined into every waiting long-poll's state.
        let mut req = Box::pin(authorized(&state, &headers, raw.as_deref())).await?;
        req.if_none_match = headers.get(header::IF_NONE_MATCH).cloned();
        // What a long-poll waits with is the parsed request; the text and headers go.
        drop((raw, headers));
        if let Some(spec) = &req.subset {
            return Box::pin(super::subset::serve(&state, &req, spec)).await;
        }
        // A standby may not have read a shape the leader made a moment ago: the handle says which.
        if let (Some(_), Some(handle)) = (&state.leader, req.handle.as_ref().and_then(|h| h.parse().ok())) {
            state.shapes.registry().follow_handle(&handle).map_err(ApiError::internal)?;
        }
        let shape = match Box::pin(resolve(&state, &req)).await {
            Ok(shape) => shape,
            // The stream's table is gone (dropped): its shape went with it, like any rotated one.
            Err(ApiError::MissingTable(_)) if req.handle.is_some() => return Ok(must_refetch(&state, None)),
            Err(e) => return Err(e),
        };
        if req.handle.as_ref().is_some_and(|h| *h != shape.handle.as_str()) {
            return Ok(must_refetch(&state, Some(&shape)));
        }
        match req.offset {
            RequestOffset::Start => Box::pin(serve_snapshot_chunk(&state, &req, shape, 0)).await,
            RequestOffset::Now => {
                wait_for(&shape, |v| v.snapshot_complete).await?;
                Ok(nothing_new(&state, &req, &shape, shape.log.version().head))
            }
            RequestOffset::At(o) => match o.as_snapshot_chunk() {
                Some(n) => Box::pin(serve_snapshot_chunk(&state, &req, shape, n + 1)).await,
                None => serve_live(&state, &req, shape, o).await,
            },
        }
    }
}

/// Waits until `ready` holds for the shape's log, or it is gone (→ 409 or the failure).
async fn wait_for(shape: &LiveShape, ready: impl Fn(&LogVersion) -> bool) -> Result<LogVersion, ApiError> {
    let mut rx = shape.log.subscribe();
    let waited = tokio::time::timeout(SNAPSHOT_WAIT, rx.wait_for(|v| v.gone || ready(v))).await;
    let v = match waited {
        Ok(Ok(v)) => *v,
        _ => {
            return Err(ApiError::Unavailable {
                message: "the shape's snapshot is taking long; retry".into(),
                retry_after: 5,
            });
        }
    };
    if v.gone {
        return Err(gone_error(shape));
    }
    Ok(v)
}

fn gone_error(shape: &LiveShape) -> ApiError {
    match shape.failure() {
        Some(f) if f.client_error => ApiError::invalid("where", f.message),
        Some(f) => ApiError::Unavailable { message: f.message, retry_after: 1 },
        None => ApiError::Unavailable { message: "the shape was rotated; retry".into(), retry_after: 1 },
    }
}

async fn serve_snapshot_chunk(
    state: &AppState,
    req: &ShapeRequest,
    shape: Arc<LiveShape>,
    n: u64,
) -> Result<Response, ApiError> {
    let v = wait_for(&shape, |v| v.snapshot_chunks > n || v.snapshot_complete).await?;
    if n >= v.snapshot_chunks {
        return serve_live(state, req, shape, LogOffset::SNAPSHOT_END).await;
    }
    let log_shape = shape.clone();
    let body = tokio::task::spawn_blocking(move || log_shape.log.read_snapshot_chunk(n))
        .await
        .map_err(ApiError::internal)?
        .map_err(read_failed)?
        .ok_or_else(|| ApiError::internal("snapshot chunk vanished"))?;
    Ok(respond(
        state,
        req,
        &shape,
        Served { offset: LogOffset::snapshot_chunk(n), up_to_date: false, has_data: true },
        Body::new(PartsBody::new(body.into_parts())),
    ))
}

/// Not an `async fn`, for the reason [`get_shape`] is not.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
fn serve_live<'a>(
    state: &'a AppState,
    req: &'a ShapeRequest,
    shape: Arc<LiveShape>,
    after: LogOffset,
) -> impl Future<Output = Result<Response, ApiError>> + Send + 'a {
    async move {
        let head = wait_for(&shape, |v| v.snapshot_complete).await?.head;
        // Past the head but not past what every log holds (`<global_last_seen_lsn>_0`, as SSE
        // clients resume): nothing for this shape lies in between, the client is at the head.
        if after > head && Lsn(after.tx()) > state.ack.seen() {
            // A client ahead of the log (after a failover, or coming from a replica further
            // along): give the log, or what this gateway has seen, a moment to catch up.
            let wait = state.settings.long_poll_timeout / 2;
            let mut rx = shape.log.subscribe();
            let caught_up = async {
                loop {
                    if Lsn(after.tx()) <= state.ack.seen() {
                        return Some(*rx.borrow());
                    }
                    let step = next_version(&mut rx, |v| v.head >= after);
                    if let Ok(v) = tokio::time::timeout(SEEN_POLL, step).await {
                        return v;
                    }
                }
            };
            match Box::pin(tokio::time::timeout(wait, caught_up)).await {
                Ok(Some(v)) if !v.gone => {}
                Ok(Some(_)) => return replacement(state, req).await,
                _ => return Err(ApiError::invalid("offset", "out of bounds for this shape")),
            }
        }
        if req.sse {
            return super::sse::stream(state.clone(), req, shape, after);
        }
        let mut rx = shape.log.subscribe();
        let deadline = token_deadline(req, state.settings.long_poll_timeout);
        let _permit = if req.live { Some(state.admission.live("long_poll")?) } else { None };
        loop {
            let seen = state.ack.seen();
            // An answer is a chunk: the unit caches store.
            let read = read_live(&shape, after, u64::MAX).await?;
            // A hold may outlast the token: what was written after it is not the caller's to see.
            if req.valid_until.is_some_and(|t| std::time::SystemTime::now() >= t) {
                return Err(AuthError::Expired.into());
            }
            if read.count > 0 || !req.live {
                let last = read.last.unwrap_or(after);
                let mut tail = Vec::with_capacity(100);
                if read.at_end {
                    if read.count > 0 {
                        tail.push(b',');
                    }
                    tail.extend_from_slice(&up_to_date(seen.max(Lsn(last.tx()))));
                }
                tail.push(b']');
                // The messages are the read's own bytes, shared by every answer from it: a
                // client that stops reading pins no copy of its own (Electric 1.7.8: ~400
                // stalled catch-ups pinned 3.9 GB, two copies of a chunk each).
                let body = PartsBody::new(vec![Bytes::from_static(b"["), read.body_shared(), Bytes::from(tail)]);
                let served = Served { offset: last, up_to_date: read.at_end, has_data: read.count > 0 };
                return Ok(respond(state, req, &shape, served, Body::new(body)));
            }
            // Live and nothing new: hold the request until data, rotation or timeout.
            tokio::select! {
                changed = next_version(&mut rx, |v| v.head > after) => {
                    if changed.is_none_or(|v| v.gone) {
                        return replacement(state, req).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(nothing_new(state, req, &shape, after));
                }
                _ = state.tasks.cancel().cancelled() => {
                    return Err(ApiError::Unavailable { message: "the gateway is shutting down".into(), retry_after: 1 });
                }
            }
        }
    }
}

/// Where a response leaves the client.
struct Served {
    /// The `electric-offset` to hand out.
    offset: LogOffset,
    /// The body ends with `up-to-date`.
    up_to_date: bool,
    has_data: bool,
}

fn respond(state: &AppState, req: &ShapeRequest, shape: &LiveShape, served: Served, body: Body) -> Response {
    let Served { offset, up_to_date, has_data } = served;
    let mut etag = format!("{}:{}:{}", shape.handle, offset_text(req), offset);
    if !has_data && req.live {
        // No-data answers must never revalidate into a loop.
        etag.push_str(&format!(
            ":{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
    }
    let quoted = format!("\"{etag}\"");
    let not_modified = req
        .if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_matches('"') == etag));
    let mut resp = if not_modified { StatusCode::NOT_MODIFIED.into_response() } else { Response::new(body) };
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, "electric-handle", shape.handle.as_str());
    set(h, "electric-offset", &offset.to_string());
    set(h, "electric-has-data", if has_data { "true" } else { "false" });
    set(h, "etag", &quoted);
    if up_to_date {
        h.insert("electric-up-to-date", HeaderValue::from_static(""));
    }
    if req.live {
        set(h, "electric-cursor", &cursor_for(state, req).to_string());
    } else {
        set(h, "electric-schema", &shape.schema_header);
    }
    let cache = match (req.offset, req.live) {
        (RequestOffset::Start, _) => CACHE_INITIAL,
        (_, true) => CACHE_LIVE,
        _ => state.settings.cache_catch_up.as_str(),
    };
    h.insert(header::CACHE_CONTROL, cache_control(state, cache));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

/// A response of just `up-to-date`: nothing new after `offset`.
fn nothing_new(state: &AppState, req: &ShapeRequest, shape: &LiveShape, offset: LogOffset) -> Response {
    let lsn = state.ack.seen().max(Lsn(shape.log.version().head.tx()));
    let mut body = b"[".to_vec();
    body.extend_from_slice(&up_to_date(lsn));
    body.push(b']');
    respond(state, req, shape, Served { offset, up_to_date: true, has_data: false }, body.into())
}

/// 409 naming the shape that now serves the request's definition (created if needed), so
/// the client refetches straight into it.
async fn replacement(state: &AppState, req: &ShapeRequest) -> Result<Response, ApiError> {
    match Box::pin(resolve(state, req)).await {
        Ok(current) => Ok(must_refetch(state, Some(&current))),
        // The table is gone too (dropped), or only the leader knows what replaces it.
        Err(ApiError::MissingTable(_) | ApiError::AtLeader) => Ok(must_refetch(state, None)),
        Err(e) => Err(e),
    }
}

pub async fn delete_shape(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    if !state.auth.authenticate(&headers).await?.is_admin() {
        return Err(AuthError::AdminOnly("drop shapes").into());
    }
    let pairs = request::pairs(raw.as_deref());
    let handle = request::param(&pairs, "handle").filter(|h| !h.is_empty());
    let registry = state.shapes.registry();
    // A handle alone names its shape, as in Electric; a table names all of its shapes.
    let targets: Vec<_> = match (request::param(&pairs, "table"), handle) {
        (None | Some(""), Some(h)) => h.parse().ok().and_then(|h| registry.by_handle(&h)).into_iter().collect(),
        (_, handle) => {
            let (table, _) = request::parse_definition(&pairs)?;
            let shapes = registry.shapes_of(&table);
            match handle {
                Some(h) => shapes.into_iter().filter(|s| s.handle.as_str() == h).collect(),
                None => shapes,
            }
        }
    };
    if targets.is_empty() && handle.is_some() {
        return Err(ApiError::NotFound("No existing shape found".into()));
    }
    state.shapes.delete(&targets, "deleted through the API");
    Ok(StatusCode::ACCEPTED.into_response())
}
