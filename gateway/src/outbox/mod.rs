//! `POST /v1/outbox`: batches of client writes applied to PostgreSQL exactly once, inside
//! the caller's scope. [`plan`] turns a mutation into SQL from the table's catalog columns,
//! [`ledger`] remembers how far each (subject, client) got, and [`apply`] runs a batch in
//! one transaction.

pub mod apply;
pub mod ledger;
pub mod plan;
mod session;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use shapes::table::{TableName, TableSchema};

use crate::auth::rules::WriteOp;
use crate::db::{self, DbError};

/// Most mutations in one batch.
pub const MAX_MUTATIONS: usize = 1000;

/// A batch as the client sends it, borrowing its text from the request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch<'a> {
    #[serde(borrow)]
    pub client_id: Cow<'a, str>,
    #[serde(borrow)]
    pub mutations: Vec<Mutation<'a>>,
    #[serde(default)]
    pub atomic: bool,
}

/// One write. `op` stays text so an unknown one is refused per mutation, not per batch.
#[derive(Debug, Deserialize)]
pub struct Mutation<'a> {
    /// Integers strictly increasing per client, from 1.
    pub id: u64,
    #[serde(borrow)]
    pub table: Cow<'a, str>,
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(borrow, default)]
    pub key: Option<Fields<'a>>,
    #[serde(borrow, default)]
    pub value: Option<Fields<'a>>,
    #[serde(borrow, default)]
    pub base: Option<Fields<'a>>,
}

/// Columns and their JSON values as the client wrote them, in its order. Values stay
/// unparsed until the column's type is known ([`plan`] reads them); a column named twice
/// is refused, as it would be ambiguous.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Upsert,
}

impl Op {
    /// The kinds of write an access rule must list for this op.
    pub fn needs(self) -> &'static [WriteOp] {
        match self {
            Op::Insert => &[WriteOp::Insert],
            Op::Update => &[WriteOp::Update],
            Op::Delete => &[WriteOp::Delete],
            Op::Upsert => &[WriteOp::Insert, WriteOp::Update],
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            "upsert" => Op::Upsert,
            _ => return None,
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Upsert => "upsert",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    Duplicate,
    Conflict,
    Rejected,
    Aborted,
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

/// The response to a batch.
#[derive(Debug, Serialize)]
pub struct BatchResult {
    /// The transaction's id as the stream's `headers.txids` shows it; absent when nothing
    /// was committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txid: Option<String>,
    pub results: Vec<MutationResult>,
}

/// A table as writes need it: its columns with their SQL type names.
#[derive(Debug)]
pub struct WriteTable {
    pub schema: TableSchema,
    /// `format_type` of each column, for casts.
    pub types: Vec<String>,
}

/// Writable tables read from the catalog, kept until a write fails on a changed table.
#[derive(Default)]
pub struct Tables {
    cache: RwLock<HashMap<TableName, Arc<WriteTable>>>,
}

impl Tables {
    pub async fn get(
        &self,
        client: &impl tokio_postgres::GenericClient,
        name: &TableName,
    ) -> Result<Option<Arc<WriteTable>>, DbError> {
        if let Some(t) = self.cache.read().unwrap().get(name) {
            return Ok(Some(t.clone()));
        }
        let Some(schema) = db::table_schema(client, name).await? else { return Ok(None) };
        let types = schema.columns.iter().map(|c| c.type_sql.clone()).collect();
        let table = Arc::new(WriteTable { schema, types });
        self.cache.write().unwrap().insert(name.clone(), table.clone());
        Ok(Some(table))
    }

    /// Whether the table's columns are cached (it exists and was written to).
    pub fn contains(&self, name: &TableName) -> bool {
        self.cache.read().unwrap().contains_key(name)
    }

    /// Drops a table's cached columns (its definition changed).
    pub fn forget(&self, name: &TableName) {
        self.cache.write().unwrap().remove(name);
    }
}
