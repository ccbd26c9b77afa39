//! The wire contract both ends share: the operations of the shape stream's changes, and
//! the outbox's request and answer. Built without the server's dependencies (the `server`
//! feature), so the gateway, the browser SDK and the load tester use these very types.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// What a change message does to its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// Most mutations in one outbox batch.
pub const MAX_MUTATIONS: usize = 1000;

/// An outbox batch (`POST /v1/outbox`). `F` holds a mutation's columns: the gateway reads
/// them as [`Fields`] borrowed from the body, a client writes them as a JSON map.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "F: Deserialize<'de>"))]
pub struct Batch<'a, F> {
    #[serde(borrow)]
    pub client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub mutations: Vec<Mutation<'a, F>>,
    #[serde(default)]
    pub atomic: bool,
}

/// One write. `op` stays text so an unknown one is refused per mutation, not per batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(deserialize = "F: Deserialize<'de>"))]
pub struct Mutation<'a, F> {
    /// Integers strictly increasing per client, from 1.
    pub id: u64,
    #[serde(borrow)]
    pub table: Cow<'a, str>,
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<F>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<F>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<F>,
}

/// The kinds of write a mutation's `op` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// Insert, or update the row with that key.
    Upsert,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            "upsert" => Op::Upsert,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Upsert => "upsert",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Columns and their JSON values as the client wrote them, in its order. Values stay
/// unparsed until the column's type is known; a column named twice is refused, as it would
/// be ambiguous.
#[derive(Debug, Default)]
pub struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    pub fn get(&self, column: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == column).map(|(_, v)| *v)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A column name, borrowed unless it has escapes.
        #[derive(Deserialize)]
        struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Fields<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of column names and values")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(name), value)) = map.next_entry::<Name<'a>, &'a RawValue>()? {
                    if fields.iter().any(|(k, _)| *k == name) {
                        return Err(serde::de::Error::custom(format!("column {name:?} is named twice")));
                    }
                    fields.push((name, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// What became of one mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    /// Applied before (a retry); `first` carries that answer when it is recent.
    Duplicate,
    /// The row is not as the mutation's `base` says; `row` is the server's.
    Conflict,
    Rejected,
    /// Not applied because another mutation of its atomic batch was refused.
    Aborted,
}

impl Status {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Duplicate => "duplicate",
            Status::Conflict => "conflict",
            Status::Rejected => "rejected",
            Status::Aborted => "aborted",
        }
    }
}

/// What happened to one mutation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutationResult {
    pub id: u64,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The server's current row on a conflict (`null` when the row does not exist).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub row: Option<Value>,
    /// For `duplicate` of a mutation of the client's last batch: the result of the first
    /// time, with its transaction id (older duplicates carry none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first: Option<Box<FirstResult>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FirstResult {
    #[serde(flatten)]
    pub result: MutationResult,
    /// Absent when that batch committed no writes (an aborted atomic batch).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub txid: Option<String>,
}

impl MutationResult {
    pub fn new(id: u64, status: Status) -> MutationResult {
        MutationResult { id, status, error: None, row: None, first: None }
    }

    pub fn refused(id: u64, status: Status, error: impl Into<String>) -> MutationResult {
        MutationResult { error: Some(error.into()), ..MutationResult::new(id, status) }
    }

    /// Whether this result stops an atomic batch.
    pub fn fails(&self) -> bool {
        matches!(self.status, Status::Conflict | Status::Rejected)
    }
}

/// The answer to a batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchResult {
    /// The transaction's id as the stream's `headers.txids` shows it; absent when nothing
    /// was committed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub txid: Option<String>,
    pub results: Vec<MutationResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_named_as_it_is_sent() {
        for status in [Status::Applied, Status::Duplicate, Status::Conflict, Status::Rejected, Status::Aborted] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn a_batch_reads_as_the_gateway_does_and_writes_as_a_client_does() {
        let body = r#"{"client_id":"c","mutations":[{"id":1,"table":"t","op":"insert","value":{"a":1.50}}]}"#;
        let read: Batch<'_, Fields<'_>> = serde_json::from_str(body).unwrap();
        assert_eq!(read.mutations[0].value.as_ref().unwrap().get("a").unwrap().get(), "1.50", "exact digits");
        let twice = r#"{"client_id":"c","mutations":[{"id":1,"table":"t","op":"insert","value":{"a":1,"a":2}}]}"#;
        assert!(serde_json::from_str::<Batch<'_, Fields<'_>>>(twice).is_err(), "a column named twice");
        let sent = r#"{"client_id":"c","mutations":[{"id":1,"table":"t","op":"delete","key":{"a":1}}],"atomic":true}"#;
        let written: Batch<'_, serde_json::Map<String, Value>> = serde_json::from_str(sent).unwrap();
        assert_eq!(serde_json::to_string(&written).unwrap(), sent, "absent columns stay absent");
    }
}
