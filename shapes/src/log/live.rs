//! The live log's index (chunk boundaries, a sparse offset index, what is written and what
//! is durable) and the result of reading it.

use std::fs::{self, File};
use std::path::Path;

use bytes::Bytes;

use super::record::{offset_from_parts, offset_parts};
use crate::offset::LogOffset;

/// A sparse index entry at least every this many bytes bounds the scan of a read.
const SPARSE_EVERY: u64 = 64 * 1024;

/// The result of reading live entries.
#[derive(Debug, Default)]
pub struct LiveRead {
    /// Messages joined by `,` (a JSON array body without brackets).
    pub body: Vec<u8>,
    /// Byte range of each message in `body`.
    pub messages: Vec<(usize, usize)>,
    pub count: usize,
    /// Offset of the last message read.
    pub last: Option<LogOffset>,
    /// The read reached the durable end of the log (not a chunk boundary).
    pub at_end: bool,
    /// The messages framed for a stream, built once for every reader sharing this read.
    framed: std::sync::OnceLock<Bytes>,
}

impl LiveRead {
    /// A read that found nothing past the reader's position.
    pub fn nothing_new() -> Self {
        LiveRead { at_end: true, ..LiveRead::default() }
    }

    /// The read's one framed form (its SSE events), built by the first reader that asks and
    /// then shared (a cheap clone): a thousand SSE readers of a shape frame a transaction
    /// once, not a thousand times.
    pub fn framed_once(&self, frame: impl FnOnce(&LiveRead) -> Vec<u8>) -> Bytes {
        self.framed.get_or_init(|| Bytes::from(frame(self))).clone()
    }

    /// The messages (`body`) as bytes sharing this read, not a copy: every answer built
    /// from one read (the readers at one position) holds the same buffer, however long slow
    /// clients take to receive it.
    pub fn body_shared(self: &std::sync::Arc<Self>) -> Bytes {
        Bytes::from_owner(SharedBody(self.clone()))
    }

    /// Each message's bytes, in order.
    pub fn each_message(&self) -> impl Iterator<Item = &[u8]> {
        self.messages.iter().map(|&(start, end)| &self.body[start..end])
    }
}

/// A read's messages, owned by the read.
struct SharedBody(std::sync::Arc<LiveRead>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        &self.0.body
    }
}

/// The last append's bytes: the live subscribers it wakes (all at the head before it) read
/// them from memory, with no blocking-pool hop and no open, read and close of the log.
pub(super) struct Recent {
    /// Where in the log the bytes start.
    pub(super) at: u64,
    /// The head before them: a reader at or past it needs nothing before `at`.
    pub(super) prior_head: LogOffset,
    pub(super) bytes: Bytes,
}

pub(super) struct Live {
    /// Kept open between appends while the fan-out caches it (see `release_writer`).
    pub(super) writer: Option<File>,
    pub(super) recent: Option<Recent>,
    /// Durable (readable) length and head.
    pub(super) durable_len: u64,
    pub(super) head: LogOffset,
    /// Written but not yet durable.
    pub(super) written_len: u64,
    pub(super) written_head: LogOffset,
    /// Positions where chunks start (the first is 0).
    pub(super) chunk_starts: Vec<u64>,
    pub(super) chunk_bytes_so_far: u64,
    /// (offset, position) of some entries, in order.
    pub(super) sparse: Vec<(LogOffset, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Checkpoint {
    len: u64,
    head: (u64, u64),
    chunk_starts: Vec<u64>,
    chunk_bytes_so_far: u64,
    sparse: Vec<((u64, u64), u64)>,
}

impl Live {
    /// The index from `log.idx`, if it describes a log of exactly `file_len` bytes.
    pub(super) fn from_checkpoint(dir: &Path, file_len: u64) -> Option<Live> {
        let c: Checkpoint = serde_json::from_slice(&fs::read(dir.join("log.idx")).ok()?).ok()?;
        if c.len != file_len {
            return None;
        }
        let head = if c.len == 0 { LogOffset::SNAPSHOT_END } else { offset_from_parts(c.head) };
        Some(Live {
            writer: None,
            recent: None,
            durable_len: c.len,
            head,
            written_len: c.len,
            written_head: head,
            chunk_starts: c.chunk_starts,
            chunk_bytes_so_far: c.chunk_bytes_so_far,
            sparse: c.sparse.into_iter().map(|(o, p)| (offset_from_parts(o), p)).collect(),
        })
    }

    /// The index as [`Checkpoint`] stores it.
    pub(super) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            len: self.durable_len,
            head: offset_parts(self.head),
            chunk_starts: self.chunk_starts.clone(),
            chunk_bytes_so_far: self.chunk_bytes_so_far,
            sparse: self.sparse.iter().map(|(o, p)| (offset_parts(*o), *p)).collect(),
        }
    }

    pub(super) fn empty() -> Live {
        Live {
            writer: None,
            recent: None,
            durable_len: 0,
            head: LogOffset::SNAPSHOT_END,
            written_len: 0,
            written_head: LogOffset::SNAPSHOT_END,
            chunk_starts: vec![0],
            chunk_bytes_so_far: 0,
            sparse: Vec::new(),
        }
    }

    pub(super) fn note_entry(&mut self, offset: LogOffset, pos: u64, size: u64, chunk_bytes: u64) {
        if self.chunk_bytes_so_far >= chunk_bytes {
            self.chunk_starts.push(pos);
            self.chunk_bytes_so_far = 0;
            self.sparse.push((offset, pos));
        } else if self.sparse.last().is_none_or(|(_, p)| pos - p >= SPARSE_EVERY) {
            self.sparse.push((offset, pos));
        }
        self.chunk_bytes_so_far += size;
    }

    /// Drops index entries for bytes past `written_len` after a failed write.
    pub(super) fn forget_unwritten(&mut self) {
        let len = self.written_len;
        self.recent = None;
        self.sparse.retain(|(_, p)| *p < len);
        self.chunk_starts.retain(|p| *p < len || *p == 0);
        self.chunk_bytes_so_far = len - self.chunk_starts.last().copied().unwrap_or(0);
    }
}
