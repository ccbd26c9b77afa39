//! Bounds on new shapes, answered before any work is done: how many shapes a table and a
//! scope may have, and how many snapshots run at once, overall and per scope (the rule's
//! scope bound to a caller's claims: a tenant, a user), so one tenant cannot use up a
//! table's shapes or the snapshot slots. A burst of new shapes waits briefly for a slot,
//! in arrival order; a scope's share counts its waiting snapshots too, so one tenant's
//! burst cannot fill the queue ahead of the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shapes::shape::ScopeSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ShapeSetError;

/// The configured bounds.
#[derive(Clone, Copy, Debug)]
pub struct ShapeLimits {
    pub max_concurrent_snapshots: usize,
    pub max_shapes_per_table: usize,
    pub max_shapes_per_scope: usize,
}

impl ShapeLimits {
    /// Snapshots one scope may run at once: a quarter of all, so three other tenants still
    /// find room while one creates shapes as fast as it can.
    fn snapshots_per_scope(&self) -> usize {
        (self.max_concurrent_snapshots / 4).max(1)
    }
}

/// Snapshots running per scope.
type ScopeCounts = Arc<Mutex<HashMap<ScopeSpec, usize>>>;

pub(super) struct ShapeAdmission {
    limits: ShapeLimits,
    snapshots: Arc<Semaphore>,
    scope_snapshots: ScopeCounts,
}

/// Longest a new shape waits for a snapshot slot before the caller is told to retry.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Held while a new shape's snapshot runs.
pub(super) struct SnapshotPermit {
    _permit: OwnedSemaphorePermit,
    _scope: Option<ScopeShare>,
}

/// One of a scope's snapshots, waiting or running.
struct ScopeShare {
    scope: ScopeSpec,
    running: ScopeCounts,
}

impl Drop for ScopeShare {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap();
        if let Some(n) = running.get_mut(&self.scope) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.scope);
            }
        }
    }
}

impl ShapeAdmission {
    pub(super) fn new(limits: ShapeLimits) -> ShapeAdmission {
        ShapeAdmission {
            limits,
            snapshots: Arc::new(Semaphore::new(limits.max_concurrent_snapshots)),
            scope_snapshots: Default::default(),
        }
    }

    /// A place for one more snapshot query, for a caller of `scope` (`None`: unscoped, an
    /// admin or `--auth none`); held until the snapshot ends. Waits up to [`SLOT_WAIT`].
    pub(super) async fn snapshot(&self, scope: Option<&ScopeSpec>) -> Result<SnapshotPermit, ShapeSetError> {
        let share = match scope {
            None => None,
            Some(scope) => {
                let mut running = self.scope_snapshots.lock().unwrap();
                let n = running.entry(scope.clone()).or_default();
                if *n >= self.limits.snapshots_per_scope() {
                    return Err(ShapeSetError::Busy(format!(
                        "your scope already runs {n} snapshots of new shapes, its share of --max-concurrent-snapshots; retry shortly"
                    )));
                }
                *n += 1;
                Some(ScopeShare { scope: scope.clone(), running: self.scope_snapshots.clone() })
            }
        };
        match tokio::time::timeout(SLOT_WAIT, self.snapshots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(SnapshotPermit { _permit: permit, _scope: share }),
            _ => Err(ShapeSetError::Busy(format!(
                "{} snapshots of new shapes are running (--max-concurrent-snapshots) and more wait; retry shortly (existing shapes are not affected)",
                self.limits.max_concurrent_snapshots
            ))),
        }
    }

    /// Refuses a new shape when the caller's scope, or its table, has as many as allowed.
    /// `in_scope` is `None` for unscoped callers.
    pub(super) fn check_shape_count(
        &self,
        table: &str,
        existing: usize,
        in_scope: Option<usize>,
    ) -> Result<(), ShapeSetError> {
        if let Some(mine) = in_scope
            && mine >= self.limits.max_shapes_per_scope
        {
            return Err(ShapeSetError::TooMany(format!(
                "your scope already has {mine} shapes of table {table}, its limit (--max-shapes-per-scope); reuse an existing shape (the same where, columns and params)"
            )));
        }
        if existing >= self.limits.max_shapes_per_table {
            return Err(ShapeSetError::TooMany(format!(
                "table {table} already has {existing} shapes (--max-shapes-per-table); reuse an existing shape (the same where, columns and params), or raise the limit"
            )));
        }
        Ok(())
    }
}
