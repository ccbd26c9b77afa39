//! The fan-out: routes each committed transaction to the shapes it touches, appends the
//! encoded messages to their logs, makes them durable in one group commit per batch, then
//! publishes them to readers and advances the acknowledged position.

pub mod ack;
pub mod plan;
pub mod registry;
mod writers;

use std::collections::HashMap;
use std::sync::Arc;

use shapes::change::{Txn, TxnItem};
use shapes::log::sync_filesystem;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::ack::AckState;
use self::registry::{LiveShape, Registry, TxnEntries};

/// Most transactions in one group commit.
const MAX_BATCH: usize = 4096;
/// Up to this many touched logs are synced one by one; more share one `syncfs`.
const SYNC_EACH_UP_TO: usize = 4;

/// Runs until the channel closes or cancellation. An I/O error ends it: nothing after the
/// last durable batch is acknowledged, so PostgreSQL resends it after a restart.
pub async fn run(
    mut txns: mpsc::Receiver<Txn>,
    registry: Arc<Registry>,
    ack: Arc<AckState>,
    open_writers: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut writers = Some(writers::Writers::new(open_writers));
    loop {
        batch.clear();
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = txns.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return Ok(()) },
        }
        let registry = registry.clone();
        let ack = ack.clone();
        let taken = std::mem::take(&mut batch);
        let mut w = writers.take().expect("returned by the previous batch");
        // File I/O and fsync block: run the batch off the async workers.
        let (returned, w) = tokio::task::spawn_blocking(move || {
            let r = apply_batch(&registry, &ack, &mut w, taken);
            (r, w)
        })
        .await
        .map_err(std::io::Error::other)?;
        batch = returned?;
        writers = Some(w);
    }
}

/// Each touched shape's entries in this batch, appended with one write per shape.
type BatchWrites = HashMap<u64, (Arc<LiveShape>, Vec<TxnEntries>)>;

fn apply_batch(
    registry: &Registry,
    ack: &AckState,
    open: &mut writers::Writers,
    batch: Vec<Txn>,
) -> std::io::Result<Vec<Txn>> {
    let mut writes: BatchWrites = HashMap::new();
    for txn in &batch {
        apply_txn(registry, txn, &mut writes);
    }
    if !writes.is_empty() {
        let mut marks = Vec::with_capacity(writes.len());
        for (shape, txns) in writes.values() {
            // A shape rotated meanwhile (DDL, DELETE) has no files left to write to.
            match shape.log.append(txns) {
                Err(_) if shape.log.version().gone => continue,
                result => result?,
            }
            marks.push((shape, shape.log.written_mark()));
            open.used(shape);
        }
        if marks.len() <= SYNC_EACH_UP_TO {
            for (shape, _) in &marks {
                match shape.log.sync() {
                    Err(_) if shape.log.version().gone => {}
                    result => result?,
                }
            }
        } else {
            sync_filesystem(registry.data_dir())?;
        }
        for (shape, mark) in marks {
            shape.log.publish(mark);
        }
    }
    if let Some(last) = batch.last() {
        ack.note_durable(last.end_lsn, last.commit_lsn);
    }
    open.trim();
    let mut batch = batch;
    batch.clear();
    Ok(batch)
}

fn apply_txn(registry: &Registry, txn: &Txn, writes: &mut BatchWrites) {
    let mut per_shape: HashMap<u64, (Arc<LiveShape>, Vec<plan::Planned>)> = HashMap::new();
    let mut candidates = Vec::new();
    for item in &txn.items {
        match item {
            TxnItem::Relation(rel) => registry.on_relation(rel),
            TxnItem::Truncate { relations } => {
                for oid in relations {
                    registry.rotate_table(*oid, "the table was truncated");
                }
            }
            TxnItem::Change { relation, change } => {
                let shapes = registry.candidates(*relation, change, &mut candidates);
                for shape in shapes {
                    match plan::plan(&shape.shape, &shape.encoder, change) {
                        Ok(planned) if planned.is_empty() => {}
                        Ok(planned) => {
                            per_shape.entry(shape.id).or_insert_with(|| (shape.clone(), Vec::new())).1.extend(planned)
                        }
                        Err(e) => {
                            // Never send a value we cannot vouch for: the client refetches.
                            registry.rotate(&shape, &format!("a change could not be evaluated: {e}"));
                        }
                    }
                }
            }
        }
    }
    for (id, (shape, planned)) in per_shape {
        if shape.log.version().gone {
            continue;
        }
        if let Some(entries) = shape.admit(txn, &planned) {
            writes.entry(id).or_insert_with(|| (shape, Vec::new())).1.push(entries);
        }
    }
}
