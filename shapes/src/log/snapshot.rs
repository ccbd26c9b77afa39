//! The snapshot chunks: bodies back to back in `snapshot`, then a trailer with their byte
//! ranges, written last, so its presence marks a complete snapshot. The trailer is the
//! ranges as JSON, their length (u64, little-endian) and [`TRAILER_MAGIC`]. Keeping it in
//! the same file spares the filesystem an inode per shape, which is most of what making a
//! small shape costs. (Data directories of earlier versions keep the ranges in
//! `snapshot.idx`; they are still read.)

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::block_writer::BlockWriter;

/// Ends the trailer of a complete snapshot. No JSON body can end with it: the length
/// before it holds zero bytes, which JSON text never does.
const TRAILER_MAGIC: &[u8; 8] = b"SNAPEND1";

/// Where earlier versions kept the chunk ranges.
const OLD_INDEX: &str = "snapshot.idx";

/// Snapshot bytes are written in blocks of this size: a snapshot of one block by its
/// encoder, a larger one by a [`BlockWriter`] from its first full block. (Each block wakes
/// the writer's thread; 256 KiB blocks measured slower than 1 MiB.)
const SNAPSHOT_BLOCK: usize = 1024 * 1024;

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
    /// The open chunk's written blocks, kept until it closes.
    open_blocks: Vec<Bytes>,
    /// The newest closed chunk's blocks (its number and them), while the snapshot is
    /// written: its first readers, who wait for it as it closes, are served from memory
    /// rather than by reading back what was just written.
    recent: Option<(u64, Vec<Bytes>)>,
    /// Writes the blocks of a snapshot larger than one block, from its first full one.
    background: Option<BlockWriter>,
}

impl Snapshot {
    /// A snapshot about to be written into `file`.
    pub(super) fn writing(file: File) -> Snapshot {
        Snapshot { writer: Some(file), ..Snapshot::complete(Vec::new()) }
    }

    /// The complete snapshot in `dir`, or `None` when it never completed (no trailer, one
    /// that does not parse, or chunks past it).
    pub(super) fn load(dir: &Path) -> io::Result<Option<Snapshot>> {
        let file = match File::open(dir.join("snapshot")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let (index, body_len) = match fs::read(dir.join(OLD_INDEX)) {
            Ok(index) => (index, len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match read_trailer(&file, len)? {
                Some(found) => found,
                None => return Ok(None),
            },
            Err(e) => return Err(e),
        };
        let Ok(chunks) = serde_json::from_slice::<Vec<(u64, u64)>>(&index) else {
            return Ok(None);
        };
        if chunks.last().is_some_and(|(_, end)| *end > body_len) {
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
            open_blocks: Vec::new(),
            recent: None,
            background: None,
        }
    }

    pub(super) fn is_complete(&self) -> bool {
        self.writer.is_none()
    }

    pub(super) fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Where finished chunk `n` is: in memory (its blocks) while it is the newest one of a
    /// snapshot being written, else its byte range in the file.
    pub(super) fn chunk(&self, n: u64) -> Option<Result<Vec<Bytes>, (u64, u64)>> {
        match &self.recent {
            Some((recent, blocks)) if *recent == n => Some(Ok(blocks.clone())),
            _ => self.chunks.get(n as usize).map(|range| Err(*range)),
        }
    }

    /// Adds one message, encoded by `encode` at the end of the buffer it is given; closes
    /// the chunk once it holds `chunk_bytes`.
    pub(super) fn push_row(&mut self, encode: impl FnOnce(&mut Vec<u8>), chunk_bytes: u64) -> io::Result<()> {
        self.push(encode)?;
        if self.open_len >= chunk_bytes {
            self.flush()?;
            self.close_chunk()?;
        }
        Ok(())
    }

    /// Ends the snapshot with `final_message`, syncing nothing: [`Snapshot::commit`] writes
    /// the trailer once the caller has made the chunks durable, so a trailer always
    /// describes durable chunks.
    pub(super) fn seal(&mut self, final_message: &[u8]) -> io::Result<()> {
        self.push(|out| out.extend_from_slice(final_message))?;
        self.flush()?;
        if let Some(background) = self.background.take() {
            background.finish()?;
        }
        self.close_chunk()
    }

    /// Writes the sealed snapshot's trailer: the snapshot is complete (after a crash too,
    /// once the file is synced).
    pub(super) fn commit(&mut self) -> io::Result<()> {
        let writer = self.writer.take().ok_or_else(already_complete)?;
        // Readers of a complete snapshot read the file: an idle shape holds no chunk.
        self.recent = None;
        let mut trailer = serde_json::to_vec(&self.chunks).map_err(io::Error::other)?;
        trailer.extend_from_slice(&(trailer.len() as u64).to_le_bytes());
        trailer.extend_from_slice(TRAILER_MAGIC);
        writer.write_all_at(&trailer, self.open_start)
    }

    fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        if self.open_len > 0 {
            self.buffered.push(b',');
            self.open_len += 1;
        }
        let before = self.buffered.len();
        encode(&mut self.buffered);
        self.open_len += (self.buffered.len() - before) as u64;
        if self.buffered.len() >= SNAPSHOT_BLOCK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let pos = self.open_start + self.open_len - self.buffered.len() as u64;
        let writer = self.writer.as_ref().ok_or_else(already_complete)?;
        // The block is kept as it is (no copy). A full one is followed by another (room for
        // the row that fills it); a small snapshot's last one by nothing.
        let full = self.buffered.len() >= SNAPSHOT_BLOCK;
        let next = if full { Vec::with_capacity(SNAPSHOT_BLOCK + SNAPSHOT_BLOCK / 4) } else { Vec::new() };
        let block = Bytes::from(std::mem::replace(&mut self.buffered, next));
        if self.background.is_none() && full {
            self.background = Some(BlockWriter::start(writer, pos)?);
        }
        match &self.background {
            Some(background) => background.write(pos, block.clone())?,
            None => writer.write_all_at(&block, pos)?,
        }
        self.open_blocks.push(block);
        Ok(())
    }

    fn close_chunk(&mut self) -> io::Result<()> {
        // The newest chunk is about to be read from the file instead of memory: it must be
        // written by then (the writer is at most about a chunk behind).
        if let (Some(background), Some((newest, _))) = (&self.background, &self.recent) {
            background.wait_for(self.chunks[*newest as usize].1)?;
        }
        let range = (self.open_start, self.open_start + self.open_len);
        self.chunks.push(range);
        self.open_start = range.1;
        self.open_len = 0;
        self.recent = Some((self.chunks.len() as u64 - 1, std::mem::take(&mut self.open_blocks)));
        Ok(())
    }
}

fn already_complete() -> io::Error {
    io::Error::other("the snapshot is already complete")
}

/// The chunk ranges' JSON from the trailer of a snapshot file of `len` bytes, and where the
/// chunk bodies end; `None` without a whole trailer.
fn read_trailer(file: &File, len: u64) -> io::Result<Option<(Vec<u8>, u64)>> {
    let Some(tail_at) = len.checked_sub(16) else { return Ok(None) };
    let mut tail = [0u8; 16];
    file.read_exact_at(&mut tail, tail_at)?;
    let (index_len, magic) = tail.split_at(8);
    let index_len = u64::from_le_bytes(index_len.try_into().unwrap_or_default());
    let Some(index_at) = tail_at.checked_sub(index_len).filter(|_| magic == TRAILER_MAGIC) else {
        return Ok(None);
    };
    let mut index = vec![0u8; index_len as usize];
    file.read_exact_at(&mut index, index_at)?;
    Ok(Some((index, index_at)))
}
