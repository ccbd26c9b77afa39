//! The values one bound subquery yields, maintained from the replication stream
//! (docs/subqueries.md): a multiset of value tuples, each counted once per inner row that
//! yields it. A transaction's changes say which values entered (0 → some rows) and which
//! left (some → 0); a value that enters and leaves in one transaction does neither.
//!
//! Values are keyed by the text PostgreSQL prints for them: subqueries select only types
//! whose equal values print alike (integers, text, uuid, bool), so text equality is value
//! equality. `None` is SQL NULL.

use std::collections::HashMap;

use crate::change::Change;
use crate::index::canonical_text;
use crate::value::{Datum, SqlType};
use crate::where_clause::{EvalError, Membership, Row, Subquery};

pub use crate::where_clause::SetKey;

/// What one transaction did to a set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SetDelta {
    pub entered: Vec<SetKey>,
    pub left: Vec<SetKey>,
}

/// A change that would make a count negative: the set and the stream disagree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a row yielding {0:?} left a subquery's set that did not hold it; the set must be loaded again")]
pub struct SetOutOfStep(pub SetKey);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubquerySet {
    counts: HashMap<SetKey, u32>,
    /// How many distinct keys hold a NULL: only they can make a miss unknown.
    keys_with_null: usize,
}

impl SubquerySet {
    /// A set holding the value of each row of a consistent query.
    pub fn from_rows(rows: impl IntoIterator<Item = SetKey>) -> SubquerySet {
        let mut set = SubquerySet::default();
        for key in rows {
            set.add(key);
        }
        set
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Whether `key` itself is held (NULLs compare as equal here: this is about the set's
    /// contents, not SQL's `IN`).
    pub fn holds(&self, key: &SetKey) -> bool {
        self.counts.contains_key(key)
    }

    /// The distinct values held, in no order.
    pub fn values(&self) -> impl Iterator<Item = &SetKey> {
        self.counts.keys()
    }

    /// Applies one transaction: the value of each inner row that stopped matching (deleted,
    /// or updated away) and of each that started (inserted, or updated into the filter).
    /// On error the set is unchanged.
    pub fn apply(
        &mut self,
        removed: impl IntoIterator<Item = SetKey>,
        added: impl IntoIterator<Item = SetKey>,
    ) -> Result<SetDelta, SetOutOfStep> {
        let net = net_counts(removed, added);
        self.check_net(&net)?;
        let mut delta = SetDelta::default();
        for (key, n) in net {
            let before = self.count(&key);
            let after = u32::try_from(i64::from(before) + n).unwrap_or(u32::MAX);
            match (before, after) {
                (0, 0) => {}
                (0, _) => delta.entered.push(key.clone()),
                (_, 0) => delta.left.push(key.clone()),
                _ => {}
            }
            self.set_count(key, after);
        }
        delta.entered.sort();
        delta.left.sort();
        Ok(delta)
    }

    /// Whether [`SubquerySet::apply`] would succeed, changing nothing.
    pub fn check(&self, removed: &[SetKey], added: &[SetKey]) -> Result<(), SetOutOfStep> {
        self.check_net(&net_counts(removed.iter().cloned(), added.iter().cloned()))
    }

    fn check_net(&self, net: &HashMap<SetKey, i64>) -> Result<(), SetOutOfStep> {
        match net.iter().find(|(key, n)| i64::from(self.count(key)) + **n < 0) {
            Some((key, _)) => Err(SetOutOfStep(key.clone())),
            None => Ok(()),
        }
    }

    /// Whether `probe` is held, by SQL's `IN` rules: a match is `In`; otherwise a NULL on
    /// either side that could hide a match makes it `Unknown`.
    pub fn membership(&self, probe: &[Option<String>]) -> Membership {
        // NULL equals nothing, not even NULL: only a probe without one can match.
        let probe_has_null = probe.iter().any(Option::is_none);
        if !probe_has_null && self.counts.contains_key(probe) {
            return Membership::In;
        }
        if !probe_has_null && self.keys_with_null == 0 {
            return Membership::Out;
        }
        // Row equality is unknown when no pair of non-NULL components differs.
        let maybe_equal = |key: &SetKey| {
            key.iter().zip(probe).all(|(k, p)| match (k, p) {
                (Some(k), Some(p)) => k == p,
                _ => true,
            })
        };
        if self.counts.keys().any(maybe_equal) { Membership::Unknown } else { Membership::Out }
    }

    fn count(&self, key: &SetKey) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn add(&mut self, key: SetKey) {
        let n = self.count(&key) + 1;
        self.set_count(key, n);
    }

    fn set_count(&mut self, key: SetKey, n: u32) {
        let has_null = key.iter().any(Option::is_none);
        match (self.counts.contains_key(&key), n) {
            (true, 0) => {
                self.counts.remove(&key);
                self.keys_with_null -= usize::from(has_null);
            }
            (false, 0) => {}
            (true, n) => {
                self.counts.insert(key, n);
            }
            (false, n) => {
                self.keys_with_null += usize::from(has_null);
                self.counts.insert(key, n);
            }
        }
    }
}

/// Each key's rows added minus rows removed.
fn net_counts(
    removed: impl IntoIterator<Item = SetKey>,
    added: impl IntoIterator<Item = SetKey>,
) -> HashMap<SetKey, i64> {
    let mut net: HashMap<SetKey, i64> = HashMap::new();
    for key in removed {
        *net.entry(key).or_default() -= 1;
    }
    for key in added {
        *net.entry(key).or_default() += 1;
    }
    net
}

/// The current sets, for filters that nest subqueries.
pub trait SetLookup {
    /// `None` when no set is kept for `subquery`.
    fn set(&self, subquery: &Subquery) -> Option<&SubquerySet>;
}

/// A row evaluated beside the sets: what a filter with subqueries needs.
pub struct RowWithSets<'a, R: ?Sized> {
    pub row: &'a R,
    pub sets: &'a dyn SetLookup,
}

impl<R: Row + ?Sized> Row for RowWithSets<'_, R> {
    fn text(&self, column: usize) -> Result<Option<&str>, EvalError> {
        self.row.text(column)
    }

    fn membership(&self, subquery: &Subquery, probe: &[Datum]) -> Result<Membership, EvalError> {
        let set = self.sets.set(subquery).ok_or_else(|| EvalError::Value("a subquery's set is not kept".into()))?;
        Ok(set.membership(&probe_key(probe, subquery.columns.iter().map(|(_, _, ty)| ty))?))
    }
}

/// What one change to the inner table does to a subquery's set: the value the row yielded
/// before (if the inner filter admitted it) and the value it yields after.
///
/// The caller admits only inner tables with `REPLICA IDENTITY FULL`, or subqueries that read
/// only key columns (checked at shape creation): then a key-only old tuple, or the new row
/// when an update kept its key, yields what the old row did.
pub fn set_change(
    subquery: &Subquery,
    change: &Change,
    sets: &dyn SetLookup,
) -> Result<(Option<SetKey>, Option<SetKey>), EvalError> {
    let yielded = |row: &[crate::change::Cell]| -> Result<Option<SetKey>, EvalError> {
        let row = RowWithSets { row, sets };
        if let Some(filter) = &subquery.filter
            && !filter.matches(&row)?
        {
            return Ok(None);
        }
        let key = subquery.columns.iter().map(|(i, ..)| row.text(*i).map(|t| t.map(String::from)));
        key.collect::<Result<SetKey, _>>().map(Some)
    };
    Ok(match change {
        Change::Insert { new } => (None, yielded(new)?),
        Change::Update { old, new, .. } => (yielded(old.as_deref().unwrap_or(new))?, yielded(new)?),
        Change::Delete { old, .. } => (yielded(old)?, None),
    })
}

/// A probe's values as set keys, by the subquery's column types.
pub fn probe_key<'a>(probe: &[Datum], types: impl IntoIterator<Item = &'a SqlType>) -> Result<SetKey, EvalError> {
    probe
        .iter()
        .zip(types)
        .map(|(value, ty)| match value {
            Datum::Null => Ok(None),
            value => canonical_text(value, ty).map(Some).ok_or_else(|| {
                EvalError::Value(format!("{value:?} cannot be matched against a {ty:?} subquery column"))
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(v: &[Option<&str>]) -> SetKey {
        v.iter().map(|s| s.map(String::from)).collect()
    }

    fn one(v: &str) -> SetKey {
        key(&[Some(v)])
    }

    #[test]
    fn values_enter_at_their_first_row_and_leave_with_their_last() {
        let mut set = SubquerySet::from_rows([one("p1"), one("p1"), one("p2")]);
        assert_eq!(set.len(), 2);
        let d = set.apply([one("p1")], [one("p3")]).unwrap();
        assert_eq!(d, SetDelta { entered: vec![one("p3")], left: vec![] }, "p1 still has a row");
        let d = set.apply([one("p1"), one("p2")], []).unwrap();
        assert_eq!(d, SetDelta { entered: vec![], left: vec![one("p1"), one("p2")] });
        let d = set.apply([one("p3")], [one("p3")]).unwrap();
        assert_eq!(d, SetDelta::default(), "a row moved within the value: nothing entered or left");
        let d = set.apply([], [one("p4")].into_iter().chain([one("p4")])).unwrap();
        assert_eq!(d.entered, vec![one("p4")]);
        let d = set.apply([one("p5")], [one("p5")]).unwrap();
        assert_eq!(d, SetDelta::default(), "entered and left in one transaction: neither");
    }

    #[test]
    fn a_row_leaving_a_value_the_set_lacks_is_an_error_and_changes_nothing() {
        let mut set = SubquerySet::from_rows([one("p1")]);
        assert_eq!(set.apply([one("p1"), one("p9")], [one("p2")]), Err(SetOutOfStep(one("p9"))));
        assert_eq!(set.membership(&one("p1")), Membership::In);
        assert_eq!(set.membership(&one("p2")), Membership::Out);
    }

    #[test]
    fn membership_follows_sql_in_with_nulls() {
        let set = SubquerySet::from_rows([one("1"), one("2")]);
        assert_eq!(set.membership(&one("1")), Membership::In);
        assert_eq!(set.membership(&one("3")), Membership::Out);
        assert_eq!(set.membership(&key(&[None])), Membership::Unknown);
        assert_eq!(SubquerySet::default().membership(&key(&[None])), Membership::Out, "nothing is in an empty set");
        let with_null = SubquerySet::from_rows([one("1"), key(&[None])]);
        assert_eq!(with_null.membership(&one("1")), Membership::In);
        assert_eq!(with_null.membership(&one("3")), Membership::Unknown);
        let pairs = SubquerySet::from_rows([key(&[Some("1"), None])]);
        assert_eq!(pairs.membership(&key(&[Some("2"), Some("x")])), Membership::Out, "1 <> 2 decides");
        assert_eq!(pairs.membership(&key(&[Some("1"), Some("x")])), Membership::Unknown);
        assert_eq!(pairs.membership(&key(&[None, Some("x")])), Membership::Unknown);
        assert_eq!(pairs.membership(&key(&[Some("1"), None])), Membership::Unknown, "(1, NULL) = (1, NULL) is NULL");
    }

    /// `memberships (item_id int8, user_id text, note text, score numeric)`, rows as text.
    fn membership_subquery(filter: &str) -> Subquery {
        let e = crate::where_clause::parse_where_with_tables(
            &format!("id IN (SELECT item_id FROM memberships WHERE {filter})"),
            &crate::where_clause::fixture::table(),
            &vec![crate::where_clause::fixture::memberships()],
            &HashMap::new(),
            crate::where_clause::BindOptions::default(),
        )
        .unwrap();
        e.subqueries()[0].clone()
    }

    struct NoSets;
    impl SetLookup for NoSets {
        fn set(&self, _: &Subquery) -> Option<&SubquerySet> {
            None
        }
    }

    #[test]
    fn inner_changes_say_which_value_a_row_stopped_and_started_yielding() {
        use crate::change::Cell;
        let s = membership_subquery("user_id = 'u1'");
        let row = |item: &str, user: &str| vec![Cell::text(item), Cell::text(user), Cell::Null, Cell::Null];
        let insert = Change::Insert { new: row("7", "u1") };
        assert_eq!(set_change(&s, &insert, &NoSets).unwrap(), (None, Some(one("7"))));
        let other_user = Change::Insert { new: row("7", "u2") };
        assert_eq!(set_change(&s, &other_user, &NoSets).unwrap(), (None, None), "the inner filter decides");
        let moved = Change::Update { old: Some(row("7", "u1")), old_is_full: true, new: row("8", "u1") };
        assert_eq!(set_change(&s, &moved, &NoSets).unwrap(), (Some(one("7")), Some(one("8"))));
        let away = Change::Update { old: Some(row("7", "u1")), old_is_full: true, new: row("7", "u2") };
        assert_eq!(set_change(&s, &away, &NoSets).unwrap(), (Some(one("7")), None));
        let gone = Change::Delete { old: row("8", "u1"), old_is_full: true };
        assert_eq!(set_change(&s, &gone, &NoSets).unwrap(), (Some(one("8")), None));
    }

    #[test]
    fn a_nested_subquery_is_answered_by_its_own_set() {
        use crate::change::Cell;
        let s = membership_subquery("user_id IN (SELECT note FROM memberships WHERE item_id = 1)");
        struct Nested(SubquerySet);
        impl SetLookup for Nested {
            fn set(&self, _: &Subquery) -> Option<&SubquerySet> {
                Some(&self.0)
            }
        }
        let sets = Nested(SubquerySet::from_rows([one("u1")]));
        let row = |item: &str, user: &str| vec![Cell::text(item), Cell::text(user), Cell::Null, Cell::Null];
        assert_eq!(set_change(&s, &Change::Insert { new: row("7", "u1") }, &sets).unwrap(), (None, Some(one("7"))));
        assert_eq!(set_change(&s, &Change::Insert { new: row("7", "u2") }, &sets).unwrap(), (None, None));
        assert!(set_change(&s, &Change::Insert { new: row("7", "u1") }, &NoSets).is_err(), "no set: an error");
    }

    #[test]
    fn probes_become_keys_as_postgresql_prints_them() {
        let key =
            probe_key(&[Datum::Int(7), Datum::Null, Datum::Bool(true)], &[SqlType::Int, SqlType::Text, SqlType::Bool]);
        assert_eq!(key.unwrap(), vec![Some("7".into()), None, Some("t".into())]);
        assert!(probe_key(&[Datum::Float(1.5)], &[SqlType::Float]).is_err());
    }

    proptest! {
        /// Any sequence of transactions: the set holds exactly the values with rows, and
        /// the deltas replayed from empty give the same values.
        #[test]
        fn the_set_is_the_values_with_rows(txns in proptest::collection::vec(
            (proptest::collection::vec(0u8..6, 0..4), proptest::collection::vec(0u8..6, 0..4)), 0..30)) {
            let mut set = SubquerySet::default();
            let mut rows: HashMap<u8, u32> = HashMap::new();
            let mut present: std::collections::BTreeSet<u8> = Default::default();
            for (removed, added) in txns {
                // Only rows that exist can be removed.
                let mut removable = rows.clone();
                let removed: Vec<u8> = removed.into_iter().filter(|v| {
                    let n = removable.entry(*v).or_default();
                    if *n > 0 { *n -= 1; true } else { false }
                }).collect();
                let d = set.apply(removed.iter().map(|v| one(&v.to_string())), added.iter().map(|v| one(&v.to_string()))).unwrap();
                for v in &removed { *rows.get_mut(v).unwrap() -= 1; }
                for v in &added { *rows.entry(*v).or_default() += 1; }
                for k in &d.entered { prop_assert!(present.insert(k[0].as_ref().unwrap().parse().unwrap())); }
                for k in &d.left { prop_assert!(present.remove(&k[0].as_ref().unwrap().parse::<u8>().unwrap())); }
                let expected: std::collections::BTreeSet<u8> = rows.iter().filter(|(_, n)| **n > 0).map(|(v, _)| *v).collect();
                prop_assert_eq!(&present, &expected);
                prop_assert_eq!(set.len(), expected.len());
                for v in 0u8..6 {
                    let m = set.membership(&one(&v.to_string()));
                    prop_assert_eq!(m == Membership::In, expected.contains(&v));
                }
            }
        }
    }
}
