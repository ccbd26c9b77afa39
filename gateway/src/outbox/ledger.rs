//! The outbox ledger: per (token subject, client id), the last mutation id applied, that
//! batch's transaction id and its results. It is read and locked at the start of a batch's
//! transaction and written in the same transaction as the writes, so a retried batch finds
//! its mutations already applied and writes nothing again. Another subject's client id is
//! another row: nothing is shared between callers. `sql/setup.sql` creates the same objects
//! for a DBA.

use deadpool_postgres::Transaction;

use super::MutationResult;

/// The gateway's own schema and ledger, created when missing (and when the role may).
pub const SCHEMA_SQL: &str = include_str!("../../../sql/ledger.sql");

/// Creates the ledger when it is missing; the error says what a DBA should run otherwise.
pub async fn ensure(client: &tokio_postgres::Client) -> Result<(), String> {
    let exists: bool = client
        .query_one("select to_regclass('gateway.clients') is not null", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if exists {
        return Ok(());
    }
    client.batch_execute(SCHEMA_SQL).await.map_err(|e| {
        format!(
            "the outbox ledger gateway.clients is missing and the gateway may not create it ({}); run sql/setup.sql as a superuser",
            crate::db::DbError::from(e)
        )
    })
}

/// A client's row: how far its mutations were applied.
#[derive(Debug)]
pub struct ClientLedger {
    /// The last mutation id applied (0: none yet).
    pub last_id: u64,
    /// The transaction of the last batch that applied something.
    pub last_txid: Option<i64>,
    /// That batch's results, for duplicates of its mutations.
    pub last_results: Vec<MutationResult>,
}

/// Reads the client's row, creating it when new, and locks it until the transaction ends:
/// two pushes of one client are applied one after the other.
pub async fn open(tx: &Transaction<'_>, subject: &str, client_id: &str) -> Result<ClientLedger, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "insert into gateway.clients as c (subject, client_id) values ($1, $2)
             on conflict (subject, client_id) do update set subject = c.subject
             returning c.last_mutation_id, c.last_txid, c.last_results",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&subject, &client_id]).await?;
    let last_results: serde_json::Value = row.get(2);
    Ok(ClientLedger {
        last_id: row.get::<_, i64>(0).max(0) as u64,
        last_txid: row.get(1),
        // Written by the gateway itself; an unreadable one only loses duplicates' details.
        last_results: serde_json::from_value(last_results).unwrap_or_default(),
    })
}

/// Records a batch: its last mutation id, its transaction and its results.
pub async fn record(
    tx: &Transaction<'_>,
    subject: &str,
    client_id: &str,
    last_id: u64,
    txid: Option<i64>,
    results: &[&MutationResult],
) -> Result<(), tokio_postgres::Error> {
    let results = serde_json::to_string(results).unwrap_or_else(|_| "[]".into());
    let stmt = tx
        .prepare_cached(
            "update gateway.clients
             set last_mutation_id = $3, last_txid = $4, last_results = $5::text::jsonb, updated_at = now()
             where subject = $1 and client_id = $2",
        )
        .await?;
    tx.execute(&stmt, &[&subject, &client_id, &(last_id as i64), &txid, &results]).await?;
    Ok(())
}
