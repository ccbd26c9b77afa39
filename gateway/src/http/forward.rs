//! What a read-serving standby (`follow`) cannot serve goes to the leader: a new shape (the leader
//! makes shapes) and `DELETE /v1/shape`. The answer, streamed, is the leader's own.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::data_dir::Shared;
use crate::http::AppState;
use crate::http::error::ApiError;

/// Set on forwarded requests: a gateway never forwards one again (a stale leader record
/// naming a standby must not loop).
const FORWARDED: HeaderName = HeaderName::from_static("x-gateway-forwarded");
/// Largest request body forwarded (the requests forwarded carry none).
const MAX_BODY: usize = 64 * 1024;

/// Where the leader is, as it recorded in the shared data dir.
pub struct Leader {
    data_dir: PathBuf,
    client: reqwest::Client,
}

impl Leader {
    pub fn new(data_dir: PathBuf) -> Leader {
        // No overall timeout: a forwarded long-poll is held as long as the leader holds it.
        let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build().unwrap_or_default();
        Leader { data_dir, client }
    }

    /// Sends `req` to the leader and streams its answer back.
    pub async fn forward(&self, req: Request) -> Result<Response, ApiError> {
        if req.headers().contains_key(&FORWARDED) {
            return Err(ApiError::AtLeader);
        }
        let base = Shared::leader_url(&self.data_dir).ok_or(ApiError::AtLeader)?;
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| ApiError::TooLarge(format!("a forwarded request carries at most {MAX_BODY} bytes")))?;
        let mut headers = parts.headers;
        for hop in [header::HOST, header::CONNECTION, header::CONTENT_LENGTH, header::TRANSFER_ENCODING] {
            headers.remove(hop);
        }
        headers.insert(FORWARDED, HeaderValue::from_static("1"));
        let sent = self.client.request(parts.method, format!("{}{path}", base.trim_end_matches('/'))).headers(headers);
        let answer = sent.body(body).send().await.map_err(|e| {
            tracing::warn!(leader = %base, error = %e, "cannot forward to the leader");
            ApiError::AtLeader
        })?;
        metrics::counter!("gateway_forwarded_requests_total").increment(1);
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut headers = answer.headers().clone();
        for hop in [header::CONNECTION, header::TRANSFER_ENCODING, header::VARY] {
            headers.remove(hop);
        }
        // This gateway's own CORS layer answers for the browser.
        let cors: Vec<HeaderName> =
            headers.keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
        for name in cors {
            headers.remove(name);
        }
        let mut resp = Response::new(Body::from_stream(answer.bytes_stream()));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

/// `GET /v1/shape` on a standby: served from the leader's logs, or forwarded when the
/// shape is not there yet.
pub async fn get_shape(State(state): State<AppState>, req: Request) -> Response {
    let (headers, raw) = (req.headers().clone(), req.uri().query().map(str::to_string));
    match crate::http::shape::get_shape(State(state.clone()), headers, RawQuery(raw)).await {
        Err(ApiError::AtLeader) => forward(State(state), req).await,
        answered => answered.into_response(),
    }
}

/// Forwards the request to the leader as it is.
pub async fn forward(State(state): State<AppState>, req: Request) -> Response {
    match &state.leader {
        Some(leader) => leader.forward(req).await.into_response(),
        None => ApiError::AtLeader.into_response(),
    }
}
