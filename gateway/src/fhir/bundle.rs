//! Transaction and batch Bundles (R4 §3.1.0.11 "batch/transaction"), the part that does no I/O:
//! parsing entries, the processing order, request URLs, and rewriting references once the
//! server has assigned ids.

use std::collections::HashMap;

use serde_json::Value;

use super::is_valid_id;
use super::resource_type::is_resource_type;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    // Declared in the order a transaction processes them (R4 §3.1.0.11.2).
    Delete,
    Post,
    Put,
    Get,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Delete => "DELETE",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Get => "GET",
        }
    }
}

/// What `Bundle.entry.request.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// `Patient` (a create).
    Type(String),
    /// `Patient/123`.
    Instance { resource_type: String, id: String },
    /// `Patient/123/_history/2`.
    Version { resource_type: String, id: String, version_id: u64 },
    /// `Patient?identifier=...` (conditional update/delete, or search).
    Conditional { resource_type: String, query: String },
}

impl RequestTarget {
    /// The resource type the target names.
    pub fn resource_type(&self) -> &str {
        match self {
            RequestTarget::Type(resource_type)
            | RequestTarget::Instance { resource_type, .. }
            | RequestTarget::Version { resource_type, .. }
            | RequestTarget::Conditional { resource_type, .. } => resource_type,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BundleEntry {
    /// Position in the Bundle as sent (responses come back in this order).
    pub position: usize,
    pub full_url: Option<String>,
    pub method: Method,
    pub target: RequestTarget,
    pub resource: Option<Value>,
    pub if_none_exist: Option<String>,
    pub if_match: Option<String>,
}

#[derive(Debug)]
pub struct Bundle {
    pub kind: BundleKind,
    pub entries: Vec<BundleEntry>,
}

/// A problem with one entry (or the Bundle itself when `position` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    pub position: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some(position) => write!(formatter, "Bundle.entry[{position}]: {}", self.message),
            None => write!(formatter, "Bundle: {}", self.message),
        }
    }
}

fn bundle_error(message: impl Into<String>) -> BundleError {
    BundleError { position: None, message: message.into() }
}

fn entry_error(position: usize, message: impl Into<String>) -> BundleError {
    BundleError { position: Some(position), message: message.into() }
}

/// Parses `Bundle.request.url` relative to the FHIR base (an absolute URL under `base_url` is
/// accepted too).
pub fn parse_request_url(url: &str, base_url: &str) -> Result<RequestTarget, String> {
    let relative = url.strip_prefix(base_url).map(|rest| rest.trim_start_matches('/')).unwrap_or(url);
    let relative = relative.trim_start_matches('/');
    if let Some((path, query)) = relative.split_once('?') {
        if !is_resource_type(path) {
            return Err(format!("'{path}' is not a resource type"));
        }
        return Ok(RequestTarget::Conditional { resource_type: path.to_string(), query: query.to_string() });
    }
    let segments: Vec<&str> = relative.split('/').collect();
    let resource_type = segments[0];
    if !is_resource_type(resource_type) {
        return Err(format!("'{resource_type}' is not a resource type"));
    }
    let valid_id = |id: &str| if is_valid_id(id) { Ok(id.to_string()) } else { Err(format!("'{id}' is not a valid id")) };
    match segments.as_slice() {
        [_] => Ok(RequestTarget::Type(resource_type.to_string())),
        [_, id] => Ok(RequestTarget::Instance { resource_type: resource_type.to_string(), id: valid_id(id)? }),
        [_, id, "_history", version] => Ok(RequestTarget::Version {
            resource_type: resource_type.to_string(),
            id: valid_id(id)?,
            version_id: version.parse().map_err(|_| format!("'{version}' is not a version id"))?,
        }),
        _ => Err(format!("unsupported request url '{url}'")),
    }
}

/// Parses a transaction or batch Bundle. Every entry must carry a `request`; POST and PUT carry a
/// `resource`. At most `max_entries` entries.
pub fn parse_bundle(bundle: Value, base_url: &str, max_entries: usize) -> Result<Bundle, BundleError> {
    let Value::Object(mut bundle) = bundle else { return Err(bundle_error("not a JSON object")) };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(bundle_error("resourceType must be Bundle"));
    }
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => BundleKind::Transaction,
        Some("batch") => BundleKind::Batch,
        Some(other) => return Err(bundle_error(format!("type '{other}' cannot be processed; use transaction or batch"))),
        None => return Err(bundle_error("type is missing")),
    };
    let entries = match bundle.remove("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(bundle_error("entry must be an array")),
    };
    if entries.len() > max_entries {
        return Err(bundle_error(format!("{} entries exceed the limit of {max_entries} entries per Bundle", entries.len())));
    }
    let mut parsed = Vec::with_capacity(entries.len());
    for (position, entry) in entries.into_iter().enumerate() {
        let Value::Object(mut entry) = entry else { return Err(entry_error(position, "not a JSON object")) };
        let request = entry.remove("request").ok_or_else(|| entry_error(position, "request is missing"))?;
        let text = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_string);
        let method = match text("method").as_deref() {
            Some("GET") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("DELETE") => Method::Delete,
            Some(other) => return Err(entry_error(position, format!("request.method {other} is not supported"))),
            None => return Err(entry_error(position, "request.method is missing")),
        };
        let url = text("url").ok_or_else(|| entry_error(position, "request.url is missing"))?;
        let target = parse_request_url(&url, base_url).map_err(|message| entry_error(position, message))?;
        let resource = entry.remove("resource");
        match (method, &resource, &target) {
            (Method::Post | Method::Put, None, _) => {
                return Err(entry_error(position, format!("a {} entry needs a resource", method.as_str())));
            }
            (Method::Post, _, RequestTarget::Type(_)) => {}
            (Method::Post, _, _) => return Err(entry_error(position, "a POST entry's url must be the resource type")),
            (Method::Put, _, RequestTarget::Instance { .. } | RequestTarget::Conditional { .. }) => {}
            (Method::Put, _, _) => return Err(entry_error(position, "a PUT entry's url must be Type/id or Type?query")),
            (Method::Delete, _, RequestTarget::Instance { .. } | RequestTarget::Conditional { .. }) => {}
            (Method::Delete, _, _) => return Err(entry_error(position, "a DELETE entry's url must be Type/id or Type?query")),
            (Method::Get, _, _) => {}
        }
        if let (
            Some(resource),
            RequestTarget::Type(resource_type)
            | RequestTarget::Instance { resource_type, .. }
            | RequestTarget::Conditional { resource_type, .. },
        ) = (&resource, &target)
            && resource.get("resourceType").and_then(Value::as_str) != Some(resource_type.as_str())
        {
            return Err(entry_error(position, format!("the resource is not a {resource_type}")));
        }
        parsed.push(BundleEntry {
            position,
            full_url: entry.get("fullUrl").and_then(Value::as_str).map(str::to_string),
            method,
            target,
            resource,
            if_none_exist: text("ifNoneExist"),
            if_match: text("ifMatch"),
        });
    }
    Ok(Bundle { kind, entries: parsed })
}

/// The order a transaction processes entries in: DELETE, POST, PUT, GET; stable within each.
pub fn processing_order(entries: &[BundleEntry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|index| entries[*index].method);
    order
}

/// Rewrites every `reference` (anywhere in the resource, contained resources included) that
/// names a key of `resolved` (a `fullUrl` such as `urn:uuid:...`, or a conditional reference)
/// to its value (`Type/id`). Returns how many were rewritten.
pub fn rewrite_references(resource: &mut Value, resolved: &HashMap<String, String>) -> usize {
    match resource {
        Value::Object(object) => {
            let mut rewritten = 0;
            for (name, value) in object.iter_mut() {
                match value {
                    Value::String(reference) if name == "reference" => {
                        if let Some(target) = resolved.get(reference.as_str()) {
                            *reference = target.clone();
                            rewritten += 1;
                        }
                    }
                    other => rewritten += rewrite_references(other, resolved),
                }
            }
            rewritten
        }
        Value::Array(items) => items.iter_mut().map(|item| rewrite_references(item, resolved)).sum(),
        _ => 0,
    }
}

/// Every `reference` value in a resource (for finding `urn:uuid:` and conditional references).
pub fn references(resource: &Value) -> Vec<&str> {
    let mut found = Vec::new();
    collect_references(resource, &mut found);
    found
}

fn collect_references<'v>(value: &'v Value, found: &mut Vec<&'v str>) {
    match value {
        Value::Object(object) => {
            for (name, value) in object {
                match value {
                    Value::String(reference) if name == "reference" => found.push(reference),
                    other => collect_references(other, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_references(item, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const BASE: &str = "http://127.0.0.1:8080/fhir";

    #[test]
    fn request_urls() {
        assert_eq!(parse_request_url("Patient", BASE), Ok(RequestTarget::Type("Patient".into())));
        assert_eq!(
            parse_request_url(&format!("{BASE}/Patient/a1"), BASE),
            Ok(RequestTarget::Instance { resource_type: "Patient".into(), id: "a1".into() })
        );
        assert_eq!(
            parse_request_url("Patient/a1/_history/3", BASE),
            Ok(RequestTarget::Version { resource_type: "Patient".into(), id: "a1".into(), version_id: 3 })
        );
        assert_eq!(
            parse_request_url("Patient?identifier=http://x|1", BASE),
            Ok(RequestTarget::Conditional { resource_type: "Patient".into(), query: "identifier=http://x|1".into() })
        );
        assert!(parse_request_url("Nope/1", BASE).is_err());
        assert!(parse_request_url("Patient/bad_id", BASE).is_err());
        assert!(parse_request_url("Patient/1/extra", BASE).is_err());
    }

    #[test]
    fn parses_and_orders_a_transaction() {
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                { "request": { "method": "GET", "url": "Patient/p1" } },
                { "fullUrl": "urn:uuid:1", "resource": { "resourceType": "Patient" }, "request": { "method": "POST", "url": "Patient", "ifNoneExist": "identifier=x|1" } },
                { "resource": { "resourceType": "Patient", "id": "p2" }, "request": { "method": "PUT", "url": "Patient/p2", "ifMatch": "W/\"1\"" } },
                { "request": { "method": "DELETE", "url": "Patient/p3" } }
            ]
        });
        let parsed = parse_bundle(bundle, BASE, 10).unwrap();
        assert_eq!(parsed.kind, BundleKind::Transaction);
        assert_eq!(processing_order(&parsed.entries), vec![3, 1, 2, 0]);
        assert_eq!(parsed.entries[1].if_none_exist.as_deref(), Some("identifier=x|1"));
        assert_eq!(parsed.entries[2].if_match.as_deref(), Some("W/\"1\""));
    }

    #[test]
    fn refuses_malformed_bundles_naming_the_entry() {
        let with_entries = |entries: Value| json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
        let cases = [
            (json!({ "resourceType": "Bundle", "type": "searchset" }), None),
            (json!({ "resourceType": "Patient" }), None),
            (with_entries(json!([{ "resource": { "resourceType": "Patient" } }])), Some(0)),
            (with_entries(json!([{ "request": { "method": "PATCH", "url": "Patient/1" } }])), Some(0)),
            (
                with_entries(
                    json!([{ "request": { "method": "GET", "url": "Patient" } }, { "request": { "method": "POST", "url": "Patient" } }]),
                ),
                Some(1),
            ),
            (
                with_entries(json!([{ "resource": { "resourceType": "Observation" }, "request": { "method": "POST", "url": "Patient" } }])),
                Some(0),
            ),
            (
                with_entries(json!([{ "resource": { "resourceType": "Patient" }, "request": { "method": "POST", "url": "Patient/1" } }])),
                Some(0),
            ),
        ];
        for (bundle, position) in cases {
            let error = parse_bundle(bundle.clone(), BASE, 10).unwrap_err();
            assert_eq!(error.position, position, "{bundle}: {error}");
        }
        let many = with_entries(Value::Array(vec![json!({ "request": { "method": "GET", "url": "Patient/1" } }); 11]));
        assert!(parse_bundle(many, BASE, 10).unwrap_err().message.contains("limit of 10"));
    }

    #[test]
    fn rewrites_references_everywhere() {
        let mut resource = json!({
            "resourceType": "Observation",
            "subject": { "reference": "urn:uuid:p" },
            "performer": [{ "reference": "urn:uuid:p" }, { "reference": "Practitioner/kept" }],
            "contained": [{ "resourceType": "Provenance", "target": [{ "reference": "urn:uuid:p" }] }],
            "component": [{ "valueString": "urn:uuid:p" }]
        });
        let resolved = HashMap::from([("urn:uuid:p".to_string(), "Patient/123".to_string())]);
        assert_eq!(rewrite_references(&mut resource, &resolved), 3);
        assert_eq!(resource["subject"]["reference"], "Patient/123");
        assert_eq!(resource["contained"][0]["target"][0]["reference"], "Patient/123");
        assert_eq!(resource["performer"][1]["reference"], "Practitioner/kept");
        assert_eq!(resource["component"][0]["valueString"], "urn:uuid:p", "only reference elements");
        let mut found = references(&resource);
        found.sort();
        assert_eq!(found, vec!["Patient/123", "Patient/123", "Patient/123", "Practitioner/kept"]);
    }
}
