//! The snapshot chunks: bodies back to back in `snapshot`, their byte ranges in
//! `snapshot.idx`, which is written last, so its presence marks a complete snapshot.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::durable::write_atomically;

/// Snapshot bytes are written in blocks of this size.
const SNAPSHOT_BLOCK: usize = 256 * 1024;

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
}

impl Snapshot {
    /// A snapshot about to be written into `file`.
    pub(super) fn writing(file: File) -> Snapshot {
        Snapshot { writer: Some(file), chunks: Vec::new(), open_start: 0, open_len: 0, buffered: Vec::new() }
    }

    /// The complete snapshot in `dir`, or `None` when it never completed (no index, an index
    /// that does not parse, or chunks past the end of the file).
    pub(super) fn load(dir: &Path) -> io::Result<Option<Snapshot>> {
        let idx = match fs::read(dir.join("snapshot.idx")) {
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
        Ok(Some(Snapshot { writer: None, chunks, open_start: 0, open_len: 0, buffered: Vec::new() }))
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

    /// Ends the snapshot with `final_message`, makes it durable and writes the index into
    /// `dir`.
    pub(super) fn finish(&mut self, final_message: &[u8], dir: &Path) -> io::Result<()> {
        self.push(final_message)?;
        self.flush()?;
        let writer = self.writer.take().ok_or_else(already_complete)?;
        writer.sync_data()?;
        self.close_chunk();
        write_atomically(&dir.join("snapshot.idx"), &serde_json::to_vec(&self.chunks).unwrap_or_default())
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
        self.writer.as_ref().ok_or_else(already_complete)?.write_all_at(&self.buffered, pos)?;
        self.buffered.clear();
        Ok(())
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
