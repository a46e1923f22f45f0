//! Extraction of search-index values from a resource.
//!
//! For every supported search parameter of the resource's type, the values
//! found at the parameter's element paths are converted into [`IndexValue`]s.
//! Besides the entries named after a parameter, two auxiliary kinds are
//! emitted so an index can serve modifiers without re-reading the resource:
//!
//! * `"{param}:text"` ([`TEXT_SUFFIX`]) – [`IndexValue::Text`] of
//!   `CodeableConcept.text` and `Coding.display`, for token `:text`;
//! * `"{param}:identifier"` ([`IDENTIFIER_SUFFIX`]) – [`IndexValue::Token`] of
//!   `Reference.identifier`, for reference `:identifier`.
//!
//! Composite parameters produce entries named [`composite_key`]`(param, i)`
//! for component `i`; the values of one composite root element (the
//! resource itself, or one `Observation.component`) share a `group` id, and
//! a root element is only indexed when it has a value for every component.

use serde_json::Value;

use crate::search::datetime::{DateRange, parse_date_range};
use crate::search::normalize::normalize_text;
use crate::search::reference::{normalize_reference, reference_type};
use crate::search::search_params::{ElementPath, ParamType, SearchParam, SearchParamTable, string_parts};

/// Suffix of the auxiliary entries holding code display texts (token `:text`).
pub const TEXT_SUFFIX: &str = ":text";
/// Suffix of the auxiliary entries marking a reference element that is present but cannot be
/// indexed (a contained `#ref`, or only a `display`): for `:missing`, it is not missing.
pub const PRESENT_SUFFIX: &str = ":present";
/// Suffix of the auxiliary entries holding `Reference.identifier` (reference `:identifier`).
pub const IDENTIFIER_SUFFIX: &str = ":identifier";

/// Entry name of component `index` of composite parameter `param`: `param$index`.
/// (`$` cannot occur in a parameter code, so the key never collides.)
pub fn composite_key(param: &str, index: usize) -> String {
    format!("{param}${index}")
}

/// A value to index, typed by the kind of comparison search performs on it.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// Coding / CodeableConcept codings / Identifier (`system|value`) /
    /// ContactPoint (`system` is `phone`, `email`, … and `code` the value) /
    /// code / boolean (`"true"`, `"false"`) / id / uri.
    Token { system: Option<String>, code: String },
    /// A string: `normalized` is lower-cased without accents, `exact` as written.
    /// HumanName and Address give one entry per part.
    Text { normalized: String, exact: String },
    /// The inclusive range of instants covered (UTC; open ends are `i64::MIN` / `i64::MAX`).
    Date { start_ms: i64, end_ms: i64 },
    /// A normalised reference (`Patient/123`, or an absolute URL / URN kept as is).
    Reference { target: String },
    /// A quantity; `value` keeps the decimal text as written.
    Quantity { value: String, value_f64: f64, system: Option<String>, code: Option<String>, unit: Option<String> },
    /// A number; `text` keeps the decimal text as written.
    Number { value_f64: f64, text: String },
}

/// One index entry of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// Parameter code, auxiliary name (`code:text`) or composite key (`code-value-quantity$1`).
    pub param: String,
    pub value: IndexValue,
    /// Composite entries: values of the same composite root element share a group id.
    pub group: Option<u32>,
}

/// Extracts all index entries of `resource` (its `resourceType` selects the
/// parameters; unknown types give nothing). Unsupported parameters are skipped.
pub fn extract(table: &SearchParamTable, resource: &Value) -> Vec<IndexEntry> {
    extract_where(table, resource, |_| true)
}

/// The entries the search index makes terms of: those of the parameters with terms of their
/// own ([`SearchParam::has_own_terms`]; `phonetic` repeats `name`'s values, Observation's
/// `combo-` parameters those of others).
pub fn extract_indexed(table: &SearchParamTable, resource: &Value) -> Vec<IndexEntry> {
    extract_where(table, resource, SearchParam::has_own_terms)
}

fn extract_where(table: &SearchParamTable, resource: &Value, wanted: impl Fn(&SearchParam) -> bool) -> Vec<IndexEntry> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut extractor = Extractor::new(table);
    for param in table.params(resource_type).iter().filter(|param| wanted(param)) {
        extractor.param(resource, param);
    }
    extractor.entries
}

/// Extracts the entries of a single parameter (including its auxiliary entries).
pub fn extract_param(table: &SearchParamTable, resource: &Value, param: &SearchParam) -> Vec<IndexEntry> {
    let mut extractor = Extractor::new(table);
    extractor.param(resource, param);
    extractor.entries
}

struct Extractor<'t> {
    table: &'t SearchParamTable,
    entries: Vec<IndexEntry>,
    next_group: u32,
}

impl<'t> Extractor<'t> {
    fn new(table: &'t SearchParamTable) -> Self {
        Self { table, entries: Vec::new(), next_group: 0 }
    }

    fn param(&mut self, resource: &Value, param: &SearchParam) {
        if !param.is_supported() {
            return;
        }
        if param.param_type == ParamType::Composite {
            self.composite(resource, param);
            return;
        }
        for path in &param.paths {
            for leaf in select(resource, path) {
                self.value(&param.name, param.param_type, path, leaf, None);
            }
        }
    }

    /// One group per composite root element; a group is only kept when every
    /// component has at least one value (a partial group can never match).
    fn composite(&mut self, resource: &Value, param: &SearchParam) {
        let keys: Vec<String> = (0..param.components.len()).map(|index| composite_key(&param.name, index)).collect();
        for root_path in &param.paths {
            for root in select(resource, root_path) {
                // Most roots lack some component (a value of another type): skip those before
                // converting anything.
                let leaves: Vec<Vec<(&ElementPath, &Value)>> = param
                    .components
                    .iter()
                    .map(|component| {
                        component.paths.iter().flat_map(|path| select(root, path).into_iter().map(move |leaf| (path, leaf))).collect()
                    })
                    .collect();
                if leaves.iter().any(Vec::is_empty) {
                    continue;
                }
                let group = self.next_group;
                let group_start = self.entries.len();
                let mut complete = true;
                for ((component, key), leaves) in param.components.iter().zip(&keys).zip(leaves) {
                    let component_start = self.entries.len();
                    for (path, leaf) in leaves {
                        self.value(key, component.param_type, path, leaf, Some(group));
                    }
                    complete &= self.entries.len() > component_start;
                }
                if complete {
                    self.next_group += 1;
                } else {
                    self.entries.truncate(group_start);
                }
            }
        }
    }

    fn push(&mut self, param: &str, value: IndexValue, group: Option<u32>) {
        self.entries.push(IndexEntry { param: param.to_string(), value, group });
    }

    /// Auxiliary entries are only produced outside composites.
    fn push_aux(&mut self, param: &str, suffix: &str, value: IndexValue, group: Option<u32>) {
        if group.is_none() {
            self.entries.push(IndexEntry { param: format!("{param}{suffix}"), value, group });
        }
    }

    /// Converts one leaf value according to the parameter type and the leaf datatype.
    fn value(&mut self, name: &str, param_type: ParamType, path: &ElementPath, leaf: &Value, group: Option<u32>) {
        match param_type {
            ParamType::Token => self.token(name, &path.kind, leaf, group),
            ParamType::String => self.string(name, &path.kind, leaf, group),
            ParamType::Date => {
                if let Some(range) = date_value(&path.kind, leaf) {
                    let value = IndexValue::Date { start_ms: range.start_ms, end_ms: range.end_ms };
                    self.push(name, value, group);
                }
            }
            ParamType::Reference => self.reference(name, path, leaf, group),
            ParamType::Quantity => {
                if let Some(value) = quantity_value(&path.kind, leaf) {
                    self.push(name, value, group);
                }
            }
            ParamType::Number => {
                if let Some((value_f64, text)) = number(leaf) {
                    self.push(name, IndexValue::Number { value_f64, text }, group);
                }
            }
            ParamType::Uri => {
                if let Some(uri) = leaf.as_str() {
                    self.push(name, IndexValue::Token { system: None, code: uri.to_string() }, group);
                }
            }
            ParamType::Composite | ParamType::Special => {}
        }
    }

    fn token(&mut self, name: &str, kind: &str, leaf: &Value, group: Option<u32>) {
        match kind {
            "Coding" => self.coding(name, leaf, group),
            "CodeableConcept" => {
                for coding in items(leaf.get("coding")) {
                    self.coding(name, coding, group);
                }
                if let Some(text) = leaf.get("text").and_then(Value::as_str) {
                    self.push_aux(name, TEXT_SUFFIX, text_value(text), group);
                }
            }
            // Identifier: system|value; ContactPoint: system (phone, email, …)|value
            "Identifier" | "ContactPoint" => {
                if let Some(value) = token_from(leaf, "system", "value") {
                    self.push(name, value, group);
                }
            }
            "boolean" => {
                if let Some(flag) = leaf.as_bool() {
                    self.push(name, IndexValue::Token { system: None, code: flag.to_string() }, group);
                }
            }
            _ => {
                if let Some(code) = leaf.as_str() {
                    self.push(name, IndexValue::Token { system: None, code: code.to_string() }, group);
                }
            }
        }
    }

    fn coding(&mut self, name: &str, coding: &Value, group: Option<u32>) {
        if let Some(value) = token_from(coding, "system", "code") {
            self.push(name, value, group);
        }
        if let Some(display) = coding.get("display").and_then(Value::as_str) {
            self.push_aux(name, TEXT_SUFFIX, text_value(display), group);
        }
    }

    fn string(&mut self, name: &str, kind: &str, leaf: &Value, group: Option<u32>) {
        let Some(parts) = string_parts(kind) else {
            if let Some(text) = leaf.as_str() {
                self.push(name, text_value(text), group);
            }
            return;
        };
        for part in parts {
            for text in items(leaf.get(*part)).filter_map(Value::as_str) {
                self.push(name, text_value(text), group);
            }
        }
    }

    fn reference(&mut self, name: &str, path: &ElementPath, leaf: &Value, group: Option<u32>) {
        let raw = match path.kind.as_str() {
            "Reference" => {
                if let Some(identifier) = leaf.get("identifier")
                    && let Some(token) = token_from(identifier, "system", "value")
                {
                    self.push_aux(name, IDENTIFIER_SUFFIX, token, group);
                }
                leaf.get("reference").and_then(Value::as_str)
            }
            // canonical: `url|version` is indexed without the version
            _ => leaf.as_str().map(|s| s.split('|').next().unwrap_or(s)),
        };
        let Some(target) = raw.and_then(|raw| normalize_reference(self.table, raw)) else {
            if path.target.is_none() && leaf.is_object() {
                self.push_aux(name, PRESENT_SUFFIX, IndexValue::Token { system: None, code: String::new() }, group);
            }
            return;
        };
        if let Some(wanted) = &path.target {
            let declared = leaf.get("type").and_then(Value::as_str);
            if reference_type(&target).or(declared) != Some(wanted.as_str()) {
                return;
            }
        }
        self.push(name, IndexValue::Reference { target }, group);
    }
}

/// The nodes reached by `path` from `start`, arrays flattened, `where` filter applied, in
/// document order. Allocates only if something is found (most paths of a resource find nothing).
fn select<'v>(start: &'v Value, path: &ElementPath) -> Vec<&'v Value> {
    let mut found = Vec::new();
    descend(start, path, 0, &mut found);
    found
}

fn descend<'v>(node: &'v Value, path: &ElementPath, depth: usize, found: &mut Vec<&'v Value>) {
    let Some(step) = path.steps.get(depth) else {
        found.push(node);
        return;
    };
    for child in items(node.get(step)) {
        let kept = path
            .filter
            .as_ref()
            .is_none_or(|filter| filter.at != depth || child.get(&filter.field).and_then(Value::as_str) == Some(filter.value.as_str()));
        if kept {
            descend(child, path, depth + 1, found);
        }
    }
}

/// The items of an optional JSON value: an array's elements, or the value itself; never `null`.
fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    let slice: &[Value] = match value {
        None | Some(Value::Null) => &[],
        Some(Value::Array(list)) => list,
        Some(single) => std::slice::from_ref(single),
    };
    slice.iter().filter(|v| !v.is_null())
}

fn text_value(text: &str) -> IndexValue {
    IndexValue::Text { normalized: normalize_text(text), exact: text.to_string() }
}

/// A token from a `system` field and a code field (`code` of Coding, `value` of Identifier).
fn token_from(node: &Value, system_field: &str, code_field: &str) -> Option<IndexValue> {
    let code = node.get(code_field)?.as_str()?.to_string();
    let system = node.get(system_field).and_then(Value::as_str).map(str::to_string);
    Some(IndexValue::Token { system, code })
}

/// A JSON number as (f64, decimal text as written).
fn number(value: &Value) -> Option<(f64, String)> {
    let Value::Number(n) = value else { return None };
    let text = n.to_string();
    let parsed = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    Some((parsed, text))
}

/// The range covered by a date-like element.
///
/// `Period`: start..end, a missing bound is open. `Timing`: from the earliest
/// to the latest `event` (the schedule itself is ignored, as the spec says
/// "only the outer limits matter"), else `repeat.boundsPeriod`.
fn date_value(kind: &str, leaf: &Value) -> Option<DateRange> {
    match kind {
        "Period" => period(leaf),
        "Timing" => {
            let events: Vec<DateRange> = items(leaf.get("event")).filter_map(Value::as_str).filter_map(parse_date_range).collect();
            if events.is_empty() {
                return leaf.get("repeat").and_then(|r| r.get("boundsPeriod")).and_then(period);
            }
            Some(DateRange { start_ms: events.iter().map(|r| r.start_ms).min()?, end_ms: events.iter().map(|r| r.end_ms).max()? })
        }
        _ => parse_date_range(leaf.as_str()?),
    }
}

fn period(leaf: &Value) -> Option<DateRange> {
    let bound = |field: &str| -> Option<Option<DateRange>> {
        match leaf.get(field).and_then(Value::as_str) {
            None => Some(None),
            Some(text) => parse_date_range(text).map(Some), // invalid text: no value
        }
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if start.is_none() && end.is_none() {
        return None;
    }
    Some(DateRange { start_ms: start.map_or(i64::MIN, |r| r.start_ms), end_ms: end.map_or(i64::MAX, |r| r.end_ms) })
}

/// Quantity-like datatypes; `Money` maps its currency to ISO 4217 system/code.
fn quantity_value(kind: &str, leaf: &Value) -> Option<IndexValue> {
    let (value_f64, value) = number(leaf.get("value")?)?;
    let string = |field: &str| leaf.get(field).and_then(Value::as_str).map(str::to_string);
    if kind == "Money" {
        let currency = string("currency");
        return Some(IndexValue::Quantity {
            value,
            value_f64,
            system: currency.as_ref().map(|_| "urn:iso:std:iso:4217".to_string()),
            code: currency.clone(),
            unit: currency,
        });
    }
    Some(IndexValue::Quantity { value, value_f64, system: string("system"), code: string("code"), unit: string("unit") })
}
