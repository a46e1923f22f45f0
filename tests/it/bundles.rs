//! Transaction and batch Bundles through `POST /fhir`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::{self, FHIR_JSON, Gateway, corpora, entries, expect_outcome, json_body};

fn patient_entry(family: &str, gender: &str) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:{family}"),
        "resource": { "resourceType": "Patient", "name": [{ "family": family }], "gender": gender },
        "request": { "method": "POST", "url": "Patient" }
    })
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries })
}

async fn post_bundle(gateway: &Gateway, body: &Value) -> reqwest::Response {
    gateway.http.post(gateway.base()).header("content-type", FHIR_JSON).body(body.to_string()).send().await.unwrap()
}

fn file_sizes(gateway: &Gateway) -> Vec<u64> {
    ["blocks/blocks.pack", "ledger/entries.log", "records/catalog.log"]
        .iter()
        .map(|path| std::fs::metadata(gateway.data.path().join(path)).map(|metadata| metadata.len()).unwrap_or(0))
        .collect()
}

/// Every resource id of a type, through the type history (all pages).
async fn ids_of_type(gateway: &Gateway, resource_type: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut url = gateway.url(&format!("{resource_type}/_history?_count=500"));
    loop {
        let page = json_body(gateway.http.get(&url).send().await.unwrap()).await;
        for entry in entries(&page) {
            ids.push(entry["resource"]["id"].as_str().unwrap().to_string());
        }
        match page["link"].as_array().unwrap().iter().find(|link| link["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn a_transaction_with_one_invalid_entry_stores_nothing_and_a_batch_stores_the_rest() {
    let gateway = Gateway::start().await;
    let entries: Vec<Value> =
        (0..10).map(|index| patient_entry(&format!("p{index}"), if index == 6 { "not-a-gender" } else { "female" })).collect();
    let before = file_sizes(&gateway);
    let text = expect_outcome(post_bundle(&gateway, &bundle("transaction", entries.clone())).await, 422).await;
    assert!(text.contains("Bundle.entry[6]"), "the failing entry is named: {text}");
    assert_eq!(file_sizes(&gateway), before, "no blob, ledger entry or catalog record was written");
    assert!(ids_of_type(&gateway, "Patient").await.is_empty());

    let response = json_body(post_bundle(&gateway, &bundle("batch", entries)).await).await;
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = harness::entries(&response).iter().map(|entry| entry["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|status| **status == "201 Created").count(), 9);
    assert!(statuses[6].starts_with("422"), "{statuses:?}");
    assert_eq!(response["entry"][6]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(ids_of_type(&gateway, "Patient").await.len(), 9);
}

#[tokio::test]
async fn urn_uuid_and_conditional_references_are_resolved() {
    let gateway = Gateway::start().await;
    let mut practitioner =
        json!({ "resourceType": "Practitioner", "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": "9999" }] });
    let created = json_body(gateway.post("Practitioner", &practitioner).await).await;
    let practitioner_id = created["id"].as_str().unwrap().to_string();
    practitioner["id"] = json!(practitioner_id);

    let observation = json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "pulse" },
        "subject": { "reference": "urn:uuid:patient-a" },
        "performer": [{ "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999" }],
        "contained": [{ "resourceType": "Provenance", "id": "p", "recorded": "2026-01-01T00:00:00Z",
                        "agent": [{ "who": { "reference": "urn:uuid:patient-a" } }], "target": [{ "reference": "urn:uuid:patient-a" }] }]
    });
    let request = bundle(
        "transaction",
        vec![
            json!({ "fullUrl": "urn:uuid:observation-1", "resource": observation, "request": { "method": "POST", "url": "Observation" } }),
            json!({ "fullUrl": "urn:uuid:patient-a", "resource": { "resourceType": "Patient", "gender": "male" }, "request": { "method": "POST", "url": "Patient" } }),
            json!({ "request": { "method": "GET", "url": format!("Practitioner/{practitioner_id}") } }),
        ],
    );
    let response = json_body(post_bundle(&gateway, &request).await).await;
    assert_eq!(response["type"], "transaction-response");
    let entries = entries(&response);
    assert_eq!(entries.len(), 3, "one response per entry, in request order");
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "200 OK");
    assert_eq!(entries[2]["resource"]["id"], practitioner_id.as_str());
    let patient_id = entries[1]["resource"]["id"].as_str().unwrap();
    let observation_location = entries[0]["response"]["location"].as_str().unwrap();
    assert!(observation_location.starts_with(&gateway.base()), "{observation_location}");

    let stored = json_body(gateway.http.get(observation_location).send().await.unwrap()).await;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(stored["performer"][0]["reference"], format!("Practitioner/{practitioner_id}"));
    assert_eq!(stored["contained"][0]["target"][0]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(stored["contained"][0]["agent"][0]["who"]["reference"], format!("Patient/{patient_id}"));

    // A conditional reference that matches nothing fails the whole transaction.
    let unmatched = bundle(
        "transaction",
        vec![
            json!({ "resource": { "resourceType": "Patient", "gender": "male" }, "request": { "method": "POST", "url": "Patient" } }),
            json!({ "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "x" },
                              "subject": { "reference": "Patient?identifier=nobody" } },
                "request": { "method": "POST", "url": "Observation" } }),
        ],
    );
    let before = file_sizes(&gateway);
    assert!(expect_outcome(post_bundle(&gateway, &unmatched).await, 412).await.contains("Bundle.entry[1]"));
    assert_eq!(file_sizes(&gateway), before);
}

#[tokio::test]
async fn transaction_conditions_and_if_match() {
    let gateway = Gateway::start().await;
    let existing = json_body(
        gateway
            .post(
                "Patient",
                &json!({ "resourceType": "Patient", "gender": "female",
        "identifier": [{ "system": "urn:mrn", "value": "7" }] }),
            )
            .await,
    )
    .await;
    let existing_id = existing["id"].as_str().unwrap().to_string();

    // ifNoneExist matches: no new Patient, and references to its fullUrl point at the match.
    let request = bundle(
        "transaction",
        vec![
            json!({ "fullUrl": "urn:uuid:p", "resource": { "resourceType": "Patient", "gender": "female" },
                "request": { "method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|7" } }),
            json!({ "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "x" }, "subject": { "reference": "urn:uuid:p" } },
                "request": { "method": "POST", "url": "Observation" } }),
        ],
    );
    let response = json_body(post_bundle(&gateway, &request).await).await;
    assert_eq!(response["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(response["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{existing_id}"));
    assert_eq!(ids_of_type(&gateway, "Patient").await.len(), 1);

    // A stale ifMatch fails the transaction, naming the entry; nothing else is stored.
    let mut update = existing.clone();
    update["gender"] = json!("other");
    let request = bundle(
        "transaction",
        vec![
            patient_entry("new", "male"),
            json!({ "resource": update, "request": { "method": "PUT", "url": format!("Patient/{existing_id}"), "ifMatch": "W/\"9\"" } }),
        ],
    );
    assert!(expect_outcome(post_bundle(&gateway, &request).await, 412).await.contains("Bundle.entry[1]"));
    assert_eq!(ids_of_type(&gateway, "Patient").await.len(), 1);

    // DELETE and PUT in one transaction; deletes are processed first.
    let request = bundle(
        "transaction",
        vec![
            json!({ "resource": { "resourceType": "Patient", "id": "client-1", "gender": "male" }, "request": { "method": "PUT", "url": "Patient/client-1" } }),
            json!({ "request": { "method": "DELETE", "url": format!("Patient/{existing_id}") } }),
        ],
    );
    let response = json_body(post_bundle(&gateway, &request).await).await;
    assert_eq!(response["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(response["entry"][1]["response"]["status"], "204 No Content");
    expect_outcome(gateway.get(&format!("Patient/{existing_id}")).await, 410).await;

    // Writing one resource twice in a transaction is refused.
    let twice = bundle(
        "transaction",
        vec![
            json!({ "resource": { "resourceType": "Patient", "id": "dup" }, "request": { "method": "PUT", "url": "Patient/dup" } }),
            json!({ "resource": { "resourceType": "Patient", "id": "dup" }, "request": { "method": "PUT", "url": "Patient/dup" } }),
        ],
    );
    expect_outcome(post_bundle(&gateway, &twice).await, 400).await;
    // Malformed Bundles.
    expect_outcome(post_bundle(&gateway, &json!({ "resourceType": "Bundle", "type": "collection" })).await, 400).await;
    expect_outcome(post_bundle(&gateway, &json!({ "resourceType": "Patient" })).await, 400).await;
}

#[tokio::test]
async fn all_synthea_transaction_bundles_load_with_exact_counts() {
    let gateway = Gateway::start().await;
    let directory = corpora().join("synthea/r4-transaction-bundles");
    let mut paths: Vec<_> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    // Hospital and practitioner bundles first, then the patients.
    paths.sort_by_key(|path| {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        (!(name.starts_with("hospital") || name.starts_with("practitioner")), name)
    });
    assert_eq!(paths.len(), 23, "21 patient bundles, one hospital and one practitioner bundle");
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        let input: Value = serde_json::from_str(&text).unwrap();
        for entry in input["entry"].as_array().unwrap() {
            *expected.entry(entry["resource"]["resourceType"].as_str().unwrap().to_string()).or_default() += 1;
        }
        let response = gateway
            .http
            .post(gateway.base())
            .header("content-type", FHIR_JSON)
            .header("prefer", "return=minimal")
            .body(text)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{}: {}", path.display(), &body[..body.len().min(2000)]);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(entries(&body).iter().all(|entry| entry["response"]["status"] == "201 Created"));
    }
    for (resource_type, count) in &expected {
        assert_eq!(ids_of_type(&gateway, resource_type).await.len(), *count, "{resource_type}");
    }
}

#[tokio::test]
async fn a_transaction_that_puts_and_deletes_the_same_new_id_is_refused() {
    let gateway = Gateway::start().await;
    let patient = json!({"resourceType": "Patient", "id": "twice", "gender": "male"});
    let both = bundle(
        "transaction",
        vec![
            json!({"resource": patient, "request": {"method": "PUT", "url": "Patient/twice"}}),
            json!({"request": {"method": "DELETE", "url": "Patient/twice"}}),
        ],
    );
    let text = expect_outcome(post_bundle(&gateway, &both).await, 400).await;
    assert!(text.contains("more than one entry"), "{text}");
    assert_eq!(gateway.get("Patient/twice").await.status(), 404, "nothing was stored");
    // The same with an existing id, for comparison.
    assert_eq!(gateway.put("Patient/twice", &json!({"resourceType": "Patient", "id": "twice"})).await.status(), 201);
    expect_outcome(post_bundle(&gateway, &both).await, 400).await;
}
