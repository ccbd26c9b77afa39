//! A shape's object store as the rest of the SDK reads and writes rows.
//!
//! IndexedDB cannot index booleans or bigints, which is what bool and int8 columns hold.
//! For a declared one-column index, each stored row also carries such a value as an index
//! key under [`INDEX_KEY_PREFIX`] + column (0 or 1; an int8 as text that sorts in numeric
//! order), and the store has an index of that name. The key is added when a row is put and
//! taken off every row read, so apps never see it.

use std::rc::Rc;

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::IdbObjectStore;

use super::idb;
use super::rows::set;
use crate::values::int8_index_key;

/// Names the index key of a column, in rows and as the index's name.
pub const INDEX_KEY_PREFIX: &str = "$idx$";

/// The index key of a value IndexedDB cannot index itself: a boolean as 0 or 1, a bigint
/// as [`int8_index_key`] text; `None` for any other value.
pub fn index_key(value: &JsValue) -> Option<JsValue> {
    if let Some(b) = value.as_bool() {
        return Some(JsValue::from_f64(if b { 1.0 } else { 0.0 }));
    }
    let big = value.dyn_ref::<js_sys::BigInt>()?;
    int8_index_key(&String::from(big.to_string(10).ok()?)).map(|k| JsValue::from_str(&k))
}

/// `(column, index key name)` of each of a shape's one-column indexes.
pub fn indexed_columns(indexes: &[Vec<String>]) -> Vec<(String, String)> {
    indexes
        .iter()
        .filter_map(|i| match i.as_slice() {
            [column] => Some((column.clone(), format!("{INDEX_KEY_PREFIX}{column}"))),
            _ => None,
        })
        .collect()
}

/// Adds the index keys of `indexed` to a row read from the store; says whether it had any.
pub fn add_index_keys(row: &Object, indexed: &[(String, String)]) -> Result<bool, JsValue> {
    let mut added = false;
    for (column, name) in indexed {
        if let Some(k) = index_key(&Reflect::get(row, &JsValue::from_str(column))?) {
            set(row, name, &k);
            added = true;
        }
    }
    Ok(added)
}

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

/// The index keys' names in rows, for the JS wrapper's queries.
#[wasm_bindgen(js_name = indexKeyPrefix)]
pub fn index_key_prefix() -> String {
    INDEX_KEY_PREFIX.into()
}

/// A value as a query on a one-column index compares it: booleans and bigints as their
/// index keys, anything else as it is.
#[wasm_bindgen(js_name = indexKey)]
pub fn index_key_of(value: JsValue) -> JsValue {
    index_key(&value).unwrap_or(value)
}
