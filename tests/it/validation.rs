//! Tests of the strict R4 validator (the pure module, through its public API) against the official examples, the HL7 validator
//! test cases, handwritten negative cases and mutated inputs.

use std::path::{Path, PathBuf};

use fhir_gateway::fhir::validation::{Issue, IssueCode, Leniency, R4Model, Severity, validate};
use serde_json::{Value, json};

use crate::harness::corpora;

fn model() -> &'static R4Model {
    fhir_gateway::fhir::r4_model()
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| format!("{}: {e}", path.display()))
}

fn errors(issues: &[Issue]) -> Vec<&Issue> {
    issues.iter().filter(|i| i.severity == Severity::Error).collect()
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
}

fn example_files() -> Vec<PathBuf> {
    ["Patient", "Observation", "Consent"].iter().flat_map(|folder| sorted_files(&corpora().join("fhir-r4-examples").join(folder))).collect()
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

#[test]
fn model_header_and_strict_types() {
    let model = model();
    assert_eq!(model.header().source.version, "4.0.1");
    assert_eq!(model.header().generator, "gen_r4_model.py");
    for resource_type in ["Patient", "Observation", "Consent"] {
        assert!(model.is_strictly_validated(resource_type));
    }
    for resource_type in ["Encounter", "Resource", "DomainResource", "HumanName", ""] {
        assert!(!model.is_strictly_validated(resource_type), "{resource_type}");
    }
}

#[test]
fn model_with_an_unknown_regex_is_rejected() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway/src/fhir/r4_model.json")).unwrap();
    let drifted = text.replacen(r#""regex":"[A-Za-z0-9\\-\\.]{1,64}""#, r#""regex":"[A-Za-z0-9]{1,64}""#, 1);
    assert_ne!(text, drifted, "the id regex is in the table");
    let error = R4Model::from_json(&drifted).err().expect("drift is detected");
    assert!(error.contains("no matcher"), "{error}");
    assert!(R4Model::from_json("{}").is_err());
}

// ---------------------------------------------------------------------------
// Official examples
// ---------------------------------------------------------------------------

/// Official R4 examples that violate R4 itself: (file, expression, code).
const KNOWN_EXAMPLE_ISSUES: &[(&str, &str, IssueCode)] = &[
    // Observation.performer allows CareTeam, Organization, Patient, Practitioner,
    // PractitionerRole and RelatedPerson; the example points it at "Encounter/example".
    ("Observation-clinical-gender.json", "Observation.performer[0].reference", IssueCode::Structure),
];

#[test]
fn official_examples_are_valid() {
    let files = example_files();
    assert_eq!(files.len(), 22 + 64 + 12);
    let mut report = String::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        let resource = read_json(path).unwrap();
        let found: Vec<(String, IssueCode)> =
            validate(model(), &resource, Leniency::Strict).into_iter().map(|i| (i.expression, i.code)).collect();
        let expected: Vec<(String, IssueCode)> = KNOWN_EXAMPLE_ISSUES
            .iter()
            .filter(|(file, _, _)| *file == name)
            .map(|(_, expression, code)| (expression.to_string(), *code))
            .collect();
        if found != expected {
            report.push_str(&format!("{name}: expected {expected:?}, found {found:?}\n"));
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn decimals_keep_their_lexical_form() {
    let quantity: Value = serde_json::from_str(r#"{"value": 37.50, "unit": "C"}"#).unwrap();
    let observation = observation(json!({"valueQuantity": quantity}));
    assert_valid(observation.clone());
    assert_eq!(observation["valueQuantity"]["value"].to_string(), "37.50");
}

// ---------------------------------------------------------------------------
// HL7 validator test cases
// ---------------------------------------------------------------------------

/// Cases whose errors are outside this validator's scope, with the reason.
const OUT_OF_SCOPE: &[(&str, &str)] = &[
    ("pat-security-bad-xhtml.json", "XHTML content rules (txt-1, element names)"),
    ("pat-security-bad-string.json", "security check for HTML-like text in strings"),
    ("obs-temp-bad.json", "profile bodytemp (magic LOINC code)"),
    ("pat-dob-ext.json", "extension definition cannot be resolved"),
    ("pat-example-ext.json", "extension definition / example URL rules"),
    ("patient-with-turvakielto.json", "extension definition cannot be resolved"),
    ("maiden-name.json", "extension context rules"),
    ("obs-vs-1.json", "extension definition + profile bp"),
    ("obs-temp-code2.json", "SNOMED CT terminology server"),
];

/// In-scope invalid cases: the expressions of the errors we report, which are the
/// HL7 validator's in-scope errors (it reports missing elements at the parent).
const EXPECTED_ERRORS: &[(&str, &[&str])] = &[
    ("patient-id-bad-1.json", &["Patient.id"]),
    ("patient-id-bad-2.json", &["Patient.id"]),
    ("patient-id-bad-3.json", &["Patient.id"]),
    ("json-comments.json", &["Patient.fhir_comments"]),
    // HL7 also reports the versioned extension URL (out of scope).
    ("versioned-extension.json", &["Patient.extension[2].url"]),
    ("ai3.json", &["Patient.unknownElement"]),
    ("ai4.json", &["Patient.birthDate"]),
    // HL7 also reports the bp profile's slices (out of scope).
    ("obs-quantity.json", &["Observation.code"]),
    // HL7 also reports the extension and the bp profile (out of scope).
    ("obs-vs-2.json", &["Observation.text.div"]),
    ("Observation-ex-pain.json", &["Observation.code", "Observation.valueInteger.value"]),
];

/// The resourceType of a document, read loosely so unparsable inputs are classified too.
fn loose_resource_type(text: &str) -> Option<&str> {
    let after = &text[text.find("resourceType")? + "resourceType".len()..];
    let after = after.trim_start_matches(['"', ' ', ':', '\t']);
    let end = after.find(|c: char| !c.is_ascii_alphabetic())?;
    Some(&after[..end])
}

#[test]
fn agrees_with_the_hl7_validator_on_in_scope_cases() {
    let root = corpora().join("fhir-validator-testcases-r4");
    let manifest = read_json(&root.join("r4-manifest.json")).unwrap();
    let mut table = String::from("| case | HL7 errors | our errors | verdict | scope |\n|---|---|---|---|---|\n");
    let (mut in_scope, mut agreed, mut out_of_scope) = (0, 0, 0);
    let mut problems = Vec::new();
    for case in manifest.as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let java_errors = case["expected_error_count"].as_u64().unwrap();
        let text = std::fs::read_to_string(root.join(input)).unwrap();
        if !matches!(loose_resource_type(&text), Some("Patient" | "Observation" | "Consent")) {
            continue;
        }
        let file = input.rsplit('/').next().unwrap();
        let scope = if let Some((_, reason)) = OUT_OF_SCOPE.iter().find(|(f, _)| *f == file) {
            reason
        } else if case["expected_outcome"].as_str().unwrap().contains("-yes-") {
            "JSON5 mode (comments allowed); we parse strict JSON only"
        } else {
            "in scope"
        };
        // Unparsable JSON is rejected before validation (by serde_json): one error.
        let ours: Vec<String> = match serde_json::from_str::<Value>(&text) {
            Ok(resource) => errors(&validate(model(), &resource, Leniency::Strict)).iter().map(|i| i.expression.clone()).collect(),
            Err(e) => vec![format!("(JSON parse error: {e})")],
        };
        let agree = (java_errors == 0) == ours.is_empty();
        let verdict = match (scope == "in scope", agree) {
            (true, true) => "agree",
            (true, false) => "DISAGREE",
            (false, _) => "out of scope",
        };
        if scope == "in scope" {
            in_scope += 1;
            agreed += usize::from(agree);
            if !agree {
                problems.push(format!("{file}: HL7 {java_errors} errors, ours {ours:?}"));
            }
            if let Some((_, expected)) = EXPECTED_ERRORS.iter().find(|(f, _)| *f == file)
                && ours != *expected
            {
                problems.push(format!("{file}: expected errors at {expected:?}, found {ours:?}"));
            }
        } else {
            out_of_scope += 1;
        }
        table.push_str(&format!("| {file} | {java_errors} | {} | {verdict} | {scope} |\n", ours.len()));
    }
    println!("{table}\n{in_scope} in scope: {agreed} agreed, {} disagreed; {out_of_scope} out of scope", in_scope - agreed);
    assert_eq!((in_scope, out_of_scope), (29, 11), "the Patient/Observation cases are found");
    assert!(problems.is_empty(), "{problems:#?}\n{table}");
}

// ---------------------------------------------------------------------------
// Handwritten negative cases
// ---------------------------------------------------------------------------

fn patient(extra: Value) -> Value {
    merge(json!({"resourceType": "Patient", "id": "p1"}), extra)
}

fn observation(extra: Value) -> Value {
    merge(json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}), extra)
}

fn consent(extra: Value) -> Value {
    merge(
        json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
        }),
        extra,
    )
}

/// Adds (or, for `null`, removes) top-level properties.
fn merge(mut base: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            base.as_object_mut().unwrap().remove(key);
        } else {
            base[key] = value.clone();
        }
    }
    base
}

/// Asserts that validation yields exactly one error, at `expression` with `code`.
#[track_caller]
fn assert_single_error(resource: Value, expression: &str, code: IssueCode) {
    let issues = validate(model(), &resource, Leniency::Strict);
    let found: Vec<(&str, IssueCode)> = issues.iter().map(|i| (i.expression.as_str(), i.code)).collect();
    assert_eq!(found, [(expression, code)], "{issues:#?}");
    assert_eq!(issues[0].severity, Severity::Error);
}

#[track_caller]
fn assert_valid(resource: Value) {
    let issues = validate(model(), &resource, Leniency::Strict);
    assert!(issues.is_empty(), "{issues:#?}");
}

#[test]
fn minimal_resources_are_valid() {
    assert_valid(patient(json!({})));
    assert_valid(observation(json!({})));
    assert_valid(consent(json!({})));
}

#[test]
fn unknown_element() {
    assert_single_error(patient(json!({"nickname": "Bob"})), "Patient.nickname", IssueCode::Structure);
    let issues = validate(model(), &patient(json!({"nickname": "Bob"})), Leniency::Lenient);
    assert_eq!(issues.len(), 1);
    assert_eq!((issues[0].severity, issues[0].code), (Severity::Warning, IssueCode::Structure));
    assert_single_error(patient(json!({"name": [{"resourceType": "HumanName"}]})), "Patient.name[0].resourceType", IssueCode::Structure);
}

#[test]
fn wrong_gender_code() {
    assert_single_error(patient(json!({"gender": "M"})), "Patient.gender", IssueCode::CodeInvalid);
    assert_valid(patient(json!({"gender": "unknown"})));
}

#[test]
fn observation_without_status() {
    assert_single_error(observation(json!({"status": null})), "Observation.status", IssueCode::Required);
    // A primitive may be absent when its `_x` sibling carries an extension.
    let absent = json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]});
    assert_valid(observation(json!({"status": null, "_status": absent})));
}

#[test]
fn bad_birth_dates() {
    assert_single_error(patient(json!({"birthDate": "1980-13-01"})), "Patient.birthDate", IssueCode::Value);
    assert_single_error(patient(json!({"birthDate": "1980-1-1"})), "Patient.birthDate", IssueCode::Value);
    assert_single_error(patient(json!({"birthDate": "1981-02-29"})), "Patient.birthDate", IssueCode::Value);
    assert_valid(patient(json!({"birthDate": "1980"})));
}

#[test]
fn array_where_max_is_one() {
    assert_single_error(patient(json!({"gender": ["male"]})), "Patient.gender", IssueCode::Structure);
    assert_single_error(patient(json!({"maritalStatus": [{"text": "married"}]})), "Patient.maritalStatus", IssueCode::Structure);
}

#[test]
fn object_where_array_is_required() {
    assert_single_error(patient(json!({"name": {"family": "Chalmers"}})), "Patient.name", IssueCode::Structure);
    assert_single_error(patient(json!({"name": [{"given": "Peter"}]})), "Patient.name[0].given", IssueCode::Structure);
}

#[test]
fn empty_values() {
    assert_single_error(patient(json!({"name": [{"family": ""}]})), "Patient.name[0].family", IssueCode::Value);
    assert_single_error(patient(json!({"name": []})), "Patient.name", IssueCode::Structure);
    assert_single_error(patient(json!({"name": [null]})), "Patient.name[0]", IssueCode::Structure);
    assert_single_error(patient(json!({"maritalStatus": {}})), "Patient.maritalStatus", IssueCode::Structure);
}

#[test]
fn two_forms_of_a_choice() {
    let both = observation(json!({"valueQuantity": {"value": 1}, "valueString": "one"}));
    assert_single_error(both, "Observation.value[x]", IssueCode::Structure);
}

#[test]
fn choice_of_a_disallowed_type() {
    // Observation.value[x] has no decimal (nor Money) form.
    assert_single_error(observation(json!({"valueDecimal": 1.5})), "Observation.valueDecimal", IssueCode::Structure);
    assert_single_error(observation(json!({"valueMoney": {"value": 1}})), "Observation.valueMoney", IssueCode::Structure);
    // Not a type at all: an unknown element.
    assert_single_error(observation(json!({"valueWhatever": 1})), "Observation.valueWhatever", IssueCode::Structure);
}

#[test]
fn integer_with_fraction() {
    assert_single_error(observation(json!({"valueInteger": 1.5})), "Observation.valueInteger", IssueCode::Value);
    let exponent: Value = serde_json::from_str("1e3").unwrap();
    assert_single_error(observation(json!({"valueInteger": exponent})), "Observation.valueInteger", IssueCode::Value);
    assert_single_error(observation(json!({"valueInteger": 2147483648u64})), "Observation.valueInteger", IssueCode::Value);
    assert_single_error(observation(json!({"valueInteger": "12"})), "Observation.valueInteger", IssueCode::Value);
    assert_valid(observation(json!({"valueInteger": -2147483648i64})));
    let zero_dimensions = json!({"origin": {"value": 0}, "period": 1, "dimensions": 0, "data": "E"});
    assert_single_error(
        observation(json!({"valueSampledData": zero_dimensions})),
        "Observation.valueSampledData.dimensions",
        IssueCode::Value,
    );
}

#[test]
fn boolean_as_string() {
    assert_single_error(patient(json!({"active": "true"})), "Patient.active", IssueCode::Value);
    assert_single_error(patient(json!({"deceasedBoolean": "false"})), "Patient.deceasedBoolean", IssueCode::Value);
}

#[test]
fn consent_without_scope() {
    assert_single_error(consent(json!({"scope": null})), "Consent.scope", IssueCode::Required);
}

#[test]
fn deep_consent_provision_with_unknown_element() {
    let provision = json!({
        "type": "deny",
        "provision": [{"type": "permit", "provision": [{"type": "deny", "colour": "red"}]}]
    });
    assert_single_error(
        consent(json!({"provision": provision})),
        "Consent.provision.provision[0].provision[0].colour",
        IssueCode::Structure,
    );
    let bad_type = json!({"provision": [{"provision": [{"type": "maybe"}]}]});
    assert_single_error(
        consent(json!({"provision": bad_type})),
        "Consent.provision.provision[0].provision[0].type",
        IssueCode::CodeInvalid,
    );
    let as_object = json!({"provision": {"type": "deny"}});
    assert_single_error(consent(json!({"provision": as_object})), "Consent.provision.provision", IssueCode::Structure);
}

#[test]
fn nested_paths_carry_indexes() {
    let components = json!([
        {"code": {"text": "systolic"}, "valueQuantity": {"value": 120}},
        {"code": {"text": "diastolic"}, "valueQuantity": {"value": "80"}}
    ]);
    assert_single_error(observation(json!({"component": components})), "Observation.component[1].valueQuantity.value", IssueCode::Value);
    let range = json!([{"low": {"value": 1, "comparator": "<"}}]);
    // Range.low is a SimpleQuantity: comparator is prohibited (max 0).
    assert_single_error(
        observation(json!({"referenceRange": range})),
        "Observation.referenceRange[0].low.comparator",
        IssueCode::Structure,
    );
}

#[test]
fn primitive_extension_siblings() {
    let name = json!([{"given": ["Peter", null], "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "J"}]}]}]);
    assert_valid(patient(json!({"name": name})));
    assert_valid(patient(json!({"_birthDate": {"id": "b1"}})));
    let misaligned = json!([{"given": ["Peter", "James"], "_given": [null]}]);
    assert_single_error(patient(json!({"name": misaligned})), "Patient.name[0].given", IssueCode::Structure);
    let both_null = json!([{"given": ["Peter", null], "_given": [null, null]}]);
    assert_single_error(patient(json!({"name": both_null})), "Patient.name[0].given[1]", IssueCode::Structure);
    assert_single_error(patient(json!({"name": [{"given": ["Peter", null]}]})), "Patient.name[0].given[1]", IssueCode::Structure);
    assert_single_error(patient(json!({"_birthDate": {"value": "1980"}})), "Patient.birthDate.value", IssueCode::Structure);
    assert_single_error(patient(json!({"_name": {"id": "n"}})), "Patient._name", IssueCode::Structure);
    let mut null_date = patient(json!({}));
    null_date["birthDate"] = Value::Null;
    assert_single_error(null_date, "Patient.birthDate", IssueCode::Structure);
}

#[test]
fn extensions_are_checked_structurally() {
    assert_single_error(patient(json!({"extension": [{"valueString": "x"}]})), "Patient.extension[0].url", IssueCode::Required);
    let both = json!([{"url": "http://example.org/a", "valueString": "x", "extension": [{"url": "b", "valueBoolean": true}]}]);
    assert_single_error(patient(json!({"extension": both})), "Patient.extension[0]", IssueCode::Invariant);
    let bad_value = json!([{"url": "http://example.org/a", "valueDate": "2020-02-30"}]);
    assert_single_error(patient(json!({"modifierExtension": bad_value})), "Patient.modifierExtension[0].valueDate", IssueCode::Value);
    let every_type = json!([{"url": "http://example.org/a", "valueMeta": {"versionId": "1"}}]);
    assert_valid(patient(json!({"extension": every_type})));
}

#[test]
fn resource_id_and_meta() {
    assert_single_error(patient(json!({"id": "bad_id"})), "Patient.id", IssueCode::Value);
    assert_single_error(patient(json!({"id": "x".repeat(65)})), "Patient.id", IssueCode::Value);
    assert_single_error(patient(json!({"meta": {"lastUpdated": "2020-01-01"}})), "Patient.meta.lastUpdated", IssueCode::Value);
    assert_single_error(patient(json!({"meta": {"profile": "http://x"}})), "Patient.meta.profile", IssueCode::Structure);
    assert_valid(patient(json!({"meta": {"versionId": "2", "lastUpdated": "2020-01-01T00:00:00Z", "tag": [{"code": "t"}]}})));
}

#[test]
fn roots_and_contained_resources() {
    let root_issue =
        |value: Value| validate(model(), &value, Leniency::Strict).into_iter().map(|i| (i.expression, i.code)).collect::<Vec<_>>();
    assert_eq!(root_issue(json!([])), [("Resource".to_owned(), IssueCode::Structure)]);
    assert_eq!(root_issue(json!({"id": "x"})), [("Resource.resourceType".to_owned(), IssueCode::Required)]);
    assert_eq!(root_issue(json!({"resourceType": "Encounter"})), [("Encounter".to_owned(), IssueCode::Structure)]);
    let practitioner = json!({"resourceType": "Practitioner", "id": "pr1", "anything": "goes"});
    assert_valid(observation(json!({"contained": [practitioner], "performer": [{"reference": "#pr1"}]})));
    let no_id = json!({"resourceType": "Practitioner"});
    assert_single_error(observation(json!({"contained": [no_id]})), "Observation.contained[0].id", IssueCode::Required);
    let unknown = json!({"resourceType": "Spaceship", "id": "s"});
    assert_single_error(observation(json!({"contained": [unknown]})), "Observation.contained[0].resourceType", IssueCode::Structure);
    let strict = json!({"resourceType": "Patient", "id": "p2", "gender": "x"});
    assert_single_error(observation(json!({"contained": [strict]})), "Observation.contained[0].gender", IssueCode::CodeInvalid);
    let nested = json!({"resourceType": "Patient", "id": "p2", "contained": [{"resourceType": "Practitioner", "id": "p3"}]});
    assert_single_error(observation(json!({"contained": [nested]})), "Observation.contained[0]", IssueCode::Invariant);
}

#[test]
fn reference_targets() {
    assert_single_error(
        observation(json!({"subject": {"reference": "Practitioner/1"}})),
        "Observation.subject.reference",
        IssueCode::Structure,
    );
    assert_valid(observation(json!({"subject": {"reference": "http://x.org/fhir/Patient/1/_history/2"}})));
    assert_valid(observation(json!({"focus": [{"reference": "Practitioner/1"}]})));
}

// ---------------------------------------------------------------------------
// Robustness: mutated inputs never panic
// ---------------------------------------------------------------------------

use crate::harness::Rng;

fn replacement(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => Value::Null,
        1 => json!(true),
        2 => serde_json::from_str("1.50").unwrap(),
        3 => json!(""),
        4 => json!("x"),
        5 => json!([]),
        6 => json!({}),
        7 => json!([null]),
        8 => json!({"resourceType": "Patient"}),
        _ => json!(-7),
    }
}

/// Applies one random mutation somewhere in `value`.
fn mutate(value: &mut Value, rng: &mut Rng) {
    let descend = rng.below(3) != 0;
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
            if descend {
                mutate(map.get_mut(&key).unwrap(), rng);
                return;
            }
            match rng.below(4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    let moved = map.remove(&key).unwrap();
                    map.insert(format!("_{key}"), moved);
                }
                2 => {
                    let wrapped = Value::Array(vec![map[&key].clone()]);
                    map.insert(key, wrapped);
                }
                _ => {
                    map.insert(key, replacement(rng));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let index = rng.below(items.len());
            if descend {
                mutate(&mut items[index], rng);
            } else if rng.below(2) == 0 {
                *value = items[index].clone();
            } else {
                items[index] = replacement(rng);
            }
        }
        _ => *value = replacement(rng),
    }
}

#[test]
fn mutated_examples_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut validated = 0;
    for path in example_files() {
        let original = read_json(&path).unwrap();
        for round in 0..12 {
            let mut mutated = original.clone();
            for _ in 0..=round % 4 {
                mutate(&mut mutated, &mut rng);
            }
            for leniency in [Leniency::Strict, Leniency::Lenient] {
                let first = validate(model(), &mutated, leniency);
                assert_eq!(first, validate(model(), &mutated, leniency), "deterministic");
            }
            validated += 1;
        }
    }
    for odd in [json!(null), json!(1), json!("Patient"), json!({"resourceType": {}}), json!({"resourceType": "Patient", "contained": [[]]})]
    {
        let _ = validate(model(), &odd, Leniency::Strict);
    }
    assert_eq!(validated, 98 * 12);
}

#[tokio::test]
async fn strings_longer_than_r4_allows_are_refused_but_long_base64_data_is_not() {
    let gateway = crate::harness::Gateway::start().await;
    let long = "a".repeat(1024 * 1024 + 1);
    for resource in
        [json!({"resourceType": "Patient", "name": [{"family": long}]}), json!({"resourceType": "Basic", "code": {"text": long}})]
    {
        let text = crate::harness::expect_outcome(gateway.post(resource["resourceType"].as_str().unwrap(), &resource).await, 422).await;
        assert!(text.contains("at most 1048576 characters"), "{}", &text[..text.len().min(300)]);
    }
    let data = "QUJD".repeat(300_000);
    let binary = json!({"resourceType": "Binary", "contentType": "text/plain", "data": data});
    assert_eq!(gateway.post("Binary", &binary).await.status(), 201, "1.2 MB of base64Binary");
    // A value just below the limit is stored and found by :contains (it has no trigram terms).
    let near = format!("{}needle", "b".repeat(1024 * 1024 - 10));
    let basic = json!({"resourceType": "Basic", "code": {"text": "long"}, "subject": {"display": near}});
    assert_eq!(gateway.post("Basic", &basic).await.status(), 201);
    let patient = json!({"resourceType": "Patient", "name": [{"family": format!("{}needle", "c".repeat(2000))}]});
    assert_eq!(gateway.post("Patient", &patient).await.status(), 201);
    let found = crate::harness::json_body(gateway.get("Patient?family:contains=needle").await).await;
    assert_eq!(found["total"], 1, "a long family name is found by :contains");
}
