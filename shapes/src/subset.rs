//! Subset snapshots (`requestSnapshot` / `fetchSnapshot` in the official client): a one-off
//! read of part of a shape, narrowed by its own filter, ordered by columns and paged. The
//! filter goes through the same allow-listed language as shapes; `order_by` may name
//! columns only.

use std::collections::HashMap;
use std::fmt::Write;

use sqlparser::ast::OrderBySort;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::table::{TableSchema, quote_ident};
use crate::where_clause::{BindOptions, Expr, MAX_WHERE_LEN, WhereError, parse_where};

/// Most `order_by` terms accepted.
const MAX_ORDER_TERMS: usize = 16;

/// A subset as requested.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubsetSpec {
    pub where_text: Option<String>,
    pub params: HashMap<usize, String>,
    pub order_by: Option<String>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

/// What is wrong with a subset, by the parameter at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubsetError {
    #[error("where: {0}")]
    Where(#[from] WhereError),
    #[error("order_by: {0}")]
    OrderBy(String),
    #[error("limit: {0}")]
    Limit(String),
}

/// One `ORDER BY` term: a column, its direction and where NULLs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderKey {
    pub column: usize,
    pub descending: bool,
    /// `None` is PostgreSQL's default (NULLs last ascending, first descending).
    pub nulls_first: Option<bool>,
}

/// A subset bound to its table.
#[derive(Clone, Debug)]
pub struct Subset {
    pub filter: Option<Expr>,
    pub order_by: Vec<OrderKey>,
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

impl Subset {
    pub fn bind(spec: &SubsetSpec, table: &TableSchema, options: BindOptions) -> Result<Subset, SubsetError> {
        let filter = match &spec.where_text {
            Some(w) if !w.trim().is_empty() => Some(parse_where(w, table, &spec.params, options)?),
            _ => None,
        };
        let order_by = match &spec.order_by {
            Some(o) if !o.trim().is_empty() => parse_order_by(o, table)?,
            _ => Vec::new(),
        };
        if spec.limit == Some(0) {
            return Err(SubsetError::Limit("must be greater than 0".into()));
        }
        if (spec.limit.is_some() || spec.offset.is_some()) && order_by.is_empty() {
            return Err(SubsetError::OrderBy("order_by is required when limit or offset is present".into()));
        }
        Ok(Subset { filter, order_by, limit: spec.limit, offset: spec.offset })
    }

    /// ` ORDER BY … LIMIT … OFFSET …` (empty when none applies).
    pub fn sql_tail(&self, table: &TableSchema) -> String {
        let mut out = String::new();
        for (i, k) in self.order_by.iter().enumerate() {
            out.push_str(if i == 0 { " ORDER BY " } else { ", " });
            out.push_str(&quote_ident(&table.columns[k.column].name));
            out.push_str(if k.descending { " DESC" } else { " ASC" });
            match k.nulls_first {
                Some(true) => out.push_str(" NULLS FIRST"),
                Some(false) => out.push_str(" NULLS LAST"),
                None => {}
            }
        }
        if let Some(n) = self.limit {
            let _ = write!(out, " LIMIT {n}");
        }
        if let Some(n) = self.offset {
            let _ = write!(out, " OFFSET {n}");
        }
        out
    }
}

fn parse_order_by(text: &str, table: &TableSchema) -> Result<Vec<OrderKey>, SubsetError> {
    let bad = |m: String| SubsetError::OrderBy(m);
    if text.len() > MAX_WHERE_LEN {
        return Err(bad(format!("is longer than {MAX_WHERE_LEN} bytes")));
    }
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(text).map_err(|e| bad(e.to_string()))?;
    let terms = parser.parse_comma_separated(Parser::parse_order_by_expr).map_err(|e| bad(e.to_string()))?;
    if parser.peek_token().token != Token::EOF {
        return Err(bad(format!("unexpected {} after the last term", parser.peek_token().token)));
    }
    if terms.len() > MAX_ORDER_TERMS {
        return Err(bad(format!("at most {MAX_ORDER_TERMS} terms are accepted")));
    }
    terms
        .iter()
        .map(|t| {
            let sqlparser::ast::Expr::Identifier(ident) = &t.expr else {
                return Err(bad(format!("only column names can be ordered by, not `{}`", t.expr)));
            };
            let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
            let column = table.column_index(&name).ok_or_else(|| bad(format!("unknown column {name:?}")))?;
            if t.with_fill.is_some() {
                return Err(bad("WITH FILL is not supported".into()));
            }
            let descending = match &t.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => return Err(bad("ORDER BY … USING is not supported".into())),
            };
            Ok(OrderKey { column, descending, nulls_first: t.options.nulls_first })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(spec: SubsetSpec) -> Result<Subset, SubsetError> {
        Subset::bind(&spec, &crate::where_clause::fixture::table(), BindOptions::default())
    }

    #[test]
    fn order_by_names_columns_only() {
        let spec = |o: &str| SubsetSpec { order_by: Some(o.into()), limit: Some(10), ..Default::default() };
        let table = crate::where_clause::fixture::table();
        let s = bind(spec("id DESC NULLS LAST, \"Org\", title asc")).unwrap();
        assert_eq!(s.sql_tail(&table), r#" ORDER BY "id" DESC NULLS LAST, "Org" ASC, "title" ASC LIMIT 10"#);
        for (bad, needle) in [
            ("lower(title)", "only column names"),
            ("nope", "unknown column"),
            ("id; drop table x", "unexpected"),
            ("(select 1)", "only column names"),
        ] {
            let err = bind(spec(bad)).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn paging_needs_an_order() {
        let err = bind(SubsetSpec { limit: Some(5), ..Default::default() }).unwrap_err();
        assert_eq!(err, SubsetError::OrderBy("order_by is required when limit or offset is present".into()));
        let err = bind(SubsetSpec { limit: Some(0), order_by: Some("id".into()), ..Default::default() }).unwrap_err();
        assert!(matches!(err, SubsetError::Limit(_)));
        let s = bind(SubsetSpec {
            where_text: Some("id > $1".into()),
            params: HashMap::from([(1, "5".into())]),
            ..Default::default()
        })
        .unwrap();
        assert!(s.filter.is_some() && s.order_by.is_empty());
    }
}
