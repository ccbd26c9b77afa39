//! The row-filter language: client `where` text is parsed with sqlparser into this
//! allow-listed, typed tree ([`parse`]), evaluated in Rust on each change ([`eval`]) and
//! rendered back to SQL for snapshots ([`render`]). Nothing else reaches PostgreSQL.

mod arith;
mod bind;
mod coerce;
pub mod eval;
#[cfg(test)]
pub(crate) mod fixture;
mod named;
pub mod parse;
#[cfg(test)]
mod properties;
pub mod render;
pub mod subquery;
mod symmetric;

use crate::value::{Datum, SqlType};

pub use bind::BindOptions;
pub use eval::Row;
pub use named::{Named, NamedParam, rewrite_named};
pub use parse::{parse_where, parse_where_template, parse_where_with_tables};
pub use subquery::{Catalog, Membership, SetKey, SetView, Subquery, write_rows};

/// Longest `where` accepted, in bytes.
pub const MAX_WHERE_LEN: usize = 8 * 1024;
/// Deepest expression nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a filter could not be evaluated on a row.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum EvalError {
    #[error("column {0} is not available in this change (unchanged TOAST value)")]
    Unavailable(usize),
    #[error("{0}")]
    Value(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum WhereError {
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A token that cannot continue the expression, in PostgreSQL's and Electric's words:
    /// Electric parses `SELECT 1 WHERE <filter>`, so its locations count from 15 characters
    /// before the filter, 0-based.
    #[error("At location {location}: syntax error at or near \"{near}\"")]
    SyntaxAt { location: usize, near: String },
    #[error("{0} is not supported in shape filters")]
    Unsupported(String),
    #[error("unknown column {0:?}; column names are case-sensitive when quoted")]
    UnknownColumn(String),
    /// A subquery names a table the gateway has not been given (it loads it and binds again).
    #[error("unknown table {0} in a subquery; name an existing table, schema-qualified if not in public")]
    UnknownTable(crate::table::TableName),
    #[error("{0}")]
    Type(String),
    #[error("{0}")]
    Param(String),
    #[error("the filter is too long or too deeply nested (at most {MAX_WHERE_LEN} bytes and {MAX_DEPTH} levels)")]
    TooComplex,
    #[error("{0} contains a NUL character (\\u0000 or %00), which PostgreSQL text cannot hold; remove it")]
    Nul(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::NotEq => "<>",
            CmpOp::Lt => "<",
            CmpOp::LtEq => "<=",
            CmpOp::Gt => ">",
            CmpOp::GtEq => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::NotEq)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    BitAnd,
    BitOr,
    BitXor,
}

impl ArithOp {
    pub fn sql(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Mod => "%",
            ArithOp::Pow => "^",
            ArithOp::BitAnd => "&",
            ArithOp::BitOr => "|",
            ArithOp::BitXor => "#",
        }
    }
}

/// Prefix operators on numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sqrt,
    Cbrt,
    BitNot,
}

impl UnaryOp {
    pub fn sql(self) -> &'static str {
        match self {
            UnaryOp::Neg => "-",
            UnaryOp::Abs => "@",
            UnaryOp::Sqrt => "|/",
            UnaryOp::Cbrt => "||/",
            UnaryOp::BitNot => "~",
        }
    }
}

/// Array set operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArrayOp {
    /// `@>`: the left array holds every element of the right one.
    Contains,
    /// `<@`: every element of the left array is in the right one.
    ContainedBy,
    /// `&&`: the arrays share an element.
    Overlaps,
}

impl ArrayOp {
    pub fn sql(self) -> &'static str {
        match self {
            ArrayOp::Contains => "@>",
            ArrayOp::ContainedBy => "<@",
            ArrayOp::Overlaps => "&&",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Lower,
    Upper,
    Coalesce,
    Concat,
    Greatest,
    Least,
    ArrayNdims,
    JustifyDays,
    JustifyHours,
    JustifyInterval,
    Timezone,
}

impl Func {
    pub fn sql(self) -> &'static str {
        match self {
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Coalesce => "coalesce",
            Func::Concat => "concat",
            Func::Greatest => "greatest",
            Func::Least => "least",
            Func::ArrayNdims => "array_ndims",
            Func::JustifyDays => "justify_days",
            Func::JustifyHours => "justify_hours",
            Func::JustifyInterval => "justify_interval",
            Func::Timezone => "timezone",
        }
    }
}

/// A typed, allow-listed filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Column {
        index: usize,
        name: String,
        ty: SqlType,
    },
    Const {
        value: Datum,
        ty: SqlType,
    },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Compare {
        op: CmpOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `IS [NOT] TRUE | FALSE | UNKNOWN` (`value: None` is UNKNOWN).
    IsBool {
        expr: Box<Expr>,
        value: Option<bool>,
        negated: bool,
    },
    /// `IS [NOT] DISTINCT FROM`; `negated` is `IS NOT DISTINCT FROM`.
    Distinct {
        left: Box<Expr>,
        right: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    /// `[NOT] LIKE | ILIKE pattern [ESCAPE c]`; `escape` is `\\` by default, `None` for `ESCAPE ''`.
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        case_insensitive: bool,
        negated: bool,
        escape: Option<char>,
    },
    Arith {
        op: ArithOp,
        left: Box<Expr>,
        right: Box<Expr>,
        ty: SqlType,
    },
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
        ty: SqlType,
    },
    /// `||` on text, or on arrays (`array || array`, `array || element`, `element || array`);
    /// `ty` is the result type.
    Concat {
        left: Box<Expr>,
        right: Box<Expr>,
        ty: SqlType,
    },
    Func {
        func: Func,
        args: Vec<Expr>,
        ty: SqlType,
    },
    Cast {
        expr: Box<Expr>,
        ty: SqlType,
    },
    /// `left op ANY(array)` or `left op ALL(array)`.
    Quantified {
        op: CmpOp,
        left: Box<Expr>,
        array: Box<Expr>,
        all: bool,
    },
    /// `left @> right`, `left <@ right`, `left && right` on arrays.
    ArraySet {
        op: ArrayOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    /// `(probe…) [NOT] IN (subquery)`; the probe has one expression per selected column.
    InSubquery {
        probe: Vec<Expr>,
        subquery: Box<Subquery>,
        negated: bool,
    },
}

impl Expr {
    pub fn ty(&self) -> SqlType {
        match self {
            Expr::Column { ty, .. }
            | Expr::Const { ty, .. }
            | Expr::Arith { ty, .. }
            | Expr::Unary { ty, .. }
            | Expr::Concat { ty, .. }
            | Expr::Func { ty, .. }
            | Expr::Cast { ty, .. } => ty.clone(),
            _ => SqlType::Bool,
        }
    }

    /// The table columns this expression reads, each once, in index order.
    pub fn columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Column { index, .. } = e {
                out.push(*index);
            }
        });
        out.sort_unstable();
        out.dedup();
        out
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        let children: Vec<&'a Expr> = match self {
            Expr::Column { .. } | Expr::Const { .. } => Vec::new(),
            Expr::Not(e) | Expr::IsNull { expr: e, .. } | Expr::IsBool { expr: e, .. } => vec![e],
            Expr::Unary { expr, .. } | Expr::Cast { expr, .. } => vec![expr],
            Expr::And(items) | Expr::Or(items) | Expr::Func { args: items, .. } => items.iter().collect(),
            Expr::Compare { left, right, .. }
            | Expr::Distinct { left, right, .. }
            | Expr::Arith { left, right, .. }
            | Expr::Concat { left, right, .. }
            | Expr::ArraySet { left, right, .. } => vec![left, right],
            Expr::Quantified { left, array, .. } => vec![left, array],
            Expr::Like { expr, pattern, .. } => vec![expr, pattern],
            Expr::InList { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
            // The subquery's own columns are another table's: only the probe is this row's.
            Expr::InSubquery { probe, .. } => probe.iter().collect(),
        };
        for c in children {
            c.visit(f);
        }
    }

    /// Whether evaluating this can raise an error for some rows and not for others: a
    /// division, a cast, an overflow, a function, a `LIKE` whose pattern is a column.
    /// Comparisons, boolean logic, `IN`, `IS` and array membership of columns cannot, and a
    /// part that reads no column fails on every row or none.
    pub fn may_fail_on_rows(&self) -> bool {
        let mut risky = false;
        self.visit(&mut |e| {
            risky |= match e {
                Expr::Arith { .. }
                | Expr::Unary { .. }
                | Expr::Concat { .. }
                | Expr::Func { .. }
                | Expr::Cast { .. } => !e.columns().is_empty(),
                Expr::Like { pattern, .. } => !pattern.columns().is_empty(),
                _ => false,
            }
        });
        risky
    }

    /// The subqueries this expression tests membership in (not those nested inside them).
    pub fn subqueries(&self) -> Vec<&Subquery> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let Expr::InSubquery { subquery, .. } = e {
                out.push(&**subquery);
            }
        });
        out
    }

    /// The probes this expression tests against `subquery` (not those inside subqueries).
    pub fn probes_of(&self, subquery: &Subquery) -> Vec<&[Expr]> {
        let mut out = Vec::new();
        self.visit(&mut |e| {
            if let Expr::InSubquery { probe, subquery: s, .. } = e
                && **s == *subquery
            {
                out.push(probe.as_slice());
            }
        });
        out
    }

    /// The top-level `AND` terms of this expression.
    pub fn conjuncts(&self) -> Vec<&Expr> {
        match self {
            Expr::And(terms) => terms.iter().flat_map(|t| t.conjuncts()).collect(),
            other => vec![other],
        }
    }
}
