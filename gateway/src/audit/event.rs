//! One AuditEvent in the shape of IHE Basic Audit Log Patterns (BALP): who (the requesting agent,
//! its client and purpose of use), what (the patient, the resources, the deciding Consent), the
//! interaction and its outcome. Pure: the caller passes the time and the facts.
//!
//! No PHI: an AuditEvent names resources by reference and search parameters by name only (a
//! query's values, e.g. a name searched for, are never recorded).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SECURITY_SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const AGENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const CLIENT_ID_SYSTEM: &str = "urn:fhir-gateway:client-id";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// What happened, as the audit trail records it: the leaf of the trail is this record (compact
/// JSON, cheap to write on every request); [`audit_event`] renders it as a FHIR AuditEvent when
/// it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditRecord {
    /// A `restful-interaction` code: `read`, `vread`, `search-type`, `history-instance`,
    /// `create`, `update`, `delete`, `transaction`, `batch`, `operation` …
    pub interaction: Cow<'static, str>,
    /// FHIR `AuditEvent.action`: C, R, U, D or E.
    pub action: Cow<'static, str>,
    /// `Instant` text.
    pub recorded: String,
    pub outcome: Outcome,
    /// Why, for the patient reading it: "permitted by Consent/c1/_history/2", "denied: …".
    pub outcome_description: String,
    /// The requesting user (`Practitioner/p1`, `Patient/a`), if the token named one.
    pub who: Option<String>,
    /// The client (`client_id`) the request came through.
    pub client_id: Option<String>,
    pub organization: Option<String>,
    /// v3-ActReason codes; `BTG`/`ETREAT` mark a break-the-glass access.
    pub purpose_of_use: Vec<String>,
    /// The patient whose data this is about (`None`: no patient's).
    pub patient: Option<String>,
    /// The resources touched (`Type/id`), at most a few hundred.
    pub resources: Vec<String>,
    /// The Consent that decided (`Consent/id/_history/v`).
    pub consent: Option<String>,
    /// The resource type and parameter names of a search (never their values).
    pub query: Option<String>,
    pub emergency: bool,
}

/// `AuditEvent.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// `0`: done.
    #[serde(rename = "0")]
    Success,
    /// `4`: refused (consent, scope) or the request was wrong.
    #[serde(rename = "4")]
    Refused,
    /// `8`: the gateway failed.
    #[serde(rename = "8")]
    Failure,
}

impl Outcome {
    fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Refused => "4",
            Outcome::Failure => "8",
        }
    }
}

/// The AuditEvent resource for `record`, with id `id`.
pub fn audit_event(id: &str, record: &AuditRecord, gateway: &str) -> Value {
    let mut requestor = json!({
        "type": {"coding": [{"system": AGENT_TYPE, "code": if record.who.is_some() { "humanuser" } else { "dataprocessor" }}]},
        "requestor": true,
    });
    match (&record.who, &record.client_id) {
        (Some(who), _) => requestor["who"] = json!({"reference": who}),
        (None, Some(client_id)) => requestor["who"] = json!({"identifier": {"system": CLIENT_ID_SYSTEM, "value": client_id}}),
        (None, None) => {}
    }
    if !record.purpose_of_use.is_empty() {
        requestor["purposeOfUse"] = json!(purposes(&record.purpose_of_use));
    }
    let mut agents = vec![requestor];
    if let (Some(_), Some(client_id)) = (&record.who, &record.client_id) {
        agents.push(json!({
            "type": {"coding": [{"system": AGENT_TYPE, "code": "dataprocessor"}]},
            "who": {"identifier": {"system": CLIENT_ID_SYSTEM, "value": client_id}},
            "requestor": false,
        }));
    }
    if let Some(organization) = &record.organization {
        agents.push(json!({
            "type": {"coding": [{"system": AGENT_TYPE, "code": "legalentity"}]},
            "who": {"reference": organization},
            "requestor": false,
        }));
    }
    let mut entities = Vec::new();
    if let Some(patient) = &record.patient {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": ENTITY_TYPE, "code": "1"},
            "role": {"system": OBJECT_ROLE, "code": "1"},
        }));
    }
    for resource in &record.resources {
        entities.push(json!({"what": {"reference": resource}, "type": {"system": ENTITY_TYPE, "code": "2"}, "role": {"system": OBJECT_ROLE, "code": "4"}}));
    }
    if let Some(query) = &record.query {
        entities.push(
            json!({"type": {"system": ENTITY_TYPE, "code": "2"}, "role": {"system": OBJECT_ROLE, "code": "24"}, "description": query}),
        );
    }
    if let Some(consent) = &record.consent {
        entities.push(json!({"what": {"reference": consent}, "type": {"system": ENTITY_TYPE, "code": "2"}, "description": "the Consent that decided"}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": record.interaction.as_ref()}],
        "action": record.action.as_ref(),
        "recorded": record.recorded,
        "outcome": record.outcome.code(),
        "outcomeDesc": record.outcome_description,
        "agent": agents,
        "source": {"observer": {"display": gateway}, "type": [{"system": SECURITY_SOURCE_TYPE, "code": "4"}]},
    });
    if record.interaction == super::login::LOGIN {
        event["type"] = json!({"system": DICOM, "code": "110114", "display": "User Authentication"});
        event["subtype"] = json!([{"system": DICOM, "code": "110122", "display": "Login"}]);
    }
    if record.emergency {
        event["purposeOfEvent"] = json!(purposes(&["BTG".to_string()]));
    } else if !record.purpose_of_use.is_empty() {
        event["purposeOfEvent"] = json!(purposes(&record.purpose_of_use));
    }
    if !entities.is_empty() {
        event["entity"] = json!(entities);
    }
    event
}

fn purposes(codes: &[String]) -> Vec<Value> {
    codes.iter().map(|code| json!({"coding": [{"system": ACT_REASON, "code": code}]})).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{Leniency, validate_resource};

    fn record() -> AuditRecord {
        AuditRecord {
            interaction: "read".into(),
            action: "R".into(),
            recorded: "2026-11-21T10:00:00.000Z".into(),
            outcome: Outcome::Refused,
            outcome_description: "denied: no Consent permits it".into(),
            who: Some("Practitioner/p1".into()),
            client_id: Some("growth-chart".into()),
            organization: Some("Organization/h1".into()),
            purpose_of_use: vec!["TREAT".into()],
            patient: Some("pat-b".into()),
            resources: vec!["Observation/o1".into()],
            consent: Some("Consent/c1/_history/2".into()),
            query: Some("Observation?code&patient".into()),
            emergency: false,
        }
    }

    #[test]
    fn audit_events_are_valid_r4_and_name_who_what_and_why() {
        for emergency in [false, true] {
            let event = audit_event("17", &AuditRecord { emergency, ..record() }, "fhir-gateway");
            let errors: Vec<_> = validate_resource(&event, Leniency::Strict).into_iter().filter(|issue| issue.is_error()).collect();
            assert!(errors.is_empty(), "{errors:?}\n{event:#}");
            assert_eq!(event["agent"][0]["who"]["reference"], "Practitioner/p1");
            assert_eq!(event["agent"][0]["requestor"], true);
            assert_eq!(event["entity"][0]["what"]["reference"], "Patient/pat-b");
            assert_eq!(event["outcome"], "4");
            assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], if emergency { "BTG" } else { "TREAT" });
            // The consent filter finds the patient the event is about (R4 compartment: `patient`).
            assert_eq!(crate::access::facts::compartment_patients(&event), ["pat-b"]);
        }
        // The leaf form round-trips.
        let leaf = serde_json::to_vec(&record()).unwrap();
        assert_eq!(serde_json::from_slice::<AuditRecord>(&leaf).unwrap(), record());
        let anonymous = AuditRecord { who: None, client_id: None, organization: None, patient: None, consent: None, ..record() };
        let event = audit_event("18", &anonymous, "fhir-gateway");
        assert!(validate_resource(&event, Leniency::Strict).iter().all(|issue| !issue.is_error()), "{event:#}");
    }
}
