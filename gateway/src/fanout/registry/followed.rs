//! The registry of a read-serving standby: the leader's shapes, loaded from the shared data
//! dir without writing to it, found again as the leader creates and drops them.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Arc;

use shapes::log::ShapeLog;
use shapes::offset::Lsn;
use shapes::shape::{Shape, ShapeHandle};
use shapes::where_clause::BindOptions;
use tokio::sync::mpsc;

use super::Registry;
use crate::fanout::live_shape::{LiveShape, ShapeMeta};

impl Registry {
    /// The shapes another process keeps under `data_dir`, read-only; their logs follow what
    /// `follow` learns from the journal. Nothing here routes changes or loads sets:
    /// the logs hold every shape's changes already.
    pub fn open_following(data_dir: &Path, chunk_bytes: u64, bind: BindOptions) -> io::Result<Registry> {
        let registry = Registry::empty(data_dir, chunk_bytes, bind, Lsn(0), mpsc::unbounded_channel().0);
        registry.follow_dirs()?;
        Ok(registry)
    }

    /// Loads the shapes whose snapshots completed since the last call and forgets those the
    /// leader dropped (their readers answer 409). Returns how many it loaded.
    pub fn follow_dirs(&self) -> io::Result<usize> {
        let mut present = HashSet::new();
        let mut loaded = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(handle) = handle_of(&path) else { continue };
            if self.by_handle(&handle).is_none() {
                // One shape that cannot be read is not served here; the others are.
                match self.follow_dir(&path) {
                    Ok(Some(_)) => loaded += 1,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(dir = %path.display(), error = %e, "standby: a shape cannot be read"),
                }
            }
            present.insert(handle);
        }
        let gone: Vec<Arc<LiveShape>> = {
            let inner = self.inner.read().unwrap();
            inner.by_id.values().filter(|s| !present.contains(&s.handle)).cloned().collect()
        };
        for shape in gone {
            if self.remove(&shape) {
                shape.log.mark_gone();
            }
        }
        Ok(loaded)
    }

    /// The shape whose log is at `path` (a journal record's), loaded now if it is new and
    /// its snapshot is complete.
    pub fn followed_log(&self, path: &Path) -> io::Result<Option<Arc<LiveShape>>> {
        match path.parent().and_then(handle_of) {
            Some(handle) => self.follow_handle(&handle),
            None => Ok(None),
        }
    }

    /// The shape `handle` names, loaded now if it is new and its snapshot is complete (a
    /// client brings a handle the leader made a moment ago).
    pub fn follow_handle(&self, handle: &ShapeHandle) -> io::Result<Option<Arc<LiveShape>>> {
        match self.by_handle(handle) {
            Some(shape) => Ok(Some(shape)),
            None => self.follow_dir(&self.dir.join(handle.as_str())),
        }
    }

    /// Loads the shape in `dir` if its snapshot is complete; `None` until then (or if it is
    /// gone already).
    fn follow_dir(&self, dir: &Path) -> io::Result<Option<Arc<LiveShape>>> {
        let not_yet = |e: io::Error| if e.kind() == io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
        let meta = match ShapeMeta::read(dir) {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(None),
            Err(e) => return not_yet(e),
        };
        let log = match ShapeLog::open_following(dir, self.chunk_bytes) {
            Ok(Some(log)) => log,
            Ok(None) => return Ok(None),
            Err(e) => return not_yet(e),
        };
        let shape = Shape::bind_with_tables(meta.spec, meta.table.clone(), Some(&meta.catalog), self.bind)
            .map_err(io::Error::other)?;
        // Requests are bound from these tables: the newest shape's are the newest known.
        for table in std::iter::once(&meta.table).chain(&meta.catalog) {
            self.cache_schema(table.clone());
        }
        let live = Arc::new(self.live_shape(meta.handle, shape, log, Some(meta.snapshot), Vec::new(), meta.catalog));
        let mut inner = self.inner.write().unwrap();
        if let Some(existing) = inner.by_handle.get(&live.handle) {
            return Ok(Some(existing.clone()));
        }
        inner.insert(live.clone());
        metrics::gauge!("gateway_shapes").set(inner.by_id.len() as f64);
        Ok(Some(live))
    }
}

/// The handle a shape directory is named by.
fn handle_of(dir: &Path) -> Option<ShapeHandle> {
    dir.file_name()?.to_str()?.parse().ok()
}
