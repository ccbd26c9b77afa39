//! Admission control at the door: bounds answered before any work is done. Past the bound
//! on live connections the answer is 503 with `retry-after` (as Electric does), so overload
//! slows clients rather than the gateway; requests too large to be honest get a 4xx. New
//! shapes and snapshots have their own bounds ([`crate::shape_set::admission`]).

use std::sync::Arc;

use axum::extract::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::telemetry::LiveSubscriber;

/// Longest request target (path and query) accepted: room for the longest where-clause
/// and its parameters, percent-encoded.
pub const MAX_URI_BYTES: usize = 32 * 1024;
/// Most bytes of request headers accepted (names and values together).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Bounds live connections: past `--max-live-connections` the answer is a 503.
pub struct Admission {
    max_live_connections: usize,
    live: Arc<Semaphore>,
}

/// Held while a live request (long-poll or SSE) waits for changes.
pub struct LivePermit {
    _permit: OwnedSemaphorePermit,
    _subscriber: LiveSubscriber,
}

impl Admission {
    pub fn new(max_live_connections: usize) -> Admission {
        Admission { max_live_connections, live: Arc::new(Semaphore::new(max_live_connections)) }
    }

    /// A place for one more live request, counted in `gateway_subscribers{mode}`.
    pub fn live(&self, mode: &'static str) -> Result<LivePermit, ApiError> {
        let permit = self.live.clone().try_acquire_owned().map_err(|_| ApiError::Unavailable {
            message: format!(
                "the gateway holds its maximum of {} live connections (--max-live-connections); retry shortly, or add capacity (a CDN in front collapses identical live requests)",
                self.max_live_connections
            ),
            retry_after: 5,
        })?;
        Ok(LivePermit { _permit: permit, _subscriber: LiveSubscriber::new(mode) })
    }
}

/// The refusal of a request whose target or headers are too large to handle, if it is.
pub fn oversized(req: &Request) -> Option<ApiError> {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(ApiError::UriTooLong(format!(
            "the request target is {uri} bytes, more than {MAX_URI_BYTES}; shorten the where clause or its params"
        )));
    }
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    (headers > MAX_HEADER_BYTES).then(|| {
        ApiError::HeadersTooLarge(format!(
            "the request headers are {headers} bytes, more than {MAX_HEADER_BYTES}; send a shorter token or fewer headers"
        ))
    })
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::Admission;

    #[test]
    fn past_the_bound_a_live_request_gets_503_with_retry_after_until_a_place_frees() {
        let admission = Admission::new(2);
        let first = admission.live("sse").unwrap();
        let _second = admission.live("long_poll").unwrap();
        let refused = admission.live("sse").err().expect("a third live request is refused").into_response();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "5");
        drop(first);
        assert!(admission.live("sse").is_ok(), "a place freed is taken again");
    }
}
