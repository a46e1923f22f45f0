//! Search interactions (R4 §3.1.0.9, §3.1.1): type search (`GET [type]?`, `POST [type]/_search`),
//! system search (`GET [base]?_type=`), Patient compartment search (`GET Patient/[id]/[type]`)
//! and `Patient/[id]/$everything`, answered as `searchset` Bundles.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use std::sync::Arc;

use super::AppState;
use super::auth::Authorized;
use super::bundle_body::{Entry, Resource, bundle_response};
use super::error::{ApiError, operation_outcome};
use super::extract::{FhirPath, Prefer, check_acceptable};
use super::resource::disclosed;
use crate::access::Access;
use crate::auth::Permission;
use crate::consent::Interaction;
use crate::fhir::{self, Leniency, format_instant, is_valid_id, resource_type::is_resource_type};
use crate::search::{SearchParamTable, SearchQuery, Summary, TotalMode, parse_query};
use crate::store::StoredVersion;
use crate::store::catalog::ResourceKey;
use crate::store::search::{MAX_INCLUDES_PER_PAGE, SearchPage};

/// Parameters this server handles itself (paging), not FHIR search parameters.
const PAGING: &str = "_offset";

struct Request {
    pairs: Vec<(String, String)>,
    offset: usize,
    count: usize,
    lenient: bool,
}

fn request(state: &AppState, headers: &HeaderMap, pairs: Vec<(String, String)>) -> Result<Request, ApiError> {
    let format = pairs.iter().find(|(name, _)| name == "_format").map(|(_, value)| value.clone());
    check_acceptable(headers, format.as_deref())?;
    let lenient = Prefer::from_headers(headers).leniency == Leniency::Lenient;
    let mut offset = 0;
    let mut search_pairs = Vec::new();
    for (name, value) in pairs {
        if name == PAGING {
            offset = value.parse().map_err(|_| ApiError::bad_request("_offset must be a non-negative integer"))?;
        } else {
            search_pairs.push((name, value));
        }
    }
    let count = match search_pairs.iter().rev().find(|(name, _)| name == "_count") {
        Some((_, value)) => value
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("_count must be a non-negative integer"))?
            .min(state.limits.max_page_size),
        None => state.limits.default_page_size,
    };
    Ok(Request { pairs: search_pairs, offset, count, lenient })
}

fn parse(resource_type: &str, request: &Request) -> Result<SearchQuery, ApiError> {
    let query = parse_query(SearchParamTable::r4(), resource_type, &request.pairs, request.lenient)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    if matches!(query.summary, Some(Summary::True | Summary::Text | Summary::Data)) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "not-supported", "_summary supports count and false"));
    }
    Ok(query)
}

fn resource_type(name: &str) -> Result<&str, ApiError> {
    if is_resource_type(name) { Ok(name) } else { Err(ApiError::not_found(format!("'{name}' is not a FHIR R4 resource type"))) }
}

/// `_elements`: keep the named top-level elements (and the mandatory `resourceType`, `id`,
/// `meta`), and tag the result SUBSETTED.
fn apply_elements(mut resource: Value, elements: &[String]) -> Value {
    if elements.is_empty() {
        return resource;
    }
    if let Some(object) = resource.as_object_mut() {
        object.retain(|name, _| matches!(name.as_str(), "resourceType" | "id" | "meta") || elements.iter().any(|element| element == name));
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(json!({ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED" }));
            }
        }
    }
    resource
}

fn entry(state: &AppState, version: StoredVersion, mode: &str, elements: &[String]) -> Entry {
    let key = &version.key;
    let resource = version.body.map(|body| match elements {
        [] => Resource::Stored(body),
        elements => Resource::Value(apply_elements(serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null), elements)),
    });
    let fields = json!({
        "fullUrl": format!("{}/{}/{}", state.base_url, key.resource_type, key.id),
        "search": { "mode": mode },
    });
    Entry { fields, resource }
}

fn self_url(path: &str, pairs: &[(String, String)], offset: Option<usize>) -> String {
    let mut query: Vec<String> = pairs.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect();
    if let Some(offset) = offset {
        query.push(format!("{PAGING}={offset}"));
    }
    if query.is_empty() { path.to_string() } else { format!("{path}?{}", query.join("&")) }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'|' | b',' | b'$' | b'/' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn searchset(state: &AppState, path: &str, request: &Request, query: &SearchQuery, page: SearchPage) -> Response {
    let count_only = query.summary == Some(Summary::Count);
    let mut entries: Vec<Entry> = Vec::new();
    if !count_only {
        entries.extend(page.matches.into_iter().map(|version| entry(state, version, "match", &query.elements)));
        entries.extend(page.includes.into_iter().map(|version| entry(state, version, "include", &query.elements)));
    }
    if page.includes_truncated && !count_only {
        let message = format!(
            "this page has more _include/_revinclude resources than the {MAX_INCLUDES_PER_PAGE} a page carries; \
             the first {MAX_INCLUDES_PER_PAGE} are included: ask for fewer matches per page (_count) to get them all"
        );
        let outcome = operation_outcome("warning", "too-costly", &message);
        entries.push(Entry { fields: json!({ "search": { "mode": "outcome" } }), resource: Some(Resource::Value(outcome)) });
    }
    if !query.unknown.is_empty() {
        let message = format!("ignored unknown or unsupported parameters: {}", query.unknown.join(", "));
        let outcome = operation_outcome("warning", "not-supported", &message);
        entries.push(Entry { fields: json!({ "search": { "mode": "outcome" } }), resource: Some(Resource::Value(outcome)) });
    }
    let base_path = format!("{}{}", state.base_url, path);
    let mut links =
        vec![json!({ "relation": "self", "url": self_url(&base_path, &request.pairs, (request.offset > 0).then_some(request.offset)) })];
    if let Some(next) = page.next_offset.filter(|_| !count_only) {
        links.push(json!({ "relation": "next", "url": self_url(&base_path, &request.pairs, Some(next)) }));
    }
    if request.offset > 0 && !count_only {
        let previous = request.offset.saturating_sub(request.count);
        links.push(json!({ "relation": "previous", "url": self_url(&base_path, &request.pairs, Some(previous)) }));
    }
    let mut envelope = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "meta": { "lastUpdated": format_instant(fhir::now_instant()) },
        "link": links,
    });
    let show_total = count_only || query.total != Some(TotalMode::None);
    if let (true, Some(total)) = (show_total, page.total) {
        envelope["total"] = json!(total);
    }
    bundle_response(envelope, entries)
}

async fn run(
    state: AppState,
    access: Arc<Access>,
    path: String,
    resource_type: String,
    compartment: Option<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let query = parse(&resource_type, &request)?;
    access.require(&resource_type, Permission::Search).map_err(ApiError::forbidden)?;
    if resource_type == "AuditEvent" && compartment.is_none() {
        state.audit.caught_up().await;
        let events = super::audit::search(&state.audit, &access, &request.pairs)?;
        let page = page_of(events.into_iter().map(audit_event_version).collect(), request.offset, request.count);
        return Ok(searchset(&state, &path, &request, &query, page));
    }
    let store = state.store.clone();
    let access_for_audit = Arc::clone(&access);
    let (offset, count) = (request.offset, request.count);
    let compartment_for_task = compartment.clone();
    let query_for_task = query.clone();
    let page =
        tokio::task::spawn_blocking(move || store.search(&query_for_task, compartment_for_task.as_deref(), offset, count, access.as_ref()))
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "search task failed"))??;
    access_for_audit.audit_disclosed(Interaction::Search, &page.matches);
    access_for_audit.audit_also(Interaction::Read, &page.includes);
    Ok(searchset(&state, &path, &request, &query, page))
}

/// `GET [base]/[type]?params`
pub async fn search_type(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath(type_name): FhirPath<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let resource_type = resource_type(&type_name)?.to_string();
    let request = request(&state, &headers, fhir::query::pairs(query.as_deref().unwrap_or_default()))?;
    run(state, access.0, format!("/{resource_type}"), resource_type, None, request).await
}

/// `POST [base]/[type]/_search` with `application/x-www-form-urlencoded` parameters (and any
/// in the URL).
pub async fn search_type_post(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath(type_name): FhirPath<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let resource_type = resource_type(&type_name)?.to_string();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !body.is_empty() && !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "_search parameters must be sent as application/x-www-form-urlencoded",
        ));
    }
    let mut pairs = fhir::query::pairs(query.as_deref().unwrap_or_default());
    let form = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the form body is not UTF-8"))?;
    pairs.extend(fhir::query::pairs(form));
    let request = request(&state, &headers, pairs)?;
    run(state, access.0, format!("/{resource_type}"), resource_type, None, request).await
}

/// `GET [base]/Patient/[id]/[type]?params` (compartment search) and `GET [base]/Patient/[id]/$everything`.
pub async fn compartment(
    State(state): State<AppState>,
    access: Authorized,
    FhirPath((compartment_type, id, target)): FhirPath<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if compartment_type != "Patient" {
        return Err(ApiError::not_found("only the Patient compartment is supported"));
    }
    if !is_valid_id(&id) {
        return Err(ApiError::not_found("no resource has this id"));
    }
    let pairs = fhir::query::pairs(query.as_deref().unwrap_or_default());
    let patient = ResourceKey { resource_type: "Patient".into(), id: id.clone() };
    if target == "$everything" {
        return everything(state, access.0, id, headers, pairs).await;
    }
    let resource_type = resource_type(&target)?.to_string();
    let request = request(&state, &headers, pairs)?;
    parse(&resource_type, &request)?;
    // Bad input first (400), then the patient must exist for the caller (a deleted one is 410).
    disclosed(&state.store, &access.0, Interaction::Read, &patient, state.store.read(&patient))?;
    let path = format!("/Patient/{id}/{resource_type}");
    run(state, access.0, path, resource_type, Some(format!("Patient/{id}")), request).await
}

/// `Patient/[id]/$everything` with `_since`, `_type`, `_count` (and `_offset` paging): the
/// patient and every resource of its compartment.
async fn everything(
    state: AppState,
    access: Arc<Access>,
    id: String,
    headers: HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let format = pairs.iter().find(|(name, _)| name == "_format").map(|(_, value)| value.clone());
    check_acceptable(&headers, format.as_deref())?;
    let mut since = None;
    let mut types: Option<Vec<String>> = None;
    let mut offset = 0usize;
    let mut count = state.limits.default_page_size;
    for (name, value) in &pairs {
        match name.as_str() {
            "_since" => since = Some(value.clone()),
            "_type" => types = Some(value.split(',').map(str::to_string).collect()),
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request("_count must be a non-negative integer"))?
                    .min(state.limits.max_page_size)
            }
            PAGING => offset = value.parse().map_err(|_| ApiError::bad_request("_offset must be a non-negative integer"))?,
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::bad_request(format!("$everything does not support the parameter '{other}'")));
            }
        }
    }
    let patient = ResourceKey { resource_type: "Patient".into(), id: id.clone() };
    disclosed(&state.store, &access, Interaction::Read, &patient, state.store.read(&patient))?;
    let table = SearchParamTable::r4();
    let mut compartment_types: Vec<String> = table
        .resource_types()
        .filter(|resource_type| *resource_type == "Patient" || !table.patient_compartment_params(resource_type).is_empty())
        .map(str::to_string)
        .collect();
    if let Some(types) = &types {
        for wanted in types {
            resource_type(wanted)?;
        }
        compartment_types.retain(|resource_type| types.contains(resource_type));
    }
    let store = state.store.clone();
    let access_for_audit = Arc::clone(&access);
    let since_pairs: Vec<(String, String)> = since.iter().map(|since| ("_lastUpdated".to_string(), format!("ge{since}"))).collect();
    let compartment = format!("Patient/{id}");
    let page = tokio::task::spawn_blocking(move || -> Result<SearchPage, ApiError> {
        let mut queries = Vec::new();
        for resource_type in compartment_types {
            if access.require(&resource_type, Permission::Search).is_err() {
                continue;
            }
            queries
                .push(parse_query(table, &resource_type, &since_pairs, false).map_err(|error| ApiError::bad_request(error.to_string()))?);
        }
        page_across(&store, &queries, Some(&compartment), offset, count, access.as_ref())
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "search task failed"))??;
    access_for_audit.audit_disclosed(Interaction::Search, &page.matches);
    let request = Request { pairs: pairs.into_iter().filter(|(name, _)| name != PAGING).collect(), offset, count, lenient: false };
    let query = parse_query(table, "Patient", &[], false).map_err(|error| ApiError::bad_request(error.to_string()))?;
    Ok(searchset(&state, &format!("/Patient/{id}/$everything"), &request, &query, page))
}

/// One page of `all`, counted before paging.
fn page_of(all: Vec<StoredVersion>, offset: usize, count: usize) -> SearchPage {
    let total = all.len();
    SearchPage {
        next_offset: (count > 0 && offset.saturating_add(count) < total).then_some(offset.saturating_add(count)),
        matches: all.into_iter().skip(offset).take(count).collect(),
        includes: Vec::new(),
        includes_truncated: false,
        total: Some(total),
    }
}

/// One page of the results of `queries` one after another (a system search's types,
/// `$everything`'s compartment types): each is counted, and asked only for the part of the page
/// it fills, so no more than a page is ever read and held.
fn page_across(
    store: &crate::store::ResourceStore,
    queries: &[SearchQuery],
    compartment: Option<&str>,
    offset: usize,
    count: usize,
    guard: &dyn crate::store::ReadGuard,
) -> Result<SearchPage, ApiError> {
    let mut skip = offset;
    let mut matches: Vec<StoredVersion> = Vec::new();
    // `None` once a type has too many candidates to count (it is then read in ledger order only
    // up to the page, see `ResourceStore::search`).
    let mut total = Some(0usize);
    let mut more = false;
    for query in queries {
        // Paging across types needs each type's count, whatever `_total` says for the answer.
        let query = SearchQuery { total: None, ..query.clone() };
        let wanted = count - matches.len();
        let page = store.search(&query, compartment, skip, wanted, guard)?;
        let found = page.matches.len();
        match page.total {
            Some(counted) => {
                total = total.map(|total| total + counted);
                skip = skip.saturating_sub(counted);
            }
            None if found == 0 && skip > 0 => {
                return Err(ApiError::bad_request(format!(
                    "{} has too many matches to count, so pages after it cannot be found across types; search it on its own",
                    query.resource_type
                )));
            }
            None => {
                total = None;
                more |= page.next_offset.is_some();
                if found < wanted {
                    skip = 0;
                }
            }
        }
        matches.extend(page.matches);
        if matches.len() == count && total.is_none() {
            more = true;
            break;
        }
    }
    let next = offset.saturating_add(count);
    let next_offset = match total {
        Some(total) => count > 0 && next < total,
        None => count > 0 && more,
    };
    Ok(SearchPage { next_offset: next_offset.then_some(next), matches, includes: Vec::new(), includes_truncated: false, total })
}

/// An AuditEvent from the audit trail, shaped as a stored version for the searchset.
fn audit_event_version(event: Value) -> StoredVersion {
    let id = event.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    StoredVersion {
        key: ResourceKey { resource_type: "AuditEvent".into(), id },
        version_id: 1,
        last_updated: fhir::now_instant(),
        body: Some(event.to_string().into_bytes()),
        author: None,
    }
}

/// `GET [base]?_type=A,B&params`: a search across the listed types (parameters common to them).
pub async fn search_system(
    State(state): State<AppState>,
    access: Authorized,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let access = access.0;
    let pairs = fhir::query::pairs(query.as_deref().unwrap_or_default());
    let types: Vec<String> = pairs
        .iter()
        .find(|(name, _)| name == "_type")
        .map(|(_, value)| value.split(',').map(str::to_string).collect())
        .ok_or_else(|| ApiError::bad_request("a system search needs _type (e.g. _type=Patient,Observation)"))?;
    for wanted in &types {
        resource_type(wanted)?;
    }
    let request = request(&state, &headers, pairs.into_iter().filter(|(name, _)| name != "_type").collect())?;
    let queries: Vec<SearchQuery> = types.iter().map(|resource_type| parse(resource_type, &request)).collect::<Result<_, _>>()?;
    for resource_type in &types {
        access.require(resource_type, Permission::Search).map_err(ApiError::forbidden)?;
    }
    let store = state.store.clone();
    let access_for_audit = Arc::clone(&access);
    let (offset, count) = (request.offset, request.count);
    let page = tokio::task::spawn_blocking(move || -> Result<SearchPage, ApiError> {
        let mut page = page_across(&store, &queries, None, offset, count, access.as_ref())?;
        let mut listed: std::collections::HashSet<ResourceKey> = page.matches.iter().map(|version| version.key.clone()).collect();
        for query in &queries {
            let (includes, truncated) = store.includes_of(query, &page.matches, access.as_ref())?;
            page.includes_truncated |= truncated;
            for version in includes {
                if page.includes.len() >= MAX_INCLUDES_PER_PAGE {
                    page.includes_truncated = true;
                    break;
                }
                if listed.insert(version.key.clone()) {
                    page.includes.push(version);
                }
            }
        }
        Ok(page)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "search task failed"))??;
    access_for_audit.audit_disclosed(Interaction::Search, &page.matches);
    access_for_audit.audit_also(Interaction::Read, &page.includes);
    let query = parse(&types[0], &request)?;
    let mut request = request;
    request.pairs.insert(0, ("_type".into(), types.join(",")));
    Ok(searchset(&state, "", &request, &query, page))
}
