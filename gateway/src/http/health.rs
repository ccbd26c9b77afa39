//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Electric's health check.
pub async fn health(State(state): State<AppState>) -> Response {
    let (status, body) = match state.status.readiness() {
        Ok(()) => (StatusCode::OK, serde_json::json!({"status": "active"})),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "starting"})),
    };
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    r
}

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "alive"}))
}

/// Prometheus text format.
pub async fn metrics() -> Response {
    let body = crate::telemetry::recorder().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.status.readiness() {
        Ok(()) => Json(serde_json::json!({
            "status": "ready",
            // `leader` streams from the slot; a `follower` serves reads of its logs.
            "role": state.status.role(),
            "shapes": state.shapes.registry().len(),
            // Everything up to here is stored and acknowledged to PostgreSQL.
            "flushed_lsn": state.ack.durable().to_string(),
            "slot": state.status.slot(),
        }))
        .into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "not_ready", "message": reason})))
                .into_response()
        }
    }
}

/// What a standby serves while another gateway streams from the slot: alive, not ready
/// (so Kubernetes sends it no traffic), metrics, and 503 with `retry-after` for the rest.
pub fn standby_app(slot: String) -> axum::Router {
    use axum::routing::get;
    let why = format!(
        "standby: another gateway streams from replication slot {slot:?}; this one takes over when that one stops"
    );
    let not_ready = {
        let why = why.clone();
        move || async move { super::error::ApiError::Unavailable { message: why, retry_after: 5 }.into_response() }
    };
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(not_ready.clone()))
        .route(
            "/v1/health",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "starting"}))) }),
        )
        .fallback(not_ready)
}
