//! Renders a bound filter back to SQL for snapshot queries. Every constant is written as a
//! quoted, typed literal and every column as a quoted identifier, so the output is built
//! only from values the binder produced, never from client text.

use std::fmt::Write;

use super::Expr;
use super::subquery::{SetView, write_rows};
use crate::table::quote_ident;
use crate::value::{Datum, SqlType};

impl Expr {
    /// SQL text that PostgreSQL evaluates exactly as [`Expr::eval`] does (assuming
    /// `standard_conforming_strings = on`, which the gateway sets on its sessions).
    pub fn to_sql(&self) -> String {
        let mut out = String::new();
        self.write_sql(&mut out, Ctx::default());
        out
    }

    /// [`Expr::to_sql`] with subqueries' sets as `views` describe them: what each set held
    /// before a change, while PostgreSQL's subquery yields what it holds after.
    pub fn to_sql_viewing(&self, views: &[SetView]) -> String {
        let mut out = String::new();
        self.write_sql(&mut out, Ctx { qualify: None, views });
        out
    }

    /// [`Expr::to_sql`] with every column qualified by `table` (an alias), for contexts
    /// where a bare name would be ambiguous (`ON CONFLICT … DO UPDATE … WHERE`).
    pub fn to_sql_on(&self, table: &str) -> String {
        let mut out = String::new();
        self.write_sql(&mut out, Ctx { qualify: Some(table), views: &[] });
        out
    }

    fn write_sql(&self, out: &mut String, q: Ctx<'_>) {
        let join = |out: &mut String, items: &[Expr], sep: &str| {
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                e.write_sql(out, q);
            }
        };
        match self {
            Expr::Column { name, .. } => {
                if let Some(table) = q.qualify {
                    out.push_str(&quote_ident(table));
                    out.push('.');
                }
                out.push_str(&quote_ident(name));
            }
            Expr::Const { value, ty } => write_literal(out, value, ty),
            Expr::Not(e) => {
                out.push_str("(NOT ");
                e.write_sql(out, q);
                out.push(')');
            }
            Expr::And(terms) | Expr::Or(terms) => {
                out.push('(');
                join(out, terms, if matches!(self, Expr::And(_)) { " AND " } else { " OR " });
                out.push(')');
            }
            Expr::Compare { op, left, right } => binary(out, left, op.sql(), right, q),
            Expr::IsNull { expr, negated } => {
                out.push('(');
                expr.write_sql(out, q);
                out.push_str(if *negated { " IS NOT NULL)" } else { " IS NULL)" });
            }
            Expr::IsBool { expr, value, negated } => {
                out.push('(');
                expr.write_sql(out, q);
                out.push_str(if *negated { " IS NOT " } else { " IS " });
                out.push_str(match value {
                    Some(true) => "TRUE)",
                    Some(false) => "FALSE)",
                    None => "UNKNOWN)",
                });
            }
            Expr::Distinct { left, right, negated } => {
                binary(out, left, if *negated { "IS NOT DISTINCT FROM" } else { "IS DISTINCT FROM" }, right, q)
            }
            Expr::InSubquery { probe, subquery, negated } => match q.views.iter().find(|v| v.subquery == &**subquery) {
                None => {
                    out.push_str("((");
                    join(out, probe, ", ");
                    out.push_str(if *negated { ") NOT IN (" } else { ") IN (" });
                    // The inner filter's columns are the inner table's: never qualified by the outer alias.
                    out.push_str(subquery.to_sql());
                    out.push_str("))");
                }
                Some(view) => {
                    // `x IN (S minus without, plus with)` is `x IN (S minus without) OR x IN
                    // (with)` in three-valued logic too; `NOT IN` is the negation of it.
                    out.push_str(if *negated { "(NOT ((" } else { "(((" });
                    join(out, probe, ", ");
                    out.push_str(") IN (");
                    out.push_str(&subquery.to_sql_without(view.without));
                    out.push(')');
                    if !view.with.is_empty() {
                        out.push_str(" OR (");
                        join(out, probe, ", ");
                        out.push_str(") IN (");
                        write_rows(out, view.with, subquery);
                        out.push(')');
                    }
                    out.push_str("))");
                }
            },
            Expr::InList { expr, list, negated } => {
                out.push('(');
                expr.write_sql(out, q);
                out.push_str(if *negated { " NOT IN (" } else { " IN (" });
                join(out, list, ", ");
                out.push_str("))");
            }
            Expr::Like { expr, pattern, case_insensitive, negated, escape } => {
                let op = match (case_insensitive, negated) {
                    (false, false) => "LIKE",
                    (false, true) => "NOT LIKE",
                    (true, false) => "ILIKE",
                    (true, true) => "NOT ILIKE",
                };
                out.push('(');
                expr.write_sql(out, q);
                let _ = write!(out, " {op} ");
                pattern.write_sql(out, q);
                match escape {
                    Some('\\') => {}
                    Some(c) => {
                        let _ = write!(out, " ESCAPE '{}'", c.to_string().replace('\'', "''"));
                    }
                    None => out.push_str(" ESCAPE ''"),
                }
                out.push(')');
            }
            Expr::Arith { op, left, right, ty } if *ty == SqlType::Date => {
                // `date ± integer` exists only for int4; the binder's integers are int8.
                let operand = |out: &mut String, e: &Expr| {
                    if e.ty() == SqlType::Int {
                        out.push_str("CAST(");
                        e.write_sql(out, q);
                        out.push_str(" AS int4)");
                    } else {
                        e.write_sql(out, q);
                    }
                };
                out.push('(');
                operand(out, left);
                let _ = write!(out, " {} ", op.sql());
                operand(out, right);
                out.push(')');
            }
            Expr::Arith { op, left, right, .. } => binary(out, left, op.sql(), right, q),
            Expr::Unary { op, expr, .. } => {
                let _ = write!(out, "({} ", op.sql());
                expr.write_sql(out, q);
                out.push(')');
            }
            Expr::Concat { left, right, .. } => binary(out, left, "||", right, q),
            Expr::Func { func, args, .. } => {
                out.push_str(func.sql());
                out.push('(');
                join(out, args, ", ");
                out.push(')');
            }
            Expr::Cast { expr, ty } => {
                out.push_str("CAST(");
                expr.write_sql(out, q);
                let _ = write!(out, " AS {})", ty.sql_name());
            }
            Expr::ArraySet { op, left, right } => {
                // Array operators need both sides of one array type, and the binder does not
                // know a column's integer width: constants stay untyped literals PostgreSQL
                // types from the column.
                out.push('(');
                write_array_operand(out, left, q);
                let _ = write!(out, " {} ", op.sql());
                write_array_operand(out, right, q);
                out.push(')');
            }
            Expr::Quantified { op, left, array, all } => {
                out.push('(');
                left.write_sql(out, q);
                let _ = write!(out, " {} {}(", op.sql(), if *all { "ALL" } else { "ANY" });
                array.write_sql(out, q);
                out.push_str("))");
            }
        }
    }
}

/// How rendering reads columns and subqueries.
#[derive(Clone, Copy, Default)]
struct Ctx<'a> {
    /// Qualify every column with this alias.
    qualify: Option<&'a str>,
    views: &'a [SetView<'a>],
}

fn binary(out: &mut String, left: &Expr, op: &str, right: &Expr, q: Ctx<'_>) {
    out.push('(');
    left.write_sql(out, q);
    let _ = write!(out, " {op} ");
    right.write_sql(out, q);
    out.push(')');
}

fn write_array_operand(out: &mut String, e: &Expr, q: Ctx<'_>) {
    match e {
        Expr::Const { value, .. } if *value != Datum::Null => {
            let _ = write!(out, "'{}'", value.to_sql_text().replace('\'', "''"));
        }
        other => other.write_sql(out, q),
    }
}

/// `'text'::type`, with quotes doubled; NULL keeps its type so overloads resolve.
fn write_literal(out: &mut String, value: &Datum, ty: &SqlType) {
    match value {
        Datum::Null => {
            let _ = write!(out, "CAST(NULL AS {})", ty.sql_name());
        }
        Datum::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        other => {
            let text = other.to_sql_text().replace('\'', "''");
            let _ = write!(out, "CAST('{text}' AS {})", ty.sql_name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::where_clause::{BindOptions, parse_where};

    fn render(s: &str) -> String {
        let table = crate::where_clause::fixture::table();
        let params = HashMap::from([(1, "o'1\\".to_string())]);
        parse_where(s, &table, &params, BindOptions { text_sorts_bytewise: true }).unwrap().to_sql()
    }

    #[test]
    fn literals_are_quoted_and_typed() {
        assert_eq!(render("id = 1"), r#"("id" = CAST('1' AS int8))"#);
        assert_eq!(render("title = $1"), r#"("title" = CAST('o''1\' AS text))"#);
        assert_eq!(render("\"Org\" IS NULL OR NOT done"), r#"(("Org" IS NULL) OR (NOT "done"))"#);
    }

    #[test]
    fn like_escapes_follow_the_pattern() {
        assert_eq!(render("title LIKE 'a!%' ESCAPE '!'"), r#"("title" LIKE CAST('a!%' AS text) ESCAPE '!')"#);
        assert_eq!(render("title LIKE 'a'"), r#"("title" LIKE CAST('a' AS text))"#);
    }

    #[test]
    fn columns_can_be_qualified() {
        let table = crate::where_clause::fixture::table();
        let e = parse_where("id = 1 AND lower(title) = 'x'", &table, &HashMap::new(), BindOptions::default()).unwrap();
        assert_eq!(
            e.to_sql_on("t"),
            r#"(("t"."id" = CAST('1' AS int8)) AND (lower("t"."title") = CAST('x' AS text)))"#
        );
    }

    #[test]
    fn injection_attempts_stay_inside_literals() {
        let sql = render("title = 'x''); drop table items; --'");
        assert_eq!(sql, r#"("title" = CAST('x''); drop table items; --' AS text))"#);
    }
}
