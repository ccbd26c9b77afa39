//! Group commit for finished snapshots: snapshots that end together are made durable
//! together, with two filesystem syncs for the whole batch instead of four file syncs
//! each, so a crowd of small new shapes is not bounded by the disk's flush rate (the
//! journal's group commit, applied to shape creation).
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
    let dir = batch[0].shape.log.dir();
    sync_all(dir, &mut results);
    for (f, result) in batch.iter().zip(&mut results) {
        if result.is_ok() {
            *result = f.shape.log.commit_snapshot();
        }
    }
    sync_all(dir, &mut results);
    results
}

/// One sync of the filesystem holding `dir`; when it fails, every result so far fails with it.
fn sync_all(dir: &std::path::Path, results: &mut [io::Result<()>]) {
    if let Err(e) = sync_filesystem(dir) {
        for result in results.iter_mut().filter(|r| r.is_ok()) {
            *result = Err(io::Error::new(e.kind(), e.to_string()));
        }
    }
}
