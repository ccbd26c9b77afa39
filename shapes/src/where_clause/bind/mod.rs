//! The binder: resolves columns against the table, types literals from their context (as
//! PostgreSQL types unknown literals), substitutes `$n` parameters, and rejects everything
//! not on the allow-list with an error that names the construct. Operators and functions
//! have their own modules.

mod function;
mod operators;
mod subquery;

use std::collections::HashMap;

use sqlparser::ast::{self, BinaryOperator, UnaryOperator};

use crate::table::TableSchema;
use crate::value::{Datum, SqlType};
use crate::where_clause::coerce::{
    array_const, cast, cast_target, coerce, common_type, comparable, fold_negate, numeric_operand,
};
use crate::where_clause::symmetric::symmetric_bound;
use crate::where_clause::{ArithOp, ArrayOp, Catalog, CmpOp, Expr, MAX_DEPTH, UnaryOp, WhereError};

/// What the binder may assume about the database.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    /// The database sorts text by byte (C collation), so `<`/`>` on text can be evaluated
    /// here exactly as PostgreSQL does. Otherwise ordering comparisons on text are refused.
    pub text_sorts_bytewise: bool,
}

#[derive(Clone, Copy)]
pub(in crate::where_clause) enum Params<'a> {
    Values(&'a HashMap<usize, String>),
    Later,
}

pub(in crate::where_clause) struct Binder<'a> {
    table: &'a TableSchema,
    params: Params<'a>,
    options: BindOptions,
    /// The tables subqueries may read; `None` refuses subqueries.
    catalog: Option<&'a dyn Catalog>,
}

pub(super) fn unknown(text: String) -> Expr {
    Expr::Const { value: Datum::Text(text), ty: SqlType::Unknown }
}

impl<'a> Binder<'a> {
    pub(in crate::where_clause) fn new(
        table: &'a TableSchema,
        params: Params<'a>,
        options: BindOptions,
        catalog: Option<&'a dyn Catalog>,
    ) -> Self {
        Binder { table, params, options, catalog }
    }
}

impl Binder<'_> {
    pub(in crate::where_clause) fn bind(&self, e: &ast::Expr, depth: usize) -> Result<Expr, WhereError> {
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
            ast::Expr::InSubquery { expr, subquery, negated } => self.in_subquery(expr, subquery, *negated, d)?,
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } => {
                return Err(WhereError::Unsupported(
                    "a subquery other than `column IN (SELECT column FROM table WHERE …)`".into(),
                ));
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
