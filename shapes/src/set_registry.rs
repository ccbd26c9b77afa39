//! Every kept subquery set (docs/subqueries.md), found by its subquery, so that equal bound
//! subqueries share one set however many shapes use them, and by its inner table, so that a
//! change reaches only the sets it may touch (through the same routing index as shapes).
//!
//! A transaction is evaluated against the sets as they were before it, then applied: one
//! set's values never depend on the order of changes inside a transaction. A value
//! entering a set that another set's filter reads is that set's move-in, which its owner
//! handles like a shape's (by a query at a snapshot), not this registry.

use std::collections::{BTreeMap, HashMap};

use crate::change::{Txn, TxnItem};
use crate::index::RoutingIndex;
use crate::subquery_set::{SetDelta, SetKey, SetLookup, SetOutOfStep, SubquerySet, set_change};
use crate::where_clause::{EvalError, Subquery};

/// A kept set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetId(u32);

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error(transparent)]
    OutOfStep(#[from] SetOutOfStep),
    #[error("a subquery's filter could not be evaluated on a change: {0}")]
    Eval(#[from] EvalError),
}

#[derive(Debug)]
struct Kept {
    subquery: Subquery,
    table: u32,
    set: SubquerySet,
    /// Shapes (and outer sets) using it.
    users: u32,
}

#[derive(Debug, Default)]
pub struct SetRegistry {
    /// The subquery's SQL (typed literals, quoted names: equal subqueries render alike) → id.
    by_sql: HashMap<String, SetId>,
    kept: HashMap<SetId, Kept>,
    by_table: HashMap<u32, RoutingIndex<SetId>>,
    /// Value → the sets holding it: routes an outer-table change by its link value, as
    /// `col = const` filters are routed (values of different types may share a text; the
    /// shapes found are evaluated anyway).
    holders: HashMap<SetKey, Vec<SetId>>,
    next: u32,
}

impl SetRegistry {
    /// The set kept for `subquery`, if any.
    pub fn find(&self, subquery: &Subquery) -> Option<SetId> {
        self.by_sql.get(&subquery.to_sql()).copied()
    }

    /// One more user of `subquery`'s set: the kept one, or `loaded` (the query of its rows
    /// in the new user's snapshot) kept from now on. `table` is the inner table's oid.
    pub fn acquire(&mut self, subquery: &Subquery, table: u32, loaded: impl FnOnce() -> SubquerySet) -> SetId {
        if let Some(id) = self.find(subquery) {
            if let Some(kept) = self.kept.get_mut(&id) {
                kept.users += 1;
            }
            return id;
        }
        let id = SetId(self.next);
        self.next += 1;
        let conjuncts: Vec<_> = subquery.filter.iter().flat_map(|f| f.conjuncts()).collect();
        self.by_table.entry(table).or_default().insert(id, &conjuncts);
        self.by_sql.insert(subquery.to_sql(), id);
        let set = loaded();
        for value in set.values() {
            self.holders.entry(value.clone()).or_default().push(id);
        }
        self.kept.insert(id, Kept { subquery: subquery.clone(), table, set, users: 1 });
        id
    }

    /// One user fewer; the set is dropped with its last.
    pub fn release(&mut self, id: SetId) {
        let Some(kept) = self.kept.get_mut(&id) else { return };
        kept.users -= 1;
        if kept.users > 0 {
            return;
        }
        if let Some(kept) = self.kept.remove(&id) {
            for value in kept.set.values() {
                self.forget_holder(value, id);
            }
            self.by_sql.remove(&kept.subquery.to_sql());
            if let Some(index) = self.by_table.get_mut(&kept.table) {
                index.remove(id);
                if index.is_empty() {
                    self.by_table.remove(&kept.table);
                }
            }
        }
    }

    pub fn get(&self, id: SetId) -> Option<&SubquerySet> {
        self.kept.get(&id).map(|k| &k.set)
    }

    /// Distinct sets kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Applies a committed transaction to every set its changes may touch; says which
    /// values entered and left each set (sets with neither are left out). On error no set
    /// has changed.
    pub fn apply(&mut self, txn: &Txn) -> Result<Vec<(SetId, SetDelta)>, SetError> {
        let mut pending: BTreeMap<SetId, (Vec<SetKey>, Vec<SetKey>)> = BTreeMap::new();
        let mut candidates = Vec::new();
        for item in &txn.items {
            let TxnItem::Change { relation, change } = item else { continue };
            let Some(index) = self.by_table.get(relation) else { continue };
            index.candidates(&change.rows(), &mut candidates);
            for id in &candidates {
                let Some(kept) = self.kept.get(id) else { continue };
                let (removed, added) = set_change(&kept.subquery, change, self)?;
                let entry = pending.entry(*id).or_default();
                entry.0.extend(removed);
                entry.1.extend(added);
            }
        }
        // Checked on copies first, so that an error leaves every set as it was.
        for (id, (removed, added)) in &pending {
            if let Some(kept) = self.kept.get(id) {
                kept.set.check(removed, added)?;
            }
        }
        let mut applied = Vec::new();
        for (id, (removed, added)) in pending {
            let Some(kept) = self.kept.get_mut(&id) else { continue };
            let delta = kept.set.apply(removed, added)?;
            for value in &delta.entered {
                self.holders.entry(value.clone()).or_default().push(id);
            }
            for value in &delta.left {
                self.forget_holder(value, id);
            }
            if delta != SetDelta::default() {
                applied.push((id, delta));
            }
        }
        Ok(applied)
    }

    /// The sets holding `value`.
    pub fn holders(&self, value: &SetKey) -> &[SetId] {
        self.holders.get(value).map_or(&[], Vec::as_slice)
    }

    fn forget_holder(&mut self, value: &SetKey, id: SetId) {
        if let Some(ids) = self.holders.get_mut(value) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.holders.remove(value);
            }
        }
    }
}

impl SetLookup for SetRegistry {
    fn set(&self, subquery: &Subquery) -> Option<&SubquerySet> {
        self.get(self.find(subquery)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::change::{Cell, Change};
    use crate::offset::Lsn;
    use crate::where_clause::fixture::{memberships, table};
    use crate::where_clause::{BindOptions, parse_where_with_tables};

    const MEMBERSHIPS: u32 = 2;

    fn subquery(user: &str) -> Subquery {
        let e = parse_where_with_tables(
            &format!("id IN (SELECT item_id FROM memberships WHERE user_id = '{user}')"),
            &table(),
            &vec![memberships()],
            &HashMap::new(),
            BindOptions::default(),
        )
        .unwrap();
        e.subqueries()[0].clone()
    }

    fn row(item: &str, user: &str) -> Vec<Cell> {
        vec![Cell::text(item), Cell::text(user), Cell::Null, Cell::Null]
    }

    fn txn(changes: Vec<(u32, Change)>) -> Txn {
        Txn {
            xid: 1,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            items: changes.into_iter().map(|(relation, change)| TxnItem::Change { relation, change }).collect(),
        }
    }

    fn key(v: &str) -> SetKey {
        vec![Some(v.to_string())]
    }

    #[test]
    fn equal_subqueries_share_one_set_until_their_last_user_goes() {
        let mut sets = SetRegistry::default();
        let a = sets.acquire(&subquery("u1"), MEMBERSHIPS, || SubquerySet::from_rows([key("1")]));
        let b = sets.acquire(&subquery("u1"), MEMBERSHIPS, || panic!("a kept set is not loaded again"));
        let c = sets.acquire(&subquery("u2"), MEMBERSHIPS, SubquerySet::default);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(sets.len(), 2);
        sets.release(a);
        assert_eq!(sets.find(&subquery("u1")), Some(a), "one user left");
        sets.release(b);
        assert_eq!(sets.find(&subquery("u1")), None);
        sets.release(c);
        assert!(sets.is_empty());
        assert!(sets.by_table.is_empty() && sets.holders.is_empty(), "nothing left routed");
    }

    #[test]
    fn a_transaction_reaches_the_sets_it_touches_and_says_what_entered_and_left() {
        let mut sets = SetRegistry::default();
        let u1 = sets.acquire(&subquery("u1"), MEMBERSHIPS, || SubquerySet::from_rows([key("1"), key("2")]));
        let u2 = sets.acquire(&subquery("u2"), MEMBERSHIPS, SubquerySet::default);
        let changes = txn(vec![
            (MEMBERSHIPS, Change::Insert { new: row("3", "u1") }),
            (MEMBERSHIPS, Change::Delete { old: row("1", "u1"), old_is_full: true }),
            (MEMBERSHIPS, Change::Update { old: Some(row("2", "u1")), old_is_full: true, new: row("2", "u2") }),
            (99, Change::Insert { new: row("4", "u1") }),
        ]);
        let deltas = sets.apply(&changes).unwrap();
        assert_eq!(
            deltas,
            vec![
                (u1, SetDelta { entered: vec![key("3")], left: vec![key("1"), key("2")] }),
                (u2, SetDelta { entered: vec![key("2")], left: vec![] }),
            ]
        );
        assert_eq!(sets.get(u1).unwrap().len(), 1);
        assert!(sets.apply(&txn(vec![(99, Change::Insert { new: row("5", "u1") })])).unwrap().is_empty());
        assert_eq!(sets.holders(&key("3")), [u1]);
        assert_eq!(sets.holders(&key("2")), [u2], "2 moved from u1's set to u2's");
        assert!(sets.holders(&key("1")).is_empty());
    }

    #[test]
    fn a_transaction_the_sets_cannot_follow_changes_none_of_them() {
        let mut sets = SetRegistry::default();
        let u1 = sets.acquire(&subquery("u1"), MEMBERSHIPS, || SubquerySet::from_rows([key("1")]));
        let u2 = sets.acquire(&subquery("u2"), MEMBERSHIPS, SubquerySet::default);
        let bad = txn(vec![
            (MEMBERSHIPS, Change::Insert { new: row("7", "u1") }),
            (MEMBERSHIPS, Change::Delete { old: row("9", "u2"), old_is_full: true }),
        ]);
        assert!(matches!(sets.apply(&bad), Err(SetError::OutOfStep(_))));
        assert_eq!(sets.get(u1).unwrap().len(), 1, "u1 did not take 7");
        assert!(sets.get(u2).unwrap().is_empty());
    }
}
