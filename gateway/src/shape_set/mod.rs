//! The set of live shapes and its lifecycle: finding the shape for a definition or creating
//! it (the table's publication, its log, its snapshot), dropping shapes, and owning their
//! snapshot tasks, which stop when their shape goes or the gateway stops. HTTP handlers
//! parse and authorize a request, call this, and render the result.

pub mod admission;
mod known;

use std::collections::HashSet;
use std::sync::Arc;

use shapes::shape::{Shape, ShapeError, ShapeSpec};
use shapes::table::{TableName, TableSchema};
use shapes::where_clause::{Subquery, WhereError};
use tokio::sync::Mutex;
use tokio_postgres::Config;

use self::admission::{ShapeAdmission, ShapeLimits, SnapshotPermit};
use self::known::KnownShapes;
use crate::auth::AuthError;
use crate::db::{self, DbError};
use crate::fanout::live_shape::LiveShape;
use crate::fanout::registry::Registry;
use crate::fanout::sets::LoadFailed;
use crate::replication::{ReplicationError, slot};
use crate::snapshot::Snapshots;
use crate::status::Status;
use crate::tasks::Tasks;

/// Why a shape could not be found or created, each with what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum ShapeSetError {
    /// The definition is wrong: `field` names the request parameter at fault.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Access(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    /// The table does not exist (it may have been dropped since the shape was made).
    #[error("table {0} does not exist")]
    MissingTable(String),
    #[error("the database is unreachable; retry")]
    Unreachable,
    /// New shapes are paused (the WAL budget); existing ones are served.
    #[error("{0}")]
    Paused(String),
    #[error("{0}")]
    TooMany(String),
    /// A bound on concurrent work, or a lock held by someone else: retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error("cannot create the shape's log ({0}); retry when the gateway's storage has room")]
    Storage(std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
    /// A read-serving standby has no such shape: the leader makes it.
    #[error("this gateway serves reads of existing shapes; the leader creates new ones")]
    AtLeader,
}

/// A definition bound from the cached catalog.
enum Cached {
    Existing(Arc<LiveShape>),
    New(Box<Shape>, Vec<TableSchema>),
}

/// A standby reads the shapes directory for a definition it lacks at most this often.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Most tables one shape's subqueries may read.
const MAX_TABLES: usize = 8;

pub struct ShapeSet {
    registry: Arc<Registry>,
    db: Config,
    snapshots: Arc<Snapshots>,
    publication: String,
    status: Arc<Status>,
    admission: ShapeAdmission,
    /// Serializes shape creation (publication changes, snapshot start).
    create_lock: Mutex<()>,
    /// A session for catalog reads and publication changes, reconnected when it dropped.
    catalog: Mutex<Option<tokio_postgres::Client>>,
    /// Tables (by oid) found or put in the publication by this process.
    published: std::sync::Mutex<HashSet<u32>>,
    known: KnownShapes,
    tasks: Tasks,
    /// A read-serving standby: it serves the leader's shapes and makes none.
    follows: bool,
    /// When a standby last read the shapes directory for a definition it lacked.
    last_rescan: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ShapeSet {
    pub fn new(
        registry: Arc<Registry>,
        db: Config,
        publication: String,
        status: Arc<Status>,
        limits: ShapeLimits,
        tasks: Tasks,
    ) -> Result<ShapeSet, DbError> {
        let snapshots = Arc::new(Snapshots::new(&db, limits.max_concurrent_snapshots)?);
        Ok(ShapeSet {
            registry,
            db,
            snapshots,
            publication,
            status,
            admission: ShapeAdmission::new(limits),
            create_lock: Mutex::new(()),
            catalog: Mutex::new(None),
            published: std::sync::Mutex::new(HashSet::new()),
            known: KnownShapes::default(),
            tasks,
            follows: false,
            last_rescan: std::sync::Mutex::new(None),
        })
    }

    /// This set serves another gateway's shapes (see `follow`): a definition it does
    /// not find is [`ShapeSetError::AtLeader`].
    pub fn following(self) -> ShapeSet {
        ShapeSet { follows: true, ..self }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Finds the shape for `spec` on `table`, creating it (and starting its snapshot) if new.
    /// `readable` refuses a shape whose filter reads a column the caller may not read.
    pub async fn resolve(
        &self,
        table: &TableName,
        spec: &ShapeSpec,
        readable: impl Fn(&Shape) -> Result<(), AuthError>,
    ) -> Result<Arc<LiveShape>, ShapeSetError> {
        // The caller's right to read what the filter reads is checked on every request.
        if let Some(live) = self.known.find(&self.registry, table, spec) {
            readable(&live.shape)?;
            return Ok(live);
        }
        let live = self.bind_and_resolve(table, spec, readable).await?;
        self.known.remember(table, spec, &live);
        Ok(live)
    }

    /// Binds `spec` to `schema` with the subqueries' tables in `catalog`; `Ok(Err(table))`
    /// when a subquery reads a table `catalog` lacks.
    fn bind(
        &self,
        table: &TableName,
        spec: &ShapeSpec,
        schema: TableSchema,
        catalog: &Vec<TableSchema>,
        readable: &impl Fn(&Shape) -> Result<(), AuthError>,
    ) -> Result<Result<Shape, TableName>, ShapeSetError> {
        let options = self.registry.bind_options();
        match Shape::bind_with_tables(spec.clone(), schema, Some(catalog), options) {
            Err(
                ShapeError::Where(WhereError::UnknownTable(inner)) | ShapeError::Scope(WhereError::UnknownTable(inner)),
            ) => Ok(Err(inner)),
            Err(ShapeError::Where(w)) => Err(ShapeSetError::Invalid { field: "where", message: w.to_string() }),
            Err(ShapeError::Columns(c)) => Err(ShapeSetError::Invalid { field: "columns", message: c }),
            Err(ShapeError::Scope(w)) => Err(ShapeSetError::Forbidden(format!(
                "the token's claims do not fit the access rule of {}: {w}",
                table.quoted()
            ))),
            Ok(shape) => {
                readable(&shape)?;
                Ok(Ok(shape))
            }
        }
    }

    /// The definition bound from the cached catalog: its existing shape, or the shape to
    /// make with the tables it read; `None` when the cache lacks a table.
    fn bind_cached(
        &self,
        table: &TableName,
        spec: &ShapeSpec,
        readable: &impl Fn(&Shape) -> Result<(), AuthError>,
    ) -> Result<Option<Cached>, ShapeSetError> {
        let Some(schema) = self.registry.cached_schema(table) else { return Ok(None) };
        let mut catalog = Vec::new();
        while catalog.len() <= MAX_TABLES {
            match self.bind(table, spec, schema.clone(), &catalog, readable)? {
                Ok(shape) => {
                    return Ok(Some(match self.registry.get(&shape.key()) {
                        Some(existing) => Cached::Existing(existing),
                        None => Cached::New(Box::new(shape), catalog),
                    }));
                }
                Err(inner) => match self.registry.cached_schema(&inner) {
                    Some(s) => catalog.push(s),
                    None => return Ok(None),
                },
            }
        }
        Ok(None)
    }

    /// A read-serving standby's resolve: existing shapes only, looked for again in the data
    /// dir before the caller is sent to the leader.
    fn find_followed(
        &self,
        table: &TableName,
        spec: &ShapeSpec,
        readable: impl Fn(&Shape) -> Result<(), AuthError>,
    ) -> Result<Arc<LiveShape>, ShapeSetError> {
        for attempt in 0..2 {
            if let Some(Cached::Existing(live)) = self.bind_cached(table, spec, &readable)? {
                return Ok(live);
            }
            if attempt == 0 && !self.rescanned_lately() {
                self.registry.follow_dirs().map_err(ShapeSetError::Storage)?;
            }
        }
        Err(ShapeSetError::AtLeader)
    }

    /// Whether the shapes directory was read for a miss within [`RESCAN_EVERY`]; if not, the
    /// caller reads it (a crowd of misses reads it once).
    fn rescanned_lately(&self) -> bool {
        let mut last = self.last_rescan.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return true;
        }
        *last = Some(std::time::Instant::now());
        false
    }

    async fn bind_and_resolve(
        &self,
        table: &TableName,
        spec: &ShapeSpec,
        readable: impl Fn(&Shape) -> Result<(), AuthError>,
    ) -> Result<Arc<LiveShape>, ShapeSetError> {
        if self.follows {
            return self.find_followed(table, spec, readable);
        }
        let bind = |schema: TableSchema, catalog: &Vec<TableSchema>| self.bind(table, spec, schema, catalog, &readable);
        // From the cached catalog: an existing shape, or a new one whose tables this gateway
        // has published as it needs them (the snapshot checks the tables are still those;
        // Electric's shape creation reads its cached inspector the same way).
        // Tried again once the creation lock is ours: a crowd arriving at a cold gateway
        // waits for the first to publish the tables, then every other takes this path.
        let mut creating = None;
        loop {
            match self.bind_cached(table, spec, &readable)? {
                Some(Cached::Existing(existing)) => return Ok(existing),
                Some(Cached::New(shape, catalog)) if self.published_as_needed(&shape, &catalog) => {
                    drop(creating);
                    let permit = self.admit(table, spec).await?;
                    return self.register(*shape, catalog, permit).await;
                }
                _ => {}
            }
            if creating.is_some() {
                break;
            }
            creating = Some(self.create_lock.lock().await);
        }
        // Creating shapes is rare: one at a time keeps publication changes race-free, and the
        // catalog is read afresh, since the table may have changed since it was cached.
        let mut session = self.catalog.lock().await;
        let client = connected(&mut session, &self.db).await?;
        let schema = self.fresh_schema(client, table).await?;
        let mut catalog = Vec::new();
        let shape = loop {
            match bind(schema.clone(), &catalog)? {
                Ok(shape) => break shape,
                Err(_) if catalog.len() >= MAX_TABLES => {
                    return Err(ShapeSetError::Invalid {
                        field: "where",
                        message: format!("subqueries may read at most {MAX_TABLES} tables"),
                    });
                }
                Err(inner) => catalog.push(self.fresh_schema(client, &inner).await.map_err(|e| match e {
                    ShapeSetError::MissingTable(t) => {
                        ShapeSetError::Invalid { field: "where", message: format!("table {t} does not exist") }
                    }
                    e => e,
                })?),
            }
        };
        if let Some(existing) = self.registry.get(&shape.key()) {
            return Ok(existing);
        }
        self.may_create(table, spec)?;
        check_inner_identities(&shape, &catalog)?;
        for inner in &catalog {
            self.publish(client, inner, false).await?;
        }
        let altered = self.publish(client, &schema, shape.needs_old_rows()).await?;
        let shape = if altered {
            match bind(self.fresh_schema(client, table).await?, &catalog)? {
                Ok(shape) => shape,
                Err(inner) => return Err(ShapeSetError::MissingTable(inner.quoted())),
            }
        } else {
            shape
        };
        // The tables are published: others may create shapes while this one's sets load
        // (a WAL marker's round trip each). Equal shapes meet in `get_or_create`.
        drop(session);
        drop(creating);
        // The wait for a snapshot slot is not under the lock: others' shapes need not wait
        // for this one's slot.
        let permit = self.snapshot_slot(spec).await?;
        self.register(shape, catalog, permit).await
    }

    /// Whether the shape's tables (from the cached catalog) are published, with the replica
    /// identity it needs: then it can be made without the creation lock or a catalog read.
    fn published_as_needed(&self, shape: &Shape, catalog: &[TableSchema]) -> bool {
        let published = self.published.lock().unwrap();
        std::iter::once(&shape.table).chain(catalog).all(|t| published.contains(&t.oid))
            && (!shape.needs_old_rows() || shape.table.replica_identity_full)
            && check_inner_identities(shape, catalog).is_ok()
    }

    /// Whether a new shape may be made now: refused while new shapes are paused or past the
    /// shape limits; the permit is its snapshot's slot.
    async fn admit(&self, table: &TableName, spec: &ShapeSpec) -> Result<SnapshotPermit, ShapeSetError> {
        self.may_create(table, spec)?;
        self.snapshot_slot(spec).await
    }

    /// Refuses a new shape while new shapes are paused or past the shape limits: checked
    /// before anything is done for it (the publication is not changed for a refused caller).
    fn may_create(&self, table: &TableName, spec: &ShapeSpec) -> Result<(), ShapeSetError> {
        if let Some(why) = self.status.new_shapes_paused() {
            return Err(ShapeSetError::Paused(why));
        }
        let (existing, in_scope) = self.registry.count_of(table, spec.scope.as_ref());
        self.admission.check_shape_count(&table.quoted(), existing, in_scope)
    }

    /// Waits for a snapshot slot (see [`ShapeAdmission::snapshot`]).
    async fn snapshot_slot(&self, spec: &ShapeSpec) -> Result<SnapshotPermit, ShapeSetError> {
        let started = std::time::Instant::now();
        let permit = self.admission.snapshot(spec.scope.as_ref()).await;
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            ok = permit.is_ok(),
            "a new shape's snapshot slot"
        );
        permit
    }

    /// Loads the sets a new shape's subqueries need and registers it; its snapshot starts
    /// unless an equal shape was registered meanwhile (that one is returned).
    async fn register(
        &self,
        shape: Shape,
        catalog: Vec<TableSchema>,
        permit: SnapshotPermit,
    ) -> Result<Arc<LiveShape>, ShapeSetError> {
        let oid = |subquery: &Subquery| catalog.iter().find(|t| t.name == subquery.table).map_or(0, |t| t.oid);
        let started = std::time::Instant::now();
        let sets = self.registry.sets().acquire(&shape, oid).await;
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            ok = sets.is_ok(),
            "a new shape's sets are loaded"
        );
        let sets = sets.map_err(|e| match e {
            LoadFailed::Filter(_) => ShapeSetError::Invalid { field: "where", message: e.to_string() },
            LoadFailed::Server(_) => ShapeSetError::Busy(e.to_string()),
        })?;
        let (live, created) = self.registry.get_or_create(shape, sets, catalog).map_err(ShapeSetError::Storage)?;
        if created {
            self.start_snapshot(live.clone(), permit);
        }
        Ok(live)
    }

    /// Adds `table` to the publication; `true` when it had to change.
    async fn publish(
        &self,
        client: &tokio_postgres::Client,
        table: &TableSchema,
        old_rows: bool,
    ) -> Result<bool, ShapeSetError> {
        let altered =
            slot::ensure_published(client, &self.publication, table, old_rows).await.map_err(|e| match e {
                ReplicationError::Privilege { .. } => ShapeSetError::Forbidden(e.to_string()),
                ReplicationError::TableGone(_) => ShapeSetError::MissingTable(table.name.quoted()),
                ReplicationError::TableBusy(_) => ShapeSetError::Busy(e.to_string()),
                e => ShapeSetError::Internal(e.to_string()),
            })?;
        self.published.lock().unwrap().insert(table.oid);
        Ok(altered)
    }

    /// Drops shapes (their clients refetch); the tables are read afresh next time, since
    /// they may be dropped and created again.
    pub fn delete(&self, shapes: &[Arc<LiveShape>], reason: &str) {
        for s in shapes {
            self.registry.rotate(s, reason);
            self.registry.forget_schema(&s.shape.table.name);
        }
    }

    /// Runs the snapshot of a new shape as an owned task: it stops when the shape is rotated
    /// or deleted meanwhile (nobody will be served its rows) or the gateway stops. The
    /// snapshot slot is given back when its query ends.
    fn start_snapshot(&self, shape: Arc<LiveShape>, permit: SnapshotPermit) {
        let (snapshots, registry) = (self.snapshots.clone(), self.registry.clone());
        self.tasks.spawn(async move {
            let mut version = shape.log.subscribe();
            tokio::select! {
                () = crate::snapshot::run(snapshots, registry, shape.clone(), permit) => {}
                _ = version.wait_for(|v| v.gone) => {
                    tracing::debug!(handle = %shape.handle, "snapshot stopped: its shape is gone")
                }
            }
        });
    }

    /// Reads the table from the catalog and refreshes the cache.
    async fn fresh_schema(
        &self,
        client: &tokio_postgres::Client,
        table: &TableName,
    ) -> Result<TableSchema, ShapeSetError> {
        let schema = db::table_schema(client, table)
            .await
            .map_err(|e| ShapeSetError::Internal(e.to_string()))?
            .ok_or_else(|| ShapeSetError::MissingTable(table.quoted()))?;
        self.registry.cache_schema(schema.clone());
        Ok(schema)
    }
}

/// The catalog session, connected again if it dropped.
async fn connected<'a>(
    session: &'a mut Option<tokio_postgres::Client>,
    db: &Config,
) -> Result<&'a tokio_postgres::Client, ShapeSetError> {
    if session.as_ref().is_none_or(|c| c.is_closed()) {
        let client = db::connect(db).await.map_err(|e| {
            tracing::warn!(error = %e, "catalog session");
            ShapeSetError::Unreachable
        })?;
        *session = Some(client);
    }
    Ok(session.as_ref().expect("connected above"))
}

/// Each table a subquery reads carries what its set needs from the WAL (deleted rows name
/// the columns it yields and filters on).
fn check_inner_identities(shape: &Shape, catalog: &[TableSchema]) -> Result<(), ShapeSetError> {
    for inner in catalog {
        for (subquery, _) in shape.subqueries().into_iter().filter(|(s, _)| s.table == inner.name) {
            subquery
                .check_replica_identity(inner)
                .map_err(|message| ShapeSetError::Invalid { field: "where", message })?;
        }
    }
    Ok(())
}
