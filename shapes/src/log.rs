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
//! Files in the shape's directory: `snapshot` (chunk bodies back to back), `snapshot.idx`
//! (chunk byte ranges; written last, so its presence marks a complete snapshot) and `log`
//! (records `[len u32][crc u32][tx u64][op u64][message]`; the top bit of `len` marks the
//! last entry of a transaction, so recovery keeps transactions whole).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::watch;

use crate::offset::{LogOffset, Lsn};
use crate::wire::write_sse_event;

const HEADER: usize = 24;
const TXN_END: u32 = 1 << 31;
/// A sparse index entry at least every this many bytes bounds the scan of a read.
const SPARSE_EVERY: u64 = 64 * 1024;

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

/// A position in the written part of a live log.
#[derive(Clone, Copy, Debug)]
pub struct WriteMark {
    len: u64,
    head: LogOffset,
}

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
    /// The messages as Server-Sent Events, built once for every reader sharing this read.
    sse: std::sync::OnceLock<Bytes>,
}

impl LiveRead {
    /// A read that found nothing past the reader's position.
    pub fn nothing_new() -> Self {
        LiveRead { at_end: true, ..LiveRead::default() }
    }

    /// The messages as one `data:` event each, built on first use and then shared (a cheap
    /// clone): a thousand SSE readers of a shape format a transaction once, not a thousand times.
    pub fn sse_events(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let mut out = Vec::with_capacity(self.body.len() + self.messages.len() * 8);
                for &(start, end) in &self.messages {
                    write_sse_event(&mut out, &self.body[start..end]);
                }
                Bytes::from(out)
            })
            .clone()
    }
}

struct Snapshot {
    /// Held only while the snapshot is being written.
    writer: Option<File>,
    /// Byte ranges of finished chunks.
    chunks: Vec<(u64, u64)>,
    complete: bool,
    /// The chunk being written: start position and bytes so far (written or buffered).
    open_start: u64,
    open_len: u64,
    /// The open chunk's newest bytes, not yet written (one write per block, not per row).
    buffered: Vec<u8>,
}

/// Snapshot bytes are written in blocks of this size.
const SNAPSHOT_BLOCK: usize = 256 * 1024;

impl Snapshot {
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
        snapshot_writer(self)?.write_all_at(&self.buffered, pos)?;
        self.buffered.clear();
        Ok(())
    }
}

struct Live {
    /// Kept open between appends while the fan-out caches it (see `release_writer`).
    writer: Option<File>,
    /// Durable (readable) length and head.
    durable_len: u64,
    head: LogOffset,
    /// Written but not yet durable.
    written_len: u64,
    written_head: LogOffset,
    /// Positions where chunks start (the first is 0).
    chunk_starts: Vec<u64>,
    chunk_bytes_so_far: u64,
    /// (offset, position) of some entries, in order.
    sparse: Vec<(LogOffset, u64)>,
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
    read: Weak<LiveRead>,
}

impl std::fmt::Debug for ShapeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapeLog").field("dir", &self.dir).finish()
    }
}

fn crc(tx: u64, op: u64, msg: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&tx.to_le_bytes());
    h.update(&op.to_le_bytes());
    h.update(msg);
    h.finalize()
}

fn offset_parts(o: LogOffset) -> (u64, u64) {
    match o {
        LogOffset::At { tx, op } => (tx, op),
        LogOffset::BeforeAll => (0, 0),
    }
}

impl ShapeLog {
    /// Creates an empty log in a new directory.
    pub fn create(dir: &Path, chunk_bytes: u64) -> io::Result<ShapeLog> {
        fs::create_dir_all(dir)?;
        let open =
            |name: &str| OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.join(name));
        let snapshot = Snapshot {
            writer: Some(open("snapshot")?),
            chunks: Vec::new(),
            complete: false,
            open_start: 0,
            open_len: 0,
            buffered: Vec::new(),
        };
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
        let idx = match fs::read(dir.join("snapshot.idx")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(chunks) = serde_json::from_slice::<Vec<(u64, u64)>>(&idx) else {
            return Ok(None);
        };
        let snap_len = fs::metadata(dir.join("snapshot"))?.len();
        if chunks.last().is_some_and(|(_, end)| *end > snap_len) {
            return Ok(None);
        }
        let snapshot =
            Snapshot { writer: None, chunks, complete: true, open_start: 0, open_len: 0, buffered: Vec::new() };
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
            snapshot_chunks: snapshot.chunks.len() as u64,
            snapshot_complete: snapshot.complete,
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

    /// Appends one snapshot message, closing the chunk when it is full.
    pub fn append_snapshot_row(&self, message: &[u8]) -> io::Result<()> {
        let mut s = self.snapshot.lock().unwrap();
        s.push(message)?;
        if s.open_len >= self.chunk_bytes {
            s.flush()?;
            self.close_snapshot_chunk(&mut s);
        }
        Ok(())
    }

    fn close_snapshot_chunk(&self, s: &mut Snapshot) {
        let range = (s.open_start, s.open_start + s.open_len);
        s.chunks.push(range);
        s.open_start = range.1;
        s.open_len = 0;
        let n = s.chunks.len() as u64;
        self.version.send_modify(|v| v.snapshot_chunks = n);
    }

    /// Ends the snapshot with `final_message` (its `snapshot-end`), makes it durable and
    /// writes the index that marks it complete.
    pub fn finish_snapshot(&self, final_message: &[u8]) -> io::Result<()> {
        let mut s = self.snapshot.lock().unwrap();
        s.push(final_message)?;
        s.flush()?;
        let writer = s.writer.take().ok_or_else(|| io::Error::other("the snapshot is already complete"))?;
        writer.sync_data()?;
        let range = (s.open_start, s.open_start + s.open_len);
        s.chunks.push(range);
        s.open_start = range.1;
        s.open_len = 0;
        write_atomically(&self.dir.join("snapshot.idx"), &serde_json::to_vec(&s.chunks).unwrap_or_default())?;
        s.complete = true;
        let n = s.chunks.len() as u64;
        self.version.send_modify(|v| {
            v.snapshot_chunks = n;
            v.snapshot_complete = true;
        });
        Ok(())
    }

    /// Snapshot chunk `n` as a JSON array body, once it is readable.
    pub fn read_snapshot_chunk(&self, n: u64) -> io::Result<Option<Bytes>> {
        let s = self.snapshot.lock().unwrap();
        let Some(&(start, end)) = s.chunks.get(n as usize) else {
            return Ok(None);
        };
        drop(s);
        let mut buf = vec![0u8; (end - start) as usize + 2];
        buf[0] = b'[';
        let len = buf.len();
        File::open(self.dir.join("snapshot"))?.read_exact_at(&mut buf[1..len - 1], start)?;
        buf[len - 1] = b']';
        Ok(Some(Bytes::from(buf)))
    }

    pub fn snapshot_chunk_count(&self) -> u64 {
        self.snapshot.lock().unwrap().chunks.len() as u64
    }

    // ---- live entries (written by the one fan-out task) ----

    /// Writes whole transactions (each a list of entries) with one write; they stay
    /// invisible until [`ShapeLog::publish`].
    pub fn append(&self, txns: &[Vec<(LogOffset, Vec<u8>)>]) -> io::Result<()> {
        let size: usize = txns.iter().flatten().map(|(_, m)| m.len() + HEADER).sum();
        if size == 0 {
            return Ok(());
        }
        let mut l = self.live.lock().unwrap();
        let mut buf = Vec::with_capacity(size);
        let mut pos = l.written_len;
        for entries in txns {
            for (i, (offset, msg)) in entries.iter().enumerate() {
                let (tx, op) = offset_parts(*offset);
                l.note_entry(*offset, pos, msg.len() as u64 + HEADER as u64, self.chunk_bytes);
                let flag = if i + 1 == entries.len() { TXN_END } else { 0 };
                buf.extend_from_slice(&(msg.len() as u32 | flag).to_le_bytes());
                buf.extend_from_slice(&crc(tx, op, msg).to_le_bytes());
                buf.extend_from_slice(&tx.to_le_bytes());
                buf.extend_from_slice(&op.to_le_bytes());
                buf.extend_from_slice(msg);
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
        l.written_len = pos;
        l.written_head = txns.iter().rev().find_map(|t| t.last()).map(|(o, _)| *o).unwrap_or(l.written_head);
        Ok(())
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

    /// Closes the descriptor kept for appends; the next append reopens it.
    pub fn release_writer(&self) {
        self.live.lock().unwrap().writer = None;
    }

    /// What has been written so far; take it before syncing, publish it after.
    pub fn written_mark(&self) -> WriteMark {
        let l = self.live.lock().unwrap();
        WriteMark { len: l.written_len, head: l.written_head }
    }

    /// Forgets entries written but not yet published (their write or sync failed), so they
    /// can be written again: the next append overwrites them.
    pub fn discard_unpublished(&self) {
        let mut l = self.live.lock().unwrap();
        l.written_len = l.durable_len;
        l.written_head = l.head;
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
        self.read_live_at(after).map(|(read, _)| read)
    }

    /// The read another reader at `after` holds now, if the log has not grown since.
    pub fn shared_live(&self, after: LogOffset) -> Option<Arc<LiveRead>> {
        let durable_len = self.live.lock().unwrap().durable_len;
        let shared = self.shared_read.lock().unwrap();
        shared.as_ref().filter(|s| s.after == after && s.durable_len == durable_len).and_then(|s| s.read.upgrade())
    }

    /// [`ShapeLog::read_live`], shared with the readers at the same position (see
    /// [`ShapeLog::shared_live`]).
    pub fn read_live_shared(&self, after: LogOffset) -> io::Result<Arc<LiveRead>> {
        if let Some(read) = self.shared_live(after) {
            return Ok(read);
        }
        let (read, durable_len) = self.read_live_at(after)?;
        let read = Arc::new(read);
        *self.shared_read.lock().unwrap() = Some(SharedRead { after, durable_len, read: Arc::downgrade(&read) });
        Ok(read)
    }

    /// A live read and the durable length it read up to.
    fn read_live_at(&self, after: LogOffset) -> io::Result<(LiveRead, u64)> {
        let (durable_len, start_pos, chunk_starts) = {
            let l = self.live.lock().unwrap();
            let i = l.sparse.partition_point(|(o, _)| *o <= after);
            let start = if i == 0 { 0 } else { l.sparse[i - 1].1 };
            (l.durable_len, start, l.chunk_starts.clone())
        };
        let mut out = LiveRead::default();
        let mut records = Records::open(&self.dir.join("log"), start_pos, durable_len)?;
        let mut end = durable_len;
        while records.pos < end {
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
        Ok((out, durable_len))
    }

    /// The LSN of the last written live entry, durable or not (0 when none).
    pub fn written_lsn(&self) -> Lsn {
        Lsn(self.live.lock().unwrap().written_head.tx())
    }

    /// Records the live log's index (`log.idx`) so the next open need not scan the log. Valid
    /// only while the log keeps the recorded length, so call it when appends have stopped;
    /// make it durable with [`sync_filesystem`]. A missing, stale or damaged checkpoint only
    /// means a scan.
    pub fn checkpoint(&self) -> io::Result<()> {
        let l = self.live.lock().unwrap();
        let checkpoint = Checkpoint {
            len: l.durable_len,
            head: offset_parts(l.head),
            chunk_starts: l.chunk_starts.clone(),
            chunk_bytes_so_far: l.chunk_bytes_so_far,
            sparse: l.sparse.iter().map(|(o, p)| (offset_parts(*o), *p)).collect(),
        };
        drop(l);
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

/// The live log's index as [`ShapeLog::checkpoint`] stores it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    len: u64,
    head: (u64, u64),
    chunk_starts: Vec<u64>,
    chunk_bytes_so_far: u64,
    sparse: Vec<((u64, u64), u64)>,
}

fn offset_from_parts((tx, op): (u64, u64)) -> LogOffset {
    LogOffset::At { tx, op }
}

impl Live {
    /// The index from `log.idx`, if it describes a log of exactly `file_len` bytes.
    fn from_checkpoint(dir: &Path, file_len: u64) -> Option<Live> {
        let c: Checkpoint = serde_json::from_slice(&fs::read(dir.join("log.idx")).ok()?).ok()?;
        if c.len != file_len {
            return None;
        }
        let head = if c.len == 0 { LogOffset::SNAPSHOT_END } else { offset_from_parts(c.head) };
        Some(Live {
            writer: None,
            durable_len: c.len,
            head,
            written_len: c.len,
            written_head: head,
            chunk_starts: c.chunk_starts,
            chunk_bytes_so_far: c.chunk_bytes_so_far,
            sparse: c.sparse.into_iter().map(|(o, p)| (offset_from_parts(o), p)).collect(),
        })
    }

    fn empty() -> Live {
        Live {
            writer: None,
            durable_len: 0,
            head: LogOffset::SNAPSHOT_END,
            written_len: 0,
            written_head: LogOffset::SNAPSHOT_END,
            chunk_starts: vec![0],
            chunk_bytes_so_far: 0,
            sparse: Vec::new(),
        }
    }

    fn note_entry(&mut self, offset: LogOffset, pos: u64, size: u64, chunk_bytes: u64) {
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
    fn forget_unwritten(&mut self) {
        let len = self.written_len;
        self.sparse.retain(|(_, p)| *p < len);
        self.chunk_starts.retain(|p| *p < len || *p == 0);
        self.chunk_bytes_so_far = len - self.chunk_starts.last().copied().unwrap_or(0);
    }

    /// Scans the file, rebuilding the indexes and cutting a torn tail back to the end of the
    /// last whole transaction.
    fn recover(&mut self, file: &File, chunk_bytes: u64, acknowledged: Lsn) -> io::Result<()> {
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

/// One record header, at byte `pos` of the log.
struct Record {
    pos: u64,
    len: u64,
    crc: u32,
    offset: LogOffset,
    ends_txn: bool,
}

impl Record {
    /// Decodes the header bytes `h` found at `pos` (as `ShapeLog::append` writes them).
    fn parse(pos: u64, h: &[u8; HEADER]) -> Record {
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

/// Sequential, buffered reading of log records between two positions.
struct Records {
    reader: io::BufReader<File>,
    /// Position of the next unread byte.
    pos: u64,
    end: u64,
}

impl Records {
    fn open(path: &Path, start: u64, end: u64) -> io::Result<Records> {
        Records::new(File::open(path)?, start, end)
    }

    fn new(mut file: File, start: u64, end: u64) -> io::Result<Records> {
        file.seek(io::SeekFrom::Start(start))?;
        Ok(Records { reader: io::BufReader::with_capacity(128 * 1024, file), pos: start, end })
    }

    /// The next whole record's header, or `None` at the end or at a record cut short.
    fn next_header(&mut self) -> io::Result<Option<Record>> {
        if self.pos + HEADER as u64 > self.end {
            return Ok(None);
        }
        let mut h = [0u8; HEADER];
        self.reader.read_exact(&mut h)?;
        let record = Record::parse(self.pos, &h);
        self.pos += HEADER as u64;
        if self.pos + record.len > self.end {
            return Ok(None);
        }
        Ok(Some(record))
    }

    fn read_payload(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, len: u64) -> io::Result<()> {
        self.reader.seek_relative(len as i64)?;
        self.pos += len;
        Ok(())
    }
}

fn snapshot_writer(s: &Snapshot) -> io::Result<&File> {
    s.writer.as_ref().ok_or_else(|| io::Error::other("the snapshot is already complete"))
}

/// Writes a small file so that it is either wholly there or absent after a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes every written file on `path`'s filesystem durable with one call (`syncfs`), which
/// is far cheaper than one `fdatasync` per shape log when a batch touches many shapes.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shapes-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn entry(tx: u64, op: u64) -> (LogOffset, Vec<u8>) {
        (LogOffset::At { tx, op }, format!("{{\"m\":\"{tx}_{op}\"}}").into_bytes())
    }

    #[test]
    fn entries_are_invisible_until_published() {
        let dir = tmp("publish");
        let log = ShapeLog::create(&dir, 1 << 20).unwrap();
        log.finish_snapshot(b"{}").unwrap();
        log.append(&[vec![entry(10, 0), entry(10, 2)]]).unwrap();
        assert_eq!(log.read_live(LogOffset::SNAPSHOT_END).unwrap().count, 0);
        log.sync_and_publish().unwrap();
        let r = log.read_live(LogOffset::SNAPSHOT_END).unwrap();
        assert_eq!((r.count, r.at_end), (2, true));
        assert_eq!(r.body, br#"{"m":"10_0"},{"m":"10_2"}"#);
        let r = log.read_live(LogOffset::At { tx: 10, op: 0 }).unwrap();
        assert_eq!(r.body, br#"{"m":"10_2"}"#);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn readers_at_one_position_share_a_read_while_one_holds_it() {
        let dir = tmp("shared");
        let log = ShapeLog::create(&dir, 1 << 20).unwrap();
        log.finish_snapshot(b"{}").unwrap();
        log.append(&[vec![entry(10, 0)]]).unwrap();
        log.sync_and_publish().unwrap();
        let first = log.read_live_shared(LogOffset::SNAPSHOT_END).unwrap();
        let second = log.shared_live(LogOffset::SNAPSHOT_END).expect("shared while held");
        assert!(Arc::ptr_eq(&first, &second));
        assert!(log.shared_live(LogOffset::At { tx: 10, op: 0 }).is_none(), "another position reads its own");
        log.append(&[vec![entry(11, 0)]]).unwrap();
        log.sync_and_publish().unwrap();
        assert!(log.shared_live(LogOffset::SNAPSHOT_END).is_none(), "the log grew: read again");
        assert_eq!(log.read_live_shared(LogOffset::SNAPSHOT_END).unwrap().count, 2);
        drop((first, second));
        assert!(log.shared_live(LogOffset::SNAPSHOT_END).is_none(), "nobody holds it: nothing kept");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn damage_before_the_acknowledged_position_is_refused_a_torn_tail_is_cut() {
        let dir = tmp("damage");
        let log = ShapeLog::create(&dir, 1 << 20).unwrap();
        log.finish_snapshot(b"{}").unwrap();
        log.append(&(10..=50).map(|i| vec![entry(i, 0)]).collect::<Vec<_>>()).unwrap();
        log.sync_and_publish().unwrap();
        drop(log);
        let path = dir.join("log");
        let whole = fs::read(&path).unwrap();
        // A torn last write (the last record cut short, its transaction not acknowledged yet:
        // only unsynced writes tear) is cut back.
        fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let torn = ShapeLog::open_checked(&dir, 1 << 20, Lsn(50)).unwrap().unwrap();
        assert_eq!(torn.version().head, LogOffset::At { tx: 49, op: 0 });
        drop(torn);
        // A flipped byte in the middle, wherever it lands (length, checksum, payload): entries
        // before transaction 30 were acknowledged, so they cannot be torn.
        for at in [whole.len() / 4, whole.len() / 4 + 1, whole.len() / 4 + 9] {
            let mut damaged = whole.clone();
            damaged[at] ^= 0xff;
            fs::write(&path, &damaged).unwrap();
            let Err(refused) = ShapeLog::open_checked(&dir, 1 << 20, Lsn(30)) else {
                panic!("damage at byte {at} was served")
            };
            assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        }
        // Garbage at the very end (a torn write of a later transaction) is cut back.
        let mut tail = whole.clone();
        tail.extend_from_slice(&[0xab; 30]);
        fs::write(&path, &tail).unwrap();
        let cut = ShapeLog::open_checked(&dir, 1 << 20, Lsn(51)).unwrap().unwrap();
        assert_eq!(cut.version().head, LogOffset::At { tx: 50, op: 0 });
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn discarded_unpublished_writes_are_written_again_once() {
        let (a, b) = (tmp("discard-a"), tmp("discard-b"));
        let (retried, straight) = (ShapeLog::create(&a, 64).unwrap(), ShapeLog::create(&b, 64).unwrap());
        for log in [&retried, &straight] {
            log.finish_snapshot(b"{}").unwrap();
            log.append(&(1..=5).map(|i| vec![entry(i, 0)]).collect::<Vec<_>>()).unwrap();
            log.sync_and_publish().unwrap();
        }
        let rest: Vec<_> = (6..=9).map(|i| vec![entry(i, 0), entry(i, 1)]).collect();
        retried.append(&rest).unwrap();
        retried.discard_unpublished();
        assert_eq!(retried.read_live(LogOffset::At { tx: 5, op: 0 }).unwrap().count, 0, "nothing unpublished shows");
        retried.append(&rest).unwrap();
        retried.sync_and_publish().unwrap();
        straight.append(&rest).unwrap();
        straight.sync_and_publish().unwrap();
        // Same entries, same chunk boundaries: read both from the start, chunk by chunk.
        let (mut x, mut y) = (LogOffset::SNAPSHOT_END, LogOffset::SNAPSHOT_END);
        loop {
            let (rx, ry) = (retried.read_live(x).unwrap(), straight.read_live(y).unwrap());
            assert_eq!((rx.count, rx.last, &rx.body), (ry.count, ry.last, &ry.body));
            if rx.count == 0 {
                break;
            }
            (x, y) = (rx.last.unwrap(), ry.last.unwrap());
        }
        fs::remove_dir_all(a).unwrap();
        fs::remove_dir_all(b).unwrap();
    }

    #[test]
    fn a_read_becomes_one_sse_event_per_message() {
        let read =
            LiveRead { body: b"{\"a\":1},{\"b\":2}".to_vec(), messages: vec![(0, 7), (8, 15)], ..LiveRead::default() };
        assert_eq!(&read.sse_events()[..], b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n");
        let mut out = Vec::new();
        write_sse_event(&mut out, b"one\r\ntwo");
        assert_eq!(out, b"data: one\ndata: two\n\n", "a line break in the data continues on a new data line");
    }

    #[test]
    fn chunks_bound_reads_and_survive_reopen() {
        let dir = tmp("chunks");
        let log = ShapeLog::create(&dir, 100).unwrap();
        log.append_snapshot_row(&[b'x'; 60]).unwrap();
        log.append_snapshot_row(&[b'y'; 60]).unwrap();
        log.append_snapshot_row(&[b'z'; 10]).unwrap();
        log.finish_snapshot(b"E").unwrap();
        assert_eq!(log.snapshot_chunk_count(), 2);
        let txns: Vec<_> = (1..=20).map(|i| vec![entry(i, 0)]).collect();
        log.append(&txns).unwrap();
        log.sync_and_publish().unwrap();
        let mut after = LogOffset::SNAPSHOT_END;
        let mut seen = 0;
        loop {
            let r = log.read_live(after).unwrap();
            seen += r.count;
            if r.at_end {
                break;
            }
            assert!(r.count > 0, "a non-final read must advance");
            after = r.last.unwrap();
        }
        assert_eq!(seen, 20);
        drop(log);
        let reopened = ShapeLog::open(&dir, 100).unwrap().unwrap();
        assert_eq!(reopened.version().head, LogOffset::At { tx: 20, op: 0 });
        assert_eq!(reopened.read_snapshot_chunk(1).unwrap().unwrap(), Bytes::from_static(b"[zzzzzzzzzz,E]"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_checkpoint_is_used_only_while_the_log_is_unchanged() {
        let dir = tmp("checkpoint");
        let log = ShapeLog::create(&dir, 100).unwrap();
        log.finish_snapshot(b"E").unwrap();
        let txns: Vec<_> = (1..=30).map(|i| vec![entry(i, 0)]).collect();
        log.append(&txns).unwrap();
        log.sync_and_publish().unwrap();
        log.checkpoint().unwrap();
        let scanned = |log: &ShapeLog| {
            let l = log.live.lock().unwrap();
            (l.durable_len, l.head, l.chunk_starts.clone(), l.sparse.clone())
        };
        let before = scanned(&log);
        drop(log);
        let from_checkpoint = ShapeLog::open(&dir, 100).unwrap().unwrap();
        assert_eq!(scanned(&from_checkpoint), before);
        from_checkpoint.append(&[vec![entry(31, 0)]]).unwrap();
        from_checkpoint.sync_and_publish().unwrap();
        drop(from_checkpoint);
        let rescanned = ShapeLog::open(&dir, 100).unwrap().unwrap();
        assert_eq!(rescanned.version().head, LogOffset::At { tx: 31, op: 0 }, "a stale checkpoint is ignored");
        assert_eq!(
            rescanned.read_live(LogOffset::At { tx: 30, op: 0 }).unwrap().last,
            Some(LogOffset::At { tx: 31, op: 0 })
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_to_the_last_whole_entry() {
        let dir = tmp("torn");
        let log = ShapeLog::create(&dir, 1 << 20).unwrap();
        log.finish_snapshot(b"E").unwrap();
        log.append(&[vec![entry(1, 0)], vec![entry(2, 0), entry(2, 2)]]).unwrap();
        log.sync().unwrap();
        drop(log);
        let f = OpenOptions::new().write(true).open(dir.join("log")).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 3).unwrap();
        let log = ShapeLog::open(&dir, 1 << 20).unwrap().unwrap();
        assert_eq!(log.version().head, LogOffset::At { tx: 1, op: 0 }, "half of transaction 2 is dropped");
        log.append(&[vec![entry(2, 0), entry(2, 2)]]).unwrap();
        log.sync_and_publish().unwrap();
        assert_eq!(log.read_live(LogOffset::SNAPSHOT_END).unwrap().count, 3);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn incomplete_snapshot_means_no_log() {
        let dir = tmp("incomplete");
        let log = ShapeLog::create(&dir, 1 << 20).unwrap();
        log.append_snapshot_row(b"{}").unwrap();
        drop(log);
        assert!(ShapeLog::open(&dir, 1 << 20).unwrap().is_none());
        fs::remove_dir_all(dir).unwrap();
    }
}
