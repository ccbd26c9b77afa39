//! Admission control: bounds on what the gateway takes on at once, answered before any work
//! is done. Past a bound on concurrent snapshots or live connections the answer is 503 with
//! `retry-after` (as Electric does), so overload slows clients rather than the gateway;
//! requests too large to be honest and shape counts past a bound get a 4xx. Shapes and
//! snapshots are also bounded per scope (the rule's scope bound to a caller's claims: a
//! tenant, a user), so one tenant cannot use up a table's shapes or the snapshot slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shapes::shape::ScopeSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::telemetry::LiveSubscriber;

/// Longest request target (path and query) accepted: room for the longest where-clause
/// and its parameters, percent-encoded.
pub const MAX_URI_BYTES: usize = 32 * 1024;
/// Most bytes of request headers accepted (names and values together).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The configured bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_concurrent_snapshots: usize,
    pub max_live_connections: usize,
    pub max_shapes_per_table: usize,
    pub max_shapes_per_scope: usize,
}

impl Limits {
    /// Snapshots one scope may run at once: a quarter of all, so three other tenants still
    /// find room while one creates shapes as fast as it can.
    fn snapshots_per_scope(&self) -> usize {
        (self.max_concurrent_snapshots / 4).max(1)
    }
}

/// Snapshots running per scope.
type ScopeCounts = Arc<Mutex<HashMap<ScopeSpec, usize>>>;

pub struct Admission {
    limits: Limits,
    snapshots: Arc<Semaphore>,
    scope_snapshots: ScopeCounts,
    live: Arc<Semaphore>,
}

/// Held while a new shape's snapshot runs.
pub struct SnapshotPermit {
    _permit: OwnedSemaphorePermit,
    scope: Option<(ScopeSpec, ScopeCounts)>,
}

impl Drop for SnapshotPermit {
    fn drop(&mut self) {
        if let Some((scope, running)) = self.scope.take() {
            let mut running = running.lock().unwrap();
            if let Some(n) = running.get_mut(&scope) {
                *n -= 1;
                if *n == 0 {
                    running.remove(&scope);
                }
            }
        }
    }
}

/// Held while a live request (long-poll or SSE) waits for changes.
pub struct LivePermit {
    _permit: OwnedSemaphorePermit,
    _subscriber: LiveSubscriber,
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            snapshots: Arc::new(Semaphore::new(limits.max_concurrent_snapshots)),
            scope_snapshots: Default::default(),
            live: Arc::new(Semaphore::new(limits.max_live_connections)),
        }
    }

    /// A place for one more live request, counted in `gateway_subscribers{mode}`.
    pub fn live(&self, mode: &'static str) -> Result<LivePermit, ApiError> {
        let permit = self.live.clone().try_acquire_owned().map_err(|_| ApiError::Unavailable {
            message: format!(
                "the gateway holds its maximum of {} live connections (--max-live-connections); retry shortly, or add capacity (a CDN in front collapses identical live requests)",
                self.limits.max_live_connections
            ),
            retry_after: 5,
        })?;
        Ok(LivePermit { _permit: permit, _subscriber: LiveSubscriber::new(mode) })
    }

    /// A place for one more snapshot query, for a caller of `scope` (`None`: unscoped, an
    /// admin or `--auth none`); held until the snapshot ends.
    pub fn snapshot(&self, scope: Option<&ScopeSpec>) -> Result<SnapshotPermit, ApiError> {
        let permit = self.snapshots.clone().try_acquire_owned().map_err(|_| ApiError::Unavailable {
            message: format!(
                "{} snapshots of new shapes are running (--max-concurrent-snapshots); retry shortly (existing shapes are not affected)",
                self.limits.max_concurrent_snapshots
            ),
            retry_after: 5,
        })?;
        let Some(scope) = scope else { return Ok(SnapshotPermit { _permit: permit, scope: None }) };
        let mut running = self.scope_snapshots.lock().unwrap();
        let n = running.entry(scope.clone()).or_default();
        if *n >= self.limits.snapshots_per_scope() {
            return Err(ApiError::Unavailable {
                message: format!(
                    "your scope already runs {n} snapshots of new shapes, its share of --max-concurrent-snapshots; retry shortly"
                ),
                retry_after: 5,
            });
        }
        *n += 1;
        Ok(SnapshotPermit { _permit: permit, scope: Some((scope.clone(), self.scope_snapshots.clone())) })
    }

    /// Refuses a new shape when the caller's scope, or its table, has as many as allowed.
    /// `in_scope` is `None` for unscoped callers.
    pub fn check_shape_count(&self, table: &str, existing: usize, in_scope: Option<usize>) -> Result<(), ApiError> {
        if let Some(mine) = in_scope
            && mine >= self.limits.max_shapes_per_scope
        {
            return Err(ApiError::TooMany(format!(
                "your scope already has {mine} shapes of table {table}, its limit (--max-shapes-per-scope); reuse an existing shape (the same where, columns and params)"
            )));
        }
        if existing >= self.limits.max_shapes_per_table {
            return Err(ApiError::TooMany(format!(
                "table {table} already has {existing} shapes (--max-shapes-per-table); reuse an existing shape (the same where, columns and params), or raise the limit"
            )));
        }
        Ok(())
    }
}

/// Refuses requests whose target or headers are larger than any honest shape request, with
/// 414 / 431 and a JSON body (before anything parses them).
pub async fn request_size(req: Request, next: Next) -> Response {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::UriTooLong(format!(
            "the request target is {uri} bytes, more than {MAX_URI_BYTES}; shorten the where clause or its params"
        ))
        .into_response();
    }
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(format!(
            "the request headers are {headers} bytes, more than {MAX_HEADER_BYTES}; send a shorter token or fewer headers"
        ))
        .into_response();
    }
    next.run(req).await
}
