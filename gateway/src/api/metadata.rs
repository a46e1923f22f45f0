//! `GET [base]/metadata`: the CapabilityStatement. It lists exactly what works today and
//! nothing aspirational (e.g. conditional create on `identifier` and `_id` only), and how to get
//! in: SMART on FHIR bearer tokens, with the authorisation server's endpoints when configured.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::check_acceptable;
use super::{AppState, FHIR_JSON};
use crate::fhir::resource_type::RESOURCE_TYPES;
use crate::search::SearchParamTable;

pub async fn capability_statement(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let format = crate::fhir::query::pairs(query.as_deref().unwrap_or_default())
        .into_iter()
        .find(|(name, _)| name == "_format")
        .map(|(_, value)| value);
    check_acceptable(&headers, format.as_deref())?;
    let table = SearchParamTable::r4();
    let interactions: Vec<Value> = ["create", "read", "vread", "update", "delete", "history-instance", "history-type", "search-type"]
        .iter()
        .map(|code| json!({ "code": code }))
        .collect();
    let resources: Vec<Value> = RESOURCE_TYPES
        .iter()
        .map(|resource_type| {
            let search_params: Vec<Value> = table
                .params(resource_type)
                .iter()
                .filter(|param| param.is_supported())
                .map(|param| json!({ "name": param.name, "type": format!("{:?}", param.param_type).to_lowercase() }))
                .collect();
            let mut resource = json!({
                "type": resource_type,
                "interaction": interactions,
                "searchParam": search_params,
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
            });
            if *resource_type == "Patient" {
                resource["operation"] =
                    json!([
                        { "name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything" },
                        { "name": "purge", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-purge",
                          "documentation": "Erases every version of the patient and of its compartment (docs/ERASURE.md); needs the configured purge scope." }
                    ]);
            }
            resource
        })
        .collect();
    let mut security = json!({
        "cors": false,
        "service": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR" }] }],
        "description": "Every request needs a SMART App Launch v2 bearer access token (JWT, or opaque where introspection is configured). Scopes decide what a token may do; the patient's FHIR Consents decide what is disclosed (default deny); every access is recorded as an AuditEvent the patient can read with AuditEvent?patient=.",
    });
    if let Some(smart) = &state.smart_configuration {
        let uri = |name: &str, key: &str| smart.get(key).and_then(Value::as_str).map(|url| json!({ "url": name, "valueUri": url }));
        let uris: Vec<Value> = [uri("authorize", "authorization_endpoint"), uri("token", "token_endpoint")].into_iter().flatten().collect();
        security["extension"] =
            json!([{ "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": uris }]);
    }
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-21",
        "kind": "instance",
        "software": { "name": "fhir-gateway", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "FHIR R4 gateway: writes sealed, stored by IPFS CID and anchored in a signed Merkle log",
            "url": state.base_url.as_ref(),
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": [],
        "rest": [{
            "mode": "server",
            "documentation": "Conditional create (If-None-Exist), conditional references and conditional update/delete in Bundles support the parameters identifier and _id. Search supports every listed parameter, chained parameters (subject:Patient.name=, patient.organization.name=) and _has reverse chains, up to 3 links; a link may match at most 1000 resources. History supports _count, _since and paging. Patient, Observation and Consent are validated strictly against R4; other types must be a JSON object with a known resourceType, a valid id and a meta object.",
            "resource": resources,
            "security": security,
            "interaction": [{ "code": "transaction" }, { "code": "batch" }, { "code": "search-system" }],
        }],
    });
    let mut response = statement.to_string().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Ok(response)
}
