//! Subquery sets and moves from PostgreSQL (docs/subqueries.md): each query reads at one
//! REPEATABLE READ snapshot, and is followed by a position marker in the WAL. When the
//! stream reaches the marker, every transaction the snapshot saw has been streamed, so the
//! fan-out can join the query's result to the stream there
//! ([`crate::fanout::sets::Sets::finish_load`], [`crate::fanout::moves`]).

use std::sync::Arc;

use shapes::subquery_set::SubquerySet;
use shapes::table::quote_ident;
use shapes::where_clause::Subquery;
use tokio::sync::{Semaphore, mpsc};
use tokio_postgres::{Client, Config, GenericClient};

use crate::db::{self, DbError};
use crate::fanout::moves::{MoveResult, MovedRow};
use crate::fanout::registry::Registry;
use crate::fanout::sets::Job;
use crate::fanout::snapshot_info::SnapshotInfo;
use crate::replication::stream::POSITION_MARKER;

/// Most set and move queries running at once.
const CONCURRENT: usize = 4;

#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unexpected pg_current_snapshot() output: {0}")]
    Snapshot(String),
}

impl QueryError {
    /// Why the filter itself fails (data exceptions, class 22), in words of ours: never
    /// PostgreSQL's text, which can quote row values.
    fn filter_fault(&self) -> Option<String> {
        let QueryError::Db(DbError::Query(e)) = self else { return None };
        let code = e.code()?.code();
        code.starts_with("22").then(|| db::client_reason(e, |_| false))
    }
}

/// Runs the set and move queries the fan-out asks for until the channel closes.
pub async fn run(db: Config, registry: Arc<Registry>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let limit = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        let (db, registry) = (db.clone(), registry.clone());
        tokio::spawn(async move {
            run_job(&db, &registry, job).await;
            drop(permit);
        });
    }
}

async fn run_job(db: &Config, registry: &Registry, job: Job) {
    match job {
        Job::Load { marker, set, subquery } => {
            let read = async {
                let client = db::connect(db).await?;
                let snapshot = begin_snapshot(&client).await?;
                let loaded = load(&client, &subquery).await?;
                client.batch_execute("commit").await.map_err(DbError::from)?;
                registry.sets().load_read(marker.clone(), set, loaded, snapshot);
                emit_marker(&client, &marker).await
            };
            if let Err(e) = read.await {
                tracing::warn!(error = %e, subquery = %subquery.to_sql(), "loading a subquery set failed");
                registry.sets().load_failed(set, e.filter_fault());
                // Shapes reloaded at start wait on it with their changes held: they go.
                registry.rotate_users_of(set, "its subquery set could not be loaded");
            }
        }
        Job::Move { marker, shape, id, sql } => {
            let read = async {
                let client = db::connect(db).await?;
                let snapshot = begin_snapshot(&client).await?;
                let rows = client.query(sql.as_str(), &[]).await.map_err(DbError::from)?;
                client.batch_execute("commit").await.map_err(DbError::from)?;
                let rows = rows
                    .iter()
                    .map(|row| MovedRow {
                        now_in: row.get(0),
                        values: (1..row.len()).map(|i| row.get::<_, Option<String>>(i)).collect(),
                    })
                    .collect();
                if shape.finish_move_query(id, MoveResult { snapshot, rows }) {
                    emit_marker(&client, &marker).await?;
                }
                Ok::<_, QueryError>(())
            };
            if let Err(e) = read.await {
                tracing::warn!(handle = %shape.handle, error = %e, "a move query failed");
                registry.rotate(&shape, "the query of its moving rows failed");
            }
        }
    }
}

/// Opens a REPEATABLE READ READ ONLY transaction and says what its snapshot contains.
async fn begin_snapshot(client: &Client) -> Result<SnapshotInfo, QueryError> {
    client.batch_execute("begin isolation level repeatable read read only").await.map_err(DbError::from)?;
    let text: String = client.query_one("select pg_current_snapshot()::text", &[]).await.map_err(DbError::from)?.get(0);
    SnapshotInfo::parse(&text).ok_or(QueryError::Snapshot(text))
}

/// Writes a position marker (after the snapshot's transaction ended), flushed at once.
///
/// PostgreSQL streams WAL only once it is flushed, and a non-transactional message alone
/// waits for the WAL writer (up to `wal_writer_delay`, 200 ms by default): every set load
/// and move would wait for it. The statement also takes a transaction id, so its implicit
/// transaction commits with a flush (PostgreSQL 17's `flush` argument does the same).
async fn emit_marker(client: &Client, marker: &str) -> Result<(), QueryError> {
    client.batch_execute("set synchronous_commit = on").await.map_err(DbError::from)?;
    client
        .execute("select pg_logical_emit_message(false, $1, $2), pg_current_xact_id()", &[&POSITION_MARKER, &marker])
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// The values `subquery` yields now, as the text PostgreSQL prints for them (what the
/// replication stream sends): the set's keys.
pub async fn load(client: &impl GenericClient, subquery: &Subquery) -> Result<SubquerySet, DbError> {
    // Positional names: a subquery may select one column twice.
    let n = subquery.columns.len();
    let names: Vec<String> = (0..n).map(|i| quote_ident(&format!("c{i}"))).collect();
    let text: Vec<String> = names.iter().map(|c| format!("{c}::text")).collect();
    let sql = format!("SELECT {} FROM ({}) AS yielded({})", text.join(", "), subquery.to_sql(), names.join(", "));
    let rows = client.query(sql.as_str(), &[]).await?;
    Ok(SubquerySet::from_rows(rows.iter().map(|row| (0..n).map(|i| row.get::<_, Option<String>>(i)).collect())))
}
