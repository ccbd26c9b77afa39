//! The pgoutput stream: connects with the transport crate (the only module that names it),
//! decodes messages, hands whole transactions to the fan-out and reports the durable
//! position back. Reconnects with capped backoff; fatal errors end the task.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use shapes::change::Txn;
use shapes::offset::Lsn;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ReplicationError;
use super::decode::decode;
use super::txn::TxnAssembler;
use crate::db::SESSION_OPTIONS;
use crate::fanout::ack::AckState;
use crate::status::Status;

/// Where and what to stream.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub db: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// How often acknowledged positions are reported to PostgreSQL.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Runs until cancelled or a fatal error.
pub async fn run(
    settings: StreamSettings,
    txns: mpsc::Sender<Txn>,
    ack: Arc<AckState>,
    status: Arc<Status>,
    cancel: CancellationToken,
) -> Result<(), ReplicationError> {
    let mut backoff = BACKOFF_MIN;
    loop {
        let result = session(&settings, &txns, &ack, &status, &cancel, &mut backoff).await;
        status.set_replication(false, result.as_ref().err().map(|e| e.to_string()));
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication disconnected; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

fn transport_config(settings: &StreamSettings, start: Lsn) -> ReplicationConfig {
    let db = &settings.db;
    let host = crate::db::host(db);
    let password = db.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    ReplicationConfig::new(
        host,
        db.get_user().unwrap_or("postgres"),
        password,
        db.get_dbname().unwrap_or("postgres"),
        settings.slot.clone(),
        settings.publication.clone(),
    )
    .with_port(db.get_ports().first().copied().unwrap_or(5432))
    .with_start_lsn(pgwire_replication::Lsn(start.0))
    .with_options(SESSION_OPTIONS)
    .with_application_name(format!("gateway:{}", settings.slot))
    .with_status_interval(STATUS_INTERVAL)
    .with_buffer_size(8192)
}

fn classify(e: PgWireError, settings: &StreamSettings) -> ReplicationError {
    match &e {
        PgWireError::Server(msg) => {
            let m = msg.to_lowercase();
            if m.contains("publication") && m.contains("does not exist") {
                ReplicationError::PublicationDropped(settings.publication.clone())
            } else if m.contains("replication slot")
                && (m.contains("does not exist") || m.contains("invalidated") || m.contains("can no longer"))
            {
                ReplicationError::SlotInvalidated { slot: settings.slot.clone(), detail: msg.clone() }
            } else if m.contains("wal_level") {
                ReplicationError::WalLevel(msg.clone())
            } else {
                ReplicationError::Transport(e.to_string())
            }
        }
        PgWireError::Auth(_) | PgWireError::Tls(_) | PgWireError::MessageTooLarge { .. } => {
            ReplicationError::Privilege {
                what: "open a replication connection".into(),
                detail: e.to_string(),
                fix: "check the credentials in --database-url and that the role has REPLICATION".into(),
            }
        }
        _ => ReplicationError::Transport(e.to_string()),
    }
}

/// Acknowledges `durable` and waits (bounded) until a status update carried it, since
/// stopping the stream does not send one.
async fn report_final_position(client: &ReplicationClient, durable: Lsn) {
    client.update_applied_lsn(pgwire_replication::Lsn(durable.0));
    let metrics = client.metrics();
    let deadline = tokio::time::Instant::now() + STATUS_INTERVAL * 4;
    while metrics.last_applied_lsn().0 < durable.0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if metrics.last_applied_lsn().0 < durable.0 {
        tracing::warn!(%durable, "could not report the final position; PostgreSQL will resend from the last one");
    }
}

async fn session(
    settings: &StreamSettings,
    txns: &mpsc::Sender<Txn>,
    ack: &AckState,
    status: &Status,
    cancel: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), ReplicationError> {
    let start = ack.durable();
    let mut client =
        ReplicationClient::connect(transport_config(settings, start)).await.map_err(|e| classify(e, settings))?;
    client.wait_started().await.map_err(|e| classify(e, settings))?;
    tracing::info!(slot = %settings.slot, start = %start, "replication streaming");
    status.set_replication(true, None);
    *backoff = BACKOFF_MIN;
    let mut durable = ack.subscribe();
    let mut assembler = TxnAssembler::default();
    loop {
        tokio::select! {
            biased;
            // 1. Shutdown: report the final durable position, then stop.
            _ = cancel.cancelled() => {
                report_final_position(&client, ack.durable()).await;
                let _ = client.shutdown().await;
                return Ok(());
            }
            // 2. The fan-out made more durable: acknowledge it.
            Ok(()) = durable.changed() => {
                let lsn = *durable.borrow_and_update();
                client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
            }
            // 3. The next stream event.
            event = client.recv() => {
                let Some(event) = event.map_err(|e| classify(e, settings))? else {
                    return Err(ReplicationError::Transport("the server ended the stream".into()));
                };
                match event {
                    ReplicationEvent::Begin { xid, .. } => assembler.begin(xid),
                    ReplicationEvent::XLogData { data, .. } => {
                        metrics::counter!("gateway_replication_bytes_total").increment(data.len() as u64);
                        let message = decode(data).inspect_err(|_| {
                            metrics::counter!("gateway_replication_decode_errors_total").increment(1);
                        })?;
                        assembler.push(message)?;
                    }
                    ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                        let txn = assembler.commit(Lsn(lsn.0), Lsn(end_lsn.0))?;
                        status.note_commit(commit_time_micros, txn.items.len());
                        ack.note_enqueued(txn.end_lsn);
                        // Full channel: stop reading WAL until the fan-out catches up.
                        if txns.send(txn).await.is_err() {
                            return Ok(());
                        }
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        ack.note_idle_position(Lsn(wal_end.0), !assembler.is_open());
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::StoppedAt { .. } => return Ok(()),
                }
            }
        }
    }
}
