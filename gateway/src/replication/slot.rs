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
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => ReplicationError::TableBusy(what.to_string()),
        _ => DbError::from(e).into(),
    }
}

/// How long changing a table for the stream waits for its lock: a session holding it (a
/// long transaction, a migration) must not stall every new shape behind this one.
const ALTER_LOCK_TIMEOUT: &str = "5s";

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

/// What the server says about a slot (`pg_replication_slots`).
#[derive(Clone, Debug)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    /// Whether it belongs to the connected database.
    pub same_database: bool,
    pub wal_status: Option<String>,
    /// The process streaming from it, if any.
    pub active_pid: Option<i32>,
    pub confirmed: Lsn,
    /// The server's current WAL position.
    pub current: Lsn,
    /// WAL the server keeps for it (current position − restart_lsn).
    pub retained_wal_bytes: i64,
    /// WAL left before it is invalidated (`max_slot_wal_keep_size` set).
    pub safe_wal_bytes: Option<i64>,
}

impl SlotInfo {
    /// A pgoutput slot of this database, as the gateway creates them.
    pub fn is_ours(&self) -> bool {
        self.plugin.as_deref() == Some("pgoutput") && self.same_database
    }

    /// Its WAL was removed: the changes it held are gone.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// The slot named `slot`, if it exists.
pub async fn describe(client: &Client, slot: &str) -> Result<Option<SlotInfo>, DbError> {
    let row = client
        .query_opt(
            "select plugin::text, database::text = current_database(), wal_status, active_pid,
                    confirmed_flush_lsn::text, pg_current_wal_lsn()::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, safe_wal_size
             from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?;
    let lsn = |text: Option<String>| text.and_then(|l| l.parse().ok()).unwrap_or_default();
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        same_database: r.get::<_, Option<bool>>(1) == Some(true),
        wal_status: r.get(2),
        active_pid: r.get(3),
        confirmed: lsn(r.get(4)),
        current: lsn(r.get(5)),
        retained_wal_bytes: r.get::<_, Option<i64>>(6).unwrap_or(0),
        safe_wal_bytes: r.get(7),
    }))
}

/// Creates the slot if missing.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<SlotState, ReplicationError> {
    match describe(client, slot).await? {
        Some(info) => {
            if !info.is_ours() {
                return Err(ReplicationError::SlotMismatch {
                    slot: slot.into(),
                    plugin: info.plugin.unwrap_or_default(),
                });
            }
            if info.is_lost() {
                return Err(ReplicationError::SlotInvalidated {
                    slot: slot.into(),
                    detail: "wal_status = lost".into(),
                });
            }
            Ok(SlotState { confirmed: info.confirmed, created: false })
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
/// it after waiting up to `wait` for it to stop) and, when asked, the publication. Returns
/// what was done.
pub async fn uninstall(
    cfg: &crate::config::ServeConfig,
    with_publication: bool,
    wait: std::time::Duration,
) -> Result<String, ReplicationError> {
    let client = crate::db::connect(&crate::db::parse_url(&cfg.database_url)?).await?;
    let slot = &cfg.slot;
    let deadline = tokio::time::Instant::now() + wait;
    let mut active = describe(&client, slot).await?.map(|info| info.active_pid);
    while matches!(active, Some(Some(_))) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        active = describe(&client, slot).await?.map(|info| info.active_pid);
    }
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
        // One query string is one implicit transaction: both or neither, and the session is
        // never left inside a transaction, even when this request is cancelled mid-way.
        let batch = format!("set local lock_timeout = '{ALTER_LOCK_TIMEOUT}'; {sql}");
        if let Err(e) = client.batch_execute(&batch).await {
            return Err(match e.code() {
                Some(c) if *c == SqlState::UNDEFINED_TABLE => ReplicationError::TableGone(table.name.quoted()),
                _ => privilege(&format!("publish table {}", table.name), e, format!("{sql};")),
            });
        }
        tracing::info!(table = %table.name, publication, "added table to publication");
        changed = true;
    } else if needs_old_rows && !table.replica_identity_full {
        let sql = format!("alter table {} replica identity full", table.name.quoted());
        let batch = format!("set local lock_timeout = '{ALTER_LOCK_TIMEOUT}'; {sql}");
        client.batch_execute(&batch).await.map_err(|e| {
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
