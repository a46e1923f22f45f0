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

/// `GET /healthz`: 200 with `{"status": "ok", "components": {...}}` while every component works
/// (store writes, search indexer, audit trail), else 503 naming each failing one and why.
pub async fn health(State(state): State<AppState>) -> Result<Response, ApiError> {
    let audit = if state.audit.is_failed() { Err("the audit trail stopped after a storage failure".to_string()) } else { Ok(()) };
    let components: Vec<(&str, Result<(), String>)> = state.store.health().into_iter().chain([("audit", audit)]).collect();
    let failing: Vec<String> =
        components.iter().filter_map(|(name, health)| health.as_ref().err().map(|why| format!("{name}: {why}"))).collect();
    if !failing.is_empty() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", failing.join("; ")));
    }
    let body = serde_json::json!({
        "status": "ok",
        "components": components.iter().map(|(name, _)| (name.to_string(), serde_json::json!("ok"))).collect::<serde_json::Map<_, _>>(),
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
}
