//! `fhir-gateway import` through the command line, then read back through HTTP.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Gateway, TempDir, binary, corpora, entries, json_body};

fn import(data: &std::path::Path, paths: &[&std::path::Path]) -> (bool, String) {
    let output = Command::new(binary()).arg("import").arg("--data-dir").arg(data).args(paths).output().unwrap();
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

async fn count_of_type(gateway: &Gateway, resource_type: &str) -> usize {
    let mut total = 0;
    let mut url = gateway.url(&format!("{resource_type}/_history?_count=500"));
    loop {
        let page = json_body(gateway.http.get(&url).send().await.unwrap()).await;
        total += entries(&page).len();
        match page["link"].as_array().unwrap().iter().find(|link| link["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => return total,
        }
    }
}

#[tokio::test]
async fn bulk_ndjson_imports_with_references_resolved() {
    let data = TempDir::new("import-ndjson");
    let directory = corpora().join("synthea/bulk-ndjson-10-patients");
    let (success, summary) = import(data.path(), &[&directory]);
    assert!(success, "{summary}");
    assert!(summary.contains("failures: 0"), "{summary}");
    assert!(summary.contains("log.ndjson: holds no FHIR resources"), "{summary}");
    assert!(summary.contains("compacted ") && summary.contains("catalog.redb"), "the import ends by compacting the stores: {summary}");

    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let mut encounter_line = None;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            if let Some(resource_type) = value["resourceType"].as_str() {
                *expected.entry(resource_type.to_string()).or_default() += 1;
                if resource_type == "Encounter" && encounter_line.is_none() {
                    encounter_line = Some(value);
                }
            }
        }
    }
    let mut gateway = Gateway::start().await;
    gateway.stop();
    std::fs::remove_dir_all(gateway.data.path()).unwrap();
    std::fs::rename(data.path(), gateway.data.path()).unwrap();
    gateway.restart().await;
    for (resource_type, count) in &expected {
        assert_eq!(count_of_type(&gateway, resource_type).await, *count, "{resource_type}");
        assert!(summary.contains(&format!("{resource_type:<28} {count:>8}")), "{resource_type} in {summary}");
    }
    // Ids are kept and conditional references now point at the Practitioner by id.
    let original = encounter_line.unwrap();
    let encounter = json_body(gateway.get(&format!("Encounter/{}", original["id"].as_str().unwrap())).await).await;
    let conditional = original["participant"][0]["individual"]["reference"].as_str().unwrap();
    assert!(conditional.starts_with("Practitioner?identifier="), "{conditional}");
    let resolved = encounter["participant"][0]["individual"]["reference"].as_str().unwrap();
    assert!(resolved.starts_with("Practitioner/") && !resolved.contains('?'), "{resolved}");
    assert_eq!(gateway.get(resolved).await.status(), 200);
    assert_eq!(encounter["subject"], original["subject"]);
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
}

#[tokio::test]
async fn failures_are_named_and_exit_non_zero() {
    let data = TempDir::new("import-failures");
    let input = TempDir::new("import-input");
    let file = input.path().join("Patient.ndjson");
    std::fs::write(
        &file,
        concat!(
            r#"{"resourceType":"Patient","id":"good","gender":"female"}"#,
            "\n",
            r#"{"resourceType":"Patient","id":"bad","gender":"nonsense"}"#,
            "\n",
            "not json\n",
        ),
    )
    .unwrap();
    let (success, summary) = import(data.path(), &[&file]);
    assert!(!success, "{summary}");
    assert!(summary.contains("failures: 2"), "{summary}");
    assert!(summary.contains("Patient.ndjson:2: Patient.gender"), "{summary}");
    assert!(summary.contains("Patient.ndjson:3: not JSON"), "{summary}");
    assert!(summary.contains(&format!("{:<28} {:>8}", "Patient", 1)), "the valid line is imported: {summary}");

    let (success, message) = import(data.path(), &[std::path::Path::new("/no/such/path")]);
    assert!(!success);
    assert!(message.contains("no such file or directory"), "{message}");
}

/// Beyond 10,000 candidates a search does not count: unsorted, it pages in ledger order without a
/// `total` (instead of reading every candidate); a narrower search still counts exactly.
#[tokio::test]
async fn a_search_with_more_than_ten_thousand_candidates_pages_without_a_total() {
    let input = TempDir::new("import-many-input");
    let file = input.path().join("Basic.ndjson");
    let lines: Vec<String> = (0..10_001)
        .map(|i| {
            let code = if i % 1_000 == 0 { "rare" } else { "common" };
            format!(
                r#"{{"resourceType":"Basic","id":"b{i}","code":{{"coding":[{{"system":"http://example.org/kinds","code":"{code}"}}]}}}}"#
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut gateway = Gateway::start().await;
    gateway.stop();
    let (success, summary) = import(gateway.data.path(), &[&file]);
    assert!(success, "{summary}");
    gateway.restart().await;

    let first = json_body(gateway.get("Basic?_count=3").await).await;
    assert!(first.get("total").is_none(), "not counted: {first}");
    let ids =
        |page: &Value| -> Vec<String> { entries(page).iter().map(|entry| entry["resource"]["id"].as_str().unwrap().to_string()).collect() };
    let next = first["link"].as_array().unwrap().iter().find(|link| link["relation"] == "next").expect("a next page");
    let second = json_body(gateway.http.get(next["url"].as_str().unwrap()).send().await.unwrap()).await;
    assert!(second.get("total").is_none(), "{second}");
    let (first_ids, second_ids) = (ids(&first), ids(&second));
    assert_eq!((first_ids.len(), second_ids.len()), (3, 3), "{first_ids:?} {second_ids:?}");
    assert!(first_ids.iter().all(|id| !second_ids.contains(id)), "pages do not overlap: {first_ids:?} {second_ids:?}");
    let again = json_body(gateway.get("Basic?_count=3").await).await;
    assert_eq!(ids(&again), first_ids, "a stable order");

    let rare = json_body(gateway.get("Basic?code=http://example.org/kinds|rare&_count=2").await).await;
    assert_eq!(rare["total"], 11, "{rare}");
    let sorted = gateway.get("Basic?_sort=-_lastUpdated").await;
    assert_eq!(sorted.status(), 400, "a sort needs every candidate");
}
