//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use fhir_gateway::search::{QueryError, SearchParamTable, SearchQuery, parse_query};
use serde_json::Value;

/// Directory of the official R4 examples, one sub-directory per resource type.
pub fn examples() -> PathBuf {
    crate::harness::corpora().join("fhir-r4-examples")
}

/// The table, loaded once from the generated `search_params.json`.
pub fn table() -> &'static SearchParamTable {
    static TABLE: OnceLock<SearchParamTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway/src/search/search_params.json");
        let json = std::fs::read_to_string(&path).expect("search_params.json (run tools/gen_search_params.py)");
        SearchParamTable::from_json(&json).expect("valid search_params.json")
    })
}

/// An official example, e.g. `example("Patient", "example")`.
pub fn example(resource_type: &str, id: &str) -> Value {
    let path = format!("{}/{resource_type}/{resource_type}-{id}.json", examples().display());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("example JSON")
}

/// All official examples (path, resource).
pub fn all_examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(examples()).expect("examples directory") {
        let dir = dir.expect("dir entry").path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).expect("type directory") {
            let path = file.expect("file entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).expect("read example");
                if let Ok(value) = serde_json::from_str(&text) {
                    out.push((path.display().to_string(), value));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Splits `a=1&b=2` into pairs; values are taken literally (no %-decoding).
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Strict parse of a query string.
pub fn parse(resource_type: &str, query: &str) -> Result<SearchQuery, QueryError> {
    parse_query(table(), resource_type, &pairs(query), false)
}

/// Strict parse that must succeed.
pub fn parse_ok(resource_type: &str, query: &str) -> SearchQuery {
    parse(resource_type, query).unwrap_or_else(|e| panic!("{resource_type}?{query}: {e}"))
}

/// 2026-01-01T00:00:00Z, the fixed "now" for `ap` tests.
pub const NOW_MS: i64 = 1_767_225_600_000;
