//! Live mode over Server-Sent Events: one `data:` event per message, an `up-to-date` after
//! each batch, keep-alive comments, and an end after `--sse-timeout` (so CDNs can collapse
//! requests and tokens are re-checked), on rotation, or on shutdown.

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use shapes::offset::{LogOffset, Lsn};
use shapes::wire::up_to_date;
use tokio::sync::mpsc;

use super::AppState;
use super::request::ShapeRequest;
use super::shape::{cursor_for, next_version, read_live};
use crate::fanout::registry::LiveShape;

/// Events buffered per stream before the producer waits for the client: a slow client
/// slows only itself, and reads the log at its own pace.
const EVENT_BUFFER: usize = 64;

pub fn stream(state: AppState, req: &ShapeRequest, shape: Arc<LiveShape>, after: LogOffset) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(EVENT_BUFFER);
    let cursor = cursor_for(&state, req);
    let handle = shape.handle.clone();
    // The stream ends when the token expires, so the client comes back with a fresh one.
    let lifetime = req
        .expires
        .map(|at| at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
        .map_or(state.settings.sse_timeout, |left| left.min(state.settings.sse_timeout));
    tokio::spawn(produce(state.clone(), shape, after, lifetime, tx));
    let events =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.settings.sse_keepalive).text("keep-alive"))
        .into_response();
    let h = resp.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(h, "electric-handle", handle.to_string());
    set(h, "electric-offset", after.to_string());
    set(h, "electric-cursor", cursor.to_string());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=59"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

async fn produce(
    state: AppState,
    shape: Arc<LiveShape>,
    mut after: LogOffset,
    lifetime: std::time::Duration,
    tx: mpsc::Sender<Event>,
) {
    let _subscriber = crate::telemetry::LiveSubscriber::new("sse");
    let deadline = tokio::time::Instant::now() + lifetime;
    let mut rx = shape.log.subscribe();
    let mut first = true;
    loop {
        let seen = state.ack.seen();
        let Ok(read) = read_live(&shape, after).await else {
            return;
        };
        for &(start, end) in &read.messages {
            let Ok(text) = std::str::from_utf8(&read.body[start..end]) else {
                return;
            };
            if tx.send(Event::default().data(text)).await.is_err() {
                return;
            }
        }
        if let Some(last) = read.last {
            after = last;
        }
        if read.at_end && (read.count > 0 || first) {
            let msg = up_to_date(seen.max(Lsn(after.tx())));
            if tx.send(Event::default().data(String::from_utf8_lossy(&msg))).await.is_err() {
                return;
            }
        }
        first = false;
        if !read.at_end {
            continue;
        }
        tokio::select! {
            changed = next_version(&mut rx, |v| v.head > after) => {
                if changed.is_none_or(|v| v.gone) {
                    return; // rotated: the client reconnects and gets 409
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = state.cancel.cancelled() => return,
            _ = tx.closed() => return,
        }
    }
}
