//! The live log's entry format: `[len u32][crc u32][tx u64][op u64][message]`, the top bit of
//! `len` marking the last entry of a transaction.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

use bytes::Bytes;

use crate::offset::LogOffset;

pub(super) const HEADER: usize = 24;
const TXN_END: u32 = 1 << 31;

pub(super) fn crc(tx: u64, op: u64, msg: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&tx.to_le_bytes());
    h.update(&op.to_le_bytes());
    h.update(msg);
    h.finalize()
}

pub(super) fn offset_parts(o: LogOffset) -> (u64, u64) {
    match o {
        LogOffset::At { tx, op } => (tx, op),
        LogOffset::BeforeAll => (0, 0),
    }
}

pub(super) fn offset_from_parts((tx, op): (u64, u64)) -> LogOffset {
    LogOffset::At { tx, op }
}

/// Appends one entry to `buf` as [`Records`] reads it back.
pub(super) fn encode(buf: &mut Vec<u8>, offset: LogOffset, msg: &[u8], ends_txn: bool) {
    let (tx, op) = offset_parts(offset);
    let flag = if ends_txn { TXN_END } else { 0 };
    buf.extend_from_slice(&(msg.len() as u32 | flag).to_le_bytes());
    buf.extend_from_slice(&crc(tx, op, msg).to_le_bytes());
    buf.extend_from_slice(&tx.to_le_bytes());
    buf.extend_from_slice(&op.to_le_bytes());
    buf.extend_from_slice(msg);
}

/// One record header, at byte `pos` of the log.
pub(super) struct Record {
    pub(super) pos: u64,
    pub(super) len: u64,
    pub(super) crc: u32,
    pub(super) offset: LogOffset,
    pub(super) ends_txn: bool,
}

impl Record {
    /// Decodes the header bytes `h` found at `pos` (as [`encode`] writes them).
    pub(super) fn parse(pos: u64, h: &[u8; HEADER]) -> Record {
        let raw_len = u32::from_le_bytes(h[0..4].try_into().unwrap());
        Record {
            pos,
            len: (raw_len & !TXN_END) as u64,
            crc: u32::from_le_bytes(h[4..8].try_into().unwrap()),
            offset: LogOffset::At {
                tx: u64::from_le_bytes(h[8..16].try_into().unwrap()),
                op: u64::from_le_bytes(h[16..24].try_into().unwrap()),
            },
            ends_txn: raw_len & TXN_END != 0,
        }
    }
}

/// Sequential reading of log records between two positions, from the file (buffered) or
/// from bytes of it held in memory.
pub(super) struct Records {
    source: Source,
    /// Position of the next unread byte.
    pub(super) pos: u64,
    end: u64,
}

enum Source {
    File(io::BufReader<File>),
    Memory(io::Cursor<Bytes>),
}

impl Records {
    pub(super) fn open(path: &Path, start: u64, end: u64) -> io::Result<Records> {
        Records::new(File::open(path)?, start, end)
    }

    pub(super) fn new(mut file: File, start: u64, end: u64) -> io::Result<Records> {
        file.seek(io::SeekFrom::Start(start))?;
        Ok(Records { source: Source::File(io::BufReader::with_capacity(128 * 1024, file)), pos: start, end })
    }

    /// The records in `bytes`, which sit at position `start` of the log.
    pub(super) fn in_memory(bytes: Bytes, start: u64) -> Records {
        let end = start + bytes.len() as u64;
        Records { source: Source::Memory(io::Cursor::new(bytes)), pos: start, end }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match &mut self.source {
            Source::File(f) => f.read_exact(buf),
            Source::Memory(m) => m.read_exact(buf),
        }
    }

    /// The next whole record's header, or `None` at the end or at a record cut short.
    pub(super) fn next_header(&mut self) -> io::Result<Option<Record>> {
        if self.pos + HEADER as u64 > self.end {
            return Ok(None);
        }
        let mut h = [0u8; HEADER];
        self.read_exact(&mut h)?;
        let record = Record::parse(self.pos, &h);
        self.pos += HEADER as u64;
        if self.pos + record.len > self.end {
            return Ok(None);
        }
        Ok(Some(record))
    }

    pub(super) fn read_payload(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    pub(super) fn skip(&mut self, len: u64) -> io::Result<()> {
        match &mut self.source {
            Source::File(f) => f.seek_relative(len as i64)?,
            Source::Memory(m) => m.set_position(m.position() + len),
        }
        self.pos += len;
        Ok(())
    }
}
