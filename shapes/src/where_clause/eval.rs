//! Evaluates a bound filter on one row with SQL's three-valued logic: `Datum::Null` is
//! UNKNOWN, and only `Bool(true)` selects a row.

use std::cmp::Ordering;

use super::{ArrayOp, CmpOp, EvalError, Expr, Func, Membership, Subquery, arith};
use crate::value::{Datum, SqlType};

/// Read access to a row's column values as PostgreSQL text output.
pub trait Row {
    /// `Ok(None)` is SQL NULL; `Err` means the value is not available (an unchanged TOAST
    /// value the stream did not send).
    fn text(&self, column: usize) -> Result<Option<&str>, EvalError>;

    /// Whether `probe` is among the values `subquery` yields at this row's position in the
    /// stream. Only rows evaluated beside maintained sets can say.
    fn membership(&self, subquery: &Subquery, probe: &[Datum]) -> Result<Membership, EvalError> {
        let _ = (subquery, probe);
        Err(EvalError::Value("a subquery cannot be evaluated here: no maintained sets".into()))
    }
}

impl Expr {
    /// Whether the row is in the filter (`true`), out, or unknown (both out).
    pub fn matches<R: Row + ?Sized>(&self, row: &R) -> Result<bool, EvalError> {
        Ok(matches!(self.eval(row)?, Datum::Bool(true)))
    }

    pub fn eval<R: Row + ?Sized>(&self, row: &R) -> Result<Datum, EvalError> {
        Ok(match self {
            Expr::Column { index, ty, .. } => match row.text(*index)? {
                None => Datum::Null,
                Some(text) => match ty {
                    SqlType::Opaque(_) => Datum::Text(text.to_string()),
                    ty => Datum::parse(text, ty).map_err(|e| EvalError::Value(e.to_string()))?,
                },
            },
            Expr::Const { value, .. } => value.clone(),
            Expr::Not(e) => match e.eval(row)? {
                Datum::Bool(b) => Datum::Bool(!b),
                _ => Datum::Null,
            },
            Expr::And(terms) => {
                let mut unknown = false;
                for t in terms {
                    match t.eval(row)? {
                        Datum::Bool(false) => return Ok(Datum::Bool(false)),
                        Datum::Bool(true) => {}
                        _ => unknown = true,
                    }
                }
                if unknown { Datum::Null } else { Datum::Bool(true) }
            }
            Expr::Or(terms) => {
                let mut unknown = false;
                for t in terms {
                    match t.eval(row)? {
                        Datum::Bool(true) => return Ok(Datum::Bool(true)),
                        Datum::Bool(false) => {}
                        _ => unknown = true,
                    }
                }
                if unknown { Datum::Null } else { Datum::Bool(false) }
            }
            Expr::Compare { op, left, right } => compare(*op, &left.eval(row)?, &right.eval(row)?),
            Expr::IsNull { expr, negated } => Datum::Bool((expr.eval(row)? == Datum::Null) != *negated),
            Expr::IsBool { expr, value, negated } => {
                let v = match expr.eval(row)? {
                    Datum::Bool(b) => Some(b),
                    _ => None,
                };
                Datum::Bool((v == *value) != *negated)
            }
            Expr::Distinct { left, right, negated } => {
                let (l, r) = (left.eval(row)?, right.eval(row)?);
                let same = match (&l, &r) {
                    (Datum::Null, Datum::Null) => true,
                    (Datum::Null, _) | (_, Datum::Null) => false,
                    _ => l.compare(&r) == Some(Ordering::Equal),
                };
                Datum::Bool(same == *negated)
            }
            Expr::InList { expr, list, negated } => {
                let x = expr.eval(row)?;
                let mut result = Datum::Bool(false);
                for item in list {
                    match compare(CmpOp::Eq, &x, &item.eval(row)?) {
                        Datum::Bool(true) => {
                            result = Datum::Bool(true);
                            break;
                        }
                        Datum::Bool(false) => {}
                        _ => result = Datum::Null,
                    }
                }
                negate_if(result, *negated)
            }
            Expr::Like { expr, pattern, case_insensitive, negated, escape } => {
                match (expr.eval(row)?, pattern.eval(row)?) {
                    (Datum::Text(s), Datum::Text(p)) => {
                        let hit = if *case_insensitive {
                            like(&s.to_lowercase(), &p.to_lowercase(), *escape)?
                        } else {
                            like(&s, &p, *escape)?
                        };
                        Datum::Bool(hit != *negated)
                    }
                    _ => Datum::Null,
                }
            }
            Expr::Arith { op, left, right, .. } => arith::binary(*op, left.eval(row)?, right.eval(row)?)?,
            Expr::Unary { op, expr, .. } => arith::unary(*op, expr.eval(row)?)?,
            Expr::Concat { left, right, .. } => {
                arith::concat(&left.ty(), &right.ty(), left.eval(row)?, right.eval(row)?)
            }
            Expr::Func { func, args, .. } => function(*func, args, row)?,
            Expr::Cast { expr, ty } => expr.eval(row)?.cast(ty).map_err(|e| EvalError::Value(e.to_string()))?,
            Expr::ArraySet { op, left, right } => match (left.eval(row)?, right.eval(row)?) {
                (Datum::Array(a), Datum::Array(b)) => Datum::Bool(array_set(*op, &a, &b)),
                _ => Datum::Null,
            },
            Expr::InSubquery { probe, subquery, negated } => {
                let values = probe.iter().map(|p| p.eval(row)).collect::<Result<Vec<_>, _>>()?;
                match row.membership(subquery, &values)? {
                    Membership::In => Datum::Bool(!negated),
                    Membership::Out => Datum::Bool(*negated),
                    Membership::Unknown => Datum::Null,
                }
            }
            Expr::Quantified { op, left, array, all } => {
                let l = left.eval(row)?;
                match array.eval(row)? {
                    Datum::Array(items) => {
                        let mut unknown = false;
                        let mut decided = None;
                        for item in &items {
                            match compare(*op, &l, item) {
                                Datum::Bool(b) if b != *all => {
                                    decided = Some(b);
                                    break;
                                }
                                Datum::Bool(_) => {}
                                _ => unknown = true,
                            }
                        }
                        match decided {
                            Some(b) => Datum::Bool(b),
                            None if unknown => Datum::Null,
                            None => Datum::Bool(*all),
                        }
                    }
                    _ => Datum::Null,
                }
            }
        })
    }
}

/// PostgreSQL's array containment and overlap: elements compare with `=`, so NULL elements
/// never match, and duplicates and dimensions do not matter.
fn array_set(op: ArrayOp, a: &[Datum], b: &[Datum]) -> bool {
    let has = |xs: &[Datum], x: &Datum| xs.iter().any(|y| x.compare(y) == Some(Ordering::Equal));
    match op {
        ArrayOp::Contains => b.iter().all(|x| has(a, x)),
        ArrayOp::ContainedBy => a.iter().all(|x| has(b, x)),
        ArrayOp::Overlaps => a.iter().any(|x| has(b, x)),
    }
}

fn negate_if(d: Datum, negated: bool) -> Datum {
    match d {
        Datum::Bool(b) => Datum::Bool(b != negated),
        other => other,
    }
}

fn compare(op: CmpOp, l: &Datum, r: &Datum) -> Datum {
    match l.compare(r) {
        None => Datum::Null,
        Some(o) => Datum::Bool(match op {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::NotEq => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::LtEq => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::GtEq => o != Ordering::Less,
        }),
    }
}

fn function<R: Row + ?Sized>(func: Func, args: &[Expr], row: &R) -> Result<Datum, EvalError> {
    Ok(match func {
        Func::Lower | Func::Upper => match args[0].eval(row)? {
            Datum::Text(s) => Datum::Text(if func == Func::Lower { s.to_lowercase() } else { s.to_uppercase() }),
            _ => Datum::Null,
        },
        Func::Concat => {
            let mut out = String::new();
            for a in args {
                if let Datum::Text(s) = a.eval(row)? {
                    out.push_str(&s);
                }
            }
            Datum::Text(out)
        }
        Func::Coalesce => {
            for a in args {
                let v = a.eval(row)?;
                if v != Datum::Null {
                    return Ok(v);
                }
            }
            Datum::Null
        }
        Func::Greatest | Func::Least => {
            // NULL arguments are ignored, as in PostgreSQL.
            let mut best: Option<Datum> = None;
            for a in args {
                let v = a.eval(row)?;
                if v == Datum::Null {
                    continue;
                }
                let better = match &best {
                    None => true,
                    Some(b) => {
                        let o = v.compare(b);
                        if func == Func::Greatest { o == Some(Ordering::Greater) } else { o == Some(Ordering::Less) }
                    }
                };
                if better {
                    best = Some(v);
                }
            }
            best.unwrap_or(Datum::Null)
        }
        Func::JustifyDays | Func::JustifyHours | Func::JustifyInterval => match args[0].eval(row)? {
            Datum::Interval(iv) => Datum::Interval(
                match func {
                    Func::JustifyDays => iv.justify_days(),
                    Func::JustifyHours => iv.justify_hours(),
                    _ => iv.justify_interval(),
                }
                .ok_or_else(|| EvalError::Value("interval out of range".into()))?,
            ),
            _ => Datum::Null,
        },
        Func::Timezone => {
            let offset = match args[0].eval(row)? {
                Datum::Interval(iv) => iv.micros,
                _ => 0, // the binder admits only UTC names
            };
            let shift = |t: i64, by: i64| {
                if !crate::datetime::timestamp_is_finite(t) {
                    return Ok(t);
                }
                t.checked_add(by).ok_or_else(|| EvalError::Value("timestamp out of range".into()))
            };
            match args[1].eval(row)? {
                Datum::TimestampTz(t) => Datum::Timestamp(shift(t, offset)?),
                Datum::Timestamp(t) => Datum::TimestampTz(shift(t, -offset)?),
                _ => Datum::Null,
            }
        }
        // Arrays here have one dimension; an empty array has none (NULL).
        Func::ArrayNdims => match args[0].eval(row)? {
            Datum::Array(items) if !items.is_empty() => Datum::Int(1),
            _ => Datum::Null,
        },
    })
}

/// SQL `LIKE`: `%` matches any run, `_` one character, and the escape character makes the
/// next one literal. A pattern ending in the escape character is an error, as in PostgreSQL.
fn like(s: &str, p: &str, escape: Option<char>) -> Result<bool, EvalError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut pattern = Vec::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        pattern.push(match c {
            c if Some(c) == escape => Tok::Lit(
                chars
                    .next()
                    .ok_or_else(|| EvalError::Value("LIKE pattern must not end with escape character".into()))?,
            ),
            '%' => Tok::Any,
            '_' => Tok::One,
            c => Tok::Lit(c),
        });
    }
    let s: Vec<char> = s.chars().collect();
    // Iterative matcher that backtracks to the last `%`.
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match pattern.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(Tok::One) => {
                (si, pi) = (si + 1, pi + 1);
                continue;
            }
            Some(Tok::Lit(c)) if *c == s[si] => {
                (si, pi) = (si + 1, pi + 1);
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, ss)) => {
                (pi, si) = (sp + 1, ss + 1);
                star = Some((sp, ss + 1));
            }
            None => return Ok(false),
        }
    }
    while pattern.get(pi) == Some(&Tok::Any) {
        pi += 1;
    }
    Ok(pi == pattern.len())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::where_clause::{BindOptions, parse_where};

    struct TextRow(Vec<Option<&'static str>>);
    impl Row for TextRow {
        fn text(&self, column: usize) -> Result<Option<&str>, EvalError> {
            Ok(self.0.get(column).copied().flatten())
        }
    }

    fn check(filter: &str, row: Vec<Option<&'static str>>) -> Datum {
        let table = crate::where_clause::fixture::table();
        let e = parse_where(filter, &table, &HashMap::new(), BindOptions { text_sorts_bytewise: true }).unwrap();
        e.eval(&TextRow(row)).unwrap()
    }

    fn row() -> Vec<Option<&'static str>> {
        vec![
            Some("7"),
            Some("Hello"),
            Some("10.50"),
            Some("t"),
            Some("{a,\"b c\",NULL}"),
            Some("2024-03-01"),
            Some("ok"),
            None,
        ]
    }

    #[test]
    fn three_valued_logic_follows_sql() {
        assert_eq!(check("id = 7", row()), Datum::Bool(true));
        assert_eq!(check("\"Org\" = 'x'", row()), Datum::Null);
        assert_eq!(check("\"Org\" = 'x' OR id = 7", row()), Datum::Bool(true));
        assert_eq!(check("\"Org\" = 'x' AND id = 7", row()), Datum::Null);
        assert_eq!(check("\"Org\" = 'x' AND id = 8", row()), Datum::Bool(false));
        assert_eq!(check("NOT (\"Org\" = 'x')", row()), Datum::Null);
        assert_eq!(check("id NOT IN (1, NULL)", row()), Datum::Null);
        assert_eq!(check("id IN (7, NULL)", row()), Datum::Bool(true));
        assert_eq!(check("\"Org\" IS NULL", row()), Datum::Bool(true));
        assert_eq!(check("(\"Org\" = 'x') IS UNKNOWN", row()), Datum::Bool(true));
        assert_eq!(check("\"Org\" IS DISTINCT FROM NULL", row()), Datum::Bool(false));
    }

    #[test]
    fn typed_comparisons() {
        assert_eq!(check("price = 10.5", row()), Datum::Bool(true));
        assert_eq!(check("price > 10.499999999999999999", row()), Datum::Bool(true));
        assert_eq!(check("id > 6.5", row()), Datum::Bool(true));
        assert_eq!(check("done", row()), Datum::Bool(true));
        assert_eq!(check("due BETWEEN '2024-01-01' AND '2024-12-31'", row()), Datum::Bool(true));
        assert_eq!(check("due > TIMESTAMP '2024-03-01 00:00:01'", row()), Datum::Bool(false));
        assert_eq!(check("'b c' = ANY(tags)", row()), Datum::Bool(true));
        assert_eq!(check("'z' = ANY(tags)", row()), Datum::Null);
        assert_eq!(check("'z' <> ALL(ARRAY['x','y'])", row()), Datum::Bool(true));
        assert_eq!(check("mood::text = 'ok'", row()), Datum::Bool(true));
        assert_eq!(check("id>-8 AND NOT id<-1", row()), Datum::Bool(true), "`>-` reads as `> -`, like PostgreSQL");
        assert_eq!(check("tags @> ARRAY['a']", row()), Datum::Bool(true));
        assert_eq!(check("tags @> '{a,z}'", row()), Datum::Bool(false));
        assert_eq!(check("tags <@ '{a,b c,d}'", row()), Datum::Bool(false), "the NULL element is in no array");
        assert_eq!(check("tags && ARRAY['z','b c']", row()), Datum::Bool(true));
        assert_eq!(check("id % 4 = 3 AND id * 2 = 14 AND id / 2 = 3", row()), Datum::Bool(true));
    }

    #[test]
    fn like_matches_sql_patterns() {
        let bs = Some('\\');
        assert!(like("hello", "h%o", bs).unwrap());
        assert!(like("hello", "_ello", bs).unwrap());
        assert!(!like("hello", "h_o", bs).unwrap());
        assert!(like("50%", "50\\%", bs).unwrap());
        assert!(!like("500", "50\\%", bs).unwrap());
        assert!(like("", "%", bs).unwrap());
        assert!(like("a%b", "a%%b", bs).unwrap());
        assert!(like("50%", "50!%", Some('!')).unwrap());
        assert!(like("a\\b", "a\\b", None).unwrap(), "ESCAPE '' makes backslash ordinary");
        assert!(like("50\\", "50\\", bs).is_err(), "a trailing escape is an error");
        assert_eq!(check("title ILIKE 'hel%'", row()), Datum::Bool(true));
        assert_eq!(check("title LIKE 'hel%'", row()), Datum::Bool(false));
        assert_eq!(check("lower(title) = 'hello' AND upper(title) LIKE 'HE%'", row()), Datum::Bool(true));
    }
}
