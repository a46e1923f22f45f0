//! Latency of one consent decision for a patient with N Consents (issue #4: p99 under 50 µs
//! with 100 Consents), through the library's public API.
//!
//! ```text
//! cargo run --release --example consent_decision -- [--consents 100] [--decisions 20000]
//! ```
//!
//! The patient's Consents each permit one practitioner to read vital signs for treatment within
//! a period, with a nested deny for one code; the requester matches none of the first N-1 and
//! the last one (the worst case: every Consent is evaluated). Prints p50 / p99 / max in µs.

use std::time::Instant;

use fhir_gateway::consent::{Code, ConsentPolicy, DecisionOptions, Interaction, Requester, RequesterKind, ResourceFacts, decide};
use serde_json::json;

fn consent(index: usize) -> ConsentPolicy {
    let resource = json!({
        "resourceType": "Consent",
        "id": format!("c{index}"),
        "meta": {"versionId": "1"},
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "provision": {
            "type": "permit",
            "period": {"start": "2020-01-01", "end": "2035-12-31"},
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                "reference": {"reference": format!("Practitioner/dr-{index}")}
            }],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
            "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "provision": [{"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}]}]
        }
    });
    ConsentPolicy::compile(&resource).expect("the benchmark Consent compiles")
}

fn main() {
    let mut consents = 100;
    let mut decisions = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--consents" => consents = value.parse().expect("--consents N"),
            "--decisions" => decisions = value.parse().expect("--decisions N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let policies: Vec<ConsentPolicy> = (0..consents).map(consent).collect();
    let requester = Requester {
        kind: RequesterKind::Practitioner,
        reference: Some(format!("Practitioner/dr-{}", consents - 1)),
        patient: None,
        organization: Some("Organization/hospital-b".into()),
        roles: Vec::new(),
        purpose_of_use: vec![Code::new("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT")],
        emergency_reason: None,
    };
    let facts = ResourceFacts {
        resource_type: "Observation".into(),
        reference: "Observation/o1".into(),
        patient: Some("p1".into()),
        categories: vec![Code::new("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")],
        codes: vec![Code::new("http://loinc.org", "29463-7")],
        security_labels: Vec::new(),
        author_organization: Some("Organization/hospital-a".into()),
        data_time: Some((1_700_000_000_000, 1_700_000_000_000)),
    };
    let options = DecisionOptions::default();
    let now_ms = 1_800_000_000_000;
    let first = decide(&requester, Interaction::Read, &facts, &policies, now_ms, &options);
    assert!(first.permit, "the last Consent permits: {first:?}");
    let mut samples = Vec::with_capacity(decisions);
    for _ in 0..decisions {
        let started = Instant::now();
        std::hint::black_box(decide(&requester, Interaction::Read, &facts, std::hint::black_box(&policies), now_ms, &options));
        samples.push(started.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |quantile: f64| samples[((samples.len() - 1) as f64 * quantile) as usize] as f64 / 1000.0;
    println!(
        "consent decision, {consents} Consents, {decisions} decisions: p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
