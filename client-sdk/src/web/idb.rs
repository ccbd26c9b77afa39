//! IndexedDB requests and transactions as futures.

use js_sys::Promise;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbObjectStore, IdbOpenDbRequest, IdbRequest, IdbTransaction, IdbTransactionMode};

/// The store of shape positions (name → position JSON).
pub const POSITIONS: &str = "_positions";

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

/// Opens the database with an object store per name in `stores` (and [`POSITIONS`]),
/// upgrading it when one is missing.
pub async fn open(name: &str, stores: &[String]) -> Result<IdbDatabase, JsValue> {
    let factory = web_sys::window().ok_or("no window")?.indexed_db()?.ok_or("this browser has no IndexedDB")?;
    let mut wanted: Vec<String> = stores.to_vec();
    wanted.push(POSITIONS.to_string());
    let db: IdbDatabase = request(&factory.open(name)?.into()).await?.dyn_into()?;
    let existing = db.object_store_names();
    let missing: Vec<String> = wanted.iter().filter(|s| !existing.contains(s)).cloned().collect();
    if missing.is_empty() {
        return Ok(db);
    }
    let version = db.version() as u32 + 1;
    db.close();
    let open: IdbOpenDbRequest = factory.open_with_u32(name, version)?;
    let target = open.clone();
    let upgrade = Closure::once_into_js(move || {
        if let Ok(db) = target.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
            for store in &missing {
                let _ = db.create_object_store(store);
            }
        }
    });
    open.set_onupgradeneeded(Some(upgrade.unchecked_ref()));
    request(&open.into()).await?.dyn_into()
}

/// A read-write transaction over `stores`, and those stores.
pub fn write(db: &IdbDatabase, stores: &[&str]) -> Result<(IdbTransaction, Vec<IdbObjectStore>), JsValue> {
    let names = js_sys::Array::new();
    for s in stores {
        names.push(&JsValue::from_str(s));
    }
    let tx = db.transaction_with_str_sequence_and_mode(&names, IdbTransactionMode::Readwrite)?;
    let handles = stores.iter().map(|s| tx.object_store(s)).collect::<Result<_, _>>()?;
    Ok((tx, handles))
}

/// A read-only view of one store.
pub fn read(db: &IdbDatabase, store: &str) -> Result<IdbObjectStore, JsValue> {
    db.transaction_with_str(store)?.object_store(store)
}
