//! The audit trail's HTTP side: which AuditEvents a finished request leaves (one per patient
//! whose data it touched, or one naming no patient), and `AuditEvent/[id]` and
//! `AuditEvent?patient=[id]` served from the trail, through the same consent filter as
//! everything else (a patient sees every access to their own data).

use axum::http::{Method, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use crate::access::{Access, Decided};
use crate::audit::{AuditRecord, AuditTrail, Outcome};
use crate::consent::Interaction;

/// Most resources named in one AuditEvent (a large search names the first ones and the count).
const MAX_RESOURCES_PER_EVENT: usize = 50;

/// The FHIR interaction of a request under `/fhir`: (`restful-interaction` code, action, the
/// resource it names, the query's resource type and parameter names). `None`: not audited.
fn interaction(method: &Method, path: &str, query: Option<&str>) -> Option<(&'static str, &'static str, Option<String>, Option<String>)> {
    let rest = path.strip_prefix("/fhir")?.trim_matches('/');
    let segments: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    let names = || {
        let mut names: Vec<String> = crate::fhir::query::pairs(query.unwrap_or_default()).into_iter().map(|(name, _)| name).collect();
        names.sort();
        names.dedup();
        names.join("&")
    };
    let search = |resource_type: &str| Some(format!("{resource_type}?{}", names()));
    let instance = |resource_type: &str, id: &str| Some(format!("{resource_type}/{id}"));
    // HEAD runs the GET handler (axum): audited as the same read.
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    Some(match (method, segments.as_slice()) {
        ("GET", []) => ("search-system", "E", None, search("")),
        ("POST", []) => ("transaction", "E", None, None),
        ("GET", ["metadata" | ".well-known", ..]) => return None,
        ("GET", [resource_type]) => ("search-type", "E", None, search(resource_type)),
        ("POST", [_]) => ("create", "C", None, None),
        ("POST", [resource_type, "_search"]) => ("search-type", "E", None, search(resource_type)),
        ("GET", [resource_type, "_history"]) => ("history-type", "R", None, search(resource_type)),
        ("GET", [resource_type, id]) => ("read", "R", instance(resource_type, id), None),
        ("PUT", [resource_type, id]) => ("update", "U", instance(resource_type, id), None),
        ("DELETE", [resource_type, id]) => ("delete", "D", instance(resource_type, id), None),
        ("GET", [resource_type, id, "_history"]) => ("history-instance", "R", instance(resource_type, id), None),
        ("GET", [resource_type, id, "_history", _]) => ("vread", "R", instance(resource_type, id), None),
        ("POST", ["Patient", id, "$purge"]) => ("operation", "D", instance("Patient", id), None),
        ("GET", ["Patient", id, "$everything"]) => ("operation", "E", instance("Patient", id), search("Patient/$everything")),
        ("GET", ["Patient", id, compartment]) => ("search-type", "E", instance("Patient", id), search(compartment)),
        _ => return None,
    })
}

/// The AuditEvents a request leaves, from what `access` decided while it ran and its status.
pub(super) fn records(access: &Access, method: &Method, path: &str, query: Option<&str>, status: StatusCode) -> Vec<AuditRecord> {
    let Some((interaction, action, named, query)) = interaction(method, path, query) else {
        return Vec::new();
    };
    let requester = access.requester();
    let base = AuditRecord {
        interaction: interaction.into(),
        action: action.into(),
        recorded: crate::fhir::format_instant(crate::fhir::now_instant()),
        outcome: outcome_of(status, true),
        outcome_description: format!("HTTP {}", status.as_u16()),
        who: requester.reference.clone(),
        client_id: access.client_id().map(str::to_string),
        organization: requester.organization.clone(),
        purpose_of_use: requester.purpose_of_use.iter().map(|purpose| purpose.code.clone()).collect(),
        patient: None,
        resources: named.into_iter().collect(),
        consent: None,
        query,
        emergency: false,
    };
    let decided = access.decided();
    let mut patients: Vec<&str> = Vec::new();
    for decision in &decided {
        if !patients.contains(&decision.patient.as_str()) {
            patients.push(&decision.patient);
        }
    }
    if patients.is_empty() {
        return vec![base];
    }
    patients.into_iter().map(|patient| per_patient(&base, patient, &decided, status)).collect()
}

/// The AuditEvent about one patient: what was disclosed to (or withheld from) the requester.
fn per_patient(base: &AuditRecord, patient: &str, decided: &[Decided], status: StatusCode) -> AuditRecord {
    let about: Vec<&Decided> = decided.iter().filter(|decision| decision.patient == patient).collect();
    let permitted: Vec<&&Decided> = about.iter().filter(|decision| decision.permit).collect();
    let mut resources: Vec<String> = Vec::new();
    for decision in &about {
        if resources.len() < MAX_RESOURCES_PER_EVENT && !resources.contains(&decision.resource) {
            resources.push(decision.resource.clone());
        }
    }
    let deciding = permitted.first().copied().copied().or(about.first().copied()).expect("a patient with decisions");
    let withheld = about.len() - permitted.len();
    let outcome_description = match (permitted.len(), withheld) {
        (_, 0) | (0, _) => deciding.reason.to_string(),
        (shown, withheld) => format!("{}; {shown} shown, {withheld} withheld", deciding.reason),
    };
    AuditRecord {
        outcome: outcome_of(status, !permitted.is_empty()),
        outcome_description,
        patient: Some(patient.to_string()),
        resources,
        consent: deciding.consent.clone(),
        emergency: about.iter().any(|decision| decision.emergency),
        ..base.clone()
    }
}

fn outcome_of(status: StatusCode, permitted: bool) -> Outcome {
    if status.is_server_error() {
        Outcome::Failure
    } else if status.is_success() && permitted {
        Outcome::Success
    } else {
        Outcome::Refused
    }
}

/// `GET AuditEvent/[id]`: an event the caller may see, or 404 (also with `--denied-reads
/// forbidden`: the trail's ids are sequence numbers, so existence says nothing).
pub(super) fn read(trail: &AuditTrail, access: &Access, id: &str) -> Result<Value, ApiError> {
    trail
        .event(id)
        .filter(|event| access.may_read(Interaction::Read, event, None))
        .ok_or_else(|| ApiError::from(crate::store::StoreError::NotFound))
}

/// `GET AuditEvent?patient=[id]` (newest first): the events about a patient the caller may
/// see, and how many there are. A patient's own token may leave `patient` out.
pub(super) fn search(trail: &AuditTrail, access: &Access, pairs: &[(String, String)]) -> Result<Vec<Value>, ApiError> {
    let mut patient = None;
    for (name, value) in pairs {
        match name.as_str() {
            "patient" => patient = Some(value.trim_start_matches("Patient/").to_string()),
            "_count" | "_offset" | "_format" | "_pretty" | "_total" => {}
            other => return Err(ApiError::bad_request(format!("AuditEvent search supports patient, _count and _offset, not '{other}'"))),
        }
    }
    let patient = patient
        .or_else(|| access.requester().patient.clone().filter(|_| access.requester().kind == crate::consent::RequesterKind::Patient))
        .ok_or_else(|| ApiError::bad_request("AuditEvent search needs patient=[id]"))?;
    let events = trail.events_of_patient(&patient).map_err(|error| {
        tracing::error!(%error, "reading the audit index by patient");
        ApiError::from(crate::store::StoreError::Internal("the audit index could not be read".into()))
    })?;
    Ok(events.filter(|event| access.may_read(Interaction::Search, event, None)).collect())
}

/// A response when the trail cannot take the request's AuditEvents: nothing is disclosed.
pub(super) fn unavailable(reason: &str) -> ApiError {
    tracing::error!(reason, "audit trail unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the access could not be recorded in the audit trail; nothing was disclosed",
    )
}
