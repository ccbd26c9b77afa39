//! One client mutation → SQL, built from the table's real columns: identifiers quoted from
//! the catalog, every value a text parameter cast to its column's type in SQL. Nothing the
//! client sends is spliced into the statement text. Pure, so it is tested without a database.

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use shapes::table::quote_ident;

use super::{Fields, Op, WriteTable};
use crate::auth::{ColumnSet, ColumnUse};

/// A mutation that cannot be applied as sent; the text says what to change.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// The caller's scope as SQL: over the written row, and over the existing row of an upsert
/// (where bare names would be ambiguous with `EXCLUDED`).
pub struct ScopeSql {
    pub row: String,
    pub existing: String,
}

/// The alias of the target table in statements.
pub const TARGET: &str = "target";

/// A statement and its parameters, all text (or NULL).
#[derive(Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Option<String>>,
}

/// A mutation checked against its table, ready to become SQL.
pub struct Write {
    pub op: Op,
    /// (column index, value) to write.
    pub values: Vec<(usize, Option<String>)>,
    /// (key column index, value) in key order.
    pub key: Vec<(usize, Option<String>)>,
    /// The version the client's change was based on (`reject_stale`).
    pub base_version: Option<String>,
    pub target: Arc<Target>,
}

/// A table as one caller may write it, resolved once per table and batch.
pub struct Target {
    pub table: Arc<WriteTable>,
    /// The caller's scope, if any.
    pub scope: Option<ScopeSql>,
    /// Columns the caller may write (named in refusals).
    pub writable: ColumnSet,
    /// Columns the caller may read (shown on a conflict).
    pub readable: ColumnSet,
    /// `reject_stale`: the version column.
    pub version_column: Option<String>,
}

/// Checks a mutation's columns and key against the table and what the caller may write.
pub fn check(
    target: &Arc<Target>,
    op: Op,
    key: Option<&Fields>,
    value: Option<&Fields>,
    base: Option<&Fields>,
) -> Result<Write, Refusal> {
    let (table, writable, version_column) = (&target.table, &target.writable, target.version_column.as_deref());
    let schema = &table.schema;
    let column = |name: &str| -> Result<usize, Refusal> {
        let i = schema
            .column_index(name)
            .ok_or_else(|| Refusal(format!("{} has no column {name:?}", schema.name.quoted())))?;
        writable.check(&schema.name, ColumnUse::Writable, [name]).map_err(|e| Refusal(e.to_string()))?;
        Ok(i)
    };
    if !schema.has_primary_key() {
        return Err(Refusal(format!("{} has no primary key; writes address rows by it", schema.name.quoted())));
    }
    let mut values = Vec::new();
    if let Some(value) = value {
        for (name, v) in value.iter() {
            if Some(name) == version_column {
                return Err(Refusal(format!("{name:?} is the version column; the gateway sets it")));
            }
            let i = column(name)?;
            values.push((i, to_text(table, i, v)?));
        }
    }
    values.sort_by_key(|(i, _)| *i);
    let key_columns = schema.key_columns();
    // The key's columns from `source`; with `only_key`, `source` may name no other column.
    let key_values = |source: &Fields, what: &str, only_key: bool| -> Result<Vec<(usize, Option<String>)>, Refusal> {
        let names: Vec<&str> = key_columns.iter().map(|&k| schema.columns[k].name.as_str()).collect();
        if only_key && let Some(extra) = source.keys().find(|k| !names.contains(k)) {
            return Err(Refusal(format!(
                "{what} names {extra:?}, which is not a primary key column ({})",
                names.join(", ")
            )));
        }
        key_columns
            .iter()
            .map(|&k| {
                let name = &schema.columns[k].name;
                match source.get(name).map(|v| to_text(table, k, v)) {
                    None | Some(Ok(None)) => Err(Refusal(format!("{what} needs the primary key column {name:?}"))),
                    Some(text) => Ok((k, text?)),
                }
            })
            .collect()
    };
    let key = match (op, key, value) {
        (Op::Insert, _, Some(_)) => Vec::new(),
        (Op::Upsert, _, Some(v)) => key_values(v, "value", false)?,
        (Op::Insert | Op::Upsert, _, None) => return Err(Refusal("an insert needs value".into())),
        (Op::Update | Op::Delete, Some(k), _) => key_values(k, "key", true)?,
        (Op::Update | Op::Delete, None, _) => return Err(Refusal(format!("{op} needs key (the primary key)"))),
    };
    if op == Op::Update && values.is_empty() {
        return Err(Refusal("an update needs value with at least one column".into()));
    }
    if op == Op::Update && values.iter().any(|(i, _)| key_columns.contains(i)) {
        return Err(Refusal("an update cannot change the primary key; delete and insert instead".into()));
    }
    let base_version = match version_column {
        Some(vc) if matches!(op, Op::Update | Op::Delete | Op::Upsert) => match base.and_then(|b| b.get(vc)) {
            Some(v) => Some(to_text(table, schema.column_index(vc).unwrap_or(0), v)?.unwrap_or_default()),
            None if op == Op::Upsert => None,
            None => return Err(Refusal(format!("base.{vc} is required: this table rejects stale writes"))),
        },
        _ => None,
    };
    Ok(Write { op, values, key, base_version, target: target.clone() })
}

/// A JSON value as the text PostgreSQL reads for the column: strings as written, numbers
/// and booleans as their JSON text, JSON for json/jsonb columns, array literals for arrays.
/// Only strings, arrays and objects are parsed: the rest are already the text needed.
fn to_text(table: &WriteTable, column: usize, raw: &RawValue) -> Result<Option<String>, Refusal> {
    let c = &table.schema.columns[column];
    let nul = || {
        Refusal(format!(
            "the value of {:?} contains a NUL character (\\u0000), which PostgreSQL cannot store; remove it",
            c.name
        ))
    };
    let text = raw.get();
    let json_column = matches!(c.type_name.as_str(), "json" | "jsonb") && c.dims == 0;
    Ok(match text.as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') => {
            let s: String = serde_json::from_str(text).map_err(|e| Refusal(format!("{:?}: {e}", c.name)))?;
            if s.contains('\0') {
                return Err(nul());
            }
            Some(s)
        }
        Some(b'[' | b'{') => {
            let v: Value = serde_json::from_str(text).map_err(|e| Refusal(format!("{:?}: {e}", c.name)))?;
            if has_nul(&v) {
                return Err(nul());
            }
            match v {
                _ if json_column => Some(text.to_string()),
                Value::Array(items) if c.dims > 0 => Some(array_literal(&items)),
                _ => {
                    return Err(Refusal(format!(
                        "column {:?} ({}) takes a string, number or boolean, not {}",
                        c.name,
                        table.types[column],
                        if v.is_array() { "an array" } else { "an object" }
                    )));
                }
            }
        }
        // A number, `true` or `false`: JSON's text is PostgreSQL's.
        _ => Some(text.to_string()),
    })
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn array_literal(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item {
            Value::Null => "NULL".into(),
            Value::Array(inner) => array_literal(inner),
            Value::String(s) => quote_element(s),
            other => quote_element(&other.to_string()),
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A PostgreSQL array literal of text values (NULL for `None`), built in one buffer: it
/// carries every value of a column of a batch.
fn text_array(values: &[&Option<String>]) -> String {
    let mut out =
        String::with_capacity(2 + values.iter().map(|v| v.as_ref().map_or(5, |s| s.len() + 3)).sum::<usize>());
    out.push('{');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match v {
            None => out.push_str("NULL"),
            Some(s) => push_element(&mut out, s),
        }
    }
    out.push('}');
    out
}

/// One array element, double-quoted with `\` and `"` escaped.
fn quote_element(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_element(&mut out, s);
    out
}

fn push_element(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether a row is in the caller's scope, as a SQL boolean that is never NULL: a scope over
/// a NULL column is unknown, and unknown is outside.
fn scope_test(scope: Option<&str>) -> String {
    scope.map_or_else(|| "true".to_string(), |s| format!("coalesce(({s}), false)"))
}

/// Inserts of one table with the same columns and scope become one statement.
pub fn same_insert(a: &Write, b: &Write) -> bool {
    a.op == Op::Insert
        && b.op == Op::Insert
        && Arc::ptr_eq(&a.target, &b.target)
        && a.values.iter().map(|(i, _)| i).eq(b.values.iter().map(|(i, _)| i))
}

/// What [`insert_many`] does with the caller's scope.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Every row comes back with whether it is in scope.
    ReportScope,
    /// Rows are inserted only when the SQL condition `when` holds, and a row outside the
    /// scope aborts the statement (`gateway.assert_in_scope`).
    RequireScope { when: &'a str },
}

/// One `INSERT … SELECT … FROM unnest(…)` for inserts that are [`same_insert`]: each
/// column's values travel as one text-array parameter, so the statement text does not
/// depend on the number of rows.
pub fn insert_many(writes: &[&Write], rows: Rows<'_>) -> Statement {
    let first = writes[0];
    let schema = &first.target.table.schema;
    let mut cols = Vec::new();
    let mut casts = Vec::new();
    let mut arrays = Vec::new();
    let mut params = Vec::new();
    for (j, (i, _)) in first.values.iter().enumerate() {
        cols.push(quote_ident(&schema.columns[*i].name));
        casts.push(format!("CAST(u.v{j} AS {})", first.target.table.types[*i]));
        let column: Vec<&Option<String>> = writes.iter().map(|w| &w.values[j].1).collect();
        params.push(Some(text_array(&column)));
        arrays.push(format!("CAST(${}::text AS text[])", params.len()));
    }
    let names: Vec<String> = (0..cols.len()).map(|j| format!("v{j}")).collect();
    let scope = first.target.scope.as_ref().map(|s| s.row.as_str());
    let (condition, returning) = match (rows, scope) {
        (Rows::ReportScope, _) => (String::new(), scope_test(scope)),
        (Rows::RequireScope { when }, None) => (format!(" WHERE {when}"), "true".into()),
        (Rows::RequireScope { when }, Some(_)) => {
            (format!(" WHERE {when}"), format!("gateway.assert_in_scope({})", scope_test(scope)))
        }
    };
    Statement {
        sql: format!(
            "INSERT INTO {} AS {TARGET} ({}) SELECT {} FROM unnest({}) AS u({}){condition} RETURNING {returning}",
            schema.name.quoted(),
            cols.join(", "),
            casts.join(", "),
            arrays.join(", "),
            names.join(", ")
        ),
        params,
    }
}

impl Write {
    /// The statement; its single result column tells whether the written row is in scope
    /// (`true` without a scope). No row back means nothing matched the key (and scope).
    pub fn statement(&self) -> Statement {
        let (scope, version_column) = (self.target.scope.as_ref(), self.target.version_column.as_deref());
        let schema = &self.target.table.schema;
        let name = schema.name.quoted();
        let mut params: Vec<Option<String>> = Vec::new();
        let mut param = |v: &Option<String>, ty: &str| {
            params.push(v.clone());
            format!("CAST(${}::text AS {ty})", params.len())
        };
        let col = |i: usize| quote_ident(&schema.columns[i].name);
        let ty = |i: usize| self.target.table.types[i].as_str();
        let in_scope = scope_test(scope.map(|s| s.row.as_str()));
        let existing_in_scope = scope_test(scope.map(|s| s.existing.as_str()));
        let version = version_column.map(quote_ident);
        // An upsert names its key in the inserted values; updates and deletes match it.
        let mut key_match: Vec<String> = Vec::new();
        if matches!(self.op, Op::Update | Op::Delete) {
            for (k, v) in &self.key {
                key_match.push(format!("{} = {}", col(*k), param(v, ty(*k))));
            }
        }
        let base = match (&version, &self.base_version) {
            (Some(vc), Some(b)) => {
                let vi = schema.column_index(version_column.unwrap_or_default()).unwrap_or(0);
                Some(format!("{vc} = {}", param(&Some(b.clone()), ty(vi))))
            }
            _ => None,
        };
        let sql = match self.op {
            Op::Insert | Op::Upsert => {
                let cols: Vec<String> = self.values.iter().map(|(i, _)| col(*i)).collect();
                let vals: Vec<String> = self.values.iter().map(|(i, v)| param(v, ty(*i))).collect();
                let mut sql =
                    format!("INSERT INTO {name} AS {TARGET} ({}) VALUES ({})", cols.join(", "), vals.join(", "));
                if self.op == Op::Upsert {
                    let keys: Vec<String> = schema.key_columns().into_iter().map(col).collect();
                    let mut sets: Vec<String> = self
                        .values
                        .iter()
                        .filter(|(i, _)| !schema.key_columns().contains(i))
                        .map(|(i, _)| format!("{c} = EXCLUDED.{c}", c = col(*i)))
                        .collect();
                    if let Some(vc) = &version {
                        sets.push(format!("{vc} = {TARGET}.{vc} + 1"));
                    }
                    if sets.is_empty() {
                        // Nothing to change: touch the key so the row comes back.
                        sets.push(format!("{k} = EXCLUDED.{k}", k = keys[0]));
                    }
                    let mut guard = vec![existing_in_scope];
                    guard.extend(base.clone().map(|b| format!("{TARGET}.{b}")));
                    if version.is_some() && base.is_none() {
                        // Without a base version an upsert may only create the row.
                        guard.push("false".into());
                    }
                    sql.push_str(&format!(
                        " ON CONFLICT ({}) DO UPDATE SET {} WHERE {}",
                        keys.join(", "),
                        sets.join(", "),
                        guard.join(" AND ")
                    ));
                }
                sql
            }
            Op::Update => {
                let mut sets: Vec<String> =
                    self.values.iter().map(|(i, v)| format!("{} = {}", col(*i), param(v, ty(*i)))).collect();
                if let Some(vc) = &version {
                    sets.push(format!("{vc} = {vc} + 1"));
                }
                let mut conds = key_match.clone();
                conds.push(in_scope.clone());
                conds.extend(base.clone());
                format!("UPDATE {name} SET {} WHERE {}", sets.join(", "), conds.join(" AND "))
            }
            Op::Delete => {
                let mut conds = key_match.clone();
                conds.push(in_scope.clone());
                conds.extend(base.clone());
                format!("DELETE FROM {name} WHERE {}", conds.join(" AND "))
            }
        };
        Statement { sql: format!("{sql} RETURNING {in_scope}"), params }
    }

    /// The row at this mutation's key as the caller may see it (readable columns only),
    /// with whether it is in scope: tells "missing", "outside your scope" and "stale" apart.
    pub fn current_row(&self) -> Statement {
        let (scope, readable) = (self.target.scope.as_ref(), &self.target.readable);
        let schema = &self.target.table.schema;
        let mut params = Vec::new();
        let conds: Vec<String> = self
            .key
            .iter()
            .map(|(k, v)| {
                params.push(v.clone());
                format!(
                    "{} = CAST(${}::text AS {})",
                    quote_ident(&schema.columns[*k].name),
                    params.len(),
                    self.target.table.types[*k]
                )
            })
            .collect();
        let hidden: Vec<String> =
            schema.columns.iter().filter(|c| !readable.allows(&c.name)).map(|c| c.name.clone()).collect();
        params.push(Some(array_literal(&hidden.into_iter().map(Value::String).collect::<Vec<_>>())));
        Statement {
            sql: format!(
                "SELECT {}, to_jsonb(t.*) - CAST(${}::text AS text[]) FROM {} AS t WHERE {}",
                scope_test(scope.map(|s| s.row.as_str())),
                params.len(),
                schema.name.quoted(),
                conds.join(" AND ")
            ),
            params,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;
    use shapes::table::{Column, TableName, TableSchema};

    use super::*;

    pub(crate) fn table() -> Arc<WriteTable> {
        let col = |name: &str, ty: &str, sql: &str, pk: Option<u32>| Column {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            type_sql: sql.into(),
            dims: 0,
            type_mod: -1,
            not_null: pk.is_some(),
            pk_index: pk,
        };
        let schema = TableSchema {
            oid: 1,
            name: TableName::new("public", "notes"),
            columns: vec![
                col("id", "int8", "bigint", Some(0)),
                col("org", "text", "text", None),
                col("Body", "text", "text", None),
                col("version", "int4", "integer", None),
            ],
            replica_identity_full: true,
        };
        let types = schema.columns.iter().map(|c| c.type_sql.clone()).collect();
        Arc::new(WriteTable { schema, types })
    }

    pub(crate) fn target(
        table: Arc<WriteTable>,
        scope: Option<ScopeSql>,
        writable: ColumnSet,
        version_column: Option<&str>,
    ) -> Arc<Target> {
        let version_column = version_column.map(str::to_string);
        Arc::new(Target { table, scope, writable, readable: ColumnSet::all(), version_column })
    }

    /// Fields as a request body carries them (the text lives as long as the test).
    pub(crate) fn obj(v: serde_json::Value) -> Fields<'static> {
        serde_json::from_str(v.to_string().leak()).unwrap()
    }

    #[test]
    fn values_are_parameters_cast_to_their_columns() {
        let t = table();
        let value = obj(json!({"id": 5, "Body": "x'); drop table notes; --", "org": "o"}));
        let scope = ScopeSql { row: r#"("org" = 'o')"#.into(), existing: r#"("target"."org" = 'o')"#.into() };
        let c = check(&target(t, Some(scope), ColumnSet::all(), None), Op::Upsert, None, Some(&value), None).unwrap();
        let s = c.statement();
        assert_eq!(
            s.sql,
            r#"INSERT INTO "public"."notes" AS target ("id", "org", "Body") VALUES (CAST($1::text AS bigint), CAST($2::text AS text), CAST($3::text AS text)) ON CONFLICT ("id") DO UPDATE SET "org" = EXCLUDED."org", "Body" = EXCLUDED."Body" WHERE coalesce((("target"."org" = 'o')), false) RETURNING coalesce((("org" = 'o')), false)"#
        );
        assert_eq!(s.params[2].as_deref(), Some("x'); drop table notes; --"), "client text stays a parameter");
    }

    #[test]
    fn stale_checks_and_version_bumps() {
        let t = table();
        let (key, value, base) = (obj(json!({"id": 1})), obj(json!({"Body": "b"})), obj(json!({"version": 3})));
        let t = target(t, None, ColumnSet::all(), Some("version"));
        let c = check(&t, Op::Update, Some(&key), Some(&value), Some(&base)).unwrap();
        let s = c.statement();
        assert_eq!(
            s.sql,
            r#"UPDATE "public"."notes" SET "Body" = CAST($3::text AS text), "version" = "version" + 1 WHERE "id" = CAST($1::text AS bigint) AND true AND "version" = CAST($2::text AS integer) RETURNING true"#
        );
        assert_eq!(s.params, vec![Some("1".into()), Some("3".into()), Some("b".into())]);
    }

    #[test]
    fn inserts_of_one_shape_become_one_statement() {
        let t = table();
        let t = target(t, None, ColumnSet::all(), None);
        let w = |id: i64, body: Option<&str>| {
            let v = obj(json!({"id": id, "Body": body}));
            check(&t, Op::Insert, None, Some(&v), None).unwrap()
        };
        let (a, b) = (w(1, Some("say \"hi\"")), w(2, None));
        assert!(same_insert(&a, &b));
        let s = insert_many(&[&a, &b], Rows::ReportScope);
        assert_eq!(
            s.sql,
            r#"INSERT INTO "public"."notes" AS target ("id", "Body") SELECT CAST(u.v0 AS bigint), CAST(u.v1 AS text) FROM unnest(CAST($1::text AS text[]), CAST($2::text AS text[])) AS u(v0, v1) RETURNING true"#
        );
        assert_eq!(s.params, vec![Some(r#"{"1","2"}"#.into()), Some(r#"{"say \"hi\"",NULL}"#.into())]);
        let guarded = insert_many(&[&a, &b], Rows::RequireScope { when: "EXISTS (SELECT FROM claim)" });
        assert!(
            guarded.sql.ends_with("AS u(v0, v1) WHERE EXISTS (SELECT FROM claim) RETURNING true"),
            "{}",
            guarded.sql
        );
    }

    #[test]
    fn values_reach_postgresql_as_the_client_wrote_them() {
        let t = target(table(), None, ColumnSet::all(), None);
        let v = obj(json!({"id": 12345678901234567_i64, "Body": "a \"quoted\" \u{e9}"}));
        let w = check(&t, Op::Insert, None, Some(&v), None).unwrap();
        let texts: Vec<Option<&str>> = w.values.iter().map(|(_, v)| v.as_deref()).collect();
        assert_eq!(texts, [Some("12345678901234567"), Some("a \"quoted\" \u{e9}")]);
        // Numbers keep their digits (no trip through a float), escapes are decoded.
        let raw: Fields = serde_json::from_str(r#"{"id": 1.50, "Body": "tab\tnew\u000aline"}"#).unwrap();
        let w = check(&t, Op::Insert, None, Some(&raw), None).unwrap();
        assert_eq!(w.values[0].1.as_deref(), Some("1.50"));
        assert_eq!(w.values[1].1.as_deref(), Some("tab\tnew\nline"));
        // A column named twice is ambiguous: refused when the body is read.
        let twice = serde_json::from_str::<Fields>(r#"{"id": 1, "id": 2}"#).unwrap_err();
        assert!(twice.to_string().contains("named twice"), "{twice}");
    }

    #[test]
    fn malformed_mutations_are_refused_with_the_fix() {
        let t = table();
        let refuse = |op, key: Option<serde_json::Value>, value: Option<serde_json::Value>, writable: ColumnSet| {
            let (k, v) = (key.map(obj), value.map(obj));
            let t = target(t.clone(), None, writable, Some("version"));
            check(&t, op, k.as_ref(), v.as_ref(), None).err().map(|r| r.0).unwrap_or_default()
        };
        assert!(refuse(Op::Update, None, Some(json!({"Body": "x"})), ColumnSet::all()).contains("needs key"));
        assert!(
            refuse(Op::Update, Some(json!({"id": 1, "org": "x"})), Some(json!({"Body": "x"})), ColumnSet::all())
                .contains("not a primary key")
        );
        assert!(
            refuse(Op::Update, Some(json!({"id": 1})), Some(json!({"id": 2})), ColumnSet::all())
                .contains("cannot change the primary key")
        );
        assert!(refuse(Op::Insert, None, Some(json!({"nope": 1})), ColumnSet::all()).contains("no column \"nope\""));
        assert!(refuse(Op::Insert, None, Some(json!({"version": 9})), ColumnSet::all()).contains("gateway sets it"));
        assert!(refuse(Op::Insert, None, Some(json!({"Body": {"a": 1}})), ColumnSet::all()).contains("not an object"));
        assert!(refuse(Op::Insert, None, Some(json!({"id": 1, "Body": "a\u{0}b"})), ColumnSet::all()).contains("NUL"));
        assert!(refuse(Op::Delete, Some(json!({"id": 1})), None, ColumnSet::all()).contains("base.version"));
        let only_id = ColumnSet::only(Arc::from(["id".to_string()]));
        assert!(refuse(Op::Insert, None, Some(json!({"id": 1, "Body": "x"})), only_id).contains("not writable"));
    }
}
