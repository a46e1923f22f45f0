//! Any JSON as a transaction or batch Bundle: entry parsing, request URLs, conditional targets,
//! the processing order. Never a panic; every accepted entry has a position inside the Bundle.
#![no_main]

use fhir_gateway::fhir::bundle::{parse_bundle, processing_order};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = serde_json::from_slice::<Value>(data) else { return };
    let count = bundle.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
    if let Ok(parsed) = parse_bundle(bundle, "http://127.0.0.1:8080/fhir", 100) {
        assert!(parsed.entries.iter().all(|entry| entry.position < count));
        let order = processing_order(&parsed.entries);
        assert_eq!(order.len(), parsed.entries.len());
    }
});
