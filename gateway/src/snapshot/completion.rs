//! Group commit for finished snapshots: snapshots that end together are made durable
//! together, with two filesystem syncs for the whole batch instead of several file syncs
//! each, so a crowd of small new shapes is not bounded by the disk's flush rate (the
//! journal's group commit, applied to shape creation). A snapshot that ends alone is
//! synced file by file.
//!
//! For each batch: every shape's record (`shape.json`, set views) is written and its
//! snapshot sealed, unsynced; one filesystem sync; each snapshot's trailer, which marks it
//! complete, is written; a second sync; only then may readers see the snapshots. After a
//! crash a trailer therefore always describes a durable snapshot and record, and a shape
//! without one is discarded at start (its clients refetch).

use std::io;
use std::sync::{Arc, OnceLock};

use shapes::durable::sync_filesystem;
use shapes::wire::snapshot_end;
use tokio::sync::{mpsc, oneshot};

use crate::fanout::live_shape::{LiveShape, SnapshotInfo};
use crate::fanout::views::Views;

/// Most snapshots one batch completes.
const MAX_BATCH: usize = 512;

/// The queue to the task completing batches, started by the first snapshot to finish (a
/// standby, which makes no shapes, never starts it); the task ends when this is dropped.
#[derive(Default)]
pub struct Completions(OnceLock<mpsc::UnboundedSender<Finished>>);

struct Finished {
    shape: Arc<LiveShape>,
    snapshot: SnapshotInfo,
    /// The values of the shape's sets its snapshot reflects.
    views: Views,
    done: oneshot::Sender<io::Result<()>>,
}

impl Completions {
    /// Records `shape` and its written snapshot durably; then the caller may show the
    /// snapshot to readers ([`shapes::log::ShapeLog::publish_snapshot`]).
    pub async fn complete(&self, shape: Arc<LiveShape>, snapshot: SnapshotInfo, views: Views) -> io::Result<()> {
        let (done, result) = oneshot::channel();
        let queue = self.0.get_or_init(|| {
            let (queue, batches) = mpsc::unbounded_channel();
            tokio::spawn(complete_batches(batches));
            queue
        });
        queue.send(Finished { shape, snapshot, views, done }).map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

fn stopped() -> io::Error {
    io::Error::other("the gateway is stopping")
}

/// Takes whatever finished meanwhile as the next batch: no waiting, so a lone snapshot
/// completes at once and a crowd shares the syncs.
async fn complete_batches(mut queue: mpsc::UnboundedReceiver<Finished>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        let Ok((batch, results)) = tokio::task::spawn_blocking(move || {
            let results = make_durable(&batch);
            (batch, results)
        })
        .await
        else {
            continue; // the runtime is stopping: the senders learn it from the dropped replies
        };
        for (finished, result) in batch.into_iter().zip(results) {
            let _ = finished.done.send(result);
        }
    }
}

fn make_durable(batch: &[Finished]) -> Vec<io::Result<()>> {
    let mut results: Vec<io::Result<()>> = batch
        .iter()
        .map(|f| {
            f.shape.record(f.snapshot.clone(), f.views.clone())?;
            let s = &f.snapshot;
            f.shape.log.seal_snapshot(&snapshot_end(s.xmin, s.xmax, &s.xip))
        })
        .collect();
    sync(batch, &mut results, false);
    for (f, result) in batch.iter().zip(&mut results) {
        if result.is_ok() {
            *result = f.shape.log.commit_snapshot();
        }
    }
    sync(batch, &mut results, true);
    results
}

/// Makes what the batch wrote durable: a crowd with one filesystem sync, a lone shape file
/// by file, so that it does not wait for everything else dirty on the filesystem (such as
/// PostgreSQL's own writes, on a machine where they share it). When the sync fails, every
/// result so far fails with it.
fn sync(batch: &[Finished], results: &mut [io::Result<()>], committed: bool) {
    let synced = match batch {
        // After the commit only the trailer is new.
        [one] if results[0].is_ok() && committed => one.shape.log.sync_files(true),
        [one] if results[0].is_ok() => one.shape.sync_record().and_then(|()| one.shape.log.sync_files(false)),
        [_] => Ok(()),
        _ => sync_filesystem(batch[0].shape.log.dir()),
    };
    if let Err(e) = synced {
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            *result = Err(io::Error::new(e.kind(), e.to_string()));
        }
    }
}
