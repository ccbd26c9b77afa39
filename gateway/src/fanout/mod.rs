//! The fan-out: routes each committed transaction to the shapes it touches, appends the
//! encoded messages to their logs, makes them durable in one group commit per batch (one
//! journal frame synced, [`shapes::journal`]), then publishes them to readers and advances
//! the acknowledged position. The logs themselves are synced by checkpoints, off this task.

pub mod live_shape;
pub mod moves;
pub mod plan;
pub mod registry;
pub mod set_routing;
pub mod sets;
pub mod snapshot_info;
pub mod views;
mod writers;

use std::collections::HashMap;
use std::sync::Arc;

use shapes::change::{Txn, TxnItem};
use shapes::durable::sync_filesystem;
use shapes::journal::{Checkpoint, Journal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::live_shape::{Held, LiveShape, MAX_HELD_CHANGES, TxnEntries};
use self::registry::Registry;
use crate::progress::AckState;
use crate::status::Status;

/// Most transactions in one group commit.
const MAX_BATCH: usize = 4096;
/// Up to this many set views are synced one by one; more share one `syncfs`, which also
/// waits for everything else dirty on the filesystem (PostgreSQL's files, when they share it).
const SYNC_EACH_UP_TO: usize = 256;

/// What fails, in `/readyz`, when a batch cannot be stored.
const STORAGE: &str = "writing shape logs";
/// First and longest pause before writing a batch again after a storage error.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs until the channel closes or cancellation. A storage error (a full disk, an I/O
/// error) does not end it: the batch's unpublished writes are discarded, the gateway
/// reports not-ready with the reason, and the batch is written again until it succeeds.
/// Meanwhile nothing new is acknowledged and the stream waits (the channel fills).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut txns: mpsc::Receiver<Txn>,
    journal: Journal,
    registry: Arc<Registry>,
    ack: Arc<AckState>,
    status: Arc<Status>,
    open_writers: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut writers = Some(writers::Writers::new(open_writers));
    let mut journal = Some(journal);
    let mut checkpoint: Option<tokio::task::JoinHandle<(std::io::Result<()>, Checkpoint)>> = None;
    loop {
        batch.clear();
        if let Some(j) = journal.as_mut() {
            checkpoints(j, &mut checkpoint, &status).await?;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = txns.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return Ok(()) },
        }
        metrics::histogram!("gateway_fanout_batch_transactions").record(batch.len() as f64);
        let started = std::time::Instant::now();
        let (registry_, taken) = (registry.clone(), std::mem::take(&mut batch));
        // Routing and file I/O block: run them off the async workers.
        let (planned, taken) = tokio::task::spawn_blocking(move || (plan_batch(&registry_, &taken), taken))
            .await
            .map_err(std::io::Error::other)?;
        batch = taken;
        metrics::histogram!("gateway_fanout_seconds", "stage" => "plan").record(started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        let mut planned = Some(planned);
        let mut backoff = RETRY_MIN;
        loop {
            let mut w = writers.take().expect("returned by the previous write");
            let mut j = journal.take().expect("returned by the previous write");
            let p = planned.take().expect("returned by the previous write");
            let registry_ = registry.clone();
            let (result, w, j, p) = tokio::task::spawn_blocking(move || {
                let r = write_batch(&registry_, &mut w, &mut j, &p);
                (r, w, j, p)
            })
            .await
            .map_err(std::io::Error::other)?;
            (writers, journal, planned) = (Some(w), Some(j), Some(p));
            match result {
                Ok(()) => {
                    if backoff > RETRY_MIN {
                        tracing::info!("shape storage works again; acknowledging resumes");
                        status.set_storage_error(STORAGE, None);
                    }
                    break;
                }
                Err(e) => {
                    metrics::counter!("gateway_storage_errors_total").increment(1);
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "shape storage failed; writing the batch again");
                    status.set_storage_error(STORAGE, Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // Shutting down: what is not durable was not acknowledged and comes again.
                        _ = cancel.cancelled() => return Err(e),
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        metrics::histogram!("gateway_fanout_seconds", "stage" => "store").record(started.elapsed().as_secs_f64());
        if let Some(last) = batch.last() {
            // Changes held for a move are not in their shape's log yet: the stream must be
            // able to send them again, so the acknowledged position stays before them.
            let floor = registry.sets().hold_floor(|id| registry.by_id(id));
            ack.note_durable(floor.map_or(last.end_lsn, |f| f.min(last.end_lsn)), last.commit_lsn);
        }
    }
}

/// What a batch writes: each touched shape's entries, appended with one write per shape,
/// and the set views its moves leave, made durable before any entry is appended.
#[derive(Default)]
struct BatchWrites {
    logs: HashMap<u64, (Arc<LiveShape>, Vec<TxnEntries>)>,
    views: HashMap<u64, (Arc<LiveShape>, views::SetViews)>,
}

/// Routes every transaction of the batch to the shapes it touches (once, whatever happens
/// to the writes).
fn plan_batch(registry: &Registry, batch: &[Txn]) -> BatchWrites {
    let mut writes = BatchWrites::default();
    for txn in batch {
        apply_txn(registry, txn, &mut writes);
    }
    writes
}

/// Seals the journal's segment when due and syncs what it covered in the background (one
/// checkpoint at a time; a failed one is retried with the next).
async fn checkpoints(
    journal: &mut Journal,
    running: &mut Option<tokio::task::JoinHandle<(std::io::Result<()>, Checkpoint)>>,
    status: &Status,
) -> std::io::Result<()> {
    const CHECKPOINT: &str = "syncing shape logs (journal checkpoint)";
    if let Some(done) = running.take_if(|h| h.is_finished()) {
        let (result, checkpoint) = done.await.map_err(std::io::Error::other)?;
        if let Err(e) = result {
            metrics::counter!("gateway_storage_errors_total").increment(1);
            tracing::error!(error = %e, "a journal checkpoint failed; the next one retries it");
            status.set_storage_error(CHECKPOINT, Some(e.to_string()));
            journal.retry_later(checkpoint);
        } else {
            status.set_storage_error(CHECKPOINT, None);
        }
    }
    if running.is_none()
        && let Some(checkpoint) = journal.seal_if_due()?
    {
        *running = Some(tokio::task::spawn_blocking(move || (checkpoint.run(), checkpoint)));
    }
    Ok(())
}

/// Appends, makes durable and publishes the batch's entries. On an error nothing of the
/// batch stays written-but-unpublished, so writing it again appends each entry once.
fn write_batch(
    registry: &Registry,
    open: &mut writers::Writers,
    journal: &mut Journal,
    writes: &BatchWrites,
) -> std::io::Result<()> {
    if writes.logs.is_empty() && writes.views.is_empty() {
        return Ok(());
    }
    let result = append_and_sync(registry, open, journal, writes);
    match result {
        Ok(marks) => {
            for (shape, mark) in marks {
                shape.log.publish(mark);
            }
            open.trim();
            Ok(())
        }
        Err(e) => {
            for (shape, _) in writes.logs.values() {
                shape.log.discard_unpublished();
            }
            journal.discard_frame();
            Err(e)
        }
    }
}

fn append_and_sync<'a>(
    registry: &Registry,
    open: &mut writers::Writers,
    journal: &mut Journal,
    writes: &'a BatchWrites,
) -> std::io::Result<Vec<(&'a Arc<LiveShape>, shapes::log::WriteMark)>> {
    // The views moves leave are durable before their splices can be.
    let views: Vec<_> = writes.views.values().filter(|(shape, _)| !shape.log.version().gone).collect();
    for (shape, views) in &views {
        views.put(shape.log.dir())?;
    }
    if views.len() <= SYNC_EACH_UP_TO {
        for (shape, _) in &views {
            views::SetViews::sync(shape.log.dir())?;
        }
    } else {
        sync_filesystem(registry.data_dir())?;
    }
    let mut marks = Vec::with_capacity(writes.logs.len());
    for (shape, txns) in writes.logs.values() {
        // A shape rotated meanwhile (DDL, DELETE) has no files left to write to.
        let appended = match shape.log.append(txns) {
            Err(_) if shape.log.version().gone => continue,
            result => result?,
        };
        if !appended.bytes.is_empty() {
            journal.record(&shape.log.live_path(), appended.at, &appended.bytes);
        }
        marks.push((shape, shape.log.written_mark()));
        open.used(shape);
    }
    journal.commit()?;
    Ok(marks)
}

fn apply_txn(registry: &Registry, txn: &Txn, writes: &mut BatchWrites) {
    if let Some(marker) = txn.as_marker() {
        on_marker(registry, txn, marker, writes);
        return;
    }
    let mut per_shape: HashMap<u64, (Arc<LiveShape>, Vec<plan::Planned>)> = HashMap::new();
    let mut candidates = Vec::new();
    let mut rotate: Vec<(Arc<LiveShape>, String)> = Vec::new();
    // The sets follow the transaction first: shapes evaluate its changes against them.
    // (Rotating a shape takes the sets' lock: never while it is held here.)
    {
        let mut kept = registry.sets().kept();
        let applied = kept.apply(txn);
        for (set, delta) in applied.deltas {
            registry.sets().on_change(&mut kept, txn, set, delta, |id| registry.by_id(id), &mut rotate);
        }
        for (set, e) in applied.failed {
            tracing::warn!(error = %e, "a subquery set cannot follow the stream; its shapes are refetched");
            let users = registry.sets().users_of(set).into_iter().filter_map(|id| registry.by_id(id));
            rotate.extend(users.map(|s| (s, format!("its subquery set cannot follow the stream: {e}"))));
        }
    }
    for item in &txn.items {
        match item {
            TxnItem::Relation(rel) => registry.on_relation(rel),
            TxnItem::Truncate { relations } => {
                for oid in relations {
                    registry.rotate_table(*oid, "the table was truncated");
                }
            }
            TxnItem::Marker(_) => {}
            TxnItem::Change { relation, change } => {
                let kept = registry.sets().kept();
                let shapes = registry.candidates(*relation, change, &kept, &mut candidates);
                for shape in shapes {
                    match shape.hold_change(txn, change) {
                        Held::No => {}
                        Held::Yes => continue,
                        Held::Overflow => {
                            let why = format!("more than {MAX_HELD_CHANGES} changes came while its rows were moving");
                            rotate.push((shape, why));
                            continue;
                        }
                    }
                    match plan::plan(&shape.shape, &shape.encoder, change, &*kept) {
                        Ok(planned) if planned.is_empty() => {}
                        Ok(planned) => {
                            per_shape.entry(shape.id).or_insert_with(|| (shape.clone(), Vec::new())).1.extend(planned)
                        }
                        Err(e) => {
                            // Never send a value we cannot vouch for: the client refetches.
                            // (Unless the shape's snapshot already has the transaction.)
                            if let Some(why) = shape.admit_unreadable(txn, e.to_string()) {
                                rotate.push((shape, format!("a change could not be evaluated: {why}")));
                            }
                        }
                    }
                }
            }
        }
    }
    for (shape, why) in rotate {
        registry.rotate(&shape, &why);
    }
    for (id, (shape, planned)) in per_shape {
        if shape.log.version().gone {
            continue;
        }
        if let Some(entries) = shape.admit(txn, &planned) {
            writes.logs.entry(id).or_insert_with(|| (shape, Vec::new())).1.push(entries);
        }
    }
}

/// The stream reached a marker: a set load or a move whose query has finished.
fn on_marker(registry: &Registry, txn: &Txn, marker: &str, writes: &mut BatchWrites) {
    match registry.sets().finish_load(marker) {
        Some(Ok(set)) => return registry.sets().resume(set, |id| registry.by_id(id)),
        Some(Err(set)) => return registry.rotate_users_of(set, "its subquery set could not be loaded"),
        None => {}
    }
    let Some((shape, id)) = registry.sets().move_of(marker) else { return };
    let Some(shape) = registry.by_id(shape) else { return };
    let Some(hold) = shape.take_finished_hold(id) else {
        tracing::debug!(handle = %shape.handle, move_id = id, "move marker passed over: not the move under way");
        return;
    };
    let (entered, left) = hold.moved_values();
    tracing::debug!(handle = %shape.handle, move_id = id, at = %txn.commit_lsn, held = hold.txns.len(), entered, left, "move spliced");
    registry.sets().end_hold(shape.id);
    let Some(result) = hold.result.as_ref() else { return };
    let spliced = moves::splice(&shape.shape, &shape.encoder, &hold, result, &*registry.sets().kept());
    // The views the splice leaves, written with the batch before the splice (an earlier
    // move of this batch left the views this one starts from).
    let before = match writes.views.get(&shape.id) {
        Some((_, pending)) => Ok(pending.after().clone()),
        None => views::SetViews::read(shape.log.dir())
            .map(|b| b.map(|b| b.as_of(shape.log.written_lsn()).clone()).unwrap_or_default()),
    };
    let before = match before {
        Ok(before) => before,
        Err(e) => return registry.rotate(&shape, &format!("its set views could not be read: {e}")),
    };
    let left = views::SetViews::moved(before, txn.commit_lsn, registry.sets().views_of(&shape));
    writes.views.insert(shape.id, (shape.clone(), left));
    match spliced {
        Ok(groups) => {
            let entries = shape.encode_splice(txn.commit_lsn, &groups);
            if !entries.is_empty() {
                writes.logs.entry(shape.id).or_insert_with(|| (shape.clone(), Vec::new())).1.push(entries);
            }
        }
        Err(e) => registry.rotate(&shape, &format!("a moving row could not be evaluated: {e}")),
    }
}
