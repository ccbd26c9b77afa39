//! The journal: what makes a fan-out batch durable with one `fdatasync`, however many shape
//! logs it wrote. Each batch appends one frame holding the bytes it wrote to every log and
//! where; the frame is synced, then the logs' new entries may be published and acknowledged.
//! The logs themselves are synced later, in bulk, by a [`Checkpoint`], after which the
//! journal segments that covered them are removed. This is a database's redo log: a batch
//! reaching the 25 members of a project wrote 25 small appends and 25 syncs, each rewriting a
//! 4 KiB page and an ext4 journal commit, on the disk PostgreSQL shares.
//!
//! Files: `<data dir>/journal/<seq>.journal`, each a run of frames `[len u32][crc u32]
//! [records]`; a record is `[path len u16][path][at u64][len u32][bytes]`: `bytes` were
//! written at position `at` of the log at `path` (relative to the data dir).
//!
//! Recovery ([`Journal::open`]) writes every record again at its position, in order, syncs
//! those logs and removes the segments, before any log is opened: a log whose unsynced tail
//! was lost in a power cut gets it back byte for byte. A torn last frame (a batch whose sync
//! never finished, so never acknowledged) is ignored; a record whose shape was deleted is
//! skipped.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::durable::sync_filesystem;

pub mod tail;

/// A segment is sealed (and a checkpoint may follow) past this size...
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// ...or this long after its first frame: the kernel has written most pages back by then, so
/// the checkpoint's syncs find little left to do, and recovery replays little.
const SEGMENT_AGE: Duration = Duration::from_secs(30);
/// A checkpoint syncs up to this many logs one by one, more with one `syncfs`.
const SYNC_EACH_UP_TO: usize = 4096;
const FRAME_HEADER: usize = 8;

pub struct Journal {
    data_dir: PathBuf,
    dir: PathBuf,
    segment: File,
    seq: u64,
    len: u64,
    first_frame: Option<Instant>,
    /// Logs written while the current segment was current, hashed as raw text (`Path`'s own
    /// comparisons walk components: a hot spot at thousands of records per second).
    written: HashSet<OsString>,
    /// The frame being built.
    frame: Vec<u8>,
    /// Sealed segments and their logs not yet synced (a checkpoint failed): the next takes them.
    unsynced: Option<Checkpoint>,
}

/// Sealed segments, and the logs written while they were current: once the logs are synced
/// the segments are not needed.
#[derive(Debug, Default)]
pub struct Checkpoint {
    data_dir: PathBuf,
    logs: HashSet<OsString>,
    segments: Vec<PathBuf>,
}

/// What recovery found in the journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub frames: usize,
    /// Records written again into their logs.
    pub records: usize,
    /// Records of logs that no longer exist (their shape was deleted).
    pub skipped: usize,
    /// Segments that ended in a torn frame.
    pub torn: usize,
}

impl Journal {
    /// Replays what an earlier process left in `<data_dir>/journal` into the logs, makes them
    /// durable, and starts an empty journal. Call before any shape log is opened.
    pub fn open(data_dir: &Path) -> io::Result<(Journal, Replayed)> {
        let dir = data_dir.join("journal");
        fs::create_dir_all(&dir)?;
        let segments = segments(&dir)?;
        let mut replayed = Replayed::default();
        let mut logs = HashSet::new();
        for (_, path) in &segments {
            replay_segment(data_dir, path, &mut logs, &mut replayed)?;
        }
        let next = segments.last().map_or(0, |(seq, _)| seq + 1);
        let checkpoint = Checkpoint {
            data_dir: data_dir.to_path_buf(),
            logs,
            segments: segments.into_iter().map(|(_, p)| p).collect(),
        };
        checkpoint.run()?;
        let segment = create_segment(&dir, next)?;
        let journal = Journal {
            data_dir: data_dir.to_path_buf(),
            dir,
            segment,
            seq: next,
            len: 0,
            first_frame: None,
            written: HashSet::new(),
            frame: Vec::new(),
            unsynced: None,
        };
        Ok((journal, replayed))
    }

    /// Adds to the frame being built: `bytes` were written at `at` of the log `log`.
    pub fn record(&mut self, log: &Path, at: u64, bytes: &[u8]) {
        // Shape logs live under the data dir, named by handles: plain relative text.
        let full = log.as_os_str().as_bytes();
        let rel =
            full.strip_prefix(self.data_dir.as_os_str().as_bytes()).and_then(|r| r.strip_prefix(b"/")).unwrap_or(full);
        if self.frame.is_empty() {
            self.frame.extend_from_slice(&[0; FRAME_HEADER]);
        }
        self.frame.extend_from_slice(&(rel.len() as u16).to_le_bytes());
        self.frame.extend_from_slice(rel);
        self.frame.extend_from_slice(&at.to_le_bytes());
        self.frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.frame.extend_from_slice(bytes);
        if !self.written.contains(log.as_os_str()) {
            self.written.insert(log.as_os_str().to_owned());
        }
    }

    /// Writes the frame and syncs it: from then on its records survive a crash. On an error
    /// the frame is dropped (the caller writes its batch again, recording it anew).
    pub fn commit(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let mut frame = std::mem::take(&mut self.frame);
        let body_len = (frame.len() - FRAME_HEADER) as u32;
        let crc = crc32fast::hash(&frame[FRAME_HEADER..]);
        frame[0..4].copy_from_slice(&body_len.to_le_bytes());
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self.segment.write_all_at(&frame, self.len).and_then(|()| self.segment.sync_data());
        if let Err(e) = written {
            // A frame that may be half there is cut off, so the next one follows whole ones.
            let _ = self.segment.set_len(self.len);
            return Err(e);
        }
        self.len += frame.len() as u64;
        self.first_frame.get_or_insert_with(Instant::now);
        frame.clear();
        self.frame = frame;
        Ok(())
    }

    /// Drops the frame being built (its batch will be written again).
    pub fn discard_frame(&mut self) {
        self.frame.clear();
    }

    /// When the current segment is due, seals it and starts the next: the checkpoint returned
    /// (with any that failed before) syncs the logs it covered, then removes it.
    pub fn seal_if_due(&mut self) -> io::Result<Option<Checkpoint>> {
        let due = self.len >= SEGMENT_BYTES || self.first_frame.is_some_and(|t| t.elapsed() >= SEGMENT_AGE);
        if !due {
            return Ok(None);
        }
        let next = create_segment(&self.dir, self.seq + 1)?;
        let sealed = segment_path(&self.dir, self.seq);
        self.segment = next;
        self.seq += 1;
        self.len = 0;
        self.first_frame = None;
        let mut checkpoint = self.unsynced.take().unwrap_or_else(|| Checkpoint::empty(&self.data_dir));
        checkpoint.logs.extend(self.written.drain());
        checkpoint.segments.push(sealed);
        Ok(Some(checkpoint))
    }

    /// A checkpoint that failed: the next one syncs its logs and removes its segments too.
    pub fn retry_later(&mut self, mut failed: Checkpoint) {
        if let Some(mut pending) = self.unsynced.take() {
            failed.logs.extend(pending.logs.drain());
            failed.segments.append(&mut pending.segments);
        }
        self.unsynced = Some(failed);
    }
}

impl Checkpoint {
    fn empty(data_dir: &Path) -> Checkpoint {
        Checkpoint { data_dir: data_dir.to_path_buf(), ..Checkpoint::default() }
    }

    /// Syncs the logs (one by one, or the whole filesystem when there are many), then removes
    /// the segments. A log deleted meanwhile needs nothing.
    pub fn run(&self) -> io::Result<()> {
        if self.segments.is_empty() {
            return Ok(());
        }
        if self.logs.len() <= SYNC_EACH_UP_TO {
            for log in &self.logs {
                match File::open(log) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        } else {
            sync_filesystem(&self.data_dir)?;
        }
        for segment in &self.segments {
            match fs::remove_file(segment) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if let Some(dir) = self.segments[0].parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.journal"))
}

/// A new empty segment, its directory entry durable (recovery must find it).
fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(segment_path(dir, seq))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".journal"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

fn replay_segment(data_dir: &Path, path: &Path, logs: &mut HashSet<OsString>, out: &mut Replayed) -> io::Result<()> {
    let bytes = fs::read(path)?;
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(body) = frame_at(&bytes, pos) else {
            out.torn += 1;
            break;
        };
        for record in Records(body) {
            let Some((rel, at, data)) = record else {
                // The frame's checksum held, so its records do: this is not our format.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: a malformed record", path.display()),
                ));
            };
            let log = data_dir.join(rel);
            match OpenOptions::new().write(true).open(&log) {
                Ok(f) => {
                    f.write_all_at(data, at)?;
                    logs.insert(log.into_os_string());
                    out.records += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => out.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        out.frames += 1;
        pos += FRAME_HEADER + body.len();
    }
    Ok(())
}

/// The body of the whole frame at `pos`, if there is one.
fn frame_at(bytes: &[u8], pos: usize) -> Option<&[u8]> {
    let header = bytes.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let body = bytes.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len)?;
    (len > 0 && crc32fast::hash(body) == crc).then_some(body)
}

/// A frame's records: `None` for one that does not parse.
struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = Option<(&'a Path, u64, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let parsed = parse_record(self.0);
        match parsed {
            Some((record, rest)) => {
                self.0 = rest;
                Some(Some(record))
            }
            None => {
                self.0 = &[];
                Some(None)
            }
        }
    }
}

type Record<'a> = (&'a Path, u64, &'a [u8]);

fn parse_record(b: &[u8]) -> Option<(Record<'_>, &[u8])> {
    let (len, b) = b.split_at_checked(2)?;
    let (rel, b) = b.split_at_checked(u16::from_le_bytes(len.try_into().ok()?) as usize)?;
    let (at, b) = b.split_at_checked(8)?;
    let (len, b) = b.split_at_checked(4)?;
    let (data, rest) = b.split_at_checked(u32::from_le_bytes(len.try_into().ok()?) as usize)?;
    // Written by `record` from a path under the data dir; never absolute or climbing out.
    let rel = Path::new(std::str::from_utf8(rel).ok()?);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return None;
    }
    Some(((rel, u64::from_le_bytes(at.try_into().ok()?), data), rest))
}

#[cfg(test)]
mod tests;
