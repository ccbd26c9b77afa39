//! The mutation ledger: what each `(client_id, mutation id)` did, written in the same
//! transaction as the write itself, so a retried batch finds its first result and writes
//! nothing again. `sql/setup.sql` creates the same objects for a DBA.

use std::collections::HashMap;

use deadpool_postgres::Transaction;

use super::{FirstResult, MutationResult};

/// The gateway's own schema and ledger, created when missing (and when the role may).
pub const SCHEMA_SQL: &str = include_str!("../../../sql/ledger.sql");

/// Creates the ledger when it is missing; the error says what a DBA should run otherwise.
pub async fn ensure(client: &tokio_postgres::Client) -> Result<(), String> {
    let exists: bool = client
        .query_one("select to_regclass('gateway.mutations') is not null", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if exists {
        return Ok(());
    }
    client.batch_execute(SCHEMA_SQL).await.map_err(|e| {
        format!(
            "the outbox ledger gateway.mutations is missing and the gateway may not create it ({}); run sql/setup.sql as a superuser",
            crate::db::DbError::from(e)
        )
    })
}

/// First results of the batch's mutation ids that were applied before.
pub async fn lookup(
    tx: &Transaction<'_>,
    client_id: &str,
    ids: &[&str],
) -> Result<HashMap<String, FirstResult>, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached(
            "select mutation_id, result, txid from gateway.mutations where client_id = $1 and mutation_id = any($2)",
        )
        .await?;
    let rows = tx.query(&stmt, &[&client_id, &ids]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let result: serde_json::Value = r.get(1);
            let result: MutationResult = serde_json::from_value(result).ok()?;
            Some((r.get(0), FirstResult { result, txid: r.get::<_, i64>(2).to_string() }))
        })
        .collect())
}

/// Records the batch's results (one statement for all of them).
pub async fn record(
    tx: &Transaction<'_>,
    client_id: &str,
    txid: i64,
    results: &[&MutationResult],
) -> Result<(), tokio_postgres::Error> {
    if results.is_empty() {
        return Ok(());
    }
    // One JSON array parameter, unpacked by the server: cheaper than a jsonb[] of values.
    let results = serde_json::to_string(results).unwrap_or_else(|_| "[]".into());
    let stmt = tx
        .prepare_cached(
            "insert into gateway.mutations (client_id, mutation_id, result, txid)
             select $1, r->>'id', r, $3 from jsonb_array_elements($2::text::jsonb) as r",
        )
        .await?;
    tx.execute(&stmt, &[&client_id, &results, &txid]).await?;
    Ok(())
}
