//! `openapi.yaml` must describe exactly the routes the router serves (`fhir_gateway::api::ROUTES`),
//! and every error it documents must be the OperationOutcome the single error renderer produces.
//! tests/clients/run.sh checks the document against a running gateway with schemathesis; this
//! test catches drift without one.

use std::collections::BTreeSet;
use std::path::Path;

use fhir_gateway::api::ROUTES;
use fhir_gateway::fhir::resource_type::RESOURCE_TYPES;
use serde_json::Value;

const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Operations with no client-error (4xx) answer at all: they read no parameters, headers or body.
const WITHOUT_CLIENT_ERRORS: [(&str, &str); 2] = [("get", "/ledger/checkpoint"), ("get", "/healthz")];

const ERROR_OUTCOME: &str = "#/components/schemas/ErrorOutcome";

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{} is not valid YAML: {error}", path.display()))
}

/// Follows local `$ref`s (`#/components/...`) until a value without one.
fn resolve<'a>(document: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else { return value };
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {reference}"));
        value = document.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {reference}"));
    }
    panic!("$ref chain too long at {value}");
}

/// (method, path, operation object) for every operation in `paths`.
fn operations(document: &Value) -> Vec<(String, String, &Value)> {
    let paths = document["paths"].as_object().expect("`paths` is a mapping");
    let mut operations = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().unwrap_or_else(|| panic!("path item {path} is a mapping"));
        for (key, operation) in item {
            if HTTP_METHODS.contains(&key.as_str()) {
                operations.push((key.clone(), path.clone(), operation));
            }
        }
    }
    operations
}

fn format_routes(routes: &BTreeSet<(String, String)>) -> String {
    routes.iter().map(|(method, path)| format!("\n  {} {path}", method.to_uppercase())).collect()
}

#[test]
fn openapi_documents_exactly_the_router_routes() {
    let document = document();
    let served: BTreeSet<(String, String)> = ROUTES.iter().map(|(method, path)| (method.to_string(), path.to_string())).collect();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");
    let documented: BTreeSet<(String, String)> = operations(&document).into_iter().map(|(method, path, _)| (method, path)).collect();

    let undocumented: BTreeSet<_> = served.difference(&documented).cloned().collect();
    let not_served: BTreeSet<_> = documented.difference(&served).cloned().collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "openapi.yaml and fhir_gateway::api::ROUTES disagree\n\
         served but not in openapi.yaml:{}\n\
         in openapi.yaml but not served:{}",
        format_routes(&undocumented),
        format_routes(&not_served),
    );
}

#[test]
fn openapi_errors_are_operation_outcomes() {
    let document = document();
    let mut problems = Vec::new();
    for (method, path, operation) in operations(&document) {
        let label = format!("{} {path}", method.to_uppercase());
        let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{label}: no responses"));
        assert!(!responses.contains_key("default"), "{label}: a `default` response hides undocumented statuses");
        let mut client_errors = 0;
        for (status, response) in responses {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            client_errors += usize::from(status.starts_with('4'));
            let content = resolve(&document, response)["content"].as_object();
            let media_types: Vec<&String> = content.map(|content| content.keys().collect()).unwrap_or_default();
            if media_types != ["application/fhir+json"] {
                problems.push(format!("{label} {status}: media types {media_types:?}, not only application/fhir+json"));
                continue;
            }
            let schema = &content.expect("content")["application/fhir+json"]["schema"];
            if schema.get("$ref").and_then(Value::as_str) != Some(ERROR_OUTCOME) {
                problems.push(format!("{label} {status}: schema {schema} is not {ERROR_OUTCOME}"));
            }
        }
        let exempt = WITHOUT_CLIENT_ERRORS.contains(&(method.as_str(), path.as_str()));
        match (client_errors, exempt) {
            (0, false) => problems.push(format!("{label}: documents no 4xx OperationOutcome")),
            (1.., true) => problems.push(format!("{label}: has 4xx answers now; drop it from WITHOUT_CLIENT_ERRORS")),
            _ => {}
        }
    }
    let outcome = resolve(&document, &document["components"]["schemas"]["ErrorOutcome"]);
    assert!(outcome.get("allOf").is_some(), "ErrorOutcome should extend OperationOutcome: {outcome}");
    assert!(problems.is_empty(), "openapi.yaml error responses:\n  {}", problems.join("\n  "));
}

#[test]
fn openapi_path_parameters_match_the_templates() {
    let document = document();
    let mut problems = Vec::new();
    for (method, path, operation) in operations(&document) {
        let in_template: BTreeSet<&str> = path.split('/').filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}')).collect();
        let path_level = document["paths"][path.as_str()]["parameters"].as_array().cloned().unwrap_or_default();
        let operation_level = operation["parameters"].as_array().cloned().unwrap_or_default();
        let declared: BTreeSet<String> = path_level
            .iter()
            .chain(operation_level.iter())
            .map(|parameter| resolve(&document, parameter))
            .filter(|parameter| parameter["in"] == "path")
            .map(|parameter| parameter["name"].as_str().expect("parameter name").to_string())
            .collect();
        let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
        if declared != in_template {
            problems.push(format!("{} {path}: template has {in_template:?}, declared {declared:?}", method.to_uppercase()));
        }
    }
    assert!(problems.is_empty(), "openapi.yaml path parameters:\n  {}", problems.join("\n  "));
}

#[test]
fn openapi_resource_types_are_the_r4_list() {
    let document = document();
    let documented: Vec<&str> = document["components"]["schemas"]["ResourceType"]["enum"]
        .as_array()
        .expect("ResourceType has an enum")
        .iter()
        .map(|name| name.as_str().expect("a string"))
        .collect();
    assert_eq!(documented, RESOURCE_TYPES, "openapi.yaml ResourceType differs from fhir::resource_type::RESOURCE_TYPES");
}
