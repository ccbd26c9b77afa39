//! The replication slot and the publication: created when missing, checked when present.
//! Tables join the publication on demand, like Electric; tables a DBA published are used as
//! they are.

use shapes::offset::Lsn;
use shapes::table::{TableSchema, quote_ident};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::ReplicationError;
use crate::db::DbError;

fn privilege(what: &str, e: tokio_postgres::Error, fix: String) -> ReplicationError {
    match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => ReplicationError::Privilege {
            what: what.to_string(),
            detail: e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default(),
            fix,
        },
        _ => DbError::from(e).into(),
    }
}

pub async fn ensure_publication(client: &Client, publication: &str) -> Result<(), ReplicationError> {
    let exists = client
        .query_opt("select 1 from pg_publication where pubname = $1", &[&publication])
        .await
        .map_err(DbError::from)?
        .is_some();
    if !exists {
        let sql = format!("create publication {}", quote_ident(publication));
        client.batch_execute(&sql).await.map_err(|e| privilege("create the publication", e, format!("{sql};")))?;
        tracing::info!(publication, "created publication");
    }
    Ok(())
}

/// The slot's confirmed position, and whether it was just created.
#[derive(Clone, Copy, Debug)]
pub struct SlotState {
    pub confirmed: Lsn,
    pub created: bool,
}

/// Creates the slot if missing.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<SlotState, ReplicationError> {
    let row = client
        .query_opt(
            "select plugin::text, database::text = current_database(), confirmed_flush_lsn::text, wal_status
             from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(DbError::from)?;
    match row {
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let same_db: Option<bool> = r.get(1);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Err(ReplicationError::SlotMismatch { slot: slot.into(), plugin: plugin.unwrap_or_default() });
            }
            let status: Option<String> = r.get(3);
            if status.as_deref() == Some("lost") {
                return Err(ReplicationError::SlotInvalidated {
                    slot: slot.into(),
                    detail: "wal_status = lost".into(),
                });
            }
            let lsn: Option<String> = r.get(2);
            Ok(SlotState { confirmed: lsn.and_then(|l| l.parse().ok()).unwrap_or_default(), created: false })
        }
        None => {
            let r = client
                .query_one("select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
                .await
                .map_err(|e| {
                    privilege("create a replication slot", e, "ALTER ROLE <gateway role> WITH REPLICATION;".into())
                })?;
            let lsn: String = r.get(0);
            tracing::info!(slot, %lsn, "created replication slot");
            Ok(SlotState { confirmed: lsn.parse().unwrap_or_default(), created: true })
        }
    }
}

/// Drops our slot, waiting up to `release` for the server to let go of a stream that just
/// stopped. Only ever the slot the gateway is configured with.
pub async fn drop_slot(client: &Client, slot: &str, release: std::time::Duration) -> Result<(), ReplicationError> {
    let deadline = tokio::time::Instant::now() + release;
    loop {
        let result = client
            .execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(privilege(
                    "drop the replication slot",
                    e,
                    format!("SELECT pg_drop_replication_slot('{slot}');"),
                ));
            }
        }
    }
}

/// `gateway slot drop`: drops the configured slot (refusing while a gateway streams from
/// it) and, when asked, the publication. Returns what was done.
pub async fn uninstall(cfg: &crate::config::ServeConfig, with_publication: bool) -> Result<String, ReplicationError> {
    let client = crate::db::connect(&crate::db::parse_url(&cfg.database_url)?).await?;
    let slot = &cfg.slot;
    let active: Option<Option<i32>> = client
        .query_opt("select active_pid from pg_replication_slots where slot_name = $1", &[slot])
        .await
        .map_err(DbError::from)?
        .map(|r| r.get(0));
    let mut done = match active {
        None => format!("no replication slot {slot:?}; nothing to drop"),
        Some(Some(pid)) => return Err(ReplicationError::SlotInUse { slot: slot.clone(), pid }),
        Some(None) => {
            drop_slot(&client, slot, std::time::Duration::ZERO).await?;
            format!("dropped replication slot {slot:?}")
        }
    };
    if with_publication {
        let sql = format!("drop publication if exists {}", quote_ident(&cfg.publication));
        client.batch_execute(&sql).await.map_err(|e| privilege("drop the publication", e, format!("{sql};")))?;
        done.push_str(&format!("; dropped publication {:?}", cfg.publication));
    }
    Ok(done)
}

/// Makes sure changes of `table` reach the stream, and that the stream carries old rows
/// when `needs_old_rows`. Returns `true` when it changed the table or the publication.
pub async fn ensure_published(
    client: &Client,
    publication: &str,
    table: &TableSchema,
    needs_old_rows: bool,
) -> Result<bool, ReplicationError> {
    let published = client
        .query_opt(
            "select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3",
            &[&publication, &table.name.schema, &table.name.name],
        )
        .await
        .map_err(DbError::from)?
        .is_some();
    let mut changed = false;
    if !published {
        // Like Electric, tables we publish get full replica identity, so updates carry old rows.
        let sql = format!(
            "alter table {t} replica identity full; alter publication {p} add table {t}",
            t = table.name.quoted(),
            p = quote_ident(publication)
        );
        if let Err(e) = client.batch_execute(&format!("begin; {sql}; commit")).await {
            let _ = client.batch_execute("rollback").await;
            return Err(privilege(&format!("publish table {}", table.name), e, format!("{sql};")));
        }
        tracing::info!(table = %table.name, publication, "added table to publication");
        changed = true;
    } else if needs_old_rows && !table.replica_identity_full {
        let sql = format!("alter table {} replica identity full", table.name.quoted());
        client.batch_execute(&sql).await.map_err(|e| {
            privilege(
                &format!(
                    "set REPLICA IDENTITY FULL on {} (filtered shapes need old rows to see rows leave the filter)",
                    table.name
                ),
                e,
                format!("{sql};"),
            )
        })?;
        tracing::info!(table = %table.name, "set replica identity full");
        changed = true;
    }
    Ok(changed)
}
