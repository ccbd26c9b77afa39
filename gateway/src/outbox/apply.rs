//! Applying a batch: one transaction; each mutation in a savepoint, so a refused one leaves
//! the others; the ledger rows in the same transaction; the whole batch retried a few
//! times on serialization failures and deadlocks, then refused with 503. Nothing is ever
//! half-applied: a batch commits whole or not at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use shapes::table::TableName;
use shapes::where_clause::{BindOptions, parse_where};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::plan::{self, Statement};
use super::{Batch, BatchResult, FirstResult, Mutation, MutationResult, Op, Status, Tables, WriteTable, ledger};
use crate::auth::{Auth, Caller};

/// Attempts of a batch that hit a serialization failure or deadlock.
const ATTEMPTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the database is busy with conflicting writes; retry the batch (it is idempotent)")]
    Contended,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    NotSetUp(String),
}

/// The outbox's database side: a connection pool and the writable tables' columns.
pub struct Outbox {
    pub pool: Pool,
    pub tables: Tables,
    pub bind: BindOptions,
}

impl Outbox {
    pub async fn push(&self, auth: &Auth, caller: &Caller, batch: &Batch) -> Result<BatchResult, PushError> {
        for attempt in 0..ATTEMPTS {
            match self.attempt(auth, caller, batch).await {
                Ok(result) => return Ok(result),
                Err(Attempt::Retry) if attempt + 1 < ATTEMPTS => {
                    let jitter = rand::random_range(0..20u64);
                    tokio::time::sleep(Duration::from_millis(10 * 2u64.pow(attempt) + jitter)).await;
                }
                Err(Attempt::Retry) => return Err(PushError::Contended),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(PushError::Contended)
    }

    async fn table(&self, tx: &Transaction<'_>, name: &TableName) -> Result<Option<Arc<WriteTable>>, Attempt> {
        self.tables.get(&**tx, name).await.map_err(|e| Attempt::Failed(PushError::Unavailable(e.to_string())))
    }

    async fn attempt(&self, auth: &Auth, caller: &Caller, batch: &Batch) -> Result<BatchResult, Attempt> {
        let mut client = self.pool.get().await.map_err(|e| Attempt::Failed(PushError::Unavailable(e.to_string())))?;
        let tx = client.transaction().await?;
        let txid: i64 = tx.query_one("select (pg_current_xact_id()::text::bigint % 4294967296)", &[]).await?.get(0);
        let ids: Vec<&str> = batch.mutations.iter().map(|m| m.id.as_str()).collect();
        let earlier = ledger::lookup(&*tx, &batch.client_id, &ids).await?;
        let mut results: Vec<MutationResult> = Vec::with_capacity(batch.mutations.len());
        let mut in_batch: HashMap<&str, usize> = HashMap::new();
        for m in &batch.mutations {
            let first = earlier.get(&m.id).cloned().or_else(|| {
                in_batch.get(m.id.as_str()).map(|&i| FirstResult { result: results[i].clone(), txid: txid.to_string() })
            });
            if let Some(first) = first {
                results.push(MutationResult {
                    first: Some(Box::new(first)),
                    ..MutationResult::new(&m.id, Status::Duplicate)
                });
                continue;
            }
            let result = self.apply_one(&tx, auth, caller, m).await?;
            metrics::counter!("gateway_outbox_mutations_total", "table" => m.table.clone(), "status" => status_name(result.status)).increment(1);
            in_batch.insert(&m.id, results.len());
            results.push(result);
        }
        if batch.atomic
            && let Some(culprit) = results.iter().find(|r| r.fails())
        {
            let why = format!("the batch is atomic and mutation {:?} was refused", culprit.id);
            tx.rollback().await?;
            for r in &mut results {
                if !r.fails() && r.status != Status::Duplicate {
                    *r = MutationResult::refused(&r.id, Status::Aborted, why.clone());
                }
            }
            return Ok(BatchResult { txid: None, results });
        }
        let fresh: Vec<&MutationResult> = results.iter().filter(|r| r.status != Status::Duplicate).collect();
        ledger::record(&*tx, &batch.client_id, txid, &fresh).await?;
        tx.commit().await?;
        Ok(BatchResult { txid: Some(txid.to_string()), results })
    }

    /// One mutation inside its savepoint. `Err` only for what must restart the batch.
    async fn apply_one(
        &self,
        tx: &Transaction<'_>,
        auth: &Auth,
        caller: &Caller,
        m: &Mutation,
    ) -> Result<MutationResult, Attempt> {
        let refuse = |msg: String| Ok(MutationResult::refused(&m.id, Status::Rejected, msg));
        let Some(op) = Op::parse(&m.op) else {
            return refuse(format!("unknown op {:?}; use insert, update, upsert or delete", m.op));
        };
        let name = match TableName::parse(&m.table) {
            Ok(n) => n,
            Err(e) => return refuse(format!("table: {e}")),
        };
        let access = match auth.write_access(caller, &name, op) {
            Ok(a) => a,
            Err(e) => return refuse(e.to_string()),
        };
        let Some(mut table) = self.table(tx, &name).await? else {
            return refuse(format!("table {} does not exist", name.quoted()));
        };
        // A column the cached definition lacks may be new: read the catalog again, once.
        if m.value.iter().flat_map(|v| v.keys()).any(|k| table.schema.column_index(k).is_none()) {
            self.tables.forget(&name);
            match self.table(tx, &name).await? {
                Some(fresh) => table = fresh,
                None => return refuse(format!("table {} does not exist", name.quoted())),
            }
        }
        let scope = match &access.scope {
            None => None,
            Some(s) => {
                let params = s.params.iter().cloned().collect();
                match parse_where(&s.where_text, &table.schema, &params, self.bind) {
                    Ok(expr) => Some(plan::ScopeSql { row: expr.to_sql(), existing: expr.to_sql_on(plan::TARGET) }),
                    Err(e) => return refuse(format!("the token's claims do not fit the access rule: {e}")),
                }
            }
        };
        let version = access.version_column.as_deref();
        let checked = match plan::check(
            &table,
            op,
            m.key.as_ref(),
            m.value.as_ref(),
            m.base.as_ref(),
            access.writable.as_deref(),
            version,
        ) {
            Ok(c) => c,
            Err(plan::Refusal(msg)) => return refuse(msg),
        };
        tx.batch_execute("savepoint mutation").await?;
        let written = match run(tx, &checked.statement(scope.as_ref(), version)).await {
            Ok(rows) => rows,
            Err(e) if retryable(&e) => return Err(e.into()),
            Err(e) => {
                tx.batch_execute("rollback to savepoint mutation").await?;
                if e.code() == Some(&SqlState::UNDEFINED_COLUMN) || e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                    self.tables.forget(&name);
                }
                return refuse(crate::db::DbError::from(e).to_string());
            }
        };
        let result = match written.first().map(|r| r.get::<_, bool>(0)) {
            Some(true) => MutationResult::new(&m.id, Status::Applied),
            Some(false) => {
                tx.batch_execute("rollback to savepoint mutation").await?;
                return refuse(format!("the {op} would leave the row outside your scope"));
            }
            // Nothing matched: the row is missing, outside the scope, or changed since `base`.
            None => {
                let current = run(tx, &checked.current_row(scope.as_ref(), access.readable.as_deref())).await?;
                match current.first().map(|r| (r.get::<_, bool>(0), r.get::<_, serde_json::Value>(1))) {
                    None if op == Op::Delete => MutationResult::new(&m.id, Status::Applied),
                    None => MutationResult {
                        row: Some(serde_json::Value::Null),
                        ..MutationResult::new(&m.id, Status::Conflict)
                    },
                    Some((false, _)) => {
                        MutationResult::refused(&m.id, Status::Rejected, "the row with this key is outside your scope")
                    }
                    Some((true, row)) => MutationResult {
                        error: Some(format!("the row changed since base.{}", version.unwrap_or("version"))),
                        row: Some(row),
                        ..MutationResult::new(&m.id, Status::Conflict)
                    },
                }
            }
        };
        tx.batch_execute("release savepoint mutation").await?;
        Ok(result)
    }
}

async fn run(tx: &Transaction<'_>, s: &Statement) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let prepared = tx.prepare_cached(&s.sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    tx.query(&prepared, &params).await
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Applied => "applied",
        Status::Duplicate => "duplicate",
        Status::Conflict => "conflict",
        Status::Rejected => "rejected",
        Status::Aborted => "aborted",
    }
}

/// Conflicts between concurrent transactions: the batch is retried whole. A unique
/// violation outside a savepoint is the ledger: the same mutation pushed twice at once.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Why an attempt at a batch ended without a result.
enum Attempt {
    Retry,
    Failed(PushError),
}

impl From<tokio_postgres::Error> for Attempt {
    fn from(e: tokio_postgres::Error) -> Self {
        if retryable(&e) || e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            Attempt::Retry
        } else if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            Attempt::Failed(PushError::NotSetUp(
                "the outbox ledger gateway.mutations is missing; run sql/setup.sql (or give the gateway's role CREATE on the database)".into(),
            ))
        } else {
            Attempt::Failed(PushError::Unavailable(crate::db::DbError::from(e).to_string()))
        }
    }
}
