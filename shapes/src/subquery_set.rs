//! The values one bound subquery yields, maintained from the replication stream
//! (docs/subqueries.md): a multiset of value tuples, each counted once per inner row that
//! yields it. A transaction's changes say which values entered (0 → some rows) and which
//! left (some → 0); a value that enters and leaves in one transaction does neither.
//!
//! Values are keyed by the text PostgreSQL prints for them: subqueries select only types
//! whose equal values print alike (integers, text, uuid, bool), so text equality is value
//! equality. `None` is SQL NULL.

use std::collections::HashMap;

use crate::index::canonical_text;
use crate::value::{Datum, SqlType};
use crate::where_clause::{EvalError, Membership};

/// One value tuple, as text (`None`: NULL).
pub type SetKey = Vec<Option<String>>;

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

#[derive(Debug, Default)]
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

    /// Applies one transaction: the value of each inner row that stopped matching (deleted,
    /// or updated away) and of each that started (inserted, or updated into the filter).
    /// On error the set is unchanged.
    pub fn apply(
        &mut self,
        removed: impl IntoIterator<Item = SetKey>,
        added: impl IntoIterator<Item = SetKey>,
    ) -> Result<SetDelta, SetOutOfStep> {
        let mut net: HashMap<SetKey, i64> = HashMap::new();
        for key in removed {
            *net.entry(key).or_default() -= 1;
        }
        for key in added {
            *net.entry(key).or_default() += 1;
        }
        if let Some((key, _)) = net.iter().find(|(key, n)| i64::from(self.count(key)) + **n < 0) {
            return Err(SetOutOfStep(key.clone()));
        }
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

    /// Whether `probe` is held, by SQL's `IN` rules: a match is `In`; otherwise a NULL on
    /// either side that could hide a match makes it `Unknown`.
    pub fn membership(&self, probe: &[Option<String>]) -> Membership {
        if self.counts.contains_key(probe) {
            return Membership::In;
        }
        let probe_has_null = probe.iter().any(Option::is_none);
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

/// A probe's values as set keys, by the subquery's column types.
pub fn probe_key(probe: &[Datum], types: &[SqlType]) -> Result<SetKey, EvalError> {
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
