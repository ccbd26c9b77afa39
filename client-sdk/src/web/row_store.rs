//! A shape's object store as the rest of the SDK reads and writes rows: index keys (see
//! [`super::index_keys`]) are added when a row is put and taken off every row read, so
//! apps never see them.

use std::rc::Rc;

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::IdbObjectStore;

use super::idb;
use super::index_keys::add_index_keys;

/// A shape's rows in one transaction.
pub struct RowStore {
    store: IdbObjectStore,
    /// `(column, index key name)` of each one-column index.
    indexed: Rc<[(String, String)]>,
}

impl RowStore {
    pub fn new(store: IdbObjectStore, indexed: Rc<[(String, String)]>) -> RowStore {
        RowStore { store, indexed }
    }

    /// The row stored under `key`, if any.
    pub async fn get(&self, key: &JsValue) -> Result<Option<Object>, JsValue> {
        let row = idb::request(&self.store.get(key)?).await?;
        Ok(row.dyn_into::<Object>().ok().inspect(|r| self.strip(r)))
    }

    /// Every row, in key order.
    pub async fn get_all(&self) -> Result<Array, JsValue> {
        let rows: Array = idb::request(&self.store.get_all()?).await?.unchecked_into();
        if !self.indexed.is_empty() {
            rows.for_each(&mut |row, _, _| self.strip(row.unchecked_ref()));
        }
        Ok(rows)
    }

    /// Stores `row` under `key`. IndexedDB copies the row when asked, so the index keys
    /// are on it only for that moment.
    pub fn put(&self, row: &JsValue, key: &JsValue) -> Result<(), JsValue> {
        let Some(object) = row.dyn_ref::<Object>().filter(|_| !self.indexed.is_empty()) else {
            return self.store.put_with_key(row, key).map(drop);
        };
        let added = add_index_keys(object, &self.indexed)?;
        let stored = self.store.put_with_key(row, key).map(drop);
        if added {
            self.strip(object);
        }
        stored
    }

    pub fn delete(&self, key: &JsValue) -> Result<(), JsValue> {
        self.store.delete(key).map(drop)
    }

    fn strip(&self, row: &Object) {
        for (_, name) in self.indexed.iter() {
            let _ = Reflect::delete_property(row, &JsValue::from_str(name));
        }
    }
}
