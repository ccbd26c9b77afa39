//! The HTTP surface in process: requests answered by `app(state)` with no server, no
//! database and no gateway process. What these cover is refused before any database work
//! (parsing, limits, CORS, error bodies), so a database is never reached: its address is
//! a closed port.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use shapes::offset::Lsn;
use tower::ServiceExt;

use super::{AppState, Cors, HttpSettings, app};
use crate::auth::Auth;
use crate::auth::keys::KeySource;
use crate::auth::rules::AccessRules;
use crate::auth::token::Verifier;
use crate::fanout::registry::Registry;
use crate::shape_set::ShapeSet;
use crate::shape_set::admission::ShapeLimits;
use crate::tasks::Tasks;

/// A state over an empty shape set in a fresh directory (removed with the guard), with
/// `--auth none`.
pub(crate) fn state() -> (AppState, tempdir::Dir) {
    state_with(Auth::none())
}

const SECRET: &str = "in-process-test-secret";

/// [`state`] with HS256 tokens signed by [`SECRET`] and no table rules.
fn jwt_state() -> (AppState, tempdir::Dir) {
    let keys = KeySource::from_settings(Some(SECRET), None, None).unwrap();
    let rules = AccessRules::compile(&[]).unwrap();
    state_with(Auth::jwt(Verifier::new(keys, None, None, 0), rules))
}

fn token(claims: Value, secret: &str) -> String {
    let mut claims = claims;
    claims["exp"] = json!(jsonwebtoken::get_current_timestamp() + 600);
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn state_with(auth: Auth) -> (AppState, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    // No set or move query runs here: their channel goes nowhere.
    let jobs = tokio::sync::mpsc::unbounded_channel().0;
    let registry = Arc::new(Registry::open(&dir.0, 1 << 20, Default::default(), Lsn(0), jobs).unwrap());
    let db = crate::db::parse_url("postgres://u@127.0.0.1:1/db").unwrap();
    let tasks = Tasks::new(tokio_util::sync::CancellationToken::new());
    let status = Arc::new(crate::status::Status::default());
    let limits = ShapeLimits { max_concurrent_snapshots: 1, max_shapes_per_table: 1, max_shapes_per_scope: 1 };
    let shapes = ShapeSet::new(registry, db.clone(), "p".into(), status.clone(), limits, tasks.clone()).unwrap();
    let settings = HttpSettings {
        long_poll_timeout: Duration::from_secs(20),
        sse_timeout: Duration::from_secs(60),
        sse_keepalive: Duration::from_secs(21),
        cache_catch_up: "public, max-age=60, stale-while-revalidate=300".into(),
        cors: Cors::new(&["https://app.example".into()]),
        shared_cache_by_caller: false,
        demo: None,
        max_live_connections: 1,
    };
    let outbox = crate::outbox::apply::Outbox {
        pool: deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(db, tokio_postgres::NoTls))
            .build()
            .unwrap(),
        tables: Default::default(),
        bind: Default::default(),
    };
    let ack = Arc::new(crate::progress::AckState::new(Lsn(0)));
    (AppState::new(settings, Arc::new(shapes), ack, status, Arc::new(auth), Arc::new(outbox), tasks), dir)
}

pub(crate) mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let n: u64 = rand::random();
            Dir(std::env::temp_dir().join(format!("gateway-http-test-{}-{n:x}", std::process::id())))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Sends one request through the router; the status, headers and JSON body (or `null`).
pub(crate) async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// A JSON POST of `body` to the outbox.
pub(crate) fn push(body: &str) -> Request<Body> {
    Request::post("/v1/outbox").header("content-type", "application/json").body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn bad_shape_requests_get_electrics_400_naming_the_parameter() {
    let (state, _dir) = state();
    let (status, _, body) = send(&state, get("/v1/shape?table=items")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"message": "Invalid request", "errors": {"offset": ["can't be blank; start with offset=-1"]}})
    );
    let (status, _, body) = send(&state, get("/v1/shape?table=items&offset=banana")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["offset"][0].as_str().unwrap().contains("invalid format"), "{body}");
    let (status, _, body) = send(&state, get("/v1/shape?offset=-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["table"].is_array(), "{body}");
}

#[tokio::test]
async fn oversized_requests_are_refused_before_any_work() {
    let (state, _dir) = state();
    let long = format!("/v1/shape?table=items&offset=-1&where={}", "x".repeat(super::admission::MAX_URI_BYTES));
    let (status, _, body) = send(&state, get(&long)).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::URI_TOO_LONG, Some("uri_too_long")));
    let big = "y".repeat(super::admission::MAX_HEADER_BYTES);
    let request = Request::get("/v1/shape?table=items&offset=-1").header("x-big", big).body(Body::empty()).unwrap();
    let (status, _, body) = send(&state, request).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Some("headers_too_large"))
    );
}

#[tokio::test]
async fn malformed_outbox_batches_say_what_is_expected() {
    let (state, _dir) = state();
    let (status, _, body) = send(&state, push("{\"client_id\": \"c\"")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["body"][0].as_str().unwrap().contains("expected {\"client_id\""), "{body}");
    let (status, _, body) = send(&state, push(r#"{"client_id": "", "mutations": []}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["client_id"].is_array(), "{body}");
}

#[tokio::test]
async fn cors_answers_preflights_and_names_only_allowed_origins() {
    let (state, _dir) = state();
    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/shape")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization,if-none-match")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&state, preflight).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(headers["access-control-allow-headers"], "authorization,if-none-match");
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("GET"));
    let other = Request::get("/healthz").header("origin", "https://evil.example").body(Body::empty()).unwrap();
    let (_, headers, _) = send(&state, other).await;
    assert!(!headers.contains_key("access-control-allow-origin"), "an origin not listed is not named");
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let (state, _dir) = state();
    let (status, _, body) = send(&state, get("/v2/shape")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn tokens_are_checked_before_anything_else() {
    let (state, _dir) = jwt_state();
    let with = |method: Method, uri: &str, token: Option<&str>| {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        request.body(Body::empty()).unwrap()
    };
    let shape = "/v1/shape?table=items&offset=-1";
    let (status, _, body) = send(&state, with(Method::GET, shape, None)).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let forged = token(json!({"sub": "mallory", "gateway_admin": true}), "another-secret");
    let (status, _, _) = send(&state, with(Method::GET, shape, Some(&forged))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a token signed with another key");
    let (status, _, _) = send(&state, with(Method::DELETE, "/v1/shape?handle=1-1", Some(&forged))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a forged admin claim deletes nothing");
    let tenant = token(json!({"sub": "alice", "org": "a"}), SECRET);
    let (status, _, body) = send(&state, with(Method::DELETE, "/v1/shape?handle=1-1", Some(&tenant))).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "only admins delete");
    let admin = token(json!({"sub": "ops", "gateway_admin": true}), SECRET);
    let (status, _, _) = send(&state, with(Method::DELETE, "/v1/shape?handle=1-1", Some(&admin))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an admin reaches the (empty) shape set");
}

#[test]
fn a_waiting_long_poll_holds_little_state() {
    let (state, _dir) = state();
    let fut = super::shape::get_shape(State(state), HeaderMap::new(), RawQuery(None));
    let size = std::mem::size_of_val(&fut);
    // 2,432 bytes before authentication was boxed, its arguments held once (not an async
    // fn) and a request's rarely used subset boxed.
    assert!(size <= 1280, "the handler future is {size} bytes");
}

#[test]
fn requests_are_counted_by_route_and_method_never_by_client_text() {
    use crate::telemetry::route_label;
    assert_eq!(route_label("/v1/shape"), "/v1/shape");
    assert_eq!(route_label("/v1/outbox"), "/v1/outbox");
    assert_eq!(route_label("/demo/examples/todos/index.html"), "/demo");
    for path in ["/v1/shape/", "/v1/shapes", "/x/<script>", "/demonstration", ""] {
        assert_eq!(route_label(path), "unmatched", "{path}");
    }
    // Methods too: HTTP allows any token, and each would be a new series.
    use crate::telemetry::method_label;
    assert_eq!(method_label(&Method::GET), "GET");
    assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
    for custom in ["FOO", "GET2", "X-ATTACK-1"] {
        assert_eq!(method_label(&Method::from_bytes(custom.as_bytes()).unwrap()), "other", "{custom}");
    }
}
