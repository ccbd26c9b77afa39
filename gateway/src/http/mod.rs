//! The HTTP surface: routes, shared state, CORS. Handlers are thin: parse, call one
//! domain function, map the result.

pub mod admission;
mod caching;
pub mod error;
pub mod forward;
pub mod health;
mod live;
pub mod openapi;
pub mod outbox;
mod parts_body;
pub mod request;
mod resolve;
pub mod send_timeout;
pub mod shape;
pub mod sse;
pub mod subset;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::Auth;
use crate::progress::AckState;
use crate::shape_set::ShapeSet;
use crate::status::Status;
use crate::tasks::Tasks;

/// Settings the HTTP layer needs.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub long_poll_timeout: Duration,
    pub sse_timeout: Duration,
    pub sse_keepalive: Duration,
    /// `cache-control` of catch-up answers (`--cache-max-age`, `--cache-stale-age`).
    pub cache_catch_up: String,
    pub cors: Cors,
    /// Shared caches may store answers to authenticated requests (`--shared-cache-by-caller`).
    pub shared_cache_by_caller: bool,
    /// The demo's site at `/demo/` (only `gateway demo` has one).
    pub demo: Option<Arc<crate::demo::site::DemoSite>>,
    pub max_live_connections: usize,
}

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<HttpSettings>,
    pub shapes: Arc<ShapeSet>,
    pub ack: Arc<AckState>,
    pub status: Arc<Status>,
    pub auth: Arc<Auth>,
    /// Outbox writes; its pooled sessions also serve subset snapshots.
    pub outbox: Arc<crate::outbox::apply::Outbox>,
    /// The owner of tasks that outlive a handler (SSE producers); cancelled at shutdown.
    pub tasks: Tasks,
    pub admission: Arc<admission::Admission>,
    /// A read-serving standby's way to the leader, for what it cannot serve itself.
    pub leader: Option<Arc<forward::Leader>>,
}

impl AppState {
    pub fn new(
        settings: HttpSettings,
        shapes: Arc<ShapeSet>,
        ack: Arc<AckState>,
        status: Arc<Status>,
        auth: Arc<Auth>,
        outbox: Arc<crate::outbox::apply::Outbox>,
        tasks: Tasks,
    ) -> Self {
        AppState {
            admission: Arc::new(admission::Admission::new(settings.max_live_connections)),
            settings: Arc::new(settings),
            shapes,
            ack,
            status,
            auth,
            outbox,
            tasks,
            leader: None,
        }
    }

    /// The state of a read-serving standby, which forwards to `leader` what it cannot serve.
    pub fn following(self, leader: forward::Leader) -> Self {
        AppState { leader: Some(Arc::new(leader)), ..self }
    }
}

/// Every route, for the router and the OpenAPI document (a test keeps them in step).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/shape"),
    ("delete", "/v1/shape"),
    ("post", "/v1/shape"),
    ("post", "/v1/outbox"),
    ("get", "/v1/health"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    if let Some(site) = state.settings.demo.clone() {
        router = router.merge(crate::demo::site::router(site));
    }
    let shape_routes = match state.leader {
        None => get(shape::get_shape).delete(shape::delete_shape).post(subset::post_shape),
        // A standby serves reads of the leader's shapes; the leader makes and drops them.
        Some(_) => get(forward::get_shape).delete(forward::forward).post(subset::post_shape),
    };
    router
        .route("/v1/shape", shape_routes)
        .route("/v1/outbox", axum::routing::post(outbox::push))
        .route("/v1/health", get(health::health))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panicked))
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "not_found", "message": "no such endpoint; see /v1/openapi.json"})),
    )
        .into_response()
}

const EXPOSED: &str = "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after,etag";

/// Which browser origins may call the gateway.
#[derive(Clone, Debug)]
pub struct Cors {
    /// `None`: any origin (no credentials are ever allowed, so `*` is safe to echo).
    origins: Option<Arc<[String]>>,
}

impl Cors {
    pub fn new(origins: &[String]) -> Cors {
        let listed: Vec<String> = origins.iter().map(|o| o.trim().trim_end_matches('/').to_string()).collect();
        let any = listed.is_empty() || listed.iter().any(|o| o == "*");
        Cors { origins: if any { None } else { Some(listed.into()) } }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            None => true,
            Some(list) => origin.to_str().is_ok_and(|o| list.iter().any(|l| l == o)),
        }
    }
}

/// Every request's first stop, as one middleware: each `from_fn` layer boxes a future that
/// holds the request, about 1.2 KiB per waiting subscriber. Every request is counted and
/// timed ([`crate::telemetry::HttpTimer`]). Too large a request is refused
/// ([`admission::oversized`]). CORS on every response; preflights answered here.
/// `authorization` and any requested header are allowed. With tokens, every response varies
/// by `Authorization`, so no cache in front can hand one caller's rows to another.
async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let timer = crate::telemetry::HttpTimer::start(&req);
    let origin = req.headers().get(header::ORIGIN).cloned();
    let requested = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let mut resp = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, HEAD, DELETE, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        if let Some(req_headers) = requested {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers);
        }
        r
    } else if let Some(refused) = admission::oversized(&req) {
        refused.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    match origin {
        Some(o) if state.settings.cors.allows(&o) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        Some(_) => {}
        None if state.settings.cors.origins.is_none() => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        None => {}
    }
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED));
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if state.auth.enabled() {
        h.append(header::VARY, HeaderValue::from_static("authorization"));
    }
    timer.finish(&resp);
    resp
}
