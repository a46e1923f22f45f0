//! Bounded random inputs: parsing and matching must never panic.

use super::common::{example, table};
use fhir_gateway::search::datetime::parse_date_range;
use fhir_gateway::search::normalize::normalize_text;
use fhir_gateway::search::reference::normalize_reference;
use fhir_gateway::search::{ResourceSet, extract, parse_query};
use serde_json::json;

use crate::harness::Rng;

impl Rng {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// Random text: raw bytes (lossily decoded) or search-syntax characters.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "|",
            "$",
            ",",
            "\\",
            ":",
            ".",
            "-",
            "+",
            "e",
            "E",
            "T",
            "Z",
            "0",
            "1",
            "9",
            "2013",
            "-01",
            "-14",
            "T10:00",
            ":00",
            "+01:00",
            "http://loinc.org",
            "Patient/",
            "/_history/",
            "é",
            "ß",
            "İ",
            "\u{301}",
            " ",
            "eq",
            "ap",
            "sa",
            "gt",
            "true",
            "null",
            "#",
            "%",
            "€",
            "\u{0}",
        ];
        let len = self.below(12);
        let mut out = String::new();
        for _ in 0..len {
            if self.below(3) == 0 {
                let bytes: Vec<u8> = (0..1 + self.below(4)).map(|_| self.next() as u8).collect();
                out.push_str(&String::from_utf8_lossy(&bytes));
            } else {
                out.push_str(self.pick(PIECES));
            }
        }
        out
    }
}

#[test]
fn random_queries_never_panic() {
    let resources = [
        example("Patient", "example"),
        example("Patient", "pat2"),
        example("Observation", "example"),
        example("Observation", "blood-pressure"),
        example("Encounter", "example"),
        json!({"resourceType": "Observation", "valueQuantity": {"value": 1e300}, "effectivePeriod": {"start": "bad"}}),
    ];
    let set = ResourceSet::new(resources.iter());
    const SUFFIXES: &[&str] = &[
        "",
        "",
        "",
        ":exact",
        ":contains",
        ":not",
        ":missing",
        ":text",
        ":above",
        ":below",
        ":identifier",
        ":Patient",
        ":iterate",
        ":",
        ".name",
        ".",
        ".organization.name",
        ":Patient.",
        ".x:y",
    ];
    const SPECIAL: &[&str] = &[
        "_count",
        "_sort",
        "_summary",
        "_elements",
        "_total",
        "_include",
        "_revinclude",
        "_include:iterate",
        "_has:Observation:patient:code",
        "_has:",
        "_has:Observation",
        "_has:Observation:patient:_has:Observation:patient:code",
        "_format",
        "",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut parsed_ok = 0;
    for _ in 0..4_000 {
        let resource_type = rng.pick(&["Observation", "Patient", "Encounter"]);
        let mut pairs = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let params = table().params(resource_type);
            let name = match rng.below(10) {
                0 => rng.text(),
                1 | 2 => rng.pick(SPECIAL).to_string(),
                _ => format!("{}{}", params[rng.below(params.len())].name, rng.pick(SUFFIXES)),
            };
            pairs.push((name, rng.text()));
        }
        for lenient in [false, true] {
            if let Ok(query) = parse_query(table(), resource_type, &pairs, lenient) {
                parsed_ok += 1;
                let _ = set.search(table(), &query);
            }
        }
    }
    assert!(parsed_ok > 500, "only {parsed_ok} random queries parsed; the fuzzer is too blunt");
}

#[test]
fn random_text_in_helpers_never_panics() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let text = rng.text();
        let _ = parse_date_range(&text);
        let _ = normalize_text(&text);
        let _ = normalize_reference(table(), &text);
    }
}

#[test]
fn random_resources_never_panic() {
    let mut rng = Rng(7);
    let base = example("Observation", "blood-pressure");
    for _ in 0..300 {
        // replace random leaves of a real resource with random JSON
        let mut resource = base.clone();
        let object = resource.as_object_mut().expect("object");
        let keys: Vec<String> = object.keys().cloned().collect();
        for _ in 0..3 {
            let key = &keys[rng.below(keys.len())];
            if key == "resourceType" {
                continue;
            }
            let replacement = match rng.below(6) {
                0 => json!(rng.text()),
                1 => json!(null),
                2 => json!([rng.text(), 1, {"value": rng.text()}]),
                3 => {
                    json!({"coding": [{"system": rng.text(), "code": 5}], "value": "x", "start": rng.text()})
                }
                4 => json!(rng.next() as f64 / 3.0),
                _ => json!([[[]]]),
            };
            object.insert(key.clone(), replacement);
        }
        let _ = extract(table(), &resource);
    }
}
