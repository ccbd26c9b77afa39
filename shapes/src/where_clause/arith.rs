//! Arithmetic on filter values with PostgreSQL's results and errors: integer overflow and
//! division by zero are errors, `float8` overflow is an error, `numeric` is exact, and date
//! arithmetic counts days.

use super::{ArithOp, EvalError, UnaryOp};
use crate::datetime::{
    Interval, date_in_range, date_is_finite, time_plus_interval, timestamp_difference, timestamp_is_finite,
    timestamp_plus_interval,
};
use crate::numeric::Decimal;
use crate::value::{Datum, SqlType};

fn error(message: &str) -> EvalError {
    EvalError::Value(message.to_string())
}

/// `l op r` for two non-null operands of the types the binder checked; NULL otherwise.
pub(super) fn binary(op: ArithOp, l: Datum, r: Datum) -> Result<Datum, EvalError> {
    Ok(match (l, r) {
        (Datum::Int(a), Datum::Int(b)) => Datum::Int(int(op, a, b)?),
        (Datum::Float(a), Datum::Float(b)) => Datum::Float(float(op, a, b)?),
        (Datum::Numeric(a), Datum::Numeric(b)) => Datum::Numeric(numeric(op, &a, &b)?),
        (Datum::Date(d), Datum::Int(n)) => Datum::Date(date_plus(d, if op == ArithOp::Sub { -n } else { n })?),
        (Datum::Int(n), Datum::Date(d)) => Datum::Date(date_plus(d, n)?),
        (Datum::Timestamp(t), Datum::Interval(i)) => Datum::Timestamp(moved(t, &signed(op, i)?)?),
        (Datum::TimestampTz(t), Datum::Interval(i)) => Datum::TimestampTz(moved(t, &signed(op, i)?)?),
        (Datum::Interval(i), Datum::Timestamp(t)) => Datum::Timestamp(moved(t, &i)?),
        (Datum::Interval(i), Datum::TimestampTz(t)) => Datum::TimestampTz(moved(t, &i)?),
        (Datum::Time(t), Datum::Interval(i)) => Datum::Time(time_plus_interval(t, &signed(op, i)?)),
        (Datum::Interval(i), Datum::Time(t)) => Datum::Time(time_plus_interval(t, &i)),
        (Datum::Interval(a), Datum::Interval(b)) => {
            Datum::Interval(a.checked_add(&signed(op, b)?).ok_or_else(|| error("interval out of range"))?)
        }
        (Datum::Timestamp(a), Datum::Timestamp(b)) | (Datum::TimestampTz(a), Datum::TimestampTz(b)) => {
            if !timestamp_is_finite(a) || !timestamp_is_finite(b) {
                return Err(error("cannot subtract infinite timestamps"));
            }
            Datum::Interval(timestamp_difference(a, b).ok_or_else(|| error("interval out of range"))?)
        }
        (Datum::Date(a), Datum::Date(b)) => {
            if !date_is_finite(a) || !date_is_finite(b) {
                return Err(error("cannot subtract infinite dates"));
            }
            Datum::Int(a - b)
        }
        _ => Datum::Null,
    })
}

/// The interval to add: negated for `-`.
fn signed(op: ArithOp, i: Interval) -> Result<Interval, EvalError> {
    if op == ArithOp::Sub { i.checked_neg().ok_or_else(|| error("interval out of range")) } else { Ok(i) }
}

fn moved(t: i64, i: &Interval) -> Result<i64, EvalError> {
    timestamp_plus_interval(t, i).ok_or_else(|| error("timestamp out of range"))
}

fn int(op: ArithOp, a: i64, b: i64) -> Result<i64, EvalError> {
    let overflow = || error("integer out of range");
    Ok(match op {
        ArithOp::Add => a.checked_add(b).ok_or_else(overflow)?,
        ArithOp::Sub => a.checked_sub(b).ok_or_else(overflow)?,
        ArithOp::Mul => a.checked_mul(b).ok_or_else(overflow)?,
        ArithOp::Div | ArithOp::Mod if b == 0 => return Err(error("division by zero")),
        ArithOp::Div => a.checked_div(b).ok_or_else(overflow)?,
        ArithOp::Mod => a.checked_rem(b).unwrap_or(0),
        ArithOp::BitAnd => a & b,
        ArithOp::BitOr => a | b,
        ArithOp::BitXor => a ^ b,
        ArithOp::Pow => return Err(error("integer ^ is computed as float8")),
    })
}

/// `float8` operators: infinities in give infinities out, but a finite computation that
/// overflows or underflows is an error, as in PostgreSQL.
fn float(op: ArithOp, a: f64, b: f64) -> Result<f64, EvalError> {
    let result = match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div => {
            if b == 0.0 && !a.is_nan() {
                return Err(error("division by zero"));
            }
            a / b
        }
        ArithOp::Pow => {
            if a == 0.0 && b < 0.0 {
                return Err(error("zero raised to a negative power is undefined"));
            }
            if a < 0.0 && b.is_finite() && b.fract() != 0.0 {
                return Err(error("a negative number raised to a non-integer power yields a complex result"));
            }
            a.powf(b)
        }
        ArithOp::Mod | ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor => {
            return Err(error("operator is not defined for float8"));
        }
    };
    if result.is_infinite() && a.is_finite() && b.is_finite() {
        return Err(error("value out of range: overflow"));
    }
    let underflow = match op {
        ArithOp::Mul => result == 0.0 && a != 0.0 && b != 0.0,
        ArithOp::Div => result == 0.0 && a != 0.0 && b.is_finite(),
        ArithOp::Pow => result == 0.0 && a != 0.0 && b.is_finite(),
        _ => false,
    };
    if underflow {
        return Err(error("value out of range: underflow"));
    }
    Ok(result)
}

fn numeric(op: ArithOp, a: &Decimal, b: &Decimal) -> Result<Decimal, EvalError> {
    let value_error = |e: crate::numeric::NumericError| EvalError::Value(e.to_string());
    Ok(match op {
        ArithOp::Add => a.add(b),
        ArithOp::Sub => a.sub(b),
        ArithOp::Mul => a.mul(b),
        ArithOp::Div => a.div(b).map_err(value_error)?,
        ArithOp::Mod => a.rem(b).map_err(value_error)?,
        ArithOp::Pow | ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor => {
            return Err(error("operator is not defined for numeric here"));
        }
    })
}

fn date_plus(days: i64, n: i64) -> Result<i64, EvalError> {
    if !date_is_finite(days) {
        return Ok(days);
    }
    days.checked_add(n).filter(|d| date_in_range(*d)).ok_or_else(|| error("date out of range"))
}

/// A prefix operator on a non-null operand; NULL stays NULL.
pub(super) fn unary(op: UnaryOp, v: Datum) -> Result<Datum, EvalError> {
    let overflow = || error("integer out of range");
    Ok(match (op, v) {
        (_, Datum::Null) => Datum::Null,
        (UnaryOp::Neg, Datum::Int(i)) => Datum::Int(i.checked_neg().ok_or_else(overflow)?),
        (UnaryOp::Abs, Datum::Int(i)) => Datum::Int(i.checked_abs().ok_or_else(overflow)?),
        (UnaryOp::BitNot, Datum::Int(i)) => Datum::Int(!i),
        (UnaryOp::Neg, Datum::Float(f)) => Datum::Float(-f),
        (UnaryOp::Abs, Datum::Float(f)) => Datum::Float(f.abs()),
        (UnaryOp::Sqrt, Datum::Float(f)) => {
            if f < 0.0 {
                return Err(error("cannot take square root of a negative number"));
            }
            Datum::Float(f.sqrt())
        }
        (UnaryOp::Cbrt, Datum::Float(f)) => Datum::Float(f.cbrt()),
        (UnaryOp::Neg, Datum::Numeric(d)) => Datum::Numeric(d.neg()),
        (UnaryOp::Neg, Datum::Interval(i)) => {
            Datum::Interval(i.checked_neg().ok_or_else(|| error("interval out of range"))?)
        }
        (UnaryOp::Abs, Datum::Numeric(d)) => Datum::Numeric(d.abs()),
        (op, v) => return Err(EvalError::Value(format!("operator {} is not defined for {v:?}", op.sql()))),
    })
}

/// `||`: text concatenation (NULL if either side is NULL) or PostgreSQL's array
/// concatenation, where a NULL array counts as empty and a NULL element is still added.
pub(super) fn concat(left_ty: &SqlType, right_ty: &SqlType, l: Datum, r: Datum) -> Datum {
    let elements = |d: Datum| match d {
        Datum::Array(items) => items,
        _ => Vec::new(),
    };
    match (matches!(left_ty, SqlType::Array(_)), matches!(right_ty, SqlType::Array(_))) {
        (true, true) => match (l, r) {
            (Datum::Null, other) | (other, Datum::Null) => other,
            (l, r) => {
                let mut items = elements(l);
                items.extend(elements(r));
                Datum::Array(items)
            }
        },
        (true, false) => {
            let mut items = elements(l);
            items.push(r);
            Datum::Array(items)
        }
        (false, true) => {
            let mut items = vec![l];
            items.extend(elements(r));
            Datum::Array(items)
        }
        (false, false) => match (l, r) {
            (Datum::Text(a), Datum::Text(b)) => Datum::Text(a + &b),
            _ => Datum::Null,
        },
    }
}
