//! Subqueries in filters: `(a, b) [NOT] IN (SELECT c, d FROM t [WHERE …])`. A bound
//! subquery is plain data (its table, its columns, its filter with parameters substituted),
//! so equal subqueries compare equal and can share one maintained set of values
//! (docs/subqueries.md). Evaluation asks the row's context whether a value is in the set
//! ([`super::Row::membership`]); rendering writes the subquery back as SQL.

use std::fmt::Write;

use crate::table::{TableName, TableSchema};
use crate::value::SqlType;

use super::Expr;

/// A bound `SELECT columns FROM table [WHERE filter]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Subquery {
    pub table: TableName,
    /// `(index in the table, name, type)` of each selected column.
    pub columns: Vec<(usize, String, SqlType)>,
    /// The inner filter, bound against `table`; it may hold further subqueries.
    pub filter: Option<Expr>,
    /// Its SQL, rendered once: the key its set is kept under, looked up for every row a
    /// shape through it evaluates (the fields above are not changed after binding).
    sql: String,
}

impl Subquery {
    pub fn new(table: TableName, columns: Vec<(usize, String, SqlType)>, filter: Option<Expr>) -> Subquery {
        let mut subquery = Subquery { table, columns, filter, sql: String::new() };
        subquery.sql = subquery.to_sql_without(&[]);
        subquery
    }

    /// The inner table's columns this reads (selected, or in its own filter), each once.
    pub fn columns_read(&self) -> Vec<usize> {
        let mut read: Vec<usize> = self.columns.iter().map(|(i, ..)| *i).collect();
        read.extend(self.filter.iter().flat_map(Expr::columns));
        read.sort_unstable();
        read.dedup();
        read
    }

    /// Whether the stream tells this subquery's set enough: the old values of every column
    /// it reads, on update and delete. They come whole under `REPLICA IDENTITY FULL`, and
    /// otherwise only for key columns.
    pub fn check_replica_identity(&self, table: &TableSchema) -> Result<(), String> {
        let key = table.key_columns();
        if table.replica_identity_full
            || (table.has_primary_key() && self.columns_read().iter().all(|c| key.contains(c)))
        {
            return Ok(());
        }
        Err(format!(
            "the subquery reads columns of {} that updates and deletes do not carry in the replication stream; \
             run `ALTER TABLE {} REPLICA IDENTITY FULL`",
            self.table.quoted(),
            self.table.quoted()
        ))
    }

    /// `SELECT "c", "d" FROM "schema"."t" WHERE …`.
    pub fn to_sql(&self) -> &str {
        &self.sql
    }

    /// [`Subquery::to_sql`] yielding none of `values` (rows yielding NULLs stay).
    pub fn to_sql_without(&self, values: &[SetKey]) -> String {
        let columns: Vec<String> = self.columns.iter().map(|(_, name, _)| crate::table::quote_ident(name)).collect();
        let mut sql = format!("SELECT {} FROM {}", columns.join(", "), self.table.quoted());
        let mut terms: Vec<String> = self.filter.iter().map(Expr::to_sql).collect();
        if !values.is_empty() {
            // IS NOT DISTINCT FROM, not NOT IN: a row yielding a NULL is kept, not made unknown.
            let tuple = format!("({})", columns.join(", "));
            let same: Vec<String> = values
                .iter()
                .map(|v| {
                    let mut row = String::new();
                    write_rows(&mut row, std::slice::from_ref(v), self);
                    format!("{tuple} IS NOT DISTINCT FROM {row}")
                })
                .collect();
            terms.push(format!("NOT ({})", same.join(" OR ")));
        }
        if !terms.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&terms.join(" AND "));
        }
        sql
    }
}

/// Value tuples as SQL rows, `(CAST('1' AS int8)), (…)`, typed by the subquery's columns.
pub fn write_rows(out: &mut String, rows: &[SetKey], subquery: &Subquery) {
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "(" } else { ", (" });
        for (j, (value, (_, _, ty))) in row.iter().zip(&subquery.columns).enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            match value {
                Some(text) => {
                    let _ = write!(out, "CAST('{}' AS {})", text.replace('\'', "''"), ty.sql_name());
                }
                None => {
                    let _ = write!(out, "CAST(NULL AS {})", ty.sql_name());
                }
            }
        }
        out.push(')');
    }
}

/// One value tuple a subquery yields, as PostgreSQL prints it (`None`: NULL).
pub type SetKey = Vec<Option<String>>;

/// A kept set as one shape sees it while a change to it is being brought in: the values
/// PostgreSQL's subquery yields now, `without` some and `with` others (never NULL-holding
/// tuples: such changes are not brought in this way).
#[derive(Debug)]
pub struct SetView<'a> {
    pub subquery: &'a Subquery,
    pub without: &'a [SetKey],
    pub with: &'a [SetKey],
}

/// Whether a value is among those a subquery yields, in SQL's three-valued terms: `Unknown`
/// when the probe holds a NULL, or the set holds a NULL and not the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    In,
    Out,
    Unknown,
}

/// The tables a subquery may read, by name.
pub trait Catalog {
    fn table(&self, name: &TableName) -> Option<&TableSchema>;
}

impl Catalog for Vec<TableSchema> {
    fn table(&self, name: &TableName) -> Option<&TableSchema> {
        self.iter().find(|t| &t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::value::Datum;
    use crate::where_clause::fixture::table;
    use crate::where_clause::{BindOptions, EvalError, Row, WhereError, parse_where_with_tables};

    fn bind(text: &str, params: &[(usize, &str)]) -> Result<Expr, WhereError> {
        let params: HashMap<usize, String> = params.iter().map(|(n, v)| (*n, v.to_string())).collect();
        parse_where_with_tables(
            text,
            &table(),
            &vec![crate::where_clause::fixture::memberships()],
            &params,
            BindOptions::default(),
        )
    }

    #[test]
    fn a_subquery_binds_against_its_own_table_and_renders_with_typed_literals() {
        let e = bind("id IN (SELECT item_id FROM memberships WHERE user_id = $1) AND NOT done", &[(1, "u'1")]).unwrap();
        assert_eq!(e.columns(), vec![0, 3], "only the outer row's columns");
        let [s] = e.subqueries()[..] else { panic!("one subquery") };
        assert_eq!(s.table, TableName::new("public", "memberships"));
        assert_eq!(s.columns, vec![(0, "item_id".to_string(), SqlType::Int)]);
        assert_eq!(s.columns_read(), vec![0, 1], "item_id selected, user_id filtered");
        assert_eq!(
            e.to_sql(),
            r#"((("id") IN (SELECT "item_id" FROM "public"."memberships" WHERE ("user_id" = CAST('u''1' AS text)))) AND (NOT "done"))"#
        );
    }

    #[test]
    fn a_set_needs_the_old_values_of_every_column_it_reads() {
        let s = bind("id IN (SELECT item_id FROM memberships WHERE user_id = 'u1')", &[]).unwrap();
        let s = s.subqueries()[0];
        let mut inner = crate::where_clause::fixture::memberships();
        let refused = s.check_replica_identity(&inner).unwrap_err();
        assert!(refused.contains(r#"ALTER TABLE "public"."memberships" REPLICA IDENTITY FULL"#), "{refused}");
        inner.columns[0].pk_index = Some(0);
        inner.columns[1].pk_index = Some(1);
        assert_eq!(s.check_replica_identity(&inner), Ok(()), "every column read is in the key");
        inner.columns[1].pk_index = None;
        assert!(s.check_replica_identity(&inner).is_err(), "user_id is not");
        inner.replica_identity_full = true;
        assert_eq!(s.check_replica_identity(&inner), Ok(()));
    }

    #[test]
    fn row_form_nesting_and_not_in_bind() {
        let e = bind("(id, title) NOT IN (SELECT item_id, note FROM memberships)", &[]).unwrap();
        assert!(matches!(&e, Expr::InSubquery { probe, negated: true, .. } if probe.len() == 2));
        let nested = bind(
            "id IN (SELECT item_id FROM memberships WHERE user_id IN (SELECT note FROM memberships WHERE item_id = 1))",
            &[],
        )
        .unwrap();
        let inner = nested.subqueries()[0].filter.as_ref().unwrap();
        assert_eq!(inner.subqueries().len(), 1, "the inner filter holds the nested subquery");
        assert_eq!(nested.subqueries().len(), 1, "the outer level sees only its own");
    }

    #[test]
    fn equal_subqueries_compare_equal_however_their_values_were_written() {
        let by_param = bind("id IN (SELECT item_id FROM memberships WHERE user_id = $1)", &[(1, "u1")]).unwrap();
        let by_literal = bind("id in (select ITEM_ID from public.memberships where (user_id = 'u1'))", &[]).unwrap();
        assert_eq!(by_param.subqueries(), by_literal.subqueries());
        let other = bind("id IN (SELECT item_id FROM memberships WHERE user_id = $1)", &[(1, "u2")]).unwrap();
        assert_ne!(by_param.subqueries(), other.subqueries());
    }

    #[test]
    fn anything_but_plain_columns_of_one_table_is_refused_by_name() {
        for text in [
            "id IN (SELECT DISTINCT item_id FROM memberships)",
            "id IN (SELECT item_id FROM memberships m)",
            "id IN (SELECT item_id FROM memberships, items)",
            "id IN (SELECT item_id FROM memberships JOIN items ON true)",
            "id IN (SELECT item_id FROM memberships ORDER BY item_id)",
            "id IN (SELECT item_id FROM memberships LIMIT 1)",
            "id IN (SELECT item_id + 1 FROM memberships)",
            "id IN (SELECT * FROM memberships)",
            "id IN (SELECT item_id FROM memberships GROUP BY item_id)",
            "id IN (WITH m AS (SELECT 1) SELECT item_id FROM memberships)",
            "id IN (SELECT item_id FROM memberships UNION SELECT item_id FROM memberships)",
            "id IN (SELECT item_id FROM memberships FOR UPDATE)",
            "EXISTS (SELECT item_id FROM memberships)",
            "id = (SELECT item_id FROM memberships)",
        ] {
            let e = bind(text, &[]).unwrap_err();
            assert!(matches!(e, WhereError::Unsupported(ref m) if m.contains("subquery")), "{text}: {e}");
        }
        let without_tables = crate::where_clause::parse_where(
            "id IN (SELECT item_id FROM memberships)",
            &table(),
            &HashMap::new(),
            BindOptions::default(),
        );
        assert!(matches!(without_tables, Err(WhereError::Unsupported(m)) if m.contains("being built")));
        assert_eq!(
            bind("id IN (SELECT item_id FROM secrets)", &[]).unwrap_err(),
            WhereError::UnknownTable(TableName::new("public", "secrets"))
        );
        assert_eq!(
            bind("id IN (SELECT password FROM memberships)", &[]).unwrap_err(),
            WhereError::UnknownColumn("password".into())
        );
        assert!(matches!(bind("(id, title) IN (SELECT item_id FROM memberships)", &[]), Err(WhereError::Type(_))));
        let numeric = bind("price IN (SELECT score FROM memberships)", &[]).unwrap_err();
        assert!(
            matches!(numeric, WhereError::Type(ref m) if m.contains("only integer, text, uuid or bool")),
            "{numeric}"
        );
        assert!(matches!(bind("due IN (SELECT item_id FROM memberships)", &[]), Err(WhereError::Type(_))));
        assert!(matches!(bind("id IN (SELECT item_id FROM memberships WHERE note)", &[]), Err(WhereError::Type(_))));
    }

    /// A row of the fixture table beside a set of `item_id`s.
    struct Beside<'a> {
        cells: Vec<Option<&'a str>>,
        set: &'a [Option<i64>],
    }

    impl Row for Beside<'_> {
        fn text(&self, column: usize) -> Result<Option<&str>, EvalError> {
            Ok(self.cells.get(column).copied().flatten())
        }

        fn membership(&self, _: &Subquery, probe: &[Datum]) -> Result<Membership, EvalError> {
            Ok(match probe {
                [Datum::Null] if !self.set.is_empty() => Membership::Unknown,
                [Datum::Int(i)] if self.set.contains(&Some(*i)) => Membership::In,
                _ if self.set.contains(&None) => Membership::Unknown,
                _ => Membership::Out,
            })
        }
    }

    #[test]
    fn membership_decides_in_and_not_in_with_sql_nulls() {
        let (within, without) = (
            bind("id IN (SELECT item_id FROM memberships)", &[]).unwrap(),
            bind("id NOT IN (SELECT item_id FROM memberships)", &[]).unwrap(),
        );
        let row = |id: Option<&'static str>, set: &'static [Option<i64>]| Beside { cells: vec![id], set };
        let both = |r: &Beside<'_>| (within.matches(r).unwrap(), without.matches(r).unwrap());
        assert_eq!(both(&row(Some("1"), &[Some(1), Some(2)])), (true, false));
        assert_eq!(both(&row(Some("3"), &[Some(1), Some(2)])), (false, true));
        assert_eq!(both(&row(Some("3"), &[Some(1), None])), (false, false), "a NULL in the set: NOT IN is unknown");
        assert_eq!(both(&row(None, &[Some(1)])), (false, false), "a NULL probe: both unknown");
        assert_eq!(both(&row(None, &[])), (false, true), "nothing is in an empty set");
        struct NoSets;
        impl Row for NoSets {
            fn text(&self, _: usize) -> Result<Option<&str>, EvalError> {
                Ok(Some("1"))
            }
        }
        assert!(within.matches(&NoSets).is_err(), "no sets: an error, never a guess");
    }
}
