//! Typed SQL values for evaluating row filters: [`SqlType`] classes and [`Datum`]s parsed from
//! PostgreSQL's text output (ISO `DateStyle`, UTC `TimeZone`, the settings every gateway
//! session pins), compared with PostgreSQL's semantics for each class.

use std::cmp::Ordering;
use std::fmt;

pub use crate::datetime::Interval;
use crate::datetime::{
    date_to_timestamp, format_date, format_time, format_timestamp, parse_date, parse_time, parse_timestamp,
    timestamp_to_date,
};
pub use crate::numeric::Decimal;

/// The type classes a row filter can compute with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SqlType {
    Bool,
    /// int2, int4, int8 (and oid-like integers).
    Int,
    /// float4, float8.
    Float,
    Numeric,
    /// text, varchar, name, citext-less character types.
    Text,
    /// bpchar: compares without trailing spaces.
    Char,
    Uuid,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Array(Box<SqlType>),
    /// A type filters cannot compute with (json, bytea, enums, …); only `IS [NOT] NULL` works.
    Opaque(String),
    /// An untyped string literal or parameter, typed by its context as PostgreSQL does.
    Unknown,
}

impl SqlType {
    /// The class of a PostgreSQL type given its `typname` (element name for arrays).
    pub fn from_pg_name(name: &str, dims: u32) -> SqlType {
        let base = match name {
            "bool" => SqlType::Bool,
            "int2" | "int4" | "int8" | "oid" | "xid" => SqlType::Int,
            "float4" | "float8" => SqlType::Float,
            "numeric" => SqlType::Numeric,
            "text" | "varchar" | "name" => SqlType::Text,
            "bpchar" => SqlType::Char,
            "uuid" => SqlType::Uuid,
            "date" => SqlType::Date,
            "time" => SqlType::Time,
            "timestamp" => SqlType::Timestamp,
            "timestamptz" => SqlType::TimestampTz,
            "interval" => SqlType::Interval,
            other => SqlType::Opaque(other.to_string()),
        };
        if dims > 0 { SqlType::Array(Box::new(base)) } else { base }
    }

    /// The PostgreSQL name used when rendering a cast to this type.
    pub fn sql_name(&self) -> String {
        match self {
            SqlType::Bool => "bool".into(),
            SqlType::Int => "int8".into(),
            SqlType::Float => "float8".into(),
            SqlType::Numeric => "numeric".into(),
            SqlType::Text | SqlType::Unknown => "text".into(),
            SqlType::Char => "bpchar".into(),
            SqlType::Uuid => "uuid".into(),
            SqlType::Date => "date".into(),
            SqlType::Time => "time".into(),
            SqlType::Timestamp => "timestamp".into(),
            SqlType::TimestampTz => "timestamptz".into(),
            SqlType::Interval => "interval".into(),
            SqlType::Array(inner) => format!("{}[]", inner.sql_name()),
            SqlType::Opaque(name) => name.clone(),
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, SqlType::Int | SqlType::Float | SqlType::Numeric)
    }

    pub fn is_textual(&self) -> bool {
        matches!(self, SqlType::Text | SqlType::Char | SqlType::Unknown)
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql_name())
    }
}

/// A value of one of the [`SqlType`] classes.
#[derive(Clone, Debug, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Numeric(Decimal),
    Text(String),
    Uuid(u128),
    /// Days since 2000-01-01.
    Date(i64),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 2000-01-01 00:00 (UTC for timestamptz).
    Timestamp(i64),
    TimestampTz(i64),
    Interval(Interval),
    Array(Vec<Datum>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("invalid input syntax for type {ty}: \"{input}\"")]
pub struct ParseError {
    pub ty: String,
    pub input: String,
}

impl Datum {
    /// Parses PostgreSQL text output (or input syntax, for literals) as a value of `ty`.
    pub fn parse(text: &str, ty: &SqlType) -> Result<Datum, ParseError> {
        let bad = || ParseError { ty: ty.sql_name(), input: text.to_string() };
        Ok(match ty {
            SqlType::Bool => match text.trim().to_ascii_lowercase().as_str() {
                "t" | "true" | "yes" | "on" | "1" | "y" => Datum::Bool(true),
                "f" | "false" | "no" | "off" | "0" | "n" => Datum::Bool(false),
                _ => return Err(bad()),
            },
            SqlType::Int => Datum::Int(text.trim().parse().map_err(|_| bad())?),
            SqlType::Float => Datum::Float(parse_float(text.trim()).ok_or_else(bad)?),
            SqlType::Numeric => Datum::Numeric(Decimal::parse(text.trim()).ok_or_else(bad)?),
            SqlType::Text | SqlType::Unknown => Datum::Text(text.to_string()),
            SqlType::Char => Datum::Text(text.trim_end_matches(' ').to_string()),
            SqlType::Uuid => Datum::Uuid(parse_uuid(text.trim()).ok_or_else(bad)?),
            SqlType::Date => Datum::Date(parse_date(text.trim()).ok_or_else(bad)?),
            SqlType::Time => Datum::Time(parse_time(text.trim()).ok_or_else(bad)?.0),
            SqlType::Timestamp => Datum::Timestamp(parse_timestamp(text.trim(), false).ok_or_else(bad)?),
            SqlType::TimestampTz => Datum::TimestampTz(parse_timestamp(text.trim(), true).ok_or_else(bad)?),
            SqlType::Interval => Datum::Interval(Interval::parse(text).ok_or_else(bad)?),
            SqlType::Array(inner) => Datum::Array(
                parse_array(text)
                    .ok_or_else(bad)?
                    .into_iter()
                    .map(|e| match e {
                        None => Ok(Datum::Null),
                        Some(s) => Datum::parse(&s, inner),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            SqlType::Opaque(_) => return Err(bad()),
        })
    }

    /// PostgreSQL input syntax for this value (without quotes or cast).
    pub fn to_sql_text(&self) -> String {
        match self {
            Datum::Null => "NULL".into(),
            Datum::Bool(b) => b.to_string(),
            Datum::Int(i) => i.to_string(),
            Datum::Float(f) => format_float(*f),
            Datum::Numeric(d) => d.to_string(),
            Datum::Text(s) => s.clone(),
            Datum::Uuid(u) => format_uuid(*u),
            Datum::Date(d) => format_date(*d),
            Datum::Time(t) => format_time(*t),
            Datum::Timestamp(t) => format_timestamp(*t),
            Datum::TimestampTz(t) => format!("{}+00", format_timestamp(*t)),
            Datum::Interval(i) => i.format(),
            Datum::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|d| match d {
                        Datum::Null => "NULL".to_string(),
                        other => {
                            let s = other.to_sql_text();
                            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                        }
                    })
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
        }
    }

    /// Converts to another class, as an implicit or explicit PostgreSQL cast would.
    pub fn cast(self, to: &SqlType) -> Result<Datum, ParseError> {
        if matches!(self, Datum::Null) {
            return Ok(Datum::Null);
        }
        let bad = |d: &Datum| ParseError { ty: to.sql_name(), input: d.to_sql_text() };
        Ok(match (self, to) {
            (d @ Datum::Int(_), SqlType::Int) => d,
            (Datum::Int(i), SqlType::Float) => Datum::Float(i as f64),
            (Datum::Int(i), SqlType::Numeric) => Datum::Numeric(Decimal::from_i64(i)),
            (Datum::Float(f), SqlType::Int) => {
                let r = f.round_ties_even();
                if !r.is_finite() || r < i64::MIN as f64 || r >= i64::MAX as f64 {
                    return Err(bad(&Datum::Float(f)));
                }
                Datum::Int(r as i64)
            }
            (d @ Datum::Float(_), SqlType::Float) => d,
            (Datum::Numeric(d), SqlType::Float) => Datum::Float(d.to_f64()),
            (Datum::Float(f), SqlType::Numeric) => {
                Datum::Numeric(Decimal::parse(&format_float(f)).ok_or_else(|| bad(&Datum::Float(f)))?)
            }
            (d @ Datum::Numeric(_), SqlType::Numeric) => d,
            (Datum::Numeric(d), SqlType::Int) => {
                let v = Datum::Numeric(d.clone());
                Datum::Int(d.round_to_i64().ok_or_else(|| bad(&v))?)
            }
            (Datum::Date(d), SqlType::Timestamp) => Datum::Timestamp(date_to_timestamp(d)),
            (Datum::Date(d), SqlType::TimestampTz) => Datum::TimestampTz(date_to_timestamp(d)),
            (Datum::Timestamp(t), SqlType::TimestampTz) => Datum::TimestampTz(t),
            (Datum::TimestampTz(t), SqlType::Timestamp) => Datum::Timestamp(t),
            (Datum::Timestamp(t) | Datum::TimestampTz(t), SqlType::Date) => Datum::Date(timestamp_to_date(t)),
            (Datum::Text(s), SqlType::Char) => Datum::Text(s.trim_end_matches(' ').to_string()),
            (d, SqlType::Text | SqlType::Unknown) => Datum::Text(d.to_sql_text()),
            (Datum::Text(s), ty) => Datum::parse(&s, ty)?,
            (d, ty) if d.class_matches(ty) => d,
            (d, _) => return Err(bad(&d)),
        })
    }

    fn class_matches(&self, ty: &SqlType) -> bool {
        matches!(
            (self, ty),
            (Datum::Bool(_), SqlType::Bool)
                | (Datum::Uuid(_), SqlType::Uuid)
                | (Datum::Date(_), SqlType::Date)
                | (Datum::Time(_), SqlType::Time)
                | (Datum::Timestamp(_), SqlType::Timestamp)
                | (Datum::TimestampTz(_), SqlType::TimestampTz)
                | (Datum::Interval(_), SqlType::Interval)
                | (Datum::Array(_), SqlType::Array(_))
        )
    }

    /// PostgreSQL's ordering of two non-null values of the same class; `None` for NULLs.
    pub fn compare(&self, other: &Datum) -> Option<Ordering> {
        use Datum::*;
        Some(match (self, other) {
            (Null, _) | (_, Null) => return None,
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => float_cmp(*a, *b),
            (Numeric(a), Numeric(b)) => a.cmp(b),
            (Text(a), Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Uuid(a), Uuid(b)) => a.cmp(b),
            (Date(a), Date(b)) | (Time(a), Time(b)) => a.cmp(b),
            (Timestamp(a), Timestamp(b)) | (TimestampTz(a), TimestampTz(b)) => a.cmp(b),
            (Interval(a), Interval(b)) => a.compare(b),
            (Array(a), Array(b)) => {
                for (x, y) in a.iter().zip(b) {
                    // PostgreSQL sorts NULL elements after non-null ones.
                    let o = match (x, y) {
                        (Null, Null) => Ordering::Equal,
                        (Null, _) => Ordering::Greater,
                        (_, Null) => Ordering::Less,
                        _ => x.compare(y)?,
                    };
                    if o != Ordering::Equal {
                        return Some(o);
                    }
                }
                a.len().cmp(&b.len())
            }
            _ => return None,
        })
    }
}

/// PostgreSQL orders NaN above every other float and equal to itself.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "inf" | "+infinity" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        format!("{f:?}")
    }
}

fn parse_uuid(s: &str) -> Option<u128> {
    let s = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() - hex.len() > 4 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

fn format_uuid(u: u128) -> String {
    let h = format!("{u:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Splits a one-dimensional PostgreSQL array literal into its elements (`None` = NULL).
pub fn parse_array(s: &str) -> Option<Vec<Option<String>>> {
    let s = s.trim();
    // A leading dimension decoration (`[0:2]={…}`) is allowed by PostgreSQL's output.
    let s = match s.find("={") {
        Some(i) if s.starts_with('[') => &s[i + 1..],
        _ => s,
    };
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None; // nested arrays are not supported in filters
                }
                if c == '\\' {
                    chars.next();
                    item.push(chars.next()?);
                    continue;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        out.push(if !quoted && item.eq_ignore_ascii_case("null") { None } else { Some(item) });
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_split_like_postgres_prints_them() {
        assert_eq!(
            parse_array(r#"{1,NULL,"a b","q\"x",""}"#).unwrap(),
            vec![Some("1".into()), None, Some("a b".into()), Some("q\"x".into()), Some("".into())]
        );
        assert_eq!(parse_array("{}").unwrap(), Vec::<Option<String>>::new());
        assert!(parse_array("{{1,2},{3,4}}").is_none());
    }

    #[test]
    fn uuids_normalize() {
        let a = Datum::parse("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", &SqlType::Uuid).unwrap();
        assert_eq!(a.to_sql_text(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    }
}
