//! `GET /v1/shape` and `DELETE /v1/shape`: resolve the shape, then serve the snapshot
//! chunk, the live log from an offset, a long-poll, or hand over to SSE.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shapes::log::{LiveRead, LogVersion};
use shapes::offset::{LogOffset, Lsn};
use shapes::shape::Shape;
use shapes::table::TableSchema;
use shapes::wire::{MUST_REFETCH, up_to_date};
use tokio::sync::watch;

use super::AppState;
use super::error::ApiError;
use super::request::{self, RequestOffset, ShapeRequest};
use crate::auth::{AuthError, ColumnUse};
use crate::db;
use crate::fanout::registry::LiveShape;
use crate::replication::{ReplicationError, slot};

const CACHE_INITIAL: &str = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746";
const CACHE_LIVE: &str = "public, max-age=5, stale-while-revalidate=5";
/// How long a first request waits for its snapshot to produce a chunk.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

pub async fn get_shape(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let req = authorized(&state, &headers, raw.as_deref()).await?;
    if let Some(spec) = &req.subset {
        return Box::pin(super::subset::serve(&state, &req, spec)).await;
    }
    // Boxed: shape creation's future is large and would otherwise be inlined into every
    // waiting long-poll's state.
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
        RequestOffset::Start => Box::pin(serve_snapshot_chunk(&state, &req, &headers, shape, 0)).await,
        RequestOffset::Now => {
            wait_for(&shape, |v| v.snapshot_complete).await?;
            Ok(nothing_new(&state, &req, &headers, &shape, shape.log.version().head))
        }
        RequestOffset::At(o) => match o.as_snapshot_chunk() {
            Some(n) => Box::pin(serve_snapshot_chunk(&state, &req, &headers, shape, n + 1)).await,
            None => serve_live(&state, &req, &headers, shape, o).await,
        },
    }
}

/// Authenticates the caller, parses the request and narrows it to what the caller may read.
pub(super) async fn authorized(
    state: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<ShapeRequest, ApiError> {
    let caller = state.auth.authenticate(headers).await?;
    let mut req = request::parse(raw)?;
    req.access = state.auth.scope(&caller, &req.table, &mut req.spec)?;
    req.valid_until = caller.valid_until();
    Ok(req)
}

/// Refuses a filter or order that reads a column the caller may not read (it would leak
/// the hidden values through which rows match, or how they rank).
pub(super) fn check_readable(
    req: &ShapeRequest,
    table: &TableSchema,
    columns: impl IntoIterator<Item = usize>,
) -> Result<(), ApiError> {
    let names = columns.into_iter().map(|c| table.columns[c].name.as_str());
    Ok(req.access.readable.check(&table.name, ColumnUse::Readable, names)?)
}

/// Finds the shape for the request's definition, creating it (and its snapshot) if new.
pub(super) async fn resolve(state: &AppState, req: &ShapeRequest) -> Result<Arc<LiveShape>, ApiError> {
    let bind = |schema| {
        let shape = Shape::bind(req.spec.clone(), schema, state.registry.bind_options()).map_err(|e| match e {
            shapes::shape::ShapeError::Where(w) => ApiError::invalid("where", w.to_string()),
            shapes::shape::ShapeError::Columns(c) => ApiError::invalid("columns", c),
            shapes::shape::ShapeError::Scope(w) => ApiError::Forbidden(format!(
                "the token's claims do not fit the access rule of {}: {w}",
                req.table.quoted()
            )),
        })?;
        check_readable(req, &shape.table, shape.where_columns.iter().copied())?;
        Ok::<_, ApiError>(shape)
    };
    if let Some(schema) = state.registry.cached_schema(&req.table)
        && let Some(existing) = state.registry.get(&bind(schema)?.key())
    {
        return Ok(existing);
    }
    // Creating shapes is rare: one at a time keeps publication changes race-free, and the
    // catalog is read afresh, since the table may have changed since it was cached.
    let _guard = state.create_lock.lock().await;
    let client = state.catalog().await?;
    let schema = fresh_schema(state, &client, req).await?;
    let shape = bind(schema.clone())?;
    if let Some(existing) = state.registry.get(&shape.key()) {
        return Ok(existing);
    }
    if let Some(why) = state.status.new_shapes_paused() {
        return Err(ApiError::Unavailable { message: why, retry_after: 30 });
    }
    let existing = state.registry.shapes_of(&req.table);
    let scope = req.spec.scope.as_ref();
    let in_scope = scope.map(|sc| existing.iter().filter(|s| s.shape.spec.scope.as_ref() == Some(sc)).count());
    state.admission.check_shape_count(&req.table.quoted(), existing.len(), in_scope)?;
    let permit = state.admission.snapshot(scope)?;
    let altered = slot::ensure_published(&client, &state.settings.publication, &schema, shape.needs_old_rows())
        .await
        .map_err(|e| match e {
        ReplicationError::Privilege { .. } => ApiError::Forbidden(e.to_string()),
        ReplicationError::TableGone(_) => ApiError::MissingTable(req.table.quoted()),
        ReplicationError::TableBusy(_) => ApiError::Unavailable { message: e.to_string(), retry_after: 5 },
        e => ApiError::internal(e),
    })?;
    let shape = if altered { bind(fresh_schema(state, &client, req).await?)? } else { shape };
    let (live, created) = state.registry.get_or_create(shape).map_err(|e| ApiError::Unavailable {
        message: format!("cannot create the shape's log ({e}); retry when the gateway's storage has room"),
        retry_after: 10,
    })?;
    if created {
        let (db, registry, shape) = (state.settings.db.clone(), state.registry.clone(), live.clone());
        tokio::spawn(async move {
            crate::snapshot::run(db, registry, shape).await;
            drop(permit);
        });
    }
    Ok(live)
}

/// Reads the table from the catalog and refreshes the cache.
async fn fresh_schema(
    state: &AppState,
    client: &tokio_postgres::Client,
    req: &ShapeRequest,
) -> Result<shapes::table::TableSchema, ApiError> {
    let schema = db::table_schema(client, &req.table)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::MissingTable(req.table.quoted()))?;
    state.registry.cache_schema(schema.clone());
    Ok(schema)
}

/// Waits for `ready` or rotation and returns a copy, so no watch guard (not `Send`) is held
/// across later awaits. `None` when the log was dropped.
pub(super) async fn next_version(
    rx: &mut watch::Receiver<LogVersion>,
    ready: impl Fn(&LogVersion) -> bool,
) -> Option<LogVersion> {
    rx.wait_for(|v| v.gone || ready(v)).await.ok().map(|v| *v)
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
    headers: &HeaderMap,
    shape: Arc<LiveShape>,
    n: u64,
) -> Result<Response, ApiError> {
    let v = wait_for(&shape, |v| v.snapshot_chunks > n || v.snapshot_complete).await?;
    if n >= v.snapshot_chunks {
        return serve_live(state, req, headers, shape, LogOffset::SNAPSHOT_END).await;
    }
    let log_shape = shape.clone();
    let body = tokio::task::spawn_blocking(move || log_shape.log.read_snapshot_chunk(n))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("snapshot chunk vanished"))?;
    Ok(respond(
        state,
        req,
        headers,
        &shape,
        Served { offset: LogOffset::snapshot_chunk(n), up_to_date: false, has_data: true },
        Body::from(body),
    ))
}

/// Reads the log after `after` on the blocking pool; a client at the head reads nothing,
/// so idle live clients never occupy a thread.
/// Readers at the same position share one read (the subscribers of a shape wake together).
pub(super) async fn read_live(shape: &Arc<LiveShape>, after: LogOffset) -> Result<Arc<LiveRead>, ApiError> {
    if shape.log.version().head <= after {
        return Ok(Arc::new(LiveRead::nothing_new()));
    }
    if let Some(read) = shape.log.shared_live(after) {
        return Ok(read);
    }
    let s = shape.clone();
    tokio::task::spawn_blocking(move || s.log.read_live_shared(after))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

async fn serve_live(
    state: &AppState,
    req: &ShapeRequest,
    headers: &HeaderMap,
    shape: Arc<LiveShape>,
    after: LogOffset,
) -> Result<Response, ApiError> {
    let v = wait_for(&shape, |v| v.snapshot_complete).await?;
    // Past the head but not past what every log holds (`<global_last_seen_lsn>_0`, as SSE
    // clients resume): nothing for this shape lies in between, the client is at the head.
    if after > v.head && Lsn(after.tx()) > state.ack.seen() {
        // A client ahead of the log (e.g. after a failover): give the log a moment to catch up.
        let wait = state.settings.long_poll_timeout / 2;
        let mut rx = shape.log.subscribe();
        match tokio::time::timeout(wait, next_version(&mut rx, |v| v.head >= after)).await {
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
        let read = read_live(&shape, after).await?;
        // A hold may outlast the token: what was written after it is not the caller's to see.
        if req.valid_until.is_some_and(|t| std::time::SystemTime::now() >= t) {
            return Err(AuthError::Expired.into());
        }
        if read.count > 0 || !req.live {
            let last = read.last.unwrap_or(after);
            let mut body = Vec::with_capacity(read.body.len() + 100);
            body.push(b'[');
            body.extend_from_slice(&read.body);
            if read.at_end {
                if read.count > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&up_to_date(seen.max(Lsn(last.tx()))));
            }
            body.push(b']');
            return Ok(respond(
                state,
                req,
                headers,
                &shape,
                Served { offset: last, up_to_date: read.at_end, has_data: read.count > 0 },
                body.into(),
            ));
        }
        // Live and nothing new: hold the request until data, rotation or timeout.
        tokio::select! {
            changed = next_version(&mut rx, |v| v.head > after) => {
                if changed.is_none_or(|v| v.gone) {
                    return replacement(state, req).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(nothing_new(state, req, headers, &shape, after));
            }
            _ = state.cancel.cancelled() => {
                return Err(ApiError::Unavailable { message: "the gateway is shutting down".into(), retry_after: 1 });
            }
        }
    }
}

/// When a live answer must be sent by: after `limit`, and never after the caller's token
/// stops being honoured.
pub(super) fn token_deadline(req: &ShapeRequest, limit: Duration) -> tokio::time::Instant {
    let left = req
        .valid_until
        .map_or(limit, |t| t.duration_since(std::time::SystemTime::now()).unwrap_or_default().min(limit));
    tokio::time::Instant::now() + left
}

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

/// Where a response leaves the client.
struct Served {
    /// The `electric-offset` to hand out.
    offset: LogOffset,
    /// The body ends with `up-to-date`.
    up_to_date: bool,
    has_data: bool,
}

fn respond(
    state: &AppState,
    req: &ShapeRequest,
    headers: &HeaderMap,
    shape: &LiveShape,
    served: Served,
    body: Body,
) -> Response {
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
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
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

/// A response of just `up-to-date`: nothing new after `offset`.
fn nothing_new(
    state: &AppState,
    req: &ShapeRequest,
    headers: &HeaderMap,
    shape: &LiveShape,
    offset: LogOffset,
) -> Response {
    let lsn = state.ack.seen().max(Lsn(shape.log.version().head.tx()));
    let mut body = b"[".to_vec();
    body.extend_from_slice(&up_to_date(lsn));
    body.push(b']');
    respond(state, req, headers, shape, Served { offset, up_to_date: true, has_data: false }, body.into())
}

/// 409 naming the shape that now serves the request's definition (created if needed), so
/// the client refetches straight into it.
async fn replacement(state: &AppState, req: &ShapeRequest) -> Result<Response, ApiError> {
    match Box::pin(resolve(state, req)).await {
        Ok(current) => Ok(must_refetch(state, Some(&current))),
        // The table is gone too (dropped): nothing replaces the shape.
        Err(ApiError::MissingTable(_)) => Ok(must_refetch(state, None)),
        Err(e) => Err(e),
    }
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
    // A handle alone names its shape, as in Electric; a table names all of its shapes.
    let targets: Vec<_> = match (request::param(&pairs, "table"), handle) {
        (None | Some(""), Some(h)) => h.parse().ok().and_then(|h| state.registry.by_handle(&h)).into_iter().collect(),
        (_, handle) => {
            let (table, _) = request::parse_definition(&pairs)?;
            let shapes = state.registry.shapes_of(&table);
            match handle {
                Some(h) => shapes.into_iter().filter(|s| s.handle.as_str() == h).collect(),
                None => shapes,
            }
        }
    };
    if targets.is_empty() && handle.is_some() {
        return Err(ApiError::NotFound("No existing shape found".into()));
    }
    for s in &targets {
        state.registry.rotate(s, "deleted through the API");
        // The table may be dropped and created again: read it afresh next time.
        state.registry.forget_schema(&s.shape.table.name);
    }
    Ok(StatusCode::ACCEPTED.into_response())
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

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_waiting_long_poll_holds_little_state() {
        let dir = std::env::temp_dir().join(format!("gateway-size-{}", std::process::id()));
        let registry =
            Arc::new(crate::fanout::registry::Registry::open(&dir, 1 << 20, Default::default(), Lsn(0)).unwrap());
        let settings = super::super::HttpSettings {
            db: crate::db::parse_url("postgres://u@localhost/db").unwrap(),
            publication: "p".into(),
            long_poll_timeout: std::time::Duration::from_secs(20),
            sse_timeout: std::time::Duration::from_secs(60),
            sse_keepalive: std::time::Duration::from_secs(21),
            cache_catch_up: "public, max-age=60, stale-while-revalidate=300".into(),
            cors: super::super::Cors::new(&["*".into()]),
            shared_cache_by_caller: false,
            demo: None,
            limits: super::super::admission::Limits {
                max_concurrent_snapshots: 1,
                max_live_connections: 1,
                max_shapes_per_table: 1,
                max_shapes_per_scope: 1,
            },
        };
        let state = AppState::new(
            settings,
            registry,
            Arc::new(crate::fanout::ack::AckState::new(Lsn(0))),
            Arc::new(crate::status::Status::default()),
            Arc::new(crate::auth::Auth::none()),
            Arc::new(crate::outbox::apply::Outbox {
                pool: deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
                    crate::db::parse_url("postgres://u@localhost/db").unwrap(),
                    tokio_postgres::NoTls,
                ))
                .build()
                .unwrap(),
                tables: Default::default(),
                bind: Default::default(),
            }),
            tokio_util::sync::CancellationToken::new(),
        );
        let fut = get_shape(State(state), HeaderMap::new(), RawQuery(None));
        let size = std::mem::size_of_val(&fut);
        eprintln!("get_shape future: {size} bytes");
        std::fs::remove_dir_all(dir).unwrap();
        assert!(size < 4096, "the handler future is {size} bytes");
    }
}
