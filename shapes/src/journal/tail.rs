//! Reading the journal as another process writes it: a read-serving standby learns from
//! each new frame which shape logs the leader wrote, where, and the bytes themselves.
//!
//! A segment is read through a descriptor kept open, so a segment a checkpoint removes is
//! still read to its end. The writer starts segment `n + 1` only after its last frame in
//! `n`: once `n + 1` exists, `n` is read to its end once more and left. A reader that falls
//! so far behind that a segment it never opened is gone has lost frames ([`Tailed::Lost`]);
//! the logs hold them by then (a checkpoint syncs the logs before removing segments).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{FRAME_HEADER, Records, frame_at, segment_path, segments};

/// Most bytes read per poll: a follower far behind catches up in steps.
const READ_BYTES: usize = 8 * 1024 * 1024;

/// A journal record: `bytes` were written at `at` of the log at `path` (under the data dir).
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub at: u64,
    pub bytes: Bytes,
}

#[derive(Debug)]
pub enum Tailed {
    /// The records of the whole frames written since the last poll, in order.
    Records(Vec<Written>),
    /// Frames were removed before they were read: reopen every log, then go on.
    Lost,
}

pub struct JournalTail {
    data_dir: PathBuf,
    dir: PathBuf,
    seq: u64,
    segment: Option<File>,
    pos: u64,
}

impl JournalTail {
    /// Starts at the oldest segment there is: what it holds may not be in the logs' files
    /// yet, so open the logs after this.
    pub fn start(data_dir: &Path) -> io::Result<JournalTail> {
        let dir = data_dir.join("journal");
        let mut tail = JournalTail { data_dir: data_dir.to_path_buf(), dir, seq: 0, segment: None, pos: 0 };
        tail.restart()?;
        Ok(tail)
    }

    fn restart(&mut self) -> io::Result<()> {
        let oldest = match segments(&self.dir) {
            Ok(found) => found.into_iter().next(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        self.segment = None;
        self.pos = 0;
        if let Some((seq, path)) = oldest {
            self.seq = seq;
            self.segment = open_existing(&path)?;
        }
        Ok(())
    }

    /// Whole frames written since the last poll. A frame being written (or torn, and about
    /// to be written again) waits for the next poll.
    pub fn poll(&mut self) -> io::Result<Tailed> {
        let mut out = Vec::new();
        loop {
            if self.segment.is_none() {
                self.restart()?;
                if self.segment.is_none() {
                    return Ok(Tailed::Records(out));
                }
            }
            let at_end = self.read_frames(&mut out)?;
            if !at_end || out.iter().map(|w| w.bytes.len()).sum::<usize>() >= READ_BYTES {
                return Ok(Tailed::Records(out));
            }
            // Nothing more in this segment: move on once the writer has.
            let next = segment_path(&self.dir, self.seq + 1);
            let Some(file) = open_existing(&next)? else {
                if segments(&self.dir)?.iter().any(|(seq, _)| *seq > self.seq + 1) {
                    self.segment = None;
                    return Ok(Tailed::Lost);
                }
                return Ok(Tailed::Records(out));
            };
            self.read_frames(&mut out)?;
            self.seq += 1;
            self.segment = Some(file);
            self.pos = 0;
        }
    }

    /// Reads the whole frames after `pos`; `true` when it reached the segment's end.
    fn read_frames(&mut self, out: &mut Vec<Written>) -> io::Result<bool> {
        let Some(file) = &self.segment else { return Ok(true) };
        let len = file.metadata()?.len();
        if len <= self.pos {
            return Ok(true);
        }
        // At least the first frame whole, however large (a batch is a few MiB at most).
        let mut header = [0u8; FRAME_HEADER];
        let first = match file.read_exact_at(&mut header, self.pos) {
            Ok(()) => FRAME_HEADER as u64 + u32::from_le_bytes(header[0..4].try_into().unwrap()) as u64,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; (len - self.pos).min(first.max(READ_BYTES as u64)) as usize];
        file.read_exact_at(&mut buf, self.pos)?;
        let buf = Bytes::from(buf);
        let mut used = 0;
        while let Some(body) = frame_at(&buf, used) {
            let body_at = used + FRAME_HEADER;
            for record in Records(body) {
                let Some((rel, at, data)) = record else {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a malformed journal record"));
                };
                let start = data.as_ptr() as usize - buf.as_ptr() as usize;
                out.push(Written { path: self.data_dir.join(rel), at, bytes: buf.slice(start..start + data.len()) });
            }
            used = body_at + body.len();
        }
        self.pos += used as u64;
        Ok(self.pos >= len)
    }
}

fn open_existing(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
