//! `POST /v1/outbox`: batches of client writes applied to PostgreSQL exactly once, inside
//! the caller's scope. [`plan`] turns a mutation into SQL from the table's catalog columns,
//! [`ledger`] remembers how far each (subject, client) got, and [`apply`] runs a batch in
//! one transaction.

pub mod apply;
pub mod ledger;
pub mod plan;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use shapes::table::{TableName, TableSchema};

use crate::auth::rules::WriteOp;
use crate::db::{self, DbError};

pub use shapes::contract::{BatchResult, Fields, FirstResult, MAX_MUTATIONS, MutationResult, Op, Status};

/// A batch as the client sends it, borrowing its text from the request body.
pub type Batch<'a> = shapes::contract::Batch<'a, Fields<'a>>;
pub type Mutation<'a> = shapes::contract::Mutation<'a, Fields<'a>>;

/// The kinds of write an access rule must list for `op`.
pub fn needs(op: Op) -> &'static [WriteOp] {
    match op {
        Op::Insert => &[WriteOp::Insert],
        Op::Update => &[WriteOp::Update],
        Op::Delete => &[WriteOp::Delete],
        Op::Upsert => &[WriteOp::Insert, WriteOp::Update],
    }
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
