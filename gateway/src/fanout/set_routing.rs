//! Routes a change to the shapes whose filter has a top-level `col IN (subquery)` by the
//! row's value of `col`: the sets holding that value, then the shapes linked through them.
//! A thousand users' shapes on one table cost a change only the few whose sets hold its
//! value, not an evaluation each.

use std::collections::HashMap;

use shapes::change::Cell;
use shapes::set_registry::{SetId, SetRegistry};
use shapes::where_clause::Expr;

use super::live_shape::LiveShape;

/// Linked shapes of one table: column → set → shapes.
#[derive(Debug, Default)]
pub struct SetRouting {
    by_column: HashMap<usize, HashMap<SetId, Vec<u64>>>,
}

impl SetRouting {
    /// The column and set `shape` can be found by: a top-level `col IN (subquery)` term of
    /// its filter (not `NOT IN`: those rows are the ones whose value the set does not hold).
    pub fn link(shape: &LiveShape) -> Option<(usize, SetId)> {
        let subqueries = shape.shape.subqueries();
        shape.shape.conjuncts().into_iter().find_map(|term| match term {
            Expr::InSubquery { probe, subquery, negated: false } => match probe.as_slice() {
                [Expr::Column { index, .. }] => {
                    let at = subqueries.iter().position(|(s, _)| *s == &**subquery)?;
                    Some((*index, shape.sets.get(at)?.0))
                }
                _ => None,
            },
            _ => None,
        })
    }

    pub fn insert(&mut self, shape: u64, (column, set): (usize, SetId)) {
        self.by_column.entry(column).or_default().entry(set).or_default().push(shape);
    }

    /// Forgets `shape`; `true` when nothing is left.
    pub fn remove(&mut self, shape: u64) -> bool {
        for by_set in self.by_column.values_mut() {
            for ids in by_set.values_mut() {
                ids.retain(|s| *s != shape);
            }
            by_set.retain(|_, ids| !ids.is_empty());
        }
        self.by_column.retain(|_, by_set| !by_set.is_empty());
        self.by_column.is_empty()
    }

    /// Adds to `out` the shapes a change with `rows` (old and new) may touch.
    pub fn candidates(&self, rows: &[&[Cell]], sets: &SetRegistry, out: &mut Vec<u64>) {
        for (column, by_set) in &self.by_column {
            for row in rows {
                match row.get(*column) {
                    // A value the stream did not send (TOAST): any of them.
                    Some(Cell::Unchanged) => by_set.values().for_each(|ids| out.extend_from_slice(ids)),
                    Some(cell) => {
                        let Some(value) = cell.as_str() else { continue };
                        for set in sets.holders(&vec![Some(value.to_string())]) {
                            out.extend(by_set.get(set).into_iter().flatten());
                        }
                    }
                    None => {}
                }
            }
        }
    }
}
