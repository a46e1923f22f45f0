//! The audit trail through HTTP (issue #4): every read, search and write leaves an AuditEvent,
//! allowed or denied; the patient sees every access to their data with `AuditEvent?patient=`;
//! nobody writes, changes or deletes AuditEvents; the trail survives a restart.

use serde_json::{Value, json};

use crate::harness::{Gateway, entries, expect_outcome, json_body};

async fn send(gateway: &Gateway, method: reqwest::Method, path: &str, token: &str, body: Option<&Value>) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, gateway.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "application/fhir+json").body(body.to_string());
    }
    request.send().await.unwrap()
}

async fn get(gateway: &Gateway, path: &str, token: &str) -> reqwest::Response {
    send(gateway, reqwest::Method::GET, path, token, None).await
}

fn patient_token(gateway: &Gateway, id: &str) -> String {
    gateway.token(&["--scope", "patient/*.rs", "--patient", id, "--fhir-user", &format!("Patient/{id}"), "--sub", id])
}

fn practitioner_token(gateway: &Gateway, extra: &[&str]) -> String {
    let mut flags = vec!["--scope", "user/*.rs", "--fhir-user", "Practitioner/p1", "--organization", "Organization/elsewhere"];
    flags.extend_from_slice(extra);
    gateway.token(&flags)
}

async fn setup(gateway: &Gateway) {
    for id in ["pat-a", "pat-b"] {
        let response = gateway.put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "gender": "female"})).await;
        assert_eq!(response.status(), 201);
        let observation = json!({
            "resourceType": "Observation", "id": format!("obs-{id}"), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{id}")},
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        });
        assert_eq!(gateway.put(&format!("Observation/obs-{id}"), &observation).await.status(), 201);
    }
}

/// The patient's own view of their audit trail, newest first.
async fn trail_of(gateway: &Gateway, patient: &str) -> Vec<Value> {
    let response = get(gateway, &format!("AuditEvent?patient={patient}&_count=500"), &patient_token(gateway, patient)).await;
    assert_eq!(response.status(), 200);
    entries(&json_body(response).await).iter().map(|entry| entry["resource"].clone()).collect()
}

fn names(event: &Value, reference: &str) -> bool {
    event["entity"].as_array().into_iter().flatten().any(|entity| entity["what"]["reference"] == reference)
}

#[tokio::test]
async fn the_patient_sees_every_access_to_their_data_allowed_or_denied() {
    let gateway = Gateway::start_with(&["--emergency-roles", "EMERGENCY"]).await;
    setup(&gateway).await;

    // Allowed: the patient's own read. Denied: a practitioner without a Consent (404 for them).
    assert_eq!(get(&gateway, "Observation/obs-pat-b", &patient_token(&gateway, "pat-b")).await.status(), 200);
    let practitioner = practitioner_token(&gateway, &[]);
    expect_outcome(get(&gateway, "Observation/obs-pat-b", &practitioner).await, 404).await;
    // Break the glass: allowed, and flagged.
    let emergency = practitioner_token(&gateway, &["--purpose", "ETREAT", "--role", "EMERGENCY", "--reason", "unconscious on arrival"]);
    assert_eq!(get(&gateway, "Observation/obs-pat-b", &emergency).await.status(), 200);

    let trail = trail_of(&gateway, "pat-b").await;
    let reads: Vec<&Value> =
        trail.iter().filter(|event| event["subtype"][0]["code"] == "read" && names(event, "Observation/obs-pat-b")).collect();
    assert_eq!(reads.len(), 3, "{trail:#?}");
    // Newest first: the emergency read, the refused read, the patient's own read.
    let (emergency_read, refused, own) = (reads[0], reads[1], reads[2]);
    assert_eq!(emergency_read["outcome"], "0");
    assert_eq!(emergency_read["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
    assert_eq!(emergency_read["agent"][0]["who"]["reference"], "Practitioner/p1");
    assert_eq!(refused["outcome"], "4");
    assert_eq!(refused["agent"][0]["who"]["reference"], "Practitioner/p1");
    assert_eq!(refused["agent"][0]["requestor"], true);
    assert!(refused["outcomeDesc"].as_str().unwrap().contains("denied"), "{refused:#}");
    assert_eq!(own["outcome"], "0");
    assert_eq!(own["agent"][0]["who"]["reference"], "Patient/pat-b");
    for event in &trail {
        assert_eq!(event["entity"][0]["what"]["reference"], "Patient/pat-b", "{event:#}");
        // Served as read: the event reads back by id.
        let id = event["id"].as_str().unwrap();
        let read = json_body(get(&gateway, &format!("AuditEvent/{id}"), &patient_token(&gateway, "pat-b")).await).await;
        assert_eq!(&read, event);
    }
    // The EMR's writes (PUT) are in the trail too.
    assert!(trail.iter().any(|event| event["subtype"][0]["code"] == "update" && event["action"] == "U"), "{trail:#?}");

    // Another patient sees none of it, neither by search nor by id.
    let other = patient_token(&gateway, "pat-a");
    let foreign = json_body(get(&gateway, "AuditEvent?patient=pat-b", &other).await).await;
    assert_eq!(foreign["total"], 0, "{foreign:#}");
    let id = trail[0]["id"].as_str().unwrap();
    expect_outcome(get(&gateway, &format!("AuditEvent/{id}"), &other).await, 404).await;
    // A search names parameters, never their values.
    get(&gateway, "Patient?name=Zebedee-Secret", &gateway.token(&[])).await;
    let everything = std::fs::read(gateway.data.path().join("audit/entries.log")).unwrap();
    assert!(!String::from_utf8_lossy(&everything).contains("Zebedee"), "the audit trail holds no query values");
}

#[tokio::test]
async fn audit_events_cannot_be_written_changed_or_deleted_and_survive_a_restart() {
    let mut gateway = Gateway::start().await;
    setup(&gateway).await;
    let emr = gateway.token(&[]);
    let forged = json!({
        "resourceType": "AuditEvent", "id": "0",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": true}], "source": {"observer": {"display": "forger"}},
    });
    expect_outcome(send(&gateway, reqwest::Method::POST, "AuditEvent", &emr, Some(&forged)).await, 403).await;
    expect_outcome(send(&gateway, reqwest::Method::PUT, "AuditEvent/0", &emr, Some(&forged)).await, 403).await;
    expect_outcome(send(&gateway, reqwest::Method::DELETE, "AuditEvent/0", &emr, None).await, 403).await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": forged, "request": {"method": "POST", "url": "AuditEvent"}}
    ]});
    expect_outcome(send(&gateway, reqwest::Method::POST, "", &emr, Some(&transaction)).await, 403).await;

    let before = trail_of(&gateway, "pat-a").await;
    assert!(!before.is_empty());
    gateway.restart().await;
    let after = trail_of(&gateway, "pat-a").await;
    // The same events (plus the search that listed them before the restart).
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(&after[1..], &before[..]);
    // The trail's log is checkpointed: its signed note covers every event.
    let checkpoints = String::from_utf8_lossy(&std::fs::read(gateway.data.path().join("audit/checkpoints.log")).unwrap()).into_owned();
    let newest = checkpoints.rsplit("/audit\n").next().and_then(|rest| rest.lines().next()).and_then(|size| size.parse::<usize>().ok());
    assert!(newest.is_some_and(|size| size > before.len()), "{checkpoints}");

    // `verify` checks the trail; an edited event (journal checksum fixed too) is caught.
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
    assert!(report.contains("audit events:"), "{report}");
    let path = gateway.data.path().join("audit/entries.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let length = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let record = &mut bytes[4..4 + length];
    let position = record.windows(3).position(|window| window == b"\"4\"" || window == b"\"0\"").unwrap();
    record[position + 1] = if record[position + 1] == b'0' { b'4' } else { b'0' };
    use sha2::Digest;
    let checksum = sha2::Sha256::digest(&bytes[4..4 + length]);
    bytes[4 + length..4 + length + 8].copy_from_slice(&checksum[..8]);
    std::fs::write(&path, &bytes).unwrap();
    let (clean, report) = gateway.verify();
    assert!(!clean, "{report}");
    assert!(report.contains("audit checkpoint") && report.contains("root hash does not match"), "{report}");
}

#[tokio::test]
async fn with_before_response_durability_an_answered_read_is_in_the_trail_even_after_kill_9() {
    let mut gateway = Gateway::start_with(&["--audit-durability", "before-response"]).await;
    setup(&gateway).await;
    let token = patient_token(&gateway, "pat-a");
    for _ in 0..5 {
        assert_eq!(get(&gateway, "Observation/obs-pat-a", &token).await.status(), 200);
    }
    gateway.kill9();
    gateway.start_again_after_kill().await;
    let trail = trail_of(&gateway, "pat-a").await;
    let reads = trail.iter().filter(|event| event["subtype"][0]["code"] == "read" && names(event, "Observation/obs-pat-a")).count();
    assert_eq!(reads, 5, "{trail:#?}");
}

#[tokio::test]
async fn refused_authentications_are_audited_once_per_reason_and_window() {
    let gateway = Gateway::start().await;
    for _ in 0..5 {
        assert_eq!(get(&gateway, "Patient", "not-a-jwt").await.status(), 401);
    }
    assert_eq!(reqwest::get(gateway.url("Patient")).await.unwrap().status(), 401, "no token at all");
    // The trail is read by id (sequence numbers); the EMR's own reads add events as it goes.
    let mut logins: Vec<Value> = Vec::new();
    for _ in 0..50 {
        logins.clear();
        for id in 0..20 {
            let response = gateway.get(&format!("AuditEvent/{id}")).await;
            if response.status() == 404 {
                break;
            }
            let event = json_body(response).await;
            if event["type"]["code"] == "110114" {
                logins.push(event);
            }
        }
        if logins.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reasons: Vec<&str> = logins.iter().map(|event| event["outcomeDesc"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 2, "one event per reason in this window, the repeats counted later: {reasons:?}");
    assert!(reasons.contains(&"authentication failed: no access token"), "{reasons:?}");
    for event in &logins {
        assert_eq!((event["subtype"][0]["code"].as_str(), event["outcome"].as_str()), (Some("110122"), Some("4")), "{event}");
    }
}
