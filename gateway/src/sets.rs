//! Subquery sets and moves from PostgreSQL (docs/subqueries.md): each query reads at one
//! REPEATABLE READ snapshot, and is followed by a position marker in the WAL. When the
//! stream reaches the marker, every transaction the snapshot saw has been streamed, so the
//! fan-out can join the query's result to the stream there
//! ([`crate::fanout::sets::Sets::finish_load`], [`crate::fanout::moves`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shapes::shape::ScopeSpec;
use shapes::subquery_set::SubquerySet;
use shapes::table::quote_ident;
use shapes::where_clause::Subquery;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, GenericClient};

use crate::db::{self, DbError};
use crate::fair_queue::FairQueue;
use crate::fanout::moves::{MoveResult, MovedRow};
use crate::fanout::registry::Registry;
use crate::fanout::sets::{Job, MoveQuery, SetLoad};
use crate::fanout::snapshot_info::SnapshotInfo;
use crate::replication::stream::POSITION_MARKER;

/// Most set and move queries running at once.
const CONCURRENT: usize = 4;
/// Most set loads read at one snapshot.
const MAX_BATCH: usize = 256;
/// Longest wait for a streamed commit to show in a move query's snapshot (a moment, unless
/// PostgreSQL is starved).
const VISIBLE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("unexpected pg_current_snapshot() output: {0}")]
    Snapshot(String),
    #[error("transactions {0:?} were streamed as committed but no snapshot showed them in time")]
    NotVisible(Vec<u32>),
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

/// Runs the set and move queries the fan-out asks for until the channel closes. Loads go
/// first (new shapes wait on them), those waiting together as one batch: one snapshot, one
/// flushed commit for their markers (a crowd of new users is one round of work, not one
/// each). Moves take turns by scope, each scope using at most half the slots, so a change
/// to a set a thousand of one tenant's shapes read does not hold up another tenant's move.
pub async fn run(db: Config, registry: Arc<Registry>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let sessions = Arc::new(Sessions { db, idle: Mutex::new(Vec::new()) });
    let mut loads: Vec<SetLoad> = Vec::new();
    let mut moves = FairQueue::new(CONCURRENT / 2, None);
    let mut running = 0;
    // What ended: a batch of loads (`None`) or a move of a scope.
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<Option<Option<ScopeSpec>>>();
    loop {
        while running < CONCURRENT {
            let (sessions, registry, ended_tx) = (sessions.clone(), registry.clone(), ended_tx.clone());
            if !loads.is_empty() {
                let batch: Vec<SetLoad> = loads.drain(..loads.len().min(MAX_BATCH)).collect();
                tokio::spawn(async move {
                    run_loads(&sessions, &registry, batch).await;
                    let _ = ended_tx.send(None);
                });
            } else if let Some((scope, query)) = moves.pop() {
                tokio::spawn(async move {
                    run_move(&sessions, &registry, query).await;
                    let _ = ended_tx.send(Some(scope));
                });
            } else {
                break;
            }
            running += 1;
        }
        let mut take = |job: Job| match job {
            Job::Load(load) => loads.push(load),
            Job::Move(query) => moves.push(query.shape.shape.spec.scope.clone(), query),
        };
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    take(job);
                    while let Ok(job) = jobs.try_recv() {
                        take(job);
                    }
                }
                None => return,
            },
            Some(what) = ended.recv() => {
                running -= 1;
                if let Some(scope) = what {
                    moves.done(&scope);
                }
            }
        }
    }
}

/// Sessions kept between jobs: a new one costs PostgreSQL a process start, once per set
/// load and move otherwise. A job that failed drops its session (it may be mid-transaction).
struct Sessions {
    db: Config,
    idle: Mutex<Vec<Client>>,
}

impl Sessions {
    async fn take(&self) -> Result<Client, DbError> {
        let reused = std::iter::from_fn(|| self.idle.lock().unwrap().pop()).find(|c| !c.is_closed());
        match reused {
            Some(client) => Ok(client),
            None => {
                let client = db::connect(&self.db).await?;
                // Markers are committed with a flush (see `emit_marker`).
                client.batch_execute("set synchronous_commit = on").await?;
                Ok(client)
            }
        }
    }

    fn give_back(&self, client: Client) {
        self.idle.lock().unwrap().push(client);
    }
}

/// Loads sets at one snapshot. A set whose query fails fails alone (the others are read
/// again without it); a failure of the session fails those not read yet.
async fn run_loads(sessions: &Sessions, registry: &Registry, mut loads: Vec<SetLoad>) {
    while !loads.is_empty() {
        let (at, e) = match read_loads(sessions, registry, &loads).await {
            Ok(()) => return,
            Err(failed) => failed,
        };
        let failed = match at {
            Some(i) => vec![loads.remove(i)],
            None => std::mem::take(&mut loads),
        };
        for load in failed {
            tracing::warn!(error = %e, subquery = %load.subquery.to_sql(), "loading a subquery set failed");
            registry.sets().load_failed(load.set, e.filter_fault());
            // Shapes reloaded at start wait on it with their changes held: they go.
            registry.rotate_users_of(load.set, "its subquery set could not be loaded");
        }
    }
}

/// Reads `loads` and writes their markers; on failure, which load failed (`None`: all).
async fn read_loads(
    sessions: &Sessions,
    registry: &Registry,
    loads: &[SetLoad],
) -> Result<(), (Option<usize>, QueryError)> {
    let all = |e: QueryError| (None, e);
    let client = sessions.take().await.map_err(|e| all(e.into()))?;
    let mut xids: Vec<u32> = loads.iter().flat_map(|l| l.xids.iter().copied()).collect();
    xids.dedup();
    let snapshot = snapshot_seeing(&client, &xids, VISIBLE_WAIT).await.map_err(all)?;
    let mut sets = Vec::with_capacity(loads.len());
    for (i, l) in loads.iter().enumerate() {
        sets.push(load(&client, &l.subquery).await.map_err(|e| (Some(i), e.into()))?);
    }
    client.batch_execute("commit").await.map_err(|e| all(DbError::from(e).into()))?;
    for (l, set) in loads.iter().zip(sets) {
        registry.sets().load_read(l.marker.clone(), l.set, set, snapshot.clone());
    }
    let markers: Vec<&str> = loads.iter().map(|l| l.marker.as_str()).collect();
    emit_markers(&client, &markers).await.map_err(all)?;
    sessions.give_back(client);
    Ok(())
}

async fn run_move(sessions: &Sessions, registry: &Registry, query: MoveQuery) {
    let MoveQuery { marker, shape, id, sql, set_xids } = query;
    // Superseded while it waited for a slot: a later query covers it, or the shape went.
    if !shape.awaits_move_query(id) || shape.log.version().gone {
        tracing::debug!(handle = %shape.handle, move_id = id, "move query skipped: superseded");
        return;
    }
    let read = async {
        let client = sessions.take().await?;
        let snapshot = snapshot_seeing(&client, &set_xids, VISIBLE_WAIT).await?;
        let rows = client.query(sql.as_str(), &[]).await.map_err(DbError::from)?;
        client.batch_execute("commit").await.map_err(DbError::from)?;
        let rows: Vec<MovedRow> = rows
            .iter()
            .map(|row| MovedRow {
                now_in: row.get(0),
                values: (1..row.len()).map(|i| row.get::<_, Option<String>>(i)).collect(),
            })
            .collect();
        let (xmin, xmax, moved) = (snapshot.xmin, snapshot.xmax, rows.len());
        let current = shape.finish_move_query(id, MoveResult { snapshot, rows });
        tracing::debug!(handle = %shape.handle, move_id = id, xmin, xmax, moved, current, "move query read");
        if current {
            emit_markers(&client, &[&marker]).await?;
        }
        sessions.give_back(client);
        Ok::<_, QueryError>(())
    };
    if let Err(e) = read.await {
        tracing::warn!(handle = %shape.handle, error = %e, "a move query failed");
        registry.rotate(&shape, "the query of its moving rows failed");
    }
}

/// Opens a REPEATABLE READ READ ONLY transaction whose snapshot shows every one of `xids`
/// (committed: the stream sent their commits), waiting up to `wait` for them. PostgreSQL
/// streams a commit once its WAL is flushed and shows it to new snapshots a moment later: a
/// move query reading in between would miss the very change it moves (seen in the
/// membership load test: the first move of a run read no rows).
pub async fn snapshot_seeing(client: &Client, xids: &[u32], wait: Duration) -> Result<SnapshotInfo, QueryError> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let snapshot = begin_snapshot(client).await?;
        if xids.iter().all(|x| snapshot.contains(*x)) {
            return Ok(snapshot);
        }
        client.batch_execute("rollback").await.map_err(DbError::from)?;
        if started.elapsed() >= wait {
            return Err(QueryError::NotVisible(xids.to_vec()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Opens a REPEATABLE READ READ ONLY transaction and says what its snapshot contains.
async fn begin_snapshot(client: &Client) -> Result<SnapshotInfo, QueryError> {
    client.batch_execute("begin isolation level repeatable read read only").await.map_err(DbError::from)?;
    let text: String = client.query_one("select pg_current_snapshot()::text", &[]).await.map_err(DbError::from)?.get(0);
    SnapshotInfo::parse(&text).ok_or(QueryError::Snapshot(text))
}

/// Writes position markers, in order (after the snapshot's transaction ended), flushed at
/// once (the session commits synchronously).
///
/// PostgreSQL streams WAL only once it is flushed, and a non-transactional message alone
/// waits for the WAL writer (up to `wal_writer_delay`, 200 ms by default): every set load
/// and move would wait for it. The statement also takes a transaction id, so its implicit
/// transaction commits with a flush (PostgreSQL 17's `flush` argument does the same).
async fn emit_markers(client: &Client, markers: &[&str]) -> Result<(), QueryError> {
    let sql = "select pg_logical_emit_message(false, $1, m), pg_current_xact_id()
               from unnest($2::text[]) with ordinality as t(m, n) order by n";
    client.execute(sql, &[&POSITION_MARKER, &markers]).await.map_err(DbError::from)?;
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
