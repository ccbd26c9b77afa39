//! The fan-out: routes each committed transaction to the shapes it touches, appends the
//! encoded messages to their logs, makes them durable in one group commit per batch (one
//! journal frame synced, [`shapes::journal`]), then publishes them to readers and advances
//! the acknowledged position. The logs themselves are synced by checkpoints, off this task.

pub mod live_shape;
pub mod moves;
mod parts;
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
use shapes::offset::Lsn;
use tokio_util::sync::CancellationToken;

use self::live_shape::{Held, LiveShape, MAX_HELD_CHANGES, TxnEntries};
use self::registry::Registry;
use crate::progress::AckState;
use crate::replication::queue;
use crate::replication::txn::Decoded;
use crate::status::Status;

/// Most transactions in one group commit.
const MAX_BATCH: usize = 4096;
/// A batch of at least this many transactions means a backlog: the fan-out lingers.
const LINGER_FROM: usize = 8;
/// How long it lingers for more transactions before storing a batch.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// Up to this many set views are synced one by one; more share one `syncfs`, which also
/// waits for everything else dirty on the filesystem (PostgreSQL's files, when they share it).
const SYNC_EACH_UP_TO: usize = 256;

/// What fails, in `/readyz`, when a batch cannot be stored.
const STORAGE: &str = "writing shape logs";
/// First and longest pause before writing a batch again after a storage error.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs until the queue closes or cancellation. A storage error (a full disk, an I/O
/// error) does not end it: the batch's unpublished writes are discarded, the gateway
/// reports not-ready with the reason, and the batch is written again until it succeeds.
/// Meanwhile nothing new is acknowledged and the stream waits (the queue fills).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut txns: queue::Receiver,
    journal: Journal,
    registry: Arc<Registry>,
    ack: Arc<AckState>,
    status: Arc<Status>,
    open_writers: usize,
    batch_bytes: usize,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut store = Store {
        writers: Some(writers::Writers::new(open_writers)),
        journal: Some(journal),
        checkpoint: None,
        registry,
        ack,
        status,
        cancel,
    };
    let mut queued = Vec::with_capacity(MAX_BATCH);
    // The transaction arriving in parts, if one is.
    let mut in_parts: Option<parts::InParts> = None;
    loop {
        store.checkpoints().await?;
        tokio::select! {
            _ = store.cancel.cancelled() => return Ok(()),
            n = txns.recv_many(&mut queued, MAX_BATCH) => if n == 0 { return Ok(()) },
        }
        // A backlog arriving (dozens of transactions at a time): wait a moment for more, so
        // one sync covers many (PostgreSQL's `commit_delay`, with the backlog as its
        // `commit_siblings`). A quiet stream's transaction is stored at once.
        if queued.len() >= LINGER_FROM && queued.len() < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
            let room = MAX_BATCH - queued.len();
            let _ = futures::FutureExt::now_or_never(txns.recv_many(&mut queued, room));
        }
        // The queue's room comes back once what was taken is stored.
        let mut rooms = Vec::with_capacity(queued.len());
        let mut whole = Vec::with_capacity(queued.len());
        let mut whole_bytes = 0;
        for queue::Queued { item, room } in queued.drain(..) {
            let bytes = room.num_permits();
            rooms.push(room);
            match item {
                Decoded::Whole(txn) => {
                    whole.push(txn);
                    whole_bytes += bytes;
                    // Storing a batch takes a few times its bytes: batches stay small.
                    if whole_bytes >= batch_bytes {
                        store.whole(std::mem::take(&mut whole)).await?;
                        whole_bytes = 0;
                    }
                }
                Decoded::Part { txn, last } => {
                    store.whole(std::mem::take(&mut whole)).await?;
                    whole_bytes = 0;
                    let taking = in_parts.take().unwrap_or_else(|| parts::InParts::begin(&store.registry, &txn));
                    in_parts = store.part(taking, txn, last).await?;
                }
                Decoded::Abandoned => {
                    store.whole(std::mem::take(&mut whole)).await?;
                    whole_bytes = 0;
                    if let Some(taking) = in_parts.take() {
                        taking.abandon();
                    }
                }
            }
        }
        store.whole(whole).await?;
    }
}

/// What stores batches: the log writers and the journal (each lent to the blocking pool
/// while a batch is written), and the journal checkpoint under way.
struct Store {
    writers: Option<writers::Writers>,
    journal: Option<Journal>,
    checkpoint: Option<tokio::task::JoinHandle<(std::io::Result<()>, Checkpoint)>>,
    registry: Arc<Registry>,
    ack: Arc<AckState>,
    status: Arc<Status>,
    cancel: CancellationToken,
}

impl Store {
    /// Stores whole transactions in one group commit, then acknowledges them.
    async fn whole(&mut self, batch: Vec<Txn>) -> std::io::Result<()> {
        let Some(last) = batch.last().map(|t| (t.end_lsn, t.commit_lsn)) else { return Ok(()) };
        metrics::histogram!("gateway_fanout_batch_transactions").record(batch.len() as f64);
        let started = std::time::Instant::now();
        let registry = self.registry.clone();
        // Routing and file I/O block: run them off the async workers.
        let planned =
            tokio::task::spawn_blocking(move || plan_batch(&registry, &batch)).await.map_err(std::io::Error::other)?;
        metrics::histogram!("gateway_fanout_seconds", "stage" => "plan").record(started.elapsed().as_secs_f64());
        self.write(planned, true).await?;
        self.acknowledge(last.0, last.1);
        Ok(())
    }

    /// Stores one part of a transaction arriving in parts, unpublished; with the last part
    /// publishes all of it and acknowledges it. Returns the transaction's state while more
    /// parts are to come.
    async fn part(
        &mut self,
        mut taking: parts::InParts,
        txn: Txn,
        last: bool,
    ) -> std::io::Result<Option<parts::InParts>> {
        let started = std::time::Instant::now();
        let registry = self.registry.clone();
        let (planned, taking) = tokio::task::spawn_blocking(move || {
            let planned = taking.plan(&registry, &txn, last);
            (planned, taking)
        })
        .await
        .map_err(std::io::Error::other)?;
        metrics::histogram!("gateway_fanout_seconds", "stage" => "plan").record(started.elapsed().as_secs_f64());
        self.write(planned, false).await?;
        if !last {
            return Ok(Some(taking));
        }
        let (end, commit) = taking.publish();
        self.acknowledge(end, commit);
        Ok(None)
    }

    /// Writes `planned` until it is durable (publishing it if `publish`), retrying after
    /// storage errors.
    async fn write(&mut self, planned: BatchWrites, publish: bool) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let mut planned = Some(planned);
        let mut backoff = RETRY_MIN;
        loop {
            let mut w = self.writers.take().expect("returned by the previous write");
            let mut j = self.journal.take().expect("returned by the previous write");
            let p = planned.take().expect("returned by the previous write");
            let registry = self.registry.clone();
            let (result, w, j, p) = tokio::task::spawn_blocking(move || {
                let r = write_batch(&registry, &mut w, &mut j, &p, publish);
                (r, w, j, p)
            })
            .await
            .map_err(std::io::Error::other)?;
            (self.writers, self.journal, planned) = (Some(w), Some(j), Some(p));
            match result {
                Ok(()) => {
                    if backoff > RETRY_MIN {
                        tracing::info!("shape storage works again; acknowledging resumes");
                        self.status.set_storage_error(STORAGE, None);
                    }
                    break;
                }
                Err(e) => {
                    metrics::counter!("gateway_storage_errors_total").increment(1);
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "shape storage failed; writing the batch again");
                    self.status.set_storage_error(STORAGE, Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        // Shutting down: what is not durable was not acknowledged and comes again.
                        _ = self.cancel.cancelled() => return Err(e),
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        metrics::histogram!("gateway_fanout_seconds", "stage" => "store").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Everything up to `end` is durable. Changes held for a move are not in their shape's
    /// log yet: the stream must be able to send them again, so the acknowledged position
    /// stays before them.
    fn acknowledge(&self, end: Lsn, commit: Lsn) {
        let floor = self.registry.sets().hold_floor(|id| self.registry.by_id(id));
        self.ack.note_durable(floor.map_or(end, |f| f.min(end)), commit);
    }

    /// Seals the journal's segment when due and syncs what it covered in the background
    /// (one checkpoint at a time; a failed one is retried with the next).
    async fn checkpoints(&mut self) -> std::io::Result<()> {
        const CHECKPOINT: &str = "syncing shape logs (journal checkpoint)";
        let journal = self.journal.as_mut().expect("returned by the last write");
        if let Some(done) = self.checkpoint.take_if(|h| h.is_finished()) {
            let (result, checkpoint) = done.await.map_err(std::io::Error::other)?;
            if let Err(e) = result {
                metrics::counter!("gateway_storage_errors_total").increment(1);
                tracing::error!(error = %e, "a journal checkpoint failed; the next one retries it");
                self.status.set_storage_error(CHECKPOINT, Some(e.to_string()));
                journal.retry_later(checkpoint);
            } else {
                self.status.set_storage_error(CHECKPOINT, None);
            }
        }
        if self.checkpoint.is_none()
            && let Some(checkpoint) = journal.seal_if_due()?
        {
            self.checkpoint = Some(tokio::task::spawn_blocking(move || (checkpoint.run(), checkpoint)));
        }
        Ok(())
    }
}

/// What a batch writes: each touched shape's entries, appended with one write per shape,
/// and the set views its moves leave, made durable before any entry is appended.
struct BatchWrites {
    logs: HashMap<u64, (Arc<LiveShape>, Vec<TxnEntries>)>,
    views: HashMap<u64, (Arc<LiveShape>, views::SetViews)>,
    /// Whether each shape's last entries end their transaction (not so for a part of a
    /// transaction arriving in parts, other than its last).
    ends_txn: bool,
}

impl BatchWrites {
    fn new(ends_txn: bool) -> BatchWrites {
        BatchWrites { logs: HashMap::new(), views: HashMap::new(), ends_txn }
    }
}

/// Routes every transaction of the batch to the shapes it touches (once, whatever happens
/// to the writes).
fn plan_batch(registry: &Registry, batch: &[Txn]) -> BatchWrites {
    let mut writes = BatchWrites::new(true);
    for txn in batch {
        apply_txn(registry, txn, &mut writes);
    }
    writes
}

/// Appends and makes durable the batch's entries, and publishes them if `publish`. On an
/// error nothing of the batch stays written, so writing it again appends each entry once.
fn write_batch(
    registry: &Registry,
    open: &mut writers::Writers,
    journal: &mut Journal,
    writes: &BatchWrites,
    publish: bool,
) -> std::io::Result<()> {
    if writes.logs.is_empty() && writes.views.is_empty() {
        return Ok(());
    }
    let before: Vec<_> = writes.logs.values().map(|(shape, _)| (shape, shape.log.written_mark())).collect();
    let result = append_and_sync(registry, open, journal, writes);
    match result {
        Ok(marks) => {
            if publish {
                for (shape, mark) in marks {
                    shape.log.publish(mark);
                }
            }
            open.trim();
            Ok(())
        }
        Err(e) => {
            for (shape, mark) in before {
                shape.log.rewind(mark);
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
        let appended = match shape.log.append_with(txns, writes.ends_txn) {
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
    let Routed { planned, unreadable, mut rotate } = route(registry, txn, false);
    for (shape, why) in unreadable {
        // Never send a value we cannot vouch for: the client refetches.
        // (Unless the shape's snapshot already has the transaction.)
        if let Some(why) = shape.admit_unreadable(txn, why) {
            rotate.push((shape, format!("a change could not be evaluated: {why}")));
        }
    }
    for (shape, why) in rotate {
        registry.rotate(&shape, &why);
    }
    for (id, (shape, planned)) in planned {
        if shape.log.version().gone {
            continue;
        }
        if let Some(entries) = shape.admit(txn, &planned) {
            writes.logs.entry(id).or_insert_with(|| (shape, Vec::new())).1.push(entries);
        }
    }
}

/// A transaction (or a part of one) routed to the shapes it touches.
struct Routed {
    /// Each touched shape's messages, in order.
    planned: HashMap<u64, (Arc<LiveShape>, Vec<plan::Planned>)>,
    /// Shapes that could not evaluate a change, and why.
    unreadable: Vec<(Arc<LiveShape>, String)>,
    /// Shapes that must go, and why.
    rotate: Vec<(Arc<LiveShape>, String)>,
}

/// Routes `txn`'s changes: the subquery sets follow it first, then each change is planned
/// for the shapes it may touch. `in_parts`: the transaction arrives in parts, so a set it
/// changes cannot move rows as one step (a part's rows were evaluated before a later part
/// changed the set): shapes through such a set, and shapes whose rows are moving, are
/// refetched instead (as Electric streams only shapes without subqueries fragment by fragment).
fn route(registry: &Registry, txn: &Txn, in_parts: bool) -> Routed {
    let mut routed = Routed { planned: HashMap::new(), unreadable: Vec::new(), rotate: Vec::new() };
    let mut candidates = Vec::new();
    // The sets follow the transaction first: shapes evaluate its changes against them.
    // (Rotating a shape takes the sets' lock: never while it is held here.)
    {
        let mut kept = registry.sets().kept();
        let applied = kept.apply(txn);
        let users = |set| registry.sets().users_of(set).into_iter().filter_map(|id| registry.by_id(id));
        for (set, delta) in applied.deltas {
            if in_parts {
                let why = "a transaction larger than --txn-memory changed its subquery set";
                routed.rotate.extend(users(set).map(|s| (s, why.to_string())));
            } else {
                registry.sets().on_change(&mut kept, txn, set, delta, |id| registry.by_id(id), &mut routed.rotate);
            }
        }
        for (set, e) in applied.failed {
            tracing::warn!(error = %e, "a subquery set cannot follow the stream; its shapes are refetched");
            routed.rotate.extend(users(set).map(|s| (s, format!("its subquery set cannot follow the stream: {e}"))));
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
                        Held::Yes if in_parts => {
                            let why = "a transaction larger than --txn-memory arrived while its rows were moving";
                            routed.rotate.push((shape, why.into()));
                            continue;
                        }
                        Held::Yes => continue,
                        Held::Overflow => {
                            let why = format!("more than {MAX_HELD_CHANGES} changes came while its rows were moving");
                            routed.rotate.push((shape, why));
                            continue;
                        }
                    }
                    match plan::plan(&shape.shape, &shape.encoder, change, &*kept) {
                        Ok(planned) if planned.is_empty() => {}
                        Ok(planned) => routed
                            .planned
                            .entry(shape.id)
                            .or_insert_with(|| (shape.clone(), Vec::new()))
                            .1
                            .extend(planned),
                        Err(e) => routed.unreadable.push((shape, e.to_string())),
                    }
                }
            }
        }
    }
    routed
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
