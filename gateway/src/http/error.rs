//! HTTP errors: a stable code and a message that says how to fix the request.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A shape request the protocol rejects; `field` names the parameter, as Electric does.
    #[error("{message}")]
    Invalid { field: &'static str, message: String },
    /// The table a request names does not exist (a 400 on `table`, in Electric's words).
    #[error("Table {0} does not exist. If the table name contains capitals or special characters you must quote it.")]
    MissingTable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UriTooLong(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    /// An outbox batch whose first new mutation id skips ahead of the client's ledger.
    #[error("{message}")]
    OutOfOrder { message: String, expected: u64 },
    /// A limit on how many of something may exist (e.g. shapes of a table).
    #[error("{0}")]
    TooMany(String),
    #[error("{message}")]
    Unavailable { message: String, retry_after: u32 },
    #[error("internal error")]
    Internal(String),
    /// A read-serving standby lacks the shape: the request goes to the leader
    /// (`forward`); 503 when it cannot.
    #[error("this gateway serves reads of existing shapes and cannot reach the leader, which creates new ones; retry")]
    AtLeader,
}

impl ApiError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid { field, message: message.into() }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// A handler panicked: the client gets the same 500 as any internal error, the panic is
/// counted, and the panic hook ([`crate::telemetry::log_panics`]) has logged where.
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    metrics::counter!("gateway_panics_total").increment(1);
    ApiError::Internal("a request handler panicked".into()).into_response()
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        metrics::counter!("gateway_auth_failures_total", "reason" => e.reason()).increment(1);
        if e.is_unauthenticated() { ApiError::Unauthorized(e.to_string()) } else { ApiError::Forbidden(e.to_string()) }
    }
}

impl From<crate::shape_set::ShapeSetError> for ApiError {
    fn from(e: crate::shape_set::ShapeSetError) -> Self {
        use crate::shape_set::ShapeSetError as E;
        match e {
            E::Invalid { field, message } => ApiError::Invalid { field, message },
            E::Access(e) => e.into(),
            E::Forbidden(m) => ApiError::Forbidden(m),
            E::MissingTable(t) => ApiError::MissingTable(t),
            E::Paused(message) => ApiError::Unavailable { message, retry_after: 30 },
            E::TooMany(m) => ApiError::TooMany(m),
            E::Busy(message) => ApiError::Unavailable { message, retry_after: 5 },
            e @ E::Unreachable => ApiError::Unavailable { message: e.to_string(), retry_after: 10 },
            e @ E::Storage(_) => ApiError::Unavailable { message: e.to_string(), retry_after: 10 },
            E::Internal(e) => ApiError::Internal(e),
            E::AtLeader => ApiError::AtLeader,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body, retry) = match &self {
            ApiError::Invalid { .. } | ApiError::MissingTable(_) => {
                let field = match &self {
                    ApiError::Invalid { field, .. } => *field,
                    _ => "table",
                };
                // Exactly Electric's body, which its client and its users read (its own test
                // suite compares it whole): the parameter says what is wrong.
                let body = serde_json::json!({"message": "Invalid request", "errors": {field: [self.to_string()]}});
                (StatusCode::BAD_REQUEST, body, None)
            }
            ApiError::Unauthorized(m) => {
                (StatusCode::UNAUTHORIZED, serde_json::json!({"error": "unauthorized", "message": m}), None)
            }
            ApiError::Forbidden(m) => {
                (StatusCode::FORBIDDEN, serde_json::json!({"error": "forbidden", "message": m}), None)
            }
            ApiError::TooLarge(m) => {
                (StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({"error": "too_large", "message": m}), None)
            }
            ApiError::UriTooLong(m) => {
                (StatusCode::URI_TOO_LONG, serde_json::json!({"error": "uri_too_long", "message": m}), None)
            }
            ApiError::HeadersTooLarge(m) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                serde_json::json!({"error": "headers_too_large", "message": m}),
                None,
            ),
            ApiError::TooMany(m) => {
                (StatusCode::TOO_MANY_REQUESTS, serde_json::json!({"error": "too_many", "message": m}), None)
            }
            ApiError::OutOfOrder { message, expected } => (
                StatusCode::CONFLICT,
                serde_json::json!({"error": "out_of_order", "message": message, "expected": expected}),
                None,
            ),
            ApiError::NotFound(m) => {
                (StatusCode::NOT_FOUND, serde_json::json!({"error": "not_found", "message": m}), None)
            }
            ApiError::Unavailable { message, retry_after } => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "unavailable", "message": message}),
                Some(*retry_after),
            ),
            ApiError::AtLeader => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "unavailable", "message": self.to_string()}),
                Some(1),
            ),
            ApiError::Internal(detail) => {
                // Logged once here; never echoed to the client.
                tracing::error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"error": "internal", "message": "internal error; see the gateway log"}),
                    None,
                )
            }
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("surrogate-control", HeaderValue::from_static("no-store"));
        if let Some(secs) = retry {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use tower_http::catch_panic::CatchPanicLayer;

    async fn boom() -> &'static str {
        panic!("a bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json_and_the_connection_survives() {
        crate::install_tls_provider();
        let app: Router = Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "ok" }))
            .layer(CatchPanicLayer::custom(super::panicked));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let boom = client.get(format!("{base}/boom")).send().await.unwrap();
        assert_eq!(boom.status(), 500);
        let body: serde_json::Value = serde_json::from_slice(&boom.bytes().await.unwrap()).unwrap();
        assert_eq!(body["error"], "internal");
        assert!(!body.to_string().contains("a bug"), "the panic's text stays in the log: {body}");
        assert_eq!(client.get(format!("{base}/fine")).send().await.unwrap().status(), 200);
    }
}
