//! Consent decisions through the public API: hand-written Consents for each rule, then the 12
//! official R4 examples, each against a sample request (the table in docs/CONSENT.md).

use serde_json::{Value, json};

use super::terminology::{ACT_REASON, CONFIDENTIALITY, CONSENT_ACTION, CONSENT_SCOPE, PARTICIPATION_TYPE, RESOURCE_TYPES};
use super::*;
use crate::search::datetime::parse_date_range;

const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const LOINC: &str = "http://loinc.org";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const LOCAL_ROLES: &str = "http://hospital.example/roles";

fn at(text: &str) -> i64 {
    parse_date_range(text).expect("test date").start_ms
}

fn now() -> i64 {
    at("2025-06-15T12:00:00Z")
}

fn consent(id: &str, patient: &str, provision: Value) -> Value {
    json!({
        "resourceType": "Consent",
        "id": id,
        "meta": { "versionId": "1" },
        "status": "active",
        "scope": { "coding": [{ "system": CONSENT_SCOPE, "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": LOINC, "code": "59284-0" }] }],
        "patient": { "reference": format!("Patient/{patient}") },
        "policyRule": { "coding": [{ "system": ACT_CODE, "code": "OPTIN" }] },
        "provision": provision,
    })
}

fn compile(consent: Value) -> ConsentPolicy {
    ConsentPolicy::compile(&consent).expect("consent compiles")
}

fn recipient(reference: &str) -> Value {
    json!({ "role": { "coding": [{ "system": PARTICIPATION_TYPE, "code": "PRCP" }] }, "reference": { "reference": reference } })
}

fn action(code: &str) -> Value {
    json!({ "coding": [{ "system": CONSENT_ACTION, "code": code }] })
}

/// A permit for `actor` to access everything of the patient.
fn permit_to(actor: &str) -> Value {
    json!({ "type": "permit", "actor": [recipient(actor)], "action": [action("access")] })
}

fn purpose(code: &str) -> Code {
    Code::new(ACT_REASON, code)
}

fn practitioner(reference: &str, organization: &str) -> Requester {
    Requester {
        kind: RequesterKind::Practitioner,
        reference: Some(reference.to_string()),
        patient: None,
        organization: Some(organization.to_string()),
        roles: vec![Code::new(LOCAL_ROLES, "physician")],
        purpose_of_use: vec![purpose("TREAT")],
        emergency_reason: None,
    }
}

fn patient(id: &str) -> Requester {
    Requester {
        kind: RequesterKind::Patient,
        reference: Some(format!("Patient/{id}")),
        patient: Some(id.to_string()),
        organization: None,
        roles: Vec::new(),
        purpose_of_use: vec![purpose("PATRQT")],
        emergency_reason: None,
    }
}

/// A heart-rate Observation (vital signs) of `patient`, created by Organization/hospital.
fn observation(id: &str, patient: &str) -> ResourceFacts {
    ResourceFacts {
        resource_type: "Observation".to_string(),
        reference: format!("Observation/{id}"),
        patient: Some(patient.to_string()),
        categories: vec![Code::new(OBSERVATION_CATEGORY, "vital-signs")],
        codes: vec![Code::new(LOINC, "8867-4")],
        security_labels: Vec::new(),
        author_organization: Some("Organization/hospital".to_string()),
        data_time: Some((at("2025-06-01T08:00:00Z"), at("2025-06-01T08:00:00Z"))),
    }
}

fn lab_observation(id: &str, patient: &str) -> ResourceFacts {
    ResourceFacts {
        categories: vec![Code::new(OBSERVATION_CATEGORY, "laboratory")],
        codes: vec![Code::new(LOINC, "2345-7")],
        ..observation(id, patient)
    }
}

fn resource(reference: &str, patient: &str) -> ResourceFacts {
    ResourceFacts {
        resource_type: reference.split('/').next().unwrap().to_string(),
        reference: reference.to_string(),
        categories: Vec::new(),
        codes: Vec::new(),
        ..observation("unused", patient)
    }
}

/// Consent rules alone: no author-organisation default; one emergency role configured.
fn options() -> DecisionOptions {
    DecisionOptions { author_org_treatment: false, emergency_roles: vec![Code::new(LOCAL_ROLES, "emergency-physician")] }
}

fn read(requester: &Requester, facts: &ResourceFacts, policies: &[ConsentPolicy]) -> Decision {
    decide(requester, Interaction::Read, facts, policies, now(), &options())
}

fn permitted_by(id: &str) -> Decision {
    Decision { permit: true, basis: Basis::Consent { id: id.to_string(), version: Some("1".to_string()) }, emergency: false }
}

fn denied_by(id: &str) -> Decision {
    Decision { permit: false, basis: Basis::DeniedByConsent { id: id.to_string(), version: Some("1".to_string()) }, emergency: false }
}

fn denied(basis: Basis) -> Decision {
    Decision { permit: false, basis, emergency: false }
}

fn permitted(basis: Basis) -> Decision {
    Decision { permit: true, basis, emergency: false }
}

#[test]
fn default_is_deny_without_consents() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &[]), denied(Basis::NoConsent));
}

#[test]
fn patient_reads_own_compartment_whatever_the_consents_say() {
    let deny_everyone = compile(consent("c1", "p1", json!({ "type": "deny" })));
    let own = observation("o1", "p1");
    assert_eq!(read(&patient("p1"), &own, &[]), permitted(Basis::OwnCompartment));
    assert_eq!(read(&patient("p1"), &own, std::slice::from_ref(&deny_everyone)), permitted(Basis::OwnCompartment));
    // The patient creates and revokes their own Consents.
    let consent_facts = resource("Consent/c1", "p1");
    let decision = decide(&patient("p1"), Interaction::Update, &consent_facts, &[deny_everyone], now(), &options());
    assert_eq!(decision, permitted(Basis::OwnCompartment));
}

#[test]
fn patient_is_denied_another_patients_compartment() {
    assert_eq!(read(&patient("p2"), &observation("o1", "p1"), &[]), denied(Basis::NoConsent));
    // A Consent of p1 naming p1 as recipient does not let p2 in.
    let only_p1 = compile(consent("c1", "p1", permit_to("Patient/p1")));
    assert_eq!(read(&patient("p2"), &observation("o1", "p1"), &[only_p1]), denied(Basis::NoConsent));
}

#[test]
fn a_patient_marker_that_is_not_an_id_is_nobodys_own_compartment() {
    // The undeterminable patient's marker, even if a requester claimed it as its patient.
    let unknown = observation("o1", "?");
    assert_eq!(read(&patient("?"), &unknown, &[]), denied(Basis::NoConsent));
}

#[test]
fn resources_outside_patient_compartments_are_not_decided_here() {
    let organization = ResourceFacts { patient: None, ..resource("Organization/hospital", "unused") };
    assert_eq!(read(&patient("p1"), &organization, &[]), denied(Basis::NoPatientCompartment));
}

#[test]
fn consent_permits_the_named_actor_only() {
    let policies = [compile(consent("c1", "p1", permit_to("Practitioner/dr-a")))];
    let facts = observation("o1", "p1");
    assert_eq!(read(&practitioner("Practitioner/dr-a", "Organization/hospital"), &facts, &policies), permitted_by("c1"));
    assert_eq!(read(&practitioner("Practitioner/dr-b", "Organization/hospital"), &facts, &policies), denied(Basis::NoConsent));
    // A practitioner whose identity is unknown is not the named one.
    let anonymous = Requester { reference: None, ..practitioner("Practitioner/dr-a", "Organization/hospital") };
    assert_eq!(read(&anonymous, &facts, &policies), denied(Basis::NoConsent));
}

#[test]
fn organization_actor_covers_its_practitioners_and_system_clients() {
    let policies = [compile(consent("c1", "p1", permit_to("Organization/clinic")))];
    let facts = observation("o1", "p1");
    assert_eq!(read(&practitioner("Practitioner/dr-c", "Organization/clinic"), &facts, &policies), permitted_by("c1"));
    let system = Requester { kind: RequesterKind::System, reference: None, ..practitioner("unused", "Organization/clinic") };
    assert_eq!(read(&system, &facts, &policies), permitted_by("c1"));
    assert_eq!(read(&practitioner("Practitioner/dr-a", "Organization/hospital"), &facts, &policies), denied(Basis::NoConsent));
}

#[test]
fn consent_period_limits_the_permit() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["period"] = json!({ "start": "2025-06-01", "end": "2025-06-30T12:00:00Z" });
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    let read_at = |time: &str| decide(&doctor, Interaction::Read, &facts, &policies, at(time), &options());
    assert_eq!(read_at("2025-06-01T00:00:00Z"), permitted_by("c1"));
    assert_eq!(read_at("2025-06-30T12:00:00Z"), permitted_by("c1"));
    assert_eq!(read_at("2025-06-30T12:00:01Z"), denied(Basis::NoConsent));
    assert_eq!(read_at("2025-05-31T23:59:59Z"), denied(Basis::NoConsent));
}

#[test]
fn consent_starting_in_the_future_does_not_permit_yet() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["period"] = json!({ "start": "2025-07-01" });
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), denied(Basis::NoConsent));
}

#[test]
fn partial_dates_cover_their_whole_precision() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["period"] = json!({ "end": "2025" });
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    let read_at = |time: &str| decide(&doctor, Interaction::Read, &facts, &policies, at(time), &options());
    assert_eq!(read_at("2025-12-31T23:59:59Z"), permitted_by("c1"));
    assert_eq!(read_at("2026-01-01T00:00:00Z"), denied(Basis::NoConsent));
}

#[test]
fn purpose_must_match_the_stated_purpose_of_use() {
    let mut provision = permit_to("Organization/research-institute");
    provision["purpose"] = json!([{ "system": ACT_REASON, "code": "HRESCH" }]);
    let policies = [compile(consent("c1", "p1", provision))];
    let facts = observation("o1", "p1");
    let researcher = |purpose_code: &str| Requester {
        purpose_of_use: vec![purpose(purpose_code)],
        ..practitioner("Practitioner/r1", "Organization/research-institute")
    };
    assert_eq!(read(&researcher("TREAT"), &facts, &policies), denied(Basis::NoConsent));
    assert_eq!(read(&researcher("HRESCH"), &facts, &policies), permitted_by("c1"));
    // Clinical trial research is a kind of healthcare research.
    assert_eq!(read(&researcher("CLINTRCH"), &facts, &policies), permitted_by("c1"));
}

#[test]
fn class_limits_the_permit_to_resource_types() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["class"] = json!([{ "system": RESOURCE_TYPES, "code": "Observation" }]);
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), permitted_by("c1"));
    assert_eq!(read(&doctor, &resource("Condition/x1", "p1"), &policies), denied(Basis::NoConsent));
}

#[test]
fn code_limits_the_permit_to_vital_signs() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["code"] = json!([{ "coding": [{ "system": OBSERVATION_CATEGORY, "code": "vital-signs" }] }]);
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), permitted_by("c1"));
    assert_eq!(read(&doctor, &lab_observation("o2", "p1"), &policies), denied(Basis::NoConsent));
}

#[test]
fn nested_deny_is_an_exception_to_the_permit() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["provision"] = json!([{ "type": "deny", "securityLabel": [{ "system": ACT_CODE, "code": "PSY" }] }]);
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let psychiatric = ResourceFacts { security_labels: vec![Code::new(ACT_CODE, "PSY")], ..observation("o2", "p1") };
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), permitted_by("c1"));
    assert_eq!(read(&doctor, &psychiatric, &policies), denied_by("c1"));
}

#[test]
fn nested_permit_is_an_exception_to_the_deny() {
    let provision = json!({ "type": "deny", "provision": [permit_to("Practitioner/dr-a")] });
    let policies = [compile(consent("c1", "p1", provision))];
    let facts = observation("o1", "p1");
    assert_eq!(read(&practitioner("Practitioner/dr-a", "Organization/hospital"), &facts, &policies), permitted_by("c1"));
    assert_eq!(read(&practitioner("Practitioner/dr-b", "Organization/hospital"), &facts, &policies), denied_by("c1"));
}

#[test]
fn conflicting_provisions_at_the_same_depth_deny() {
    let provision = json!({
        "type": "deny",
        "provision": [
            permit_to("Practitioner/dr-a"),
            { "type": "deny", "class": [{ "system": RESOURCE_TYPES, "code": "Observation" }] },
        ],
    });
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), denied_by("c1"));
    assert_eq!(read(&doctor, &resource("Condition/x1", "p1"), &policies), permitted_by("c1"));
}

#[test]
fn conflicting_consents_deny_in_either_order() {
    let permit = compile(consent("c-permit", "p1", permit_to("Practitioner/dr-a")));
    let deny = compile(consent("c-deny", "p1", json!({ "type": "deny", "actor": [recipient("Practitioner/dr-a")] })));
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    assert_eq!(read(&doctor, &facts, &[permit.clone(), deny.clone()]), denied_by("c-deny"));
    assert_eq!(read(&doctor, &facts, &[deny, permit]), denied_by("c-deny"));
}

#[test]
fn only_active_consents_count() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    for status in ["inactive", "rejected", "proposed", "draft", "entered-in-error"] {
        let mut resource = consent("c1", "p1", permit_to("Practitioner/dr-a"));
        resource["status"] = json!(status);
        let policy = compile(resource);
        assert!(!policy.is_active());
        assert_eq!(read(&doctor, &facts, &[policy]), denied(Basis::NoConsent), "status {status}");
    }
}

#[test]
fn revoked_deny_no_longer_blocks_the_author_organisation() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    let defaults = DecisionOptions::default();
    let mut resource = consent("c1", "p1", json!({ "type": "deny" }));
    let active = compile(resource.clone());
    resource["status"] = json!("inactive");
    let revoked = compile(resource);
    assert_eq!(decide(&doctor, Interaction::Read, &facts, &[active], now(), &defaults), denied_by("c1"));
    assert_eq!(decide(&doctor, Interaction::Read, &facts, &[revoked], now(), &defaults), permitted(Basis::AuthorOrganization));
}

#[test]
fn another_patients_consent_is_ignored() {
    let policies = [compile(consent("c1", "p2", permit_to("Practitioner/dr-a")))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), denied(Basis::NoConsent));
    assert_eq!(read(&doctor, &observation("o2", "p2"), &policies), permitted_by("c1"));
}

#[test]
fn author_organisation_reads_its_records_for_treatment_when_enabled() {
    let on = DecisionOptions { author_org_treatment: true, ..options() };
    let off = DecisionOptions { author_org_treatment: false, ..options() };
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    assert_eq!(decide(&doctor, Interaction::Read, &facts, &[], now(), &on), permitted(Basis::AuthorOrganization));
    assert_eq!(decide(&doctor, Interaction::Search, &facts, &[], now(), &on), permitted(Basis::AuthorOrganization));
    assert_eq!(decide(&doctor, Interaction::Read, &facts, &[], now(), &off), denied(Basis::NoConsent));
    // Not for another organisation, another purpose, a write, or against a Consent's deny.
    let elsewhere = practitioner("Practitioner/dr-x", "Organization/elsewhere");
    assert_eq!(decide(&elsewhere, Interaction::Read, &facts, &[], now(), &on), denied(Basis::NoConsent));
    let researcher = Requester { purpose_of_use: vec![purpose("HRESCH")], ..doctor.clone() };
    assert_eq!(decide(&researcher, Interaction::Read, &facts, &[], now(), &on), denied(Basis::NoConsent));
    let no_purpose = Requester { purpose_of_use: Vec::new(), ..doctor.clone() };
    assert_eq!(decide(&no_purpose, Interaction::Read, &facts, &[], now(), &on), denied(Basis::NoConsent));
    assert_eq!(decide(&doctor, Interaction::Update, &facts, &[], now(), &on), denied(Basis::NoConsent));
    let withheld = [compile(consent("c1", "p1", json!({ "type": "deny", "actor": [recipient("Organization/hospital")] })))];
    assert_eq!(decide(&doctor, Interaction::Read, &facts, &withheld, now(), &on), denied_by("c1"));
}

fn emergency_doctor(role: &str, reason: Option<&str>, purpose_code: &str) -> Requester {
    Requester {
        roles: vec![Code::new(LOCAL_ROLES, role)],
        purpose_of_use: vec![purpose(purpose_code)],
        emergency_reason: reason.map(str::to_string),
        ..practitioner("Practitioner/er-1", "Organization/elsewhere")
    }
}

#[test]
fn break_the_glass_with_role_and_reason_is_an_audited_override() {
    let facts = observation("o1", "p1");
    let withheld = [compile(consent("c1", "p1", json!({ "type": "deny" })))];
    let expected = Decision { permit: true, basis: Basis::EmergencyOverride, emergency: true };
    for purpose_code in ["ETREAT", "BTG"] {
        let doctor = emergency_doctor("emergency-physician", Some("unconscious on arrival"), purpose_code);
        assert_eq!(read(&doctor, &facts, &[]), expected);
        assert_eq!(read(&doctor, &facts, &withheld), expected);
    }
}

#[test]
fn break_the_glass_without_role_or_reason_is_refused_and_flagged() {
    let facts = observation("o1", "p1");
    let refused = Decision { permit: false, basis: Basis::EmergencyRefused, emergency: true };
    assert_eq!(read(&emergency_doctor("physician", Some("unconscious on arrival"), "ETREAT"), &facts, &[]), refused);
    assert_eq!(read(&emergency_doctor("emergency-physician", None, "ETREAT"), &facts, &[]), refused);
    assert_eq!(read(&emergency_doctor("emergency-physician", Some("  "), "BTG"), &facts, &[]), refused);
    // Refused even where a Consent would have permitted: the request asked for an override.
    let permit = [compile(consent("c1", "p1", permit_to("Practitioner/er-1")))];
    assert_eq!(read(&emergency_doctor("physician", None, "ETREAT"), &facts, &permit), refused);
    // A write with an emergency purpose is no break-the-glass; it is decided by the Consents.
    let write = decide(&emergency_doctor("emergency-physician", Some("x"), "ETREAT"), Interaction::Update, &facts, &[], now(), &options());
    assert_eq!(write, denied(Basis::NoConsent));
}

#[test]
fn provision_without_type_counts_as_deny() {
    let provision = json!({ "actor": [recipient("Practitioner/dr-a")] });
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let on = DecisionOptions { author_org_treatment: true, ..options() };
    assert_eq!(decide(&doctor, Interaction::Read, &observation("o1", "p1"), &policies, now(), &on), denied_by("c1"));
}

#[test]
fn consent_without_provision_decides_nothing() {
    let mut resource = consent("c1", "p1", Value::Null);
    resource.as_object_mut().unwrap().remove("provision");
    let policies = [compile(resource)];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), denied(Basis::NoConsent));
}

#[test]
fn interactions_map_to_consent_actions() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    let run = |action_code: &str, interaction: Interaction| {
        let provision = json!({ "type": "permit", "actor": [recipient("Practitioner/dr-a")], "action": [action(action_code)] });
        decide(&doctor, interaction, &facts, &[compile(consent("c1", "p1", provision))], now(), &options()).permit
    };
    for read_like in [Interaction::Read, Interaction::Vread, Interaction::Search, Interaction::History] {
        assert!(run("access", read_like) && run("use", read_like), "{read_like:?}");
        assert!(!run("correct", read_like) && !run("disclose", read_like) && !run("collect", read_like), "{read_like:?}");
    }
    for write in [Interaction::Create, Interaction::Update, Interaction::Delete] {
        assert!(run("correct", write) && !run("access", write) && !run("use", write), "{write:?}");
    }
    // A deny of `disclose` may be what a read is, so it applies.
    let provision = json!({ "type": "permit", "actor": [recipient("Practitioner/dr-a")],
        "provision": [{ "type": "deny", "action": [action("disclose")] }] });
    assert_eq!(read(&doctor, &facts, &[compile(consent("c1", "p1", provision))]), denied_by("c1"));
}

#[test]
fn confidentiality_label_covers_lower_levels() {
    let mut provision = permit_to("Practitioner/dr-a");
    provision["securityLabel"] = json!([{ "system": CONFIDENTIALITY, "code": "N" }]);
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let labelled = |code: &str| ResourceFacts { security_labels: vec![Code::new(CONFIDENTIALITY, code)], ..observation("o1", "p1") };
    assert_eq!(read(&doctor, &labelled("M"), &policies), permitted_by("c1"));
    assert_eq!(read(&doctor, &labelled("N"), &policies), permitted_by("c1"));
    assert_eq!(read(&doctor, &labelled("R"), &policies), denied(Basis::NoConsent));
}

#[test]
fn data_period_must_contain_the_data_for_a_permit_and_overlap_it_for_a_deny() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let may_2025 = json!({ "start": "2025-05", "end": "2025-05" });
    let spanning = ResourceFacts { data_time: Some((at("2025-05-31T20:00:00Z"), at("2025-06-01T04:00:00Z"))), ..observation("o1", "p1") };
    let inside = ResourceFacts { data_time: Some((at("2025-05-10"), at("2025-05-10"))), ..observation("o2", "p1") };
    let timeless = ResourceFacts { data_time: None, ..observation("o3", "p1") };

    let mut permit = permit_to("Practitioner/dr-a");
    permit["dataPeriod"] = may_2025.clone();
    let policies = [compile(consent("c1", "p1", permit))];
    assert_eq!(read(&doctor, &inside, &policies), permitted_by("c1"));
    assert_eq!(read(&doctor, &spanning, &policies), denied(Basis::NoConsent));
    assert_eq!(read(&doctor, &timeless, &policies), denied(Basis::NoConsent));
    assert_eq!(read(&doctor, &observation("o4", "p1"), &policies), denied(Basis::NoConsent));

    let mut permit = permit_to("Practitioner/dr-a");
    permit["provision"] = json!([{ "type": "deny", "dataPeriod": may_2025 }]);
    let policies = [compile(consent("c1", "p1", permit))];
    assert_eq!(read(&doctor, &inside, &policies), denied_by("c1"));
    assert_eq!(read(&doctor, &spanning, &policies), denied_by("c1"));
    assert_eq!(read(&doctor, &timeless, &policies), denied_by("c1"));
    assert_eq!(read(&doctor, &observation("o4", "p1"), &policies), permitted_by("c1"));
}

#[test]
fn uncheckable_criteria_block_permits_and_keep_denies() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let facts = observation("o1", "p1");
    // Group membership is not resolved: a permit to a Group grants nothing …
    let to_group = json!({ "type": "permit", "actor": [recipient("Group/cardiology")] });
    assert_eq!(read(&doctor, &facts, &[compile(consent("c1", "p1", to_group))]), denied(Basis::NoConsent));
    // … and a deny to a Group applies to everyone.
    let mut provision = permit_to("Practitioner/dr-a");
    provision["provision"] = json!([{ "type": "deny", "actor": [recipient("Group/cardiology")] }]);
    assert_eq!(read(&doctor, &facts, &[compile(consent("c1", "p1", provision))]), denied_by("c1"));
    // A requester stating no purpose: a research-only deny applies.
    let mut provision = permit_to("Practitioner/dr-a");
    provision["provision"] = json!([{ "type": "deny", "purpose": [{ "system": ACT_REASON, "code": "HRESCH" }] }]);
    let policies = [compile(consent("c1", "p1", provision))];
    assert_eq!(read(&doctor, &facts, &policies), permitted_by("c1"));
    let no_purpose = Requester { purpose_of_use: Vec::new(), ..doctor.clone() };
    assert_eq!(read(&no_purpose, &facts, &policies), denied_by("c1"));
    // A class that is a profile, not a resource type; a code with text only; an unreadable date.
    let profile =
        json!([{ "system": "http://hl7.org/fhir/StructureDefinition", "code": "http://hl7.org/fhir/StructureDefinition/vitalsigns" }]);
    for (key, value) in [("class", profile), ("code", json!([{ "text": "vital signs" }])), ("period", json!({ "start": "soon" }))] {
        let mut permit = permit_to("Practitioner/dr-a");
        permit[key] = value.clone();
        assert_eq!(read(&doctor, &facts, &[compile(consent("c1", "p1", permit))]), denied(Basis::NoConsent), "permit {key}");
        let deny = json!({ "type": "permit", "actor": [recipient("Practitioner/dr-a")], "provision": [{ "type": "deny", key: value }] });
        assert_eq!(read(&doctor, &facts, &[compile(consent("c1", "p1", deny))]), denied_by("c1"), "deny {key}");
    }
}

#[test]
fn data_references_match_the_instance() {
    let doctor = practitioner("Practitioner/dr-a", "Organization/hospital");
    let data = |meaning: &str| {
        json!({ "type": "permit", "actor": [recipient("Practitioner/dr-a")],
        "data": [{ "meaning": meaning, "reference": { "reference": "Observation/o1" } }] })
    };
    for meaning in ["instance", "related", "dependents"] {
        let policies = [compile(consent("c1", "p1", data(meaning)))];
        assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), permitted_by("c1"), "{meaning}");
        assert_eq!(read(&doctor, &observation("o2", "p1"), &policies), denied(Basis::NoConsent), "{meaning}");
    }
    let versioned = json!({ "type": "permit", "actor": [recipient("Practitioner/dr-a")],
        "data": [{ "meaning": "instance", "reference": { "reference": "Observation/o1/_history/2" } }] });
    assert_eq!(read(&doctor, &observation("o1", "p1"), &[compile(consent("c1", "p1", versioned))]), denied(Basis::NoConsent));
}

#[test]
fn custodian_actor_names_where_the_data_comes_from() {
    let provision = json!({ "type": "permit", "actor": [
        recipient("Practitioner/dr-a"),
        { "role": { "coding": [{ "system": PARTICIPATION_TYPE, "code": "CST" }] }, "reference": { "reference": "Organization/hospital" } },
    ] });
    let policies = [compile(consent("c1", "p1", provision))];
    let doctor = practitioner("Practitioner/dr-a", "Organization/clinic");
    assert_eq!(read(&doctor, &observation("o1", "p1"), &policies), permitted_by("c1"));
    let from_elsewhere = ResourceFacts { author_organization: Some("Organization/lab".to_string()), ..observation("o2", "p1") };
    assert_eq!(read(&doctor, &from_elsewhere, &policies), denied(Basis::NoConsent));
    assert_eq!(
        read(&practitioner("Practitioner/dr-b", "Organization/clinic"), &observation("o1", "p1"), &policies),
        denied(Basis::NoConsent)
    );
}

#[test]
fn consents_that_cannot_apply_are_rejected_with_a_reason() {
    let valid = consent("c1", "p1", permit_to("Practitioner/dr-a"));
    let compiled = compile(valid.clone());
    assert_eq!((compiled.id(), compiled.version(), compiled.patient(), compiled.status()), ("c1", Some("1"), "p1", "active"));

    let mut research = valid.clone();
    research["scope"] = json!({ "coding": [{ "system": CONSENT_SCOPE, "code": "research" }] });
    let mut no_patient = valid.clone();
    no_patient.as_object_mut().unwrap().remove("patient");
    let mut remote_patient = valid.clone();
    remote_patient["patient"] = json!({ "reference": "https://elsewhere.example/fhir/Patient/p1" });
    let mut not_consent = valid.clone();
    not_consent["resourceType"] = json!("Observation");
    for (what, resource) in [("scope", research), ("patient", no_patient), ("patient", remote_patient), ("Consent", not_consent)] {
        let error = ConsentPolicy::compile(&resource).expect_err(what);
        assert!(error.contains(what), "{error}");
    }
}

// The official examples --------------------------------------------------------------------

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpora/fhir-r4-examples/Consent");

fn example(name: &str) -> ConsentPolicy {
    let path = format!("{EXAMPLES}/Consent-consent-example-{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let resource: Value = serde_json::from_str(&text).expect("example is JSON");
    ConsentPolicy::compile(&resource).unwrap_or_else(|error| panic!("{name}: {error}"))
}

fn example_options() -> DecisionOptions {
    DecisionOptions { author_org_treatment: true, ..options() }
}

/// Good Health Hospital (`Organization/f001` in the examples) records of `patient`.
fn f001_record(reference: &str, patient: &str) -> ResourceFacts {
    ResourceFacts { author_organization: Some("Organization/f001".to_string()), ..resource(reference, patient) }
}

fn f001_practitioner(reference: &str) -> Requester {
    practitioner(reference, "Organization/f001")
}

fn example_denied(name: &str) -> Decision {
    Decision { permit: false, basis: Basis::DeniedByConsent { id: format!("consent-example-{name}"), version: None }, emergency: false }
}

struct ExampleCase {
    name: &'static str,
    requester: Requester,
    facts: ResourceFacts,
    now: &'static str,
    expected: Decision,
}

fn example_cases() -> Vec<ExampleCase> {
    let case = |name, requester, facts, now, expected| ExampleCase { name, requester, facts, now, expected };
    let labelled =
        |code: &str| ResourceFacts { security_labels: vec![Code::new(CONFIDENTIALITY, code)], ..f001_record("Observation/o1", "example") };
    let peter = Requester {
        kind: RequesterKind::RelatedPerson,
        reference: Some("RelatedPerson/peter".to_string()),
        patient: None,
        organization: None,
        roles: Vec::new(),
        purpose_of_use: vec![purpose("PATRQT")],
        emergency_reason: None,
    };
    let cda = ResourceFacts { codes: vec![Code::new(LOINC, "34133-9")], ..f001_record("DocumentReference/d1", "72") };
    vec![
        // Untyped root = deny while in force (1964 – 2016-01-01), also for the author organisation.
        case("basic", f001_practitioner("Practitioner/p1"), f001_record("Observation/o1", "f001"), "2015-06-01", example_denied("basic")),
        case(
            "basic",
            f001_practitioner("Practitioner/p1"),
            f001_record("Observation/o1", "f001"),
            "2020-01-01",
            permitted(Basis::AuthorOrganization),
        ),
        // Break-the-glass ignores the Consent; a treatment read by f001 is outside its ETREAT rule.
        case(
            "Emergency",
            emergency_doctor("emergency-physician", Some("unconscious on arrival"), "ETREAT"),
            f001_record("Observation/o1", "f001"),
            "2025-06-15",
            Decision { permit: true, basis: Basis::EmergencyOverride, emergency: true },
        ),
        case(
            "Emergency",
            f001_practitioner("Practitioner/p1"),
            f001_record("Observation/o1", "f001"),
            "2025-06-15",
            permitted(Basis::AuthorOrganization),
        ),
        // Custodian f001's records are withheld, from f001's own practitioners too.
        case("Out", f001_practitioner("Practitioner/p1"), f001_record("Observation/o1", "f001"), "2025-06-15", example_denied("Out")),
        // The narrative grants read access; the untyped root reads as deny.
        case("grantor", patient("example"), f001_record("Observation/o1", "f001"), "2025-06-15", example_denied("grantor")),
        case(
            "notAuthor",
            f001_practitioner("Practitioner/p1"),
            f001_record("Observation/o1", "f001"),
            "2025-06-15",
            example_denied("notAuthor"),
        ),
        case("notOrg", f001_practitioner("Practitioner/p1"), f001_record("Observation/o1", "f001"), "2025-06-15", example_denied("notOrg")),
        case(
            "notThem",
            f001_practitioner("Practitioner/f204"),
            f001_record("Observation/o1", "f001"),
            "2025-06-15",
            example_denied("notThem"),
        ),
        case(
            "notThem",
            f001_practitioner("Practitioner/f205"),
            f001_record("Observation/o1", "f001"),
            "2025-06-15",
            permitted(Basis::AuthorOrganization),
        ),
        // `related` cannot be resolved: the Task and, over-protectively, everything else.
        case(
            "notThis",
            f001_practitioner("Practitioner/p1"),
            f001_record("Task/example3", "f001"),
            "2025-06-15",
            example_denied("notThis"),
        ),
        case(
            "notThis",
            f001_practitioner("Practitioner/p1"),
            f001_record("Observation/o1", "f001"),
            "2025-06-15",
            example_denied("notThis"),
        ),
        case(
            "notTime",
            f001_practitioner("Practitioner/p1"),
            f001_record("Observation/o1", "f001"),
            "2015-01-15",
            example_denied("notTime"),
        ),
        case(
            "notTime",
            f001_practitioner("Practitioner/p1"),
            f001_record("Observation/o1", "f001"),
            "2015-03-01",
            permitted(Basis::AuthorOrganization),
        ),
        // Untyped provisions are denies; label N covers U … N but not V.
        case("pkb", f001_practitioner("Practitioner/p1"), labelled("N"), "2025-06-15", example_denied("pkb")),
        case("pkb", f001_practitioner("Practitioner/p1"), labelled("V"), "2025-06-15", permitted(Basis::AuthorOrganization)),
        // The nested permit needs an author individual and a CDA MIME class: not checkable.
        case("signature", practitioner("Practitioner/13", "Organization/f001"), cda, "2016-05-26", example_denied("signature")),
        case(
            "smartonfhir",
            peter.clone(),
            resource("MedicationRequest/m1", "xcda"),
            "2016-06-23T07:10:00Z",
            Decision {
                permit: true,
                basis: Basis::Consent { id: "consent-example-smartonfhir".to_string(), version: None },
                emergency: false,
            },
        ),
        case("smartonfhir", peter.clone(), resource("Observation/o1", "xcda"), "2016-06-23T07:10:00Z", example_denied("smartonfhir")),
        case("smartonfhir", peter, resource("MedicationRequest/m1", "xcda"), "2016-06-23T07:32:34Z", denied(Basis::NoConsent)),
    ]
}

#[test]
fn official_examples_all_compile() {
    let mut names: Vec<String> = std::fs::read_dir(EXAMPLES)
        .expect("Consent examples directory")
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "{names:?}");
    let mut tested: Vec<String> = example_cases().iter().map(|case| format!("Consent-consent-example-{}.json", case.name)).collect();
    tested.sort();
    tested.dedup();
    assert_eq!(tested, names, "every official example has a sample request");
    for name in &names {
        let short = name.trim_start_matches("Consent-consent-example-").trim_end_matches(".json");
        let policy = example(short);
        assert!(policy.is_active(), "{name}");
    }
}

#[test]
fn official_examples_decide_as_documented() {
    for case in example_cases() {
        let policies = [example(case.name)];
        let decision = decide(&case.requester, Interaction::Read, &case.facts, &policies, at(case.now), &example_options());
        assert_eq!(decision, case.expected, "{} at {} for {:?}", case.name, case.now, case.requester.reference);
    }
}

// The example in docs/CONSENT.md -----------------------------------------------------------

#[test]
fn documented_consent_grants_vital_signs_for_thirty_days() {
    let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONSENT.md"));
    let start = text.find("```json\n").expect("a JSON example") + "```json\n".len();
    let end = start + text[start..].find("\n```").expect("end of the JSON example");
    let mut resource: Value = serde_json::from_str(&text[start..end]).expect("the example is JSON");
    let issues = crate::fhir::validation::validate(crate::fhir::r4_model(), &resource, crate::fhir::Leniency::Strict);
    assert!(issues.iter().all(|issue| !issue.is_error()), "{issues:?}");
    resource["id"] = json!("c1");
    let policies = [ConsentPolicy::compile(&resource).expect("the example compiles")];

    let dr_a = practitioner("Practitioner/dr-a", "Organization/clinic");
    let vital_signs = observation("o1", "p1");
    let read_at = |requester: &Requester, facts: &ResourceFacts, time: &str| {
        decide(requester, Interaction::Read, facts, &policies, at(time), &options())
    };
    let granted = Decision { permit: true, basis: Basis::Consent { id: "c1".to_string(), version: None }, emergency: false };
    assert_eq!(read_at(&dr_a, &vital_signs, "2025-06-15T10:00:00Z"), granted);
    assert_eq!(read_at(&dr_a, &vital_signs, "2025-06-30T23:59:59Z"), granted);
    assert_eq!(read_at(&dr_a, &vital_signs, "2025-07-01T00:00:00Z"), denied(Basis::NoConsent));
    assert_eq!(read_at(&dr_a, &lab_observation("o2", "p1"), "2025-06-15T10:00:00Z"), denied(Basis::NoConsent));
    let research = Requester { purpose_of_use: vec![purpose("HRESCH")], ..dr_a.clone() };
    assert_eq!(read_at(&research, &vital_signs, "2025-06-15T10:00:00Z"), denied(Basis::NoConsent));
    let dr_b = practitioner("Practitioner/dr-b", "Organization/clinic");
    assert_eq!(read_at(&dr_b, &vital_signs, "2025-06-15T10:00:00Z"), denied(Basis::NoConsent));
}
