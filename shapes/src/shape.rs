//! Shape definitions: what a client asked for ([`ShapeSpec`]), bound to a table
//! ([`Shape`]), with a canonical identity ([`Shape::key`]) so equal definitions share one log.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::table::{TableSchema, quote_ident, split_identifiers};
use crate::where_clause::{
    BindOptions, Catalog, EvalError, Expr, Row, SetKey, SetView, Subquery, WhereError, parse_where,
    parse_where_with_tables,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replica {
    /// Updates carry the key and changed columns; deletes the key.
    #[default]
    Default,
    /// Updates and deletes carry the full row; updates also `old_value`.
    Full,
}

impl FromStr for Replica {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Replica::Default),
            "full" => Ok(Replica::Full),
            other => Err(format!("must be 'default' or 'full', not {other:?}")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogMode {
    /// Snapshot, then changes.
    #[default]
    Full,
    /// Changes only: the snapshot carries no rows.
    ChangesOnly,
}

impl FromStr for LogMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(LogMode::Full),
            "changes_only" => Ok(LogMode::ChangesOnly),
            other => Err(format!("must be 'full' or 'changes_only', not {other:?}")),
        }
    }
}

/// A shape as requested: everything needed to rebuild it against a table schema.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ShapeSpec {
    pub where_text: Option<String>,
    pub params: Vec<(usize, String)>,
    /// Requested columns; `None` selects all.
    pub columns: Option<Vec<String>>,
    pub replica: Replica,
    pub log: LogMode,
    /// The caller's row scope, ANDed with `where_text`; set by the gateway's access rules,
    /// never by the client.
    #[serde(default)]
    pub scope: Option<ScopeSpec>,
}

/// A row scope with its claim values bound as `$n` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ScopeSpec {
    pub where_text: String,
    pub params: Vec<(usize, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error(transparent)]
    Where(#[from] WhereError),
    #[error("the access rule's scope does not bind: {0}")]
    Scope(WhereError),
    #[error("{0}")]
    Columns(String),
}

/// Parses the protocol's `columns` parameter (comma-separated, optionally double-quoted).
pub fn parse_columns(s: &str) -> Result<Vec<String>, String> {
    split_identifiers(s, ',')
}

/// A shape bound to its table.
#[derive(Clone, Debug)]
pub struct Shape {
    pub spec: ShapeSpec,
    pub table: TableSchema,
    /// The rule's scope bound to the caller's claims (`None`: an unscoped caller).
    pub scope: Option<Expr>,
    /// The client's own `where`. The shape's rows are the scope AND this: tested with
    /// [`Shape::admits`] and read with [`Shape::where_sql`], which never apply the client's
    /// filter outside the scope.
    pub client_filter: Option<Expr>,
    /// Columns the client's own filter reads (access rules may hide some).
    pub where_columns: Vec<usize>,
    /// Indexes of the selected columns, in table order.
    pub selected: Vec<usize>,
    /// Indexes of the key columns, in key order.
    pub key: Vec<usize>,
    /// [`Shape::tag_column`], found once.
    tag_column: Option<usize>,
}

impl Shape {
    pub fn bind(spec: ShapeSpec, table: TableSchema, options: BindOptions) -> Result<Shape, ShapeError> {
        Shape::bind_with_tables(spec, table, None, options)
    }

    /// [`Shape::bind`] where the client's filter may read other tables through subqueries,
    /// those in `catalog` (a missing one is a [`WhereError::UnknownTable`]: load it, bind
    /// again). Without a catalog a subquery is refused.
    pub fn bind_with_tables(
        spec: ShapeSpec,
        table: TableSchema,
        catalog: Option<&dyn Catalog>,
        options: BindOptions,
    ) -> Result<Shape, ShapeError> {
        let params: HashMap<usize, String> = spec.params.iter().cloned().collect();
        let client = match (&spec.where_text, catalog) {
            (Some(w), _) if w.trim().is_empty() => None,
            (Some(w), Some(catalog)) => Some(parse_where_with_tables(w, &table, catalog, &params, options)?),
            (Some(w), None) => Some(parse_where(w, &table, &params, options)?),
            (None, _) => None,
        };
        let where_columns = client.as_ref().map(Expr::columns).unwrap_or_default();
        let scope = match &spec.scope {
            Some(s) => {
                let params: HashMap<usize, String> = s.params.iter().cloned().collect();
                let scope = match catalog {
                    Some(catalog) => parse_where_with_tables(&s.where_text, &table, catalog, &params, options),
                    None => parse_where(&s.where_text, &table, &params, options),
                };
                Some(scope.map_err(ShapeError::Scope)?)
            }
            None => None,
        };
        // Parsed apart and kept apart: no client text can reach into the scope.
        let key = table.key_columns();
        let selected = match &spec.columns {
            None => (0..table.columns.len()).collect(),
            Some(names) => {
                let unknown: Vec<&str> =
                    names.iter().filter(|n| table.column_index(n).is_none()).map(String::as_str).collect();
                if !unknown.is_empty() {
                    return Err(ShapeError::Columns(format!(
                        "The following columns are not found on the table: {}",
                        unknown.join(", ")
                    )));
                }
                let mut idx: Vec<usize> = names.iter().filter_map(|n| table.column_index(n)).collect();
                let missing: Vec<&str> =
                    key.iter().filter(|k| !idx.contains(k)).map(|k| table.columns[*k].name.as_str()).collect();
                if table.has_primary_key() && !missing.is_empty() {
                    return Err(ShapeError::Columns(format!(
                        "The list of columns must include all primary key columns, missing: {}",
                        missing.join(", ")
                    )));
                }
                idx.sort_unstable();
                idx.dedup();
                idx
            }
        };
        let mut shape =
            Shape { spec, table, scope, client_filter: client, where_columns, selected, key, tag_column: None };
        shape.tag_column = shape.tag_link().map(|(column, _)| column);
        Ok(shape)
    }

    /// The subqueries the shape's rows depend on, each once (by its SQL), inner ones before
    /// the outer ones whose filters read them; `true` marks those the shape's own filter
    /// tests (the rest are nested inside them).
    pub fn subqueries(&self) -> Vec<(&Subquery, bool)> {
        fn walk<'a>(subquery: &'a Subquery, top: bool, out: &mut Vec<(&'a Subquery, bool)>) {
            for inner in subquery.filter.iter().flat_map(Expr::subqueries) {
                walk(inner, false, out);
            }
            match out.iter_mut().find(|(s, _)| *s == subquery) {
                Some(seen) => seen.1 |= top,
                None => out.push((subquery, top)),
            }
        }
        let mut out = Vec::new();
        for subquery in self.scope.iter().chain(&self.client_filter).flat_map(Expr::subqueries) {
            walk(subquery, true, &mut out);
        }
        out
    }

    /// Whether the shape holds only some of the table's rows.
    pub fn is_filtered(&self) -> bool {
        self.scope.is_some() || self.client_filter.is_some()
    }

    /// The query of the rows whose membership in the shape differs between `views` (sets as
    /// they were) and the sets as PostgreSQL's subqueries yield them now: `now_in` (bool)
    /// first, then the `read` columns as text. Only rows whose probe of a changed set holds
    /// one of its changed values or a NULL can differ, so only those are read (all rows when
    /// a changed value holds a NULL).
    pub fn moved_rows_sql(&self, views: &[SetView], read: &[usize]) -> String {
        let now = self.where_sql(None).unwrap_or_else(|| "true".into());
        let before = self.where_sql_viewing(None, views).unwrap_or_else(|| "true".into());
        let mut slice = Vec::new();
        for view in views {
            let changed: Vec<SetKey> = view.without.iter().chain(view.with).cloned().collect();
            // No value changed (a change and its undoing merged): no row can differ by it.
            if changed.is_empty() {
                continue;
            }
            let probes: Vec<&[Expr]> =
                self.scope.iter().chain(&self.client_filter).flat_map(|e| e.probes_of(view.subquery)).collect();
            // A value holding a NULL turns every miss into unknown (or back): any row may differ.
            if changed.iter().any(|v| v.contains(&None)) && !probes.is_empty() {
                slice.push("true".to_string());
            }
            for probe in probes {
                let probe: Vec<String> = probe.iter().map(Expr::to_sql).collect();
                let mut rows = String::new();
                crate::where_clause::write_rows(&mut rows, &changed, view.subquery);
                slice.push(format!("({}) IN ({rows})", probe.join(", ")));
                slice.extend(probe.iter().map(|p| format!("{p} IS NULL")));
            }
        }
        let columns: Vec<String> =
            read.iter().map(|&i| format!("{}::text", quote_ident(&self.table.columns[i].name))).collect();
        format!(
            "SELECT ({now}) IS TRUE, {} FROM {} WHERE ({}) AND (({now}) IS TRUE) <> (({before}) IS TRUE)",
            columns.join(", "),
            self.table.name.quoted(),
            if slice.is_empty() { "false".to_string() } else { slice.join(" OR ") },
        )
    }

    /// The column whose value says why a row is in the shape, when its rows are there
    /// through a subquery: the column of a top-level `col IN (subquery)` term. Rows carry it
    /// as their tag, and a value leaving the set is a `move-out` of that tag.
    pub fn tag_column(&self) -> Option<usize> {
        self.tag_column
    }

    /// [`Shape::tag_column`] with the subquery its term tests.
    pub fn tag_link(&self) -> Option<(usize, &Subquery)> {
        self.conjuncts().into_iter().find_map(|term| match term {
            Expr::InSubquery { probe, subquery, negated: false } => match probe.as_slice() {
                [Expr::Column { index, .. }] => Some((*index, &**subquery)),
                _ => None,
            },
            _ => None,
        })
    }

    /// The top-level `AND` terms of the shape's rows, the scope's first (for routing).
    pub fn conjuncts(&self) -> Vec<&Expr> {
        self.scope.iter().chain(&self.client_filter).flat_map(Expr::conjuncts).collect()
    }

    /// Whether a row is in the shape. The client's filter is evaluated only on rows the
    /// scope admits (true, not unknown): an expression that fails on some values (a
    /// division, a cast) must not tell the client anything about rows outside its scope.
    pub fn admits<R: Row + ?Sized>(&self, row: &R) -> Result<bool, EvalError> {
        if let Some(scope) = &self.scope
            && !scope.matches(row)?
        {
            return Ok(false);
        }
        match &self.client_filter {
            None => Ok(true),
            Some(client) => client.matches(row),
        }
    }

    /// The shape's rows, narrowed by `extra` (a subset's filter), as a SQL condition; `None`
    /// is every row. Client terms that could fail on some rows ([`Expr::may_fail_on_rows`])
    /// sit inside `CASE WHEN <scope> THEN … END`, whose branch PostgreSQL evaluates only for
    /// rows where the condition holds, whatever order the planner picks for the other
    /// quals. The scope and the client's terms that cannot fail stand alone, so indexes
    /// still serve them.
    pub fn where_sql(&self, extra: Option<&Expr>) -> Option<String> {
        self.where_sql_viewing(extra, &[])
    }

    /// [`Shape::where_sql`] with subqueries' sets seen as `views` say.
    pub fn where_sql_viewing(&self, extra: Option<&Expr>, views: &[SetView]) -> Option<String> {
        let sql = |e: &Expr| if views.is_empty() { e.to_sql() } else { e.to_sql_viewing(views) };
        let terms: Vec<&Expr> = self.client_filter.iter().chain(extra).flat_map(Expr::conjuncts).collect();
        let Some(scope) = self.scope.as_ref().map(sql) else {
            let all: Vec<String> = terms.iter().map(|t| sql(t)).collect();
            return (!all.is_empty()).then(|| all.join(" AND "));
        };
        let (risky, safe): (Vec<&Expr>, Vec<&Expr>) = terms.into_iter().partition(|t| t.may_fail_on_rows());
        let mut out = vec![scope.clone()];
        out.extend(safe.iter().map(|t| sql(t)));
        if !risky.is_empty() {
            let guarded: Vec<String> = risky.iter().map(|t| sql(t)).collect();
            out.push(format!("CASE WHEN {scope} THEN {} ELSE false END", guarded.join(" AND ")));
        }
        Some(out.join(" AND "))
    }

    /// Canonical identity: the same table, filter, columns and modes give the same key,
    /// whatever the spelling of the request.
    pub fn key(&self) -> ShapeKey {
        // Rendered as `Expr::And(vec![scope, client]).to_sql()` would be (a test keeps them
        // equal), so existing shapes keep their keys.
        let filter = match (&self.scope, &self.client_filter) {
            (Some(scope), Some(client)) => format!("({} AND {})", scope.to_sql(), client.to_sql()),
            (scope, client) => scope.as_ref().or(client.as_ref()).map(Expr::to_sql).unwrap_or_default(),
        };
        let cols: Vec<&str> = self.selected.iter().map(|i| self.table.columns[*i].name.as_str()).collect();
        ShapeKey(format!(
            "{}|{}|{}|{}|{:?}|{:?}",
            self.table.oid,
            self.table.name.quoted(),
            filter,
            cols.join(","),
            self.spec.replica,
            self.spec.log
        ))
    }

    /// Whether applying changes needs the old row (to see rows leave the filter).
    pub fn needs_old_rows(&self) -> bool {
        self.is_filtered() || self.spec.replica == Replica::Full
    }
}

/// The canonical identity of a shape definition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShapeKey(pub String);

impl ShapeKey {
    /// A short stable hash of the key (FNV-1a), used as the first half of handles.
    pub fn digest(&self) -> u64 {
        self.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
    }
}

/// Names one generation of a shape: `<digest>-<creation time in µs>`. Never reused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ShapeHandle(String);

impl ShapeHandle {
    pub fn new(key: &ShapeKey, created_micros: u64) -> Self {
        ShapeHandle(format!("{}-{created_micros}", key.digest() % 100_000_000))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShapeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ShapeHandle {
    type Err = String;
    /// Accepts only the form the gateway hands out, so a handle is always a safe file name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if ok && s.len() <= 40 { Ok(ShapeHandle(s.to_string())) } else { Err(format!("malformed handle {s:?}")) }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{ScopeSpec, Shape, ShapeHandle, ShapeSpec};
    use crate::table::{Column, TableName, TableSchema};

    #[test]
    fn client_terms_that_can_fail_run_only_inside_the_scope() {
        let col = Column::scalar;
        let table = TableSchema {
            oid: 1,
            name: TableName::new("public", "t"),
            columns: vec![col("id", "int4", Some(0)), col("org", "text", None), col("n", "int4", None)],
            replica_identity_full: true,
        };
        let spec = ShapeSpec {
            where_text: Some("id > 5 AND 1 / (n - 42) > 0 AND org LIKE 'a%'".into()),
            params: Vec::new(),
            columns: None,
            replica: Default::default(),
            log: Default::default(),
            scope: Some(ScopeSpec { where_text: "org = $1".into(), params: vec![(1, "A".into())] }),
        };
        let shape = Shape::bind(spec, table, Default::default()).unwrap();
        let sql = shape.where_sql(None).unwrap();
        let scope = r#"("org" = CAST('A' AS text))"#;
        let safe = r#"("id" > CAST('5' AS int8)) AND ("org" LIKE CAST('a%' AS text))"#;
        let risky = r#"((CAST('1' AS int8) / ("n" - CAST('42' AS int8))) > CAST('0' AS int8))"#;
        assert_eq!(sql, format!("{scope} AND {safe} AND CASE WHEN {scope} THEN {risky} ELSE false END"));
        let joined =
            crate::where_clause::Expr::And(vec![shape.scope.clone().unwrap(), shape.client_filter.clone().unwrap()]);
        assert!(shape.key().0.contains(&format!("|{}|", joined.to_sql())), "keys stay as they were");
        assert_eq!(shape.conjuncts().len(), 4, "the scope's term and the client's three");
    }

    proptest! {
        #[test]
        fn a_handle_is_always_a_safe_file_name(s in "\\PC{0,50}|[0-9]{1,20}-[0-9]{1,20}|\\.\\./[0-9-]{0,8}") {
            if let Ok(h) = s.parse::<ShapeHandle>() {
                let text = h.to_string();
                prop_assert!(text.len() <= 40 && text.bytes().all(|b| b.is_ascii_digit() || b == b'-'), "{}", text);
            }
        }
    }
}
