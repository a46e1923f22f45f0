//! Handlers for the FHIR RESTful interactions on resources (R4 §3.1.0): create, read, vread,
//! update, delete, history (instance and type).

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::auth::Authorized;
use super::bundle_body::{Entry, Resource, bundle_response};
use super::error::{ApiError, operation_outcome};
use super::extract::{FhirJson, FhirPath, Prefer, ReturnPreference, check_acceptable, if_match, if_none_exist};
use super::{AppState, fhir_response};
use crate::access::Access;
use crate::auth::Permission;
use crate::consent::Interaction;
use crate::fhir::{self, format_instant, is_valid_id, resource_type::is_resource_type};
use crate::store::catalog::ResourceKey;
use crate::store::{CreateOutcome, HistoryPage, ResourceStore, StoreError, StoredVersion};

fn resource_type(name: &str) -> Result<&str, ApiError> {
    if is_resource_type(name) { Ok(name) } else { Err(ApiError::not_found(format!("'{name}' is not a FHIR R4 resource type"))) }
}

fn resource_key(resource_type_name: &str, id: &str) -> Result<ResourceKey, ApiError> {
    let resource_type = resource_type(resource_type_name)?;
    if !is_valid_id(id) {
        return Err(ApiError::not_found("no resource has this id (ids are 1-64 of A-Z a-z 0-9 - .)"));
    }
    Ok(ResourceKey { resource_type: resource_type.to_string(), id: id.to_string() })
}

/// The query's parameters, once `_format`/`Accept` are acceptable: only `allowed` ones (plus
/// `_format`, `_pretty`) are accepted.
pub(super) fn parameters(headers: &HeaderMap, query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let parameters = query_parameters(query, allowed)?;
    check_acceptable(headers, parameters.get("_format").map(String::as_str))?;
    Ok(parameters)
}

fn query_parameters(query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut parameters = HashMap::new();
    for (name, value) in crate::fhir::query::pairs(query.unwrap_or_default()) {
        if !(allowed.contains(&name.as_str()) || name == "_format" || name == "_pretty") {
            return Err(ApiError::bad_request(format!("unknown or unsupported parameter '{name}'")));
        }
        if parameters.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!("parameter '{name}' is repeated")));
        }
    }
    Ok(parameters)
}

fn version_headers(response: &mut Response, state: &AppState, version: &StoredVersion, location: bool) {
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", version.version_id)) {
        headers.insert(header::ETAG, etag);
    }
    let modified = httpdate::fmt_http_date(std::time::SystemTime::from(version.last_updated));
    if let Ok(modified) = HeaderValue::from_str(&modified) {
        headers.insert(header::LAST_MODIFIED, modified);
    }
    if location {
        let url = format!("{}/{}/{}/_history/{}", state.base_url, version.key.resource_type, version.key.id, version.version_id);
        if let Ok(url) = HeaderValue::from_str(&url) {
            headers.insert(header::LOCATION, url);
        }
    }
}

/// The answer to a successful write, shaped by `Prefer: return=`.
fn write_response(state: &AppState, status: StatusCode, version: StoredVersion, prefer: Prefer) -> Response {
    let mut response = match prefer.return_preference {
        ReturnPreference::Minimal => status.into_response(),
        ReturnPreference::Representation => fhir_response(status, version.body.clone().unwrap_or_default()),
        ReturnPreference::OperationOutcome => {
            let message = format!("{}/{} stored as version {}", version.key.resource_type, version.key.id, version.version_id);
            fhir_response(status, operation_outcome("information", "informational", &message).to_string().into_bytes())
        }
    };
    version_headers(&mut response, state, &version, true);
    response
}

fn read_response(state: &AppState, version: StoredVersion) -> Response {
    let mut response = fhir_response(StatusCode::OK, version.body.clone().unwrap_or_default());
    version_headers(&mut response, state, &version, false);
    response
}

fn body_type_matches(body: &Value, url_type: &str) -> Result<(), ApiError> {
    match body.get("resourceType").and_then(Value::as_str) {
        Some(body_type) if body_type == url_type => Ok(()),
        Some(body_type) => Err(ApiError::bad_request(format!("the body is a {body_type} but the URL names {url_type}"))),
        None => Err(ApiError::bad_request("resourceType is missing")),
    }
}

/// `POST [base]/[type]`
pub async fn create(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath(type_name): FhirPath<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    FhirJson(body, _held): FhirJson,
) -> Result<Response, ApiError> {
    let resource_type = resource_type(&type_name)?;
    parameters(&headers, query.as_deref(), &[])?;
    body_type_matches(&body, resource_type)?;
    let prefer = Prefer::from_headers(&headers);
    let condition = if_none_exist(&headers)?;
    access.0.require(resource_type, Permission::Create).map_err(ApiError::forbidden)?;
    let outcome = state.store.create(body, &access.principal(), prefer.leniency, condition.as_ref()).await?;
    Ok(match outcome {
        CreateOutcome::Created(outcome) => write_response(&state, StatusCode::CREATED, outcome.version, prefer),
        // Only matches the caller may see count (the store's `matching`).
        CreateOutcome::Existing(version) => write_response(&state, StatusCode::OK, version, prefer),
    })
}

/// `GET [base]/[type]/[id]`
pub async fn read(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = resource_key(&type_name, &id)?;
    parameters(&headers, query.as_deref(), &[])?;
    access.0.require(&key.resource_type, Permission::Read).map_err(ApiError::forbidden)?;
    if key.resource_type == "AuditEvent" {
        state.audit.caught_up().await;
        let event = super::audit::read(&state.audit, &access.0, &key.id)?;
        return Ok(fhir_response(StatusCode::OK, event.to_string().into_bytes()));
    }
    let version = disclosed(&state.store, &access.0, Interaction::Read, &key, state.store.read(&key))?;
    Ok(read_response(&state, version))
}

/// A version read for `access`: one it may not see is "not found" (the same answer, byte for
/// byte, as for an id that does not exist), and so is a deletion of a resource it could not see.
pub(super) fn disclosed(
    store: &ResourceStore,
    access: &Access,
    interaction: Interaction,
    key: &ResourceKey,
    read: Result<StoredVersion, StoreError>,
) -> Result<StoredVersion, ApiError> {
    match read {
        // The common case: judged from cached facts, without parsing the body.
        Ok(version) if access.may_read_version(interaction, &version) => Ok(version),
        Ok(_) => Err(access.refused_read().into()),
        Err(StoreError::Gone(version_id)) => match store.deleted_content(key, version_id)? {
            Some((deleted, content)) if access.may_read_content(interaction, &deleted, &content) => {
                Err(StoreError::Gone(version_id).into())
            }
            Some(_) => Err(access.refused_read().into()),
            None => Err(StoreError::NotFound.into()),
        },
        Err(error) => Err(error.into()),
    }
}

/// `GET [base]/[type]/[id]/_history/[vid]`
pub async fn vread(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((type_name, id, version_text)): FhirPath<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = resource_key(&type_name, &id)?;
    parameters(&headers, query.as_deref(), &[])?;
    let version_id = version_text.parse::<u64>().map_err(|_| ApiError::not_found("no such version"))?;
    access.0.require(&key.resource_type, Permission::Read).map_err(ApiError::forbidden)?;
    let version = disclosed(&state.store, &access.0, Interaction::Vread, &key, state.store.vread(&key, version_id))?;
    Ok(read_response(&state, version))
}

/// `PUT [base]/[type]/[id]`: update, or create with the client's id.
pub async fn update(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    FhirJson(body, _held): FhirJson,
) -> Result<Response, ApiError> {
    let resource_type = resource_type(&type_name)?;
    if !is_valid_id(&id) {
        return Err(ApiError::bad_request("the id in the URL is not a valid FHIR id"));
    }
    let key = ResourceKey { resource_type: resource_type.to_string(), id };
    parameters(&headers, query.as_deref(), &[])?;
    body_type_matches(&body, resource_type)?;
    let prefer = Prefer::from_headers(&headers);
    let expected_version = if_match(&headers)?;
    access.0.require(resource_type, Permission::Update).map_err(ApiError::forbidden)?;
    let outcome = state.store.update(&key, body, &access.principal(), prefer.leniency, expected_version).await?;
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(write_response(&state, status, outcome.version, prefer))
}

/// `DELETE [base]/[type]/[id]`: 204; deleting a deleted resource is a no-op (also 204).
pub async fn delete(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = resource_key(&type_name, &id)?;
    query_parameters(query.as_deref(), &[])?;
    access.0.require(&key.resource_type, Permission::Delete).map_err(ApiError::forbidden)?;
    let deleted_version = state.store.delete(&key, &access.principal()).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(version_id) = deleted_version
        && let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version_id}\""))
    {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// `POST [base]/Patient/[id]/$purge` (the R6 operation): erases every version of the Patient
/// and of every resource in its compartment that its key holds, synchronously (docs/ERASURE.md).
/// Needs the configured purge scope; answers `200` with an OperationOutcome counting what went.
pub async fn instance_operation(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((type_name, id, operation)): FhirPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = resource_key(&type_name, &id)?;
    if (key.resource_type.as_str(), operation.as_str()) != ("Patient", "$purge") {
        return Err(ApiError::not_found(format!("no operation {operation} on {}", key.resource_type)));
    }
    query_parameters(query.as_deref(), &[])?;
    access.0.require_purge().map_err(ApiError::forbidden)?;
    let outcome = state.store.purge(&key, &access.principal()).await?;
    let message = format!(
        "{}/{} erased: {} version(s) of {} resource(s); their key, index entries and sealed blocks are gone",
        key.resource_type, key.id, outcome.versions, outcome.resources
    );
    Ok(fhir_response(
        StatusCode::OK,
        serde_json::to_vec(&operation_outcome("information", "informational", &message)).expect("JSON serialises"),
    ))
}

struct HistoryParameters {
    count: usize,
    cursor: Option<u64>,
    since: Option<OffsetDateTime>,
}

fn history_parameters(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> Result<HistoryParameters, ApiError> {
    let parameters = parameters(headers, query, &["_count", "_since", "_cursor"])?;
    let count = match parameters.get("_count") {
        None => state.limits.default_page_size,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("_count must be a non-negative integer"))?
            .min(state.limits.max_page_size),
    };
    let cursor = parameters
        .get("_cursor")
        .map(|text| text.parse::<u64>().map_err(|_| ApiError::bad_request("_cursor is not one this server issued")))
        .transpose()?;
    let since = parameters
        .get("_since")
        .map(|text| {
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|_| ApiError::bad_request("_since must be a FHIR instant, e.g. 2026-01-01T00:00:00Z"))
        })
        .transpose()?;
    Ok(HistoryParameters { count, cursor, since })
}

/// A `history` Bundle (R4 §3.1.0.4) for one page, with `self` and `next` links.
fn history_bundle(state: &AppState, page: HistoryPage, self_path: &str, parameters: &HistoryParameters) -> Response {
    let entries: Vec<Entry> = page
        .versions
        .into_iter()
        .map(|version| {
            let key = &version.key;
            let full_url = format!("{}/{}/{}", state.base_url, key.resource_type, key.id);
            let (method, url, status) = match (&version.body, version.version_id) {
                (None, _) => ("DELETE", format!("{}/{}", key.resource_type, key.id), "204 No Content"),
                (Some(_), 1) => ("POST", key.resource_type.clone(), "201 Created"),
                (Some(_), _) => ("PUT", format!("{}/{}", key.resource_type, key.id), "200 OK"),
            };
            let fields = json!({
                "fullUrl": full_url,
                "request": { "method": method, "url": url },
                "response": {
                    "status": status,
                    "etag": format!("W/\"{}\"", version.version_id),
                    "lastModified": format_instant(version.last_updated),
                },
            });
            Entry { fields, resource: version.body.map(Resource::Stored) }
        })
        .collect();
    let mut links = vec![json!({ "relation": "self", "url": format!("{}{}?_count={}", state.base_url, self_path, parameters.count) })];
    if let Some(cursor) = page.next_cursor {
        links.push(json!({
            "relation": "next",
            "url": format!("{}{}?_count={}&_cursor={}", state.base_url, self_path, parameters.count, cursor),
        }));
    }
    let envelope = json!({
        "resourceType": "Bundle",
        "type": "history",
        "meta": { "lastUpdated": format_instant(fhir::now_instant()) },
        "link": links,
    });
    bundle_response(envelope, entries)
}

/// `GET [base]/[type]/[id]/_history`
pub async fn instance_history(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = resource_key(&type_name, &id)?;
    let parameters = history_parameters(&state, &headers, query.as_deref())?;
    access.0.require(&key.resource_type, Permission::Read).map_err(ApiError::forbidden)?;
    let page = state.store.instance_history(&key, parameters.cursor, parameters.since, parameters.count, access.0.as_ref())?;
    // Nothing of it visible (also with `_count=0`, `_since`, `_cursor`): refused like a read.
    if page.versions.is_empty() && state.store.instance_history(&key, None, None, 1, access.0.as_ref())?.versions.is_empty() {
        return Err(access.0.refused_read().into());
    }
    access.0.audit_disclosed(Interaction::History, &page.versions);
    let self_path = format!("/{}/{}/_history", key.resource_type, key.id);
    Ok(history_bundle(&state, page, &self_path, &parameters))
}

/// `GET [base]/[type]/_history`
pub async fn type_history(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath(type_name): FhirPath<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let resource_type = resource_type(&type_name)?;
    let parameters = history_parameters(&state, &headers, query.as_deref())?;
    access.0.require(resource_type, Permission::Search).map_err(ApiError::forbidden)?;
    let page = state.store.type_history(resource_type, parameters.cursor, parameters.since, parameters.count, access.0.as_ref())?;
    access.0.audit_disclosed(Interaction::History, &page.versions);
    let self_path = format!("/{resource_type}/_history");
    Ok(history_bundle(&state, page, &self_path, &parameters))
}
