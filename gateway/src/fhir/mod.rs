//! FHIR R4 glue that does no I/O: resource type names, the canonical byte form, validation.
//!
//! Architecture decision: resources are handled as `serde_json::Value` with
//! `arbitrary_precision` (numbers keep their lexical form), never as a typed model. fhir-sdk,
//! which the user named, has no R4 model (STU3, R4B, R5 only), silently drops unknown elements,
//! rewrites decimals (`37.50` becomes `37.5`) and costs ~30 minutes of cold build on this
//! machine; it can therefore serve neither as storage format nor as strict validator. Strict
//! validation is driven by a table generated from the official R4 StructureDefinitions
//! (`r4_model.json`, `tools/gen_r4_model.py`). See ARCHITECTURE.md.

pub mod bundle;
pub mod canonical;
pub mod query;
pub mod resource_type;
pub mod validation;

use std::sync::LazyLock;

use serde_json::Value;

pub use validation::{Issue, IssueCode, Leniency, R4Model, Severity};

static R4_MODEL: LazyLock<R4Model> =
    LazyLock::new(|| R4Model::from_json(include_str!("r4_model.json")).expect("the bundled r4_model.json is consistent"));

/// The bundled R4 validation table.
pub fn r4_model() -> &'static R4Model {
    &R4_MODEL
}

impl Issue {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

fn structure_issue(expression: &str, diagnostics: String) -> Issue {
    Issue { severity: Severity::Error, code: IssueCode::Structure, expression: expression.to_string(), diagnostics }
}

/// Validates a resource as the gateway accepts it: strictly against R4 for the types the table
/// covers (Patient, Observation, Consent), and for every other type: a JSON object with a known
/// `resourceType`, a well-formed `id` and a `meta` object.
pub fn validate_resource(resource: &Value, leniency: Leniency) -> Vec<Issue> {
    let Some(object) = resource.as_object() else {
        return vec![structure_issue("", "a resource must be a JSON object".into())];
    };
    let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
        return vec![structure_issue("", "resourceType is missing or not a string".into())];
    };
    if !resource_type::is_resource_type(resource_type) {
        return vec![structure_issue("resourceType", format!("'{resource_type}' is not an R4 resource type"))];
    }
    let mut issues = Vec::new();
    long_strings(resource, resource_type, &mut issues);
    if r4_model().is_strictly_validated(resource_type) {
        issues.extend(validation::validate(r4_model(), resource, leniency));
        return issues;
    }
    if let Some(id) = object.get("id")
        && !id.as_str().is_some_and(is_valid_id)
    {
        issues.push(structure_issue(&format!("{resource_type}.id"), "id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'".into()));
    }
    if let Some(meta) = object.get("meta")
        && meta.as_object().is_none_or(|meta| meta.is_empty())
    {
        issues.push(structure_issue(&format!("{resource_type}.meta"), "meta must be a non-empty JSON object".into()));
    }
    issues
}

/// R4: "strings SHALL NOT exceed 1MB" (1024 × 1024 characters); base64Binary values (the
/// `data` of an Attachment, Binary or Signature, a UDI carrier) are not strings and may be longer.
pub const MAX_STRING_CHARS: usize = 1024 * 1024;

/// An issue for every string longer than [`MAX_STRING_CHARS`], at its path (paths are only
/// built when there is one: this runs on every write).
fn long_strings(value: &Value, path: &str, issues: &mut Vec<Issue>) {
    fn is_long(text: &str) -> bool {
        text.len() > MAX_STRING_CHARS && text.chars().count() > MAX_STRING_CHARS
    }
    fn holds_one(value: &Value) -> bool {
        match value {
            Value::String(text) => is_long(text),
            Value::Array(items) => items.iter().any(holds_one),
            Value::Object(members) => members.iter().any(|(name, member)| !is_base64(name) && holds_one(member)),
            _ => false,
        }
    }
    fn is_base64(name: &str) -> bool {
        matches!(name, "data" | "carrierAIDC")
    }
    if !holds_one(value) {
        return;
    }
    match value {
        Value::String(text) => issues.push(structure_issue(
            path,
            format!("a string of {} characters; R4 strings are at most {MAX_STRING_CHARS} characters", text.chars().count()),
        )),
        Value::Array(items) => {
            for (position, item) in items.iter().enumerate() {
                long_strings(item, &format!("{path}[{position}]"), issues);
            }
        }
        Value::Object(members) => {
            for (name, member) in members.iter().filter(|(name, _)| !is_base64(name)) {
                long_strings(member, &format!("{path}.{name}"), issues);
            }
        }
        _ => {}
    }
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
}

/// Now, truncated to milliseconds (the precision of `meta.lastUpdated` here).
pub fn now_instant() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000).expect("a valid nanosecond")
}

/// A FHIR `instant` in UTC with milliseconds: `2026-11-21T15:20:12.123Z`.
///
/// Written digit by digit: this runs a few times per request, and `time`'s general formatter
/// took a microsecond each.
pub fn format_instant(instant: time::OffsetDateTime) -> String {
    let utc = instant.to_offset(time::UtcOffset::UTC);
    let Some(year) = u32::try_from(utc.year()).ok().filter(|year| *year <= 9999) else {
        let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
        return utc.format(&format).expect("formats");
    };
    let fields = [
        (year, 4, b'-'),
        (u32::from(u8::from(utc.month())), 2, b'-'),
        (u32::from(utc.day()), 2, b'T'),
        (u32::from(utc.hour()), 2, b':'),
        (u32::from(utc.minute()), 2, b':'),
        (u32::from(utc.second()), 2, b'.'),
        (u32::from(utc.millisecond()), 3, b'Z'),
    ];
    let mut text = Vec::with_capacity(24);
    for (value, digits, separator) in fields {
        for position in (0..digits).rev() {
            text.push(b'0' + (value / 10u32.pow(position) % 10) as u8);
        }
        text.push(separator);
    }
    String::from_utf8(text).expect("ASCII digits and separators")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit-by-digit writer agrees with `time`'s formatter, zero padding and offsets included.
    #[test]
    fn format_instant_writes_utc_with_milliseconds() {
        let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
        let instants = [
            time::macros::datetime!(2026-11-21 15:20:12.123 UTC),
            time::macros::datetime!(0987-01-02 03:04:05.006 UTC),
            time::macros::datetime!(2026-12-31 23:59:59.999 -05:00),
            time::macros::datetime!(2000-02-29 00:00:00 +14:00),
        ];
        for instant in instants {
            let expected = instant.to_offset(time::UtcOffset::UTC).format(&format).unwrap();
            assert_eq!(format_instant(instant), expected);
        }
        assert_eq!(format_instant(time::macros::datetime!(2026-11-21 15:20:12.123 UTC)), "2026-11-21T15:20:12.123Z");
        assert_eq!(format_instant(time::macros::datetime!(2026-12-31 23:59:59.999 -05:00)), "2027-01-01T04:59:59.999Z");
    }
}
