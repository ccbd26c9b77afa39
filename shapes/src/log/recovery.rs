//! Opening a log after a crash: rebuild the index by scanning, cut a torn tail back to the
//! last whole transaction, and refuse damage to what was already acknowledged.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::live::Live;
use super::record::{HEADER, Record, Records, crc, offset_parts};
use crate::offset::{LogOffset, Lsn};

impl Live {
    /// Scans the file, rebuilding the indexes and cutting a torn tail back to the end of the
    /// last whole transaction.
    pub(super) fn recover(&mut self, file: &File, chunk_bytes: u64, acknowledged: Lsn) -> io::Result<()> {
        let file_len = file.metadata()?.len();
        let mut records = Records::new(file.try_clone()?, 0, file_len)?;
        let mut msg = Vec::new();
        let mut last = LogOffset::SNAPSHOT_END;
        let mut seen = Vec::new();
        let (mut cut, mut cut_head, mut cut_entries) = (0u64, LogOffset::SNAPSHOT_END, 0usize);
        while let Some(r) = records.next_header()? {
            msg.resize(r.len as usize, 0);
            records.read_payload(&mut msg)?;
            let (tx, op) = offset_parts(r.offset);
            if crc(tx, op, &msg) != r.crc || r.offset <= last {
                break;
            }
            seen.push((r.offset, r.pos, r.len + HEADER as u64));
            last = r.offset;
            if r.ends_txn {
                (cut, cut_head, cut_entries) = (records.pos, r.offset, seen.len());
            }
        }
        // Cutting may only drop what was never acknowledged: the entries of a partial last
        // transaction, or a torn write. Past the last whole record, a header naming an
        // acknowledged transaction, or a whole valid record after a bad one, is damage.
        let next = seen.last().map_or(0, |(_, p, size)| p + size);
        let damaged = match seen.get(cut_entries) {
            Some((offset, _, _)) => offset_parts(*offset).0 < acknowledged.0,
            None => damaged_past(file, next, file_len, last, acknowledged)?,
        };
        if damaged {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("damaged: entries of transactions before {acknowledged}, already acknowledged, are unreadable"),
            ));
        }
        for (offset, p, size) in seen.into_iter().take(cut_entries) {
            self.note_entry(offset, p, size, chunk_bytes);
        }
        if cut < file_len {
            tracing::warn!(
                cut_bytes = file_len - cut,
                "shape log had a torn tail; truncated to the last whole transaction"
            );
            file.set_len(cut)?;
            file.sync_all()?;
        }
        self.durable_len = cut;
        self.written_len = cut;
        self.head = cut_head;
        self.written_head = cut_head;
        Ok(())
    }
}

/// Whether the unreadable record at `at` (after the last good entry, `last`) is damage
/// rather than a torn last write (see `Live::recover`).
fn damaged_past(file: &File, at: u64, file_len: u64, last: LogOffset, acknowledged: Lsn) -> io::Result<bool> {
    let header = |pos: u64| -> io::Result<Option<[u8; HEADER]>> {
        if pos + HEADER as u64 > file_len {
            return Ok(None);
        }
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, pos)?;
        Ok(Some(h))
    };
    // A header of zeros is space the file system extended but never wrote.
    let Some(h) = header(at)?.filter(|h| *h != [0u8; HEADER]) else {
        return Ok(false);
    };
    let r = Record::parse(at, &h);
    let (tx, _) = offset_parts(r.offset);
    if (LogOffset::At { tx, op: u64::MAX }) > last && tx < acknowledged.0 {
        return Ok(true);
    }
    // A torn write is the end of the file: a whole, valid record after it means damage.
    let following = at + HEADER as u64 + r.len;
    let Some(g) = header(following)? else { return Ok(false) };
    let g = Record::parse(following, &g);
    if following + HEADER as u64 + g.len > file_len {
        return Ok(false);
    }
    let mut msg = vec![0u8; g.len as usize];
    file.read_exact_at(&mut msg, following + HEADER as u64)?;
    let (gtx, gop) = offset_parts(g.offset);
    Ok(crc(gtx, gop, &msg) == g.crc)
}
