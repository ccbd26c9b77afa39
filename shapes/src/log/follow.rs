//! Following a log another process writes: a read-serving standby on the leader's data dir
//! opens the log without writing to it, then extends its view by what the leader's journal
//! says was written where ([`crate::journal::tail`]). Readers see whole transactions only,
//! as on the leader: a transaction written in parts shows once its last part is there.

use std::fs::File;
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::live::{Live, Recent};
use super::record::{HEADER, Records, crc, offset_parts};
use super::snapshot::Snapshot;
use super::{RECENT_BYTES, ShapeLog};

/// How [`ShapeLog::follow`] took a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// The view holds the bytes (new ones, or ones it had already).
    Taken,
    /// The bytes do not continue what the view holds, and the file does not fill the gap:
    /// open the log again.
    Gap,
}

impl ShapeLog {
    /// Opens a log that another process writes, writing nothing (no torn tail is cut: the
    /// writer may be in the middle of it). The view ends at the last whole transaction in
    /// the file. `Ok(None)` while its snapshot is incomplete.
    pub fn open_following(dir: &Path, chunk_bytes: u64) -> io::Result<Option<ShapeLog>> {
        let Some(snapshot) = Snapshot::load(dir)? else {
            return Ok(None);
        };
        let file = File::open(dir.join("log"))?;
        let len = file.metadata()?.len();
        let live = match Live::from_checkpoint(dir, len) {
            Some(live) => live,
            None => Live::scanned(file, len, chunk_bytes.max(1))?,
        };
        Ok(Some(ShapeLog::assemble(dir, chunk_bytes, snapshot, live)))
    }

    /// The writer wrote `bytes` at `at` of this log (a journal record). Bytes the view holds
    /// are skipped; a rewrite of its unfinished tail (a transaction in parts given up)
    /// replaces it; bytes past its end first take what the file holds before them.
    pub fn follow(&self, at: u64, bytes: &Bytes) -> io::Result<Followed> {
        let end = at + bytes.len() as u64;
        let mut l = self.live.lock().unwrap();
        if end <= l.durable_len {
            return Ok(Followed::Taken);
        }
        let (old_len, old_head) = (l.durable_len, l.head);
        if at < l.written_len {
            // Rewritten or overlapping: whatever follows the published part is taken afresh.
            l.drop_unfinished();
        }
        if at > l.written_len {
            let file = File::open(self.dir.join("log"))?;
            let end = at.min(file.metadata()?.len());
            let mut records = Records::new(file, l.written_len, end)?;
            l.take_records(&mut records, self.chunk_bytes)?;
            if l.written_len != at {
                l.drop_unfinished();
                return Ok(Followed::Gap);
            }
        }
        let skip = (l.written_len - at) as usize;
        let start = l.written_len;
        l.take_records(&mut Records::in_memory(bytes.slice(skip..), start), self.chunk_bytes)?;
        if l.written_len != end {
            l.drop_unfinished();
            return Ok(Followed::Gap);
        }
        if l.durable_len > old_len {
            // What was published starts these bytes: its readers take it from memory, from a
            // copy (a slice would keep the whole journal read alive while the shape idles).
            let published = (l.durable_len - start) as usize;
            l.recent = (start == old_len && published <= RECENT_BYTES).then(|| Recent {
                at: start,
                prior_head: old_head,
                bytes: Bytes::copy_from_slice(&bytes[skip..skip + published]),
            });
            let head = l.head;
            drop(l);
            self.version.send_modify(|v| v.head = head);
        }
        Ok(Followed::Taken)
    }
}

impl Live {
    /// The view of the first `len` bytes of `file`: its whole transactions.
    fn scanned(file: File, len: u64, chunk_bytes: u64) -> io::Result<Live> {
        let mut live = Live::empty();
        live.take_records(&mut Records::new(file, 0, len)?, chunk_bytes)?;
        live.drop_unfinished();
        Ok(live)
    }

    /// Indexes the whole, valid records `records` holds from `written_len` on; each that
    /// ends a transaction publishes what precedes it. Stops at the first record cut short,
    /// damaged or out of order (the writer is not done with it).
    pub(super) fn take_records(&mut self, records: &mut Records, chunk_bytes: u64) -> io::Result<()> {
        let mut msg = Vec::new();
        while let Some(r) = records.next_header()? {
            msg.resize(r.len as usize, 0);
            records.read_payload(&mut msg)?;
            let (tx, op) = offset_parts(r.offset);
            if crc(tx, op, &msg) != r.crc || r.offset <= self.written_head {
                break;
            }
            self.note_entry(r.offset, r.pos, r.len + HEADER as u64, chunk_bytes);
            self.written_len = records.pos;
            self.written_head = r.offset;
            if r.ends_txn {
                self.durable_len = records.pos;
                self.head = r.offset;
            }
        }
        Ok(())
    }

    /// Forgets what was taken past the last whole transaction.
    pub(super) fn drop_unfinished(&mut self) {
        self.written_len = self.durable_len;
        self.written_head = self.head;
        self.forget_unwritten();
    }
}

impl ShapeLog {
    /// Reads the file afresh into the view (after a [`Followed::Gap`] or lost journal
    /// frames): it holds every whole transaction the file has. Readers keep waiting on the
    /// same log.
    pub fn reload_following(&self) -> io::Result<()> {
        let file = File::open(self.dir.join("log"))?;
        let len = file.metadata()?.len();
        let fresh = Live::scanned(file, len, self.chunk_bytes)?;
        let mut l = self.live.lock().unwrap();
        if fresh.durable_len < l.durable_len {
            // Never show less than readers were shown: the file is behind (not yet written back).
            return Ok(());
        }
        let head = fresh.head;
        *l = fresh;
        drop(l);
        self.version.send_modify(|v| v.head = head);
        Ok(())
    }
}
