//! The browser side: follows each shape ([`follow`]), mirrors it into IndexedDB (one object
//! store per shape, keyed by primary key), queues and pushes local writes ([`outbox`]),
//! and tells listeners what changed. The decisions are the plain-Rust modules'; this one
//! only does the I/O. Only the tab that leads (see the JS wrapper) follows and pushes.

mod follow;
mod idb;
mod index_keys;
mod net;
mod outbox;
mod row_store;
mod rows;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect};
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::intern;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, IdbDatabase};

use crate::identity::Identity;
use crate::protocol::ShapeDefinition;
use crate::values::{self, Schema};

/// How often the leader looks at the outbox without being asked: writes of other tabs,
/// retries, echoes that will not come.
const OUTBOX_TICK_MS: u32 = 1000;

/// A token this close to its expiry (seconds) is replaced before the next request.
const TOKEN_MARGIN_S: f64 = 5.0;

/// Transactions remembered per shape: enough to cover the time a push's answer takes.
const SEEN_TXIDS: usize = 1000;

/// How long a live stream may send nothing, not even a keep-alive (the gateway sends one
/// every 21 s), before it is taken for dead and replaced.
const LIVE_SILENCE_MS: f64 = 45_000.0;

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
    /// `(column, index key name)` of each one-column index (see [`index_keys`]).
    pub indexed: Rc<[(String, String)]>,
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

/// One row of a shape changed in the mirror: what a `sync` event tells.
pub struct RowChange {
    pub shape: String,
    pub op: &'static str,
    pub key: JsValue,
    /// The row now (insert, update).
    pub row: Option<JsValue>,
    /// The row before (update, delete), when the mirror held it.
    pub old: Option<JsValue>,
}

/// The changes of one transaction, made JS objects as they are collected (while
/// IndexedDB writes them) rather than after it commits.
pub struct Changes(Array);

impl Changes {
    pub fn new() -> Changes {
        Changes(Array::new())
    }

    pub fn push(&self, change: RowChange) {
        let object = Object::new();
        rows::set(&object, "shape", &intern(&change.shape).into());
        rows::set(&object, "op", &intern(change.op).into());
        rows::set(&object, "key", &change.key);
        if let Some(row) = &change.row {
            rows::set(&object, "value", row);
        }
        if let Some(old) = &change.old {
            rows::set(&object, "old", old);
        }
        self.0.push(&object);
    }
}

/// A sync engine: the shapes it follows, the database it mirrors them into, its outbox.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

pub struct Inner {
    /// Whose data this database holds (the gateway's base URL and the token's subject):
    /// only their tokens are sent.
    identity: Identity,
    token: RefCell<Option<String>>,
    get_token: Option<Function>,
    db: IdbDatabase,
    shapes: BTreeMap<String, ShapeConfig>,
    listeners: RefCell<Vec<Function>>,
    /// Whether this tab follows the shapes and pushes the outbox.
    leading: Cell<bool>,
    /// Counts leaderships: the loops of one end when it does, even if this tab leads again.
    term: Cell<u64>,
    /// Whether opening the database added stores or indexes (this tab has a newer schema).
    pub upgraded: bool,
    closed: Cell<bool>,
    /// Cancels the requests in flight: replaced when the browser goes offline, aborted for
    /// good on close.
    requests: RefCell<AbortController>,
    /// Longest silence of a live stream before it is replaced (`liveSilenceMs`).
    pub live_silence_ms: u32,
    /// When a shape last caught up with the gateway (ms since the epoch; 0: never).
    last_synced: Cell<f64>,
    /// Push rounds the outbox worker finished, and who waits for the next ones.
    push_rounds: Cell<u64>,
    pushing: Cell<bool>,
    round_waiters: RefCell<Vec<Function>>,
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
    /// Closes this connection when another one upgrades or deletes the database.
    on_version_change: RefCell<Option<Closure<dyn FnMut(web_sys::IdbVersionChangeEvent)>>>,
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
        let get_token = get("getToken").dyn_into::<Function>().ok();
        let token = match (get("token").as_string(), &get_token) {
            (Some(token), _) => Some(token),
            (None, Some(ask)) => ask_token(ask).await,
            (None, None) => None,
        };
        let identity = Identity::new(&url, token.as_deref().and_then(subject_of));
        let database = get("database").as_string().unwrap_or_else(|| identity.default_database());
        let stores: Vec<idb::ShapeStore> = shapes
            .iter()
            .map(|(name, s)| idb::ShapeStore {
                name: name.clone(),
                indexes: s.indexes.iter().cloned().map(Columns::list).collect(),
            })
            .collect();
        let (db, upgraded) = idb::open(&database, &stores).await?;
        if let Err(refused) = stamp(&db, &identity, &database).await {
            db.close();
            return Err(refused);
        }
        let client_id = client_id(&db).await?;
        let number = |name: &str, default: f64| get(name).as_f64().filter(|n| *n >= 0.0).unwrap_or(default);
        let inner = Inner {
            identity,
            token: RefCell::new(token),
            get_token,
            db,
            shapes: shapes
                .into_iter()
                .map(|(name, s)| {
                    let indexes: Vec<Vec<String>> = s.indexes.into_iter().map(Columns::list).collect();
                    let config = ShapeConfig {
                        definition: s.definition,
                        key: s.key.map(Columns::list),
                        version_column: s.version_column,
                        indexed: index_keys::indexed_columns(&indexes).into(),
                    };
                    (name, config)
                })
                .collect(),
            listeners: RefCell::default(),
            leading: Cell::new(false),
            term: Cell::new(0),
            upgraded,
            closed: Cell::new(false),
            requests: RefCell::new(AbortController::new()?),
            live_silence_ms: number("liveSilenceMs", LIVE_SILENCE_MS) as u32,
            last_synced: Cell::new(0.0),
            push_rounds: Cell::new(0),
            pushing: Cell::new(false),
            round_waiters: RefCell::default(),
            client_id,
            sse: get("sse").as_bool().unwrap_or(true),
            max_retries: number("maxRetries", 10.0) as u32,
            confirm_timeout_ms: number("confirmTimeoutMs", 15_000.0),
            push_again: Cell::new(false),
            seen: RefCell::default(),
            wakers: RefCell::default(),
            on_version_change: RefCell::default(),
        };
        let inner = Rc::new(inner);
        // As Dexie does: an open connection never blocks another tab's upgrade or a
        // sign-out's deletion; this one stops and says so.
        let weak = Rc::downgrade(&inner);
        let on_version_change =
            Closure::<dyn FnMut(web_sys::IdbVersionChangeEvent)>::new(move |event: web_sys::IdbVersionChangeEvent| {
                if let Some(inner) = weak.upgrade() {
                    inner.stop();
                    inner.db.close();
                    // No new version: the database is being deleted.
                    let new_version = event.new_version().map_or(JsValue::NULL, JsValue::from);
                    inner.emit(&[("type", "versionchange".into()), ("newVersion", new_version)]);
                }
            });
        inner.db.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        *inner.on_version_change.borrow_mut() = Some(on_version_change);
        Ok(Engine { inner })
    }

    /// Makes this tab the one that follows every shape and pushes the outbox.
    pub fn lead(&self) {
        if self.inner.leading.replace(true) || self.inner.closed.get() {
            return;
        }
        let term = self.inner.term.get() + 1;
        self.inner.term.set(term);
        for name in self.inner.shapes.keys() {
            wasm_bindgen_futures::spawn_local(follow::follow(self.inner.clone(), name.clone(), term));
        }
        wasm_bindgen_futures::spawn_local(work(self.inner.clone(), term));
    }

    /// Another tab leads now: this one stops following and pushing (its requests are cut).
    pub fn resign(&self) {
        if self.inner.leading.replace(false) {
            self.inner.term.set(self.inner.term.get() + 1);
            self.inner.halt("another tab leads now");
        }
    }

    /// Whether opening the database added stores or indexes: this tab has the newest
    /// schema and should lead, since the leader follows only its own shapes.
    #[wasm_bindgen(js_name = upgradedSchema)]
    pub fn upgraded_schema(&self) -> bool {
        self.inner.upgraded
    }

    /// Calls `listener(event)` for every `sync`, `status` and `outbox` event.
    pub fn on(&self, listener: Function) {
        self.inner.listeners.borrow_mut().push(listener);
    }

    /// The IndexedDB database's name (its identity's unless the app named one).
    #[wasm_bindgen(js_name = databaseName)]
    pub fn database_name(&self) -> String {
        self.inner.db.name()
    }

    /// The IndexedDB database, for queries.
    pub fn database(&self) -> IdbDatabase {
        self.inner.db.clone()
    }

    /// Every row of a shape, from IndexedDB.
    #[wasm_bindgen(js_name = getAll)]
    pub async fn get_all(&self, shape: String) -> Result<JsValue, JsValue> {
        Ok(self.inner.rows(&shape)?.get_all().await?.into())
    }

    /// One row of a shape by primary key (an array for composite keys).
    pub async fn get(&self, shape: String, key: JsValue) -> Result<JsValue, JsValue> {
        Ok(self.inner.rows(&shape)?.get(&key).await?.map_or(JsValue::UNDEFINED, JsValue::from))
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
    /// shapes that are backing off after a failure. For other tabs' writes.
    pub fn wake(&self) {
        self.inner.wake();
    }

    /// The browser went offline: the live requests are cut at once (a connection can
    /// linger long after the network is gone) and every shape is `offline`.
    pub fn offline(&self) {
        if self.inner.running() {
            self.inner.cut("the browser is offline");
            for name in self.inner.shapes.keys() {
                self.inner.status(name, "offline", Some("the browser is offline"));
            }
        }
    }

    /// The browser is back online: every shape reconnects and the outbox is pushed now.
    pub fn online(&self) {
        self.inner.wake();
    }

    /// When a shape last caught up with the gateway (ms since the epoch), if ever.
    #[wasm_bindgen(js_name = lastSyncedAt)]
    pub fn last_synced_at(&self) -> Option<f64> {
        Some(self.inner.last_synced.get()).filter(|t| *t > 0.0)
    }

    /// Pushes the outbox now (and retries what backs off); resolves once a push round that
    /// started after the call has ended. Tabs that do not lead resolve at once.
    #[wasm_bindgen(js_name = pushNow)]
    pub async fn push_now(&self) {
        if !self.inner.running() {
            return;
        }
        // A round in progress may have read the outbox before the call: then wait for the next.
        let target = self.inner.push_rounds.get() + if self.inner.pushing.get() { 2 } else { 1 };
        self.inner.wake();
        while self.inner.running() && self.inner.push_rounds.get() < target {
            let promise = js_sys::Promise::new(&mut |resolve, _| self.inner.round_waiters.borrow_mut().push(resolve));
            let _ = JsFuture::from(promise).await;
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
        let wanted = |r: &&outbox::Record| status.as_deref().is_none_or(|s| r.entry.status.as_str() == s);
        Ok(records.iter().filter(wanted).map(outbox::Record::describe).collect())
    }

    /// Pushes a failed or abandoned write (and the rest of its atomic batch) again.
    #[wasm_bindgen(js_name = outboxRetry)]
    pub async fn outbox_retry(&self, id: String) -> Result<(), JsValue> {
        outbox::retry(&self.inner, &id).await
    }

    /// Drops a failed or abandoned write.
    #[wasm_bindgen(js_name = outboxDiscard)]
    pub async fn outbox_discard(&self, id: String) -> Result<(), JsValue> {
        outbox::discard(&self.inner, &id).await
    }

    /// Removes the entries the gateway applied and the stream echoed; returns how many.
    #[wasm_bindgen(js_name = clearSynced)]
    pub async fn clear_synced(&self) -> Result<u32, JsValue> {
        let (tx, stores) = idb::write(&self.inner.db, &[idb::OUTBOX], idb::Durability::Strict)?;
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
        self.inner.stop();
        self.inner.db.close();
    }
}

impl Inner {
    pub fn shape(&self, name: &str) -> Result<&ShapeConfig, String> {
        self.shapes.get(name).ok_or_else(|| {
            format!("no shape named {name:?}; openSync was given: {:?}", self.shapes.keys().collect::<Vec<_>>())
        })
    }

    /// A shape's rows, to read.
    fn rows(&self, shape: &str) -> Result<row_store::RowStore, JsValue> {
        let indexed = self.shape(shape)?.indexed.clone();
        Ok(row_store::RowStore::new(idb::read(&self.db, shape)?, indexed))
    }

    /// Ends following and pushing for good.
    fn stop(&self) {
        self.closed.set(true);
        self.halt("the sync engine was closed");
    }

    /// The loops stop here: requests in flight are cancelled, waits and waiters end.
    fn halt(&self, why: &str) {
        self.cut(why);
        self.wake();
        self.end_round();
    }

    /// Cancels the requests in flight; later ones get a new signal.
    fn cut(&self, why: &str) {
        if let Ok(fresh) = AbortController::new() {
            self.requests.replace(fresh).abort_with_reason(&JsValue::from_str(why));
        }
    }

    /// The signal of the requests made now.
    pub fn signal(&self) -> web_sys::AbortSignal {
        self.requests.borrow().signal()
    }

    /// A shape caught up with the gateway now.
    pub fn synced(&self) {
        self.last_synced.set(js_sys::Date::now());
    }

    /// The outbox worker finished a round: wakes who waits for one.
    fn end_round(&self) {
        self.pushing.set(false);
        self.push_rounds.set(self.push_rounds.get() + 1);
        for waiter in self.round_waiters.take() {
            let _ = waiter.call0(&JsValue::NULL);
        }
    }

    fn wake(&self) {
        self.push_again.set(true);
        for waker in self.wakers.take() {
            let _ = waker.call0(&JsValue::NULL);
        }
    }

    /// The gateway's base URL.
    pub fn url(&self) -> &str {
        &self.identity.url
    }

    /// Whether this tab still follows and pushes.
    pub fn running(&self) -> bool {
        self.leading.get() && !self.closed.get()
    }

    /// Whether the loops of leadership `term` go on.
    pub fn leads(&self, term: u64) -> bool {
        self.running() && self.term.get() == term
    }

    fn emit(&self, event: &[(&str, JsValue)]) {
        let object = Object::new();
        for (k, v) in event {
            rows::set(&object, k, v);
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
        if self.last_synced.get() > 0.0 {
            event.push(("lastSyncedAt", self.last_synced.get().into()));
        }
        self.emit(&event);
    }

    /// Changes made to the mirror by one transaction, as one event: `{type: "changes",
    /// origin, changes: [{shape, op, key, value?, old?}]}` (the JS wrapper gives each its
    /// own `sync` event, and relays them to other tabs as one message).
    pub fn changes_event(&self, changes: Changes, origin: &str) {
        if changes.0.length() > 0 {
            self.emit(&[("type", "changes".into()), ("origin", origin.into()), ("changes", changes.0.into())]);
        }
    }

    /// An entry changed status (synced, failed, abandoned, or a retry).
    pub fn outbox_event(&self, record: &outbox::Record) {
        self.emit(&[("type", "outbox".into()), ("entry", record.describe())]);
    }

    /// The token for the next request; `fresh` asks `getToken` for a new one, as does a
    /// token about to expire (a live stream ends at expiry: the next request needs a new one).
    /// A token of another identity is never used: the engine stops, and says why.
    pub async fn token(&self, fresh: bool) -> Result<Option<String>, String> {
        let expiring = self
            .token
            .borrow()
            .as_deref()
            .and_then(expires_at)
            .is_some_and(|exp| exp - TOKEN_MARGIN_S <= js_sys::Date::now() / 1000.0);
        if (fresh || expiring || self.token.borrow().is_none())
            && let Some(get) = &self.get_token
        {
            let token = ask_token(get).await;
            let subject = token.as_deref().and_then(subject_of);
            if token.is_some()
                && let Some(why) = self.identity.foreign_token(subject.as_deref())
            {
                self.stop();
                for name in self.shapes.keys() {
                    self.status(name, "error", Some(&why));
                }
                return Err(why);
            }
            *self.token.borrow_mut() = token;
        }
        Ok(self.token.borrow().clone())
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
async fn work(inner: Rc<Inner>, term: u64) {
    let mut failures = 0u32;
    while inner.leads(term) {
        inner.push_again.set(false);
        inner.pushing.set(true);
        match outbox::push_once(&inner).await {
            Ok(outbox::Pushed::Answered) => {
                failures = 0;
                continue;
            }
            Ok(outbox::Pushed::Idle) => failures = 0,
            Ok(outbox::Pushed::Failed) | Err(_) => failures += 1,
        }
        inner.end_round();
        let _ = outbox::expire(&inner).await;
        if inner.push_again.get() && failures == 0 {
            continue;
        }
        let wait = if failures > 0 { follow::backoff(failures).max(OUTBOX_TICK_MS / 4) } else { OUTBOX_TICK_MS };
        inner.nap(wait).await;
    }
}

/// Calls the app's `getToken` (which may return a promise).
async fn ask_token(get: &Function) -> Option<String> {
    let value = get.call0(&JsValue::NULL).ok()?;
    let value = match value.dyn_into::<js_sys::Promise>() {
        Ok(p) => JsFuture::from(p).await.ok()?,
        Err(v) => v,
    };
    value.as_string()
}

/// A JWT's `exp` (not verified: the gateway does that), to renew it in time.
fn expires_at(token: &str) -> Option<f64> {
    claims(token)?["exp"].as_f64()
}

/// A JWT's `sub`: whose data a database holds.
fn subject_of(token: &str) -> Option<String> {
    claims(token)?["sub"].as_str().map(str::to_string)
}

/// A JWT's claims, unverified (the gateway verifies).
fn claims(token: &str) -> Option<serde_json::Value> {
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
    serde_json::from_str(&json).ok()
}

/// Stamps a new database with its identity; refuses one stamped with another.
async fn stamp(db: &IdbDatabase, identity: &Identity, database: &str) -> Result<(), JsValue> {
    let ours = serde_json::to_string(identity).map_err(|e| e.to_string())?;
    let stored = kept_once(db, "\u{0}identity", || ours.clone()).await?;
    let owner: Identity = serde_json::from_str(&stored).map_err(|e| format!("this database's identity record: {e}"))?;
    identity.refusal(database, &owner).map_or(Ok(()), |refused| Err(refused.into()))
}

/// This database's client id, made once.
async fn client_id(db: &IdbDatabase) -> Result<String, JsValue> {
    kept_once(db, "\u{0}client_id", || format!("c-{}{}", outbox::random_id(), outbox::random_id())).await
}

/// The text kept under `key` beside the positions; `first()` is kept there when none is.
async fn kept_once(db: &IdbDatabase, key: &str, first: impl FnOnce() -> String) -> Result<String, JsValue> {
    let key = JsValue::from_str(key);
    let (tx, stores) = idb::write(db, &[idb::POSITIONS], idb::Durability::Strict)?;
    let text = match idb::request(&stores[0].get(&key)?).await?.as_string() {
        Some(text) => text,
        None => {
            let text = first();
            stores[0].put_with_key(&JsValue::from_str(&text), &key)?;
            text
        }
    };
    idb::committed(&tx).await?;
    Ok(text)
}
