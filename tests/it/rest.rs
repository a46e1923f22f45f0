//! The FHIR REST interactions and every error status, through HTTP.

use serde_json::{Value, json};

use crate::harness::{FHIR_JSON, Gateway, entries, expect_outcome, json_body};

fn patient(family: &str) -> Value {
    json!({ "resourceType": "Patient", "name": [{ "family": family }], "gender": "female", "birthDate": "1980-02-29" })
}

#[tokio::test]
async fn create_read_update_vread_delete() {
    let gateway = Gateway::start().await;
    let mut body = patient("Nakamura");
    body["id"] = json!("client-chosen");
    let created = gateway.post("Patient", &body).await;
    assert_eq!(created.status(), 201);
    let headers = created.headers().clone();
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers.contains_key("last-modified"));
    let created = json_body(created).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_ne!(id, "client-chosen", "a create ignores the client's id");
    assert_eq!(id.len(), 36, "server ids are random UUIDs: {id}");
    assert_eq!(headers["location"].to_str().unwrap(), format!("{}/Patient/{id}/_history/1", gateway.base()));
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));

    let read = gateway.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["etag"], "W/\"1\"");
    assert_eq!(json_body(read).await, created);

    let mut changed = created.clone();
    changed["name"][0]["family"] = json!("Nakamura-Smith");
    let updated = gateway.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(updated.status(), 200);
    assert_eq!(updated.headers()["etag"], "W/\"2\"");
    let updated = json_body(updated).await;
    assert_eq!(updated["meta"]["versionId"], "2");

    let first = json_body(gateway.get(&format!("Patient/{id}/_history/1")).await).await;
    assert_eq!(first["name"][0]["family"], "Nakamura");
    let second = json_body(gateway.get(&format!("Patient/{id}/_history/2")).await).await;
    assert_eq!(second["name"][0]["family"], "Nakamura-Smith");
    expect_outcome(gateway.get(&format!("Patient/{id}/_history/3")).await, 404).await;
    expect_outcome(gateway.get(&format!("Patient/{id}/_history/x")).await, 404).await;

    let deleted = gateway.http.delete(gateway.url(&format!("Patient/{id}"))).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(deleted.headers()["etag"], "W/\"3\"");
    expect_outcome(gateway.get(&format!("Patient/{id}")).await, 410).await;
    expect_outcome(gateway.get(&format!("Patient/{id}/_history/3")).await, 410).await;
    assert_eq!(gateway.get(&format!("Patient/{id}/_history/2")).await.status(), 200, "old versions stay readable");
    let again = gateway.http.delete(gateway.url(&format!("Patient/{id}"))).send().await.unwrap();
    assert_eq!(again.status(), 204, "deleting a deleted resource is a no-op");
    let unknown = gateway.http.delete(gateway.url("Patient/never-existed")).send().await.unwrap();
    expect_outcome(unknown, 404).await;

    // An update after a delete revives the resource as a new version.
    let mut revived = patient("Nakamura");
    revived["id"] = json!(id);
    let response = gateway.put(&format!("Patient/{id}"), &revived).await;
    assert_eq!(response.status(), 201);
    assert_eq!(json_body(response).await["meta"]["versionId"], "4");
}

#[tokio::test]
async fn update_creates_with_the_client_id() {
    let gateway = Gateway::start().await;
    let mut body = patient("Okafor");
    body["id"] = json!("mrn-00042");
    let response = gateway.put("Patient/mrn-00042", &body).await;
    assert_eq!(response.status(), 201);
    assert_eq!(json_body(response).await["id"], "mrn-00042");
    let response = gateway.put("Patient/mrn-00042", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response).await["meta"]["versionId"], "2");
}

#[tokio::test]
async fn if_match_guards_updates_and_a_race_has_one_winner() {
    let gateway = Gateway::start().await;
    let created = json_body(gateway.post("Patient", &patient("Race")).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    let put_with = |version: &str, family: &str| {
        let mut body = created.clone();
        body["name"][0]["family"] = json!(family);
        gateway
            .http
            .put(gateway.url(&format!("Patient/{id}")))
            .header("content-type", FHIR_JSON)
            .header("if-match", format!("W/\"{version}\""))
            .body(body.to_string())
            .send()
    };
    assert_eq!(put_with("1", "A").await.unwrap().status(), 200);
    expect_outcome(put_with("1", "B").await.unwrap(), 412).await;
    expect_outcome(put_with("9", "B").await.unwrap(), 412).await;

    // Two concurrent PUTs with the same If-Match: exactly one 200, one 412, every round.
    for round in 0..20 {
        let current = (round + 2).to_string();
        let (first, second) = tokio::join!(put_with(&current, "left"), put_with(&current, "right"));
        let mut statuses = [first.unwrap().status().as_u16(), second.unwrap().status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 412], "round {round}");
    }
    let latest = json_body(gateway.get(&format!("Patient/{id}")).await).await;
    assert_eq!(latest["meta"]["versionId"], "22");

    let malformed = gateway
        .http
        .put(gateway.url(&format!("Patient/{id}")))
        .header("content-type", FHIR_JSON)
        .header("if-match", "nonsense")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    expect_outcome(malformed, 400).await;
}

#[tokio::test]
async fn conditional_create_on_identifier_and_id() {
    let gateway = Gateway::start().await;
    let mut body = patient("Conditional");
    body["identifier"] = json!([{ "system": "http://hospital.example/mrn", "value": "A-1" }]);
    let conditional = |condition: &'static str| {
        gateway
            .http
            .post(gateway.url("Patient"))
            .header("content-type", FHIR_JSON)
            .header("if-none-exist", condition)
            .body(body.to_string())
            .send()
    };
    let first = conditional("identifier=http://hospital.example/mrn|A-1").await.unwrap();
    assert_eq!(first.status(), 201);
    let id = json_body(first).await["id"].clone();
    for condition in ["identifier=http://hospital.example/mrn|A-1", "identifier=A-1", "Patient?identifier=A-1"] {
        let again = conditional(condition).await.unwrap();
        assert_eq!(again.status(), 200, "{condition}");
        assert_eq!(json_body(again).await["id"], id);
    }
    let by_id = format!("_id={}", id.as_str().unwrap());
    let again = gateway
        .http
        .post(gateway.url("Patient"))
        .header("content-type", FHIR_JSON)
        .header("if-none-exist", by_id)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    // A different system does not match: a new resource.
    assert_eq!(conditional("identifier=http://other.example|A-1").await.unwrap().status(), 201);
    // Now the bare value matches two resources: 412.
    expect_outcome(conditional("identifier=A-1").await.unwrap(), 412).await;
    expect_outcome(conditional("name=Conditional").await.unwrap(), 400).await;
}

#[tokio::test]
async fn fifty_parallel_conditional_creates_make_one_resource() {
    let gateway = Gateway::start().await;
    let mut body = patient("Parallel");
    body["identifier"] = json!([{ "system": "urn:oid:1.2.3", "value": "P-50" }]);
    let requests = (0..50).map(|_| {
        gateway
            .http
            .post(gateway.url("Patient"))
            .header("content-type", FHIR_JSON)
            .header("if-none-exist", "identifier=urn:oid:1.2.3|P-50")
            .body(body.to_string())
            .send()
    });
    let responses = futures_join_all(requests).await;
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for response in responses {
        let response = response.unwrap();
        match response.status().as_u16() {
            201 => created += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
        ids.insert(json_body(response).await["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1, "every answer names the same resource");
    let history = json_body(gateway.get("Patient/_history").await).await;
    assert_eq!(entries(&history).len(), 1);
}

/// A tiny join_all, to avoid a dependency for one test.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

#[tokio::test]
async fn prefer_return_and_handling() {
    let gateway = Gateway::start().await;
    let send = |prefer: &'static str, body: Value| {
        gateway.http.post(gateway.url("Patient")).header("content-type", FHIR_JSON).header("prefer", prefer).body(body.to_string()).send()
    };
    let minimal = send("return=minimal", patient("Minimal")).await.unwrap();
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert_eq!(minimal.text().await.unwrap(), "");

    let outcome = json_body(send("return=OperationOutcome", patient("Outcome")).await.unwrap()).await;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["severity"], "information");

    let mut unknown_element = patient("Lenient");
    unknown_element["favouriteColour"] = json!("green");
    let strict = send("return=representation", unknown_element.clone()).await.unwrap();
    let text = expect_outcome(strict, 422).await;
    assert!(text.contains("Patient.favouriteColour"), "{text}");
    let lenient = send("handling=lenient", unknown_element).await.unwrap();
    assert_eq!(lenient.status(), 201);
    assert_eq!(json_body(lenient).await["favouriteColour"], "green", "what is stored is the client's resource");
}

#[tokio::test]
async fn every_error_is_an_operation_outcome_with_the_right_status() {
    let gateway = Gateway::start_with(&["--max-body-bytes", "2000"]).await;
    let raw = |method: reqwest::Method, path: &str, content_type: &str, body: &str| {
        gateway.http.request(method, gateway.url(path)).header("content-type", content_type).body(body.to_string()).send()
    };
    // 400: malformed JSON, not an object, type mismatch, id mismatch, missing id, bad parameter.
    expect_outcome(raw(reqwest::Method::POST, "Patient", FHIR_JSON, "{\"resourceType\":").await.unwrap(), 400).await;
    expect_outcome(raw(reqwest::Method::POST, "Patient", FHIR_JSON, "[1,2]").await.unwrap(), 400).await;
    expect_outcome(gateway.post("Observation", &patient("Mismatch")).await, 400).await;
    let mut other_id = patient("Id");
    other_id["id"] = json!("b");
    expect_outcome(gateway.put("Patient/a", &other_id).await, 400).await;
    expect_outcome(gateway.put("Patient/a", &patient("NoId")).await, 400).await;
    expect_outcome(gateway.get("Patient/_history?_count=-1").await, 400).await;
    expect_outcome(gateway.get("Patient/_history?bogus=1").await, 400).await;
    // 404: unknown type, unknown id, unknown route.
    expect_outcome(gateway.get("Foo/1").await, 404).await;
    expect_outcome(gateway.post("Foo", &json!({"resourceType": "Foo"})).await, 404).await;
    expect_outcome(gateway.get("Patient/nope").await, 404).await;
    expect_outcome(gateway.http.get(format!("{}/nowhere", gateway.root())).send().await.unwrap(), 404).await;
    // 405, 406, 413, 415, 422.
    expect_outcome(raw(reqwest::Method::PATCH, "Patient/1", FHIR_JSON, "{}").await.unwrap(), 405).await;
    expect_outcome(gateway.http.get(gateway.url("metadata")).header("accept", "application/fhir+xml").send().await.unwrap(), 406).await;
    expect_outcome(gateway.get("metadata?_format=xml").await, 406).await;
    let big = json!({ "resourceType": "Basic", "code": { "text": "x".repeat(3000) } });
    let text = expect_outcome(gateway.post("Basic", &big).await, 413).await;
    assert!(text.contains("2000"), "the limit is stated: {text}");
    expect_outcome(raw(reqwest::Method::POST, "Patient", "application/xml", "<Patient/>").await.unwrap(), 415).await;
    let invalid = json!({ "resourceType": "Observation", "code": { "text": "x" }, "status": "bogus" });
    let text = expect_outcome(gateway.post("Observation", &invalid).await, 422).await;
    assert!(text.contains("Observation.status"), "{text}");
    let bad_date = json!({ "resourceType": "Patient", "birthDate": "1980-13-01" });
    assert!(expect_outcome(gateway.post("Patient", &bad_date).await, 422).await.contains("Patient.birthDate"));
    // Other types: structure only, but a bad id or unknown resourceType is refused.
    assert_eq!(gateway.post("Basic", &json!({"resourceType": "Basic", "code": {"text": "ok"}})).await.status(), 201);
    expect_outcome(gateway.put("Basic/bad_id", &json!({"resourceType": "Basic", "id": "bad_id"})).await, 400).await;
}

#[tokio::test]
async fn history_pages_newest_first() {
    let gateway = Gateway::start().await;
    let created = json_body(gateway.post("Patient", &patient("History")).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    for family in ["Two", "Three"] {
        let mut body = created.clone();
        body["name"][0]["family"] = json!(family);
        assert_eq!(gateway.put(&format!("Patient/{id}"), &body).await.status(), 200);
    }
    gateway.post("Patient", &patient("Other")).await;

    let history = json_body(gateway.get(&format!("Patient/{id}/_history")).await).await;
    assert_eq!(history["resourceType"], "Bundle");
    assert_eq!(history["type"], "history");
    let versions: Vec<&str> = entries(&history).iter().map(|entry| entry["resource"]["meta"]["versionId"].as_str().unwrap()).collect();
    assert_eq!(versions, ["3", "2", "1"]);
    assert_eq!(history["entry"][2]["request"]["method"], "POST");
    assert_eq!(history["entry"][0]["request"]["method"], "PUT");

    // Follow `next` links one entry at a time through the type history.
    let mut url = gateway.url("Patient/_history?_count=1");
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = json_body(gateway.http.get(&url).send().await.unwrap()).await;
        for entry in entries(&page) {
            seen.push(entry["fullUrl"].as_str().unwrap().to_string());
        }
        match page["link"].as_array().unwrap().iter().find(|link| link["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen.iter().filter(|full_url| full_url.ends_with(&id)).count(), 3);

    let future = json_body(gateway.get(&format!("Patient/{id}/_history?_since=2999-01-01T00:00:00Z")).await).await;
    assert_eq!(entries(&future).len(), 0);
    let empty = json_body(gateway.get("Patient/_history?_count=0").await).await;
    assert_eq!(entries(&empty).len(), 0);
}

#[tokio::test]
async fn capability_statement_lists_what_works() {
    let gateway = Gateway::start().await;
    let statement = json_body(gateway.get("metadata").await).await;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146);
    let patient = resources.iter().find(|resource| resource["type"] == "Patient").unwrap();
    let interactions: Vec<&str> = patient["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert!(interactions.contains(&"vread") && interactions.contains(&"history-type"));
    assert!(interactions.contains(&"search-type"));
    let params: Vec<&str> = patient["searchParam"].as_array().unwrap().iter().map(|param| param["name"].as_str().unwrap()).collect();
    for name in
        ["identifier", "name", "family", "given", "birthdate", "gender", "address-postalcode", "telecom", "active", "_id", "_lastUpdated"]
    {
        assert!(params.contains(&name), "{name} in {params:?}");
    }
    assert!(!params.contains(&"deceased"), "an unsupported parameter is not listed");
    assert_eq!(patient["operation"][0]["name"], "everything");
    assert_eq!(statement["rest"][0]["security"]["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let system: Vec<&str> = statement["rest"][0]["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(system, ["transaction", "batch", "search-system"]);
}

#[tokio::test]
async fn malformed_path_parameters_get_an_operation_outcome() {
    let gateway = Gateway::start().await;
    expect_outcome(gateway.http.get(format!("{}/Patient/%FF", gateway.base())).send().await.unwrap(), 400).await;
    let post = gateway.http.post(format!("{}/%FF", gateway.base())).header("content-type", FHIR_JSON).body("{}").send().await.unwrap();
    assert!(post.status().is_client_error());
    assert_eq!(json_body(post).await["resourceType"], "OperationOutcome");
    // `_format=application/fhir+json` with an unescaped `+` (decoded as a space) is JSON too.
    assert_eq!(gateway.get("metadata?_format=application/fhir+json").await.status(), 200);
}
