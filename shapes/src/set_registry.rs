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

/// What one transaction did to the kept sets.
#[derive(Debug, Default)]
pub struct Applied {
    pub deltas: Vec<(SetId, SetDelta)>,
    /// Sets that could not follow it, left as they were (and retired).
    pub failed: Vec<(SetId, SetError)>,
}

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
    /// While the set is being loaded: what each transaction since did to it (by xid),
    /// for the load to apply those its snapshot did not see.
    loading: Option<Vec<HeldChange>>,
    /// The kept sets its filter reads (nested subqueries).
    reads: Vec<SetId>,
}

/// What one transaction did to a set being loaded: its xid, values removed and added.
type HeldChange = (u32, Vec<SetKey>, Vec<SetKey>);

/// Values removed from a set and values added to it.
type Changes = (Vec<SetKey>, Vec<SetKey>);

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
    /// Set → the kept sets whose filters read it (the reverse of `Kept::reads`).
    read_by: HashMap<SetId, Vec<SetId>>,
    next: u32,
}

impl SetRegistry {
    /// The set kept for `subquery`, if any.
    pub fn find(&self, subquery: &Subquery) -> Option<SetId> {
        self.by_sql.get(subquery.to_sql()).copied()
    }

    /// One more user of `subquery`'s set. A new set is empty and loading: `true` says the
    /// caller must load it ([`SetRegistry::finish_load`]). The sets its filter reads must be
    /// acquired first. `table` is the inner table's oid.
    pub fn acquire(&mut self, subquery: &Subquery, table: u32) -> (SetId, bool) {
        if let Some(id) = self.find(subquery) {
            if let Some(kept) = self.kept.get_mut(&id) {
                kept.users += 1;
            }
            return (id, false);
        }
        let id = SetId(self.next);
        self.next += 1;
        let conjuncts: Vec<_> = subquery.filter.iter().flat_map(|f| f.conjuncts()).collect();
        self.by_table.entry(table).or_default().insert(id, &conjuncts);
        self.by_sql.insert(subquery.to_sql().to_string(), id);
        let reads: Vec<SetId> =
            subquery.filter.iter().flat_map(|f| f.subqueries()).filter_map(|s| self.find(s)).collect();
        for inner in &reads {
            self.read_by.entry(*inner).or_default().push(id);
        }
        let kept = Kept {
            subquery: subquery.clone(),
            table,
            set: SubquerySet::default(),
            users: 1,
            loading: Some(Vec::new()),
            reads,
        };
        self.kept.insert(id, kept);
        (id, true)
    }

    /// A loading set's rows from a query at a snapshot that contains the transactions
    /// `visible` says it does; the changes held since that it does not contain are applied.
    pub fn finish_load(
        &mut self,
        id: SetId,
        loaded: SubquerySet,
        visible: impl Fn(u32) -> bool,
    ) -> Result<(), SetOutOfStep> {
        let Some(kept) = self.kept.get_mut(&id) else { return Ok(()) };
        let Some(held) = kept.loading.take() else { return Ok(()) };
        let mut set = loaded;
        for (xid, removed, added) in held {
            if !visible(xid) {
                set.apply(removed, added)?;
            }
        }
        // A reloaded set's values are routed anew.
        let old = std::mem::replace(&mut kept.set, set);
        for value in old.values() {
            self.forget_holder(value, id);
        }
        let values: Vec<SetKey> = self.kept[&id].set.values().cloned().collect();
        for value in values {
            self.holders.entry(value).or_default().push(id);
        }
        Ok(())
    }

    /// Starts loading a kept set again, keeping its values until the load finishes: a set
    /// it reads changed, so which of its inner rows match changed without any change to
    /// them ([`SetRegistry::finish_load`] applies the changes held meanwhile).
    pub fn reload(&mut self, id: SetId) {
        if let Some(kept) = self.kept.get_mut(&id) {
            kept.loading.get_or_insert_with(Vec::new);
        }
    }

    /// The kept sets whose filters read `id` directly.
    pub fn direct_readers(&self, id: SetId) -> &[SetId] {
        self.read_by.get(&id).map_or(&[], Vec::as_slice)
    }

    /// Whether every set `id`'s filter reads is loaded: only then can a load of `id` follow
    /// the stream (the changes it holds meanwhile are evaluated against those sets).
    pub fn reads_loaded(&self, id: SetId) -> bool {
        self.kept.get(&id).is_some_and(|k| k.reads.iter().all(|r| self.is_loaded(*r)))
    }

    /// Whether the set's contents are known (loaded).
    pub fn is_loaded(&self, id: SetId) -> bool {
        self.kept.get(&id).is_some_and(|k| k.loading.is_none())
    }

    /// The kept sets whose filters read `id`, directly or through others: a change to `id`
    /// changes which of their inner rows match without any change to those rows.
    pub fn readers_of(&self, id: SetId) -> Vec<SetId> {
        let mut out: Vec<SetId> = Vec::new();
        let mut frontier = vec![id];
        while let Some(inner) = frontier.pop() {
            for outer in self.read_by.get(&inner).into_iter().flatten() {
                if !out.contains(outer) {
                    out.push(*outer);
                    frontier.push(*outer);
                }
            }
        }
        out
    }

    /// Stops handing `id` to new users (its contents can no longer be trusted); it is
    /// dropped when its current users have released it.
    pub fn retire(&mut self, id: SetId) {
        if let Some(kept) = self.kept.get(&id) {
            let sql = kept.subquery.to_sql();
            if self.by_sql.get(sql) == Some(&id) {
                self.by_sql.remove(sql);
            }
        }
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
            for inner in &kept.reads {
                if let Some(readers) = self.read_by.get_mut(inner) {
                    readers.retain(|r| *r != id);
                    if readers.is_empty() {
                        self.read_by.remove(inner);
                    }
                }
            }
            let sql = kept.subquery.to_sql();
            if self.by_sql.get(sql) == Some(&id) {
                self.by_sql.remove(sql);
            }
            if let Some(index) = self.by_table.get_mut(&kept.table) {
                index.remove(id);
                if index.is_empty() {
                    self.by_table.remove(&kept.table);
                }
            }
        }
    }

    /// The subquery a kept set holds the values of.
    pub fn subquery(&self, id: SetId) -> Option<&Subquery> {
        self.kept.get(&id).map(|k| &k.subquery)
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

    /// Applies a committed transaction to every set its changes may touch: which values
    /// entered and left each set (sets with neither are left out), and the sets that could
    /// not follow it (a change their filter could not evaluate, a removal they did not
    /// hold). A failed set is left as it was and retired: only its own users are affected.
    pub fn apply(&mut self, txn: &Txn) -> Applied {
        let mut pending: BTreeMap<SetId, Result<Changes, SetError>> = BTreeMap::new();
        let mut candidates = Vec::new();
        for item in &txn.items {
            let TxnItem::Change { relation, change } = item else { continue };
            let Some(index) = self.by_table.get(relation) else { continue };
            index.candidates(&change.rows(), &mut candidates);
            for id in &candidates {
                let Some(kept) = self.kept.get(id) else { continue };
                let entry = pending.entry(*id).or_insert_with(|| Ok(Default::default()));
                let Ok((removed, added)) = entry else { continue };
                match set_change(&kept.subquery, change, self) {
                    Ok((r, a)) => {
                        removed.extend(r);
                        added.extend(a);
                    }
                    Err(e) => *entry = Err(e.into()),
                }
            }
        }
        let mut applied = Applied::default();
        for (id, changes) in pending {
            let Some(kept) = self.kept.get_mut(&id) else { continue };
            let (removed, added) = match changes {
                Ok(changes) => changes,
                Err(e) => {
                    applied.failed.push((id, e));
                    continue;
                }
            };
            if let Some(held) = &mut kept.loading {
                held.push((txn.xid, removed, added));
                continue;
            }
            // Checked first, so that a failure leaves the set as it was.
            if let Err(e) = kept.set.check(&removed, &added) {
                applied.failed.push((id, e.into()));
                continue;
            }
            let Ok(delta) = kept.set.apply(removed, added) else { continue };
            for value in &delta.entered {
                self.holders.entry(value.clone()).or_default().push(id);
            }
            for value in &delta.left {
                self.forget_holder(value, id);
            }
            if delta != SetDelta::default() {
                applied.deltas.push((id, delta));
            }
        }
        for (id, _) in &applied.failed {
            self.retire(*id);
        }
        applied
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
        subquery_where(&format!("user_id = '{user}'"))
    }

    /// `SELECT item_id FROM memberships WHERE <filter>`, bound.
    fn subquery_where(filter: &str) -> Subquery {
        let e = parse_where_with_tables(
            &format!("id IN (SELECT item_id FROM memberships WHERE {filter})"),
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

    /// `user`'s set, acquired and loaded with `values`.
    fn loaded(sets: &mut SetRegistry, user: &str, values: &[&str]) -> SetId {
        let (id, load) = sets.acquire(&subquery(user), MEMBERSHIPS);
        assert!(load);
        sets.finish_load(id, SubquerySet::from_rows(values.iter().map(|v| key(v))), |_| true).unwrap();
        id
    }

    #[test]
    fn a_load_applies_the_changes_its_snapshot_did_not_see() {
        let mut sets = SetRegistry::default();
        let (id, _) = sets.acquire(&subquery("u1"), MEMBERSHIPS);
        let mut seen = txn(vec![(MEMBERSHIPS, Change::Insert { new: row("1", "u1") })]);
        seen.xid = 10;
        let mut unseen = txn(vec![(MEMBERSHIPS, Change::Insert { new: row("2", "u1") })]);
        unseen.xid = 11;
        assert!(sets.apply(&seen).deltas.is_empty(), "a loading set reports nothing");
        assert!(sets.apply(&unseen).deltas.is_empty());
        assert!(!sets.is_loaded(id));
        // The query saw transaction 10 (its row is among the loaded ones), not 11.
        sets.finish_load(id, SubquerySet::from_rows([key("1")]), |xid| xid == 10).unwrap();
        assert!(sets.is_loaded(id));
        assert_eq!(sets.get(id).unwrap(), &SubquerySet::from_rows([key("1"), key("2")]));
        assert_eq!(sets.holders(&key("2")), [id]);
    }

    #[test]
    fn a_set_knows_the_sets_that_read_it_through_every_level_until_they_go() {
        let mut sets = SetRegistry::default();
        let nested = |levels: usize| {
            let mut text = "user_id = 'u1'".to_string();
            for _ in 0..levels {
                text = format!("item_id IN (SELECT item_id FROM memberships WHERE {text})");
            }
            subquery_where(&text)
        };
        let inner = sets.acquire(&subquery("u1"), MEMBERSHIPS).0;
        let middle = sets.acquire(&nested(1), MEMBERSHIPS).0;
        let outer = sets.acquire(&nested(2), MEMBERSHIPS).0;
        let other = loaded(&mut sets, "u2", &[]);
        assert_eq!(sets.readers_of(inner), [middle, outer]);
        assert_eq!(sets.readers_of(middle), [outer]);
        assert!(sets.readers_of(outer).is_empty() && sets.readers_of(other).is_empty());
        sets.release(outer);
        assert_eq!(sets.readers_of(inner), [middle]);
        sets.release(middle);
        assert!(sets.readers_of(inner).is_empty());
        assert!(sets.read_by.is_empty(), "nothing left of the readers");
    }

    #[test]
    fn equal_subqueries_share_one_set_until_their_last_user_goes() {
        let mut sets = SetRegistry::default();
        let a = loaded(&mut sets, "u1", &["1"]);
        let (b, load) = sets.acquire(&subquery("u1"), MEMBERSHIPS);
        assert!(!load, "a kept set is not loaded again");
        let c = loaded(&mut sets, "u2", &[]);
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
        let u1 = loaded(&mut sets, "u1", &["1", "2"]);
        let u2 = loaded(&mut sets, "u2", &[]);
        let changes = txn(vec![
            (MEMBERSHIPS, Change::Insert { new: row("3", "u1") }),
            (MEMBERSHIPS, Change::Delete { old: row("1", "u1"), old_is_full: true }),
            (MEMBERSHIPS, Change::Update { old: Some(row("2", "u1")), old_is_full: true, new: row("2", "u2") }),
            (99, Change::Insert { new: row("4", "u1") }),
        ]);
        let deltas = sets.apply(&changes).deltas;
        assert_eq!(
            deltas,
            vec![
                (u1, SetDelta { entered: vec![key("3")], left: vec![key("1"), key("2")] }),
                (u2, SetDelta { entered: vec![key("2")], left: vec![] }),
            ]
        );
        assert_eq!(sets.get(u1).unwrap().len(), 1);
        assert!(sets.apply(&txn(vec![(99, Change::Insert { new: row("5", "u1") })])).deltas.is_empty());
        assert_eq!(sets.holders(&key("3")), [u1]);
        assert_eq!(sets.holders(&key("2")), [u2], "2 moved from u1's set to u2's");
        assert!(sets.holders(&key("1")).is_empty());
    }

    #[test]
    fn a_set_that_cannot_follow_a_transaction_is_left_as_it_was_and_the_others_follow_it() {
        let mut sets = SetRegistry::default();
        let u1 = loaded(&mut sets, "u1", &["1"]);
        let u2 = loaded(&mut sets, "u2", &[]);
        let bad = txn(vec![
            (MEMBERSHIPS, Change::Insert { new: row("7", "u1") }),
            (MEMBERSHIPS, Change::Delete { old: row("9", "u2"), old_is_full: true }),
        ]);
        let applied = sets.apply(&bad);
        assert!(matches!(applied.failed.as_slice(), [(id, SetError::OutOfStep(_))] if *id == u2));
        assert_eq!(applied.deltas, vec![(u1, SetDelta { entered: vec![key("7")], left: vec![] })]);
        assert!(sets.get(u2).unwrap().is_empty(), "u2 is as it was");
        assert_eq!(sets.find(&subquery("u2")), None, "and retired: a new user loads it afresh");
    }
}
