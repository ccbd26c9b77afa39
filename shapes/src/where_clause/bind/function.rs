//! The allow-listed functions.

use sqlparser::ast;

use crate::value::{Datum, SqlType};
use crate::where_clause::coerce::{cast, coerce, comparable};
use crate::where_clause::{Expr, Func, WhereError};

use super::Binder;

impl Binder<'_> {
    pub(super) fn function(&self, f: &ast::Function, depth: usize) -> Result<Expr, WhereError> {
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
}
