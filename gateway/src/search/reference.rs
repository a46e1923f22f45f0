//! Normal form of resource references, shared by indexing and querying so
//! both sides compare the same text.

use crate::search::search_params::SearchParamTable;

/// Normalises a reference for indexing and matching.
///
/// * `Patient/123`, `http://any.base/fhir/Patient/123` and
///   `…/Patient/123/_history/4` all become `Patient/123` (the type must be an
///   R4 resource type and the id a valid FHIR id);
/// * other text (`urn:uuid:…`, URLs that do not end in `Type/id`) is kept as is;
/// * contained references (`#x`) and empty text give `None`.
///
/// Stripping the base of absolute URLs means a reference to another server's
/// `Patient/123` indexes like a local one; this gateway does not distinguish
/// servers.
pub fn normalize_reference(table: &SearchParamTable, raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.starts_with('#') {
        return None;
    }
    let mut segments: Vec<&str> = raw.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    if let [.., resource_type, id] = segments.as_slice()
        && table.is_resource_type(resource_type)
        && is_valid_id(id)
    {
        return Some(format!("{resource_type}/{id}"));
    }
    Some(raw.to_string())
}

/// The resource type of a normalised `Type/id` reference.
pub fn reference_type(normalized: &str) -> Option<&str> {
    let (resource_type, id) = normalized.split_once('/')?;
    (!resource_type.contains(':') && !id.contains('/')).then_some(resource_type)
}

/// FHIR `id`: 1–64 characters from `[A-Za-z0-9.-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}
