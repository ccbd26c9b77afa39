//! Client filter text → typed [`Expr`]: sqlparser (PostgreSQL dialect) parses, then a binder
//! resolves columns against the table, types literals from their context (as PostgreSQL
//! types unknown literals), substitutes `$n` parameters, and rejects everything not on the
//! allow-list with an error that names the construct.

use std::collections::HashMap;

use sqlparser::ast::{self, BinaryOperator, UnaryOperator};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use super::{ArithOp, ArrayOp, CmpOp, Expr, Func, MAX_DEPTH, MAX_WHERE_LEN, UnaryOp, WhereError};
use crate::table::TableSchema;
use crate::value::{Datum, SqlType};

/// What the binder may assume about the database.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    /// The database sorts text by byte (C collation), so `<`/`>` on text can be evaluated
    /// here exactly as PostgreSQL does. Otherwise ordering comparisons on text are refused.
    pub text_sorts_bytewise: bool,
}

/// Parses and binds a client `where` against `table`. `params` maps `$n` to its text value.
pub fn parse_where(
    text: &str,
    table: &TableSchema,
    params: &HashMap<usize, String>,
    options: BindOptions,
) -> Result<Expr, WhereError> {
    parse_bound(text, table, Params::Values(params), options)
}

/// Checks a filter whose `$n` values come later (an access rule's scope): every `$n`
/// binds as an untyped NULL, so columns, operators and types are checked now.
pub fn parse_where_template(text: &str, table: &TableSchema, options: BindOptions) -> Result<Expr, WhereError> {
    parse_bound(text, table, Params::Later, options)
}

#[derive(Clone, Copy)]
enum Params<'a> {
    Values(&'a HashMap<usize, String>),
    Later,
}

fn parse_bound(text: &str, table: &TableSchema, params: Params<'_>, options: BindOptions) -> Result<Expr, WhereError> {
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
    let binder = Binder { table, params, options };
    let expr = binder.bind(&ast, 0)?;
    coerce(expr, &SqlType::Bool).map_err(|_| WhereError::Type("WHERE clause must return a boolean".into()))
}

/// The function name that marks the lower bound of a `BETWEEN SYMMETRIC` (a quoted name
/// with a space, so no other construct produces it by accident).
const SYMMETRIC_MARK: &str = "between symmetric";

/// sqlparser does not parse `BETWEEN [A]SYMMETRIC`. Rewrite the tokens
/// `BETWEEN SYMMETRIC low AND` to `BETWEEN "between symmetric"(low) AND`, which it parses;
/// the binder reads the mark back. As in PostgreSQL's grammar, `low` ends at the first
/// `AND` outside brackets.
fn mark_symmetric_between(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let keyword =
        |t: &TokenWithSpan, k: Keyword| matches!(&t.token, Token::Word(w) if w.keyword == k && w.quote_style.is_none());
    let mut out = Vec::with_capacity(tokens.len() + 3);
    let mut it = tokens.into_iter().peekable();
    while let Some(t) = it.next() {
        let is_between = keyword(&t, Keyword::BETWEEN);
        out.push(t);
        if !is_between {
            continue;
        }
        while it.peek().is_some_and(|t| matches!(t.token, Token::Whitespace(_))) {
            out.push(it.next().unwrap_or_else(|| TokenWithSpan::wrap(Token::EOF)));
        }
        let Some(next) = it.peek() else { break };
        if keyword(next, Keyword::ASYMMETRIC) {
            it.next(); // the default
        } else if keyword(next, Keyword::SYMMETRIC) {
            it.next();
            out.push(TokenWithSpan::wrap(Token::Word(Word {
                value: SYMMETRIC_MARK.into(),
                quote_style: Some('"'),
                keyword: Keyword::NoKeyword,
            })));
            out.push(TokenWithSpan::wrap(Token::LParen));
            let mut depth = 0usize;
            while let Some(t) = it.peek() {
                match &t.token {
                    Token::LParen | Token::LBracket => depth += 1,
                    Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
                    _ if depth == 0 && keyword(t, Keyword::AND) => break,
                    _ => {}
                }
                out.push(it.next().unwrap_or_else(|| TokenWithSpan::wrap(Token::EOF)));
            }
            out.push(TokenWithSpan::wrap(Token::RParen));
        }
    }
    out
}

/// The bound inside a [`SYMMETRIC_MARK`] call, if `e` is one.
fn symmetric_bound(e: &ast::Expr) -> Option<&ast::Expr> {
    let ast::Expr::Function(f) = e else { return None };
    let [part] = f.name.0.as_slice() else { return None };
    let ident = part.as_ident()?;
    if ident.value != SYMMETRIC_MARK || ident.quote_style != Some('"') {
        return None;
    }
    match &f.args {
        ast::FunctionArguments::List(list) => match list.args.as_slice() {
            [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(inner))] => Some(inner),
            _ => None,
        },
        _ => None,
    }
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

struct Binder<'a> {
    table: &'a TableSchema,
    params: Params<'a>,
    options: BindOptions,
}

fn unknown(text: String) -> Expr {
    Expr::Const { value: Datum::Text(text), ty: SqlType::Unknown }
}

impl Binder<'_> {
    fn bind(&self, e: &ast::Expr, depth: usize) -> Result<Expr, WhereError> {
        if depth > MAX_DEPTH {
            return Err(WhereError::TooComplex);
        }
        let d = depth + 1;
        let b = |e: &ast::Expr| self.bind(e, d);
        Ok(match e {
            ast::Expr::Identifier(ident) => self.column(ident)?,
            ast::Expr::CompoundIdentifier(parts) => {
                return Err(WhereError::Unsupported(format!(
                    "the qualified name {} (refer to columns of the shape's table by name only)",
                    parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".")
                )));
            }
            ast::Expr::Nested(inner) => b(inner)?,
            ast::Expr::Value(v) => self.literal(&v.value)?,
            ast::Expr::TypedString(ts) => {
                let ty = cast_target(&ts.data_type)?;
                let text = match &ts.value.value {
                    ast::Value::SingleQuotedString(s) => s.clone(),
                    other => return Err(WhereError::Unsupported(format!("the literal {other}"))),
                };
                coerce(unknown(text), &ty)?
            }
            ast::Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Expr::Not(Box::new(coerce(b(expr)?, &SqlType::Bool)?)),
                UnaryOperator::Plus => b(expr)?,
                UnaryOperator::Minus => {
                    let inner = b(expr)?;
                    if inner.ty() == SqlType::Interval {
                        Expr::Unary { op: UnaryOp::Neg, expr: Box::new(inner), ty: SqlType::Interval }
                    } else {
                        fold_negate(numeric_operand(inner, "-")?)?
                    }
                }
                UnaryOperator::PGAbs => {
                    let inner = numeric_operand(b(expr)?, "@")?;
                    Expr::Unary { op: UnaryOp::Abs, ty: inner.ty(), expr: Box::new(inner) }
                }
                UnaryOperator::PGSquareRoot | UnaryOperator::PGCubeRoot => {
                    let op = if *op == UnaryOperator::PGSquareRoot { UnaryOp::Sqrt } else { UnaryOp::Cbrt };
                    let inner = coerce(numeric_operand(b(expr)?, op.sql())?, &SqlType::Float)?;
                    Expr::Unary { op, expr: Box::new(inner), ty: SqlType::Float }
                }
                UnaryOperator::BitwiseNot => {
                    let inner = coerce(b(expr)?, &SqlType::Int)?;
                    Expr::Unary { op: UnaryOp::BitNot, expr: Box::new(inner), ty: SqlType::Int }
                }
                other => return Err(WhereError::Unsupported(format!("the operator {other}"))),
            },
            ast::Expr::BinaryOp { left, op, right } => self.binary(b(left)?, op, b(right)?)?,
            ast::Expr::IsNull(e) => Expr::IsNull { expr: Box::new(b(e)?), negated: false },
            ast::Expr::IsNotNull(e) => Expr::IsNull { expr: Box::new(b(e)?), negated: true },
            ast::Expr::IsTrue(e) => self.is_bool(b(e)?, Some(true), false)?,
            ast::Expr::IsNotTrue(e) => self.is_bool(b(e)?, Some(true), true)?,
            ast::Expr::IsFalse(e) => self.is_bool(b(e)?, Some(false), false)?,
            ast::Expr::IsNotFalse(e) => self.is_bool(b(e)?, Some(false), true)?,
            ast::Expr::IsUnknown(e) => self.is_bool(b(e)?, None, false)?,
            ast::Expr::IsNotUnknown(e) => self.is_bool(b(e)?, None, true)?,
            ast::Expr::IsDistinctFrom(l, r) | ast::Expr::IsNotDistinctFrom(l, r) => {
                let (left, right, _) = self.unify(b(l)?, b(r)?, "IS DISTINCT FROM")?;
                comparable(&left.ty(), "IS DISTINCT FROM")?;
                Expr::Distinct {
                    left: Box::new(left),
                    right: Box::new(right),
                    negated: matches!(e, ast::Expr::IsNotDistinctFrom(..)),
                }
            }
            ast::Expr::InList { expr, list, negated } => {
                let mut target = b(expr)?;
                let mut items = list.iter().map(b).collect::<Result<Vec<_>, _>>()?;
                // One common type for the whole list, as PostgreSQL resolves `IN`.
                for item in &items {
                    let (t, _, _) = self.unify(target.clone(), item.clone(), "IN")?;
                    target = t;
                }
                let ty = target.ty();
                comparable(&ty, "IN")?;
                items = items.into_iter().map(|i| coerce(i, &ty)).collect::<Result<_, _>>()?;
                Expr::InList { expr: Box::new(target), list: items, negated: *negated }
            }
            ast::Expr::Between { expr, negated, low, high } => {
                let x = b(expr)?;
                let within = |lo: Expr, hi: Expr| -> Result<Expr, WhereError> {
                    let lo = self.compare(CmpOp::GtEq, x.clone(), lo)?;
                    let hi = self.compare(CmpOp::LtEq, x.clone(), hi)?;
                    Ok(Expr::And(vec![lo, hi]))
                };
                let range = match symmetric_bound(low) {
                    // PostgreSQL: x BETWEEN SYMMETRIC a AND b is true in either order.
                    Some(low) => {
                        let (lo, hi) = (b(low)?, b(high)?);
                        Expr::Or(vec![within(lo.clone(), hi.clone())?, within(hi, lo)?])
                    }
                    None => within(b(low)?, b(high)?)?,
                };
                if *negated { Expr::Not(Box::new(range)) } else { range }
            }
            ast::Expr::Like { negated, any, expr, pattern, escape_char }
            | ast::Expr::ILike { negated, any, expr, pattern, escape_char } => {
                if *any {
                    return Err(WhereError::Unsupported("LIKE ANY".into()));
                }
                let escape = match escape_char.as_deref() {
                    None => Some('\\'),
                    Some(ast::Expr::Value(v)) => match &v.value {
                        ast::Value::SingleQuotedString(e) if e.chars().count() <= 1 => e.chars().next(),
                        _ => return Err(WhereError::Type("ESCAPE takes a string of at most one character".into())),
                    },
                    Some(_) => return Err(WhereError::Type("ESCAPE takes a string of at most one character".into())),
                };
                let mut like = self.like(b(expr)?, b(pattern)?, matches!(e, ast::Expr::ILike { .. }), *negated)?;
                if let Expr::Like { escape: e, .. } = &mut like {
                    *e = escape;
                }
                like
            }
            ast::Expr::Cast { expr, data_type, format: None, .. } => {
                let ty = cast_target(data_type)?;
                cast(b(expr)?, ty)?
            }
            ast::Expr::Function(f) => self.function(f, d)?,
            ast::Expr::Interval(iv) => {
                let plain = iv.leading_field.is_none()
                    && iv.last_field.is_none()
                    && iv.leading_precision.is_none()
                    && iv.fractional_seconds_precision.is_none();
                if !plain {
                    return Err(WhereError::Unsupported(
                        "INTERVAL with field qualifiers (write INTERVAL '1 day' or '1 day'::interval)".into(),
                    ));
                }
                coerce(b(&iv.value)?, &SqlType::Interval)?
            }
            ast::Expr::AtTimeZone { timestamp, time_zone } => self.timezone(b(time_zone)?, b(timestamp)?)?,
            ast::Expr::AnyOp { left, compare_op, right, .. } => {
                self.quantified(b(left)?, compare_op, b(right)?, false)?
            }
            ast::Expr::AllOp { left, compare_op, right } => self.quantified(b(left)?, compare_op, b(right)?, true)?,
            ast::Expr::Array(arr) => {
                let items = arr.elem.iter().map(b).collect::<Result<Vec<_>, _>>()?;
                array_const(items)?
            }
            ast::Expr::Subquery(_) | ast::Expr::InSubquery { .. } | ast::Expr::Exists { .. } => {
                return Err(WhereError::Unsupported("a subquery".into()));
            }
            other => {
                let text = other.to_string();
                let head: String = text.chars().take(40).collect();
                return Err(WhereError::Unsupported(format!("the expression `{head}`")));
            }
        })
    }

    fn column(&self, ident: &ast::Ident) -> Result<Expr, WhereError> {
        let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
        let index = self.table.column_index(&name).ok_or_else(|| WhereError::UnknownColumn(name.clone()))?;
        Ok(Expr::Column { index, name, ty: self.table.columns[index].sql_type() })
    }

    fn literal(&self, v: &ast::Value) -> Result<Expr, WhereError> {
        Ok(match v {
            ast::Value::Number(n, _) => {
                let value = match n.parse::<i64>() {
                    Ok(i) if !n.contains(['.', 'e', 'E']) => {
                        return Ok(Expr::Const { value: Datum::Int(i), ty: SqlType::Int });
                    }
                    _ => Datum::parse(n, &SqlType::Numeric).map_err(|e| WhereError::Type(e.to_string()))?,
                };
                Expr::Const { value, ty: SqlType::Numeric }
            }
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => unknown(s.clone()),
            ast::Value::Boolean(b) => Expr::Const { value: Datum::Bool(*b), ty: SqlType::Bool },
            ast::Value::Null => Expr::Const { value: Datum::Null, ty: SqlType::Unknown },
            ast::Value::Placeholder(p) => {
                let n: usize = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| WhereError::Unsupported(format!("the placeholder {p} (use $1, $2, …)")))?;
                let Params::Values(values) = self.params else {
                    return Ok(Expr::Const { value: Datum::Null, ty: SqlType::Unknown });
                };
                let value = values
                    .get(&n)
                    .ok_or_else(|| WhereError::Param(format!("parameter ${n} was not provided (add params[{n}]=…)")))?;
                unknown(value.clone())
            }
            other => return Err(WhereError::Unsupported(format!("the literal {other}"))),
        })
    }

    fn binary(&self, l: Expr, op: &BinaryOperator, r: Expr) -> Result<Expr, WhereError> {
        // sqlparser lexes `a>-1` as one operator `>-`; PostgreSQL's lexer never ends an
        // operator like that in `-`/`+` and reads `a > -1`. Split it the same way.
        if let BinaryOperator::Custom(text) = op
            && let Some((base, sign)) = split_trailing_sign(text)
        {
            let r = if sign == '-' { fold_negate(numeric_operand(r, "-")?)? } else { r };
            return self.binary(l, &base, r);
        }
        let cmp = match op {
            BinaryOperator::Eq => Some(CmpOp::Eq),
            BinaryOperator::NotEq => Some(CmpOp::NotEq),
            BinaryOperator::Lt => Some(CmpOp::Lt),
            BinaryOperator::LtEq => Some(CmpOp::LtEq),
            BinaryOperator::Gt => Some(CmpOp::Gt),
            BinaryOperator::GtEq => Some(CmpOp::GtEq),
            _ => None,
        };
        if let Some(op) = cmp {
            return self.compare(op, l, r);
        }
        let arith = match op {
            BinaryOperator::Plus => Some(ArithOp::Add),
            BinaryOperator::Minus => Some(ArithOp::Sub),
            BinaryOperator::Multiply => Some(ArithOp::Mul),
            BinaryOperator::Divide => Some(ArithOp::Div),
            BinaryOperator::Modulo => Some(ArithOp::Mod),
            BinaryOperator::PGExp => Some(ArithOp::Pow),
            BinaryOperator::BitwiseAnd => Some(ArithOp::BitAnd),
            BinaryOperator::BitwiseOr => Some(ArithOp::BitOr),
            BinaryOperator::PGBitwiseXor => Some(ArithOp::BitXor),
            _ => None,
        };
        if let Some(op) = arith {
            return self.arith(op, l, r);
        }
        Ok(match op {
            BinaryOperator::And => Expr::And(vec![coerce(l, &SqlType::Bool)?, coerce(r, &SqlType::Bool)?]),
            BinaryOperator::Or => Expr::Or(vec![coerce(l, &SqlType::Bool)?, coerce(r, &SqlType::Bool)?]),
            BinaryOperator::StringConcat => self.concat(l, r)?,
            BinaryOperator::AtArrow | BinaryOperator::ArrowAt | BinaryOperator::PGOverlap => {
                let op = match op {
                    BinaryOperator::AtArrow => ArrayOp::Contains,
                    BinaryOperator::ArrowAt => ArrayOp::ContainedBy,
                    _ => ArrayOp::Overlaps,
                };
                let (left, right, ty) = self.unify(l, r, op.sql())?;
                if !matches!(ty, SqlType::Array(_)) {
                    return Err(WhereError::Type(format!("operator does not exist: {ty} {} {ty}", op.sql())));
                }
                Expr::ArraySet { op, left: Box::new(left), right: Box::new(right) }
            }
            BinaryOperator::PGLikeMatch | BinaryOperator::PGNotLikeMatch => {
                self.like(l, r, false, matches!(op, BinaryOperator::PGNotLikeMatch))?
            }
            BinaryOperator::PGILikeMatch | BinaryOperator::PGNotILikeMatch => {
                self.like(l, r, true, matches!(op, BinaryOperator::PGNotILikeMatch))?
            }
            other => return Err(WhereError::Unsupported(format!("the operator {other}"))),
        })
    }

    /// PostgreSQL's operator choice for arithmetic: integers stay integers (but `^` is
    /// float8), mixed numbers promote; dates, times and intervals as [`Self::datetime_arith`].
    fn arith(&self, op: ArithOp, l: Expr, r: Expr) -> Result<Expr, WhereError> {
        let arith =
            |left: Expr, right: Expr, ty: SqlType| Expr::Arith { op, left: Box::new(left), right: Box::new(right), ty };
        if is_datetime(&l.ty()) || is_datetime(&r.ty()) {
            return self.datetime_arith(op, l, r);
        }
        let (left, right, ty) = self.unify(numeric_operand(l, op.sql())?, numeric_operand(r, op.sql())?, op.sql())?;
        let refuse = |hint: &str| Err(WhereError::Unsupported(format!("the operator {} on {ty}{hint}", op.sql())));
        match (op, &ty) {
            (ArithOp::Pow, SqlType::Int | SqlType::Float) => {
                Ok(arith(coerce(left, &SqlType::Float)?, coerce(right, &SqlType::Float)?, SqlType::Float))
            }
            (ArithOp::Pow, _) => refuse(" (cast to float8, e.g. price::float8 ^ 2)"),
            (ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor, SqlType::Int) => Ok(arith(left, right, ty)),
            (ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor, _) => refuse(" (bitwise operators take integers)"),
            (ArithOp::Mod, SqlType::Float) => refuse(""),
            (_, SqlType::Int | SqlType::Float | SqlType::Numeric) => Ok(arith(left, right, ty)),
            _ => refuse(""),
        }
    }

    /// `date ± int` (days), `date - date` (days), `timestamp ± interval`, `date ± interval`
    /// (a timestamp), `time ± interval`, `interval ± interval` and `timestamp - timestamp`
    /// (an interval). An untyped literal is an interval after `+` (but ambiguous beside a
    /// date) and the other side's type after `-`, as PostgreSQL resolves them.
    fn datetime_arith(&self, op: ArithOp, l: Expr, r: Expr) -> Result<Expr, WhereError> {
        use SqlType::*;
        let (lt, rt) = (l.ty(), r.ty());
        let not_unique = || {
            WhereError::Type(format!(
                "operator is not unique: {lt} {} {rt} (cast the literal, e.g. 7::int or '1 day'::interval)",
                op.sql()
            ))
        };
        let (l, r) = match (&lt, &rt, op) {
            (Unknown, Date, ArithOp::Add) | (Date, Unknown, ArithOp::Add) => return Err(not_unique()),
            (Unknown, _, ArithOp::Add) => (coerce(l, &Interval)?, r),
            (_, Unknown, ArithOp::Add) => (l, coerce(r, &Interval)?),
            (Unknown, t, ArithOp::Sub) => (coerce(l, t)?, r),
            (t, Unknown, ArithOp::Sub) => (l, coerce(r, t)?),
            _ => (l, r),
        };
        let (lt, rt) = (l.ty(), r.ty());
        let arith =
            |left: Expr, right: Expr, ty: SqlType| Expr::Arith { op, left: Box::new(left), right: Box::new(right), ty };
        let instant = |ty: &SqlType| matches!(ty, Date | Timestamp | TimestampTz);
        // A date moved by an interval becomes a timestamp.
        let moved = |ty: &SqlType| if *ty == Date { Timestamp } else { ty.clone() };
        Ok(match (op, &lt, &rt) {
            (ArithOp::Add | ArithOp::Sub, Date, Int) | (ArithOp::Add, Int, Date) => arith(l, r, Date),
            (ArithOp::Sub, Date, Date) => arith(l, r, Int),
            (ArithOp::Add | ArithOp::Sub, t, Interval) if instant(t) => {
                let ty = moved(t);
                arith(coerce(l, &ty)?, r, ty)
            }
            (ArithOp::Add, Interval, t) if instant(t) => {
                let ty = moved(t);
                arith(l, coerce(r, &ty)?, ty)
            }
            (ArithOp::Add | ArithOp::Sub, Time, Interval) | (ArithOp::Add, Interval, Time) => arith(l, r, Time),
            (ArithOp::Add | ArithOp::Sub, Interval, Interval) => arith(l, r, Interval),
            (ArithOp::Sub, a, b) if instant(a) && instant(b) => {
                let (l, r, _) = self.unify(l, r, "-")?;
                arith(l, r, Interval)
            }
            _ => return Err(WhereError::Type(format!("operator does not exist: {lt} {} {rt}", op.sql()))),
        })
    }

    /// `timezone(zone, timestamp)` / `timestamp AT TIME ZONE zone` for the zones whose offset
    /// needs no time zone database: UTC, or a fixed interval.
    fn timezone(&self, zone: Expr, ts: Expr) -> Result<Expr, WhereError> {
        let zone = match zone {
            Expr::Const { value: Datum::Text(name), ty: SqlType::Unknown | SqlType::Text } => {
                if !["utc", "gmt", "etc/utc", "etc/gmt", "z", "zulu", "uct", "universal"]
                    .contains(&name.to_lowercase().as_str())
                {
                    return Err(WhereError::Unsupported(format!(
                        "the time zone {name:?} (only UTC or a fixed interval such as INTERVAL '02:00' is supported)"
                    )));
                }
                Expr::Const { value: Datum::Text(name), ty: SqlType::Text }
            }
            Expr::Const { value: Datum::Interval(iv), ty } => {
                if iv.months != 0 || iv.days != 0 {
                    return Err(WhereError::Type(format!(
                        "interval time zone \"{}\" must not include months or days",
                        iv.format()
                    )));
                }
                Expr::Const { value: Datum::Interval(iv), ty }
            }
            _ => {
                return Err(WhereError::Unsupported(
                    "a time zone that is not a constant (use 'UTC' or a fixed interval)".into(),
                ));
            }
        };
        let (ts, ty) = match ts.ty() {
            SqlType::Timestamp => (ts, SqlType::TimestampTz),
            SqlType::TimestampTz | SqlType::Date | SqlType::Unknown => {
                (coerce(ts, &SqlType::TimestampTz)?, SqlType::Timestamp)
            }
            other => return Err(WhereError::Type(format!("function timezone(text, {other}) does not exist"))),
        };
        Ok(Expr::Func { func: Func::Timezone, args: vec![zone, ts], ty })
    }

    /// `||`: array concatenation when either side is an array (an unknown literal beside an
    /// array is an array, as PostgreSQL resolves it), else text concatenation.
    fn concat(&self, l: Expr, r: Expr) -> Result<Expr, WhereError> {
        let is_array = |e: &Expr| matches!(e.ty(), SqlType::Array(_));
        let unknown = |e: &Expr| e.ty() == SqlType::Unknown;
        match (is_array(&l) || unknown(&l) && is_array(&r), is_array(&r) || unknown(&r) && is_array(&l)) {
            (false, false) => {
                let text = |e: Expr| match e.ty() {
                    SqlType::Unknown | SqlType::Text => coerce(e, &SqlType::Text),
                    _ => cast(e, SqlType::Text),
                };
                Ok(Expr::Concat { left: Box::new(text(l)?), right: Box::new(text(r)?), ty: SqlType::Text })
            }
            roles => self.array_concat(l, r, roles),
        }
    }

    /// Array concatenation with each side's role (array or element) fixed: `||`,
    /// `array_cat`, `array_append`, `array_prepend`.
    fn array_concat(&self, l: Expr, r: Expr, (l_array, r_array): (bool, bool)) -> Result<Expr, WhereError> {
        let element = |e: &Expr, array: bool| -> Result<Expr, WhereError> {
            match (e.ty(), array) {
                (SqlType::Array(elem), true) => Ok(Expr::Const { value: Datum::Null, ty: *elem }),
                (SqlType::Unknown, _) => Ok(Expr::Const { value: Datum::Null, ty: SqlType::Unknown }),
                (SqlType::Array(_), false) => Err(WhereError::Unsupported("arrays of arrays".into())),
                (ty, false) => Ok(Expr::Const { value: Datum::Null, ty }),
                (ty, true) => Err(WhereError::Type(format!("expected an array, found {ty}"))),
            }
        };
        let mut elem = self.unify(element(&l, l_array)?, element(&r, r_array)?, "||")?.2;
        if elem == SqlType::Unknown {
            elem = SqlType::Text;
        }
        let array = SqlType::Array(Box::new(elem.clone()));
        let side = |e: Expr, is_array: bool| coerce(e, if is_array { &array } else { &elem });
        Ok(Expr::Concat { left: Box::new(side(l, l_array)?), right: Box::new(side(r, r_array)?), ty: array.clone() })
    }

    fn compare(&self, op: CmpOp, l: Expr, r: Expr) -> Result<Expr, WhereError> {
        let (left, right, ty) = self.unify(l, r, op.sql())?;
        comparable(&ty, op.sql())?;
        if op.is_ordering() {
            self.check_ordering(&ty)?;
        }
        Ok(Expr::Compare { op, left: Box::new(left), right: Box::new(right) })
    }

    fn check_ordering(&self, ty: &SqlType) -> Result<(), WhereError> {
        let textual = match ty {
            SqlType::Array(inner) => inner.is_textual(),
            t => t.is_textual(),
        };
        if textual && !self.options.text_sorts_bytewise {
            return Err(WhereError::Unsupported(
                "ordering comparison (<, >, BETWEEN) on text in a database whose collation is not C \
                 (use =, IN or LIKE, or compare a COLLATE \"C\" column)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn is_bool(&self, e: Expr, value: Option<bool>, negated: bool) -> Result<Expr, WhereError> {
        Ok(Expr::IsBool { expr: Box::new(coerce(e, &SqlType::Bool)?), value, negated })
    }

    fn like(&self, e: Expr, pattern: Expr, case_insensitive: bool, negated: bool) -> Result<Expr, WhereError> {
        let to_text = |x: Expr| -> Result<Expr, WhereError> {
            match x.ty() {
                SqlType::Text | SqlType::Unknown => coerce(x, &SqlType::Text),
                SqlType::Char => cast(x, SqlType::Text),
                other => Err(WhereError::Type(format!("operator does not exist: {other} ~~ text"))),
            }
        };
        Ok(Expr::Like {
            expr: Box::new(to_text(e)?),
            pattern: Box::new(to_text(pattern)?),
            case_insensitive,
            negated,
            escape: Some('\\'),
        })
    }

    fn quantified(&self, left: Expr, op: &BinaryOperator, array: Expr, all: bool) -> Result<Expr, WhereError> {
        let op = match op {
            BinaryOperator::Eq => CmpOp::Eq,
            BinaryOperator::NotEq => CmpOp::NotEq,
            BinaryOperator::Lt => CmpOp::Lt,
            BinaryOperator::LtEq => CmpOp::LtEq,
            BinaryOperator::Gt => CmpOp::Gt,
            BinaryOperator::GtEq => CmpOp::GtEq,
            other => {
                return Err(WhereError::Unsupported(format!("the operator {other} with ANY/ALL")));
            }
        };
        let (left, array) = match (left.ty(), array.ty()) {
            (_, SqlType::Array(elem)) => {
                let probe = Expr::Const { value: Datum::Null, ty: (*elem).clone() };
                let (l, _, ty) = self.unify(left, probe, op.sql())?;
                let array = if *elem == ty { array } else { cast(array, SqlType::Array(Box::new(ty)))? };
                (l, array)
            }
            (lt, SqlType::Unknown) if lt != SqlType::Unknown => {
                let array = coerce(array, &SqlType::Array(Box::new(lt)))?;
                (left, array)
            }
            (_, other) => {
                return Err(WhereError::Type(format!(
                    "op ANY/ALL (array) requires an array on the right, not {other}"
                )));
            }
        };
        let SqlType::Array(elem) = array.ty() else { unreachable!("checked above") };
        comparable(&elem, op.sql())?;
        if op.is_ordering() {
            self.check_ordering(&elem)?;
        }
        Ok(Expr::Quantified { op, left: Box::new(left), array: Box::new(array), all })
    }

    fn function(&self, f: &ast::Function, depth: usize) -> Result<Expr, WhereError> {
        let name = f.name.to_string().to_lowercase();
        let ast::FunctionArguments::List(list) = &f.args else {
            return Err(WhereError::Unsupported(format!("the function {name}")));
        };
        if f.filter.is_some()
            || f.over.is_some()
            || !f.within_group.is_empty()
            || !list.clauses.is_empty()
            || list.duplicate_treatment.is_some()
        {
            return Err(WhereError::Unsupported(format!("the function call {name}(…) with clauses")));
        }
        let args = list
            .args
            .iter()
            .map(|a| match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => self.bind(e, depth),
                _ => Err(WhereError::Unsupported(format!("named or wildcard arguments to {name}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let arity = |n: usize| {
            if args.len() == n { Ok(()) } else { Err(WhereError::Type(format!("{name}() takes {n} argument(s)"))) }
        };
        let func = match name.as_str() {
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "coalesce" => Func::Coalesce,
            "concat" => Func::Concat,
            "greatest" => Func::Greatest,
            "least" => Func::Least,
            "array_ndims" => Func::ArrayNdims,
            "justify_days" => Func::JustifyDays,
            "justify_hours" => Func::JustifyHours,
            "justify_interval" => Func::JustifyInterval,
            "timezone" => {
                arity(2)?;
                let mut it = args.into_iter();
                let (zone, ts) = (it.next().unwrap(), it.next().unwrap());
                return self.timezone(zone, ts);
            }
            "array_cat" | "array_append" | "array_prepend" => {
                arity(2)?;
                let mut it = args.into_iter();
                let (a, b) = (it.next().unwrap(), it.next().unwrap());
                let (a_ty, b_ty) = (a.ty(), b.ty());
                let expected = match name.as_str() {
                    "array_cat" => (true, true),
                    "array_append" => (true, false),
                    _ => (false, true),
                };
                return self.array_concat(a, b, expected).map_err(|_| {
                    let takes = match expected {
                        (true, true) => "(array, array)",
                        (true, false) => "(array, element)",
                        _ => "(element, array)",
                    };
                    WhereError::Type(format!("function {name}({a_ty}, {b_ty}) does not exist; it takes {takes}"))
                });
            }
            "like" | "ilike" => {
                arity(2)?;
                let mut it = args.into_iter();
                let (e, p) = (it.next().unwrap(), it.next().unwrap());
                return self.like(e, p, name == "ilike", false);
            }
            other => return Err(WhereError::Unsupported(format!("the function {other}()"))),
        };
        match func {
            Func::JustifyDays | Func::JustifyHours | Func::JustifyInterval => {
                arity(1)?;
                let arg = coerce(args.into_iter().next().unwrap(), &SqlType::Interval)
                    .map_err(|_| WhereError::Type(format!("{name}() takes an interval")))?;
                Ok(Expr::Func { func, args: vec![arg], ty: SqlType::Interval })
            }
            Func::Timezone => unreachable!("bound above"),
            Func::Lower | Func::Upper => {
                arity(1)?;
                let arg = args.into_iter().next().unwrap();
                let arg = match arg.ty() {
                    SqlType::Text | SqlType::Unknown => coerce(arg, &SqlType::Text)?,
                    SqlType::Char => cast(arg, SqlType::Text)?,
                    other => {
                        return Err(WhereError::Type(format!("function {name}({other}) does not exist")));
                    }
                };
                Ok(Expr::Func { func, args: vec![arg], ty: SqlType::Text })
            }
            Func::Concat => {
                let args =
                    args.into_iter()
                        .map(|a| {
                            if a.ty() == SqlType::Unknown { coerce(a, &SqlType::Text) } else { cast(a, SqlType::Text) }
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::Func { func, args, ty: SqlType::Text })
            }
            Func::ArrayNdims => {
                arity(1)?;
                let arg = args.into_iter().next().unwrap();
                if !matches!(arg.ty(), SqlType::Array(_)) {
                    return Err(WhereError::Type(format!("function array_ndims({}) does not exist", arg.ty())));
                }
                Ok(Expr::Func { func, args: vec![arg], ty: SqlType::Int })
            }
            Func::Coalesce | Func::Greatest | Func::Least => {
                if args.is_empty() {
                    return Err(WhereError::Type(format!("{name}() needs at least one argument")));
                }
                let mut ty = SqlType::Unknown;
                for a in &args {
                    let probe = Expr::Const { value: Datum::Null, ty: ty.clone() };
                    ty = self.unify(probe, a.clone(), &name)?.2;
                }
                if ty == SqlType::Unknown {
                    ty = SqlType::Text;
                }
                if func != Func::Coalesce {
                    comparable(&ty, &name)?;
                    self.check_ordering(&ty)?;
                }
                let args = args.into_iter().map(|a| coerce(a, &ty)).collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::Func { func, args, ty })
            }
        }
    }

    /// Brings both sides to one type as PostgreSQL's operator resolution would.
    fn unify(&self, l: Expr, r: Expr, op: &str) -> Result<(Expr, Expr, SqlType), WhereError> {
        let (lt, rt) = (l.ty(), r.ty());
        comparable(&lt, op)?;
        comparable(&rt, op)?;
        let ty = common_type(&lt, &rt)
            .ok_or_else(|| WhereError::Type(format!("operator does not exist: {lt} {op} {rt}")))?;
        Ok((coerce(l, &ty)?, coerce(r, &ty)?, ty))
    }
}

/// `>-` → (`>`, '-'): a comparison operator glued to a sign, as PostgreSQL's lexer splits it.
fn split_trailing_sign(text: &str) -> Option<(BinaryOperator, char)> {
    let sign = text.chars().last().filter(|c| *c == '-' || *c == '+')?;
    let op = match &text[..text.len() - 1] {
        "=" => BinaryOperator::Eq,
        "<>" | "!=" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        "<=" => BinaryOperator::LtEq,
        ">" => BinaryOperator::Gt,
        ">=" => BinaryOperator::GtEq,
        _ => return None,
    };
    Some((op, sign))
}

fn is_datetime(ty: &SqlType) -> bool {
    matches!(ty, SqlType::Date | SqlType::Time | SqlType::Timestamp | SqlType::TimestampTz | SqlType::Interval)
}

/// Types a filter cannot compare.
fn comparable(ty: &SqlType, op: &str) -> Result<(), WhereError> {
    match ty {
        SqlType::Opaque(name) => Err(WhereError::Unsupported(format!(
            "the operator {op} on type {name} (cast the column to text, e.g. col::text)"
        ))),
        SqlType::Array(inner) => comparable(inner, op),
        _ => Ok(()),
    }
}

fn common_type(a: &SqlType, b: &SqlType) -> Option<SqlType> {
    use SqlType::*;
    Some(match (a, b) {
        (Unknown, Unknown) => Unknown,
        (Unknown, t) | (t, Unknown) => t.clone(),
        (x, y) if x == y => x.clone(),
        (Int | Float | Numeric, Int | Float | Numeric) => {
            if matches!(a, Float) || matches!(b, Float) {
                Float
            } else {
                Numeric
            }
        }
        (Text | Char, Text | Char) => Text,
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        (Date | Timestamp, TimestampTz) | (TimestampTz, Date | Timestamp) => TimestampTz,
        (Array(x), Array(y)) => Array(Box::new(common_type(x, y)?)),
        _ => return None,
    })
}

/// Implicit coercion: unknown literals take the type; numeric and datetime types promote.
fn coerce(e: Expr, to: &SqlType) -> Result<Expr, WhereError> {
    let from = e.ty();
    if &from == to {
        return Ok(e);
    }
    let implicit = matches!(
        (&from, to),
        (SqlType::Unknown, _)
            | (SqlType::Int, SqlType::Float | SqlType::Numeric)
            | (SqlType::Numeric, SqlType::Float)
            | (SqlType::Char, SqlType::Text)
            | (SqlType::Date, SqlType::Timestamp | SqlType::TimestampTz)
            | (SqlType::Timestamp, SqlType::TimestampTz)
            | (SqlType::Array(_), SqlType::Array(_))
    );
    if !implicit {
        return Err(WhereError::Type(format!("expected {to}, found {from}")));
    }
    cast(e, to.clone())
}

/// An explicit cast; constants are folded so rendered SQL carries typed literals.
fn cast(e: Expr, ty: SqlType) -> Result<Expr, WhereError> {
    if e.ty() == ty {
        return Ok(e);
    }
    if let SqlType::Opaque(name) = &ty {
        return Err(WhereError::Unsupported(format!("a cast to {name}")));
    }
    match e {
        Expr::Const { value, .. } => {
            let value = value.cast(&ty).map_err(|e| WhereError::Type(e.to_string()))?;
            Ok(Expr::Const { value, ty })
        }
        other => {
            let from = other.ty();
            let allowed = match (&from, &ty) {
                (SqlType::Opaque(_), t) => *t == SqlType::Text,
                (SqlType::Array(_), SqlType::Array(_)) => true,
                (SqlType::Array(_), _) | (_, SqlType::Array(_)) => false,
                _ => true,
            };
            if !allowed {
                return Err(WhereError::Type(format!("cannot cast type {from} to {ty}")));
            }
            Ok(Expr::Cast { expr: Box::new(other), ty })
        }
    }
}

/// An operand of a numeric operator: unknown literals read as numbers, as PostgreSQL reads
/// `- '1'`.
fn numeric_operand(e: Expr, op: &str) -> Result<Expr, WhereError> {
    let e = if e.ty() == SqlType::Unknown { coerce(e, &SqlType::Numeric)? } else { e };
    let ty = e.ty();
    if !ty.is_numeric() {
        return Err(WhereError::Type(format!("operator does not exist: {op} {ty}")));
    }
    Ok(e)
}

fn fold_negate(e: Expr) -> Result<Expr, WhereError> {
    let ty = e.ty();
    Ok(match e {
        Expr::Const { value: Datum::Int(i), ty } => Expr::Const {
            value: Datum::Int(i.checked_neg().ok_or_else(|| WhereError::Type("integer out of range".into()))?),
            ty,
        },
        Expr::Const { value: Datum::Float(f), ty } => Expr::Const { value: Datum::Float(-f), ty },
        Expr::Const { value: Datum::Numeric(d), ty } => Expr::Const { value: Datum::Numeric(d.neg()), ty },
        other => Expr::Unary { op: UnaryOp::Neg, expr: Box::new(other), ty },
    })
}

fn array_const(items: Vec<Expr>) -> Result<Expr, WhereError> {
    let mut ty = SqlType::Unknown;
    for i in &items {
        ty = common_type(&ty, &i.ty()).ok_or_else(|| WhereError::Type("ARRAY elements must share one type".into()))?;
    }
    if ty == SqlType::Unknown {
        ty = SqlType::Text;
    }
    let mut values = Vec::with_capacity(items.len());
    for i in items {
        match coerce(i, &ty)? {
            Expr::Const { value, .. } => values.push(value),
            _ => {
                return Err(WhereError::Unsupported("ARRAY[…] of non-constant elements".into()));
            }
        }
    }
    Ok(Expr::Const { value: Datum::Array(values), ty: SqlType::Array(Box::new(ty)) })
}

fn cast_target(dt: &ast::DataType) -> Result<SqlType, WhereError> {
    let text = dt.to_string().to_lowercase();
    let (base, array) = match text.strip_suffix("[]") {
        Some(b) => (b.trim().to_string(), true),
        None => (text.clone(), false),
    };
    // Length modifiers on character types do not change comparisons.
    let base_name = base.split('(').next().unwrap_or("").trim();
    if base.contains('(') && !matches!(base_name, "varchar" | "character varying") {
        return Err(WhereError::Unsupported(format!("a cast to {text} (drop the type modifier)")));
    }
    let ty = match base_name {
        "bool" | "boolean" => SqlType::Bool,
        "int" | "int2" | "int4" | "int8" | "integer" | "smallint" | "bigint" => SqlType::Int,
        "float4" | "float8" | "real" | "double precision" | "float" => SqlType::Float,
        "numeric" | "decimal" => SqlType::Numeric,
        "text" | "varchar" | "character varying" => SqlType::Text,
        "uuid" => SqlType::Uuid,
        "date" => SqlType::Date,
        "time" | "time without time zone" => SqlType::Time,
        "timestamp" | "timestamp without time zone" => SqlType::Timestamp,
        "timestamptz" | "timestamp with time zone" => SqlType::TimestampTz,
        "interval" => SqlType::Interval,
        other => return Err(WhereError::Unsupported(format!("a cast to {other}"))),
    };
    Ok(if array { SqlType::Array(Box::new(ty)) } else { ty })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::{Column, TableName};

    pub(crate) fn table() -> TableSchema {
        let col = |name: &str, ty: &str, dims: u32, pk: Option<u32>| Column {
            name: name.into(),
            type_oid: 0,
            type_name: ty.into(),
            type_sql: String::new(),
            dims,
            type_mod: -1,
            not_null: pk.is_some(),
            pk_index: pk,
        };
        TableSchema {
            oid: 1,
            name: TableName::new("public", "items"),
            columns: vec![
                col("id", "int8", 0, Some(0)),
                col("title", "text", 0, None),
                col("price", "numeric", 0, None),
                col("done", "bool", 0, None),
                col("tags", "text", 1, None),
                col("due", "date", 0, None),
                col("mood", "mood", 0, None),
                col("Org", "text", 0, None),
            ],
            replica_identity_full: true,
        }
    }

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
