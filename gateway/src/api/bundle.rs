//! `POST [base]` with a transaction or batch Bundle (R4 §3.1.0.11).

use std::sync::Arc;

use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, operation_outcome};
use super::extract::{FhirJson, Prefer, ReturnPreference};
use super::resource::parameters;
use super::{AppState, FHIR_JSON};
use crate::fhir::bundle::{self, BundleKind};
use crate::fhir::{self, format_instant};
use crate::store::{EntryOutcome, Principal, StoredVersion};

pub async fn transaction_or_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    parameters(&headers, query.as_deref(), &[])?;
    let prefer = Prefer::from_headers(&headers);
    // Bundles are large: a bounded number are read and processed at once (the others wait
    // before their bodies are read), so memory stays bounded.
    let _permit = Arc::clone(&state.bundle_permits)
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the gateway is shutting down"))?;
    let FhirJson(body) = FhirJson::from_request(request, &state).await?;
    let parsed = bundle::parse_bundle(body, &state.base_url, state.limits.max_bundle_entries).map_err(|error| {
        let api_error = ApiError::bad_request(error.message.clone());
        match error.position {
            Some(position) => api_error.at_entry(position),
            None => api_error,
        }
    })?;
    let principal = Principal::Unauthenticated;
    let (response_type, outcomes) = match parsed.kind {
        BundleKind::Transaction => {
            let outcomes = state
                .store
                .transaction(parsed.entries, &principal, prefer.leniency)
                .await
                .map_err(|failure| ApiError::from(failure.error).at_entry(failure.position))?;
            ("transaction-response", outcomes)
        }
        BundleKind::Batch => ("batch-response", state.store.batch(parsed.entries, &principal, prefer.leniency).await),
    };
    let entries: Vec<Value> = outcomes.into_iter().map(|(_, outcome)| response_entry(&state, outcome, prefer)).collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": response_type,
        "meta": { "lastUpdated": format_instant(fhir::now_instant()) },
        "entry": entries,
    });
    let mut response = (StatusCode::OK, bundle.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(FHIR_JSON));
    Ok(response)
}

fn version_fields(state: &AppState, version: &StoredVersion, response: &mut Value) {
    let key = &version.key;
    response["location"] = json!(format!("{}/{}/{}/_history/{}", state.base_url, key.resource_type, key.id, version.version_id));
    response["etag"] = json!(format!("W/\"{}\"", version.version_id));
    response["lastModified"] = json!(format_instant(version.last_updated));
}

fn response_entry(state: &AppState, outcome: EntryOutcome, prefer: Prefer) -> Value {
    let resource_entry = |status: &str, version: StoredVersion, include: bool| {
        let mut response = json!({ "status": status });
        version_fields(state, &version, &mut response);
        let key = &version.key;
        let mut entry = json!({ "fullUrl": format!("{}/{}/{}", state.base_url, key.resource_type, key.id) });
        match prefer.return_preference {
            ReturnPreference::Representation if include => {
                if let Some(resource) = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok()) {
                    entry["resource"] = resource;
                }
            }
            ReturnPreference::OperationOutcome => {
                response["outcome"] = operation_outcome("information", "informational", "processed");
            }
            _ => {}
        }
        entry["response"] = response;
        entry
    };
    match outcome {
        EntryOutcome::Written { version, created: true } => resource_entry("201 Created", version, true),
        EntryOutcome::Written { version, created: false } => resource_entry("200 OK", version, true),
        EntryOutcome::Read(version) => resource_entry("200 OK", version, true),
        EntryOutcome::Deleted { version_id } => {
            let mut response = json!({ "status": "204 No Content" });
            if let Some(version_id) = version_id {
                response["etag"] = json!(format!("W/\"{version_id}\""));
            }
            json!({ "response": response })
        }
        EntryOutcome::Failed(error) => {
            let error = ApiError::from(error);
            let status = error.status();
            json!({ "response": {
                "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default()),
                "outcome": error.to_outcome(),
            } })
        }
    }
}
