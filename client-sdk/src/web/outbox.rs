//! Local writes in IndexedDB: each write and its optimistic row in one transaction, the
//! push worker, and the row shown rebuilt when a write settles. The decisions are
//! [`crate::outbox`]'s.

use std::collections::{BTreeSet, HashMap, HashSet};

use js_sys::{Array, Function, Object, Reflect};
use serde_json::{Value, json};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::IdbObjectStore;

use super::row_store::RowStore;
use super::rows::{self, JsRow, key_id};
use super::{Changes, Inner, RowChange, idb, net};
use crate::outbox::{self, Entry, Local, Op, PushFailure, Status};
use crate::protocol::error_message;
use crate::values::Schema;
use shapes::contract::BatchResult;

/// An entry as stored: `{seq, state, meta, key, value}`; `state` is "open" while the entry
/// may still change, which is what the worker reads.
pub struct Record {
    pub seq: Option<f64>,
    pub entry: Entry,
    pub key: JsValue,
    /// The row (put) or the changed columns (update) as the app wrote them.
    pub value: JsValue,
}

impl Record {
    fn from_js(v: &JsValue) -> Option<Record> {
        let get = |k: &str| Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
        let entry = serde_json::from_str(&get("meta").as_string()?).ok()?;
        Some(Record { seq: get("seq").as_f64(), entry, key: get("key"), value: get("value") })
    }

    pub fn to_js(&self) -> JsValue {
        let o = Object::new();
        let set = |k: &str, v: &JsValue| {
            rows::set(&o, k, v);
        };
        if let Some(seq) = self.seq {
            set("seq", &seq.into());
        }
        set("state", &JsValue::from_str(if self.entry.settled() { "done" } else { "open" }));
        set("meta", &JsValue::from_str(&serde_json::to_string(&self.entry).unwrap_or_default()));
        set("key", &self.key);
        set("value", &self.value);
        o.into()
    }

    fn local(&self) -> Local<JsRow> {
        let row = || JsRow(self.value.clone().unchecked_into());
        match self.entry.op {
            Op::Put | Op::Add => Local::Put(row()),
            Op::Update => Local::Update(row()),
            Op::Delete => Local::Delete,
        }
    }

    /// The entry as the app sees it.
    pub fn describe(&self) -> JsValue {
        let o: Object = js_sys::JSON::parse(&serde_json::to_string(&self.entry).unwrap_or_default())
            .map(JsCast::unchecked_into)
            .unwrap_or_default();
        for field in ["mutation", "local", "batch"] {
            let _ = Reflect::delete_property(&o, &JsValue::from_str(field));
        }
        rows::set(&o, "key", &self.key);
        rows::set(&o, "value", &self.value);
        o.into()
    }
}

/// Entries still open, in write order.
pub async fn open_records(store: &IdbObjectStore) -> Result<Vec<Record>, JsValue> {
    let all = idb::request(&store.index("state")?.get_all_with_key(&JsValue::from_str("open"))?).await?;
    Ok(Array::from(&all).iter().filter_map(|v| Record::from_js(&v)).collect())
}

/// Every entry, in write order.
pub async fn all_records(store: &IdbObjectStore) -> Result<Vec<Record>, JsValue> {
    let all = idb::request(&store.get_all()?).await?;
    Ok(Array::from(&all).iter().filter_map(|v| Record::from_js(&v)).collect())
}

/// One write the app asked for.
struct Write {
    shape: String,
    op: Op,
    /// put: the row; update: the changed columns, or a function of the current row.
    value: JsValue,
    key: JsValue,
}

impl Write {
    fn from_js(v: &JsValue) -> Result<Write, String> {
        let get = |k: &str| Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
        let op = match get("op").as_string().as_deref() {
            Some("put") => Op::Put,
            Some("add") => Op::Add,
            Some("update") => Op::Update,
            Some("delete") => Op::Delete,
            other => return Err(format!("unknown write {other:?}: use put, add, update or delete")),
        };
        let shape = get("shape").as_string().ok_or("a write needs its shape")?;
        Ok(Write { shape, op, value: get("value"), key: get("key") })
    }
}

/// Writes locally and queues for the gateway, all in one IndexedDB transaction; returns
/// the mutation ids. `atomic`: the writes reach the server as one all-or-nothing batch.
/// `network_first`: the rows shown change only once the gateway applied the writes.
pub async fn write(inner: &Inner, writes: &JsValue, atomic: bool, network_first: bool) -> Result<Vec<String>, JsValue> {
    let writes: Vec<Write> = Array::from(writes).iter().map(|w| Write::from_js(&w)).collect::<Result<_, _>>()?;
    let mut names: Vec<&str> = writes.iter().map(|w| w.shape.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    for n in &names {
        inner.shape(n)?;
    }
    names.extend([idb::POSITIONS, idb::OUTBOX, idb::SERVER]);
    let (tx, stores) = idb::write(&inner.db, &names, idb::Durability::Strict)?;
    let store = |name: &str| stores[names.iter().position(|n| *n == name).unwrap_or(0)].clone();
    let (positions, outbox, server) = (store(idb::POSITIONS), store(idb::OUTBOX), store(idb::SERVER));
    let batch = atomic.then(|| format!("b-{}", random_id()));
    let mut schemas: HashMap<String, Schema> = HashMap::new();
    let mut ids = Vec::new();
    let events = Changes::new();
    let result: Result<(), JsValue> = async {
        for w in &writes {
            let config = inner.shape(&w.shape)?;
            if !schemas.contains_key(&w.shape) {
                let stored = idb::request(&positions.get(&JsValue::from_str(&w.shape))?).await?;
                schemas.insert(w.shape.clone(), idb::stored_schema(&stored));
            }
            let schema = &schemas[&w.shape];
            let key_columns = config.key_columns(schema).ok_or_else(|| {
                format!(
                    "shape {:?}: its primary key is not known yet: wait for sync.ready({:?}) once, or declare `key` in its options",
                    w.shape, w.shape
                )
            })?;
            let rows = RowStore::new(store(&w.shape), config.indexed.clone());
            let key = match w.op {
                Op::Put | Op::Add => rows::local_key(schema, &key_columns, &w.value)?,
                Op::Update | Op::Delete => {
                    rows::local_key(schema, &key_columns, &rows::key_object(&key_columns, &w.key)?.into())?
                }
            };
            let current = rows.get(&key).await?.map(JsRow);
            if w.op == Op::Add && current.is_some() {
                return Err(format!(
                    "add: shape {:?} already has a row with key {}: use put to replace it, or update",
                    w.shape,
                    key_id(&key)
                )
                .into());
            }
            let (value, mut mutation) = prepare(config, &key_columns, w, current.as_ref(), &key)?;
            let id = format!("m-{}", random_id());
            mutation["table"] = json!(config.definition.table);
            let entry = Entry {
                id: id.clone(),
                mutation_id: None,
                shape: w.shape.clone(),
                op: w.op,
                mutation,
                batch: batch.clone(),
                status: Status::Pending,
                attempts: 0,
                txid: None,
                local: !network_first,
                echoed: false,
                error: None,
                row: None,
                created_ms: js_sys::Date::now(),
                synced_ms: None,
            };
            let record = Record { seq: None, entry, key: key.clone(), value };
            if !network_first {
                let server_key = server_key(&w.shape, &key);
                if idb::request(&server.get(&server_key)?).await?.is_undefined() {
                    server.put_with_key(&server_record(current.as_ref()), &server_key)?;
                }
                let shown = outbox::replay(current.clone(), [&record.local()]);
                show(&rows, &key, shown.as_ref())?;
                events.push(row_change(&w.shape, key, current.as_ref(), shown.as_ref()));
            }
            outbox.add(&record.to_js())?;
            ids.push(id);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tx.abort();
        return Err(e);
    }
    idb::committed(&tx).await?;
    inner.changes_event(events, "local");
    Ok(ids)
}

/// The value stored with an entry and the mutation sent for it.
fn prepare(
    config: &super::ShapeConfig,
    key_columns: &[String],
    w: &Write,
    current: Option<&JsRow>,
    key: &JsValue,
) -> Result<(JsValue, Value), JsValue> {
    let key_json = rows::to_json(&rows::key_object(key_columns, key)?.into())?;
    let version = config.version_column.as_deref();
    let base = |row: Option<&JsRow>| -> Result<Option<Value>, JsValue> {
        let (Some(vc), Some(row)) = (version, row) else { return Ok(None) };
        let v = Reflect::get(&row.0, &JsValue::from_str(vc))?;
        Ok(Some(json!({ vc: rows::to_json(&v)? })))
    };
    let strip = |value: Value, also_key: bool| -> Value {
        let mut value = value;
        if let Value::Object(m) = &mut value {
            if let Some(vc) = version {
                m.remove(vc);
            }
            if also_key {
                m.retain(|k, _| !key_columns.contains(k));
            }
        }
        value
    };
    Ok(match w.op {
        Op::Put | Op::Add => {
            let value: JsValue = Object::assign(&Object::new(), &w.value.clone().unchecked_into()).into();
            let mutation = json!({"op": w.op.wire().as_str(), "value": strip(rows::to_json(&value)?, false)});
            (value, mutation)
        }
        Op::Update => {
            let current = current.ok_or_else(|| {
                format!("update: shape {:?} has no row with key {}", config.definition.table, key_id(key))
            })?;
            let partial: Object = match w.value.dyn_ref::<Function>() {
                Some(f) => changed(&current.0, &f.call1(&JsValue::NULL, &current.clone().0)?),
                None => Object::assign(&Object::new(), &w.value.clone().unchecked_into()),
            };
            // The gateway bumps the version column by one: the row shown does too.
            if let Some(vc) = version
                && let Some(v) = Reflect::get(&current.0, &JsValue::from_str(vc))?.as_f64()
            {
                Reflect::set(&partial, &JsValue::from_str(vc), &(v + 1.0).into())?;
            }
            let sent = strip(rows::to_json(&partial)?, true);
            if sent.as_object().is_none_or(|m| m.is_empty()) {
                return Err("update: no column to change (key and version columns cannot be changed)".into());
            }
            let mut mutation = json!({"op": Op::Update.wire().as_str(), "key": key_json, "value": sent});
            if let Some(b) = base(Some(current))? {
                mutation["base"] = b;
            }
            (partial.into(), mutation)
        }
        Op::Delete => {
            let mut mutation = json!({"op": Op::Delete.wire().as_str(), "key": key_json});
            if let Some(b) = base(current)? {
                mutation["base"] = b;
            }
            (JsValue::UNDEFINED, mutation)
        }
    })
}

/// The columns of `new` that differ from `old`.
fn changed(old: &Object, new: &JsValue) -> Object {
    let partial = Object::new();
    for entry in Object::entries(&new.clone().unchecked_into()).iter() {
        let pair = Array::from(&entry);
        let (k, v) = (pair.get(0), pair.get(1));
        let before = Reflect::get(old, &k).unwrap_or(JsValue::UNDEFINED);
        if !rows::same(&before, &v) {
            let _ = Reflect::set(&partial, &k, &v);
        }
    }
    partial
}

/// What a push did.
pub enum Pushed {
    /// Nothing was pending.
    Idle,
    /// A batch got its answer.
    Answered,
    /// The batch could not be sent or applied now.
    Failed,
}

/// Where the next mutation id is kept, beside the client id.
const NEXT_MUTATION_ID: &str = "\u{0}next_mutation_id";

/// Sends the next batch of pending writes and takes the answer.
pub async fn push_once(inner: &Inner) -> Result<Pushed, JsValue> {
    let Some((push, mut pushed)) = next_push(inner).await? else { return Ok(Pushed::Idle) };
    let body = push.body.to_string();
    // A refused token stopped the engine: these writes wait for their own identity.
    let Ok(token) = inner.token(false).await else { return Ok(Pushed::Failed) };
    // Closed (or resigned) while the batch was read: nothing leaves this tab any more. A
    // push in flight is cut by close; the ledger answers its retry, so none is lost.
    if !inner.running() {
        return Ok(Pushed::Failed);
    }
    let url = format!("{}/v1/outbox", inner.url());
    let mut answer = net::post(&url, &body, token.as_deref(), &inner.signal()).await;
    if matches!(&answer, Ok(a) if a.status == 401) && inner.get_token.is_some() {
        let Ok(token) = inner.token(true).await else { return Ok(Pushed::Failed) };
        answer = net::post(&url, &body, token.as_deref(), &inner.signal()).await;
    }
    let failure = match answer {
        Err(_) => Some(PushFailure::Offline),
        Ok(a) if a.status == 200 => match serde_json::from_str::<BatchResult>(&a.body) {
            Ok(response) => {
                outbox::settle(&mut pushed, &response, js_sys::Date::now());
                None
            }
            Err(e) => Some(PushFailure::Retry(format!("the gateway's answer is not an outbox result: {e}"))),
        },
        Ok(a) if a.status == 409 => {
            match serde_json::from_str::<Value>(&a.body).ok().and_then(|v| v["expected"].as_u64()) {
                Some(expected) => {
                    renumber(inner, expected).await?;
                    return Ok(Pushed::Answered);
                }
                None => Some(PushFailure::Refused(format!("409: {}", error_message(&a.body)))),
            }
        }
        Ok(a) if a.status == 408 || a.status == 429 || a.status >= 500 => {
            Some(PushFailure::Retry(format!("{}: {}", a.status, error_message(&a.body))))
        }
        Ok(a) => Some(PushFailure::Refused(format!("{}: {}", a.status, error_message(&a.body)))),
    };
    if let Some(f) = &failure {
        outbox::failed_push(&mut pushed, f, inner.max_retries);
    }
    let updated: HashMap<String, Entry> = pushed.into_iter().map(|e| (e.id.clone(), e)).collect();
    let shapes: BTreeSet<String> = updated.values().map(|e| e.shape.clone()).collect();
    store_updates(inner, &shapes, &updated).await?;
    Ok(if failure.is_some() { Pushed::Failed } else { Pushed::Answered })
}

/// Picks the next push and stores the mutation ids its new writes get, with the next free
/// id, before anything is sent: a retry, even after a reload, sends the same ids.
async fn next_push(inner: &Inner) -> Result<Option<(outbox::Push, Vec<Entry>)>, JsValue> {
    let (tx, stores) = idb::write(&inner.db, &[idb::OUTBOX, idb::POSITIONS], idb::Durability::Strict)?;
    let (store, positions) = (&stores[0], &stores[1]);
    let mut records = open_records(store).await?;
    let mut entries: Vec<Entry> = records.iter().map(|r| r.entry.clone()).collect();
    let key = JsValue::from_str(NEXT_MUTATION_ID);
    let stored = idb::request(&positions.get(&key)?).await?.as_f64().map_or(1, |n| n as u64);
    let mut next_id = stored;
    let push = outbox::next_push(&inner.client_id, &mut entries, &mut next_id);
    if let Some(push) = &push
        && next_id != stored
    {
        for &i in &push.entries {
            records[i].entry = entries[i].clone();
            store.put(&records[i].to_js())?;
        }
        positions.put_with_key(&JsValue::from_f64(next_id as f64), &key)?;
    }
    idb::committed(&tx).await?;
    Ok(push.map(|push| {
        let pushed = push.entries.iter().map(|&i| entries[i].clone()).collect();
        (push, pushed)
    }))
}

/// The gateway expects mutation `expected` next (409 `out_of_order`): the pending writes
/// take ids from there (see [`outbox::renumber`]).
async fn renumber(inner: &Inner, expected: u64) -> Result<(), JsValue> {
    let (tx, stores) = idb::write(&inner.db, &[idb::OUTBOX, idb::POSITIONS], idb::Durability::Strict)?;
    let mut records = open_records(&stores[0]).await?;
    let mut entries: Vec<Entry> = records.iter().map(|r| r.entry.clone()).collect();
    let next_id = outbox::renumber(&mut entries, expected);
    for (record, entry) in records.iter_mut().zip(entries) {
        if record.entry != entry {
            record.entry = entry;
            stores[0].put(&record.to_js())?;
        }
    }
    stores[1].put_with_key(&JsValue::from_f64(next_id as f64), &JsValue::from_str(NEXT_MUTATION_ID))?;
    idb::committed(&tx).await
}

/// Ends the wait for echoes that will not come (see [`outbox::expire`]).
pub async fn expire(inner: &Inner) -> Result<(), JsValue> {
    let records = open_records(&idb::read(&inner.db, idb::OUTBOX)?).await?;
    let mut entries: Vec<Entry> = records.into_iter().map(|r| r.entry).collect();
    let marked = outbox::expire(&mut entries, js_sys::Date::now(), inner.confirm_timeout_ms);
    if marked.is_empty() {
        return Ok(());
    }
    let updated: HashMap<String, Entry> =
        marked.into_iter().map(|i| (entries[i].id.clone(), entries[i].clone())).collect();
    let shapes: BTreeSet<String> = updated.values().map(|e| e.shape.clone()).collect();
    store_updates(inner, &shapes, &updated).await
}

/// Makes the failed or abandoned write `id` (with the rest of its atomic batch) pending
/// again under a new mutation id; the rows shown carry it again.
pub async fn retry(inner: &Inner, id: &str) -> Result<(), JsValue> {
    let (tx, stores) = idb::write(&inner.db, &[idb::OUTBOX], idb::Durability::Strict)?;
    let mut records = all_records(&stores[0]).await?;
    let batch = settled_entry(&records, id, "retry")?.batch.clone();
    let mut updated = HashMap::new();
    for r in records.iter_mut().filter(|r| r.entry.id == id || (batch.is_some() && r.entry.batch == batch)) {
        outbox::retry(&mut r.entry);
        stores[0].put(&r.to_js())?;
        updated.insert(r.entry.id.clone(), r.entry.clone());
    }
    idb::committed(&tx).await?;
    let shapes: BTreeSet<String> = updated.values().map(|e| e.shape.clone()).collect();
    store_updates(inner, &shapes, &updated).await?;
    inner.wake();
    Ok(())
}

/// Removes the failed or abandoned write `id`: the row shown is already the server's.
pub async fn discard(inner: &Inner, id: &str) -> Result<(), JsValue> {
    let (tx, stores) = idb::write(&inner.db, &[idb::OUTBOX], idb::Durability::Strict)?;
    let records = all_records(&stores[0]).await?;
    settled_entry(&records, id, "discard")?;
    if let Some(seq) = records.iter().find(|r| r.entry.id == id).and_then(|r| r.seq) {
        stores[0].delete(&seq.into())?;
    }
    idb::committed(&tx).await
}

/// The entry `id`, when it failed or was abandoned (what `retry` and `discard` take).
fn settled_entry<'a>(records: &'a [Record], id: &str, what: &str) -> Result<&'a Entry, String> {
    let entry =
        &records.iter().find(|r| r.entry.id == id).ok_or_else(|| format!("{what}: no outbox entry {id:?}"))?.entry;
    match entry.status {
        Status::Failed | Status::Abandoned => Ok(entry),
        status => Err(format!(
            "{what}: entry {id:?} is {}: only failed or abandoned writes can be retried or discarded",
            status.as_str()
        )),
    }
}

/// Stores changed entries and rebuilds the rows they cover, in one transaction.
async fn store_updates(
    inner: &Inner,
    shapes: &BTreeSet<String>,
    updated: &HashMap<String, Entry>,
) -> Result<(), JsValue> {
    let mut names: Vec<&str> = shapes.iter().map(String::as_str).collect();
    names.extend([idb::OUTBOX, idb::SERVER]);
    let (tx, stores) = idb::write(&inner.db, &names, idb::Durability::Strict)?;
    let (outbox_store, server) = (&stores[names.len() - 2], &stores[names.len() - 1]);
    let mut records = open_records(outbox_store).await?;
    let mut touched = Vec::new();
    for r in records.iter_mut() {
        if let Some(e) = updated.get(&r.entry.id) {
            r.entry = e.clone();
            // The stream may have brought the write back before the push's answer came.
            outbox::echo(std::slice::from_mut(&mut r.entry), &e.shape, &inner.seen_txids(&e.shape));
            outbox_store.put(&r.to_js())?;
            touched.push((r.entry.shape.clone(), r.key.clone()));
        }
    }
    let events = Changes::new();
    let mut done = HashSet::new();
    for (shape, key) in touched {
        if !done.insert((shape.clone(), key_id(&key))) {
            continue;
        }
        let store = stores[names.iter().position(|n| *n == shape).unwrap_or(0)].clone();
        let rows = RowStore::new(store, inner.shape(&shape)?.indexed.clone());
        if let Some(change) = rebuild(&rows, server, &shape, &key, &records).await? {
            events.push(change);
        }
    }
    idb::committed(&tx).await?;
    inner.changes_event(events, "server");
    for r in records.iter().filter(|r| updated.contains_key(&r.entry.id)) {
        inner.outbox_event(r);
    }
    Ok(())
}

/// Shows the server's row of `key` with the writes still outstanding on it replayed over it;
/// returns the change made to the row shown, if any.
pub async fn rebuild(
    rows: &RowStore,
    server: &IdbObjectStore,
    shape: &str,
    key: &JsValue,
    records: &[Record],
) -> Result<Option<RowChange>, JsValue> {
    let id = key_id(key);
    let writes: Vec<Local<JsRow>> = records
        .iter()
        .filter(|r| r.entry.shape == shape && r.entry.outstanding() && key_id(&r.key) == id)
        .map(Record::local)
        .collect();
    let server_key = server_key(shape, key);
    let current = rows.get(key).await?.map(JsRow);
    let record = idb::request(&server.get(&server_key)?).await?;
    let base = if record.is_undefined() {
        // A network-first write just applied: the row shown is the server's.
        current.clone()
    } else {
        let row = Reflect::get(&record, &"row".into())?;
        (!row.is_null() && !row.is_undefined()).then(|| JsRow(row.unchecked_into()))
    };
    let shown = outbox::replay(base.clone(), &writes);
    if writes.is_empty() {
        server.delete(&server_key)?;
    } else if record.is_undefined() {
        server.put_with_key(&server_record(base.as_ref()), &server_key)?;
    }
    let same = match (&current, &shown) {
        (Some(a), Some(b)) => rows::same(&a.0, &b.0),
        (None, None) => true,
        _ => false,
    };
    if same {
        return Ok(None);
    }
    show(rows, key, shown.as_ref())?;
    Ok(Some(row_change(shape, key.clone(), current.as_ref(), shown.as_ref())))
}

/// The event for a row shown as `shown` where `current` was.
fn row_change(shape: &str, key: JsValue, current: Option<&JsRow>, shown: Option<&JsRow>) -> RowChange {
    RowChange {
        shape: shape.to_string(),
        op: change_op(current.is_some(), shown.is_some()),
        key,
        row: shown.map(|r| r.0.clone().into()),
        old: current.map(|r| r.0.clone().into()),
    }
}

/// The `_server` key of a shape's row.
pub fn server_key(shape: &str, key: &JsValue) -> JsValue {
    Array::of2(&JsValue::from_str(shape), key).into()
}

pub fn server_record(row: Option<&JsRow>) -> JsValue {
    let o = Object::new();
    rows::set(&o, "row", &row.map_or(JsValue::NULL, |r| r.0.clone().into()));
    o.into()
}

fn show(rows: &RowStore, key: &JsValue, row: Option<&JsRow>) -> Result<(), JsValue> {
    match row {
        Some(r) => rows.put(&r.0, key),
        None => rows.delete(key),
    }
}

fn change_op(before: bool, after: bool) -> &'static str {
    match (before, after) {
        (false, _) => "insert",
        (true, true) => "update",
        (true, false) => "delete",
    }
}

/// 64 random bits as hex.
pub fn random_id() -> String {
    let part = || (js_sys::Math::random() * f64::from(u32::MAX)) as u32;
    format!("{:08x}{:08x}", part(), part())
}
