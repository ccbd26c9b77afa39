//! Types and coercion: which types compare, their common type, implicit coercion and
//! explicit casts (constants folded so rendered SQL carries typed literals).

use sqlparser::ast;

use super::{Expr, UnaryOp, WhereError};
use crate::value::{Datum, SqlType};

pub(super) fn is_datetime(ty: &SqlType) -> bool {
    matches!(ty, SqlType::Date | SqlType::Time | SqlType::Timestamp | SqlType::TimestampTz | SqlType::Interval)
}

/// Types a filter cannot compare.
pub(super) fn comparable(ty: &SqlType, op: &str) -> Result<(), WhereError> {
    match ty {
        SqlType::Opaque(name) => Err(WhereError::Unsupported(format!(
            "the operator {op} on type {name} (cast the column to text, e.g. col::text)"
        ))),
        SqlType::Array(inner) => comparable(inner, op),
        _ => Ok(()),
    }
}

pub(super) fn common_type(a: &SqlType, b: &SqlType) -> Option<SqlType> {
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
pub(super) fn coerce(e: Expr, to: &SqlType) -> Result<Expr, WhereError> {
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
pub(super) fn cast(e: Expr, ty: SqlType) -> Result<Expr, WhereError> {
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
pub(super) fn numeric_operand(e: Expr, op: &str) -> Result<Expr, WhereError> {
    let e = if e.ty() == SqlType::Unknown { coerce(e, &SqlType::Numeric)? } else { e };
    let ty = e.ty();
    if !ty.is_numeric() {
        return Err(WhereError::Type(format!("operator does not exist: {op} {ty}")));
    }
    Ok(e)
}

pub(super) fn fold_negate(e: Expr) -> Result<Expr, WhereError> {
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

pub(super) fn array_const(items: Vec<Expr>) -> Result<Expr, WhereError> {
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

pub(super) fn cast_target(dt: &ast::DataType) -> Result<SqlType, WhereError> {
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
