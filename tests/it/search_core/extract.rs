//! Extraction of index entries from the official R4 examples.

use super::common::{all_examples, example, table};
use fhir_gateway::search::{IndexEntry, IndexValue, extract};

fn values<'e>(entries: &'e [IndexEntry], param: &str) -> Vec<&'e IndexValue> {
    entries.iter().filter(|e| e.param == param).map(|e| &e.value).collect()
}

fn token(system: Option<&str>, code: &str) -> IndexValue {
    IndexValue::Token { system: system.map(str::to_string), code: code.to_string() }
}

fn texts(entries: &[IndexEntry], param: &str) -> Vec<String> {
    values(entries, param)
        .into_iter()
        .map(|v| match v {
            IndexValue::Text { normalized, .. } => normalized.clone(),
            other => panic!("{param}: expected text, got {other:?}"),
        })
        .collect()
}

#[test]
fn patient_example() {
    let entries = extract(table(), &example("Patient", "example"));

    let family = values(&entries, "family");
    assert!(family.contains(&&IndexValue::Text { normalized: "chalmers".into(), exact: "Chalmers".into() }));
    assert_eq!(texts(&entries, "family"), ["chalmers", "windsor"]);
    let names = texts(&entries, "name");
    for part in ["chalmers", "peter", "james", "jim", "windsor"] {
        assert!(names.iter().any(|n| n == part), "name should include {part}: {names:?}");
    }
    // 1974-12-25 covers the whole UTC day
    assert_eq!(values(&entries, "birthdate"), [&IndexValue::Date { start_ms: 157_161_600_000, end_ms: 157_161_600_000 + 86_400_000 - 1 }]);
    assert_eq!(values(&entries, "identifier"), [&token(Some("urn:oid:1.2.36.146.595.217.0.1"), "12345")]);
    assert_eq!(values(&entries, "gender"), [&token(None, "male")]);
    assert_eq!(values(&entries, "active"), [&token(None, "true")]);
    assert_eq!(texts(&entries, "address-postalcode"), ["3999"]);
    assert!(values(&entries, "telecom").contains(&&token(Some("phone"), "(03) 5555 6473")));
    assert_eq!(values(&entries, "phone").len(), 3);
    assert!(values(&entries, "email").is_empty());
    assert_eq!(values(&entries, "organization"), [&IndexValue::Reference { target: "Organization/1".into() }]);
    assert_eq!(values(&entries, "_id"), [&token(None, "example")]);
    // unsupported (`deceased`) and composite-free: no group ids at all
    assert!(values(&entries, "deceased").is_empty());
    assert!(entries.iter().all(|e| e.group.is_none()));
}

#[test]
fn accented_names_are_normalized() {
    let entries = extract(table(), &example("Patient", "example"));
    // `contact.name` is not indexed by `name`; use a resource of our own
    assert!(!texts(&entries, "name").iter().any(|n| n.contains("march")));
    let patient = serde_json::json!({
        "resourceType": "Patient",
        "name": [{"family": "du Marché", "given": ["Bénédicte"], "prefix": ["Mme"]}]
    });
    let entries = extract(table(), &patient);
    assert_eq!(texts(&entries, "name"), ["du marche", "benedicte", "mme"]);
    assert!(values(&entries, "family").contains(&&IndexValue::Text { normalized: "du marche".into(), exact: "du Marché".into() }));
}

#[test]
fn observation_example_weight() {
    let entries = extract(table(), &example("Observation", "example"));
    let quantity = IndexValue::Quantity {
        value: "185".into(),
        value_f64: 185.0,
        system: Some("http://unitsofmeasure.org".into()),
        code: Some("[lb_av]".into()),
        unit: Some("lbs".into()),
    };
    assert_eq!(values(&entries, "value-quantity"), [&quantity]);
    let codes = values(&entries, "code");
    assert_eq!(codes.len(), 4);
    assert!(codes.contains(&&token(Some("http://loinc.org"), "29463-7")));
    assert!(codes.contains(&&token(Some("http://snomed.info/sct"), "27113001")));
    assert!(texts(&entries, "code:text").contains(&"body weight".to_string()));
    assert_eq!(values(&entries, "category"), [&token(Some("http://terminology.hl7.org/CodeSystem/observation-category"), "vital-signs")]);
    assert_eq!(values(&entries, "status"), [&token(None, "final")]);
    let patient = IndexValue::Reference { target: "Patient/example".into() };
    assert_eq!(values(&entries, "patient"), [&patient]);
    assert_eq!(values(&entries, "subject"), [&patient]);
    assert_eq!(values(&entries, "encounter"), [&IndexValue::Reference { target: "Encounter/example".into() }]);
    assert!(matches!(values(&entries, "date")[..], [IndexValue::Date { .. }]));

    // code-value-quantity: the 4 codes and the quantity share one group
    let composite: Vec<&IndexEntry> = entries.iter().filter(|e| e.param.starts_with("code-value-quantity$")).collect();
    assert_eq!(composite.len(), 5);
    let group = composite[0].group.expect("grouped");
    assert!(composite.iter().all(|e| e.group == Some(group)));
    assert_eq!(composite.iter().filter(|e| e.param == "code-value-quantity$1").count(), 1);
}

#[test]
fn blood_pressure_components_get_their_own_groups() {
    let entries = extract(table(), &example("Observation", "blood-pressure"));
    let component: Vec<&IndexEntry> = entries.iter().filter(|e| e.param.starts_with("component-code-value-quantity$")).collect();
    let groups: std::collections::BTreeSet<u32> = component.iter().filter_map(|e| e.group).collect();
    assert_eq!(groups.len(), 2);
    // the systolic code sits in the group of the 107 mmHg value
    let systolic = component.iter().find(|e| e.value == token(Some("http://loinc.org"), "8480-6")).expect("systolic code");
    let value = component.iter().find(|e| e.group == systolic.group && e.param.ends_with("$1")).expect("systolic value");
    assert!(matches!(&value.value, IndexValue::Quantity { value, .. } if value == "107"));
    // no value at the root: the root group is incomplete and not indexed
    assert!(!entries.iter().any(|e| e.param.starts_with("code-value-quantity$")));
    // combo-code covers root and component codes
    assert_eq!(values(&entries, "combo-code").len(), 1 + 3 + 1);
    // meta.profile is indexed for `_profile`
    assert_eq!(values(&entries, "_profile"), [&token(None, "http://hl7.org/fhir/StructureDefinition/vitalsigns")]);
    // basedOn has only an identifier: no reference, but an :identifier entry
    assert!(values(&entries, "based-on").is_empty());
    assert_eq!(values(&entries, "based-on:identifier"), [&token(Some("https://acme.org/identifiers"), "1234")]);
}

#[test]
fn periods_timings_and_references() {
    let encounter = serde_json::json!({
        "resourceType": "Encounter",
        "period": {"start": "2013-01-14T10:00:00+01:00"},
        "subject": {"reference": "http://example.org/fhir/Patient/p1/_history/3"},
        "participant": [{"individual": {"reference": "#contained"}}]
    });
    let entries = extract(table(), &encounter);
    assert_eq!(values(&entries, "date"), [&IndexValue::Date { start_ms: 1_358_154_000_000, end_ms: i64::MAX }]);
    assert_eq!(values(&entries, "patient"), [&IndexValue::Reference { target: "Patient/p1".into() }]);
    assert!(values(&entries, "participant").is_empty());

    let observation = serde_json::json!({
        "resourceType": "Observation",
        "effectiveTiming": {"event": ["2013-03-01", "2013-01-01", "2013-02"]},
        "subject": {"reference": "Group/g1"}
    });
    let entries = extract(table(), &observation);
    assert_eq!(values(&entries, "date"), [&IndexValue::Date { start_ms: 1_356_998_400_000, end_ms: 1_362_182_400_000 - 1 }]);
    // `patient` only counts references to a Patient
    assert!(values(&entries, "patient").is_empty());
    assert_eq!(values(&entries, "subject"), [&IndexValue::Reference { target: "Group/g1".into() }]);
}

#[test]
fn every_official_example_extracts_without_panicking() {
    let examples = all_examples();
    assert!(examples.len() > 150);
    let mut total = 0;
    for (_, resource) in &examples {
        total += extract(table(), resource).len();
    }
    assert!(total > 3_000, "only {total} entries");
}
