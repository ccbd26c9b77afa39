//! `POST /v1/outbox`: a batch of client writes, applied in the caller's scope.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::outbox::apply::PushError;
use crate::outbox::{Batch, MAX_MUTATIONS};

/// Largest batch body accepted.
pub const MAX_BODY: usize = 8 << 20;
/// Longest `client_id`.
const MAX_ID: usize = 200;

pub async fn push(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = state.auth.authenticate(&headers).await?;
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::TooLarge(format!("the batch is larger than {} MiB; push fewer mutations at a time", MAX_BODY >> 20))
    })?;
    let batch: Batch = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!(
                "malformed batch at line {} column {}: {e}; expected {{\"client_id\": …, \"mutations\": [{{\"id\": <integer>, \"table\", \"op\", \"key\"?, \"value\"?, \"base\"?}}], \"atomic\"?}}",
                e.line(),
                e.column()
            ),
        )
    })?;
    if batch.mutations.len() > MAX_MUTATIONS {
        return Err(ApiError::TooLarge(format!(
            "the batch has {} mutations; push at most {MAX_MUTATIONS} at a time",
            batch.mutations.len()
        )));
    }
    if batch.client_id.is_empty() || batch.client_id.len() > MAX_ID || batch.client_id.contains('\0') {
        return Err(ApiError::invalid(
            "client_id",
            format!("must be 1 to {MAX_ID} bytes without NUL characters, stable per client"),
        ));
    }
    check_ids(&batch)?;
    let subject = caller.subject()?;
    let started = std::time::Instant::now();
    let result = state.outbox.push(&state.auth, &caller, &subject, &batch).await.map_err(|e| match e {
        PushError::OutOfOrder { expected, .. } => ApiError::OutOfOrder { message: e.to_string(), expected },
        PushError::Contended => ApiError::Unavailable { message: e.to_string(), retry_after: 1 },
        PushError::Unavailable(_) => ApiError::Unavailable { message: e.to_string(), retry_after: 5 },
        PushError::NotSetUp(m) => ApiError::Unavailable { message: m, retry_after: 30 },
    })?;
    metrics::histogram!("gateway_outbox_batch_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(result).into_response())
}

/// Mutation ids count from 1, one by one, in the order the client wrote them.
fn check_ids(batch: &Batch) -> Result<(), ApiError> {
    let ids: Vec<u64> = batch.mutations.iter().map(|m| m.id).collect();
    if ids.first() == Some(&0) {
        return Err(ApiError::invalid("mutations", "mutation ids start at 1"));
    }
    match ids.windows(2).find(|w| w[0].checked_add(1) != Some(w[1])) {
        None => Ok(()),
        Some(w) => Err(ApiError::invalid(
            "mutations",
            format!("mutation {} follows {}: a batch's ids must be consecutive (41, 42, 43, …)", w[1], w[0]),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[u64]) -> Batch<'static> {
        let mutations: Vec<serde_json::Value> =
            ids.iter().map(|id| serde_json::json!({"id": id, "table": "t", "op": "delete"})).collect();
        let body = serde_json::json!({"client_id": "c", "mutations": mutations}).to_string();
        serde_json::from_str(body.leak()).unwrap()
    }

    #[test]
    fn a_batchs_ids_are_consecutive_from_one_up() {
        assert!(check_ids(&batch(&[41, 42, 43])).is_ok());
        assert!(check_ids(&batch(&[])).is_ok());
        assert!(check_ids(&batch(&[0, 1])).is_err());
        assert!(check_ids(&batch(&[41, 43])).is_err());
        assert!(check_ids(&batch(&[42, 41])).is_err());
        // The largest id is followed by nothing: no wrap to 0, no overflow.
        assert!(check_ids(&batch(&[u64::MAX, 0])).is_err());
    }
}
