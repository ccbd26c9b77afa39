//! Initial snapshots: the rows of a new shape, consistent with the stream.
//!
//! The shape is registered before the snapshot starts, so every stream transaction from then
//! on reaches it; the snapshot runs in a REPEATABLE READ transaction whose
//! `pg_current_snapshot()` tells which of those transactions it already contains. Rows are
//! read with `COPY … TO STDOUT` (text output, the same text pgoutput sends) and stored as
//! ready-to-serve messages in chunks.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use shapes::change::Cell;
use shapes::shape::LogMode;
use shapes::table::quote_ident;
use shapes::wire::{Operation, snapshot_end};
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

async fn snapshot(cfg: &Config, shape: &LiveShape) -> Result<u64, SnapshotError> {
    let client = db::connect(cfg).await?;
    client.batch_execute("begin isolation level repeatable read read only").await.map_err(DbError::from)?;
    let text: String = client.query_one("select pg_current_snapshot()::text", &[]).await.map_err(DbError::from)?.get(0);
    let info =
        SnapshotInfo::parse(&text).ok_or_else(|| SnapshotError::Format(format!("pg_current_snapshot() = {text}")))?;
    shape.set_snapshot(info.clone())?;

    let mut rows = 0u64;
    if shape.shape.spec.log == LogMode::Full {
        let s = &shape.shape;
        // Key columns are read too, for PK-less tables whose key is every column.
        let mut read: Vec<usize> = s.selected.iter().chain(s.key.iter()).copied().collect();
        read.sort_unstable();
        read.dedup();
        let cols: Vec<String> = read.iter().map(|&i| quote_ident(&s.table.columns[i].name)).collect();
        let filter = s.filter.as_ref().map(|f| format!(" where {}", f.to_sql())).unwrap_or_default();
        let sql = format!("copy (select {} from {}{filter}) to stdout", cols.join(", "), s.table.name.quoted());
        let stream = client.copy_out(sql.as_str()).await.map_err(DbError::from)?;
        futures::pin_mut!(stream);
        let mut pending = BytesMut::new();
        let mut row: Vec<Cell> = vec![Cell::Null; s.table.columns.len()];
        let mut msg = Vec::with_capacity(512);
        while let Some(chunk) = stream.next().await {
            pending.extend_from_slice(&chunk.map_err(DbError::from)?);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line = pending.split_to(nl + 1);
                parse_copy_line(&line[..nl], &read, &mut row)?;
                msg.clear();
                let key = shape.encoder.key(s.key.iter().map(|&i| row[i].as_str()));
                let fields = s.selected.iter().map(|&i| (i, row[i].as_str()));
                shape.encoder.write_change(&mut msg, Operation::Insert, &key, fields, None, None);
                shape.log.append_snapshot_row(&msg)?;
                rows += 1;
            }
        }
        if pending.has_remaining() {
            return Err(SnapshotError::Format("COPY output ended mid-row".into()));
        }
    }
    client.batch_execute("commit").await.map_err(DbError::from)?;
    shape.persist(info.clone())?;
    shape.log.finish_snapshot(&snapshot_end(info.xmin, info.xmax, &info.xip))?;
    Ok(rows)
}

/// Splits one line of COPY text format into `row` at the column indexes `cols`.
fn parse_copy_line(line: &[u8], cols: &[usize], row: &mut [Cell]) -> Result<(), SnapshotError> {
    let mut fields = line.split(|b| *b == b'\t');
    for &col in cols {
        let raw = fields.next().ok_or_else(|| SnapshotError::Format("COPY row has too few columns".into()))?;
        row[col] = if raw == b"\\N" {
            Cell::Null
        } else {
            let text = unescape_copy(raw);
            std::str::from_utf8(&text).map_err(|_| SnapshotError::Format("COPY value is not UTF-8".into()))?;
            Cell::Text(text.into())
        };
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
        let mut row = vec![Cell::Null; 3];
        parse_copy_line(b"1\t\\N\tx\\ty", &[0, 1, 2], &mut row).unwrap();
        assert_eq!(row, vec![Cell::text("1"), Cell::Null, Cell::text("x\ty")]);
    }
}
