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
use shapes::set_registry::{SetId, SetRegistry};
use shapes::shape::Shape;
use shapes::subquery_set::{SetDelta, SubquerySet};
use shapes::where_clause::Subquery;
use tokio::sync::{mpsc, watch};

use super::live_shape::LiveShape;
use super::moves::{Hold, read_columns};
use super::snapshot_info::SnapshotInfo;

/// How long a new shape waits for its sets to load.
const LOAD_WAIT: Duration = Duration::from_secs(30);

/// A query to run at a snapshot, followed by a position marker with `marker` as content.
pub enum Job {
    /// A new set's values.
    Load { marker: String, set: SetId, subquery: Subquery },
    /// The rows moving into or out of `shape` (`sql` from [`Shape::moved_rows_sql`]).
    Move { marker: String, shape: Arc<LiveShape>, id: u64, sql: String },
}

/// Why a shape's sets could not be had.
#[derive(Debug, thiserror::Error)]
#[error("a subquery's set could not be loaded ({0}); retry")]
pub struct LoadFailed(pub String);

pub struct Sets {
    kept: Mutex<SetRegistry>,
    /// Each set's shapes, and whether the shape's own filter tests it.
    users: Mutex<HashMap<SetId, Vec<(u64, bool)>>>,
    /// Loads whose query finished, by marker, waiting for the stream to reach it.
    loads: Mutex<HashMap<String, (SetId, SubquerySet, SnapshotInfo)>>,
    failed: Mutex<HashSet<SetId>>,
    /// Bumped when a load ends, for shapes waiting on one.
    load_ended: watch::Sender<u64>,
    jobs: mpsc::UnboundedSender<Job>,
    next_move: AtomicU64,
}

impl Sets {
    pub fn new(jobs: mpsc::UnboundedSender<Job>) -> Sets {
        Sets {
            kept: Mutex::new(SetRegistry::default()),
            users: Mutex::new(HashMap::new()),
            loads: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashSet::new()),
            load_ended: watch::channel(0).0,
            jobs,
            next_move: AtomicU64::new(1),
        }
    }

    pub fn kept(&self) -> MutexGuard<'_, SetRegistry> {
        self.kept.lock().unwrap()
    }

    /// Acquires every set `shape` depends on (inner ones first; `oid` gives each inner
    /// table's oid), loading new ones, and waits until all are loaded.
    pub async fn acquire(
        &self,
        shape: &Shape,
        oid: impl Fn(&Subquery) -> u32,
    ) -> Result<Vec<(SetId, bool)>, LoadFailed> {
        let mut acquired = Vec::new();
        for (subquery, top) in shape.subqueries() {
            let (id, new) = self.kept().acquire(subquery, oid(subquery));
            if new {
                let marker = format!("set:{}", self.next_move.fetch_add(1, Ordering::Relaxed));
                let _ = self.jobs.send(Job::Load { marker, set: id, subquery: subquery.clone() });
            }
            acquired.push((id, top));
        }
        let mut ended = self.load_ended.subscribe();
        let waited = tokio::time::timeout(LOAD_WAIT, async {
            loop {
                let failed: Vec<SetId> =
                    acquired.iter().map(|(id, _)| *id).filter(|id| self.failed.lock().unwrap().contains(id)).collect();
                if !failed.is_empty() {
                    return Err(LoadFailed("its query failed; the gateway log has the cause".into()));
                }
                if acquired.iter().all(|(id, _)| self.kept().is_loaded(*id)) {
                    return Ok(());
                }
                if ended.changed().await.is_err() {
                    return Err(LoadFailed("the gateway is stopping".into()));
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(LoadFailed("it took too long".into())));
        match waited {
            Ok(()) => Ok(acquired),
            Err(e) => {
                self.release(&acquired);
                Err(e)
            }
        }
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

    /// A load's query failed: shapes waiting on it are refused.
    pub fn load_failed(&self, set: SetId) {
        self.failed.lock().unwrap().insert(set);
        self.load_ended.send_modify(|n| *n += 1);
    }

    /// The stream reached a load's marker: every transaction its snapshot saw has been
    /// applied or held, so the set takes the loaded values plus the held changes the
    /// snapshot did not see. `false`: `marker` is no load's.
    pub fn finish_load(&self, marker: &str) -> bool {
        let Some((set, loaded, snapshot)) = self.loads.lock().unwrap().remove(marker) else { return false };
        match self.kept().finish_load(set, loaded, |xid| snapshot.contains(xid)) {
            Ok(()) => self.load_ended.send_modify(|n| *n += 1),
            Err(e) => {
                tracing::warn!(error = %e, "a subquery set could not be caught up with the stream");
                self.load_failed(set);
            }
        }
        true
    }

    /// What one transaction's change to `set` means for its shapes: a move for each shape
    /// whose filter tests it, found by `shape`; the shapes to rotate instead, with why
    /// (their snapshot or another move is under way, the set is nested in another, or a
    /// NULL entered or left, which changes rows a move query cannot single out).
    pub fn on_change(
        &self,
        kept: &mut SetRegistry,
        txn: &Txn,
        set: SetId,
        delta: SetDelta,
        shape: impl Fn(u64) -> Option<Arc<LiveShape>>,
        rotate: &mut Vec<(Arc<LiveShape>, String)>,
    ) {
        let users = self.users.lock().unwrap();
        let mut affected: Vec<(u64, bool)> = users.get(&set).cloned().unwrap_or_default();
        for outer in kept.readers_of(set) {
            kept.retire(outer);
            affected.extend(users.get(&outer).into_iter().flatten().map(|(s, _)| (*s, false)));
        }
        drop(users);
        let with_null = delta.entered.iter().chain(&delta.left).any(|v| v.contains(&None));
        let Some(subquery) = kept.subquery(set).cloned() else { return };
        for (id, top) in affected {
            let Some(shape) = shape(id) else { continue };
            let why = if !top {
                "a subquery nested in its filter changed"
            } else if with_null {
                "a NULL entered or left a subquery's set"
            } else if !shape.snapshot_known() {
                "a subquery's set changed during its snapshot"
            } else if let Some(now) = kept.get(set) {
                if self.start_move(&shape, txn, set, &subquery, &delta, now) {
                    continue;
                }
                "two of its subqueries' sets changed at once"
            } else {
                continue;
            };
            rotate.push((shape, why.to_string()));
        }
    }

    /// Starts a move for `delta` (or widens the one under way for this set); `false` when a
    /// move for another set is under way.
    fn start_move(
        &self,
        shape: &Arc<LiveShape>,
        txn: &Txn,
        set: SetId,
        subquery: &Subquery,
        delta: &SetDelta,
        now: &SubquerySet,
    ) -> bool {
        let id = self.next_move.fetch_add(1, Ordering::Relaxed);
        let query = |hold: &Hold| shape.shape.moved_rows_sql(&hold.view(), &read_columns(&shape.shape));
        let sql = if shape.is_holding() {
            match shape.merge_hold(id, set, delta, now, query) {
                Some(sql) => sql,
                None => return false,
            }
        } else {
            let hold = Hold::new(id, set, subquery.clone(), txn.xid, delta, now);
            let sql = query(&hold);
            shape.start_hold(hold);
            sql
        };
        metrics::counter!("gateway_subquery_moves_total").increment(1);
        let marker = format!("move:{}:{id}", shape.id);
        let _ = self.jobs.send(Job::Move { marker, shape: shape.clone(), id, sql });
        true
    }

    /// Every shape using a set (a transaction the sets could not follow: all are rotated).
    pub fn all_users(&self) -> Vec<u64> {
        let users = self.users.lock().unwrap();
        let mut all: Vec<u64> = users.values().flatten().map(|(s, _)| *s).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}
