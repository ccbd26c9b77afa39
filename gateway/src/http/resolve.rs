//! From a request to its shape: the caller authenticated and narrowed to what it may read,
//! and the shape found or created ([`crate::shape_set`]).

use std::sync::Arc;

use axum::http::HeaderMap;
use shapes::shape::Shape;
use shapes::table::TableSchema;

use super::AppState;
use super::error::ApiError;
use super::request::{self, ShapeRequest};
use crate::auth::{AuthError, ColumnUse};
use crate::fanout::live_shape::LiveShape;

/// Authenticates the caller, parses the request and narrows it to what the caller may read.
pub(super) async fn authorized(
    state: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<ShapeRequest, ApiError> {
    let caller = state.auth.authenticate(headers).await?;
    let mut req = request::parse(raw)?;
    req.access = state.auth.scope(&caller, &req.table, &mut req.spec)?;
    req.valid_until = caller.valid_until();
    Ok(req)
}

/// Refuses a filter or order that reads a column the caller may not read (it would leak
/// the hidden values through which rows match, or how they rank).
pub(super) fn check_readable(
    req: &ShapeRequest,
    table: &TableSchema,
    columns: impl IntoIterator<Item = usize>,
) -> Result<(), AuthError> {
    let names = columns.into_iter().map(|c| table.columns[c].name.as_str());
    req.access.readable.check(&table.name, ColumnUse::Readable, names)
}

/// Finds the shape for the request's definition, creating it (and its snapshot) if new.
pub(super) async fn resolve(state: &AppState, req: &ShapeRequest) -> Result<Arc<LiveShape>, ApiError> {
    let readable = |shape: &Shape| {
        // A client's subquery reads another table, which the caller's rules do not cover
        // (yet); the rule's own scope may.
        if req.access.ruled && shape.client_filter.as_ref().is_some_and(|f| !f.subqueries().is_empty()) {
            return Err(AuthError::AdminOnly("read other tables through subqueries (access rules do not cover them)"));
        }
        check_readable(req, &shape.table, shape.where_columns.iter().copied())
    };
    Ok(state.shapes.resolve(&req.table, &req.spec, readable).await?)
}
