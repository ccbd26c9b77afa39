//! The mutation ledger: what each `(client_id, mutation id)` did, written in the same
//! transaction as the write itself, so a retried batch finds its first result and writes
//! nothing again. `sql/setup.sql` creates the same objects for a DBA.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

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
    tx: &impl GenericClient,
    client_id: &str,
    ids: &[&str],
) -> Result<HashMap<String, FirstResult>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "select mutation_id, result, txid from gateway.mutations where client_id = $1 and mutation_id = any($2)",
            &[&client_id, &ids],
        )
        .await?;
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
    tx: &impl GenericClient,
    client_id: &str,
    txid: i64,
    results: &[&MutationResult],
) -> Result<(), tokio_postgres::Error> {
    if results.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    let values: Vec<serde_json::Value> = results.iter().map(|r| serde_json::to_value(r).unwrap_or_default()).collect();
    tx.execute(
        "insert into gateway.mutations (client_id, mutation_id, result, txid)
         select $1, id, result, $4 from unnest($2::text[], $3::jsonb[]) as m(id, result)",
        &[&client_id, &ids, &values, &txid],
    )
    .await?;
    Ok(())
}
