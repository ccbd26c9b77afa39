//! Writes a large snapshot's blocks on a thread of its own, so the encoder filling them never
//! waits for the disk. A write into the page cache is cheap, but not while writeback runs on
//! the same file: with the early syncs (below) the encoder's writes stalled behind them, and
//! the snapshot query with it. The writer starts a sync every [`EARLY_SYNC_BYTES`] so the
//! disk works alongside the encoder and the final sync has little left to wait for (as
//! PostgreSQL's `backend_flush_after` starts writeback early).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

/// Written bytes after which the writer syncs the file.
const EARLY_SYNC_BYTES: u64 = 4 << 20;

pub(super) struct BlockWriter {
    blocks: Sender<(u64, Bytes)>,
    progress: Arc<Progress>,
    thread: JoinHandle<()>,
}

/// How far the writer got: the file is written up to `end` (blocks come in order), or it
/// failed and writes nothing more.
struct Progress {
    state: Mutex<(u64, Option<io::Error>)>,
    advanced: Condvar,
}

impl BlockWriter {
    /// A writer of `file` from position `start`.
    pub(super) fn start(file: &File, start: u64) -> io::Result<BlockWriter> {
        let file = file.try_clone()?;
        let progress = Arc::new(Progress { state: Mutex::new((start, None)), advanced: Condvar::new() });
        let (blocks, incoming) = channel();
        let shared = progress.clone();
        let thread = std::thread::Builder::new().name("snapshot-writer".into()).spawn(move || {
            let _stopped = PanicRecorded(&shared);
            write_blocks(&file, &incoming, &shared);
        })?;
        Ok(BlockWriter { blocks, progress, thread })
    }

    /// Queues `block` for position `pos`, which follows the block queued before.
    pub(super) fn write(&self, pos: u64, block: Bytes) -> io::Result<()> {
        if self.blocks.send((pos, block)).is_err() {
            // The thread stopped, which it does only after recording why.
            return Err(self.progress.failure().unwrap_or_else(|| io::Error::other("the snapshot writer stopped")));
        }
        Ok(())
    }

    /// Waits until the file is written up to `end`.
    pub(super) fn wait_for(&self, end: u64) -> io::Result<()> {
        let mut state = self.progress.state.lock().unwrap();
        loop {
            if let Some(e) = &state.1 {
                return Err(copy_of(e));
            }
            if state.0 >= end {
                return Ok(());
            }
            state = self.progress.advanced.wait(state).unwrap();
        }
    }

    /// Waits for every queued block to be written and the writer to end.
    pub(super) fn finish(self) -> io::Result<()> {
        drop(self.blocks);
        self.thread.join().map_err(|_| io::Error::other("the snapshot writer panicked"))?;
        match self.progress.state.lock().unwrap().1.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn write_blocks(file: &File, incoming: &Receiver<(u64, Bytes)>, progress: &Progress) {
    let mut unsynced = 0;
    while let Ok((pos, block)) = incoming.recv() {
        let end = pos + block.len() as u64;
        if !progress.record(file.write_all_at(&block, pos).map(|()| end)) {
            return;
        }
        unsynced += block.len() as u64;
        if unsynced >= EARLY_SYNC_BYTES {
            unsynced = 0;
            if !progress.record(file.sync_data().map(|()| end)) {
                return;
            }
        }
    }
}

impl Progress {
    /// Why the writer failed, if it did.
    fn failure(&self) -> Option<io::Error> {
        self.state.lock().unwrap().1.as_ref().map(copy_of)
    }

    /// Records a write's outcome (the end it reached); false once the writer has failed.
    fn record(&self, outcome: io::Result<u64>) -> bool {
        let mut state = self.state.lock().unwrap();
        match outcome {
            Ok(end) => state.0 = end,
            Err(e) => state.1 = Some(e),
        }
        let ok = state.1.is_none();
        drop(state);
        self.advanced.notify_all();
        ok
    }
}

/// io::Error is not Clone: the same kind and message, for each caller that asks.
fn copy_of(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Records a panic of the writer's thread as its failure, so no one waits for it forever.
struct PanicRecorded<'a>(&'a Progress);

impl Drop for PanicRecorded<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut state) = self.0.state.lock() {
                state.1.get_or_insert_with(|| io::Error::other("the snapshot writer panicked"));
            }
            self.0.advanced.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_what_waiting_and_later_writes_get() {
        let path = std::env::temp_dir().join(format!("block-writer-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        // Opened read-only: every write fails.
        let writer = BlockWriter::start(&File::open(&path).unwrap(), 0).unwrap();
        writer.write(0, Bytes::from_static(b"rows")).unwrap();
        let failed = writer.wait_for(4).unwrap_err();
        while writer.write(4, Bytes::from_static(b"more")).is_ok() {
            std::thread::yield_now();
        }
        assert_eq!(writer.write(4, Bytes::from_static(b"more")).unwrap_err().kind(), failed.kind());
        assert_eq!(writer.finish().unwrap_err().kind(), failed.kind());
        std::fs::remove_file(path).unwrap();
    }
}
