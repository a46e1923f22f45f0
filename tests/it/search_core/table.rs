//! The generated search-parameter table.

use super::common::table;
use fhir_gateway::search::ParamType;

fn has(resource_type: &str, name: &str, param_type: ParamType) {
    let param = table().param(resource_type, name).unwrap_or_else(|| panic!("{resource_type} should have {name}"));
    assert_eq!(param.param_type, param_type, "{resource_type}.{name}");
    assert!(param.is_supported(), "{resource_type}.{name}: {:?}", param.unsupported);
}

#[test]
fn observation_parameters() {
    for (name, ty) in [
        ("patient", ParamType::Reference),
        ("subject", ParamType::Reference),
        ("encounter", ParamType::Reference),
        ("code", ParamType::Token),
        ("category", ParamType::Token),
        ("status", ParamType::Token),
        ("date", ParamType::Date),
        ("value-quantity", ParamType::Quantity),
        ("code-value-quantity", ParamType::Composite),
        ("component-code-value-quantity", ParamType::Composite),
        ("_id", ParamType::Token),
        ("_lastUpdated", ParamType::Date),
    ] {
        has("Observation", name, ty);
    }
    let date = table().param("Observation", "date").unwrap();
    let steps: Vec<&str> = date.paths.iter().map(|p| p.steps[0].as_str()).collect();
    assert_eq!(steps, ["effectiveDateTime", "effectivePeriod", "effectiveTiming", "effectiveInstant"]);
    let patient = table().param("Observation", "patient").unwrap();
    assert_eq!(patient.paths[0].target.as_deref(), Some("Patient"));
    let cvq = table().param("Observation", "code-value-quantity").unwrap();
    let components: Vec<&str> = cvq.components.iter().map(|c| c.param.as_str()).collect();
    assert_eq!(components, ["code", "value-quantity"]);
    assert_eq!(cvq.components[1].paths[0].steps, ["valueQuantity"]);
}

#[test]
fn patient_parameters() {
    for (name, ty) in [
        ("identifier", ParamType::Token),
        ("name", ParamType::String),
        ("family", ParamType::String),
        ("given", ParamType::String),
        ("birthdate", ParamType::Date),
        ("gender", ParamType::Token),
        ("address-postalcode", ParamType::String),
        ("telecom", ParamType::Token),
        ("phone", ParamType::Token),
        ("active", ParamType::Token),
        ("organization", ParamType::Reference),
    ] {
        has("Patient", name, ty);
    }
    let phone = table().param("Patient", "phone").unwrap();
    let filter = phone.paths[0].filter.as_ref().expect("where(system='phone')");
    assert_eq!((filter.field.as_str(), filter.value.as_str()), ("system", "phone"));
    // `Patient.deceased.exists() and …` is beyond the simplified FHIRPath subset
    assert!(!table().param("Patient", "deceased").unwrap().is_supported());
}

#[test]
fn brief_resource_types_all_have_parameters() {
    for resource_type in [
        "Patient",
        "Observation",
        "Encounter",
        "Condition",
        "Procedure",
        "MedicationRequest",
        "Immunization",
        "DiagnosticReport",
        "AllergyIntolerance",
        "DocumentReference",
        "Claim",
        "ExplanationOfBenefit",
        "CarePlan",
        "Practitioner",
        "Organization",
        "Location",
        "Consent",
        "AuditEvent",
    ] {
        let params = table().params(resource_type);
        let own = params.iter().filter(|p| !p.name.starts_with('_')).count();
        assert!(own >= 5, "{resource_type} has only {own} parameters");
        assert!(table().param(resource_type, "_id").is_some());
    }
    assert!(table().params("NoSuchType").is_empty());
    assert!(table().param("Observation", "no-such-param").is_none());
    // every type of R4 is present
    assert_eq!(table().resource_types().count(), 146);
}

#[test]
fn patient_compartment() {
    let observation = table().patient_compartment_params("Observation");
    assert!(observation.iter().any(|p| p == "subject"));
    assert!(observation.iter().any(|p| p == "performer"));
    assert_eq!(table().patient_compartment_params("Encounter"), ["patient"]);
    assert!(table().patient_compartment_params("Organization").is_empty());
    // every compartment parameter exists for its type
    for resource_type in table().resource_types() {
        for name in table().patient_compartment_params(resource_type) {
            if name != "{def}" {
                assert!(table().param(resource_type, name).is_some(), "{resource_type}.{name}");
            }
        }
    }
}

#[test]
fn bundled_table_equals_the_file() {
    let bundled = fhir_gateway::search::SearchParamTable::r4();
    assert_eq!(bundled.params("Observation"), table().params("Observation"));
}

#[test]
fn wildcard_targets_are_expanded() {
    let focus = table().param("Observation", "focus").unwrap();
    assert!(focus.targets.len() > 140);
    assert!(focus.targets.iter().any(|t| t == "Patient"));
}
