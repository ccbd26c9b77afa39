//! Live mode over Server-Sent Events: one `data:` event per message, an `up-to-date` after
//! each batch, keep-alive comments, and an end after `--sse-timeout` (so CDNs can collapse
//! requests and tokens are re-checked), when the caller's token stops being honoured (checked
//! before every read and write, so a stream behind its backlog ends like an idle one), on
//! rotation, or on shutdown.
//!
//! The body is written as raw bytes rather than through axum's `Sse`: a batch's events are
//! formatted once per shared log read and handed to every stream of the shape as one chunk.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use shapes::offset::{LogOffset, Lsn};
use shapes::wire::{sse_events, up_to_date, write_sse_event};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::AppState;
use super::admission::LivePermit;
use super::caching::{cache_control, cursor_for};
use super::error::ApiError;
use super::live::{next_version, read_live, token_deadline};
use super::request::ShapeRequest;
use crate::fanout::live_shape::LiveShape;

/// Reads buffered per stream before the producer waits for the client: a slow client
/// slows only itself, and reads the log at its own pace.
const CHUNK_BUFFER: usize = 4;
/// A stream reads a backlog this much at a time (a read ends with the first whole message
/// past it), so a stalled client holds a few of these, not a few chunks of the log.
const READ_BYTES: u64 = 256 * 1024;

const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

pub fn stream(
    state: AppState,
    req: &ShapeRequest,
    shape: Arc<LiveShape>,
    after: LogOffset,
) -> Result<Response, ApiError> {
    let permit = state.admission.live("sse")?;
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNK_BUFFER);
    let cursor = cursor_for(&state, req);
    let handle = shape.handle.clone();
    // The stream ends when the token does, so the client comes back with a fresh one.
    let deadline = token_deadline(req, state.settings.sse_timeout);
    // Owned: the producer ends with the client, the deadline, or the gateway.
    state.tasks.spawn(produce(state.clone(), shape, after, deadline, tx, permit));
    let chunks =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (Ok::<_, Infallible>(c), rx)) });
    let mut resp = Response::new(Body::from_stream(chunks));
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, "electric-handle", handle.to_string());
    set(h, "electric-offset", after.to_string());
    set(h, "electric-cursor", cursor.to_string());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, cache_control(&state, "public, max-age=59"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn produce(
    state: AppState,
    shape: Arc<LiveShape>,
    mut after: LogOffset,
    deadline: Instant,
    tx: mpsc::Sender<Bytes>,
    _permit: LivePermit,
) {
    let mut rx = shape.log.subscribe();
    loop {
        if Instant::now() >= deadline {
            return;
        }
        let seen = state.ack.seen();
        let Ok(read) = read_live(&shape, after, READ_BYTES).await else {
            return;
        };
        if let Some(last) = read.last {
            after = last;
        }
        let mut chunk = sse_events(&read);
        // Nothing new says nothing, as Electric does: the client already has its
        // `up-to-date`, and a second one would be seen as another batch.
        if read.at_end && read.count > 0 {
            // The batch and its `up-to-date` go out as one write.
            let mut with_end = Vec::with_capacity(chunk.len() + 128);
            with_end.extend_from_slice(&chunk);
            write_sse_event(&mut with_end, &up_to_date(seen.max(Lsn(after.tx()))));
            chunk = with_end.into();
        }
        if !chunk.is_empty() && !send_before(deadline, &tx, chunk).await {
            return;
        }
        if !read.at_end {
            continue;
        }
        // Quiet streams get a comment now and then, so proxies keep them open.
        loop {
            tokio::select! {
                changed = next_version(&mut rx, |v| v.head > after) => {
                    if changed.is_none_or(|v| v.gone) {
                        return; // rotated: the client reconnects and gets 409
                    }
                    break;
                }
                _ = tokio::time::sleep(state.settings.sse_keepalive) => {
                    if !send_before(deadline, &tx, Bytes::from_static(KEEP_ALIVE)).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    }
}

/// Queues `chunk` for the client unless the deadline has passed or passes while a slow
/// client keeps the queue full; false means the stream ends.
async fn send_before(deadline: Instant, tx: &mpsc::Sender<Bytes>, chunk: Bytes) -> bool {
    Instant::now() < deadline && matches!(tokio::time::timeout_at(deadline, tx.send(chunk)).await, Ok(Ok(())))
}
