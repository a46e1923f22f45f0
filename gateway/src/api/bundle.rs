//! `POST [base]` with a transaction or batch Bundle (R4 §3.1.0.11).

use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Authorized;
use super::bundle_body::{Entry, Resource, bundle_response};
use super::error::{ApiError, operation_outcome};
use super::extract::{Budget, FhirJson, Prefer, ReturnPreference};
use super::resource::parameters;
use crate::fhir::bundle::{self, BundleKind};
use crate::fhir::{self, format_instant};
use crate::store::{EntryOutcome, StoredVersion};

pub async fn transaction_or_batch(
    State(state): State<AppState>,
    access: Authorized,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    parameters(&headers, query.as_deref(), &[])?;
    let prefer = Prefer::from_headers(&headers);
    // Nothing is read, nor any of the Bundle budget taken, for a token that grants nothing.
    access.0.require_any().map_err(ApiError::forbidden)?;
    // Bundles can be large: the bytes of Bundles in flight are bounded (see FhirJson::read).
    let FhirJson(body, _held) = FhirJson::read(request, &state, Budget::Bundle).await?;
    let parsed = bundle::parse_bundle(body, &state.base_url, state.limits.max_bundle_entries).map_err(|error| {
        let api_error = ApiError::bad_request(error.message.clone());
        match error.position {
            Some(position) => api_error.at_entry(position),
            None => api_error,
        }
    })?;
    let principal = access.principal();
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
    let envelope = json!({
        "resourceType": "Bundle",
        "type": response_type,
        "meta": { "lastUpdated": format_instant(fhir::now_instant()) },
    });
    let entries: Vec<Entry> = outcomes.into_iter().map(|(_, outcome)| response_entry(&state, outcome, prefer)).collect();
    Ok(bundle_response(envelope, entries))
}

fn version_fields(state: &AppState, version: &StoredVersion, response: &mut Value) {
    let key = &version.key;
    response["location"] = json!(format!("{}/{}/{}/_history/{}", state.base_url, key.resource_type, key.id, version.version_id));
    response["etag"] = json!(format!("W/\"{}\"", version.version_id));
    response["lastModified"] = json!(format_instant(version.last_updated));
}

fn response_entry(state: &AppState, outcome: EntryOutcome, prefer: Prefer) -> Entry {
    let resource_entry = |status: &str, version: StoredVersion| {
        let mut response = json!({ "status": status });
        version_fields(state, &version, &mut response);
        let key = &version.key;
        let mut resource = None;
        match prefer.return_preference {
            ReturnPreference::Representation => resource = version.body.map(Resource::Stored),
            ReturnPreference::OperationOutcome => {
                response["outcome"] = operation_outcome("information", "informational", "processed");
            }
            ReturnPreference::Minimal => {}
        }
        let fields = json!({
            "fullUrl": format!("{}/{}/{}", state.base_url, key.resource_type, key.id),
            "response": response,
        });
        Entry { fields, resource }
    };
    match outcome {
        EntryOutcome::Written { version, created: true } => resource_entry("201 Created", version),
        EntryOutcome::Written { version, created: false } | EntryOutcome::Read(version) => resource_entry("200 OK", version),
        EntryOutcome::Deleted { version_id } => {
            let mut response = json!({ "status": "204 No Content" });
            if let Some(version_id) = version_id {
                response["etag"] = json!(format!("W/\"{version_id}\""));
            }
            Entry { fields: json!({ "response": response }), resource: None }
        }
        EntryOutcome::Failed(error) => {
            let error = ApiError::from(error);
            let status = error.status();
            let fields = json!({ "response": {
                "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default()),
                "outcome": error.to_outcome(),
            } });
            Entry { fields, resource: None }
        }
    }
}
