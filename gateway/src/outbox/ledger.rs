//! The outbox ledger: per (token subject, client id), the last mutation id applied, that
//! batch's transaction id and its results. It is read and locked at the start of a batch's
//! transaction and written in the same transaction as the writes, so a retried batch finds
//! its mutations already applied and writes nothing again. Another subject's client id is
//! another row: nothing is shared between callers. `sql/setup.sql` creates the same objects
//! for a DBA.

use deadpool_postgres::ClientWrapper;

use super::plan::Statement;
use super::{FirstResult, MutationResult, Status};

/// The gateway's own schema and ledger, created when missing (and when the role may).
pub const SCHEMA_SQL: &str = include_str!("../../../sql/ledger.sql");

/// Creates the ledger, or adds what an older gateway's ledger lacks; the error says what a
/// DBA should run when the role may not.
pub async fn ensure(client: &tokio_postgres::Client) -> Result<(), String> {
    let current: bool = client
        .query_one(
            "select exists (select 1 from pg_attribute
              where attrelid = to_regclass('gateway.clients') and attname = 'last_batch_from' and not attisdropped)
              and to_regprocedure('gateway.assert_in_scope(boolean)') is not null",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if current {
        return Ok(());
    }
    client.batch_execute(SCHEMA_SQL).await.map_err(|e| {
        format!(
            "the outbox ledger gateway.clients is missing or older than this gateway, and the gateway may not change it ({}); run sql/setup.sql as a superuser",
            crate::db::DbError::from(e)
        )
    })
}

/// The running transaction's id as the stream's `headers.txids` shows it (a 32-bit xid).
macro_rules! txid {
    () => {
        "pg_current_xact_id()::text::bigint % 4294967296"
    };
}

/// A client's row: how far its mutations were applied.
#[derive(Debug)]
pub struct ClientLedger {
    /// The last mutation id applied (0: none yet).
    pub last_id: u64,
    /// The transaction of the last batch that applied something.
    last_txid: Option<i64>,
    /// The first id of the last batch (absent in rows written by older gateways).
    last_batch_from: Option<u64>,
    /// That batch's results other than `applied`; read only when the pushed batch repeats ids.
    last_results: Vec<MutationResult>,
}

impl ClientLedger {
    /// The first result of mutation `id`, already applied, when it was in the client's last
    /// batch: stored when it was anything but `applied`, otherwise implied by the batch's range.
    pub fn first_result(&self, id: u64) -> Option<FirstResult> {
        let txid = self.last_txid.map(|t| t.to_string());
        if let Some(r) = self.last_results.iter().find(|r| r.id == id) {
            return Some(FirstResult { result: r.clone(), txid });
        }
        let from = self.last_batch_from?;
        (from..=self.last_id)
            .contains(&id)
            .then(|| FirstResult { result: MutationResult::new(id, Status::Applied), txid })
    }
}

/// Reads the client's row, creating it when new, and locks it until the transaction ends:
/// two pushes of one client are applied one after the other. The last batch's results are
/// read only when the pushed batch, starting at `first_id`, repeats some of its ids. Also
/// returns the transaction's id, as the stream shows it.
pub async fn open(
    tx: &ClientWrapper,
    subject: &str,
    client_id: &str,
    first_id: u64,
) -> Result<(ClientLedger, i64), tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(concat!(
            "insert into gateway.clients as c (subject, client_id) values ($1, $2)
             on conflict (subject, client_id) do update set subject = c.subject
             returning c.last_mutation_id, c.last_txid, c.last_batch_from,
                       case when $3 <= c.last_mutation_id then c.last_results end, ",
            txid!()
        ))
        .await?;
    let row = tx.query_one(&stmt, &[&subject, &client_id, &(first_id.min(i64::MAX as u64) as i64)]).await?;
    let last_results: Option<serde_json::Value> = row.get(3);
    let ledger = ClientLedger {
        last_id: row.get::<_, i64>(0).max(0) as u64,
        last_txid: row.get(1),
        last_batch_from: row.get::<_, Option<i64>>(2).map(|f| f.max(0) as u64),
        // Written by the gateway itself; an unreadable one only loses duplicates' details.
        last_results: last_results.and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default(),
    };
    Ok((ledger, row.get(4)))
}

/// Records a batch: its first and last mutation ids, its transaction and the results of its
/// mutations that were not simply applied.
pub async fn record(
    tx: &ClientWrapper,
    subject: &str,
    client_id: &str,
    ids: (u64, u64),
    txid: Option<i64>,
    results: &[MutationResult],
) -> Result<(), tokio_postgres::Error> {
    let notable: Vec<&MutationResult> = results.iter().filter(|r| r.status != Status::Applied).collect();
    let notable = serde_json::to_string(&notable).unwrap_or_else(|_| "[]".into());
    let stmt = tx
        .prepare_cached(
            "update gateway.clients
             set last_batch_from = $3, last_mutation_id = $4, last_txid = $5, last_results = $6::text::jsonb,
                 updated_at = now()
             where subject = $1 and client_id = $2",
        )
        .await?;
    let (from, last) = (ids.0 as i64, ids.1 as i64);
    tx.execute(&stmt, &[&subject, &client_id, &from, &last, &txid, &notable]).await?;
    Ok(())
}

/// The ledger's claim on a batch's ids `(first, last)`, as a condition for [`claiming`]'s
/// writes to name.
pub const CLAIMED: &str = "EXISTS (SELECT FROM claim)";

/// `writes` (guarded by [`CLAIMED`]) and the ledger's claim on the batch's ids as one
/// statement, so PostgreSQL applies both in one round trip and one implicit transaction:
/// the client's row moves to the batch only when its last id is the one just before
/// (a retried or out-of-order batch claims nothing and so writes nothing), and every write
/// is then in the ledger as applied. One row comes back: the transaction's id, NULL when
/// nothing was claimed.
pub fn claiming(writes: Statement, subject: &str, client_id: &str, ids: (u64, u64)) -> Statement {
    let mut params = writes.params;
    let mut param = |v: String| {
        params.push(Some(v));
        format!("${}::text", params.len())
    };
    let (from, last) = (param(ids.0.to_string()), param(ids.1.to_string()));
    let (subject, client_id) = (param(subject.to_string()), param(client_id.to_string()));
    let sql = format!(
        "WITH claim AS (
           UPDATE gateway.clients
           SET last_batch_from = CAST({from} AS int8), last_mutation_id = CAST({last} AS int8),
               last_txid = {txid}, last_results = '[]', updated_at = now()
           WHERE subject = {subject} AND client_id = {client_id} AND last_mutation_id = CAST({from} AS int8) - 1
           RETURNING last_txid),
         written AS ({})
         SELECT (SELECT last_txid FROM claim)",
        writes.sql,
        txid = txid!()
    );
    Statement { sql, params }
}
