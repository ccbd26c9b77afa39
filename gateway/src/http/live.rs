//! Reading a shape's live log for an answer: waiting for its next version, one shared
//! read per position, and the deadline an answer must keep.

use std::sync::Arc;
use std::time::Duration;

use shapes::log::{LiveRead, LogVersion};
use shapes::offset::LogOffset;
use tokio::sync::watch;

use super::error::ApiError;
use super::request::ShapeRequest;
use crate::fanout::live_shape::LiveShape;

/// Waits for `ready` or rotation and returns a copy, so no watch guard (not `Send`) is held
/// across later awaits. `None` when the log was dropped.
pub(super) async fn next_version(
    rx: &mut watch::Receiver<LogVersion>,
    ready: impl Fn(&LogVersion) -> bool,
) -> Option<LogVersion> {
    rx.wait_for(|v| v.gone || ready(v)).await.ok().map(|v| *v)
}

/// Reads the log after `after`: from memory when it can (the subscribers an append wakes
/// read that append), else on the blocking pool; a client at the head reads nothing, so
/// idle live clients never occupy a thread. Readers at the same position share one read.
/// It ends with the chunk, or with the first whole message past `max_bytes`.
pub(super) async fn read_live(
    shape: &Arc<LiveShape>,
    after: LogOffset,
    max_bytes: u64,
) -> Result<Arc<LiveRead>, ApiError> {
    if shape.log.version().head <= after {
        return Ok(Arc::new(LiveRead::nothing_new()));
    }
    if let Some(read) = shape.log.read_live_in_memory(after, max_bytes) {
        return Ok(read);
    }
    let s = shape.clone();
    tokio::task::spawn_blocking(move || s.log.read_live_shared(after, max_bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(read_failed)
}

/// A log read that failed: a log whose files are gone was dropped meanwhile (a standby learns
/// of it a moment later), so the client retries into a 409; anything else is internal.
pub(super) fn read_failed(e: std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            ApiError::Unavailable { message: "the shape was dropped; retry".into(), retry_after: 1 }
        }
        _ => ApiError::internal(e),
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
