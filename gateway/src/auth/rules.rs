//! The `[[table]]` access rules of the config file. A rule's `scope` is a filter whose
//! `:claim` placeholders take the caller's token claims; it is checked at start against the
//! table (with the same filter language as shapes) and bound per caller into a
//! [`ScopeSpec`], so callers with equal claim values get equal shapes and share one log.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use shapes::shape::ScopeSpec;
use shapes::table::{TableName, TableSchema};
use shapes::where_clause::{BindOptions, WhereError, parse_where_template, rewrite_named};

use super::ColumnSet;

/// One `[[table]]` entry as written.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableRule {
    pub name: String,
    pub scope: Option<String>,
    pub columns: Option<Vec<String>>,
    #[serde(default)]
    pub write: Vec<WriteOp>,
    pub conflict: Option<Conflict>,
    pub version_column: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriteOp {
    Insert,
    Update,
    Delete,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    #[default]
    LastWriteWins,
    RejectStale,
}

/// What checking a rule against its table found.
#[derive(Debug, PartialEq, Eq)]
pub enum RuleCheck {
    /// The scope's subqueries read this table: add it to the catalog and check again.
    NeedsTable(TableName),
    Invalid(String),
}

/// A rule that cannot work, named so the operator can find it.
#[derive(Debug, thiserror::Error)]
#[error("config [[table]] rule #{index} ({name}): {problem}")]
pub struct RuleError {
    pub index: usize,
    pub name: String,
    pub problem: String,
}

/// How a claim fills its placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClaimUse {
    /// `col = :claim`: one value.
    Scalar,
    /// `col IN :claim` or `= ANY(:claim)`: a list.
    List,
}

/// A scope with `:claim` placeholders rewritten to `$n`.
#[derive(Clone, Debug)]
pub struct ScopeTemplate {
    text: String,
    /// The claim behind `$1`, `$2`, …
    claims: Vec<(String, ClaimUse)>,
}

/// Why a caller's claims cannot fill a scope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("the token has no claim {0:?}, which this table's scope needs")]
    Missing(String),
    #[error("the token's claim {0:?} must be {1}")]
    Type(String, &'static str),
}

impl ScopeTemplate {
    pub fn compile(text: &str) -> Result<ScopeTemplate, String> {
        let named = rewrite_named(text)?;
        let claims = named
            .params
            .into_iter()
            .map(|p| (p.name, if p.list { ClaimUse::List } else { ClaimUse::Scalar }))
            .collect();
        Ok(ScopeTemplate { text: named.text, claims })
    }

    /// The scope for one caller.
    pub fn bind(&self, claims: &Map<String, Value>) -> Result<ScopeSpec, ClaimError> {
        let params =
            self.claims
                .iter()
                .enumerate()
                .map(|(i, (name, used))| {
                    let value =
                        claims.get(name).filter(|v| !v.is_null()).ok_or_else(|| ClaimError::Missing(name.clone()))?;
                    let text = match (used, value) {
                        (ClaimUse::List, Value::Array(items)) => array_literal(name, items)?,
                        (ClaimUse::List, v) => array_literal(name, std::slice::from_ref(v))?,
                        (ClaimUse::Scalar, v) => scalar_text(v)
                            .ok_or_else(|| ClaimError::Type(name.clone(), "a string, number or boolean"))?,
                    };
                    Ok((i + 1, text))
                })
                .collect::<Result<_, _>>()?;
        Ok(ScopeSpec { where_text: self.text.clone(), params })
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A PostgreSQL array literal of the claim's items, each quoted.
fn array_literal(name: &str, items: &[Value]) -> Result<String, ClaimError> {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let text = scalar_text(item).ok_or_else(|| ClaimError::Type(name.into(), "a list of strings or numbers"))?;
        out.push('"');
        out.push_str(&text.replace('\\', "\\\\").replace('"', "\\\""));
        out.push('"');
    }
    out.push('}');
    Ok(out)
}

/// A rule ready to enforce.
#[derive(Clone, Debug)]
pub struct TableAccess {
    pub scope: Option<ScopeTemplate>,
    /// Readable (and writable) columns.
    pub columns: ColumnSet,
    pub write: Vec<WriteOp>,
    pub conflict: Conflict,
    pub version_column: Option<String>,
}

/// Every table's rule, by table.
#[derive(Clone, Debug, Default)]
pub struct AccessRules {
    by_table: HashMap<TableName, TableAccess>,
}

impl AccessRules {
    /// Checks what can be checked without the database: names, placeholders, options.
    pub fn compile(rules: &[TableRule]) -> Result<AccessRules, RuleError> {
        let mut by_table = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let fail = |problem: String| RuleError { index: i + 1, name: rule.name.clone(), problem };
            let table = TableName::parse(&rule.name).map_err(|e| fail(format!("name: {e}")))?;
            let scope = rule
                .scope
                .as_deref()
                .map(|s| ScopeTemplate::compile(s).map_err(|e| fail(format!("scope: {e}"))))
                .transpose()?;
            let conflict = rule.conflict.unwrap_or_default();
            if conflict == Conflict::RejectStale && rule.version_column.is_none() {
                return Err(fail("conflict = \"reject_stale\" needs version_column".into()));
            }
            let access = TableAccess {
                scope,
                columns: rule.columns.clone().map_or_else(ColumnSet::all, |c| ColumnSet::only(Arc::from(c))),
                write: rule.write.clone(),
                conflict,
                version_column: rule.version_column.clone(),
            };
            if by_table.insert(table, access).is_some() {
                return Err(fail("a second rule for the same table".into()));
            }
        }
        Ok(AccessRules { by_table })
    }

    pub fn get(&self, table: &TableName) -> Option<&TableAccess> {
        self.by_table.get(table)
    }

    /// Checks one rule against its table: the scope binds, the columns exist and hold the
    /// primary key (a table without one cannot hide columns), the version column exists and
    /// is readable.
    /// Checks the rule of `schema`'s table; its scope's subqueries may read the tables of
    /// `catalog` (a missing one is [`RuleCheck::NeedsTable`]: load it, check again).
    pub fn check_table(
        &self,
        schema: &TableSchema,
        catalog: &[TableSchema],
        options: BindOptions,
    ) -> Result<(), RuleCheck> {
        let Some(access) = self.get(&schema.name) else { return Ok(()) };
        if let Some(scope) = &access.scope {
            let catalog = catalog.to_vec();
            let expr = match parse_where_template(&scope.text, schema, Some(&catalog), options) {
                Err(WhereError::UnknownTable(t)) => return Err(RuleCheck::NeedsTable(t)),
                Err(e) => return Err(RuleCheck::Invalid(format!("scope: {e}"))),
                Ok(expr) => expr,
            };
            // The inner tables' changes must say what their rows yielded before.
            for subquery in expr.subqueries() {
                if let Some(inner) = catalog.iter().find(|t| t.name == subquery.table) {
                    subquery.check_replica_identity(inner).map_err(|e| RuleCheck::Invalid(format!("scope: {e}")))?;
                }
            }
        }
        Self::check_columns(access, schema).map_err(RuleCheck::Invalid)
    }

    fn check_columns(access: &TableAccess, schema: &TableSchema) -> Result<(), String> {
        if let Some(cols) = access.columns.listed() {
            let unknown: Vec<&str> =
                cols.iter().filter(|c| schema.column_index(c).is_none()).map(String::as_str).collect();
            if !unknown.is_empty() {
                return Err(format!("columns: no such column(s): {}", unknown.join(", ")));
            }
            if !schema.has_primary_key() {
                return Err("columns: the table has no primary key, so a row's key is every column and would \
                     carry the hidden ones; add a primary key to the table or drop columns from the rule"
                    .into());
            }
            let missing: Vec<&str> = schema
                .key_columns()
                .into_iter()
                .map(|k| schema.columns[k].name.as_str())
                .filter(|k| !cols.iter().any(|c| c == k))
                .collect();
            if !missing.is_empty() {
                return Err(format!("columns: must include the primary key, missing {}", missing.join(", ")));
            }
        }
        if let Some(v) = &access.version_column {
            if schema.column_index(v).is_none() {
                return Err(format!("version_column: no column {v:?}"));
            }
            if !access.columns.allows(v) {
                return Err(format!("version_column: {v:?} must be one of columns, so clients can send it as base"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn placeholders_become_parameters() {
        let t = ScopeTemplate::compile("org_id = :org_id AND (owner = :sub OR shared) AND x::text <> ':no'").unwrap();
        assert_eq!(t.text, "org_id = $1 AND (owner = $2 OR shared) AND x::text <> ':no'");
        let s = t.bind(&claims(serde_json::json!({"org_id": "o1", "sub": 7}))).unwrap();
        assert_eq!(s.params, vec![(1, "o1".to_string()), (2, "7".to_string())]);
    }

    #[test]
    fn list_claims_fill_in_and_any() {
        let t = ScopeTemplate::compile("org_id IN :orgs OR team NOT IN :teams OR 5 = ANY(:orgs)").unwrap();
        assert_eq!(t.text, "org_id = ANY($1) OR team <> ALL($2) OR 5 = ANY($1)");
        let s = t.bind(&claims(serde_json::json!({"orgs": ["a", "b\"c"], "teams": 3}))).unwrap();
        assert_eq!(s.params, vec![(1, r#"{"a","b\"c"}"#.to_string()), (2, r#"{"3"}"#.to_string())]);
    }

    #[test]
    fn missing_or_misshapen_claims_are_refused() {
        let t = ScopeTemplate::compile("org_id = :org_id").unwrap();
        assert_eq!(t.bind(&claims(serde_json::json!({}))), Err(ClaimError::Missing("org_id".into())));
        assert_eq!(t.bind(&claims(serde_json::json!({"org_id": null}))), Err(ClaimError::Missing("org_id".into())));
        assert!(matches!(t.bind(&claims(serde_json::json!({"org_id": ["a"]}))), Err(ClaimError::Type(..))));
        assert!(ScopeTemplate::compile("org_id = : org").is_err());
    }

    #[test]
    fn rules_are_checked_before_start() {
        let rule = |name: &str, extra: &str| -> Vec<TableRule> {
            toml::from_str::<HashMap<String, Vec<TableRule>>>(&format!("[[table]]\nname = \"{name}\"\n{extra}"))
                .map(|mut m| m.remove("table").unwrap())
                .unwrap()
        };
        assert!(AccessRules::compile(&rule("todos", "scope = \"org = :org\"")).is_ok());
        let err = AccessRules::compile(&rule("todos", "conflict = \"reject_stale\"")).unwrap_err();
        assert!(err.to_string().contains("rule #1 (todos)") && err.to_string().contains("version_column"));
        assert!(toml::from_str::<HashMap<String, Vec<TableRule>>>("[[table]]\nname = \"t\"\nscop = \"x\"").is_err());
    }

    #[test]
    fn a_scope_through_a_subquery_asks_for_its_inner_table_and_checks_what_the_stream_carries() {
        let rules: HashMap<String, Vec<TableRule>> = toml::from_str(
            "[[table]]\nname = \"todos\"\nscope = \"project_id IN (SELECT project_id FROM memberships WHERE user_id = :sub)\"",
        )
        .unwrap();
        let rules = AccessRules::compile(&rules["table"]).unwrap();
        let column = shapes::table::Column::scalar;
        let todos = TableSchema {
            oid: 1,
            name: TableName::new("public", "todos"),
            columns: vec![column("id", "int8", Some(0)), column("project_id", "int8", None)],
            replica_identity_full: true,
        };
        let memberships = TableSchema {
            oid: 2,
            name: TableName::new("public", "memberships"),
            columns: vec![column("user_id", "text", None), column("project_id", "int8", None)],
            replica_identity_full: false,
        };
        let options = BindOptions::default();
        assert_eq!(rules.check_table(&todos, &[], options), Err(RuleCheck::NeedsTable(memberships.name.clone())));
        let Err(RuleCheck::Invalid(refused)) = rules.check_table(&todos, std::slice::from_ref(&memberships), options)
        else {
            panic!("memberships has no key and no REPLICA IDENTITY FULL")
        };
        assert!(refused.contains("REPLICA IDENTITY FULL"), "{refused}");
        let full = TableSchema { replica_identity_full: true, ..memberships };
        assert_eq!(rules.check_table(&todos, &[full], options), Ok(()));
    }
}
