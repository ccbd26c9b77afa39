//! The durable shape log: a shape's snapshot chunks, then its live changes, stored as the
//! exact message bytes clients receive.
//!
//! Invariant: readers see live entries only once they are durable ([`ShapeLog::publish`]
//! runs after the data is synced), and a torn tail found at open is cut back to the last
//! whole entry.
//!
//! Files are opened per operation, not held: an idle shape costs no file descriptor, so
//! tens of thousands of shapes fit under ordinary limits.
//!
//! Files in the shape's directory: `snapshot` (chunk bodies back to back, then a trailer
//! with their byte ranges, written last, so its presence marks a complete snapshot) and `log`
//! (records `[len u32][crc u32][tx u64][op u64][message]`; the top bit of `len` marks the
//! last entry of a transaction, so recovery keeps transactions whole).
//!
//! Modules: `record` (the entry format), `live` (the live log's index and reads),
//! `recovery` (scanning a log after a crash), `snapshot` (the snapshot chunks), `follow`
//! (a read-only view of a log another process writes).

mod block_writer;
mod follow;
mod live;
mod record;
mod recovery;
mod snapshot;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::watch;

pub use self::follow::Followed;
use self::live::Live;
pub use self::live::LiveRead;
use self::record::{HEADER, Records};
use self::snapshot::Snapshot;
use crate::offset::{LogOffset, Lsn};

/// The largest append kept in memory for the readers it wakes ([`live::Recent`]).
const RECENT_BYTES: usize = 64 * 1024;

/// What readers wait on: any change to it may mean new data or a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogVersion {
    /// Snapshot chunks readable so far.
    pub snapshot_chunks: u64,
    pub snapshot_complete: bool,
    /// The last durable live entry (`0_inf` when there is none).
    pub head: LogOffset,
    /// The shape was rotated or deleted: readers must answer 409.
    pub gone: bool,
}

/// Bytes [`ShapeLog::append`] wrote, and the position in the live log it wrote them at.
#[derive(Debug, Default)]
pub struct Appended {
    pub at: u64,
    pub bytes: Bytes,
}

/// A position in the written part of a live log.
#[derive(Clone, Copy, Debug)]
pub struct WriteMark {
    len: u64,
    head: LogOffset,
}

/// A snapshot chunk's body, `[` messages `]`, in parts: a chunk served from memory is
/// the blocks it was written in, never copied into one buffer.
#[derive(Debug)]
pub struct SnapshotChunk {
    parts: Vec<Bytes>,
}

impl SnapshotChunk {
    fn around(messages: Vec<Bytes>) -> SnapshotChunk {
        let mut parts = Vec::with_capacity(messages.len() + 2);
        parts.push(Bytes::from_static(b"["));
        parts.extend(messages);
        parts.push(Bytes::from_static(b"]"));
        SnapshotChunk { parts }
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }
}

/// Appends a snapshot's rows under its lock; see [`ShapeLog::snapshot_rows`].
pub struct SnapshotRows<'a> {
    log: &'a ShapeLog,
    snapshot: std::sync::MutexGuard<'a, Snapshot>,
    /// Chunks closed before this writer was taken.
    before: u64,
}

impl SnapshotRows<'_> {
    /// Appends one message, which `encode` writes at the end of the buffer it is given (so
    /// headers that end a message can be extended in place).
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        self.snapshot.push_row(encode, self.log.chunk_bytes)
    }
}

impl Drop for SnapshotRows<'_> {
    fn drop(&mut self) {
        let n = self.snapshot.chunk_count();
        if n != self.before {
            self.log.version.send_modify(|v| v.snapshot_chunks = n);
        }
    }
}

pub struct ShapeLog {
    dir: PathBuf,
    chunk_bytes: u64,
    snapshot: Mutex<Snapshot>,
    live: Mutex<Live>,
    version: watch::Sender<LogVersion>,
    /// The latest live read, while a reader still holds it: the subscribers of one shape
    /// wake together at the same position, and share one file read. Weak, so an idle shape
    /// keeps no body in memory.
    shared_read: Mutex<Option<SharedRead>>,
}

struct SharedRead {
    after: LogOffset,
    durable_len: u64,
    max_bytes: u64,
    read: Weak<LiveRead>,
}

impl std::fmt::Debug for ShapeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapeLog").field("dir", &self.dir).finish()
    }
}

impl ShapeLog {
    /// Creates an empty log in a new directory.
    pub fn create(dir: &Path, chunk_bytes: u64) -> io::Result<ShapeLog> {
        fs::create_dir_all(dir)?;
        let open =
            |name: &str| OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.join(name));
        let snapshot = Snapshot::writing(open("snapshot")?);
        open("log")?;
        let live = Live::empty();
        Ok(Self::assemble(dir, chunk_bytes, snapshot, live))
    }

    /// Opens an existing log. Returns `Ok(None)` when its snapshot never completed (the shape
    /// must be discarded). A torn or corrupt tail of the live log is truncated.
    pub fn open(dir: &Path, chunk_bytes: u64) -> io::Result<Option<ShapeLog>> {
        ShapeLog::open_checked(dir, chunk_bytes, Lsn(0))
    }

    /// [`ShapeLog::open`], refusing (`InvalidData`) a log whose unreadable part held entries
    /// of transactions before `acknowledged`: those were durable and acknowledged, so the
    /// damage is not a torn last write, and serving the rest would hide a gap.
    pub fn open_checked(dir: &Path, chunk_bytes: u64, acknowledged: Lsn) -> io::Result<Option<ShapeLog>> {
        let Some(snapshot) = Snapshot::load(dir)? else {
            return Ok(None);
        };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("log"))?;
        let live = match Live::from_checkpoint(dir, file.metadata()?.len()) {
            Some(live) => live,
            None => {
                let mut live = Live::empty();
                live.recover(&file, chunk_bytes, acknowledged)?;
                live
            }
        };
        Ok(Some(Self::assemble(dir, chunk_bytes, snapshot, live)))
    }

    fn assemble(dir: &Path, chunk_bytes: u64, snapshot: Snapshot, live: Live) -> ShapeLog {
        let version = LogVersion {
            snapshot_chunks: snapshot.chunk_count(),
            snapshot_complete: snapshot.is_complete(),
            head: live.head,
            gone: false,
        };
        ShapeLog {
            dir: dir.to_path_buf(),
            chunk_bytes: chunk_bytes.max(1),
            snapshot: Mutex::new(snapshot),
            live: Mutex::new(live),
            version: watch::channel(version).0,
            shared_read: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn subscribe(&self) -> watch::Receiver<LogVersion> {
        self.version.subscribe()
    }

    pub fn version(&self) -> LogVersion {
        *self.version.borrow()
    }

    /// Marks the log rotated; waiting readers wake and answer 409.
    pub fn mark_gone(&self) {
        self.version.send_modify(|v| v.gone = true);
    }

    // ---- snapshot (written by one snapshot task) ----

    /// The snapshot's writer, holding its lock: a block of rows is appended under one lock,
    /// each encoded straight into the log's buffer. Readers learn of chunks it closed when
    /// it is dropped.
    pub fn snapshot_rows(&self) -> SnapshotRows<'_> {
        let snapshot = self.snapshot.lock().unwrap();
        let before = snapshot.chunk_count();
        SnapshotRows { log: self, snapshot, before }
    }

    /// Ends the snapshot with `final_message` (its `snapshot-end`). Nothing is synced and
    /// readers see no change: the caller makes the files durable (one filesystem sync for a
    /// batch of logs), then calls [`ShapeLog::commit_snapshot`].
    pub fn seal_snapshot(&self, final_message: &[u8]) -> io::Result<()> {
        self.snapshot.lock().unwrap().seal(final_message)
    }

    /// Marks the sealed, synced snapshot complete on disk; once that is synced too,
    /// [`ShapeLog::publish_snapshot`] shows it to readers.
    pub fn commit_snapshot(&self) -> io::Result<()> {
        self.snapshot.lock().unwrap().commit()
    }

    /// Shows the complete snapshot to readers.
    pub fn publish_snapshot(&self) {
        let n = self.snapshot.lock().unwrap().chunk_count();
        self.version.send_modify(|v| {
            v.snapshot_chunks = n;
            v.snapshot_complete = true;
        });
    }

    /// The three steps above for this log alone.
    #[cfg(test)]
    pub(crate) fn finish_snapshot(&self, final_message: &[u8]) -> io::Result<()> {
        self.seal_snapshot(final_message)?;
        crate::durable::sync_filesystem(&self.dir)?;
        self.commit_snapshot()?;
        crate::durable::sync_filesystem(&self.dir)?;
        self.publish_snapshot();
        Ok(())
    }

    /// Snapshot chunk `n` as a JSON array body, once it is readable.
    pub fn read_snapshot_chunk(&self, n: u64) -> io::Result<Option<SnapshotChunk>> {
        let (start, end) = match self.snapshot.lock().unwrap().chunk(n) {
            None => return Ok(None),
            Some(Ok(blocks)) => return Ok(Some(SnapshotChunk::around(blocks))),
            Some(Err(range)) => range,
        };
        let len = (end - start) as usize;
        let mut buf = Vec::with_capacity(len);
        // Read into the buffer's spare capacity: zeroing a whole chunk first cost as much.
        let mut file = File::open(self.dir.join("snapshot"))?;
        file.seek(io::SeekFrom::Start(start))?;
        file.take(len as u64).read_to_end(&mut buf)?;
        if buf.len() != len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the snapshot file ends inside a chunk"));
        }
        Ok(Some(SnapshotChunk::around(vec![Bytes::from(buf)])))
    }

    pub fn snapshot_chunk_count(&self) -> u64 {
        self.snapshot.lock().unwrap().chunk_count()
    }

    // ---- live entries (written by the one fan-out task) ----

    /// Writes whole transactions (each a list of entries) with one write; they stay
    /// invisible until [`ShapeLog::publish`]. Returns what was written where, for the
    /// [`crate::journal::Journal`].
    pub fn append(&self, txns: &[Vec<(LogOffset, Vec<u8>)>]) -> io::Result<Appended> {
        self.append_with(txns, true)
    }

    /// [`ShapeLog::append`], where the last transaction ends only if `last_ends_txn`: a
    /// transaction written in parts (larger than the fan-out holds at once) ends with its
    /// last part. Until then recovery cuts its entries back, and [`ShapeLog::rewind`] can.
    pub fn append_with(&self, txns: &[Vec<(LogOffset, Vec<u8>)>], last_ends_txn: bool) -> io::Result<Appended> {
        let size: usize = txns.iter().flatten().map(|(_, m)| m.len() + HEADER).sum();
        if size == 0 {
            return Ok(Appended::default());
        }
        let mut l = self.live.lock().unwrap();
        let mut buf = Vec::with_capacity(size);
        let mut pos = l.written_len;
        for (t, entries) in txns.iter().enumerate() {
            let ends = last_ends_txn || t + 1 < txns.len();
            for (i, (offset, msg)) in entries.iter().enumerate() {
                l.note_entry(*offset, pos, msg.len() as u64 + HEADER as u64, self.chunk_bytes);
                record::encode(&mut buf, *offset, msg, ends && i + 1 == entries.len());
                pos += (msg.len() + HEADER) as u64;
            }
        }
        let at = l.written_len;
        if l.writer.is_none() {
            l.writer = Some(OpenOptions::new().write(true).open(self.dir.join("log"))?);
        }
        let written = l.writer.as_ref().map_or(Ok(()), |f| f.write_all_at(&buf, at));
        if let Err(e) = written {
            // Forget the partial write: the next append overwrites it.
            l.forget_unwritten();
            return Err(e);
        }
        let bytes = Bytes::from(buf);
        // A large append (a bulk load) is read from the file: memory stays small per shape.
        l.recent = (bytes.len() <= RECENT_BYTES).then(|| live::Recent {
            at,
            prior_head: l.written_head,
            bytes: bytes.clone(),
        });
        l.written_len = pos;
        l.written_head = txns.iter().rev().find_map(|t| t.last()).map(|(o, _)| *o).unwrap_or(l.written_head);
        Ok(Appended { at, bytes })
    }

    /// The live log's file (what [`Appended`] positions refer to).
    pub fn live_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Forces written entries to disk.
    pub fn sync(&self) -> io::Result<()> {
        let l = self.live.lock().unwrap();
        if l.written_len == l.durable_len {
            return Ok(());
        }
        // fdatasync flushes the file's data whichever descriptor wrote it.
        match &l.writer {
            Some(f) => f.sync_data(),
            None => File::open(self.dir.join("log"))?.sync_data(),
        }
    }

    /// Syncs the snapshot file and, unless `snapshot_only`, the log file and the directory
    /// entries naming them and the log's directory: for a log made durable alone, without a
    /// filesystem sync.
    pub fn sync_files(&self, snapshot_only: bool) -> io::Result<()> {
        File::open(self.dir.join("snapshot"))?.sync_data()?;
        if snapshot_only {
            return Ok(());
        }
        File::open(self.dir.join("log"))?.sync_data()?;
        crate::durable::sync_dir_and_parent(&self.dir)
    }

    /// Closes the descriptor kept for appends; the next append reopens it.
    pub fn release_writer(&self) {
        self.live.lock().unwrap().writer = None;
    }

    /// What has been written so far; take it before syncing, publish it after.
    pub fn written_mark(&self) -> WriteMark {
        let l = self.live.lock().unwrap();
        WriteMark { len: l.written_len, head: l.written_head }
    }

    /// Forgets entries written after `mark` (a [`ShapeLog::written_mark`] taken before
    /// them) and not yet published: the next append overwrites them.
    pub fn rewind(&self, mark: WriteMark) {
        let mut l = self.live.lock().unwrap();
        if mark.len < l.durable_len {
            return;
        }
        l.written_len = mark.len;
        l.written_head = mark.head;
        l.forget_unwritten();
    }

    /// Makes entries up to `mark` visible. Call only once they are durable.
    pub fn publish(&self, mark: WriteMark) {
        let mut l = self.live.lock().unwrap();
        if mark.len <= l.durable_len {
            return;
        }
        l.durable_len = mark.len;
        l.head = mark.head;
        drop(l);
        self.version.send_modify(|v| v.head = mark.head);
    }

    /// Syncs and publishes everything written so far.
    pub fn sync_and_publish(&self) -> io::Result<()> {
        let mark = self.written_mark();
        self.sync()?;
        self.publish(mark);
        Ok(())
    }

    /// Reads durable live entries after `after` up to the end of that entry's chunk.
    pub fn read_live(&self, after: LogOffset) -> io::Result<LiveRead> {
        self.read_live_at(after, u64::MAX).map(|(read, _)| read)
    }

    /// The read another reader at `after` (reading up to `max_bytes`) holds now, if the log
    /// has not grown since.
    pub fn shared_live(&self, after: LogOffset, max_bytes: u64) -> Option<Arc<LiveRead>> {
        let durable_len = self.live.lock().unwrap().durable_len;
        let shared = self.shared_read.lock().unwrap();
        let same = |s: &&SharedRead| s.after == after && s.durable_len == durable_len && s.max_bytes == max_bytes;
        shared.as_ref().filter(same).and_then(|s| s.read.upgrade())
    }

    /// [`ShapeLog::read_live`], stopping at the first whole message past `max_bytes` (a
    /// stream reading a backlog holds a little at a time), and shared with the readers at
    /// the same position (see [`ShapeLog::shared_live`]).
    pub fn read_live_shared(&self, after: LogOffset, max_bytes: u64) -> io::Result<Arc<LiveRead>> {
        if let Some(read) = self.read_live_in_memory(after, max_bytes) {
            return Ok(read);
        }
        let (read, durable_len) = self.read_live_at(after, max_bytes)?;
        Ok(self.share(after, durable_len, max_bytes, read))
    }

    /// [`ShapeLog::read_live_shared`] when it needs no disk: another reader's read, or the
    /// last append's bytes (a reader at the head before it, as live subscribers are).
    pub fn read_live_in_memory(&self, after: LogOffset, max_bytes: u64) -> Option<Arc<LiveRead>> {
        if let Some(read) = self.shared_live(after, max_bytes) {
            return Some(read);
        }
        let plan = self.plan_read(after);
        let records = Records::in_memory(plan.recent.clone()?, plan.start);
        let read = collect_live(records, after, &plan, max_bytes);
        read.ok().map(|read| self.share(after, plan.durable_len, max_bytes, read))
    }

    fn share(&self, after: LogOffset, durable_len: u64, max_bytes: u64, read: LiveRead) -> Arc<LiveRead> {
        let read = Arc::new(read);
        let shared = SharedRead { after, durable_len, max_bytes, read: Arc::downgrade(&read) };
        *self.shared_read.lock().unwrap() = Some(shared);
        read
    }

    /// Where a read after `after` starts, and whether memory holds all it reads.
    fn plan_read(&self, after: LogOffset) -> ReadPlan {
        let l = self.live.lock().unwrap();
        let recent = l.recent.as_ref().filter(|r| {
            // Published whole and nothing after it; everything before it is at or before `after`.
            r.prior_head <= after && r.at + r.bytes.len() as u64 == l.durable_len
        });
        if let Some(r) = recent {
            let (start, recent) = (r.at, Some(r.bytes.clone()));
            return ReadPlan { durable_len: l.durable_len, start, chunk_starts: l.chunk_starts.clone(), recent };
        }
        let i = l.sparse.partition_point(|(o, _)| *o <= after);
        let start = if i == 0 { 0 } else { l.sparse[i - 1].1 };
        ReadPlan { durable_len: l.durable_len, start, chunk_starts: l.chunk_starts.clone(), recent: None }
    }

    /// A live read and the durable length it read up to.
    fn read_live_at(&self, after: LogOffset, max_bytes: u64) -> io::Result<(LiveRead, u64)> {
        let plan = self.plan_read(after);
        let records = match &plan.recent {
            Some(bytes) => Records::in_memory(bytes.clone(), plan.start),
            None => Records::open(&self.dir.join("log"), plan.start, plan.durable_len)?,
        };
        Ok((collect_live(records, after, &plan, max_bytes)?, plan.durable_len))
    }
}

struct ReadPlan {
    durable_len: u64,
    start: u64,
    chunk_starts: Vec<u64>,
    /// The bytes from `start` to `durable_len`, when memory holds them.
    recent: Option<Bytes>,
}

/// The entries after `after` from `records`, up to the end of the chunk holding the first,
/// or the first whole entry past `max_bytes`.
fn collect_live(mut records: Records, after: LogOffset, plan: &ReadPlan, max_bytes: u64) -> io::Result<LiveRead> {
    let (durable_len, chunk_starts) = (plan.durable_len, &plan.chunk_starts);
    let mut out = LiveRead::default();
    let mut end = durable_len;
    while records.pos < end && (out.body.len() as u64) < max_bytes {
        let Some(r) = records.next_header()? else { break };
        if r.offset <= after {
            records.skip(r.len)?;
            continue;
        }
        if out.count == 0 {
            // The chunk holding the first returned entry bounds the response.
            let c = chunk_starts.partition_point(|s| *s <= r.pos);
            if let Some(&boundary) = chunk_starts.get(c) {
                end = end.min(boundary);
            }
        } else {
            out.body.push(b',');
        }
        let at = out.body.len();
        out.body.resize(at + r.len as usize, 0);
        records.read_payload(&mut out.body[at..])?;
        out.messages.push((at, out.body.len()));
        out.count += 1;
        out.last = Some(r.offset);
    }
    out.at_end = records.pos >= durable_len;
    Ok(out)
}

impl ShapeLog {
    /// The LSN of the last written live entry, durable or not (0 when none).
    pub fn written_lsn(&self) -> Lsn {
        Lsn(self.live.lock().unwrap().written_head.tx())
    }

    /// Records the live log's index (`log.idx`) so the next open need not scan the log. Valid
    /// only while the log keeps the recorded length, so call it when appends have stopped;
    /// make it durable with [`sync_filesystem`]. A missing, stale or damaged checkpoint only
    /// means a scan.
    pub fn checkpoint(&self) -> io::Result<()> {
        let checkpoint = self.live.lock().unwrap().checkpoint();
        let tmp = self.dir.join("log.idx.tmp");
        fs::write(&tmp, serde_json::to_vec(&checkpoint).map_err(io::Error::other)?)?;
        fs::rename(tmp, self.dir.join("log.idx"))
    }

    /// Removes the log's files.
    pub fn destroy(&self) -> io::Result<()> {
        self.mark_gone();
        self.release_writer();
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
