//! Subset snapshots: `GET /v1/shape` with `subset__*` parameters, or `POST /v1/shape` with
//! them in a JSON body. A one-off read of part of a shape straight from PostgreSQL, never
//! cached, and never moving the client's position in the shape log.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use shapes::subset::{Subset, SubsetSpec};

use super::AppState;
use super::caching::{must_refetch, offset_text};
use super::error::ApiError;
use super::request::{self, ShapeRequest};
use super::resolve::{authorized, check_readable, resolve};
use crate::snapshot;

pub async fn post_shape(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = authorized(&state, &headers, raw.as_deref()).await?;
    let spec = request::parse_subset_body(&body)?;
    serve(&state, &req, &spec).await
}

pub(super) async fn serve(state: &AppState, req: &ShapeRequest, spec: &SubsetSpec) -> Result<Response, ApiError> {
    let shape = Box::pin(resolve(state, req)).await?;
    if req.handle.as_ref().is_some_and(|h| *h != shape.handle.as_str()) {
        return Ok(must_refetch(state, Some(&shape)));
    }
    let subset = Subset::bind(spec, &shape.shape.table, state.shapes.registry().bind_options())
        .map_err(|e| ApiError::invalid("subset", e.to_string()))?;
    let filtered = subset.filter.iter().flat_map(|f| f.columns());
    check_readable(req, &shape.shape.table, filtered.chain(subset.order_by.iter().map(|k| k.column)))?;
    let mut session = state.outbox.pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "no database session for a subset");
        ApiError::Unavailable { message: "no database session for the subset; retry".into(), retry_after: 1 }
    })?;
    let body = snapshot::subset(&mut session, &shape, &subset).await.map_err(|e| {
        tracing::info!(handle = %shape.handle, error = %e, "subset query failed");
        if e.is_client_error() {
            ApiError::invalid("subset", e.client_message())
        } else {
            ApiError::Unavailable { message: e.client_message(), retry_after: 1 }
        }
    })?;
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set("electric-handle", shape.handle.as_str());
    // The client adopts this offset: handing back its own keeps it from skipping log
    // entries about rows outside the subset.
    set("electric-offset", &offset_text(req));
    set("electric-schema", &shape.schema_header);
    set("electric-snapshot", "true");
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    Ok(resp)
}
