//! The live shapes' subquery sets (docs/subqueries.md): one kept set per distinct bound
//! subquery, loaded at a snapshot and caught up with the stream, and which shapes each
//! feeds. A change to a set starts a move in every shape whose filter tests it
//! ([`super::moves`]); the queries run elsewhere ([`Job`]) and report back through markers
//! in the stream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shapes::change::Txn;
use shapes::offset::Lsn;
use shapes::set_registry::{SetId, SetRegistry};
use shapes::shape::Shape;
use shapes::subquery_set::{SetDelta, SubquerySet};
use shapes::where_clause::{SetKey, Subquery};
use tokio::sync::{mpsc, watch};

use super::live_shape::LiveShape;
use super::moves::{Hold, SetChange, read_columns};
use super::snapshot_info::SnapshotInfo;
use super::views::Views;

/// The query of a set's values (a new set, or one reloaded because a set it reads changed).
pub struct SetLoad {
    pub marker: String,
    pub set: SetId,
    pub subquery: Subquery,
    /// Transactions the query's snapshot must show (the change that made it reload).
    pub xids: Vec<u32>,
}

/// How long a new shape waits for its sets to load.
const LOAD_WAIT: Duration = Duration::from_secs(30);

/// A query to run at a snapshot, followed by a position marker with `marker` as content.
pub enum Job {
    /// A new set's values.
    Load(SetLoad),
    /// The rows moving into or out of a shape.
    Move(MoveQuery),
}

/// The query of the rows moving into or out of `shape` in its move `id` (`sql` from
/// [`Shape::moved_rows_sql`]).
pub struct MoveQuery {
    pub marker: String,
    pub shape: Arc<LiveShape>,
    pub id: u64,
    pub sql: String,
    /// The transactions that changed the set: the query's snapshot must show them.
    pub set_xids: Vec<u32>,
}

/// Why a shape's sets could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LoadFailed {
    /// The subquery fails in PostgreSQL (a division by zero, a bad cast): the filter's fault.
    #[error("evaluating a subquery failed: {0}")]
    Filter(String),
    #[error("a subquery's set could not be loaded ({0}); retry")]
    Server(String),
}

pub struct Sets {
    kept: Mutex<SetRegistry>,
    /// Each set's shapes, and whether the shape's own filter tests it.
    users: Mutex<HashMap<SetId, Vec<(u64, bool)>>>,
    /// Loads whose query finished, by marker, waiting for the stream to reach it.
    loads: Mutex<HashMap<String, (SetId, SubquerySet, SnapshotInfo)>>,
    /// The load each loading set waits for: a later one supersedes an earlier one.
    awaited: Mutex<HashMap<SetId, String>>,
    /// Loads that failed, with the filter's fault when it was one.
    failed: Mutex<HashMap<SetId, Option<String>>>,
    /// Shapes holding changes for a move.
    holding: Mutex<HashSet<u64>>,
    /// Bumped when a load ends, for shapes waiting on one.
    load_ended: watch::Sender<u64>,
    jobs: mpsc::UnboundedSender<Job>,
    next_move: AtomicU64,
    /// Names this process's markers apart from those an earlier process wrote to the WAL,
    /// which the stream sends again after a restart: an old `set:1` taken for this
    /// process's `set:1` joined a load to the stream before its snapshot (caught by the
    /// several-subquery restart test under load).
    epoch: String,
}

impl Sets {
    pub fn new(jobs: mpsc::UnboundedSender<Job>) -> Sets {
        Sets {
            kept: Mutex::new(SetRegistry::default()),
            users: Mutex::new(HashMap::new()),
            loads: Mutex::new(HashMap::new()),
            awaited: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            holding: Mutex::new(HashSet::new()),
            load_ended: watch::channel(0).0,
            jobs,
            next_move: AtomicU64::new(1),
            epoch: format!("{:016x}", rand::random::<u64>()),
        }
    }

    pub fn kept(&self) -> MutexGuard<'_, SetRegistry> {
        self.kept.lock().unwrap()
    }

    /// Acquires every set `shape` depends on (`oid` gives each inner table's oid), each
    /// loaded before the next: an outer set's filter reads the inner ones while it loads.
    pub async fn acquire(
        &self,
        shape: &Shape,
        oid: impl Fn(&Subquery) -> u32,
    ) -> Result<Vec<(SetId, bool)>, LoadFailed> {
        let mut acquired = Vec::new();
        for (subquery, top) in shape.subqueries() {
            let id = self.acquire_one(subquery, oid(subquery));
            acquired.push((id, top));
            if let Err(e) = self.wait_loaded(id).await {
                self.release(&acquired);
                return Err(e);
            }
        }
        Ok(acquired)
    }

    /// [`Sets::acquire`] without waiting: for a shape reloaded at start, whose changes are
    /// held until its set is loaded ([`Sets::resume`]).
    pub fn acquire_loading(&self, shape: &Shape, oid: impl Fn(&Subquery) -> u32) -> Vec<(SetId, bool)> {
        shape.subqueries().into_iter().map(|(subquery, top)| (self.acquire_one(subquery, oid(subquery)), top)).collect()
    }

    /// A new set loads at once if the sets it reads are loaded, else once they are
    /// ([`Sets::load_readers`]): shapes reloaded at start acquire all their sets at once.
    fn acquire_one(&self, subquery: &Subquery, oid: u32) -> SetId {
        let mut kept = self.kept();
        let (id, new) = kept.acquire(subquery, oid);
        if new && kept.reads_loaded(id) {
            drop(kept);
            self.load(id, subquery.clone(), Vec::new());
        }
        id
    }

    /// Starts the loads of the sets reading `set` (just loaded) that were waiting for it.
    fn load_readers(&self, set: SetId) {
        let kept = self.kept();
        let waiting: Vec<(SetId, Subquery)> = kept
            .direct_readers(set)
            .iter()
            .filter(|r| !kept.is_loaded(**r) && kept.reads_loaded(**r))
            .filter(|r| !self.awaited.lock().unwrap().contains_key(*r))
            .filter_map(|r| Some((*r, kept.subquery(*r)?.clone())))
            .collect();
        drop(kept);
        for (reader, subquery) in waiting {
            self.load(reader, subquery, Vec::new());
        }
    }

    /// Queries `set`'s values at a snapshot showing `xids`; the load supersedes any other
    /// under way for it.
    fn load(&self, set: SetId, subquery: Subquery, xids: Vec<u32>) {
        let marker = format!("set:{}:{}", self.epoch, self.next_move.fetch_add(1, Ordering::Relaxed));
        self.awaited.lock().unwrap().insert(set, marker.clone());
        let _ = self.jobs.send(Job::Load(SetLoad { marker, set, subquery, xids }));
    }

    async fn wait_loaded(&self, set: SetId) -> Result<(), LoadFailed> {
        let mut ended = self.load_ended.subscribe();
        let waited = tokio::time::timeout(LOAD_WAIT, async {
            loop {
                if let Some(fault) = self.failed.lock().unwrap().get(&set).cloned() {
                    return Err(match fault {
                        Some(reason) => LoadFailed::Filter(reason),
                        None => LoadFailed::Server("its query failed; the gateway log has the cause".into()),
                    });
                }
                if self.kept().is_loaded(set) {
                    return Ok(());
                }
                if ended.changed().await.is_err() {
                    return Err(LoadFailed::Server("the gateway is stopping".into()));
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| Err(LoadFailed::Server("it took too long".into())))
    }

    /// The values of each set `shape`'s own filter tests, as they are now.
    pub fn views_of(&self, shape: &LiveShape) -> Views {
        let kept = self.kept();
        let mut views: Views = shape
            .sets
            .iter()
            .filter(|(_, top)| *top)
            .filter_map(|(id, _)| {
                let mut values: Vec<SetKey> = kept.get(*id)?.values().cloned().collect();
                values.sort_unstable();
                Some((kept.subquery(*id)?.to_sql().to_string(), values))
            })
            .collect();
        views.sort_unstable();
        views
    }

    /// Starts holding a reloaded shape's changes until its sets are loaded: its log reflects
    /// `views` of them.
    pub fn start_resync(&self, shape: &LiveShape, views: Vec<(SetId, Subquery, Vec<SetKey>)>) {
        shape.start_hold(Hold::resync(views));
        self.holding.lock().unwrap().insert(shape.id);
    }

    /// `set` finished loading: each reloaded shape waiting on it moves what differs between
    /// the values its log reflects and the set now (nothing, often: the query then reads
    /// no rows and only releases the held changes).
    pub fn resume(&self, set: SetId, shape: impl Fn(u64) -> Option<Arc<LiveShape>>) {
        let users = self.users_of(set);
        let kept = self.kept();
        let (Some(now), Some(subquery)) = (kept.get(set), kept.subquery(set)) else { return };
        for live in users.into_iter().filter_map(&shape) {
            let Some(view) = live.take_resync_view(set) else { continue };
            let delta = SetDelta {
                entered: now.values().filter(|v| !view.contains(v)).cloned().collect(),
                left: view.iter().filter(|v| !now.holds(v)).cloned().collect(),
            };
            self.start_move(&live, 0, &SetChange { set, subquery, delta: &delta, now });
        }
    }

    /// The commit position of the first change any shape holds: nothing from there on may
    /// be acknowledged (after a crash, the stream must send it again).
    pub fn hold_floor(&self, shape: impl Fn(u64) -> Option<Arc<LiveShape>>) -> Option<Lsn> {
        self.holding().into_iter().filter_map(shape).filter_map(|s| s.first_held()).min()
    }

    /// The shapes holding changes for a move.
    pub fn holding(&self) -> Vec<u64> {
        self.holding.lock().unwrap().iter().copied().collect()
    }

    /// A shape's hold was spliced.
    pub fn end_hold(&self, shape: u64) {
        self.holding.lock().unwrap().remove(&shape);
    }

    /// Gives back sets acquired for a shape that was not registered.
    pub fn release(&self, sets: &[(SetId, bool)]) {
        let mut kept = self.kept();
        for (id, _) in sets {
            kept.release(*id);
        }
    }

    /// Records a registered shape as a user of its sets.
    pub fn register(&self, shape: &LiveShape) {
        let mut users = self.users.lock().unwrap();
        for (id, top) in &shape.sets {
            users.entry(*id).or_default().push((shape.id, *top));
        }
    }

    /// A shape is gone: it uses its sets no more.
    pub fn unregister(&self, shape: &LiveShape) {
        self.end_hold(shape.id);
        let mut users = self.users.lock().unwrap();
        for (id, _) in &shape.sets {
            if let Some(list) = users.get_mut(id) {
                list.retain(|(s, _)| *s != shape.id);
                if list.is_empty() {
                    users.remove(id);
                }
            }
        }
        drop(users);
        self.release(&shape.sets);
    }

    /// A load's query finished at `snapshot`: kept until the stream reaches `marker`.
    pub fn load_read(&self, marker: String, set: SetId, loaded: SubquerySet, snapshot: SnapshotInfo) {
        self.loads.lock().unwrap().insert(marker, (set, loaded, snapshot));
    }

    /// A load's query failed (`filter_fault`: because the filter fails, and why): shapes
    /// waiting on it are refused.
    pub fn load_failed(&self, set: SetId, filter_fault: Option<String>) {
        self.failed.lock().unwrap().insert(set, filter_fault);
        self.load_ended.send_modify(|n| *n += 1);
    }

    /// The stream reached a load's marker: every transaction its snapshot saw has been
    /// applied or held, so the set takes the loaded values plus the held changes the
    /// snapshot did not see. `None`: `marker` is no load's; `Some(Err)`: the set failed.
    pub fn finish_load(&self, marker: &str) -> Option<Result<SetId, SetId>> {
        let (set, loaded, snapshot) = self.loads.lock().unwrap().remove(marker)?;
        {
            let mut awaited = self.awaited.lock().unwrap();
            if awaited.get(&set).map(String::as_str) != Some(marker) {
                return None;
            }
            awaited.remove(&set);
        }
        let finished = self.kept().finish_load(set, loaded, |xid| snapshot.contains(xid));
        Some(match finished {
            Ok(()) => {
                self.load_readers(set);
                self.load_ended.send_modify(|n| *n += 1);
                Ok(set)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a subquery set could not be caught up with the stream");
                self.load_failed(set, None);
                Err(set)
            }
        })
    }

    /// The shape and move a move marker names, if this process wrote it.
    pub fn move_of(&self, marker: &str) -> Option<(u64, u64)> {
        let rest = marker.strip_prefix("move:")?.strip_prefix(self.epoch.as_str())?.strip_prefix(':')?;
        let (shape, id) = rest.split_once(':')?;
        Some((shape.parse().ok()?, id.parse().ok()?))
    }

    /// The shapes using `set`.
    pub fn users_of(&self, set: SetId) -> Vec<u64> {
        self.users.lock().unwrap().get(&set).into_iter().flatten().map(|(s, _)| *s).collect()
    }

    /// What one transaction's change to `set` means for its shapes: a move for each shape
    /// whose filter tests it, found by `shape` (a move under way widens to cover it). The
    /// sets whose filters read it, directly or through others, load again at a snapshot
    /// showing the change (each after the sets it reads), their shapes holding their
    /// changes until then, after which the difference moves ([`Sets::resume`]). Shapes
    /// whose snapshot is under way are rotated instead, with why.
    pub fn on_change(
        &self,
        kept: &mut SetRegistry,
        txn: &Txn,
        set: SetId,
        delta: SetDelta,
        shape: impl Fn(u64) -> Option<Arc<LiveShape>>,
        rotate: &mut Vec<(Arc<LiveShape>, String)>,
    ) {
        let readers = kept.readers_of(set);
        for outer in &readers {
            kept.reload(*outer);
        }
        let users = self.users.lock().unwrap();
        // The shapes whose own filter tests a set: one reading `set` only through other
        // sets follows their reloads.
        let testing = |set: &SetId| users.get(set).into_iter().flatten().filter(|(_, top)| *top).map(|(s, _)| *s);
        let affected: Vec<u64> = testing(&set).collect();
        let awaiting: Vec<(u64, SetId)> =
            readers.iter().flat_map(|outer| testing(outer).map(|s| (s, *outer))).collect();
        drop(users);
        for outer in &readers {
            if !kept.reads_loaded(*outer) {
                // A load under way would apply changes held against sets now reloading: it
                // is dropped, and the set loads after them (`load_readers`).
                self.awaited.lock().unwrap().remove(outer);
            } else if let Some(subquery) = kept.subquery(*outer).cloned() {
                self.load(*outer, subquery, vec![txn.xid]);
            }
        }
        for (id, outer) in awaiting {
            let Some(shape) = shape(id) else { continue };
            if !shape.snapshot_known() {
                rotate.push((shape, "a subquery's set changed during its snapshot".into()));
                continue;
            }
            let (Some(values), Some(subquery)) = (kept.get(outer), kept.subquery(outer)) else { continue };
            let values: Vec<SetKey> = values.values().cloned().collect();
            let move_id = self.next_move.fetch_add(1, Ordering::Relaxed);
            shape.await_set(move_id, txn.xid, outer, subquery, values);
            self.holding.lock().unwrap().insert(shape.id);
            tracing::debug!(handle = %shape.handle, move_id, xid = txn.xid, "a nested set changed: held until its outer set reloads");
        }
        let Some(subquery) = kept.subquery(set).cloned() else { return };
        for id in affected {
            let Some(shape) = shape(id) else { continue };
            if !shape.snapshot_known() {
                rotate.push((shape, "a subquery's set changed during its snapshot".into()));
            } else if let Some(now) = kept.get(set) {
                self.start_move(&shape, txn.xid, &SetChange { set, subquery: &subquery, delta: &delta, now });
            }
        }
    }

    /// Starts a move for `delta` (or widens the one under way to cover it too). A restarted
    /// shape still waiting for another of its sets to load runs no query until it has.
    fn start_move(&self, shape: &Arc<LiveShape>, trigger_xid: u32, change: &SetChange) {
        let id = self.next_move.fetch_add(1, Ordering::Relaxed);
        let query = |hold: &Hold| {
            let sql = shape.shape.moved_rows_sql(&hold.views(), &read_columns(&shape.shape));
            (!hold.awaits_sets()).then(|| (sql, hold.set_xids.clone()))
        };
        let merged = shape.merge_hold(id, trigger_xid, change, query);
        let query = match merged {
            Some(query) => query,
            None => {
                let hold = Hold::new(id, trigger_xid, change);
                let query = query(&hold);
                shape.start_hold(hold);
                self.holding.lock().unwrap().insert(shape.id);
                query
            }
        };
        let Some((sql, set_xids)) = query else { return };
        metrics::counter!("gateway_subquery_moves_total").increment(1);
        tracing::debug!(handle = %shape.handle, move_id = id, xid = trigger_xid, entered = change.delta.entered.len(), left = change.delta.left.len(), "move started or widened");
        let marker = format!("move:{}:{}:{id}", self.epoch, shape.id);
        let _ = self.jobs.send(Job::Move(MoveQuery { marker, shape: shape.clone(), id, sql, set_xids }));
    }
}

#[cfg(test)]
mod tests {
    use shapes::table::TableName;
    use shapes::value::SqlType;

    use super::*;

    /// After a restart the stream sends again the markers an earlier process wrote: this
    /// process's loads and moves must not take them for their own.
    #[test]
    fn markers_of_an_earlier_process_are_not_taken_for_this_ones() {
        let (jobs, mut queued) = mpsc::unbounded_channel();
        let (earlier, now) = (Sets::new(jobs.clone()), Sets::new(jobs));
        let subquery =
            Subquery::new(TableName::new("public", "members"), vec![(1, "project_id".into(), SqlType::Int)], None);
        earlier.acquire_one(&subquery, 1);
        let set = now.acquire_one(&subquery, 1);
        let mut marker = || match queued.try_recv() {
            Ok(Job::Load(load)) => load.marker,
            _ => panic!("a load was queued"),
        };
        let (old, current) = (marker(), marker());
        assert_ne!(old, current, "the first load of each process");
        let snapshot = SnapshotInfo::parse("10:10:").unwrap();
        now.load_read(old.clone(), set, SubquerySet::default(), snapshot.clone());
        assert!(now.finish_load(&old).is_none(), "an earlier process's marker finishes nothing");
        assert!(!now.kept().is_loaded(set));
        now.load_read(current.clone(), set, SubquerySet::default(), snapshot);
        assert!(matches!(now.finish_load(&current), Some(Ok(s)) if s == set));
        assert_eq!(now.move_of(&format!("move:{}:3:7", now.epoch)), Some((3, 7)));
        assert_eq!(now.move_of(&format!("move:{}:3:7", earlier.epoch)), None);
        assert_eq!(now.move_of("move:3:7"), None);
    }
}
