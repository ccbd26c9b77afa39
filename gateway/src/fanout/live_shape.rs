//! One live shape: its log, its message encoder, and the visibility buffer that holds stream
//! transactions until its snapshot says which of them it already contains.

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use shapes::change::Txn;
use shapes::durable::replace_unsynced;
use shapes::log::ShapeLog;
use shapes::offset::{LogOffset, Lsn};
use shapes::set_registry::SetId;
use shapes::shape::{Shape, ShapeHandle, ShapeKey, ShapeSpec};
use shapes::table::TableSchema;
use shapes::where_clause::{SetKey, Subquery};
use shapes::wire::{LiveHeaders, MessageEncoder, add_tags, mark_move_in, move_out_event, schema_header, snapshot_end};

pub use super::snapshot_info::SnapshotInfo;

use super::moves::{Hold, MoveResult, SetChange, Spliced};
use super::plan::Planned;
use super::views::{SetViews, Views};

/// Most changes a shape holds while its rows move; past it the shape is refetched, so a
/// move whose query is held back (a lock, a slow database) never holds memory without bound.
pub const MAX_HELD_CHANGES: usize = 100_000;

/// What [`LiveShape::hold_change`] did with a change.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// No move is under way: plan the change.
    No,
    Yes,
    /// The hold is full: the shape must go.
    Overflow,
}

/// One transaction's encoded entries for one shape.
pub type TxnEntries = Vec<(LogOffset, Vec<u8>)>;

/// The op of the message after `prev` (at `op`) in one transaction: a key change's insert
/// sits right after its delete; other changes step by 2.
pub fn next_op(op: u64, prev: &Planned) -> u64 {
    op + if prev.key_change_to.is_some() { 1 } else { 2 - (op % 2) }
}

/// Stream transactions held until the snapshot's visibility is known: their entries, or
/// why the shape could not evaluate them.
type PendingTxn = (u32, Result<TxnEntries, String>);

enum Visibility {
    Pending(Vec<PendingTxn>),
    Known(SnapshotInfo),
}

/// Why a shape's snapshot cannot be followed by its stream.
#[derive(Debug, thiserror::Error)]
pub enum Unservable {
    /// A change after the snapshot could not be evaluated for the shape.
    #[error("a change could not be evaluated: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What `shape.json` records of a shape, so it survives a restart.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ShapeMeta {
    pub(super) handle: ShapeHandle,
    pub(super) spec: ShapeSpec,
    pub(super) table: TableSchema,
    pub(super) snapshot: SnapshotInfo,
    /// The tables its subqueries read, as they were bound.
    #[serde(default)]
    pub(super) catalog: Vec<TableSchema>,
}

impl ShapeMeta {
    /// The record in the shape directory `dir`; `None` when there is none.
    pub(super) fn read(dir: &Path) -> io::Result<Option<ShapeMeta>> {
        match std::fs::read(dir.join("shape.json")) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Why a shape's snapshot failed, for requests waiting on it.
#[derive(Clone, Debug)]
pub struct ShapeFailure {
    /// The filter or data is at fault (a 400), not the server.
    pub client_error: bool,
    pub message: String,
}

pub struct LiveShape {
    pub id: u64,
    pub handle: ShapeHandle,
    pub key: ShapeKey,
    pub shape: Shape,
    pub log: ShapeLog,
    pub encoder: MessageEncoder,
    pub schema_header: String,
    visibility: Mutex<Visibility>,
    failure: Mutex<Option<ShapeFailure>>,
    /// The subquery sets the shape's rows depend on; `true`: its own filter tests it
    /// (the others are nested inside those).
    pub sets: Vec<(SetId, bool)>,
    /// Changes held while rows move in or out ([`super::moves`]).
    hold: Mutex<Option<Hold>>,
    /// The tables its subqueries read, as bound (stored for restarts).
    pub catalog: Vec<TableSchema>,
    /// When the registry made it routable (the registry's `routing_mark`).
    pub(super) routable_from: AtomicU64,
}

impl LiveShape {
    /// A shape with its log; `snapshot` is known for a shape loaded from disk, and comes
    /// later ([`LiveShape::set_snapshot`]) for a new one.
    pub(super) fn new(
        id: u64,
        handle: ShapeHandle,
        shape: Shape,
        log: ShapeLog,
        snapshot: Option<SnapshotInfo>,
        sets: Vec<(SetId, bool)>,
        catalog: Vec<TableSchema>,
    ) -> Self {
        let visibility = match snapshot {
            Some(snapshot) => Visibility::Known(snapshot),
            None => Visibility::Pending(Vec::new()),
        };
        LiveShape {
            id,
            handle,
            key: shape.key(),
            encoder: MessageEncoder::new(&shape.table),
            schema_header: schema_header(&shape.table, &shape.selected),
            shape,
            log,
            visibility: Mutex::new(visibility),
            failure: Mutex::new(None),
            sets,
            hold: Mutex::new(None),
            catalog,
            routable_from: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether the snapshot's visibility is known (the stream is planned straight to the log).
    pub fn snapshot_known(&self) -> bool {
        matches!(*self.visibility.lock().unwrap(), Visibility::Known(_))
    }

    /// Whether changes are being held for a move.
    pub fn is_holding(&self) -> bool {
        self.hold.lock().unwrap().is_some()
    }

    /// Starts holding the shape's changes for a move.
    pub fn start_hold(&self, hold: Hold) {
        *self.hold.lock().unwrap() = Some(hold);
    }

    /// Another change to a set while held: the move restarts as `id` covering every change
    /// since the hold began ([`Hold::merge`]); returns what `query` makes of the hold.
    /// `None`: no hold.
    pub fn merge_hold<T>(&self, id: u64, xid: u32, change: &SetChange, query: impl FnOnce(&Hold) -> T) -> Option<T> {
        let mut hold = self.hold.lock().unwrap();
        let hold = hold.as_mut()?;
        hold.merge(id, xid, change);
        Some(query(hold))
    }

    /// Holds one change when a move is under way (dropping it when the snapshot or the log
    /// already has its transaction, as [`LiveShape::admit`] does).
    pub fn hold_change(&self, txn: &Txn, change: &shapes::change::Change) -> Held {
        match &mut *self.hold.lock().unwrap() {
            Some(hold) if hold.held_changes() >= MAX_HELD_CHANGES => Held::Overflow,
            Some(hold) => {
                if !self.holds(&self.visibility.lock().unwrap(), txn) {
                    hold.push(txn, change);
                }
                Held::Yes
            }
            None => Held::No,
        }
    }

    /// Whether move `id` is under way, still waiting for its query (a widened or ended move
    /// supersedes its query: the shape's rotation, or the next change to the set).
    pub fn awaits_move_query(&self, id: u64) -> bool {
        self.hold.lock().unwrap().as_ref().is_some_and(|h| h.id == id && h.result.is_none())
    }

    /// Records move `id`'s query result; `false` when that move is no longer under way.
    pub fn finish_move_query(&self, id: u64, result: MoveResult) -> bool {
        match &mut *self.hold.lock().unwrap() {
            Some(hold) if hold.id == id => {
                hold.result = Some(result);
                true
            }
            _ => false,
        }
    }

    /// The commit position of the first change held, if any: the stream must be able to
    /// send it again after a crash, so nothing from there on may be acknowledged.
    pub fn first_held(&self) -> Option<Lsn> {
        self.hold.lock().unwrap().as_ref().and_then(|h| h.txns.first()).map(|t| t.commit_lsn)
    }

    /// Holds the shape's changes until `set` has loaded again (a set it reads changed in
    /// transaction `xid`); `values` are the set's before the reload. The move under way, if
    /// any, becomes move `id`, whose query waits for the load.
    pub fn await_set(&self, id: u64, xid: u32, set: SetId, subquery: &Subquery, values: Vec<SetKey>) {
        let mut hold = self.hold.lock().unwrap();
        hold.get_or_insert_with(|| Hold::resync(Vec::new())).await_set(id, xid, set, subquery, values);
    }

    /// The values of `set` a restarted shape's log reflects, while it waits for it to load.
    pub fn take_resync_view(&self, set: SetId) -> Option<Vec<SetKey>> {
        self.hold.lock().unwrap().as_mut().and_then(|h| h.take_resync_view(set))
    }

    /// Ends move `id` when its query has finished: the hold, to be spliced.
    pub fn take_finished_hold(&self, id: u64) -> Option<Hold> {
        let mut hold = self.hold.lock().unwrap();
        if hold.as_ref().is_some_and(|h| h.id == id && h.result.is_some()) { hold.take() } else { None }
    }

    /// Encodes the groups of a splice as one transaction of the log at the marker's
    /// position `at`: `lsn` and `op_position` headers say where each message sits in the log
    /// (`at_0`, `at_2`, …), so a client resuming from them resumes exactly; each group keeps
    /// its own `txids`.
    pub fn encode_splice(&self, at: Lsn, groups: &[Spliced]) -> TxnEntries {
        let mut out = Vec::new();
        let mut next = 0u64;
        for (i, g) in groups.iter().enumerate() {
            if !g.moved_out.is_empty() {
                let tags: Vec<String> = g.moved_out.iter().map(|v| self.tag(v)).collect();
                out.push((LogOffset::change(at, next), move_out_event(&tags, g.xid)));
                next += 2;
            }
            next = self.encode_into(&mut out, g.xid, at, &g.planned, next, i + 1 == groups.len());
            if let Some(snap) = g.query_snapshot.as_ref().filter(|_| g.planned.iter().any(|p| p.move_in)) {
                out.push((LogOffset::change(at, next), snapshot_end(snap.xmin, snap.xmax, &snap.xip)));
                next += 2;
            }
        }
        out
    }

    /// The tag of rows whose tag column holds `value`: a hash, so a `move-out` names no
    /// value to clients that never held its rows (salted by the handle, as Electric's are).
    pub fn tag(&self, value: &str) -> String {
        use md5::Digest;
        let mut hash = md5::Md5::new();
        hash.update(self.handle.as_str().as_bytes());
        hash.update(b"\0v:");
        hash.update(value.as_bytes());
        base16ct::lower::encode_string(&hash.finalize())
    }

    /// Encodes one transaction's planned messages. Returns them for the caller to append,
    /// or `None` when the snapshot already holds the transaction, the log already has it
    /// (a replay after restart), or the snapshot is still pending (then they are held here).
    pub fn admit(&self, txn: &Txn, planned: &[Planned]) -> Option<TxnEntries> {
        let mut vis = self.visibility.lock().unwrap();
        let held = self.holds(&vis, txn);
        match &mut *vis {
            Visibility::Known(_) if held => None,
            Visibility::Known(_) => Some(self.encode(txn, planned)),
            Visibility::Pending(buffer) => {
                buffer.push((txn.xid, Ok(self.encode(txn, planned))));
                None
            }
        }
    }

    /// A transaction whose changes this shape could not evaluate (`why`). Returns why the
    /// shape must go now; `None` when its snapshot already holds the transaction (nothing
    /// of it is to be sent), or when that is not known yet: the snapshot then decides
    /// ([`LiveShape::set_snapshot`]).
    pub fn admit_unreadable(&self, txn: &Txn, why: String) -> Option<String> {
        let mut vis = self.visibility.lock().unwrap();
        let held = self.holds(&vis, txn);
        match &mut *vis {
            Visibility::Known(_) if held => None,
            Visibility::Known(_) => Some(why),
            Visibility::Pending(buffer) => {
                buffer.push((txn.xid, Err(why)));
                None
            }
        }
    }

    /// Whether the snapshot or the log already has `txn`.
    fn holds(&self, vis: &Visibility, txn: &Txn) -> bool {
        matches!(vis, Visibility::Known(snap) if snap.contains(txn.xid) || txn.commit_lsn <= self.log.written_lsn())
    }

    /// How the shape takes a transaction arriving in parts (the fan-out's `parts`), first met
    /// in one of its parts; `routed_from_start`: the shape was routable before its first part.
    /// `Ok(true)`: write its parts; `Ok(false)`: nothing of it is for this shape (the
    /// snapshot or the log has it; or the snapshot is under way and will decide, as for a
    /// change it could not evaluate). `Err`: the shape must go, since it may have missed
    /// earlier parts.
    pub fn start_parts(&self, txn: &Txn, routed_from_start: bool) -> Result<bool, String> {
        let mut vis = self.visibility.lock().unwrap();
        let held = self.holds(&vis, txn);
        let why = "it was made while a transaction larger than --txn-memory was arriving";
        match &mut *vis {
            Visibility::Known(_) if held => Ok(false),
            Visibility::Known(_) if routed_from_start => Ok(true),
            Visibility::Known(_) => Err(why.into()),
            Visibility::Pending(buffer) => {
                buffer.push((txn.xid, Err(why.into())));
                Ok(false)
            }
        }
    }

    /// Encodes part of a transaction's messages for this shape, the first at op `first`
    /// (see [`next_op`]); `ends_txn`: the last one ends the transaction.
    pub fn encode_part(&self, txn: &Txn, planned: &[Planned], first: u64, ends_txn: bool) -> TxnEntries {
        let mut out = Vec::with_capacity(planned.len());
        self.encode_into(&mut out, txn.xid, txn.commit_lsn, planned, first, ends_txn);
        out
    }

    fn encode(&self, txn: &Txn, planned: &[Planned]) -> TxnEntries {
        let mut out = Vec::with_capacity(planned.len());
        self.encode_into(&mut out, txn.xid, txn.commit_lsn, planned, 0, true);
        out
    }

    /// Appends messages sent as transaction `xid` to `out`, at log offsets `lsn_<op>` from
    /// op `start` on (`ends_txn`: the last one ends the log's transaction). Returns the op
    /// the next group starts at.
    fn encode_into(
        &self,
        out: &mut TxnEntries,
        xid: u32,
        lsn: Lsn,
        planned: &[Planned],
        start: u64,
        ends_txn: bool,
    ) -> u64 {
        let mut op = start;
        for (i, p) in planned.iter().enumerate() {
            if i > 0 {
                op = next_op(op, &planned[i - 1]);
            }
            let headers = LiveHeaders {
                txid: xid,
                lsn,
                op_position: op,
                last: ends_txn && i + 1 == planned.len(),
                key_change_to: p.key_change_to.as_deref(),
                key_change_from: p.key_change_from.as_deref(),
            };
            let mut msg = Vec::with_capacity(256);
            let fields = p.value.iter().map(|(c, v)| (*c, v.as_str()));
            let old: Option<Vec<(usize, Option<&str>)>> =
                p.old_value.as_ref().map(|o| o.iter().map(|(c, v)| (*c, v.as_str())).collect());
            self.encoder.write_change(&mut msg, p.op, &p.key, fields, old.as_deref(), Some(headers));
            if p.move_in {
                mark_move_in(&mut msg);
            }
            if let Some(link) = &p.link {
                let removed: Vec<String> = p.link_before.iter().map(|v| self.tag(v)).collect();
                add_tags(&mut msg, &[self.tag(link)], &removed);
            }
            out.push((LogOffset::change(lsn, op), msg));
        }
        if planned.is_empty() { start } else { op + 2 - (op % 2) }
    }

    /// The snapshot's visibility is known: stream transactions it already contains are
    /// dropped, the rest are written, and from now on transactions go straight to the log.
    /// When one of the rest could not be evaluated, nothing is written and the error says
    /// why the shape must go.
    pub fn set_snapshot(&self, snap: SnapshotInfo) -> Result<(), Unservable> {
        let mut vis = self.visibility.lock().unwrap();
        if let Visibility::Pending(buffer) = &mut *vis {
            let kept: Vec<TxnEntries> = std::mem::take(buffer)
                .into_iter()
                .filter(|(xid, _)| !snap.contains(*xid))
                .map(|(_, e)| e)
                .collect::<Result<_, String>>()
                .map_err(Unservable::Unreadable)?;
            self.log.append(&kept)?;
        }
        *vis = Visibility::Known(snap);
        drop(vis);
        self.log.sync_and_publish()?;
        // The fan-out decides which logs keep a descriptor open (`fanout::writers`).
        self.log.release_writer();
        Ok(())
    }

    /// Records the shape so it survives a restart, with the values of its sets its snapshot
    /// reflects; durable after the caller's filesystem sync or [`LiveShape::sync_record`],
    /// which must come before the snapshot is marked complete (`snapshot::completion`).
    pub fn record(&self, snapshot: SnapshotInfo, views: Views) -> io::Result<()> {
        if !self.sets.is_empty() {
            SetViews::created(views).write(self.log.dir())?;
        }
        let meta = ShapeMeta {
            handle: self.handle.clone(),
            spec: self.shape.spec.clone(),
            table: self.shape.table.clone(),
            snapshot,
            catalog: self.catalog.clone(),
        };
        replace_unsynced(&self.log.dir().join("shape.json"), &serde_json::to_vec(&meta).map_err(io::Error::other)?)
    }

    /// Syncs what [`LiveShape::record`] wrote, file by file.
    pub fn sync_record(&self) -> io::Result<()> {
        std::fs::File::open(self.log.dir().join("shape.json"))?.sync_data()?;
        // The same condition as `record`'s: only a shape through subqueries has views.
        if self.sets.is_empty() { Ok(()) } else { SetViews::sync(self.log.dir()) }
    }

    pub fn fail(&self, failure: ShapeFailure) {
        *self.failure.lock().unwrap() = Some(failure);
        self.log.mark_gone();
    }

    /// The tables the shape was bound with: its own, then those its subqueries read.
    pub fn tables(&self) -> impl Iterator<Item = &TableSchema> {
        std::iter::once(&self.shape.table).chain(&self.catalog)
    }

    pub fn failure(&self) -> Option<ShapeFailure> {
        self.failure.lock().unwrap().clone()
    }
}
