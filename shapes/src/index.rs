//! The routing index: finds the shapes a change may touch without looking at every shape.
//! Shapes whose filter has a top-level `col = const` or `col IN (consts)` term are found by
//! hashing the row's value of that column; the rest are checked one by one.

use std::collections::HashMap;
use std::hash::Hash;

use crate::change::Cell;
use crate::value::{Datum, SqlType};
use crate::where_clause::{CmpOp, Expr};

/// Where a filter, given as its top-level `AND` terms, can be looked up: the column and the
/// text values that select rows.
pub fn index_terms(conjuncts: &[&Expr]) -> Option<(usize, Vec<String>)> {
    conjuncts.iter().find_map(|term| match term {
        Expr::Compare { op: CmpOp::Eq, left, right } => match (left.as_ref(), right.as_ref()) {
            (Expr::Column { index, ty, .. }, Expr::Const { value, .. })
            | (Expr::Const { value, .. }, Expr::Column { index, ty, .. }) => {
                Some((*index, vec![canonical_text(value, ty)?]))
            }
            _ => None,
        },
        Expr::InList { expr, list, negated: false } => match expr.as_ref() {
            Expr::Column { index, ty, .. } => {
                let values = list
                    .iter()
                    .map(|e| match e {
                        Expr::Const { value, .. } => canonical_text(value, ty),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((*index, values))
            }
            _ => None,
        },
        _ => None,
    })
}

/// The exact text PostgreSQL's output function prints for `value` in a column of type `ty`,
/// for the types where equal values always print alike.
pub fn canonical_text(value: &Datum, ty: &SqlType) -> Option<String> {
    match (value, ty) {
        (Datum::Int(i), SqlType::Int) => Some(i.to_string()),
        (Datum::Text(s), SqlType::Text) => Some(s.clone()),
        (Datum::Uuid(_), SqlType::Uuid) => Some(value.to_sql_text()),
        (Datum::Bool(b), SqlType::Bool) => Some(if *b { "t" } else { "f" }.into()),
        _ => None,
    }
}

/// Shapes of one table, indexed by their equality terms.
#[derive(Debug)]
pub struct RoutingIndex<Id> {
    by_column: HashMap<usize, HashMap<String, Vec<Id>>>,
    unindexed: Vec<Id>,
}

impl<Id> Default for RoutingIndex<Id> {
    fn default() -> Self {
        RoutingIndex { by_column: HashMap::new(), unindexed: Vec::new() }
    }
}

impl<Id: Copy + Eq + Hash + Ord> RoutingIndex<Id> {
    /// Adds a shape by its filter's top-level `AND` terms (none: every row).
    pub fn insert(&mut self, id: Id, conjuncts: &[&Expr]) {
        match index_terms(conjuncts) {
            Some((col, values)) => {
                let by_value = self.by_column.entry(col).or_default();
                for v in values {
                    by_value.entry(v).or_default().push(id);
                }
            }
            None => self.unindexed.push(id),
        }
    }

    pub fn remove(&mut self, id: Id) {
        self.unindexed.retain(|x| *x != id);
        for by_value in self.by_column.values_mut() {
            by_value.retain(|_, ids| {
                ids.retain(|x| *x != id);
                !ids.is_empty()
            });
        }
        self.by_column.retain(|_, m| !m.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        self.unindexed.is_empty() && self.by_column.is_empty()
    }

    /// Shapes that may contain any of `rows` (old and new versions of a changed row),
    /// sorted and without repeats. A row whose indexed value is unavailable (an unchanged
    /// TOAST value) matches every shape indexed on that column.
    pub fn candidates(&self, rows: &[&[Cell]], out: &mut Vec<Id>) {
        out.clear();
        out.extend_from_slice(&self.unindexed);
        for (col, by_value) in &self.by_column {
            for row in rows {
                match row.get(*col) {
                    Some(Cell::Unchanged) => by_value.values().for_each(|ids| out.extend_from_slice(ids)),
                    Some(c) => {
                        if let Some(ids) = c.as_str().and_then(|v| by_value.get(v)) {
                            out.extend_from_slice(ids);
                        }
                    }
                    None => {}
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::table::{Column, TableName, TableSchema};
    use crate::where_clause::{BindOptions, parse_where};

    fn table() -> TableSchema {
        let col = |n: &str, t: &str| Column {
            name: n.into(),
            type_oid: 0,
            type_name: t.into(),
            type_sql: String::new(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index: None,
        };
        TableSchema {
            oid: 1,
            name: TableName::new("public", "t"),
            columns: vec![col("id", "int8"), col("org", "text")],
            replica_identity_full: true,
        }
    }

    fn filter(s: &str) -> Expr {
        parse_where(s, &table(), &HashMap::new(), BindOptions::default()).unwrap()
    }

    #[test]
    fn equality_shapes_are_found_by_value() {
        let mut idx = RoutingIndex::default();
        for i in 0..1000u32 {
            idx.insert(i, &filter(&format!("org = 'o{i}' AND id > 0")).conjuncts());
        }
        idx.insert(5000, &filter("id IN (1, 2)").conjuncts());
        idx.insert(6000, &filter("org LIKE 'x%'").conjuncts());
        idx.insert(7000, &[]);
        let row = [Cell::text("1"), Cell::text("o42")];
        let mut out = Vec::new();
        idx.candidates(&[&row], &mut out);
        assert_eq!(out, vec![42, 5000, 6000, 7000]);
        idx.remove(42);
        idx.candidates(&[&row], &mut out);
        assert_eq!(out, vec![5000, 6000, 7000]);
    }

    #[test]
    fn old_and_new_rows_both_route() {
        let mut idx = RoutingIndex::default();
        idx.insert(1u32, &filter("org = 'a'").conjuncts());
        idx.insert(2u32, &filter("org = 'b'").conjuncts());
        let (old, new) = ([Cell::text("1"), Cell::text("a")], [Cell::text("1"), Cell::text("b")]);
        let mut out = Vec::new();
        idx.candidates(&[&old, &new], &mut out);
        assert_eq!(out, vec![1, 2]);
    }
}
