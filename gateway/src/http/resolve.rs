//! From a request to its shape: the caller authenticated and narrowed to what it may read,
//! and the shape found, or created with its publication change and snapshot.

use std::sync::Arc;

use axum::http::HeaderMap;
use shapes::shape::Shape;
use shapes::table::TableSchema;

use super::AppState;
use super::error::ApiError;
use super::request::{self, ShapeRequest};
use crate::auth::ColumnUse;
use crate::db;
use crate::fanout::live_shape::LiveShape;
use crate::replication::{ReplicationError, slot};

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
) -> Result<(), ApiError> {
    let names = columns.into_iter().map(|c| table.columns[c].name.as_str());
    Ok(req.access.readable.check(&table.name, ColumnUse::Readable, names)?)
}

/// Finds the shape for the request's definition, creating it (and its snapshot) if new.
pub(super) async fn resolve(state: &AppState, req: &ShapeRequest) -> Result<Arc<LiveShape>, ApiError> {
    let bind = |schema| {
        let shape = Shape::bind(req.spec.clone(), schema, state.registry.bind_options()).map_err(|e| match e {
            shapes::shape::ShapeError::Where(w) => ApiError::invalid("where", w.to_string()),
            shapes::shape::ShapeError::Columns(c) => ApiError::invalid("columns", c),
            shapes::shape::ShapeError::Scope(w) => ApiError::Forbidden(format!(
                "the token's claims do not fit the access rule of {}: {w}",
                req.table.quoted()
            )),
        })?;
        check_readable(req, &shape.table, shape.where_columns.iter().copied())?;
        Ok::<_, ApiError>(shape)
    };
    if let Some(schema) = state.registry.cached_schema(&req.table)
        && let Some(existing) = state.registry.get(&bind(schema)?.key())
    {
        return Ok(existing);
    }
    // Creating shapes is rare: one at a time keeps publication changes race-free, and the
    // catalog is read afresh, since the table may have changed since it was cached.
    let _guard = state.create_lock.lock().await;
    let client = state.catalog().await?;
    let schema = fresh_schema(state, &client, req).await?;
    let shape = bind(schema.clone())?;
    if let Some(existing) = state.registry.get(&shape.key()) {
        return Ok(existing);
    }
    if let Some(why) = state.status.new_shapes_paused() {
        return Err(ApiError::Unavailable { message: why, retry_after: 30 });
    }
    let existing = state.registry.shapes_of(&req.table);
    let scope = req.spec.scope.as_ref();
    let in_scope = scope.map(|sc| existing.iter().filter(|s| s.shape.spec.scope.as_ref() == Some(sc)).count());
    state.admission.check_shape_count(&req.table.quoted(), existing.len(), in_scope)?;
    let permit = state.admission.snapshot(scope)?;
    let altered = slot::ensure_published(&client, &state.settings.publication, &schema, shape.needs_old_rows())
        .await
        .map_err(|e| match e {
        ReplicationError::Privilege { .. } => ApiError::Forbidden(e.to_string()),
        ReplicationError::TableGone(_) => ApiError::MissingTable(req.table.quoted()),
        ReplicationError::TableBusy(_) => ApiError::Unavailable { message: e.to_string(), retry_after: 5 },
        e => ApiError::internal(e),
    })?;
    let shape = if altered { bind(fresh_schema(state, &client, req).await?)? } else { shape };
    let (live, created) = state.registry.get_or_create(shape).map_err(|e| ApiError::Unavailable {
        message: format!("cannot create the shape's log ({e}); retry when the gateway's storage has room"),
        retry_after: 10,
    })?;
    if created {
        let (db, registry, shape) = (state.settings.db.clone(), state.registry.clone(), live.clone());
        tokio::spawn(async move {
            crate::snapshot::run(db, registry, shape).await;
            drop(permit);
        });
    }
    Ok(live)
}

/// Reads the table from the catalog and refreshes the cache.
async fn fresh_schema(
    state: &AppState,
    client: &tokio_postgres::Client,
    req: &ShapeRequest,
) -> Result<shapes::table::TableSchema, ApiError> {
    let schema = db::table_schema(client, &req.table)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::MissingTable(req.table.quoted()))?;
    state.registry.cache_schema(schema.clone());
    Ok(schema)
}
