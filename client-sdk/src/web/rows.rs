//! Rows as JavaScript objects: typed from PostgreSQL text by the schema, keyed for
//! IndexedDB, and turned into JSON for the outbox.

use js_sys::{Array, Object, Reflect};
use serde_json::{Map, Value};
use wasm_bindgen::JsCast;
use wasm_bindgen::intern;
use wasm_bindgen::prelude::*;

use crate::outbox::Row;
use crate::values::{self, ColumnType, Schema, Typed};

#[wasm_bindgen]
extern "C" {
    /// A plain object, for a property store V8 caches per key (`object[key] = value`),
    /// where `Reflect.set` takes the generic path: rows are built a field at a time.
    #[wasm_bindgen(js_name = Object)]
    type Fields;
    #[wasm_bindgen(method, structural, indexing_setter)]
    fn set(this: &Fields, key: &JsValue, value: &JsValue);
}

/// Sets `object[key]`; keys are field and column names, interned.
pub fn set(object: &Object, key: &str, value: &JsValue) {
    object.unchecked_ref::<Fields>().set(&intern(key).into(), value);
}

/// A row as the store holds it.
pub struct JsRow(pub Object);

impl Clone for JsRow {
    /// A copy, so replaying writes never changes a row read from the store.
    fn clone(&self) -> JsRow {
        JsRow(Object::assign(&Object::new(), &self.0))
    }
}

impl Row for JsRow {
    fn merge(&mut self, partial: &JsRow) {
        Object::assign(&self.0, &partial.0);
    }
}

/// A row from the gateway (values as text) as a JS object with typed values, merged over
/// `base` (updates carry only what changed).
pub fn from_text(schema: &Schema, value: &Map<String, Value>, base: Option<Object>) -> JsValue {
    let object = base.unwrap_or_default();
    for (column, v) in value {
        let typed = match schema.get(column) {
            Some(ty) => values::parse(v.as_str(), ty),
            None => v.as_str().map_or(Typed::Null, |s| Typed::Text(s.to_string())),
        };
        set(&object, column, &to_js(&typed));
    }
    object.into()
}

/// The IndexedDB key of a row from the gateway.
pub fn server_key(schema: &Schema, value: &Map<String, Value>) -> Option<JsValue> {
    let columns = values::key_columns(schema);
    let parts: Option<Vec<JsValue>> =
        columns.iter().map(|(name, ty)| Some(key_part(value.get(*name)?.as_str()?, Some(ty)))).collect();
    compose(parts?)
}

/// The IndexedDB key of a row written locally, from its key columns; values are typed as
/// the gateway's would be, so the row it sends back lands on the same key.
pub fn local_key(schema: &Schema, columns: &[String], row: &JsValue) -> Result<JsValue, String> {
    let parts = columns
        .iter()
        .map(|c| {
            let v = Reflect::get(row, &JsValue::from_str(c)).unwrap_or(JsValue::UNDEFINED);
            let text = text_of(&v).ok_or_else(|| format!("the row has no value for its key column {c:?}"))?;
            Ok(key_part(&text, schema.get(c)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    compose(parts).ok_or_else(|| "the shape's primary key is not known".into())
}

/// The key columns of a key given by the app: one value, or an array for composite keys.
pub fn key_object(columns: &[String], key: &JsValue) -> Result<Object, String> {
    let values: Vec<JsValue> = if columns.len() == 1 { vec![key.clone()] } else { Array::from(key).to_vec() };
    if values.len() != columns.len() {
        return Err(format!("the key needs {} values, for {columns:?}", columns.len()));
    }
    let object = Object::new();
    for (c, v) in columns.iter().zip(values) {
        set(&object, c, &v);
    }
    Ok(object)
}

/// int8 keys stay text: a bigint is no valid IndexedDB key.
fn key_part(text: &str, ty: Option<&ColumnType>) -> JsValue {
    match ty.map(|ty| values::parse(Some(text), ty)) {
        Some(Typed::BigInt(s)) | Some(Typed::Text(s)) => JsValue::from_str(&s),
        Some(typed) => to_js(&typed),
        None => JsValue::from_str(text),
    }
}

fn compose(parts: Vec<JsValue>) -> Option<JsValue> {
    match parts.len() {
        0 => None,
        1 => parts.into_iter().next(),
        _ => Some(parts.into_iter().collect::<Array>().into()),
    }
}

/// A key value as text (strings, numbers, bigints).
fn text_of(v: &JsValue) -> Option<String> {
    v.as_string()
        .or_else(|| v.as_f64().map(|n| n.to_string()))
        .or_else(|| v.dyn_ref::<js_sys::BigInt>().and_then(|b| b.to_string(10).ok()).map(String::from))
}

pub fn to_js(v: &Typed) -> JsValue {
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

/// A JS value as JSON (bigints as their decimal text, dates as ISO text).
pub fn to_json(v: &JsValue) -> Result<Value, String> {
    thread_local! {
        static BIGINT_AS_TEXT: js_sys::Function =
            js_sys::Function::new_with_args("k, v", "return typeof v === 'bigint' ? v.toString() : v");
    }
    let text = BIGINT_AS_TEXT
        .with(|replacer| js_sys::JSON::stringify_with_replacer(v, replacer))
        .map_err(|e| format!("the value is not JSON-serialisable: {}", describe(&e)))?;
    serde_json::from_str(&String::from(text)).map_err(|e| e.to_string())
}

/// Whether two values are equal as data (bigints and numbers apart).
pub fn same(a: &JsValue, b: &JsValue) -> bool {
    a.js_typeof() == b.js_typeof() && to_json(a).ok() == to_json(b).ok()
}

/// A text form of a key, to compare keys.
pub fn key_id(key: &JsValue) -> String {
    js_sys::JSON::stringify(key).map(String::from).unwrap_or_default()
}

pub fn describe(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| Reflect::get(e, &JsValue::from_str("message")).ok().and_then(|m| m.as_string()))
        .unwrap_or_else(|| format!("{e:?}"))
}
