//! The pgoutput stream: connects with the transport crate (the only module that names it),
//! decodes messages, hands whole transactions to the fan-out and reports the durable
//! position back. Reconnects with capped backoff; fatal errors end the task.
//!
//! One gateway streams from a slot at a time: its replication session holds an advisory
//! lock ([`Candidate::try_lock`]) before it starts, so the lock ends with the session (a killed
//! gateway's lock goes when PostgreSQL sees its connection close) and standbys take it
//! over. A reconnecting session must take the lock again; if another gateway has it, this
//! one lost the slot ([`ReplicationError::LostLeadership`]).

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use shapes::change::Txn;
use shapes::offset::Lsn;
use tokio_util::sync::CancellationToken;

use super::ReplicationError;
use super::decode::decode;
use super::queue;
use super::txn::{Decoded, TxnAssembler};
use crate::db::SESSION_OPTIONS;
use crate::progress::AckState;
use crate::status::Status;

/// The prefix of the logical messages the gateway writes to learn when the stream has
/// passed a point (see `shapes::change::TxnItem::Marker`).
pub const POSITION_MARKER: &str = "gateway.position";

/// Where and what to stream.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub db: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
    /// Transactions up to this many bytes are held whole; larger ones go in parts.
    pub part_bytes: usize,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// How often acknowledged positions are reported to PostgreSQL.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// A replication session that has not started streaming: it may take the slot's leader
/// lock, and keeps its place while another gateway holds it.
pub struct Candidate {
    client: ReplicationClient,
    lock_sql: String,
}

/// A session that holds the leader lock: this gateway streams from the slot.
pub struct Leadership {
    client: ReplicationClient,
}

impl Candidate {
    /// A session that will start at `start` and report `ack` until told more; `Lsn(0)`
    /// for both starts where the slot's confirmed position is when it starts.
    pub async fn connect(settings: &StreamSettings, start: Lsn, ack: Lsn) -> Result<Candidate, ReplicationError> {
        let config = transport_config(settings, start).with_ack_lsn(pgwire_replication::Lsn(ack.0));
        let client = ReplicationClient::connect_gated(config).await.map_err(|e| classify(e, settings))?;
        let key = format!("gateway slot {}", settings.slot).replace('\'', "''");
        Ok(Candidate { client, lock_sql: format!("select pg_try_advisory_lock(hashtextextended('{key}', 0))") })
    }

    /// Connects a session ([`Candidate::connect`]) and tries the lock at once.
    pub async fn lock(
        settings: &StreamSettings,
        start: Lsn,
        ack: Lsn,
    ) -> Result<Result<Leadership, Candidate>, ReplicationError> {
        Candidate::connect(settings, start, ack).await?.try_lock().await
    }

    /// Takes the leader lock if no other session holds it.
    pub async fn try_lock(mut self) -> Result<Result<Leadership, Candidate>, ReplicationError> {
        let rows =
            self.client.simple_query(&self.lock_sql).await.map_err(|e| ReplicationError::Transport(e.to_string()))?;
        let locked = rows.first().and_then(|row| row.first()).and_then(|v| v.as_deref()) == Some(b"t".as_slice());
        Ok(if locked { Ok(Leadership { client: self.client }) } else { Err(self) })
    }
}

/// Streams from the slot, starting with the session `leadership` holds, until cancelled
/// or a fatal error.
pub async fn run(
    settings: StreamSettings,
    leadership: Leadership,
    txns: queue::Sender,
    ack: Arc<AckState>,
    status: Arc<Status>,
    cancel: CancellationToken,
) -> Result<(), ReplicationError> {
    let mut backoff = BACKOFF_MIN;
    let mut held = Some(leadership);
    loop {
        let result = match held.take() {
            Some(leadership) => Ok(leadership),
            None => {
                // Resume where the logs end; report only what the data dir recorded.
                Candidate::lock(&settings, ack.durable(), ack.acknowledgeable()).await.and_then(|locked| {
                    locked.map_err(|_| ReplicationError::LostLeadership { slot: settings.slot.clone() })
                })
            }
        };
        let result = match result {
            Ok(leadership) => session(leadership, &settings, &txns, &ack, &status, &cancel, &mut backoff).await,
            Err(e) => Err(e),
        };
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
    leadership: Leadership,
    settings: &StreamSettings,
    txns: &queue::Sender,
    ack: &AckState,
    status: &Status,
    cancel: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), ReplicationError> {
    let mut client = leadership.client;
    client.start().await.map_err(|e| classify(e, settings))?;
    client.wait_started().await.map_err(|e| classify(e, settings))?;
    // A session started at the slot's position reports 0 until told otherwise.
    client.update_applied_lsn(pgwire_replication::Lsn(ack.acknowledgeable().0));
    tracing::info!(slot = %settings.slot, durable = %ack.durable(), "replication streaming");
    status.set_replication(true, None);
    *backoff = BACKOFF_MIN;
    let mut acknowledgeable = ack.subscribe_acknowledgeable();
    let mut assembler = TxnAssembler::new(settings.part_bytes);
    // Parts of a transaction this session passed on are void if it ends before the commit.
    let abandon = async |assembler: &mut TxnAssembler| match assembler.reset() {
        Some(abandoned) => txns.send(abandoned, 0).await.is_ok(),
        None => true,
    };
    loop {
        tokio::select! {
            biased;
            // 1. Shutdown: report the final position, then stop.
            _ = cancel.cancelled() => {
                report_final_position(&client, ack.acknowledgeable()).await;
                let _ = client.shutdown().await;
                return Ok(());
            }
            // 2. More is durable and recorded: acknowledge it.
            Ok(()) = acknowledgeable.changed() => {
                let lsn = *acknowledgeable.borrow_and_update();
                client.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
            }
            // 3. The next stream event.
            event = client.recv() => {
                let event = match event.map_err(|e| classify(e, settings)) {
                    Ok(Some(event)) => event,
                    ended => {
                        abandon(&mut assembler).await;
                        ended?;
                        return Err(ReplicationError::Transport("the server ended the stream".into()));
                    }
                };
                match event {
                    ReplicationEvent::Begin { xid, final_lsn, .. } => {
                        if let Some(abandoned) = assembler.begin(xid, Lsn(final_lsn.0)) && txns.send(abandoned, 0).await.is_err() {
                            return Ok(());
                        }
                    }
                    ReplicationEvent::XLogData { data, .. } => {
                        metrics::counter!("gateway_replication_bytes_total").increment(data.len() as u64);
                        ack.note_received(data.len());
                        let len = data.len();
                        let message = decode(data).inspect_err(|_| {
                            metrics::counter!("gateway_replication_decode_errors_total").increment(1);
                        })?;
                        if let Some((part, bytes)) = assembler.push(message, len)? {
                            metrics::counter!("gateway_replication_txn_parts_total").increment(1);
                            // Full queue: stop reading WAL until the fan-out catches up.
                            if txns.send(part, bytes).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                        let (txn, count, bytes) = assembler.commit(Lsn(end_lsn.0))?;
                        status.note_commit(commit_time_micros, count);
                        ack.note_enqueued(Lsn(end_lsn.0));
                        if txns.send(txn, bytes).await.is_err() {
                            return Ok(());
                        }
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        ack.note_idle_position(Lsn(wal_end.0), !assembler.is_open());
                    }
                    ReplicationEvent::Message { transactional: false, lsn, prefix, content }
                        if prefix == POSITION_MARKER && !assembler.is_open() =>
                    {
                        let content = String::from_utf8_lossy(&content).into_owned();
                        let bytes = content.len();
                        if txns.send(Decoded::Whole(Txn::marker(Lsn(lsn.0), content)), bytes).await.is_err() {
                            return Ok(());
                        }
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::StoppedAt { .. } => return Ok(()),
                }
            }
        }
    }
}
