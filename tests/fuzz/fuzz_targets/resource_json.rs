//! Any bytes as a request body: JSON parsing, validation (strict and lenient) and, for what
//! validates, the canonical form (which must parse back to the same value). Never a panic.
#![no_main]

use fhir_gateway::fhir::canonical::to_canonical_bytes;
use fhir_gateway::fhir::{Leniency, validate_resource};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = serde_json::from_slice::<Value>(data) else { return };
    let lenient = validate_resource(&resource, Leniency::Lenient);
    let strict = validate_resource(&resource, Leniency::Strict);
    assert!(strict.iter().filter(|issue| issue.is_error()).count() >= lenient.iter().filter(|issue| issue.is_error()).count());
    if strict.iter().any(|issue| issue.is_error()) {
        return;
    }
    let canonical = to_canonical_bytes(&resource);
    let reparsed: Value = serde_json::from_slice(&canonical).expect("canonical JSON parses");
    assert_eq!(to_canonical_bytes(&reparsed), canonical, "canonical JSON is a fixed point");
});
