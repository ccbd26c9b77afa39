//! Definitions already bound to a live shape, so that a request spelled as an earlier one
//! finds its shape without parsing and binding its filter again: a client reconnects every
//! minute (the SSE timeout), and with 10,000 subscribers through subqueries the binding
//! took 5% of the gateway's CPU. A binding is a function of the definition (the scope bound
//! from the caller's claims is part of it) and of the tables; a shape whose tables changed
//! is rotated out of the registry, so a stale entry finds nothing and is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shapes::shape::{ShapeKey, ShapeSpec};
use shapes::table::TableName;

use crate::fanout::live_shape::LiveShape;
use crate::fanout::registry::Registry;

/// Most definitions remembered; past it the map starts afresh (a new entry costs one bind).
const MAX_KNOWN: usize = 65_536;

#[derive(Default)]
pub struct KnownShapes {
    inner: Mutex<Known>,
}

/// By table, then definition: a lookup borrows the request's own, copying nothing.
#[derive(Default)]
struct Known {
    keys: HashMap<TableName, HashMap<ShapeSpec, ShapeKey>>,
    len: usize,
}

impl KnownShapes {
    /// The live shape `spec` on `table` was bound to, if it is still there.
    pub fn find(&self, registry: &Registry, table: &TableName, spec: &ShapeSpec) -> Option<Arc<LiveShape>> {
        let mut known = self.inner.lock().unwrap();
        let specs = known.keys.get_mut(table)?;
        let key = specs.get(spec)?;
        let live = registry.get(key).filter(|live| !live.log.version().gone);
        if live.is_none() {
            specs.remove(spec);
            known.len -= 1;
        }
        live
    }

    /// Remembers that `spec` on `table` is bound to `live`.
    pub fn remember(&self, table: &TableName, spec: &ShapeSpec, live: &LiveShape) {
        let mut known = self.inner.lock().unwrap();
        if known.len >= MAX_KNOWN {
            *known = Known::default();
        }
        let specs = known.keys.entry(table.clone()).or_default();
        if specs.insert(spec.clone(), live.shape.key()).is_none() {
            known.len += 1;
        }
    }
}
