//! Every official R4 Patient and Observation example is stored and read back with its content
//! intact (apart from `id` and server-set `meta`), decimals exactly as sent.

use serde_json::Value;

use crate::harness::{FHIR_JSON, Gateway, corpora, json_body};

/// The examples known to break an R4 rule, with the one issue our validator reports.
/// Observation-clinical-gender has `performer` → Encounter, which R4 does not allow.
const KNOWN_INVALID: &[(&str, &str)] = &[("Observation-clinical-gender.json", "Observation.performer[0].reference")];

fn without_server_fields(mut resource: Value) -> Value {
    let object = resource.as_object_mut().unwrap();
    object.remove("id");
    if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            object.remove("meta");
        }
    }
    resource
}

async fn round_trip_directory(gateway: &Gateway, resource_type: &str, expected_files: usize) {
    let directory = corpora().join("fhir-r4-examples").join(resource_type);
    let mut paths: Vec<_> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), expected_files, "corpus size");
    for path in paths {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let sent: Value = serde_json::from_str(&text).unwrap();
        let known_issue = KNOWN_INVALID.iter().find(|(file, _)| *file == name).map(|(_, expression)| *expression);
        let post = |prefer: &'static str| {
            gateway
                .http
                .post(gateway.url(resource_type))
                .header("content-type", FHIR_JSON)
                .header("prefer", prefer)
                .body(text.clone())
                .send()
        };
        let response = post("handling=strict").await.unwrap();
        let response = match known_issue {
            None => response,
            Some(expression) => {
                assert_eq!(response.status(), 422, "{name}");
                let outcome = response.text().await.unwrap();
                assert!(outcome.contains(expression), "{name}: {outcome}");
                post("handling=lenient").await.unwrap()
            }
        };
        assert_eq!(response.status(), 201, "{name}: {}", response.text().await.unwrap());
        let id = json_body(response).await["id"].as_str().unwrap().to_string();

        let read = gateway.get(&format!("{resource_type}/{id}")).await;
        assert_eq!(read.status(), 200);
        let read_text = read.text().await.unwrap();
        let read_back: Value = serde_json::from_str(&read_text).unwrap();
        assert_eq!(read_back["meta"]["versionId"], "1", "{name}");
        // serde_json's arbitrary_precision compares numbers by their text: 37.50 != 37.5.
        assert_eq!(without_server_fields(read_back), without_server_fields(sent), "{name}");
    }
}

#[tokio::test]
async fn official_patient_examples_round_trip() {
    let gateway = Gateway::start().await;
    round_trip_directory(&gateway, "Patient", 22).await;
}

#[tokio::test]
async fn official_observation_examples_round_trip() {
    let gateway = Gateway::start().await;
    round_trip_directory(&gateway, "Observation", 64).await;
}

#[tokio::test]
async fn decimal_precision_is_kept_to_the_byte() {
    let gateway = Gateway::start().await;
    let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"temp"},
        "valueQuantity":{"value":37.50,"unit":"C"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":120}},
        {"code":{"text":"b"},"valueQuantity":{"value":1.0e2}},{"code":{"text":"c"},"valueQuantity":{"value":-0.000100}}]}"#;
    let response = gateway.http.post(gateway.url("Observation")).header("content-type", FHIR_JSON).body(body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let id = json_body(response).await["id"].as_str().unwrap().to_string();
    let text = gateway.get(&format!("Observation/{id}")).await.text().await.unwrap();
    // The exponent gains an explicit sign (same value, same precision): see fhir::canonical.
    for literal in [r#""value":37.50"#, r#""value":120}"#, r#""value":1.0e+2"#, r#""value":-0.000100"#] {
        assert!(text.contains(literal), "{literal} not in {text}");
    }
}

/// The canonical form (fhir::canonical) of every example and Synthea Bundle equals serde_json's
/// compact output, an independent serializer that agrees with RFC 8785 wherever names are ASCII
/// (members in byte order, the same string escapes, numbers as sent).
#[test]
fn canonical_form_agrees_with_an_independent_serializer_on_the_corpora() {
    let mut directories: Vec<_> =
        std::fs::read_dir(corpora().join("fhir-r4-examples")).unwrap().map(|entry| entry.unwrap().path()).collect();
    directories.push(corpora().join("synthea/r4-transaction-bundles"));
    let mut checked = 0;
    for directory in directories {
        for path in std::fs::read_dir(&directory).unwrap().map(|entry| entry.unwrap().path()) {
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let canonical = fhir_gateway::fhir::canonical::to_canonical_bytes(&value);
            assert!(canonical == serde_json::to_vec(&value).unwrap(), "{}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 22 + 64 + 21, "{checked} files");
}
