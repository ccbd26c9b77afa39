//! The browser side: follows each shape ([`follow`]), mirrors it into IndexedDB (one object
//! store per shape, keyed by primary key), queues and pushes local writes ([`outbox`]),
//! and tells listeners what changed. The decisions are the plain-Rust modules'; this one
//! only does the I/O. Only the tab that leads (see the JS wrapper) follows and pushes.

mod follow;
mod idb;
mod net;
mod outbox;
mod rows;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect};
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, IdbDatabase};

use crate::protocol::ShapeDefinition;
use crate::values::{self, Schema};

/// How often the leader looks at the outbox without being asked: writes of other tabs,
/// retries, echoes that will not come.
const OUTBOX_TICK_MS: u32 = 1000;

/// A token this close to its expiry (seconds) is replaced before the next request.
const TOKEN_MARGIN_S: f64 = 5.0;

/// Transactions remembered per shape: enough to cover the time a push's answer takes.
const SEEN_TXIDS: usize = 1000;

/// A shape as `openSync` takes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShapeOptions {
    #[serde(flatten)]
    definition: ShapeDefinition,
    /// The primary key's columns, for writes before the first sync told them.
    #[serde(default)]
    key: Option<Columns>,
    /// The table's `reject_stale` version column: writes send it as their base.
    #[serde(default)]
    version_column: Option<String>,
    /// Indexes for queries: a column, or several for a compound index.
    #[serde(default)]
    indexes: Vec<Columns>,
}

#[derive(Clone, Deserialize)]
#[serde(untagged)]
enum Columns {
    One(String),
    Many(Vec<String>),
}

impl Columns {
    fn list(self) -> Vec<String> {
        match self {
            Columns::One(c) => vec![c],
            Columns::Many(cs) => cs,
        }
    }
}

/// A shape as the engine uses it.
pub struct ShapeConfig {
    pub definition: ShapeDefinition,
    key: Option<Vec<String>>,
    pub version_column: Option<String>,
}

impl ShapeConfig {
    /// The primary key's columns: declared, or from the schema the gateway sent.
    pub fn key_columns(&self, schema: &Schema) -> Option<Vec<String>> {
        self.key.clone().or_else(|| {
            let columns: Vec<String> = values::key_columns(schema).into_iter().map(|(n, _)| n.to_string()).collect();
            (!columns.is_empty()).then_some(columns)
        })
    }
}

/// A sync engine: the shapes it follows, the database it mirrors them into, its outbox.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

pub struct Inner {
    /// The gateway's base URL.
    url: String,
    token: RefCell<Option<String>>,
    get_token: Option<Function>,
    db: IdbDatabase,
    shapes: BTreeMap<String, ShapeConfig>,
    listeners: RefCell<Vec<Function>>,
    /// Whether this tab follows the shapes and pushes the outbox.
    leading: Cell<bool>,
    closed: Cell<bool>,
    /// Cancels the requests in flight on close.
    abort: AbortController,
    /// Identifies this database's writes to the gateway's ledger.
    client_id: String,
    sse: bool,
    max_retries: u32,
    confirm_timeout_ms: f64,
    push_again: Cell<bool>,
    /// The latest transactions each shape's stream brought, for writes whose answer comes
    /// after their echo.
    seen: RefCell<BTreeMap<String, std::collections::VecDeque<u64>>>,
    /// Ends the current waits (backoffs, the outbox worker's tick).
    wakers: RefCell<Vec<Function>>,
}

#[wasm_bindgen]
impl Engine {
    /// `{url, token?, getToken?, database?, sse?, maxRetries?, confirmTimeoutMs?,
    /// shapes: {name: {table, where?, columns?, params?, key?, versionColumn?, indexes?}}}`.
    pub async fn open(options: JsValue) -> Result<Engine, JsValue> {
        let get = |name: &str| Reflect::get(&options, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED);
        let url = get("url").as_string().ok_or("openSync: `url` (the gateway's base URL) is required")?;
        let shapes_json = js_sys::JSON::stringify(&get("shapes"))?.as_string().unwrap_or_default();
        let shapes: BTreeMap<String, ShapeOptions> = serde_json::from_str(&shapes_json).map_err(|e| {
            JsValue::from_str(&format!(
                "openSync: `shapes` must map names to {{table, where?, columns?, params?, key?, versionColumn?, indexes?}}: {e}"
            ))
        })?;
        if shapes.is_empty() {
            return Err("openSync: `shapes` names no shape".into());
        }
        if let Some(bad) = shapes.keys().find(|n| n.starts_with('_')) {
            return Err(format!("openSync: shape names starting with `_` are the SDK's own: rename {bad:?}").into());
        }
        let database = get("database").as_string().unwrap_or_else(|| format!("gateway-sync {url}"));
        let stores: Vec<idb::ShapeStore> = shapes
            .iter()
            .map(|(name, s)| idb::ShapeStore {
                name: name.clone(),
                indexes: s.indexes.iter().cloned().map(Columns::list).collect(),
            })
            .collect();
        let db = idb::open(&database, &stores).await?;
        let client_id = client_id(&db).await?;
        let number = |name: &str, default: f64| get(name).as_f64().filter(|n| *n >= 0.0).unwrap_or(default);
        let inner = Inner {
            url: url.trim_end_matches('/').to_string(),
            token: RefCell::new(get("token").as_string()),
            get_token: get("getToken").dyn_into::<Function>().ok(),
            db,
            shapes: shapes
                .into_iter()
                .map(|(name, s)| {
                    let config = ShapeConfig {
                        definition: s.definition,
                        key: s.key.map(Columns::list),
                        version_column: s.version_column,
                    };
                    (name, config)
                })
                .collect(),
            listeners: RefCell::default(),
            leading: Cell::new(false),
            closed: Cell::new(false),
            abort: AbortController::new()?,
            client_id,
            sse: get("sse").as_bool().unwrap_or(true),
            max_retries: number("maxRetries", 10.0) as u32,
            confirm_timeout_ms: number("confirmTimeoutMs", 15_000.0),
            push_again: Cell::new(false),
            seen: RefCell::default(),
            wakers: RefCell::default(),
        };
        Ok(Engine { inner: Rc::new(inner) })
    }

    /// Makes this tab the one that follows every shape and pushes the outbox.
    pub fn lead(&self) {
        if self.inner.leading.replace(true) || self.inner.closed.get() {
            return;
        }
        for name in self.inner.shapes.keys() {
            wasm_bindgen_futures::spawn_local(follow::follow(self.inner.clone(), name.clone()));
        }
        wasm_bindgen_futures::spawn_local(work(self.inner.clone()));
    }

    /// Calls `listener(event)` for every `sync`, `status` and `outbox` event.
    pub fn on(&self, listener: Function) {
        self.inner.listeners.borrow_mut().push(listener);
    }

    /// The IndexedDB database, for queries.
    pub fn database(&self) -> IdbDatabase {
        self.inner.db.clone()
    }

    /// Every row of a shape, from IndexedDB.
    #[wasm_bindgen(js_name = getAll)]
    pub async fn get_all(&self, shape: String) -> Result<JsValue, JsValue> {
        self.inner.shape(&shape)?;
        idb::request(&idb::read(&self.inner.db, &shape)?.get_all()?).await
    }

    /// One row of a shape by primary key (an array for composite keys).
    pub async fn get(&self, shape: String, key: JsValue) -> Result<JsValue, JsValue> {
        self.inner.shape(&shape)?;
        idb::request(&idb::read(&self.inner.db, &shape)?.get(&key)?).await
    }

    /// Writes `[{shape, op: "put"|"update"|"delete", key?, value?}]` locally (unless
    /// `network_first`) and queues them; returns their mutation ids. `atomic`: they reach
    /// the gateway as one all-or-nothing batch.
    pub async fn write(&self, writes: JsValue, atomic: bool, network_first: bool) -> Result<Array, JsValue> {
        let ids = outbox::write(&self.inner, &writes, atomic, network_first).await?;
        self.wake();
        Ok(ids.into_iter().map(|id| JsValue::from_str(&id)).collect())
    }

    /// Tries now what waits (if this tab leads): pushes the outbox, and reconnects the
    /// shapes that are backing off after a failure. For `online` events and other tabs' writes.
    pub fn wake(&self) {
        self.inner.push_again.set(true);
        for waker in self.inner.wakers.take() {
            let _ = waker.call0(&JsValue::NULL);
        }
    }

    /// `{pending, synced, failed, abandoned}`.
    #[wasm_bindgen(js_name = outboxStats)]
    pub async fn outbox_stats(&self) -> Result<JsValue, JsValue> {
        let records = outbox::all_records(&idb::read(&self.inner.db, idb::OUTBOX)?).await?;
        let stats = crate::outbox::stats(records.iter().map(|r| &r.entry));
        js_sys::JSON::parse(&serde_json::to_string(&stats).unwrap_or_default())
    }

    /// Every entry (or those with `status`), oldest first.
    #[wasm_bindgen(js_name = outboxEntries)]
    pub async fn outbox_entries(&self, status: Option<String>) -> Result<Array, JsValue> {
        let records = outbox::all_records(&idb::read(&self.inner.db, idb::OUTBOX)?).await?;
        let wanted = |r: &&outbox::Record| {
            status.as_deref().is_none_or(|s| serde_json::to_value(r.entry.status).is_ok_and(|v| v == s))
        };
        Ok(records.iter().filter(wanted).map(outbox::Record::describe).collect())
    }

    /// Removes the entries the gateway applied and the stream echoed; returns how many.
    #[wasm_bindgen(js_name = clearSynced)]
    pub async fn clear_synced(&self) -> Result<u32, JsValue> {
        let (tx, stores) = idb::write(&self.inner.db, &[idb::OUTBOX])?;
        let records = outbox::all_records(&stores[0]).await?;
        let mut removed = 0;
        for r in records.iter().filter(|r| r.entry.status == crate::outbox::Status::Synced && r.entry.settled()) {
            if let Some(seq) = r.seq {
                stores[0].delete(&seq.into())?;
                removed += 1;
            }
        }
        idb::committed(&tx).await?;
        Ok(removed)
    }

    /// Stops syncing; rows and the outbox stay in IndexedDB for the next open.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.inner.abort.abort();
        self.wake();
        self.inner.db.close();
    }
}

impl Inner {
    pub fn shape(&self, name: &str) -> Result<&ShapeConfig, String> {
        self.shapes.get(name).ok_or_else(|| {
            format!("no shape named {name:?}; openSync was given: {:?}", self.shapes.keys().collect::<Vec<_>>())
        })
    }

    /// Whether this tab still follows and pushes.
    pub fn running(&self) -> bool {
        self.leading.get() && !self.closed.get()
    }

    fn emit(&self, event: &[(&str, JsValue)]) {
        let object = Object::new();
        for (k, v) in event {
            let _ = Reflect::set(&object, &JsValue::from_str(k), v);
        }
        for listener in self.listeners.borrow().iter() {
            let _ = listener.call1(&JsValue::NULL, &object);
        }
    }

    pub fn status(&self, shape: &str, status: &str, reason: Option<&str>) {
        let mut event = vec![("type", "status".into()), ("shape", shape.into()), ("status", status.into())];
        if let Some(r) = reason {
            event.push(("reason", r.into()));
        }
        self.emit(&event);
    }

    pub fn sync_event(&self, shape: &str, op: &str, key: JsValue, origin: &str) {
        self.emit(&[
            ("type", "sync".into()),
            ("shape", shape.into()),
            ("op", op.into()),
            ("key", key),
            ("origin", origin.into()),
        ]);
    }

    /// An entry changed status (synced, failed, abandoned, or a retry).
    pub fn outbox_event(&self, record: &outbox::Record) {
        self.emit(&[("type", "outbox".into()), ("entry", record.describe())]);
    }

    /// The token for the next request; `fresh` asks `getToken` for a new one, as does a
    /// token about to expire (a live stream ends at expiry: the next request needs a new one).
    pub async fn token(&self, fresh: bool) -> Option<String> {
        let expiring = self
            .token
            .borrow()
            .as_deref()
            .and_then(expires_at)
            .is_some_and(|exp| exp - TOKEN_MARGIN_S <= js_sys::Date::now() / 1000.0);
        if (fresh || expiring || self.token.borrow().is_none())
            && let Some(get) = &self.get_token
            && let Ok(value) = get.call0(&JsValue::NULL)
        {
            let value = match value.dyn_into::<js_sys::Promise>() {
                Ok(p) => JsFuture::from(p).await.ok(),
                Err(v) => Some(v),
            };
            *self.token.borrow_mut() = value.and_then(|v| v.as_string());
        }
        self.token.borrow().clone()
    }

    /// Notes the transactions a shape's stream brought.
    pub fn saw_txids(&self, shape: &str, txids: impl IntoIterator<Item = u64>) {
        let mut seen = self.seen.borrow_mut();
        let recent = seen.entry(shape.to_string()).or_default();
        recent.extend(txids);
        let excess = recent.len().saturating_sub(SEEN_TXIDS);
        recent.drain(..excess);
    }

    pub fn seen_txids(&self, shape: &str) -> std::collections::HashSet<u64> {
        self.seen.borrow().get(shape).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// Waits `ms`, or less when [`Engine::wake`] is called.
    pub async fn nap(&self, ms: u32) {
        let mut waker = None;
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            if let Some(w) = web_sys::window() {
                let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
            }
            waker = Some(resolve);
        });
        if let Some(w) = &waker {
            self.wakers.borrow_mut().push(w.clone());
        }
        let _ = JsFuture::from(promise).await;
        if let Some(w) = waker {
            self.wakers.borrow_mut().retain(|f| f != &w);
        }
    }
}

/// The outbox worker of the leading tab: pushes what is pending, retries with backoff,
/// and ends waits for echoes that will not come.
async fn work(inner: Rc<Inner>) {
    let mut failures = 0u32;
    while inner.running() {
        inner.push_again.set(false);
        match outbox::push_once(&inner).await {
            Ok(outbox::Pushed::Answered) => {
                failures = 0;
                continue;
            }
            Ok(outbox::Pushed::Idle) => failures = 0,
            Ok(outbox::Pushed::Failed) | Err(_) => failures += 1,
        }
        let _ = outbox::expire(&inner).await;
        if inner.push_again.get() && failures == 0 {
            continue;
        }
        let wait = if failures > 0 { follow::backoff(failures).max(OUTBOX_TICK_MS / 4) } else { OUTBOX_TICK_MS };
        inner.nap(wait).await;
    }
}

/// A JWT's `exp` (not verified: the gateway does that), to renew it in time.
fn expires_at(token: &str) -> Option<f64> {
    let payload = token.split('.').nth(1)?;
    let mut base64: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while base64.len() % 4 != 0 {
        base64.push('=');
    }
    let json = web_sys::window()?.atob(&base64).ok()?;
    serde_json::from_str::<serde_json::Value>(&json).ok()?["exp"].as_f64()
}

/// This database's client id, made once.
async fn client_id(db: &IdbDatabase) -> Result<String, JsValue> {
    let key = JsValue::from_str("\u{0}client_id");
    let (tx, stores) = idb::write(db, &[idb::POSITIONS])?;
    let id = match idb::request(&stores[0].get(&key)?).await?.as_string() {
        Some(id) => id,
        None => {
            let id = format!("c-{}{}", outbox::random_id(), outbox::random_id());
            stores[0].put_with_key(&JsValue::from_str(&id), &key)?;
            id
        }
    };
    idb::committed(&tx).await?;
    Ok(id)
}
