//! Following one shape: the snapshot, then live changes over SSE (long-polling when SSE
//! does not hold), each batch mirrored into the shape's store in one transaction. Rows with
//! local writes in flight keep showing them: the server's change goes to `_server` until
//! the writes settle.

use std::collections::HashSet;
use std::rc::Rc;

use js_sys::{Object, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::IdbDatabase;

use super::idb::StoredPosition;
use super::outbox::{self as local, server_key};
use super::row_store::RowStore;
use super::rows::{self, JsRow, describe, key_id};
use super::{Changes, Inner, RowChange, idb, net};
use crate::outbox;
use crate::protocol::{Change, Operation, Outcome, Position, ProtocolError, ShapeDefinition, ShapeStream};
use crate::sse::EventParser;

/// Longest wait between retries of a failing request.
const BACKOFF_MAX_MS: u32 = 32_000;
/// An SSE connection shorter than this is "short"; three in a row and the shape long-polls.
const SHORT_SSE_MS: f64 = 1000.0;
const SHORT_SSE_LIMIT: u32 = 3;

/// How one response or event ended.
enum Step {
    /// A batch was applied: the mirror is caught up.
    CaughtUp,
    /// Keep reading.
    More,
    /// Wait and try again.
    Retry(String),
}

/// Follows one shape while this tab leads, until the engine closes or the gateway refuses
/// the shape for good.
pub async fn follow(inner: Rc<Inner>, name: String, term: u64) {
    let shape = match inner.shape(&name) {
        Ok(config) => config.definition.clone(),
        Err(e) => return inner.status(&name, "error", Some(&e)),
    };
    let mut stream = match load(&inner.db, &name, &shape).await {
        Ok(position) => ShapeStream::resume(position),
        Err(e) => return inner.status(&name, "error", Some(&describe(&e))),
    };
    inner.status(&name, "connecting", None);
    // `live` is announced at the first up-to-date of this session, and after recoveries.
    let mut announced = false;
    let mut failures = 0u32;
    let mut fresh_token = false;
    let mut sse = inner.sse;
    let mut short_streams = 0u32;
    while inner.leads(term) {
        // A refused token stopped the engine and said why.
        let Ok(token) = inner.token(fresh_token).await else { return };
        fresh_token = false;
        let mut query = stream.query(&shape);
        let use_sse = sse && stream.position.live;
        if use_sse {
            query.push(("live_sse".into(), "true".into()));
        }
        let url = format!("{}/v1/shape?{}", inner.url(), encode(&query));
        let started = js_sys::Date::now();
        let result = if use_sse {
            read_events(&inner, &name, &shape, &mut stream, &url, token.as_deref(), &mut announced, term).await
        } else {
            match net::get(&url, token.as_deref(), &inner.signal()).await {
                Ok(answer) if answer.status == 401 => Err(Failure::Unauthorized),
                Ok(answer) => match stream.on_response(&answer.as_response()) {
                    Ok(outcome) => take(&inner, &name, &shape, &stream.position, outcome).await.map_err(Failure::Fatal),
                    Err(e) => Err(Failure::from(e)),
                },
                Err(e) => Err(Failure::Offline(describe(&e))),
            }
        };
        if !inner.leads(term) {
            return;
        }
        let step = match result {
            Ok(step) => step,
            Err(Failure::Unauthorized) if inner.get_token.is_some() && failures < 3 => {
                fresh_token = true;
                failures += 1;
                continue;
            }
            Err(Failure::Unauthorized) => {
                Step::Retry("the gateway answered 401: the token is missing or invalid".into())
            }
            Err(Failure::Offline(why)) => Step::Retry(why),
            Err(Failure::Fatal(why)) => return inner.status(&name, "error", Some(&why)),
        };
        if use_sse {
            // SSE that keeps closing at once (a buffering proxy) falls back to long-polling.
            short_streams = if js_sys::Date::now() - started < SHORT_SSE_MS { short_streams + 1 } else { 0 };
            if short_streams >= SHORT_SSE_LIMIT {
                sse = false;
            }
        }
        match step {
            Step::Retry(why) => {
                inner.status(&name, "offline", Some(&why));
                stream.reconnect();
                failures += 1;
                inner.nap(backoff(failures)).await;
            }
            Step::CaughtUp => {
                if !announced || failures > 0 {
                    inner.status(&name, "live", None);
                    announced = true;
                }
                failures = 0;
            }
            Step::More => failures = 0,
        }
    }
}

enum Failure {
    Unauthorized,
    Offline(String),
    Fatal(String),
}

impl From<ProtocolError> for Failure {
    fn from(e: ProtocolError) -> Failure {
        match e {
            ProtocolError::Status { status: 401, .. } => Failure::Unauthorized,
            ProtocolError::Status { retry: true, message, .. } => Failure::Offline(message),
            e => Failure::Fatal(e.to_string()),
        }
    }
}

/// Reads one SSE response to its end, applying each batch as its `up-to-date` arrives.
async fn read_events(
    inner: &Inner,
    name: &str,
    shape: &ShapeDefinition,
    stream: &mut ShapeStream,
    url: &str,
    token: Option<&str>,
    announced: &mut bool,
    term: u64,
) -> Result<Step, Failure> {
    let mut events = net::events(url, token, &inner.signal()).await.map_err(|e| Failure::Offline(describe(&e)))?;
    if events.head.status != 200 {
        if events.head.status == 401 {
            return Err(Failure::Unauthorized);
        }
        let outcome = stream.on_response(&events.head.as_response())?;
        return take(inner, name, shape, &stream.position, outcome).await.map_err(Failure::Fatal);
    }
    stream.on_events_open(events.head.cursor.as_deref());
    let mut parser = EventParser::default();
    let mut last = Step::More;
    while let Some(chunk) = events.next(inner.live_silence_ms).await.map_err(|e| Failure::Offline(describe(&e)))? {
        for data in parser.feed(&chunk) {
            let outcome = stream.on_event(&data)?;
            let refetch = matches!(outcome, Outcome::Refetch);
            last = take(inner, name, shape, &stream.position, outcome).await.map_err(Failure::Fatal)?;
            if refetch {
                return Ok(Step::More);
            }
            if matches!(last, Step::CaughtUp) && !*announced {
                inner.status(name, "live", None);
                *announced = true;
            }
        }
        if !inner.leads(term) {
            break;
        }
    }
    Ok(last)
}

/// Stores what one response or event asks for.
async fn take(
    inner: &Inner,
    name: &str,
    shape: &ShapeDefinition,
    position: &Position,
    outcome: Outcome,
) -> Result<Step, String> {
    let stored = match outcome {
        Outcome::Continue => return Ok(Step::More),
        Outcome::Apply(changes) => apply(inner, name, shape, position, &changes).await.map(|()| {
            inner.synced();
            Step::CaughtUp
        }),
        Outcome::Refetch => reset(&inner.db, name, shape, position).await.map(|()| Step::More),
    };
    stored.map_err(|e| describe(&e))
}

/// The stored position of a shape; a changed definition starts over.
async fn load(db: &IdbDatabase, name: &str, shape: &ShapeDefinition) -> Result<Position, JsValue> {
    let stored = idb::request(&idb::read(db, idb::POSITIONS)?.get(&JsValue::from_str(name))?).await?;
    let stored: Option<StoredPosition> = stored.as_string().and_then(|s| serde_json::from_str(&s).ok());
    match stored {
        Some(s) if &s.shape == shape => Ok(s.position),
        _ => {
            reset(db, name, shape, &Position::default()).await?;
            Ok(Position::default())
        }
    }
}

/// Clears a shape's rows and stores its new position, in one transaction.
async fn reset(db: &IdbDatabase, name: &str, shape: &ShapeDefinition, position: &Position) -> Result<(), JsValue> {
    let (tx, stores) = idb::write(db, &[name, idb::POSITIONS], idb::Durability::Relaxed)?;
    stores[0].clear()?;
    stores[1].put_with_key(&stored(shape, position), &JsValue::from_str(name))?;
    idb::committed(&tx).await
}

fn stored(shape: &ShapeDefinition, position: &Position) -> JsValue {
    let s = StoredPosition { shape: shape.clone(), position: position.clone() };
    JsValue::from_str(&serde_json::to_string(&s).unwrap_or_default())
}

/// Applies a batch of changes and the position after it in one transaction, then tells
/// the listeners. A row covered by local writes in flight changes in `_server` only; a
/// change carrying the transaction of such a write ends its wait.
async fn apply(
    inner: &Inner,
    name: &str,
    shape: &ShapeDefinition,
    position: &Position,
    changes: &[Change],
) -> Result<(), JsValue> {
    let schema = position.schema.clone().unwrap_or_default();
    let txids: HashSet<u64> = changes.iter().filter_map(|c| c.txid).collect();
    inner.saw_txids(name, txids.iter().copied());
    let (tx, stores) =
        idb::write(&inner.db, &[name, idb::POSITIONS, idb::OUTBOX, idb::SERVER], idb::Durability::Relaxed)?;
    let rows = &RowStore::new(stores[0].clone(), inner.shape(name)?.indexed.clone());
    let (outbox_store, server) = (&stores[2], &stores[3]);
    let mut records = local::open_records(outbox_store).await?;
    records.retain(|r| r.entry.shape == name);
    let covered: HashSet<String> = records.iter().filter(|r| r.entry.outstanding()).map(|r| key_id(&r.key)).collect();
    let events = Changes::new();
    for change in changes {
        let key = rows::server_key(&schema, &change.value).ok_or_else(|| {
            JsValue::from_str(&format!("a change of {name} lacks its primary key (key {})", change.key))
        })?;
        if !covered.is_empty() && covered.contains(&key_id(&key)) {
            let at = server_key(name, &key);
            let record = idb::request(&server.get(&at)?).await?;
            let base = Reflect::get(&record, &"row".into()).ok().and_then(|r| r.dyn_into::<Object>().ok());
            let row = match change.operation {
                Operation::Insert => Some(rows::from_text(&schema, &change.value, None)),
                Operation::Update => base.map(|b| rows::from_text(&schema, &change.value, Some(b))),
                Operation::Delete => None,
            };
            server.put_with_key(&local::server_record(row.map(|r| JsRow(r.unchecked_into())).as_ref()), &at)?;
            continue;
        }
        let (row, old) = match change.operation {
            Operation::Insert => {
                let row = rows::from_text(&schema, &change.value, None);
                rows.put(&row, &key)?;
                (Some(row), None)
            }
            Operation::Update => {
                let existing = rows.get(&key).await?;
                // The event carries the row before: the update writes onto a copy.
                let old = existing.as_ref().map(|o| JsValue::from(Object::assign(&Object::new(), o)));
                let row = rows::from_text(&schema, &change.value, existing);
                rows.put(&row, &key)?;
                (Some(row), old)
            }
            Operation::Delete => {
                let old = rows.get(&key).await?;
                rows.delete(&key)?;
                (None, old.map(JsValue::from))
            }
        };
        events.push(RowChange { shape: name.to_string(), op: change.operation.as_str(), key, row, old });
    }
    if !covered.is_empty() && !txids.is_empty() {
        let mut entries: Vec<outbox::Entry> = records.iter().map(|r| r.entry.clone()).collect();
        let echoed = outbox::echo(&mut entries, name, &txids);
        for &i in &echoed {
            records[i].entry = entries[i].clone();
            outbox_store.put(&records[i].to_js())?;
        }
        let mut done = HashSet::new();
        for &i in &echoed {
            let key = records[i].key.clone();
            if done.insert(key_id(&key))
                && let Some(change) = local::rebuild(rows, server, name, &key, &records).await?
            {
                events.push(change);
            }
        }
    }
    stores[1].put_with_key(&stored(shape, position), &JsValue::from_str(name))?;
    idb::committed(&tx).await?;
    inner.changes_event(events, "server");
    Ok(())
}

fn encode(query: &[(String, String)]) -> String {
    query
        .iter()
        .map(|(k, v)| format!("{}={}", js_sys::encode_uri_component(k), js_sys::encode_uri_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Full-jitter exponential backoff: 1 s, 2 s, 4 s … capped at 32 s.
pub fn backoff(failures: u32) -> u32 {
    let cap = 1000u32.saturating_mul(1 << failures.min(5)).min(BACKOFF_MAX_MS);
    (js_sys::Math::random() * f64::from(cap)) as u32
}
