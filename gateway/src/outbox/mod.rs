//! `POST /v1/outbox`: batches of client writes applied to PostgreSQL exactly once, inside
//! the caller's scope. [`plan`] turns a mutation into SQL from the table's catalog columns,
//! [`ledger`] remembers how far each (subject, client) got, and [`apply`] runs a batch in
//! one transaction.

pub mod apply;
pub mod ledger;
pub mod plan;
mod session;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shapes::table::{TableName, TableSchema};

use crate::db::{self, DbError};

/// Most mutations in one batch.
pub const MAX_MUTATIONS: usize = 1000;

/// A batch as the client sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub client_id: String,
    pub mutations: Vec<Mutation>,
    #[serde(default)]
    pub atomic: bool,
}

/// One write. `op` stays text so an unknown one is refused per mutation, not per batch.
#[derive(Debug, Deserialize)]
pub struct Mutation {
    /// Integers strictly increasing per client, from 1.
    pub id: u64,
    pub table: String,
    pub op: String,
    #[serde(default)]
    pub key: Option<Map<String, Value>>,
    #[serde(default)]
    pub value: Option<Map<String, Value>>,
    #[serde(default)]
    pub base: Option<Map<String, Value>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
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
