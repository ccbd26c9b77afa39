//! A transaction arriving in parts (larger than `--txn-memory`, see
//! [`crate::replication::txn`]): each part is routed and written as it comes, unpublished,
//! so memory holds one part, never the transaction. The last part publishes every shape's
//! entries at once: clients see the transaction whole or not at all, as for any other.
//! This is Electric's "transaction fragments written directly to storage" design.
//!
//! A shape's messages must read as if the transaction had come whole: the same ops, and
//! `last` on its final message only. So each shape's last planned message of a part is
//! carried into the next part (or written, marked last, with the last part), since whether
//! more come for it is known only then. Until the last part, recovery cuts the written
//! entries back (no record ends their transaction) and [`InParts::abandon`] rewinds them.

use std::collections::HashMap;
use std::sync::Arc;

use shapes::change::Txn;
use shapes::log::WriteMark;
use shapes::offset::Lsn;

use super::live_shape::TxnEntries;
use super::live_shape::{LiveShape, next_op};
use super::plan::Planned;
use super::registry::Registry;
use super::{BatchWrites, Routed, route};

pub struct InParts {
    xid: u32,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    /// Shapes routable before this were routed from the first part on.
    routing_mark: u64,
    /// How each shape touched so far takes the transaction, decided where a part first
    /// touches it: `None` when nothing of it is for the shape.
    shapes: HashMap<u64, Option<Writing>>,
}

struct Writing {
    shape: Arc<LiveShape>,
    /// The log's end before the transaction.
    before: WriteMark,
    /// The shape's last planned message so far, and its op.
    carried: Option<(Planned, u64)>,
}

impl InParts {
    /// Starts on the transaction whose first part is `first`.
    pub fn begin(registry: &Registry, first: &Txn) -> InParts {
        InParts {
            xid: first.xid,
            commit_lsn: first.commit_lsn,
            end_lsn: first.end_lsn,
            routing_mark: registry.routing_mark(),
            shapes: HashMap::new(),
        }
    }

    /// Routes one part and plans its writes; with the `last` part, every shape's
    /// carried message too, ending the transaction.
    pub fn plan(&mut self, registry: &Registry, part: &Txn, last: bool) -> BatchWrites {
        debug_assert_eq!((part.xid, part.commit_lsn), (self.xid, self.commit_lsn));
        self.end_lsn = part.end_lsn;
        let Routed { planned, unreadable, mut rotate } = route(registry, part, true);
        for (shape, why) in unreadable {
            let why = format!("a change could not be evaluated: {why}");
            match self.shapes.get(&shape.id) {
                Some(None) => {}
                Some(Some(_)) => rotate.push((shape, why)),
                None => match shape.admit_unreadable(part, why) {
                    Some(why) => rotate.push((shape, why)),
                    None => {
                        self.shapes.insert(shape.id, None);
                    }
                },
            }
        }
        for (shape, why) in rotate {
            // A rotated shape's files are gone: nothing of it is written or published.
            self.shapes.insert(shape.id, None);
            registry.rotate(&shape, &why);
        }
        let mut writes = BatchWrites::new(last);
        for (id, (shape, planned)) in planned {
            if shape.log.version().gone {
                continue;
            }
            let Some(writing) = self.taking(registry, &shape, part) else { continue };
            let entries = writing.plan(part, planned, last);
            if !entries.is_empty() {
                writes.logs.insert(id, (shape, vec![entries]));
            }
        }
        if last {
            // Shapes this part did not touch end the transaction with what they carry.
            for (id, writing) in &mut self.shapes {
                let Some(writing) = writing else { continue };
                if writes.logs.contains_key(id) || writing.carried.is_none() || writing.shape.log.version().gone {
                    continue;
                }
                let entries = writing.plan(part, Vec::new(), true);
                writes.logs.insert(*id, (writing.shape.clone(), vec![entries]));
            }
        }
        writes
    }

    /// How `shape` takes the transaction (decided the first time a part touches it);
    /// `None`: it takes nothing of it.
    fn taking(&mut self, registry: &Registry, shape: &Arc<LiveShape>, part: &Txn) -> Option<&mut Writing> {
        self.shapes
            .entry(shape.id)
            .or_insert_with(|| {
                let from_start = Registry::routable_before(shape, self.routing_mark);
                match shape.start_parts(part, from_start) {
                    Ok(true) => Some(Writing { shape: shape.clone(), before: shape.log.written_mark(), carried: None }),
                    Ok(false) => None,
                    Err(why) => {
                        registry.rotate(shape, &why);
                        None
                    }
                }
            })
            .as_mut()
    }

    /// The last part is durable: every shape's entries become visible at once. Returns the
    /// transaction's end and commit positions.
    pub fn publish(self) -> (Lsn, Lsn) {
        for w in self.shapes.into_values().flatten() {
            w.shape.log.publish(w.shape.log.written_mark());
        }
        (self.end_lsn, self.commit_lsn)
    }

    /// The stream dropped before the last part: what the parts wrote is forgotten (the
    /// stream sends the transaction again from its start).
    pub fn abandon(self) {
        tracing::info!(xid = self.xid, at = %self.commit_lsn, "a transaction arriving in parts was cut off; it comes again");
        for w in self.shapes.into_values().flatten() {
            w.shape.log.rewind(w.before);
        }
    }
}

impl Writing {
    /// This part's messages for the shape, after what it carried; the last one is carried
    /// on unless this is the transaction's `last` part.
    fn plan(&mut self, part: &Txn, planned: Vec<Planned>, last: bool) -> TxnEntries {
        let (mut messages, first) = match self.carried.take() {
            Some((message, op)) => (vec![message], op),
            None => (Vec::new(), 0),
        };
        messages.extend(planned);
        if !last && let Some(kept) = messages.pop() {
            let op = match messages.split_last() {
                None => first,
                Some((prev, earlier)) => {
                    let prev_op = earlier.iter().fold(first, next_op);
                    next_op(prev_op, prev)
                }
            };
            self.carried = Some((kept, op));
        }
        self.shape.encode_part(part, &messages, first, last)
    }
}
