//! Who may write, and who counts as the patient (issue #17, A): every write path checks the
//! caller's right to write that exact resource, and no token claim or Consent turns a caller
//! into someone it is not. Each test has a control showing the same request succeeds for a
//! caller who may make it.

use reqwest::Method;
use serde_json::{Value, json};

use crate::consent::{Answer, Caller, assert_outcome, consent, emr, patient_app, practitioner, recipient, seed};
use crate::harness::Gateway;

const MRN: &str = "urn:test:mrn";

fn transaction(entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })
}

fn put_entry(url: &str, resource: Value) -> Value {
    json!({ "resource": resource, "request": { "method": "PUT", "url": url } })
}

/// An OperationOutcome `status` whose issue points at `Bundle.entry[position]`.
fn assert_entry_refused(context: &str, answer: &Answer, status: u16, position: usize) {
    assert_eq!(answer.status, status, "{context}: {}", answer.text);
    let expression = answer.json()["issue"][0]["expression"][0].as_str().unwrap_or_default().to_string();
    assert!(expression.starts_with(&format!("Bundle.entry[{position}]")), "{context}: {}", answer.text);
}

/// A gateway started with `flags`, seeded with patients A and B by the EMR (its [`Caller`]).
async fn seeded(flags: &[&str]) -> (Gateway, Caller) {
    let gateway = Gateway::start_with(flags).await;
    let emr = emr(&gateway);
    seed(&emr).await;
    (gateway, emr)
}

async fn seed_directory(emr: &Caller) {
    emr.expect_write(Method::PUT, "Organization/local", &json!({"resourceType": "Organization", "id": "local", "name": "Local"}), 201)
        .await;
    emr.expect_write(Method::PUT, "Practitioner/p9", &json!({"resourceType": "Practitioner", "id": "p9", "active": true}), 201).await;
}

#[tokio::test]
async fn patient_scopes_write_only_in_their_patients_compartment_on_every_write_path() {
    let (gateway, emr) = seeded(&[]).await;
    seed_directory(&emr).await;
    let app = patient_app(&gateway, "pat-a", "patient/*.cruds");
    let renamed = json!({"resourceType": "Organization", "id": "local", "name": "Renamed"});
    assert_outcome("PUT Organization", &app.put("Organization/local", &renamed).await, 403, "forbidden");
    assert_outcome("DELETE Practitioner", &app.delete("Practitioner/p9").await, 403, "forbidden");
    assert_outcome(
        "POST Organization",
        &app.post("Organization", &json!({"resourceType": "Organization", "name": "New"})).await,
        403,
        "forbidden",
    );
    let bundle = transaction(vec![put_entry("Organization/local", renamed.clone())]);
    assert_entry_refused("transaction PUT Organization", &app.post("", &bundle).await, 403, 0);
    let conditional = transaction(vec![json!({"request": {"method": "DELETE", "url": "Practitioner?_id=p9"}})]);
    assert_entry_refused("conditional DELETE Practitioner", &app.post("", &conditional).await, 403, 0);
    assert_eq!(emr.read("Organization/local").await["name"], "Local", "nothing was changed");
    assert_eq!(emr.get("Practitioner/p9").await.status, 200, "nothing was deleted");
    // Control: the same token writes in its own compartment.
    let own = emr.read("Observation/obs-a-vital").await;
    app.expect_write(Method::PUT, "Observation/obs-a-vital", &own, 200).await;
    // And it still reads what is in no patient's compartment.
    assert_eq!(app.get("Organization/local").await.status, 200);
}

#[tokio::test]
async fn a_body_whose_type_differs_from_the_url_is_refused_on_every_write_path() {
    let (_gateway, emr) = seeded(&[]).await;
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    let basic = json!({"resourceType": "Basic", "code": {"text": "x"}});
    for (url, body) in [
        (format!("Patient?identifier={MRN}|A-1"), observation.clone()),
        ("Patient?_id=pat-a".to_string(), basic.clone()),
        ("Patient/pat-a".to_string(), json!({"resourceType": "Basic", "id": "pat-a", "code": {"text": "x"}})),
    ] {
        let answer = emr.post("", &transaction(vec![put_entry(&url, body.clone())])).await;
        assert_entry_refused(&format!("transaction PUT {url}"), &answer, 400, 0);
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [put_entry(&url, body)]});
        assert_entry_refused(&format!("batch PUT {url}"), &emr.post("", &batch).await, 400, 0);
    }
    let posted = transaction(vec![json!({"resource": observation, "request": {"method": "POST", "url": "Patient"}})]);
    assert_eq!(emr.post("", &posted).await.status, 400, "POST entry of another type");
    let patient = emr.read("Patient/pat-a").await;
    assert_eq!((patient["resourceType"].as_str(), patient["meta"]["versionId"].as_str()), (Some("Patient"), Some("1")));
}

#[tokio::test]
async fn anonymous_access_never_reaches_a_patients_compartment_whatever_a_consent_says() {
    let (gateway, emr) = seeded(&["--anonymous", "true"]).await;
    seed_directory(&emr).await;
    // B permits everyone: a provision without an actor.
    emr.expect_write(Method::PUT, "Consent/everyone", &consent("everyone", "pat-b", json!({ "type": "permit" })), 201).await;
    let anonymous = reqwest::Client::new();
    let get = |path: &str| anonymous.get(gateway.url(path)).send();
    for path in ["Patient/pat-b", "Observation/obs-b-vital"] {
        let answer = get(path).await.unwrap();
        assert_eq!(answer.status(), 404, "anonymous GET {path}");
    }
    for path in ["Observation?patient=pat-b", "Patient?_id=pat-b", "Patient/pat-b/Observation", "Patient/pat-b/$everything"] {
        let answer = get(path).await.unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        assert!(status == 404 || (status == 200 && body.get("entry").is_none()), "anonymous GET {path}: {status} {body}");
    }
    // Control: what is in no patient's compartment is readable anonymously, and a practitioner
    // named by nobody gets B's data through the actor-less Consent.
    assert_eq!(get("Organization/local").await.unwrap().status(), 200);
    assert_eq!(practitioner(&gateway, "p1", &[]).get("Observation/obs-b-vital").await.status, 200);
}

#[tokio::test]
async fn context_claims_that_are_not_ids_are_refused() {
    let (gateway, _) = seeded(&[]).await;
    for flags in [
        ["--scope", "patient/*.rs", "--patient", "?", "--fhir-user", "Patient/pat-a"],
        ["--scope", "patient/*.rs", "--patient", "pat-a", "--fhir-user", "Patient/?"],
        ["--scope", "user/*.rs", "--patient", "pat-a", "--fhir-user", "Practitioner/a/b"],
        ["--scope", "user/*.rs", "--patient", "pat-a", "--fhir-user", "Organization/local"],
    ] {
        let answer = Caller::new(&gateway, &flags).get("Patient/pat-a").await;
        assert_outcome(&format!("{flags:?}"), &answer, 401, "login");
    }
    // Control: a resource URL naming the patient is a valid fhirUser.
    let url = format!("{}/Patient/pat-a", gateway.base());
    let own = Caller::new(&gateway, &["--scope", "patient/*.rs", "--patient", "pat-a", "--fhir-user", &url, "--organization", ""]);
    assert_eq!(own.get("Observation/obs-a-vital").await.status, 200);
}

#[tokio::test]
async fn an_app_with_a_patient_context_but_no_patient_user_is_not_the_patient() {
    let (gateway, _) = seeded(&[]).await;
    // An EHR launch: patient/ scopes and a patient context, no fhirUser, another organisation.
    let launched = Caller::new(&gateway, &["--scope", "patient/*.cruds", "--patient", "pat-b", "--organization", "Organization/other"]);
    assert_eq!(launched.get("Observation/obs-b-vital").await.status, 404, "bound by B's Consents (none)");
    let grant = consent("self-granted", "pat-b", json!({ "type": "permit", "actor": [recipient("Organization/other")] }));
    assert_outcome("its own Consent", &launched.put("Consent/self-granted", &grant).await, 403, "forbidden");
    assert_eq!(launched.get("Observation/obs-b-vital").await.status, 404, "the refused Consent grants nothing");
    // Control: the patient's own app (fhirUser names the patient) reads it.
    assert_eq!(patient_app(&gateway, "pat-b", "patient/*.rs").get("Observation/obs-b-vital").await.status, 200);
}

#[tokio::test]
async fn a_patient_facing_issuers_patient_only_tokens_are_the_patients_own_app() {
    let (gateway, _) = seeded(&["--patient-facing-issuer", "urn:fhir-gateway:dev-issuer"]).await;
    let portal = Caller::new(&gateway, &["--scope", "patient/*.rs", "--patient", "pat-b", "--organization", ""]);
    assert_eq!(portal.get("Observation/obs-b-vital").await.status, 200);
    assert_eq!(portal.get("Observation/obs-a-vital").await.status, 404, "and only that patient");
}

#[tokio::test]
async fn a_write_to_a_resource_the_caller_may_not_read_is_refused_like_an_unknown_one() {
    let (gateway, emr) = seeded(&[]).await;
    let doctor = Caller::new(&gateway, &["--scope", "user/*.cruds", "--fhir-user", "Practitioner/p1", "--organization", ""]);
    let mut hidden = emr.read("Observation/obs-b-vital").await;
    hidden["status"] = json!("amended");
    let unknown = doctor.get("Observation/no-such-id").await.json()["issue"].clone();
    for (context, answer) in [
        ("PUT", doctor.put("Observation/obs-b-vital", &hidden).await),
        ("DELETE", doctor.delete("Observation/obs-b-vital").await),
        ("DELETE of an unknown id", doctor.delete("Observation/no-such-id").await),
    ] {
        assert_eq!(answer.status, 404, "{context}: {}", answer.text);
        assert_eq!(answer.json()["issue"], unknown, "{context} looks like an unknown id");
    }
    let bundle = transaction(vec![put_entry("Observation/obs-b-vital", hidden.clone())]);
    assert_entry_refused("transaction PUT", &doctor.post("", &bundle).await, 404, 0);
    let conditional = transaction(vec![json!({"request": {"method": "DELETE", "url": "Observation?_id=obs-b-vital"}})]);
    let answer = doctor.post("", &conditional).await;
    assert_eq!(answer.status, 200, "a hidden match is no match: {}", answer.text);
    let stored = emr.read("Observation/obs-b-vital").await;
    assert_eq!((stored["meta"]["versionId"].as_str(), stored["status"].as_str()), (Some("1"), Some("final")), "nothing changed");
    // Control: once B's Consent lets the doctor read it, the doctor may correct it.
    emr.expect_write(
        Method::PUT,
        "Consent/for-p1",
        &consent("for-p1", "pat-b", json!({ "type": "permit", "actor": [recipient("Practitioner/p1")] })),
        201,
    )
    .await;
    doctor.expect_write(Method::PUT, "Observation/obs-b-vital", &hidden, 200).await;
}

#[tokio::test]
async fn only_configured_recorders_record_consents_on_a_patients_behalf() {
    let grant = consent("grant", "pat-b", json!({ "type": "permit", "actor": [recipient("Organization/evil")] }));
    let (gateway, emr) = seeded(&[]).await;
    let evil = Caller::new(&gateway, &["--scope", "system/*.cruds", "--organization", "Organization/evil"]);
    assert_outcome("a backend of another organisation", &evil.put("Consent/grant", &grant).await, 403, "forbidden");
    let bundle = transaction(vec![put_entry("Consent/grant", grant.clone())]);
    assert_entry_refused("in a transaction", &evil.post("", &bundle).await, 403, 0);
    assert_eq!(evil.get("Observation/obs-b-vital").await.status, 404, "the refused Consent grants nothing");
    // Control: the local EMR records it, and then it applies.
    emr.expect_write(Method::PUT, "Consent/grant", &grant, 201).await;
    assert_eq!(evil.get("Observation/obs-b-vital").await.status, 200);

    let (gateway, emr) = seeded(&["--consent-recorder-organizations", "Organization/evil"]).await;
    let evil = Caller::new(&gateway, &["--scope", "system/*.cruds", "--organization", "Organization/evil"]);
    evil.expect_write(Method::PUT, "Consent/grant", &grant, 201).await;
    let another = consent("another", "pat-b", json!({ "type": "permit", "actor": [recipient("Organization/local")] }));
    assert_outcome("no longer the local EMR", &emr.put("Consent/another", &another).await, 403, "forbidden");
}
