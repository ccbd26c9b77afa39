//! PostgreSQL `numeric`: exact values, its special values, and its arithmetic rules (result
//! scales and rounding as `numeric.c` computes them), so filters on `numeric` columns select
//! exactly the rows PostgreSQL selects.

use std::cmp::Ordering;
use std::fmt;

use bigdecimal::num_bigint::{BigInt, Sign};
use bigdecimal::{BigDecimal, RoundingMode, Signed, ToPrimitive, Zero};

/// Largest decimal exponent accepted in input, far beyond any real column value.
const MAX_EXPONENT: i64 = 1000;
/// PostgreSQL's `NUMERIC_MIN_SIG_DIGITS`: a quotient carries at least this many digits.
const MIN_SIG_DIGITS: i64 = 16;
/// PostgreSQL's `NUMERIC_MAX_DISPLAY_SCALE`.
const MAX_DISPLAY_SCALE: i64 = 1000;

/// An exact decimal number with PostgreSQL's special values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decimal {
    NegInfinity,
    /// Value equality: `1.50` equals `1.5`; the scale only shapes division results.
    Finite(BigDecimal),
    Infinity,
    NaN,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NumericError {
    #[error("division by zero")]
    DivisionByZero,
    #[error("value out of range")]
    OutOfRange,
}

impl Decimal {
    pub fn parse(s: &str) -> Option<Decimal> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "nan" => return Some(Decimal::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Decimal::Infinity),
            "-infinity" | "-inf" => return Some(Decimal::NegInfinity),
            _ => {}
        }
        // bigdecimal accepts forms PostgreSQL rejects (`1_000`, hex); allow only digits.
        if !lower.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-')) {
            return None;
        }
        let value: BigDecimal = lower.parse().ok()?;
        let (_, scale) = value.as_bigint_and_exponent();
        if scale.abs() > MAX_EXPONENT * 2 {
            return None;
        }
        // PostgreSQL keeps no negative display scale: `1.5e2` is `150`.
        Some(Decimal::Finite(if scale < 0 { value.with_scale(0) } else { value }))
    }

    pub fn from_i64(v: i64) -> Decimal {
        Decimal::Finite(BigDecimal::from(v))
    }

    /// As `numeric::float8` converts: through the decimal text, correctly rounded.
    pub fn to_f64(&self) -> f64 {
        match self {
            Decimal::NaN => f64::NAN,
            Decimal::Infinity => f64::INFINITY,
            Decimal::NegInfinity => f64::NEG_INFINITY,
            Decimal::Finite(v) => v.to_plain_string().parse().unwrap_or(f64::NAN),
        }
    }

    /// As `numeric::int8` converts: rounding half away from zero.
    pub fn round_to_i64(&self) -> Option<i64> {
        match self {
            Decimal::Finite(v) => v.with_scale_round(0, RoundingMode::HalfUp).to_i64(),
            _ => None,
        }
    }

    pub fn add(&self, other: &Decimal) -> Decimal {
        use Decimal::*;
        match (self, other) {
            (NaN, _) | (_, NaN) | (Infinity, NegInfinity) | (NegInfinity, Infinity) => NaN,
            (Infinity, _) | (_, Infinity) => Infinity,
            (NegInfinity, _) | (_, NegInfinity) => NegInfinity,
            (Finite(a), Finite(b)) => Finite(a + b),
        }
    }

    pub fn neg(&self) -> Decimal {
        match self {
            Decimal::NaN => Decimal::NaN,
            Decimal::Infinity => Decimal::NegInfinity,
            Decimal::NegInfinity => Decimal::Infinity,
            Decimal::Finite(v) => Decimal::Finite(-v),
        }
    }

    pub fn sub(&self, other: &Decimal) -> Decimal {
        self.add(&other.neg())
    }

    pub fn abs(&self) -> Decimal {
        if self.signum() < 0 { self.neg() } else { self.clone() }
    }

    pub fn mul(&self, other: &Decimal) -> Decimal {
        use Decimal::*;
        match (self, other) {
            (NaN, _) | (_, NaN) => NaN,
            (Finite(a), Finite(b)) => Finite(a * b),
            (a, b) => match a.signum() * b.signum() {
                0 => NaN,
                s if s > 0 => Infinity,
                _ => NegInfinity,
            },
        }
    }

    /// Division with PostgreSQL's result scale (`select_div_scale`), rounded half away
    /// from zero as `div_var` rounds.
    pub fn div(&self, other: &Decimal) -> Result<Decimal, NumericError> {
        use Decimal::*;
        Ok(match (self, other) {
            (NaN, _) | (_, NaN) => NaN,
            (Infinity | NegInfinity, Infinity | NegInfinity) => NaN,
            (a @ (Infinity | NegInfinity), b) => match b.signum() {
                0 => return Err(NumericError::DivisionByZero),
                s if s > 0 => a.clone(),
                _ => a.neg(),
            },
            (Finite(_), Infinity | NegInfinity) => Finite(BigDecimal::zero()),
            (Finite(a), Finite(b)) => {
                if b.is_zero() {
                    return Err(NumericError::DivisionByZero);
                }
                let scale = div_scale(a, b);
                Finite(divide_rounded(a, b, scale))
            }
        })
    }

    /// Remainder with the sign of the dividend, as `numeric %` computes it.
    pub fn rem(&self, other: &Decimal) -> Result<Decimal, NumericError> {
        use Decimal::*;
        Ok(match (self, other) {
            (NaN, _) | (_, NaN) | (Infinity | NegInfinity, _) => NaN,
            (a @ Finite(_), Infinity | NegInfinity) => a.clone(),
            (Finite(a), Finite(b)) => {
                if b.is_zero() {
                    return Err(NumericError::DivisionByZero);
                }
                let quotient = divide_truncated(a, b);
                Finite(a - b * quotient)
            }
        })
    }

    fn signum(&self) -> i32 {
        match self {
            Decimal::NaN => 0,
            Decimal::Infinity => 1,
            Decimal::NegInfinity => -1,
            Decimal::Finite(v) => match v.sign() {
                Sign::Minus => -1,
                Sign::NoSign => 0,
                Sign::Plus => 1,
            },
        }
    }
}

/// The display scale PostgreSQL gives a value: never negative.
fn display_scale(v: &BigDecimal) -> i64 {
    v.as_bigint_and_exponent().1.max(0)
}

/// `(weight, first digit)` of a value in PostgreSQL's base-10000 digits; `(0, 0)` for zero.
fn base10000_head(v: &BigDecimal) -> (i64, u32) {
    if v.is_zero() {
        return (0, 0);
    }
    let (digits, scale) = v.as_bigint_and_exponent();
    let text = digits.magnitude().to_string();
    // Decimal exponent of the leading digit: v = d.ddd × 10^exp.
    let exp = text.len() as i64 - 1 - scale;
    let weight = exp.div_euclid(4);
    let head_len = (exp - weight * 4 + 1) as usize;
    let head: String = text.chars().chain(std::iter::repeat('0')).take(head_len).collect();
    (weight, head.parse().unwrap_or(0))
}

/// PostgreSQL's `select_div_scale`: enough digits for a sensible quotient.
fn div_scale(a: &BigDecimal, b: &BigDecimal) -> i64 {
    let (w1, d1) = base10000_head(a);
    let (w2, d2) = base10000_head(b);
    let mut qweight = w1 - w2;
    if d1 <= d2 {
        qweight -= 1;
    }
    (MIN_SIG_DIGITS - qweight * 4).max(display_scale(a)).max(display_scale(b)).clamp(0, MAX_DISPLAY_SCALE)
}

/// `a / b` exactly, as integers `num / den` scaled so the quotient has `scale` digits.
fn scaled_fraction(a: &BigDecimal, b: &BigDecimal, scale: i64) -> (BigInt, BigInt) {
    let (an, asc) = a.as_bigint_and_exponent();
    let (bn, bsc) = b.as_bigint_and_exponent();
    // a/b × 10^scale = an × 10^(bsc + scale - asc) / bn
    let shift = bsc + scale - asc;
    let ten = |n: i64| BigInt::from(10u8).pow(n.unsigned_abs() as u32);
    if shift >= 0 { (an * ten(shift), bn) } else { (an, bn * ten(shift)) }
}

fn divide_rounded(a: &BigDecimal, b: &BigDecimal, scale: i64) -> BigDecimal {
    let (num, den) = scaled_fraction(a, b, scale);
    let (mut q, r) = (&num / &den, &num % &den);
    if r.abs() * 2 >= den.abs() {
        q += if (num.sign() == Sign::Minus) == (den.sign() == Sign::Minus) { 1 } else { -1 };
    }
    BigDecimal::new(q, scale)
}

fn divide_truncated(a: &BigDecimal, b: &BigDecimal) -> BigDecimal {
    let (num, den) = scaled_fraction(a, b, 0);
    BigDecimal::new(num / den, 0)
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        fn rank(d: &Decimal) -> u8 {
            match d {
                Decimal::NegInfinity => 0,
                Decimal::Finite(_) => 1,
                Decimal::Infinity => 2,
                Decimal::NaN => 3,
            }
        }
        match (self, other) {
            (Decimal::Finite(a), Decimal::Finite(b)) => a.cmp(b),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decimal::NaN => f.write_str("NaN"),
            Decimal::Infinity => f.write_str("Infinity"),
            Decimal::NegInfinity => f.write_str("-Infinity"),
            Decimal::Finite(v) => f.write_str(&v.to_plain_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn values_compare_exactly() {
        assert_eq!(d("1.50"), d("1.5"));
        assert!(d("10") > d("9.999999999999999999999"));
        assert!(d("-2") < d("-1.5"));
        assert!(d("NaN") > d("Infinity") && d("Infinity") > d("1e100") && d("-inf") < d("-1e100"));
        assert_eq!(d("-0.0"), d("0"));
        assert_eq!(d("1.5e2"), d("150"));
        assert_eq!(d("1.5e2").to_string(), "150");
        assert_eq!(d("0.015").to_string(), "0.015");
        assert_eq!(d("1.50").to_string(), "1.50", "the display scale is kept");
        assert!(Decimal::parse("1_000").is_none() && Decimal::parse("0x10").is_none() && Decimal::parse("").is_none());
    }

    /// Expected values are PostgreSQL 15's answers.
    #[test]
    fn division_follows_postgres_scale_and_rounding() {
        let div = |a: &str, b: &str| d(a).div(&d(b)).unwrap().to_string();
        assert_eq!(div("1", "3"), "0.33333333333333333333");
        assert_eq!(div("2", "3"), "0.66666666666666666667");
        assert_eq!(div("10", "4"), "2.5000000000000000");
        assert_eq!(div("1.000", "3"), "0.33333333333333333333");
        assert_eq!(div("12345678", "7"), "1763668.285714285714");
        assert_eq!(div("99999", "3"), "33333.000000000000");
        assert_eq!(div("0.00012", "7"), "0.000017142857142857142857");
        assert_eq!(div("5.5", "0.11"), "50.0000000000000000");
        assert_eq!(div("-1", "3"), "-0.33333333333333333333");
        assert_eq!(div("1", "0.0003"), "3333.3333333333333333");
        assert_eq!(div("0", "5"), "0.00000000000000000000");
        assert_eq!(d("1").div(&d("0")), Err(NumericError::DivisionByZero));
        assert_eq!(div("5", "Infinity"), "0");
        assert_eq!(div("-Infinity", "2"), "-Infinity");
    }

    #[test]
    fn remainder_and_specials() {
        let rem = |a: &str, b: &str| d(a).rem(&d(b)).unwrap().to_string();
        assert_eq!(rem("7.5", "2"), "1.5");
        assert_eq!(rem("-7.5", "2"), "-1.5");
        assert_eq!(rem("7", "-3"), "1");
        assert_eq!(d("Infinity").add(&d("-Infinity")), Decimal::NaN);
        assert_eq!(d("Infinity").mul(&d("0")), Decimal::NaN);
        assert_eq!(d("-Infinity").mul(&d("-2")), Decimal::Infinity);
        assert_eq!(d("1.25").mul(&d("0.2")).to_string(), "0.250");
    }
}
