//! One subscriber: follows its scope's shape with the shape protocol (the client SDK's
//! state machine), over SSE or long-polling, and keeps the ids of the rows it was sent.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use client_sdk::protocol::{Change, Operation, Outcome, Response, ShapeDefinition, ShapeStream};
use client_sdk::sse::EventParser;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::memberships::Members;
use crate::record::{Recorder, Seen, now_us};
use crate::schema::scope_index;

pub struct Subscriber {
    pub identity: usize,
    pub token: String,
    pub sse: bool,
    /// The shape URL without its position (`…/v1/shape?table=…`).
    pub shape_url: String,
    pub table: String,
    /// Rows with an id below this were there before the run.
    pub first_id: u64,
    /// One of the idle connections: counted apart from the subscribers.
    pub idle: bool,
    /// The memberships scenario's state: this subscriber is user `identity`.
    pub members: Option<Arc<Members>>,
    /// The column naming a row's scope (project).
    pub scope_column: String,
}

impl Subscriber {
    /// Follows the shape until `stop`; `connecting` limits how many take their snapshot at once.
    pub async fn run(
        self,
        http: reqwest::Client,
        recorder: Arc<Recorder>,
        connecting: Arc<tokio::sync::Semaphore>,
        stop: CancellationToken,
    ) -> Seen {
        let started = Instant::now();
        let mut seen = Seen { identity: self.identity, ..Seen::default() };
        let shape = self.definition();
        let mut stream = ShapeStream::default();
        let mut permit = Some(connecting.acquire_owned().await);
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let live_sse = self.sse && stream.position.live;
            let step = tokio::select! {
                step = self.step(&http, &shape, &mut stream, live_sse, &recorder, &mut seen) => step,
                _ = stop.cancelled() => break,
            };
            match step {
                Ok(caught_up) => {
                    failures = 0;
                    if caught_up && seen.connect.is_none() {
                        seen.connect = Some(started.elapsed());
                        permit = None;
                        if self.idle {
                            recorder.idle_connected.fetch_add(1, Ordering::Relaxed);
                        } else {
                            recorder.up_to_date.fetch_add(1, Ordering::Relaxed);
                            recorder.connected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if live_sse {
                        recorder.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(why) => {
                    recorder.error(why);
                    failures += 1;
                    let pause = Duration::from_millis(100 * u64::from(failures.min(10)));
                    tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = stop.cancelled() => break }
                }
            }
        }
        drop(permit);
        if seen.connect.is_some() {
            let count = if self.idle { &recorder.idle_connected } else { &recorder.connected };
            count.fetch_sub(1, Ordering::Relaxed);
        }
        seen
    }

    fn definition(&self) -> ShapeDefinition {
        // Only what the check and the clock need: less JSON per event for both sides.
        let mut columns = vec!["id".to_string(), "sent_us".to_string()];
        if self.members.is_some() {
            columns.push(self.scope_column.clone());
        }
        ShapeDefinition { table: self.table.clone(), columns: Some(columns), ..ShapeDefinition::default() }
    }

    /// The ids of the rows the shape holds, read from its start as a new client would (by
    /// long-polls, until up to date): when the run's subscriber ended with other rows, this
    /// says whether the shape's log or its delivery was at fault.
    pub async fn read_once(&self, http: &reqwest::Client) -> Result<(String, HashSet<u64>), String> {
        let shape = self.definition();
        let mut stream = ShapeStream::default();
        let mut held = HashSet::new();
        while !stream.position.live {
            let query = stream.query(&shape);
            let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(&query).finish();
            let resp = http.get(format!("{}?{query}", self.shape_url)).bearer_auth(&self.token).send().await;
            let resp = resp.map_err(|e| chain(&e))?;
            let status = resp.status().as_u16();
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let headers = ["electric-handle", "electric-offset", "electric-cursor", "electric-schema"].map(header);
            let body = resp.text().await.map_err(|e| chain(&e))?;
            let [handle, offset, cursor, schema] = headers.each_ref().map(|h| h.as_deref());
            let response = Response { status, handle, offset, cursor, schema, body: &body };
            match stream.on_response(&response).map_err(|e| e.to_string())? {
                Outcome::Apply(changes) => {
                    for change in changes {
                        let Some(id) = change.value.get("id").and_then(|v| v.as_str()?.parse::<u64>().ok()) else {
                            continue;
                        };
                        match change.operation {
                            Operation::Insert => held.insert(id),
                            Operation::Delete => held.remove(&id),
                            Operation::Update => false,
                        };
                    }
                }
                Outcome::Refetch => held.clear(),
                Outcome::Continue => {}
            }
        }
        Ok((stream.position.handle.clone().unwrap_or_default(), held))
    }

    /// One request: `Ok(true)` when it ended caught up.
    async fn step(
        &self,
        http: &reqwest::Client,
        shape: &ShapeDefinition,
        stream: &mut ShapeStream,
        live_sse: bool,
        recorder: &Recorder,
        seen: &mut Seen,
    ) -> Result<bool, String> {
        let mut query = stream.query(shape);
        if live_sse {
            query.push(("live_sse".into(), "true".into()));
        }
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(&query).finish();
        let request = http.get(format!("{}?{query}", self.shape_url)).bearer_auth(&self.token);
        let request = if live_sse { request.header("accept", "text/event-stream") } else { request };
        let resp = request.send().await.map_err(|e| chain(&e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (handle, offset, cursor, schema) = (
            header("electric-handle"),
            header("electric-offset"),
            header("electric-cursor"),
            header("electric-schema"),
        );
        // Backpressure (new shapes past the snapshot slots): wait as told, then again, as
        // the official client does. Counted apart from failures.
        if status == 503
            && let Some(secs) = header("retry-after").and_then(|s| s.parse::<u64>().ok())
        {
            recorder.busy.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(secs.min(10))).await;
            return Ok(false);
        }
        if live_sse && status == 200 {
            stream.on_events_open(cursor.as_deref());
            let mut parser = EventParser::default();
            let mut body = resp.bytes_stream();
            let mut caught_up = false;
            let mut text = Utf8Carry::default();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| chain(&e))?;
                for data in parser.feed(text.decode(&chunk)?) {
                    if let Outcome::Apply(changes) = stream.on_event(&data).map_err(|e| e.to_string())? {
                        self.take(&changes, recorder, seen);
                        caught_up = true;
                    }
                }
            }
            return Ok(caught_up);
        }
        let body = resp.text().await.map_err(|e| chain(&e))?;
        let response = Response {
            status,
            handle: handle.as_deref(),
            offset: offset.as_deref(),
            cursor: cursor.as_deref(),
            schema: schema.as_deref(),
            body: &body,
        };
        match stream.on_response(&response).map_err(|e| e.to_string())? {
            Outcome::Apply(changes) => {
                self.take(&changes, recorder, seen);
                Ok(true)
            }
            Outcome::Continue => Ok(false),
            Outcome::Refetch => {
                recorder.reconnects.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    fn take(&self, changes: &[Change], recorder: &Recorder, seen: &mut Seen) {
        if let Some(members) = &self.members {
            return self.take_as_member(members, changes, recorder, seen);
        }
        let now = now_us();
        let first_id = self.first_id;
        let mut latencies = Vec::with_capacity(changes.len());
        let mut received = Vec::with_capacity(changes.len());
        for change in changes {
            let field = |name: &str| change.value.get(name).and_then(|v| v.as_str());
            let Some(id) = field("id").and_then(|v| v.parse::<u64>().ok()) else { continue };
            if id < first_id {
                continue; // a row from before the run
            }
            seen.ids.push(id);
            if let Some(sent) = field("sent_us").and_then(|v| v.parse::<u64>().ok()) {
                latencies.push(now.saturating_sub(sent));
                received.push((id, now));
            }
        }
        recorder.delivered(&latencies, &received);
    }

    /// Keeps the rows the user holds: inserts (moved in or written), deletes (moved out).
    /// A written row's latency is from its send; a moved-in one's from its join's.
    fn take_as_member(&self, members: &Members, changes: &[Change], recorder: &Recorder, seen: &mut Seen) {
        let now = now_us();
        let (mut written, mut received, mut moved_in) = (Vec::new(), Vec::new(), Vec::new());
        for change in changes {
            let field = |name: &str| change.value.get(name).and_then(|v| v.as_str());
            let Some(id) = field("id").and_then(|v| v.parse::<u64>().ok()) else { continue };
            match change.operation {
                Operation::Insert => {
                    let Some(project) = field(&self.scope_column).and_then(scope_index) else { continue };
                    seen.duplicated += u64::from(seen.held.insert(id, project).is_some());
                    seen.projects.insert(project);
                    if change.move_in {
                        moved_in.extend(members.take_join(self.identity, project).map(|sent| now.saturating_sub(sent)));
                    } else if id >= self.first_id
                        && let Some(sent) = field("sent_us").and_then(|v| v.parse::<u64>().ok())
                    {
                        written.push(now.saturating_sub(sent));
                        received.push((id, now));
                    }
                }
                Operation::Delete => {
                    seen.held.remove(&id);
                }
                Operation::Update => {}
            }
        }
        members.held[self.identity].store(seen.held.len(), Ordering::Relaxed);
        recorder.delivered(&written, &received);
        recorder.moved_in(&moved_in);
    }
}

/// Decodes a byte stream as UTF-8, holding back a character split between two chunks.
#[derive(Default)]
struct Utf8Carry {
    pending: Vec<u8>,
    text: String,
}

impl Utf8Carry {
    fn decode(&mut self, chunk: &[u8]) -> Result<&str, String> {
        self.pending.extend_from_slice(chunk);
        self.text = match String::from_utf8(std::mem::take(&mut self.pending)) {
            Ok(text) => text,
            Err(e) if e.utf8_error().error_len().is_none() => {
                // Rare: a character split between chunks; keep its first bytes for the next.
                let whole = e.utf8_error().valid_up_to();
                let mut bytes = e.into_bytes();
                self.pending = bytes.split_off(whole);
                String::from_utf8(bytes).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(format!("the event stream is not UTF-8: {e}")),
        };
        Ok(&self.text)
    }
}

/// An error with its causes, which say what went wrong on the wire.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
