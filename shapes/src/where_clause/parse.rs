//! Client filter text → typed [`Expr`]: sqlparser (PostgreSQL dialect) parses, then the
//! binder ([`super::bind`]) turns the syntax tree into an allow-listed, typed expression.
//! Here: the limits, the token rewrites sqlparser needs, and syntax errors with Electric's
//! positions.

use std::collections::HashMap;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::bind::{BindOptions, Binder, Params};
use super::coerce::coerce;
use super::symmetric::mark_symmetric_between;
use super::{Catalog, Expr, MAX_DEPTH, MAX_WHERE_LEN, WhereError};
use crate::table::TableSchema;
use crate::value::SqlType;

/// Parses and binds a client `where` against `table`. `params` maps `$n` to its text value.
/// Subqueries are refused (see [`parse_where_with_tables`]).
pub fn parse_where(
    text: &str,
    table: &TableSchema,
    params: &HashMap<usize, String>,
    options: BindOptions,
) -> Result<Expr, WhereError> {
    parse_bound(text, table, Params::Values(params), options, None)
}

/// [`parse_where`] with the tables its subqueries may read. A table missing from `catalog`
/// is an [`WhereError::UnknownTable`] naming it: load it, and bind again.
pub fn parse_where_with_tables(
    text: &str,
    table: &TableSchema,
    catalog: &dyn Catalog,
    params: &HashMap<usize, String>,
    options: BindOptions,
) -> Result<Expr, WhereError> {
    parse_bound(text, table, Params::Values(params), options, Some(catalog))
}

/// Checks a filter whose `$n` values come later (an access rule's scope): every `$n`
/// binds as an untyped NULL, so columns, operators and types are checked now. Subqueries
/// may read the tables of `catalog` (none without one).
pub fn parse_where_template(
    text: &str,
    table: &TableSchema,
    catalog: Option<&dyn Catalog>,
    options: BindOptions,
) -> Result<Expr, WhereError> {
    parse_bound(text, table, Params::Later, options, catalog)
}

fn parse_bound(
    text: &str,
    table: &TableSchema,
    params: Params<'_>,
    options: BindOptions,
    catalog: Option<&dyn Catalog>,
) -> Result<Expr, WhereError> {
    if text.len() > MAX_WHERE_LEN {
        return Err(WhereError::TooComplex);
    }
    // Checked here, before anything becomes SQL: PostgreSQL would refuse the statement.
    if text.contains('\0') {
        return Err(WhereError::Nul("the filter"));
    }
    if let Params::Values(values) = params
        && values.values().any(|v| v.contains('\0'))
    {
        return Err(WhereError::Nul("a parameter"));
    }
    let dialect = PostgreSqlDialect {};
    let syntax = |e: sqlparser::parser::ParserError| {
        let message = strip_parser_prefix(&e.to_string());
        match found_at(&message) {
            Some((near, line, column)) => {
                WhereError::SyntaxAt { location: electric_location(text, line, column), near: near.to_string() }
            }
            None => WhereError::Syntax(message),
        }
    };
    let tokens =
        Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|e| WhereError::Syntax(e.to_string()))?;
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(MAX_DEPTH)
        .with_tokens_with_locations(mark_symmetric_between(tokens));
    let ast = parser.parse_expr().map_err(|e| match e {
        sqlparser::parser::ParserError::RecursionLimitExceeded => WhereError::TooComplex,
        e => syntax(e),
    })?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        let start = next.span.start;
        return Err(WhereError::SyntaxAt {
            location: electric_location(text, start.line as usize, start.column as usize),
            near: next.token.to_string(),
        });
    }
    let binder = Binder::new(table, params, options, catalog);
    let expr = binder.bind(&ast, 0)?;
    coerce(expr, &SqlType::Bool).map_err(|_| WhereError::Type("WHERE clause must return a boolean".into()))
}

fn strip_parser_prefix(s: &str) -> String {
    s.trim_start_matches("sql parser error: ").to_string()
}

/// The token and 1-based line and column of sqlparser's "…, found: TOKEN at Line: L, Column: C".
fn found_at(message: &str) -> Option<(&str, usize, usize)> {
    let rest = &message[message.find("found: ")? + "found: ".len()..];
    let (near, at) = rest.rsplit_once(" at Line: ")?;
    let (line, column) = at.split_once(", Column: ")?;
    Some((near, line.trim().parse().ok()?, column.trim().parse().ok()?))
}

/// Where Electric reports a position in a filter: 0-based, in characters, counting the
/// 15 characters of its `SELECT 1 WHERE ` before the filter.
fn electric_location(text: &str, line: usize, column: usize) -> usize {
    let before: usize = text.split('\n').take(line.saturating_sub(1)).map(|l| l.chars().count() + 1).sum();
    "SELECT 1 WHERE ".len() + before + column.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::where_clause::fixture::table;

    fn bind(s: &str) -> Result<Expr, WhereError> {
        let params = HashMap::from([(1, "42".to_string()), (2, "x".to_string())]);
        parse_where(s, &table(), &params, BindOptions::default())
    }

    #[test]
    fn supported_filters_bind() {
        for s in [
            "id = 1",
            "id = '1'",
            "id = $1 AND title = $2",
            "title LIKE 'a%' OR title ILIKE '%B'",
            "price > 1.5 AND price <= 10",
            "done IS TRUE AND NOT done IS NULL",
            "id IN (1, 2, 3) AND id NOT IN (4)",
            "id BETWEEN 1 AND 10",
            "'x' = ANY(tags)",
            "due > '2024-01-01' AND due < DATE '2025-01-01'",
            "mood::text = 'happy'",
            "\"Org\" = 'o1'",
            "lower(title) = 'x' AND coalesce(title, 'y') = 'y'",
            "id % 2 = 0 AND -id < 0 AND id + 1 > 1",
            "id IS DISTINCT FROM 5",
            "tags @> ARRAY['a'] AND tags <@ '{a,b,c}' AND tags && ARRAY['x', 'a']",
            "id>-1 AND id<-1 OR id=+2",
            "title LIKE 'a!%%' ESCAPE '!' OR title NOT ILIKE 'x\\_' ESCAPE ''",
            "price * 2 - price / 3 > 1 AND price % 2 = 0.5 AND -price < 0 AND @ price > 1",
            "id & 3 = 1 OR id | 4 = 5 OR id # 2 = 0 OR ~id = -1",
            "id ^ 2 > 10 AND |/ id < 3 AND ||/ id < 2",
            "due + 7 > '2024-01-01' AND due - 1 < DATE '2025-01-01' AND due - DATE '2024-01-01' > 3",
            "tags || ARRAY['x'] @> ARRAY['x'] AND array_append(tags, 'y') && ARRAY['y']",
            "'z' = ANY(array_prepend('z', tags)) AND array_ndims(array_cat(tags, tags)) = 1",
            "title || 'x' = 'ax'",
            "due + INTERVAL '1 day' > '2024-01-01' AND due - '2024-01-01' > 3 AND -INTERVAL '1 hour' < '0'",
            "justify_interval(INTERVAL '40 days') > '1 mon' AND timezone('UTC', due) > '2024-01-01'",
            "due AT TIME ZONE INTERVAL '02:00' < '2025-01-01' AND (due - INTERVAL '1 mon') - due < '0 days'",
            "id BETWEEN SYMMETRIC 10 AND 1 AND id NOT BETWEEN SYMMETRIC (1 + 2) AND -4 AND id BETWEEN ASYMMETRIC 1 AND 9",
        ] {
            bind(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let cases = [
            ("id = (select 1)", "subquery"),
            ("now() > due", "now"),
            ("t.id = 1", "qualified name"),
            ("mood = 'happy'", "cast the column to text"),
            ("title < 'b'", "collation"),
            ("nope = 1", "unknown column"),
            ("id = 'abc'", "invalid input syntax for type int8"),
            ("id = $3", "parameter $3 was not provided"),
            ("id", "boolean"),
            ("1 x 1", "syntax error"),
            ("id = 1; drop table items", "syntax error"),
            ("org = 'o1'", "unknown column"),
            ("price ^ 2 > 1", "cast to float8"),
            ("price & 1 = 1", "take integers"),
            ("due * 2 > 1", "operator does not exist"),
            ("due + '1' > due", "cast the literal"),
            ("timezone('Europe/Berlin', due) > '2024-01-01'", "only UTC"),
            ("due AT TIME ZONE INTERVAL '1 day' > '2024-01-01'", "must not include months or days"),
            ("due > INTERVAL '1 day'", "operator does not exist"),
            ("array_append('x', tags) = tags", "does not exist"),
        ];
        for (s, needle) in cases {
            let err = bind(s).expect_err(s).to_string();
            assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{s}: {err}");
        }
    }

    #[test]
    fn syntax_errors_say_where_as_electric_does() {
        let at = |s: &str| bind(s).unwrap_err().to_string();
        assert_eq!(at("1 x 1"), r#"At location 17: syntax error at or near "x""#);
        assert_eq!(at("id = 1\n  x"), r#"At location 24: syntax error at or near "x""#);
        assert!(at("id = = 1").starts_with("At location 20: syntax error at or near \"=\""), "{}", at("id = = 1"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}id = 1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(bind(&deep), Err(WhereError::TooComplex));
        let long = format!("id IN ({})", vec!["1"; 5000].join(","));
        assert_eq!(bind(&long), Err(WhereError::TooComplex));
    }
}
