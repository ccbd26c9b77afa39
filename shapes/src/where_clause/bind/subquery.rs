//! Binds `probe [NOT] IN (SELECT columns FROM table [WHERE …])`: the inner query may only
//! select plain columns of one table and filter them with the same allow-listed language,
//! bound against that table (its filter may nest further subqueries).

use sqlparser::ast;

use super::Binder;
use crate::table::TableName;
use crate::value::SqlType;
use crate::where_clause::coerce::{coerce, comparable};
use crate::where_clause::{Expr, Subquery, WhereError};

/// What a subquery may be, said when it is something else.
const SHAPE: &str = "a subquery other than `SELECT columns FROM table [WHERE …]` (no DISTINCT, joins, \
                     aliases, GROUP BY, ORDER BY, LIMIT or WITH)";

impl Binder<'_> {
    pub(super) fn in_subquery(
        &self,
        probe: &ast::Expr,
        query: &ast::Query,
        negated: bool,
        depth: usize,
    ) -> Result<Expr, WhereError> {
        let probe = match probe {
            ast::Expr::Tuple(items) => items.iter().map(|e| self.bind(e, depth)).collect::<Result<Vec<_>, _>>()?,
            one => vec![self.bind(one, depth)?],
        };
        let subquery = self.subquery(query, depth)?;
        if probe.len() != subquery.columns.len() {
            return Err(WhereError::Type(format!(
                "the subquery selects {} column(s) but {} value(s) are compared with it",
                subquery.columns.len(),
                probe.len()
            )));
        }
        let probe = probe
            .into_iter()
            .zip(&subquery.columns)
            .map(|(p, (_, name, ty))| {
                comparable(ty, "IN")?;
                let found = p.ty();
                coerce(p, ty).map_err(|_| {
                    WhereError::Type(format!("operator does not exist: {found} IN {ty} (the subquery's column {name})"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expr::InSubquery { probe, subquery: Box::new(subquery), negated })
    }

    fn subquery(&self, query: &ast::Query, depth: usize) -> Result<Subquery, WhereError> {
        let ast::SetExpr::Select(select) = query.body.as_ref() else {
            return Err(WhereError::Unsupported(SHAPE.into()));
        };
        let [from] = select.from.as_slice() else {
            return Err(WhereError::Unsupported(SHAPE.into()));
        };
        let ast::TableFactor::Table { name, alias: None, args: None, .. } = &from.relation else {
            return Err(WhereError::Unsupported(SHAPE.into()));
        };
        if !from.joins.is_empty() {
            return Err(WhereError::Unsupported(SHAPE.into()));
        }
        let columns: Vec<&ast::Ident> = select
            .projection
            .iter()
            .map(|item| match item {
                ast::SelectItem::UnnamedExpr(ast::Expr::Identifier(ident)) => Ok(ident),
                _ => Err(WhereError::Unsupported(SHAPE.into())),
            })
            .collect::<Result<_, _>>()?;
        // Anything else the query holds (DISTINCT, GROUP BY, ORDER BY, LIMIT, WITH, locks,
        // sampling, hints…) prints differently from the plain form: refused, whatever
        // sqlparser adds later.
        let plain = format!(
            "SELECT {} FROM {name}{}",
            select.projection.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            select.selection.as_ref().map(|w| format!(" WHERE {w}")).unwrap_or_default()
        );
        if query.to_string() != plain {
            return Err(WhereError::Unsupported(SHAPE.into()));
        }
        let Some(catalog) = self.catalog else {
            return Err(WhereError::Unsupported(
                "a subquery here (shapes and rule scopes through subqueries are being built: docs/subqueries.md)"
                    .into(),
            ));
        };
        let table_name = TableName::parse(&name.to_string()).map_err(WhereError::Syntax)?;
        let table = catalog.table(&table_name).ok_or_else(|| WhereError::UnknownTable(table_name.clone()))?;
        let inner = Binder::new(table, self.params, self.options, self.catalog);
        let columns = columns
            .into_iter()
            .map(|ident| match inner.column(ident)? {
                Expr::Column { index, name, ty } => Ok((index, name, ty)),
                _ => Err(WhereError::Unsupported(SHAPE.into())),
            })
            .collect::<Result<Vec<_>, WhereError>>()?;
        if let Some((_, name, ty)) = columns.iter().find(|(_, _, ty)| !is_link_type(ty)) {
            return Err(WhereError::Type(format!(
                "a subquery may select only integer, text, uuid or bool columns (the values rows are \
                 matched on exactly): {name} is {}",
                ty.sql_name()
            )));
        }
        let filter = match &select.selection {
            Some(w) => Some(
                coerce(inner.bind(w, depth + 1)?, &SqlType::Bool)
                    .map_err(|_| WhereError::Type("the subquery's WHERE clause must return a boolean".into()))?,
            ),
            None => None,
        };
        Ok(Subquery::new(table_name, columns, filter))
    }
}

/// The types whose values print alike whenever they are equal, so a set of them can be
/// keyed by the text PostgreSQL sends.
fn is_link_type(ty: &SqlType) -> bool {
    matches!(ty, SqlType::Int | SqlType::Text | SqlType::Uuid | SqlType::Bool)
}
