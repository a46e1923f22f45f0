//! Any query string on any resource type: parsing into a search, strict and lenient, and the
//! matcher on a small resource. Never a panic.
#![no_main]

use fhir_gateway::fhir::query::pairs;
use fhir_gateway::search::{SearchParamTable, matches, parse_query};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const TYPES: [&str; 6] = ["Patient", "Observation", "Encounter", "Condition", "Organization", "Consent"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(query) = std::str::from_utf8(rest) else { return };
    let resource_type = TYPES[usize::from(first) % TYPES.len()];
    let table = SearchParamTable::r4();
    let pairs = pairs(query);
    let _ = parse_query(table, resource_type, &pairs, false);
    if let Ok(parsed) = parse_query(table, resource_type, &pairs, true) {
        let resource = json!({
            "resourceType": resource_type, "id": "x", "status": "final",
            "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974-12-25",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/x"}, "valueQuantity": {"value": 72, "code": "/min"},
        });
        let _ = matches(table, &parsed, &resource);
    }
});
