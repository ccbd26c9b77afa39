//! Initial snapshots: the rows of a new shape, consistent with the stream.
//!
//! The shape is registered before the snapshot starts, so every stream transaction from then
//! on reaches it; the snapshot runs in a REPEATABLE READ transaction whose
//! `pg_current_snapshot()` tells which of those transactions it already contains. Rows are
//! read with `COPY … TO STDOUT` (text output, the same text pgoutput sends, so values need
//! no conversion) and stored as ready-to-serve messages in chunks. Sessions are pooled
//! ([`sessions`]), their COPY output arrives in a message per read rather than per row
//! ([`copy_frames`]) and, in a long COPY, wakes the gateway per 128 KiB rather than per
//! write ([`read_pacing`]), and snapshots that end together are made durable together
//! ([`completion`]).

pub mod completion;
mod copy_frames;
mod copy_text;
mod read_pacing;
pub mod sessions;

use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use shapes::log::SnapshotRows;
use shapes::offset::Lsn;
use shapes::shape::LogMode;
use shapes::subset::Subset;
use shapes::table::quote_ident;
use shapes::where_clause::Expr;
use shapes::wire::{add_tags, mark_snapshot, subset_metadata};
use tokio_postgres::Config;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use self::completion::Completions;
use self::copy_text::for_each_copy_line;
use self::sessions::Sessions;
use crate::db::{self, DbError};
use crate::fanout::live_shape::{LiveShape, ShapeFailure, SnapshotInfo, Unservable};
use crate::fanout::registry::Registry;

/// What new shapes' snapshots share: the pooled sessions and the group commit.
pub struct Snapshots {
    sessions: Sessions,
    completions: Completions,
}

impl Snapshots {
    /// At most `sessions` sessions, one per concurrent snapshot.
    pub fn new(db: &Config, sessions: usize) -> Result<Snapshots, DbError> {
        Ok(Snapshots { sessions: Sessions::new(db, sessions)?, completions: Completions::default() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("snapshot storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected snapshot output: {0}")]
    Format(String),
    /// The stream after the snapshot cannot be served (the shape is rotated, not failed).
    #[error("{0}")]
    Unservable(String),
    #[error("the subset is larger than {} MiB; page it with limit, offset and order_by", MAX_SUBSET_BYTES >> 20)]
    SubsetTooLarge,
    /// A table changed (dropped, created again, a column dropped) since the shape was bound
    /// from the cached catalog: the shape goes and is made again from a fresh read.
    #[error("{0} changed since the shape was made; retry")]
    CatalogChanged(String),
}

impl SnapshotError {
    /// The query failed because of what the client asked (a bad value, an impossible cast),
    /// not because of the gateway or the database.
    pub fn is_client_error(&self) -> bool {
        matches!(self, SnapshotError::SubsetTooLarge)
            || matches!(self, SnapshotError::Db(DbError::Query(q)) if q.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("42")) && !self.is_catalog_change())
    }

    /// A column or table the shape was bound with is gone: the catalog changed under it.
    fn is_catalog_change(&self) -> bool {
        matches!(self, SnapshotError::CatalogChanged(_))
            || matches!(self, SnapshotError::Db(DbError::Query(q)) if q.code().is_some_and(|c| *c == SqlState::UNDEFINED_COLUMN || *c == SqlState::UNDEFINED_TABLE))
    }

    /// What the client is told: a reason of ours, never PostgreSQL's text (which can quote
    /// row values); the log keeps the full error.
    pub fn client_message(&self) -> String {
        match self {
            SnapshotError::Db(DbError::Query(q)) if self.is_client_error() => {
                format!("evaluating the filter failed: {}", crate::db::client_reason(q, |_| false))
            }
            SnapshotError::SubsetTooLarge => self.to_string(),
            // Not which table: it may be one a rule's subquery reads, never the caller's to see.
            SnapshotError::CatalogChanged(_) => "a table the shape reads changed since it was made; retry".into(),
            _ => "the snapshot query failed; retry (the gateway log has the cause)".into(),
        }
    }
}

impl From<String> for SnapshotError {
    fn from(why: String) -> SnapshotError {
        SnapshotError::Format(why)
    }
}

/// Largest subset response kept in memory.
const MAX_SUBSET_BYTES: usize = 64 << 20;

/// Runs a shape's snapshot to completion; on failure the shape is rotated and waiting
/// requests learn why. `slot` (its place among concurrent snapshots) is held while the
/// query runs: making the result durable does not load the database.
pub async fn run(snapshots: Arc<Snapshots>, registry: Arc<Registry>, shape: Arc<LiveShape>, slot: impl Send) {
    let started = std::time::Instant::now();
    match snapshot(&snapshots, &registry, &shape, slot).await {
        Ok(rows) => {
            // Logged before readers see it: whoever was served it finds the line.
            tracing::info!(handle = %shape.handle, table = %shape.shape.table.name, rows, ms = started.elapsed().as_millis() as u64, "snapshot complete");
            shape.log.publish_snapshot();
        }
        Err(SnapshotError::Unservable(why)) => registry.rotate(&shape, &why),
        // Rotated meanwhile (DELETE, DDL): its files went with it, and waiting requests
        // already learn that it is gone.
        Err(e) if shape.log.version().gone => {
            tracing::debug!(handle = %shape.handle, error = %e, "snapshot ended by its shape's rotation")
        }
        Err(e) => {
            let client_error = e.is_client_error();
            tracing::warn!(handle = %shape.handle, error = %e, "snapshot failed");
            if e.is_catalog_change() {
                shape.tables().for_each(|t| registry.forget_schema(&t.name));
            }
            shape.fail(ShapeFailure { client_error, message: e.client_message() });
            registry.rotate(&shape, "its snapshot failed");
        }
    }
}

/// COPY output is handed to the encoder in blocks of about this size (each wakes the
/// encoder's thread, which on a busy machine takes a core from PostgreSQL's COPY).
const BLOCK: usize = 256 * 1024;

async fn snapshot(
    snapshots: &Snapshots,
    registry: &Registry,
    shape: &Arc<LiveShape>,
    slot: impl Send,
) -> Result<u64, SnapshotError> {
    let session = snapshots.sessions.get().await?;
    let client = session.client()?;
    let abandoned = snapshots.sessions.cancel_on_drop(client);
    // The shape may be bound from the cached catalog: its tables must still be the ones it
    // was bound with (a table dropped and made again has another oid), and its table's
    // columns of the types it was bound with (`ALTER … TYPE` streams no Relation message
    // until a row changes; the encoder skips JSON escapes for types that never need them).
    // Sent together with the BEGIN, in one round trip.
    let names: Vec<String> = shape.tables().map(|t| t.name.quoted()).collect();
    let table = &shape.shape.table;
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let quoted = table.name.quoted();
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] =
        [(&names, Type::TEXT_ARRAY), (&quoted, Type::TEXT), (&columns, Type::TEXT_ARRAY)];
    let (begun, rows) = tokio::join!(
        client.batch_execute("begin isolation level repeatable read read only"),
        client.query_typed(
            "select pg_current_snapshot()::text, \
             array(select coalesce(to_regclass(n)::oid, 0) from unnest($1::text[]) n), \
             array(select coalesce(a.atttypid, 0) from unnest($3::text[]) with ordinality c(name, i) \
                   left join pg_attribute a on a.attrelid = to_regclass($2)::oid and a.attname = c.name \
                   and not a.attisdropped order by c.i)",
            &params,
        )
    );
    begun.map_err(DbError::from)?;
    let row = rows
        .map_err(DbError::from)?
        .into_iter()
        .next()
        .ok_or_else(|| SnapshotError::Format("no snapshot row".into()))?;
    let (text, oids, types): (String, Vec<u32>, Vec<u32>) = (row.get(0), row.get(1), row.get(2));
    if let Some(changed) = shape.tables().zip(&oids).find(|(t, oid)| t.oid != **oid) {
        return Err(SnapshotError::CatalogChanged(changed.0.name.quoted()));
    }
    if table.columns.iter().zip(&types).any(|(c, ty)| c.type_oid != *ty) {
        return Err(SnapshotError::CatalogChanged(quoted));
    }
    let info =
        SnapshotInfo::parse(&text).ok_or_else(|| SnapshotError::Format(format!("pg_current_snapshot() = {text}")))?;
    shape.set_snapshot(info.clone()).map_err(|e| match e {
        Unservable::Io(e) => SnapshotError::Io(e),
        unreadable => SnapshotError::Unservable(unreadable.to_string()),
    })?;

    let rows = match shape.shape.spec.log {
        LogMode::Full => copy_into_log(client, shape).await?,
        _ => 0,
    };
    client.batch_execute("commit").await.map_err(DbError::from)?;
    abandoned.disarm();
    session.release();
    drop(slot);
    snapshots.completions.complete(shape.clone(), info, registry.sets().views_of(shape)).await?;
    Ok(rows)
}

/// Streams the shape's rows into its log's snapshot; returns how many there were.
/// Receiving and encoding run on separate threads; a full channel means the encoder is
/// behind, and reading the COPY output pauses. (A second encoder thread measured no faster
/// on two cores: PostgreSQL's COPY takes one.)
async fn copy_into_log(client: &tokio_postgres::Client, shape: &Arc<LiveShape>) -> Result<u64, SnapshotError> {
    let mut encoder = RowEncoder::new(shape.clone());
    let sql = encoder.copy_sql(None, "");
    let stream = client.copy_out(sql.as_str()).await.map_err(DbError::from)?;
    futures::pin_mut!(stream);
    let (blocks, mut incoming) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let log_shape = shape.clone();
    let encoding = tokio::task::spawn_blocking(move || {
        while let Some(block) = incoming.blocking_recv() {
            // Rows are encoded straight into the log's buffer, under one lock per block (a
            // fraction of a millisecond): readers of finished chunks barely wait.
            encoder.write(&block, &mut log_shape.log.snapshot_rows())?;
        }
        encoder.finish()
    });
    let mut block = BytesMut::with_capacity(BLOCK);
    let mut received: Result<(), SnapshotError> = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => block.extend_from_slice(&chunk),
            Err(e) => {
                received = Err(DbError::from(e).into());
                break;
            }
        }
        if block.len() >= BLOCK && blocks.send(block.split().freeze()).await.is_err() {
            break; // the encoder failed; its error is reported below
        }
    }
    if received.is_ok() && !block.is_empty() {
        let _ = blocks.send(block.freeze()).await;
    }
    drop(blocks);
    let rows = encoding.await.map_err(|e| SnapshotError::Format(e.to_string()))??;
    received?;
    Ok(rows)
}

/// A subset snapshot (`requestSnapshot`): the shape's rows that also match the subset, in
/// the subset's order and page, read in one REPEATABLE READ transaction whose snapshot the
/// response reports so the client can drop stream changes the subset already holds.
/// Returns the response body, `{"metadata":{…},"data":[…]}`.
pub async fn subset(
    client: &mut tokio_postgres::Client,
    shape: &Arc<LiveShape>,
    subset: &Subset,
) -> Result<Vec<u8>, SnapshotError> {
    // An abandoned request's query is cancelled, and its transaction object rolls back
    // before the session is reused.
    let abandoned = db::CancelOnDrop::new(client);
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(DbError::from)?;
    let row = tx
        .query_one("select pg_current_snapshot()::text, pg_current_wal_lsn()::text", &[])
        .await
        .map_err(DbError::from)?;
    let (text, lsn): (String, String) = (row.get(0), row.get(1));
    let info =
        SnapshotInfo::parse(&text).ok_or_else(|| SnapshotError::Format(format!("pg_current_snapshot() = {text}")))?;
    let lsn: Lsn = lsn.parse().map_err(|_| SnapshotError::Format(format!("pg_current_wal_lsn() = {lsn}")))?;
    let mark = rand::random_range(0..i32::MAX as u32);
    let mut body = b"{\"metadata\":".to_vec();
    body.extend_from_slice(&subset_metadata(info.xmin, info.xmax, &info.xip, mark, lsn));
    body.extend_from_slice(b",\"data\":[");
    let mut body = SubsetBody { start: body.len(), body, mark };
    let mut encoder = RowEncoder::new(shape.clone());
    let sql = encoder.copy_sql(subset.filter.as_ref(), &subset.sql_tail(&shape.shape.table));
    let stream = tx.copy_out(sql.as_str()).await.map_err(DbError::from)?;
    futures::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        encoder.write(&chunk.map_err(DbError::from)?, &mut body)?;
    }
    encoder.finish()?;
    tx.commit().await.map_err(DbError::from)?;
    abandoned.disarm();
    body.body.extend_from_slice(b"]}");
    Ok(body.body)
}

/// Where encoded rows go: each message is encoded straight into the sink's buffer.
trait RowSink {
    fn row(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), SnapshotError>;
}

impl RowSink for SnapshotRows<'_> {
    fn row(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), SnapshotError> {
        Ok(self.push(encode)?)
    }
}

/// A subset response's `data` array being filled, each row marked with the subset's mark.
struct SubsetBody {
    body: Vec<u8>,
    /// Where the array's first element goes.
    start: usize,
    mark: u32,
}

impl RowSink for SubsetBody {
    fn row(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), SnapshotError> {
        if self.body.len() > self.start {
            self.body.push(b',');
        }
        encode(&mut self.body);
        // The message ends the buffer, so its headers can be extended in place.
        mark_snapshot(&mut self.body, self.mark);
        if self.body.len() > MAX_SUBSET_BYTES {
            return Err(SnapshotError::SubsetTooLarge);
        }
        Ok(())
    }
}

/// Turns COPY text lines into insert messages.
struct RowEncoder {
    shape: Arc<LiveShape>,
    /// Table columns the COPY reads, in order.
    read: Vec<usize>,
    /// Where each table column sits in a COPY line.
    slot: Vec<usize>,
    /// An incomplete line carried to the next block.
    pending: Vec<u8>,
    rows: u64,
}

impl RowEncoder {
    fn new(shape: Arc<LiveShape>) -> RowEncoder {
        let s = &shape.shape;
        // Key columns are read too, for PK-less tables whose key is every column.
        let mut read: Vec<usize> = s.selected.iter().chain(s.key.iter()).copied().collect();
        read.sort_unstable();
        read.dedup();
        let mut slot = vec![usize::MAX; s.table.columns.len()];
        for (i, &c) in read.iter().enumerate() {
            slot[c] = i;
        }
        RowEncoder { shape, read, slot, pending: Vec::new(), rows: 0 }
    }

    /// The COPY of the shape's rows, narrowed by `extra` and ended by `tail` (ORDER BY …).
    fn copy_sql(&self, extra: Option<&Expr>, tail: &str) -> String {
        let s = &self.shape.shape;
        let cols: Vec<String> = self.read.iter().map(|&i| quote_ident(&s.table.columns[i].name)).collect();
        let filter = s.where_sql(extra).map(|w| format!(" where {w}")).unwrap_or_default();
        format!("copy (select {} from {}{filter}{tail}) to stdout", cols.join(", "), s.table.name.quoted())
    }

    /// Encodes the whole lines of `block` (and of what an earlier block left) into `sink`.
    fn write(&mut self, block: &[u8], sink: &mut impl RowSink) -> Result<(), SnapshotError> {
        let joined;
        let data = if self.pending.is_empty() {
            block
        } else {
            self.pending.extend_from_slice(block);
            joined = std::mem::take(&mut self.pending);
            &joined[..]
        };
        let complete = memchr::memrchr(b'\n', data).map_or(0, |p| p + 1);
        let text = std::str::from_utf8(&data[..complete])
            .map_err(|_| SnapshotError::Format("COPY output is not UTF-8".into()))?;
        let s = &self.shape.shape;
        for_each_copy_line::<SnapshotError>(text, self.read.len(), |values| {
            let value = |col: usize| values[self.slot[col]].as_deref();
            sink.row(|out| {
                let fields = s.selected.iter().map(|&c| (c, value(c)));
                self.shape.encoder.write_snapshot_insert(out, s.key.iter().map(|&c| value(c)), fields);
                // The message ends `out`, so its headers can be extended in place.
                if let Some(link) = s.tag_column().and_then(value) {
                    add_tags(out, &[self.shape.tag(link)], &[]);
                }
            })?;
            self.rows += 1;
            Ok(())
        })?;
        self.pending = data[complete..].to_vec();
        Ok(())
    }

    fn finish(self) -> Result<u64, SnapshotError> {
        if !self.pending.is_empty() {
            return Err(SnapshotError::Format("COPY output ended mid-row".into()));
        }
        Ok(self.rows)
    }
}
