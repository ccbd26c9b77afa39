//! Initial snapshots: the rows of a new shape, consistent with the stream.
//!
//! The shape is registered before the snapshot starts, so every stream transaction from then
//! on reaches it; the snapshot runs in a REPEATABLE READ transaction whose
//! `pg_current_snapshot()` tells which of those transactions it already contains. Rows are
//! read with `COPY … TO STDOUT` (text output, the same text pgoutput sends) and stored as
//! ready-to-serve messages in chunks.

use std::sync::Arc;

use std::borrow::Cow;

use bytes::BytesMut;
use futures::StreamExt;
use shapes::shape::LogMode;
use shapes::table::quote_ident;
use shapes::wire::snapshot_end;
use tokio_postgres::Config;

use crate::db::{self, DbError};
use crate::fanout::registry::{LiveShape, Registry, ShapeFailure, SnapshotInfo};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("snapshot storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected snapshot output: {0}")]
    Format(String),
}

/// Runs a shape's snapshot to completion; on failure the shape is rotated and waiting
/// requests learn why.
pub async fn run(db: Config, registry: Arc<Registry>, shape: Arc<LiveShape>) {
    let started = std::time::Instant::now();
    match snapshot(&db, &shape).await {
        Ok(rows) => {
            tracing::info!(handle = %shape.handle, table = %shape.shape.table.name, rows, ms = started.elapsed().as_millis() as u64, "snapshot complete")
        }
        Err(e) => {
            let client_error = matches!(&e, SnapshotError::Db(DbError::Query(q)) if q.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("42")));
            tracing::warn!(handle = %shape.handle, error = %e, "snapshot failed");
            shape.fail(ShapeFailure { client_error, message: e.to_string() });
            registry.rotate(&shape, "its snapshot failed");
        }
    }
}

/// COPY output is handed to the encoder in blocks of about this size.
const BLOCK: usize = 64 * 1024;

async fn snapshot(cfg: &Config, shape: &Arc<LiveShape>) -> Result<u64, SnapshotError> {
    let client = db::connect(cfg).await?;
    client.batch_execute("begin isolation level repeatable read read only").await.map_err(DbError::from)?;
    let text: String = client.query_one("select pg_current_snapshot()::text", &[]).await.map_err(DbError::from)?.get(0);
    let info =
        SnapshotInfo::parse(&text).ok_or_else(|| SnapshotError::Format(format!("pg_current_snapshot() = {text}")))?;
    shape.set_snapshot(info.clone())?;

    let mut rows = 0u64;
    if shape.shape.spec.log == LogMode::Full {
        let encoder = RowEncoder::new(shape.clone());
        let sql = encoder.copy_sql();
        let stream = client.copy_out(sql.as_str()).await.map_err(DbError::from)?;
        futures::pin_mut!(stream);
        // Receiving and encoding run on separate threads. Full channel: the encoder is behind,
        // so reading COPY output pauses.
        let (blocks, mut incoming) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let encoding = tokio::task::spawn_blocking(move || {
            let mut encoder = encoder;
            while let Some(block) = incoming.blocking_recv() {
                encoder.write(&block)?;
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
        rows = encoding.await.map_err(|e| SnapshotError::Format(e.to_string()))??;
        received?;
    }
    client.batch_execute("commit").await.map_err(DbError::from)?;
    shape.persist(info.clone())?;
    shape.log.finish_snapshot(&snapshot_end(info.xmin, info.xmax, &info.xip))?;
    Ok(rows)
}

/// Turns COPY text lines into insert messages in the shape's snapshot.
struct RowEncoder {
    shape: Arc<LiveShape>,
    /// Table columns the COPY reads, in order.
    read: Vec<usize>,
    /// Where each table column sits in a COPY line.
    slot: Vec<usize>,
    /// An incomplete line carried to the next block.
    pending: Vec<u8>,
    msg: Vec<u8>,
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
        RowEncoder { shape, read, slot, pending: Vec::new(), msg: Vec::with_capacity(512), rows: 0 }
    }

    fn copy_sql(&self) -> String {
        let s = &self.shape.shape;
        let cols: Vec<String> = self.read.iter().map(|&i| quote_ident(&s.table.columns[i].name)).collect();
        let filter = s.filter.as_ref().map(|f| format!(" where {}", f.to_sql())).unwrap_or_default();
        format!("copy (select {} from {}{filter}) to stdout", cols.join(", "), s.table.name.quoted())
    }

    fn write(&mut self, block: &[u8]) -> Result<(), SnapshotError> {
        let joined;
        let data = if self.pending.is_empty() {
            block
        } else {
            self.pending.extend_from_slice(block);
            joined = std::mem::take(&mut self.pending);
            &joined[..]
        };
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let text = std::str::from_utf8(&data[..complete])
            .map_err(|_| SnapshotError::Format("COPY output is not UTF-8".into()))?;
        let s = &self.shape.shape;
        let mut values = Vec::with_capacity(self.read.len());
        for line in text.split_terminator('\n') {
            parse_copy_line(line, self.read.len(), &mut values)?;
            let value = |col: usize| values[self.slot[col]].as_deref();
            self.msg.clear();
            let fields = s.selected.iter().map(|&c| (c, value(c)));
            self.shape.encoder.write_snapshot_insert(&mut self.msg, s.key.iter().map(|&c| value(c)), fields);
            self.shape.log.append_snapshot_row(&self.msg)?;
            self.rows += 1;
        }
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

/// Splits one line of COPY text format into `n` values (`None` is NULL), reusing `values`.
/// Values without escapes borrow from the line.
fn parse_copy_line<'a>(line: &'a str, n: usize, values: &mut Vec<Option<Cow<'a, str>>>) -> Result<(), SnapshotError> {
    values.clear();
    for raw in line.split('\t') {
        values.push(match raw {
            "\\N" => None,
            raw if raw.contains('\\') => Some(Cow::Owned(
                String::from_utf8(unescape_copy(raw.as_bytes()))
                    .map_err(|_| SnapshotError::Format("COPY value is not UTF-8".into()))?,
            )),
            raw => Some(Cow::Borrowed(raw)),
        });
    }
    if values.len() != n {
        return Err(SnapshotError::Format(format!("COPY row has {} columns, expected {n}", values.len())));
    }
    Ok(())
}

fn unescape_copy(raw: &[u8]) -> Vec<u8> {
    if !raw.contains(&b'\\') {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    if i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                        v = v * 8 + (raw[i] - b'0') as u32;
                        i += 1;
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + (raw[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_are_undone() {
        assert_eq!(unescape_copy(br"a\tb\\c\nd"), b"a\tb\\c\nd");
        assert_eq!(unescape_copy(br"\101\x42"), b"AB");
        let mut row = Vec::new();
        parse_copy_line("1\t\\N\tx\\ty", 3, &mut row).unwrap();
        assert_eq!(row, vec![Some(Cow::Borrowed("1")), None, Some(Cow::Owned("x\ty".to_string()))]);
        assert!(parse_copy_line("1\t2", 3, &mut row).is_err());
    }
}
