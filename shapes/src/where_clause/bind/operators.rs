//! Arithmetic, date/time arithmetic, time zones and concatenation, typed as PostgreSQL types them.

use crate::value::{Datum, SqlType};
use crate::where_clause::coerce::{cast, coerce, is_datetime, numeric_operand};
use crate::where_clause::{ArithOp, Expr, Func, WhereError};

use super::Binder;

impl Binder<'_> {
    /// PostgreSQL's operator choice for arithmetic: integers stay integers (but `^` is
    /// float8), mixed numbers promote; dates, times and intervals as [`Self::datetime_arith`].
    pub(super) fn arith(&self, op: ArithOp, l: Expr, r: Expr) -> Result<Expr, WhereError> {
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
    pub(super) fn datetime_arith(&self, op: ArithOp, l: Expr, r: Expr) -> Result<Expr, WhereError> {
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
    pub(super) fn timezone(&self, zone: Expr, ts: Expr) -> Result<Expr, WhereError> {
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
    pub(super) fn concat(&self, l: Expr, r: Expr) -> Result<Expr, WhereError> {
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
    pub(super) fn array_concat(&self, l: Expr, r: Expr, (l_array, r_array): (bool, bool)) -> Result<Expr, WhereError> {
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
}
