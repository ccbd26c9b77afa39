//! Index keys: IndexedDB cannot index booleans or bigints, which is what bool and int8
//! columns hold. For a declared one-column index, each stored row also carries such a
//! value as an index key under [`INDEX_KEY_PREFIX`] + column (0 or 1; an int8 as text that
//! sorts in numeric order), and the store has an index of that name.

use js_sys::{Object, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

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
