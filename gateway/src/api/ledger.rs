//! The ledger's public face: the newest signed checkpoint, so anyone can follow the log.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// `GET /ledger/checkpoint`: the C2SP tlog-checkpoint signed note, as `text/plain`.
pub async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (_, note) = state
        .store
        .ledger()
        .latest_checkpoint()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "no checkpoint has been issued yet"))?;
    let mut response = note.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(verifier) = HeaderValue::from_str(&state.store.ledger().verifier_key()) {
        response.headers_mut().insert("x-checkpoint-verifier-key", verifier);
    }
    Ok(response)
}

/// `GET /healthz`: 200 while writes are accepted, 503 after a storage failure.
pub async fn health(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.store.is_accepting_writes() {
        Ok("ok\n")
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "writes are refused after a storage failure"))
    }
}
