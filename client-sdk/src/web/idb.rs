//! IndexedDB requests and transactions as futures.

use js_sys::Promise;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    IdbCursorWithValue, IdbDatabase, IdbObjectStore, IdbObjectStoreParameters, IdbOpenDbRequest, IdbRequest,
    IdbTransaction,
};

use super::index_keys::{add_index_keys, indexed_columns};
use crate::protocol::{Position, ShapeDefinition};
use crate::values::Schema;

/// Shape positions (name → position JSON) and the client id.
pub const POSITIONS: &str = "_positions";
/// Local writes, in the order they were made (see [`crate::outbox`]).
pub const OUTBOX: &str = "_outbox";
/// The server's version of rows that local writes in flight cover, keyed `[shape, key]`.
pub const SERVER: &str = "_server";

/// What `POSITIONS` holds per shape besides its rows.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredPosition {
    pub shape: ShapeDefinition,
    pub position: Position,
}

/// The schema in a stored position (empty before the first response).
pub fn stored_schema(stored: &JsValue) -> Schema {
    stored
        .as_string()
        .and_then(|s| serde_json::from_str::<StoredPosition>(&s).ok())
        .and_then(|s| s.position.schema)
        .unwrap_or_default()
}

/// The result of a request, once it succeeds.
pub async fn request(req: &IdbRequest) -> Result<JsValue, JsValue> {
    let promise = Promise::new(&mut |resolve, reject| {
        let target = req.clone();
        let ok =
            Closure::once_into_js(move || resolve.call1(&JsValue::NULL, &target.result().unwrap_or(JsValue::NULL)));
        let target = req.clone();
        let fail =
            Closure::once_into_js(move || reject.call1(&JsValue::NULL, &error_of(target.error().ok().flatten())));
        req.set_onsuccess(Some(ok.unchecked_ref()));
        req.set_onerror(Some(fail.unchecked_ref()));
    });
    JsFuture::from(promise).await
}

fn error_of(e: Option<web_sys::DomException>) -> JsValue {
    e.map(JsValue::from).unwrap_or_else(|| JsValue::from_str("IndexedDB request failed"))
}

/// Resolves when `tx` commits; fails when it aborts.
pub async fn committed(tx: &IdbTransaction) -> Result<(), JsValue> {
    let promise = Promise::new(&mut |resolve, reject| {
        let ok = Closure::once_into_js(move || resolve.call0(&JsValue::NULL));
        tx.set_oncomplete(Some(ok.unchecked_ref()));
        // An aborted transaction fires `abort` (after `error`, when a request failed).
        let target = tx.clone();
        let aborted = Closure::once_into_js(move || reject.call1(&JsValue::NULL, &error_of(target.error())));
        tx.set_onabort(Some(aborted.unchecked_ref()));
    });
    JsFuture::from(promise).await.map(|_| ())
}

/// A shape's object store and the indexes declared for its queries (an index over several
/// columns is named by them joined with `+`; one over one column also has an index of its
/// index keys, see [`super::index_keys`]).
pub struct ShapeStore {
    pub name: String,
    pub indexes: Vec<Vec<String>>,
}

/// Opens the database with a store per shape (and its indexes), [`POSITIONS`], [`OUTBOX`]
/// and [`SERVER`], upgrading it when one is missing; says whether it upgraded.
pub async fn open(name: &str, shapes: &[ShapeStore]) -> Result<(IdbDatabase, bool), JsValue> {
    let factory = web_sys::window().ok_or("no window")?.indexed_db()?.ok_or("this browser has no IndexedDB")?;
    let db: IdbDatabase = request(&factory.open(name)?.into()).await?.dyn_into()?;
    if complete(&db, shapes)? {
        return Ok((db, false));
    }
    let version = db.version() as u32 + 1;
    db.close();
    let open: IdbOpenDbRequest = factory.open_with_u32(name, version)?;
    let target = open.clone();
    let wanted: Vec<(String, Vec<Vec<String>>)> = shapes.iter().map(|s| (s.name.clone(), s.indexes.clone())).collect();
    let upgrade = Closure::once_into_js(move || {
        let _ = upgrade(&target, &wanted);
    });
    open.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
    Ok((request(&open.into()).await?.dyn_into()?, true))
}

/// Whether every store and index exists.
fn complete(db: &IdbDatabase, shapes: &[ShapeStore]) -> Result<bool, JsValue> {
    let existing = db.object_store_names();
    if ![POSITIONS, OUTBOX, SERVER].iter().all(|s| existing.contains(s))
        || !shapes.iter().all(|s| existing.contains(&s.name))
    {
        return Ok(false);
    }
    for shape in shapes.iter().filter(|s| !s.indexes.is_empty()) {
        let names = read(db, &shape.name)?.index_names();
        if !shape.indexes.iter().all(|columns| names.contains(&columns.join("+")))
            || !indexed_columns(&shape.indexes).iter().all(|(_, key)| names.contains(key))
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn upgrade(open: &IdbOpenDbRequest, shapes: &[(String, Vec<Vec<String>>)]) -> Result<(), JsValue> {
    let db: IdbDatabase = open.result()?.dyn_into()?;
    let tx = open.transaction().ok_or("no upgrade transaction")?;
    let existing = db.object_store_names();
    for plain in [POSITIONS, SERVER] {
        if !existing.contains(plain) {
            db.create_object_store(plain)?;
        }
    }
    if !existing.contains(OUTBOX) {
        let options = IdbObjectStoreParameters::new();
        options.set_key_path(&JsValue::from_str("seq"));
        options.set_auto_increment(true);
        db.create_object_store_with_optional_parameters(OUTBOX, &options)?.create_index_with_str("state", "state")?;
    }
    for (name, indexes) in shapes {
        let store = if existing.contains(name) { tx.object_store(name)? } else { db.create_object_store(name)? };
        let names = store.index_names();
        for columns in indexes {
            let index = columns.join("+");
            if names.contains(&index) {
                continue;
            }
            if let [one] = columns.as_slice() {
                store.create_index_with_str(&index, one)?;
            } else {
                let path: js_sys::Array = columns.iter().map(|c| JsValue::from_str(c)).collect();
                store.create_index_with_str_sequence(&index, &path)?;
            }
        }
        let added: Vec<(String, String)> =
            indexed_columns(indexes).into_iter().filter(|(_, key)| !names.contains(key)).collect();
        for (_, key) in &added {
            store.create_index_with_str(key, key)?;
        }
        if existing.contains(name) && !added.is_empty() {
            add_index_keys_to_rows(&store, added)?;
        }
    }
    Ok(())
}

/// Gives the rows already stored the index keys of indexes just added, in the upgrade's
/// transaction (which stays open while the cursor walks).
fn add_index_keys_to_rows(store: &IdbObjectStore, indexed: Vec<(String, String)>) -> Result<(), JsValue> {
    let walk = store.open_cursor()?;
    let target = walk.clone();
    let step = Closure::<dyn FnMut()>::new(move || {
        let Some(cursor) = target.result().ok().and_then(|c| c.dyn_into::<IdbCursorWithValue>().ok()) else {
            return;
        };
        if let Ok(row) = cursor.value().and_then(|r| r.dyn_into::<js_sys::Object>().map_err(JsValue::from))
            && add_index_keys(&row, &indexed).unwrap_or(false)
        {
            let _ = cursor.update(&row);
        }
        let _ = cursor.continue_();
    });
    walk.set_onsuccess(Some(step.as_ref().unchecked_ref()));
    // Called once per row until the walk ends; an upgrade is rare, so it lives on.
    step.forget();
    Ok(())
}

/// When a committed write counts as done.
#[derive(Clone, Copy)]
pub enum Durability {
    /// On disk (flushed): the app's own writes, which exist nowhere else yet.
    Strict,
    /// Handed to the OS: the mirror, which the gateway can always send again. A write lost
    /// to a power cut takes its shape position with it (one transaction), so the shape
    /// resumes from before it.
    Relaxed,
}

#[wasm_bindgen]
extern "C" {
    /// An `IDBDatabase`, for the `transaction` overload web-sys has only as unstable.
    #[wasm_bindgen(js_name = IDBDatabase)]
    type DatabaseWithOptions;
    /// `IDBDatabase.transaction(stores, mode, {durability})`.
    #[wasm_bindgen(method, catch, js_name = transaction)]
    fn transaction_with_durability(
        this: &DatabaseWithOptions,
        stores: &js_sys::Array,
        mode: &str,
        options: &js_sys::Object,
    ) -> Result<IdbTransaction, JsValue>;
}

/// A read-write transaction over `stores`, and those stores.
pub fn write(
    db: &IdbDatabase,
    stores: &[&str],
    durability: Durability,
) -> Result<(IdbTransaction, Vec<IdbObjectStore>), JsValue> {
    let names: js_sys::Array = stores.iter().map(|s| JsValue::from_str(s)).collect();
    let options = js_sys::Object::new();
    let durability = match durability {
        Durability::Strict => "strict",
        Durability::Relaxed => "relaxed",
    };
    super::rows::set(&options, "durability", &durability.into());
    let tx = db.unchecked_ref::<DatabaseWithOptions>().transaction_with_durability(&names, "readwrite", &options)?;
    let handles = stores.iter().map(|s| tx.object_store(s)).collect::<Result<_, _>>()?;
    Ok((tx, handles))
}

/// A read-only view of one store.
pub fn read(db: &IdbDatabase, store: &str) -> Result<IdbObjectStore, JsValue> {
    db.transaction_with_str(store)?.object_store(store)
}
