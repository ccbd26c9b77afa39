//! The live shapes: found by definition, by handle and, for routing, by table. Shapes are
//! persisted under `<data-dir>/shapes/<handle>/` and reloaded at start; a shape whose
//! snapshot never completed is discarded (its clients get 409 and refetch).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use shapes::change::{Change, Relation};
use shapes::index::{RoutingIndex, index_terms};
use shapes::log::ShapeLog;
use shapes::offset::Lsn;
use shapes::shape::{ScopeSpec, Shape, ShapeHandle, ShapeKey};
use shapes::table::{TableName, TableSchema};
use shapes::where_clause::{BindOptions, Subquery};

use shapes::set_registry::{SetId, SetRegistry};
use tokio::sync::mpsc;

use super::live_shape::{LiveShape, ShapeMeta, SnapshotInfo};
use super::set_routing::SetRouting;
use super::sets::{Job, Sets};
use super::views::SetViews;

mod followed;

#[derive(Default)]
struct Inner {
    by_key: HashMap<ShapeKey, Arc<LiveShape>>,
    by_handle: HashMap<ShapeHandle, Arc<LiveShape>>,
    by_id: HashMap<u64, Arc<LiveShape>>,
    tables: HashMap<u32, RoutingIndex<u64>>,
    /// Shapes found through their sets' values (no equality term to index them by).
    linked: HashMap<u32, SetRouting>,
    /// What the shape limits count, kept as shapes come and go: a crowd of new shapes is
    /// not a scan of every shape each.
    counts: HashMap<TableName, ShapeCounts>,
    /// Shapes made routable so far: the order of [`LiveShape::routable_from`].
    registrations: u64,
}

#[derive(Default)]
struct ShapeCounts {
    total: usize,
    by_scope: HashMap<ScopeSpec, usize>,
}

impl Inner {
    fn count(&mut self, live: &LiveShape, added: bool) {
        let counts = self.counts.entry(live.shape.table.name.clone()).or_default();
        let step = |n: &mut usize| if added { *n += 1 } else { *n = n.saturating_sub(1) };
        step(&mut counts.total);
        if let Some(scope) = &live.shape.spec.scope {
            let n = counts.by_scope.entry(scope.clone()).or_default();
            step(n);
            if *n == 0 {
                counts.by_scope.remove(scope);
            }
        }
        if counts.total == 0 {
            self.counts.remove(&live.shape.table.name);
        }
    }

    fn insert(&mut self, live: Arc<LiveShape>) {
        self.count(&live, true);
        live.routable_from.store(self.registrations, Ordering::Relaxed);
        self.registrations += 1;
        let conjuncts = live.shape.conjuncts();
        match SetRouting::link(&live).filter(|_| index_terms(&conjuncts).is_none()) {
            Some(link) => self.linked.entry(live.shape.table.oid).or_default().insert(live.id, link),
            None => self.tables.entry(live.shape.table.oid).or_default().insert(live.id, &conjuncts),
        }
        self.by_key.insert(live.key.clone(), live.clone());
        self.by_handle.insert(live.handle.clone(), live.clone());
        self.by_id.insert(live.id, live);
    }
}

pub struct Registry {
    dir: PathBuf,
    chunk_bytes: u64,
    bind: BindOptions,
    inner: RwLock<Inner>,
    /// Everything before this was acknowledged to PostgreSQL: logs must hold it intact.
    acknowledged: Lsn,
    next_id: AtomicU64,
    last_handle_micros: AtomicU64,
    schemas: Mutex<HashMap<TableName, TableSchema>>,
    sets: Sets,
}

impl Registry {
    /// Opens the shapes stored under `data_dir`. A shape whose log lost entries from before
    /// `acknowledged` (damage, not a torn last write) is discarded: its clients refetch.
    /// Set and move queries go to `jobs` ([`super::sets::Job`]).
    pub fn open(
        data_dir: &Path,
        chunk_bytes: u64,
        bind: BindOptions,
        acknowledged: Lsn,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> io::Result<Registry> {
        let registry = Registry::empty(data_dir, chunk_bytes, bind, acknowledged, jobs);
        std::fs::create_dir_all(&registry.dir)?;
        let mut loaded = 0;
        for entry in std::fs::read_dir(&registry.dir)? {
            let path = entry?.path();
            match registry.load(&path) {
                Ok(true) => loaded += 1,
                Ok(false) => {
                    tracing::info!(dir = %path.display(), "discarding a shape whose snapshot never completed");
                    std::fs::remove_dir_all(&path)?;
                }
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "discarding an unreadable shape");
                    std::fs::remove_dir_all(&path)?;
                }
            }
        }
        tracing::info!(shapes = loaded, "shape logs loaded");
        Ok(registry)
    }

    fn empty(
        data_dir: &Path,
        chunk_bytes: u64,
        bind: BindOptions,
        acknowledged: Lsn,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> Registry {
        Registry {
            dir: data_dir.join("shapes"),
            chunk_bytes,
            bind,
            inner: RwLock::new(Inner::default()),
            acknowledged,
            next_id: AtomicU64::new(1),
            last_handle_micros: AtomicU64::new(0),
            schemas: Mutex::new(HashMap::new()),
            sets: Sets::new(jobs),
        }
    }

    fn load(&self, path: &Path) -> io::Result<bool> {
        let Some(meta) = ShapeMeta::read(path)? else {
            return Ok(false);
        };
        let Some(log) = ShapeLog::open_checked(path, self.chunk_bytes, self.acknowledged)? else {
            return Ok(false);
        };
        let shape =
            Shape::bind_with_tables(meta.spec, meta.table, Some(&meta.catalog), self.bind).map_err(io::Error::other)?;
        let subqueries: Vec<Subquery> = shape.subqueries().into_iter().map(|(s, _)| s.clone()).collect();
        if subqueries.is_empty() {
            let live = self.live_shape(meta.handle, shape, log, Some(meta.snapshot), Vec::new(), Vec::new());
            self.register(Arc::new(live));
            return Ok(true);
        }
        // A shape through subqueries resumes: its changes wait for the sets its filter
        // tests to load (each after the sets it reads), then what changed meanwhile moves
        // in or out.
        let stored = SetViews::read(path)?.ok_or_else(|| io::Error::other("its set views are missing"))?;
        let stored = stored.as_of(log.written_lsn());
        let tops: Vec<bool> = shape.subqueries().iter().map(|(_, top)| *top).collect();
        let mut views = Vec::new();
        for (subquery, _) in subqueries.iter().zip(&tops).filter(|(_, top)| **top) {
            let found = stored.iter().find(|(sql, _)| sql == subquery.to_sql());
            views.push(found.map(|(_, view)| view.clone()).ok_or_else(|| io::Error::other("a set's view is missing"))?);
        }
        let oid = |s: &Subquery| meta.catalog.iter().find(|t| t.name == s.table).map_or(0, |t| t.oid);
        let sets = self.sets.acquire_loading(&shape, oid);
        let tested = sets.iter().zip(subqueries).filter(|((_, top), _)| *top);
        let views = tested.zip(views).map(|(((set, _), subquery), view)| (*set, subquery, view)).collect();
        let live = Arc::new(self.live_shape(meta.handle, shape, log, Some(meta.snapshot), sets, meta.catalog.clone()));
        self.sets.start_resync(&live, views);
        self.sets.register(&live);
        self.register(live);
        Ok(true)
    }

    fn live_shape(
        &self,
        handle: ShapeHandle,
        shape: Shape,
        log: ShapeLog,
        snapshot: Option<SnapshotInfo>,
        sets: Vec<(SetId, bool)>,
        catalog: Vec<TableSchema>,
    ) -> LiveShape {
        LiveShape::new(self.next_id.fetch_add(1, Ordering::Relaxed), handle, shape, log, snapshot, sets, catalog)
    }

    /// Shapes made routable from now on are marked at or after this
    /// ([`Registry::routable_before`]).
    pub fn routing_mark(&self) -> u64 {
        self.inner.read().unwrap().registrations
    }

    /// Whether `shape` was routable before `mark` was taken.
    pub fn routable_before(shape: &LiveShape, mark: u64) -> bool {
        shape.routable_from.load(Ordering::Relaxed) < mark
    }

    pub fn sets(&self) -> &Sets {
        &self.sets
    }

    pub fn by_id(&self, id: u64) -> Option<Arc<LiveShape>> {
        self.inner.read().unwrap().by_id.get(&id).cloned()
    }

    fn register(&self, live: Arc<LiveShape>) {
        self.inner.write().unwrap().insert(live);
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    pub fn bind_options(&self) -> BindOptions {
        self.bind
    }

    pub fn get(&self, key: &ShapeKey) -> Option<Arc<LiveShape>> {
        self.inner.read().unwrap().by_key.get(key).cloned()
    }

    pub fn by_handle(&self, handle: &ShapeHandle) -> Option<Arc<LiveShape>> {
        self.inner.read().unwrap().by_handle.get(handle).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the live shape for `shape`'s definition, or creates it with a new handle and
    /// an empty log waiting for its snapshot. `true` means the caller must snapshot it.
    /// `sets` were acquired for it: a new shape keeps them, and an existing one is returned
    /// with them released.
    pub fn get_or_create(
        &self,
        shape: Shape,
        sets: Vec<(SetId, bool)>,
        catalog: Vec<TableSchema>,
    ) -> io::Result<(Arc<LiveShape>, bool)> {
        let found = self.find_or_create(shape, &sets, catalog);
        if !matches!(found, Ok((_, true))) {
            self.sets.release(&sets);
        }
        found
    }

    fn find_or_create(
        &self,
        shape: Shape,
        sets: &[(SetId, bool)],
        catalog: Vec<TableSchema>,
    ) -> io::Result<(Arc<LiveShape>, bool)> {
        let key = shape.key();
        if let Some(existing) = self.get(&key) {
            return Ok((existing, false));
        }
        let mut inner = self.inner.write().unwrap();
        if let Some(existing) = inner.by_key.get(&key) {
            return Ok((existing.clone(), false));
        }
        let handle = ShapeHandle::new(&key, self.unique_micros());
        let log = ShapeLog::create(&self.dir.join(handle.as_str()), self.chunk_bytes)?;
        let live = Arc::new(self.live_shape(handle, shape, log, None, sets.to_vec(), catalog));
        self.sets.register(&live);
        inner.insert(live.clone());
        metrics::counter!("gateway_shapes_created_total").increment(1);
        metrics::gauge!("gateway_shapes").set(inner.by_id.len() as f64);
        Ok((live, true))
    }

    fn unique_micros(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let prev = self.last_handle_micros.fetch_max(now, Ordering::SeqCst);
        if prev >= now { self.last_handle_micros.fetch_add(1, Ordering::SeqCst) + 1 } else { now }
    }

    /// The shapes a change on table `oid` may touch.
    /// The shapes a change on table `oid` may touch; `sets` routes those linked through
    /// their sets. Shapes holding changes for a move take every change of their table: the
    /// set as it was before the move decides for them at the splice.
    pub fn candidates(&self, oid: u32, change: &Change, sets: &SetRegistry, ids: &mut Vec<u64>) -> Vec<Arc<LiveShape>> {
        let inner = self.inner.read().unwrap();
        let rows = change.rows();
        ids.clear();
        if let Some(index) = inner.tables.get(&oid) {
            index.candidates(&rows, ids);
        }
        if let Some(linked) = inner.linked.get(&oid) {
            linked.candidates(&rows, sets, ids);
            ids.extend(
                self.sets
                    .holding()
                    .into_iter()
                    .filter(|id| inner.by_id.get(id).is_some_and(|s| s.shape.table.oid == oid)),
            );
            ids.sort_unstable();
            ids.dedup();
        }
        ids.iter().filter_map(|id| inner.by_id.get(id).cloned()).collect()
    }

    /// A Relation message: shapes built on a different column list, or that need old rows
    /// the stream no longer sends, are rotated.
    pub fn on_relation(&self, rel: &Relation) {
        let affected: Vec<(Arc<LiveShape>, &str)> = {
            let inner = self.inner.read().unwrap();
            inner
                .by_id
                .values()
                .filter(|s| s.shape.table.oid == rel.oid)
                .filter_map(|s| {
                    if !s.shape.table.same_columns(&rel.columns) {
                        Some((s.clone(), "the table's columns changed"))
                    } else if s.shape.needs_old_rows() && rel.replica_identity != b'f' {
                        Some((s.clone(), "the table's REPLICA IDENTITY is no longer FULL"))
                    } else {
                        None
                    }
                })
                .collect()
        };
        // New shapes are bound from the cached table: it goes when its columns or its
        // replica identity (whether it sends old rows) are no longer what was read.
        let stale = |t: &TableSchema| {
            t.oid == rel.oid
                && (!t.same_columns(&rel.columns) || t.replica_identity_full != (rel.replica_identity == b'f'))
        };
        if !affected.is_empty() || self.schemas.lock().unwrap().values().any(stale) {
            self.schemas.lock().unwrap().retain(|_, t| t.oid != rel.oid);
        }
        for (shape, reason) in affected {
            self.rotate(&shape, reason);
        }
    }

    /// Rotates every shape using subquery set `set`.
    pub fn rotate_users_of(&self, set: SetId, reason: &str) {
        for shape in self.sets.users_of(set).into_iter().filter_map(|id| self.by_id(id)) {
            self.rotate(&shape, reason);
        }
    }

    /// Rotates every shape of a table (TRUNCATE, DELETE by table).
    pub fn rotate_table(&self, oid: u32, reason: &str) {
        let shapes: Vec<Arc<LiveShape>> =
            self.inner.read().unwrap().by_id.values().filter(|s| s.shape.table.oid == oid).cloned().collect();
        for s in &shapes {
            self.rotate(s, reason);
        }
    }

    /// Checkpoints every log's index so the next start need not scan the logs; call once
    /// appends have stopped. Failures only cost a scan later, so they are logged, not raised.
    pub fn checkpoint_all(&self) {
        let shapes = self.all();
        for s in &shapes {
            if let Err(e) = s.log.checkpoint() {
                tracing::warn!(handle = %s.handle, error = %e, "could not checkpoint a shape log");
            }
        }
        if let Err(e) = shapes::durable::sync_filesystem(&self.dir) {
            tracing::warn!(error = %e, "could not sync the checkpoints");
        }
    }

    /// Every shape (a copy of the list: the caller may rotate or reload them).
    pub fn all(&self) -> Vec<Arc<LiveShape>> {
        self.inner.read().unwrap().by_id.values().cloned().collect()
    }

    pub fn rotate_all(&self, reason: &str) {
        let shapes = self.all();
        for s in &shapes {
            self.rotate(s, reason);
        }
    }

    /// Ends a shape generation: readers get 409, the next request creates a new handle.
    pub fn rotate(&self, shape: &LiveShape, reason: &str) {
        if self.remove(shape) {
            metrics::counter!("gateway_shapes_rotated_total").increment(1);
            self.sets.unregister(shape);
            tracing::info!(handle = %shape.handle, table = %shape.shape.table.name, reason, "shape rotated");
            if let Err(e) = shape.log.destroy() {
                tracing::warn!(handle = %shape.handle, error = %e, "could not remove a rotated shape's files");
            }
        }
    }

    /// Takes a shape out of every map; `false` if it was not in them.
    fn remove(&self, shape: &LiveShape) -> bool {
        let mut inner = self.inner.write().unwrap();
        let removed = inner.by_id.remove(&shape.id).is_some();
        if removed {
            inner.count(shape, false);
            inner.by_handle.remove(&shape.handle);
            if inner.by_key.get(&shape.key).is_some_and(|s| s.id == shape.id) {
                inner.by_key.remove(&shape.key);
            }
            if let Some(index) = inner.tables.get_mut(&shape.shape.table.oid) {
                index.remove(shape.id);
                if index.is_empty() {
                    inner.tables.remove(&shape.shape.table.oid);
                }
            }
            if let Some(linked) = inner.linked.get_mut(&shape.shape.table.oid)
                && linked.remove(shape.id)
            {
                inner.linked.remove(&shape.shape.table.oid);
            }
            metrics::gauge!("gateway_shapes").set(inner.by_id.len() as f64);
        }
        removed
    }

    pub fn cached_schema(&self, name: &TableName) -> Option<TableSchema> {
        self.schemas.lock().unwrap().get(name).cloned()
    }

    pub fn cache_schema(&self, schema: TableSchema) {
        self.schemas.lock().unwrap().insert(schema.name.clone(), schema);
    }

    pub fn forget_schema(&self, name: &TableName) {
        self.schemas.lock().unwrap().remove(name);
    }

    /// How many shapes `table` has, and how many of them have `scope`.
    pub fn count_of(&self, table: &TableName, scope: Option<&ScopeSpec>) -> (usize, Option<usize>) {
        let inner = self.inner.read().unwrap();
        let counts = inner.counts.get(table);
        let in_scope = scope.map(|sc| counts.and_then(|c| c.by_scope.get(sc)).copied().unwrap_or(0));
        (counts.map_or(0, |c| c.total), in_scope)
    }

    /// Shapes of a table by name (for DELETE).
    pub fn shapes_of(&self, name: &TableName) -> Vec<Arc<LiveShape>> {
        self.inner.read().unwrap().by_id.values().filter(|s| &s.shape.table.name == name).cloned().collect()
    }
}
