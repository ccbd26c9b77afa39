//! The snapshot chunks: bodies back to back in `snapshot`, their byte ranges in
//! `snapshot.idx`, which is written last, so its presence marks a complete snapshot.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::durable::write_beside;

/// The index of a complete snapshot's chunks.
const INDEX: &str = "snapshot.idx";

/// Snapshot bytes are written in blocks of this size.
const SNAPSHOT_BLOCK: usize = 256 * 1024;

/// Written bytes after which a sync starts in the background while writing goes on, so
/// the disk works alongside the encoder and the final sync has little left to wait for
/// (as PostgreSQL's `backend_flush_after` starts writeback early).
const EARLY_SYNC_BYTES: u64 = 16 << 20;

pub(super) struct Snapshot {
    /// Held only while the snapshot is being written.
    writer: Option<File>,
    /// Byte ranges of finished chunks.
    chunks: Vec<(u64, u64)>,
    /// The chunk being written: start position and bytes so far (written or buffered).
    open_start: u64,
    open_len: u64,
    /// The open chunk's newest bytes, not yet written (one write per block, not per row).
    buffered: Vec<u8>,
    /// Bytes written since the last early sync started.
    unsynced: u64,
    early_sync: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Snapshot {
    /// A snapshot about to be written into `file`.
    pub(super) fn writing(file: File) -> Snapshot {
        Snapshot { writer: Some(file), ..Snapshot::complete(Vec::new()) }
    }

    /// The complete snapshot in `dir`, or `None` when it never completed (no index, an index
    /// that does not parse, or chunks past the end of the file).
    pub(super) fn load(dir: &Path) -> io::Result<Option<Snapshot>> {
        let idx = match fs::read(dir.join(INDEX)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(chunks) = serde_json::from_slice::<Vec<(u64, u64)>>(&idx) else {
            return Ok(None);
        };
        let len = fs::metadata(dir.join("snapshot"))?.len();
        if chunks.last().is_some_and(|(_, end)| *end > len) {
            return Ok(None);
        }
        Ok(Some(Snapshot::complete(chunks)))
    }

    fn complete(chunks: Vec<(u64, u64)>) -> Snapshot {
        Snapshot {
            writer: None,
            chunks,
            open_start: 0,
            open_len: 0,
            buffered: Vec::new(),
            unsynced: 0,
            early_sync: None,
        }
    }

    pub(super) fn is_complete(&self) -> bool {
        self.writer.is_none()
    }

    pub(super) fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// The byte range of finished chunk `n`.
    pub(super) fn chunk(&self, n: u64) -> Option<(u64, u64)> {
        self.chunks.get(n as usize).copied()
    }

    /// Adds one message; returns whether that closed a chunk of `chunk_bytes`.
    pub(super) fn push_row(&mut self, message: &[u8], chunk_bytes: u64) -> io::Result<bool> {
        self.push(message)?;
        if self.open_len < chunk_bytes {
            return Ok(false);
        }
        self.flush()?;
        self.close_chunk();
        Ok(true)
    }

    /// Ends the snapshot with `final_message` and writes its index beside the real one,
    /// syncing nothing: [`Snapshot::commit`] puts the index in place once the caller has made
    /// the files durable, so an index in place always describes durable chunks.
    pub(super) fn seal(&mut self, final_message: &[u8], dir: &Path) -> io::Result<()> {
        self.push(final_message)?;
        self.flush()?;
        self.join_early_sync()?;
        self.close_chunk();
        write_beside(&dir.join(INDEX), &serde_json::to_vec(&self.chunks).map_err(io::Error::other)?)?;
        Ok(())
    }

    /// Puts the sealed snapshot's index in place: the snapshot is complete (after a crash
    /// too, once the directory is synced).
    pub(super) fn commit(&mut self, dir: &Path) -> io::Result<()> {
        self.writer.take().ok_or_else(already_complete)?;
        fs::rename(dir.join(INDEX).with_extension("tmp"), dir.join(INDEX))
    }

    fn push(&mut self, message: &[u8]) -> io::Result<()> {
        if self.open_len > 0 {
            self.buffered.push(b',');
            self.open_len += 1;
        }
        self.buffered.extend_from_slice(message);
        self.open_len += message.len() as u64;
        if self.buffered.len() >= SNAPSHOT_BLOCK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let pos = self.open_start + self.open_len - self.buffered.len() as u64;
        let writer = self.writer.as_ref().ok_or_else(already_complete)?;
        writer.write_all_at(&self.buffered, pos)?;
        self.unsynced += self.buffered.len() as u64;
        self.buffered.clear();
        if self.unsynced >= EARLY_SYNC_BYTES && self.early_sync.as_ref().is_none_or(|s| s.is_finished()) {
            let file = writer.try_clone()?;
            self.join_early_sync()?;
            self.early_sync = Some(std::thread::spawn(move || file.sync_data()));
            self.unsynced = 0;
        }
        Ok(())
    }

    fn join_early_sync(&mut self) -> io::Result<()> {
        match self.early_sync.take() {
            Some(sync) => sync.join().map_err(|_| io::Error::other("the early sync panicked"))?,
            None => Ok(()),
        }
    }

    fn close_chunk(&mut self) {
        let range = (self.open_start, self.open_start + self.open_len);
        self.chunks.push(range);
        self.open_start = range.1;
        self.open_len = 0;
    }
}

fn already_complete() -> io::Error {
    io::Error::other("the snapshot is already complete")
}
