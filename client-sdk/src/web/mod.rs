//! The browser side: follows each shape with `fetch`, mirrors it into IndexedDB (one object
//! store per shape, keyed by primary key), and tells listeners what changed. The decisions
//! are [`crate::protocol`]'s; this module only does the I/O.

mod idb;
mod net;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect};
use serde_json::{Map, Value};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::IdbDatabase;

use crate::protocol::{Change, Operation, Outcome, Position, ProtocolError, ShapeDefinition, ShapeStream};
use crate::values::{self, Schema, Typed};

/// Longest wait between retries of a failing request.
const BACKOFF_MAX_MS: u32 = 32_000;

/// A sync engine: the shapes it follows and the database it mirrors them into.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<Inner>,
}

struct Inner {
    /// The gateway's base URL.
    url: String,
    token: RefCell<Option<String>>,
    get_token: Option<Function>,
    db: IdbDatabase,
    shapes: BTreeMap<String, ShapeDefinition>,
    listeners: RefCell<Vec<Function>>,
    closed: Cell<bool>,
}

/// What is stored per shape besides its rows.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    shape: ShapeDefinition,
    position: Position,
}

#[wasm_bindgen]
impl Engine {
    /// `{url, token?, getToken?, database?, shapes: {name: {table, where?, columns?, params?}}}`.
    pub async fn open(options: JsValue) -> Result<Engine, JsValue> {
        let get = |name: &str| Reflect::get(&options, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED);
        let url = get("url").as_string().ok_or("openSync: `url` (the gateway's base URL) is required")?;
        let shapes_json = js_sys::JSON::stringify(&get("shapes"))?.as_string().unwrap_or_default();
        let shapes: BTreeMap<String, ShapeDefinition> = serde_json::from_str(&shapes_json).map_err(|e| {
            JsValue::from_str(&format!(
                "openSync: `shapes` must map names to {{table, where?, columns?, params?}}: {e}"
            ))
        })?;
        if shapes.is_empty() {
            return Err("openSync: `shapes` names no shape".into());
        }
        let database = get("database").as_string().unwrap_or_else(|| format!("gateway-sync {url}"));
        let names: Vec<String> = shapes.keys().cloned().collect();
        let db = idb::open(&database, &names).await?;
        let inner = Inner {
            url: url.trim_end_matches('/').to_string(),
            token: RefCell::new(get("token").as_string()),
            get_token: get("getToken").dyn_into::<Function>().ok(),
            db,
            shapes,
            listeners: RefCell::default(),
            closed: Cell::new(false),
        };
        Ok(Engine { inner: Rc::new(inner) })
    }

    /// Starts following every shape.
    pub fn start(&self) {
        for (name, shape) in &self.inner.shapes {
            wasm_bindgen_futures::spawn_local(follow(self.inner.clone(), name.clone(), shape.clone()));
        }
    }

    /// Calls `listener(event)` for every `sync` and `status` event.
    pub fn on(&self, listener: Function) {
        self.inner.listeners.borrow_mut().push(listener);
    }

    /// Every row of a shape, from IndexedDB.
    #[wasm_bindgen(js_name = getAll)]
    pub async fn get_all(&self, shape: String) -> Result<JsValue, JsValue> {
        self.inner.store_name(&shape)?;
        idb::request(&idb::read(&self.inner.db, &shape)?.get_all()?).await
    }

    /// One row of a shape by primary key (an array for composite keys).
    pub async fn get(&self, shape: String, key: JsValue) -> Result<JsValue, JsValue> {
        self.inner.store_name(&shape)?;
        idb::request(&idb::read(&self.inner.db, &shape)?.get(&key)?).await
    }

    /// Stops following; rows stay in IndexedDB for the next open.
    pub fn close(&self) {
        self.inner.closed.set(true);
    }
}

impl Inner {
    fn store_name(&self, shape: &str) -> Result<(), JsValue> {
        if self.shapes.contains_key(shape) {
            Ok(())
        } else {
            Err(format!("no shape named {shape:?}; openSync was given: {:?}", self.shapes.keys().collect::<Vec<_>>())
                .into())
        }
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

    fn status(&self, shape: &str, status: &str, reason: Option<&str>) {
        let mut event = vec![("type", "status".into()), ("shape", shape.into()), ("status", status.into())];
        if let Some(r) = reason {
            event.push(("reason", r.into()));
        }
        self.emit(&event);
    }

    /// The token for the next request; `fresh` asks `getToken` for a new one.
    async fn token(&self, fresh: bool) -> Option<String> {
        if (fresh || self.token.borrow().is_none())
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
}

/// Follows one shape until the engine closes or the gateway refuses it for good.
async fn follow(inner: Rc<Inner>, name: String, shape: ShapeDefinition) {
    let mut stream = match load(&inner.db, &name, &shape).await {
        Ok(position) => ShapeStream::resume(position),
        Err(e) => return inner.status(&name, "error", Some(&describe(&e))),
    };
    inner.status(&name, "connecting", None);
    // `live` is announced at the first up-to-date of this session, and after recoveries.
    let mut announced = false;
    let mut failures = 0u32;
    let mut fresh_token = false;
    while !inner.closed.get() {
        let url = format!("{}/v1/shape?{}", inner.url, encode(&stream.query(&shape)));
        let token = inner.token(fresh_token).await;
        fresh_token = false;
        let answer = match net::get(&url, token.as_deref()).await {
            Ok(a) => a,
            Err(e) => {
                inner.status(&name, "offline", Some(&describe(&e)));
                failures += 1;
                sleep(backoff(failures)).await;
                continue;
            }
        };
        if answer.status == 401 && inner.get_token.is_some() && failures < 3 {
            fresh_token = true;
            failures += 1;
            continue;
        }
        // Ok(true): the mirror caught up with the gateway.
        let step = match stream.on_response(&answer.as_response()) {
            Ok(Outcome::Continue) => Ok(false),
            Ok(Outcome::Apply(changes)) => {
                apply(&inner, &name, &shape, &stream.position, &changes).await.map(|()| true)
            }
            Ok(Outcome::Refetch) => reset(&inner.db, &name, &shape, &stream.position).await.map(|()| false),
            Err(ProtocolError::Status { retry: true, message, .. }) => {
                inner.status(&name, "offline", Some(&message));
                failures += 1;
                sleep(backoff(failures)).await;
                continue;
            }
            Err(e) => return inner.status(&name, "error", Some(&e.to_string())),
        };
        let caught_up = matches!(step, Ok(true));
        if let Err(e) = step {
            return inner.status(&name, "error", Some(&describe(&e)));
        }
        if caught_up && (!announced || failures > 0) {
            inner.status(&name, "live", None);
            announced = true;
        }
        failures = 0;
    }
}

/// The stored position of a shape; a changed definition starts over.
async fn load(db: &IdbDatabase, name: &str, shape: &ShapeDefinition) -> Result<Position, JsValue> {
    let stored = idb::request(&idb::read(db, idb::POSITIONS)?.get(&JsValue::from_str(name))?).await?;
    let stored: Option<Stored> = stored.as_string().and_then(|s| serde_json::from_str(&s).ok());
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
    let (tx, stores) = idb::write(db, &[name, idb::POSITIONS])?;
    stores[0].clear()?;
    stores[1].put_with_key(&stored(shape, position), &JsValue::from_str(name))?;
    idb::committed(&tx).await
}

fn stored(shape: &ShapeDefinition, position: &Position) -> JsValue {
    let s = Stored { shape: shape.clone(), position: position.clone() };
    JsValue::from_str(&serde_json::to_string(&s).unwrap_or_default())
}

/// Applies a batch of changes and the position after it in one transaction, then tells
/// the listeners.
async fn apply(
    inner: &Inner,
    name: &str,
    shape: &ShapeDefinition,
    position: &Position,
    changes: &[Change],
) -> Result<(), JsValue> {
    let schema = position.schema.clone().unwrap_or_default();
    let (tx, stores) = idb::write(&inner.db, &[name, idb::POSITIONS])?;
    let rows = &stores[0];
    let mut keys = Vec::with_capacity(changes.len());
    for change in changes {
        let key = primary_key(&schema, &change.value).ok_or_else(|| {
            JsValue::from_str(&format!("a change of {name} lacks its primary key (key {})", change.key))
        })?;
        match change.operation {
            Operation::Insert => {
                rows.put_with_key(&row(&schema, &change.value, None), &key)?;
            }
            Operation::Update => {
                let existing = idb::request(&rows.get(&key)?).await?;
                let base = existing.dyn_into::<Object>().ok();
                rows.put_with_key(&row(&schema, &change.value, base), &key)?;
            }
            Operation::Delete => {
                rows.delete(&key)?;
            }
        }
        keys.push(key);
    }
    stores[1].put_with_key(&stored(shape, position), &JsValue::from_str(name))?;
    idb::committed(&tx).await?;
    for (change, key) in changes.iter().zip(keys) {
        let op = match change.operation {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        };
        inner.emit(&[
            ("type", "sync".into()),
            ("shape", name.into()),
            ("op", op.into()),
            ("key", key),
            ("origin", "server".into()),
        ]);
    }
    Ok(())
}

/// A row as a JS object with typed values, merged over `base` (updates carry only what
/// changed).
fn row(schema: &Schema, value: &Map<String, Value>, base: Option<Object>) -> JsValue {
    let object = base.unwrap_or_default();
    for (column, v) in value {
        let typed = match schema.get(column) {
            Some(ty) => values::parse(v.as_str(), ty),
            None => v.as_str().map_or(Typed::Null, |s| Typed::Text(s.to_string())),
        };
        let _ = Reflect::set(&object, &JsValue::from_str(column), &to_js(&typed));
    }
    object.into()
}

/// The IndexedDB key of a row: its primary key value, or an array of them in key order.
/// int8 keys stay text (a bigint is no valid IndexedDB key).
fn primary_key(schema: &Schema, value: &Map<String, Value>) -> Option<JsValue> {
    let mut columns: Vec<(&u32, &String, &values::ColumnType)> =
        schema.iter().filter_map(|(name, ty)| ty.pk_index.as_ref().map(|i| (i, name, ty))).collect();
    columns.sort_by_key(|(i, ..)| **i);
    let parts: Vec<JsValue> = columns
        .iter()
        .map(|(_, name, ty)| {
            let text = value.get(*name)?.as_str()?;
            Some(match values::parse(Some(text), ty) {
                Typed::BigInt(s) => JsValue::from_str(&s),
                typed => to_js(&typed),
            })
        })
        .collect::<Option<_>>()?;
    match parts.len() {
        0 => None,
        1 => parts.into_iter().next(),
        _ => Some(parts.into_iter().collect::<Array>().into()),
    }
}

fn to_js(v: &Typed) -> JsValue {
    match v {
        Typed::Null => JsValue::NULL,
        Typed::Bool(b) => JsValue::from_bool(*b),
        Typed::Number(n) => JsValue::from_f64(*n),
        Typed::BigInt(s) => {
            js_sys::BigInt::new(&JsValue::from_str(s)).map(JsValue::from).unwrap_or_else(|_| JsValue::from_str(s))
        }
        Typed::Text(s) => JsValue::from_str(s),
        Typed::Json(j) => js_sys::JSON::parse(&j.to_string()).unwrap_or(JsValue::NULL),
        Typed::Array(items) => items.iter().map(to_js).collect::<Array>().into(),
    }
}

fn encode(query: &[(String, String)]) -> String {
    query
        .iter()
        .map(|(k, v)| format!("{}={}", js_sys::encode_uri_component(k), js_sys::encode_uri_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Full-jitter exponential backoff: 1 s, 2 s, 4 s … capped at 32 s.
fn backoff(failures: u32) -> u32 {
    let cap = 1000u32.saturating_mul(1 << failures.min(5)).min(BACKOFF_MAX_MS);
    (js_sys::Math::random() * f64::from(cap)) as u32
}

async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
        }
    });
    let _ = JsFuture::from(promise).await;
}

fn describe(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| Reflect::get(e, &JsValue::from_str("message")).ok().and_then(|m| m.as_string()))
        .unwrap_or_else(|| format!("{e:?}"))
}
