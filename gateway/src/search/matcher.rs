//! A pure evaluator of [`SearchQuery`] against resources.
//!
//! It works on the resource JSON directly (through [`extract_param`]) and is
//! independent of any index, so it serves as the reference semantics in
//! tests and to filter small sets (e.g. the contents of a compartment).
//!
//! Semantics (FHIR R4 `search.html`):
//!
//! * **string** – default: the normalised value (lower case, accents removed)
//!   *starts with* the normalised search text; `:exact` – equal, case- and
//!   accent-sensitive; `:contains` – normalised substring.
//! * **token** – `code` any system, `system|code`, `|code` (no system),
//!   `system|` (any code of the system); codes compare case-sensitively.
//!   `:not` – no value of the resource matches any search value (so resources
//!   without the element match); `:text` – the normalised `CodeableConcept.text`
//!   or `Coding.display` starts with the search text.
//! * **uri** – equality; `:below` – the value starts with the search URI;
//!   `:above` – the search URI starts with the value.
//! * **date** – ranges: the search value covers its whole precision
//!   (`2013-01` = January 2013), and so does the resource value
//!   (`Period` start..end, open ends unbounded). With S the search range and
//!   T the resource range: `eq` S contains T; `ne` not `eq`; `gt` T ends after S;
//!   `lt` T starts before S; `ge` `gt` or `eq`; `le` `lt` or `eq`; `sa` T
//!   starts after S ends; `eb` T ends before S starts; `ap` T overlaps S
//!   widened on both sides by 10% of the distance between now and the
//!   farther end of S (the spec's recommended "10% of the gap between now and
//!   the date").
//! * **number / quantity** – `eq` uses the implicit precision of the search
//!   value (`5.4` matches [5.35, 5.45), `100` matches [99.5, 100.5), `1e2`
//!   matches [50, 150)); `ne` its negation; `gt` `lt` `ge` `le` compare
//!   exactly; `sa` = `gt`, `eb` = `lt`; `ap` within 10% of the search value
//!   (at least the implicit precision). Quantities additionally require the
//!   system (when given) and the code — compared with `code`, or with `code`
//!   or `unit` when no system is given (`5.4||mg`). No unit conversion.
//! * **reference** – `Type/id` (and absolute URLs reduced to it) compare
//!   equal; a bare id matches any type; other URLs compare as text.
//!   `:identifier` matches `Reference.identifier` like a token.
//! * **composite** – some composite root element (the resource, or one
//!   `Observation.component`) holds values matching every component.
//! * `:missing=true` – the resource has no value for the parameter; `false` – it has one.
//! * chains follow references through a [`ResourceLookup`]; without one
//!   (plain [`matches()`]) chained and `_has` criteria never match.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::search::datetime::DateRange;
use crate::search::extract::{IDENTIFIER_SUFFIX, IndexEntry, IndexValue, PRESENT_SUFFIX, TEXT_SUFFIX, composite_key, extract_param};
use crate::search::normalize::normalize_text;
use crate::search::query::{Chain, Filter, FilterValue, Modifier, Prefix, SearchQuery, TokenSystem};
use crate::search::reference::reference_type;
use crate::search::search_params::{ParamType, SearchParam, SearchParamTable};

/// Access to other resources, needed by chained and reverse-chained criteria.
pub trait ResourceLookup {
    /// The resource a normalised `Type/id` reference points to.
    fn resolve(&self, reference: &str) -> Option<&Value>;
    /// All resources of one type.
    fn resources_of_type(&self, resource_type: &str) -> Vec<&Value>;
}

/// A lookup that knows no resources.
pub struct NoLookup;

impl ResourceLookup for NoLookup {
    fn resolve(&self, _reference: &str) -> Option<&Value> {
        None
    }

    fn resources_of_type(&self, _resource_type: &str) -> Vec<&Value> {
        Vec::new()
    }
}

/// A small in-memory set of resources, indexed by `Type/id`.
pub struct ResourceSet<'v> {
    by_type: HashMap<String, Vec<&'v Value>>,
}

impl<'v> ResourceSet<'v> {
    /// Collects resources; those without `resourceType` are ignored.
    pub fn new(resources: impl IntoIterator<Item = &'v Value>) -> Self {
        let mut by_type: HashMap<String, Vec<&'v Value>> = HashMap::new();
        for resource in resources {
            if let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) {
                by_type.entry(resource_type.to_string()).or_default().push(resource);
            }
        }
        Self { by_type }
    }

    /// The resources of the set that match `query`, in insertion order.
    pub fn search(&self, table: &SearchParamTable, query: &SearchQuery) -> Vec<&'v Value> {
        let context = MatchContext { now_ms: now_ms(), lookup: self };
        self.by_type
            .get(&query.resource_type)
            .into_iter()
            .flatten()
            .copied()
            .filter(|resource| matches_with(table, query, resource, &context))
            .collect()
    }
}

impl ResourceLookup for ResourceSet<'_> {
    fn resolve(&self, reference: &str) -> Option<&Value> {
        let (resource_type, id) = reference.split_once('/')?;
        self.by_type.get(resource_type)?.iter().copied().find(|r| r.get("id").and_then(Value::as_str) == Some(id))
    }

    fn resources_of_type(&self, resource_type: &str) -> Vec<&Value> {
        self.by_type.get(resource_type).cloned().unwrap_or_default()
    }
}

/// What matching needs besides the query and the resource.
pub struct MatchContext<'a> {
    /// "Now" in epoch milliseconds, for the `ap` date prefix.
    pub now_ms: i64,
    /// Other resources, for chains.
    pub lookup: &'a dyn ResourceLookup,
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether `resource` satisfies every filter of `query` (current time, no lookup).
pub fn matches(table: &SearchParamTable, query: &SearchQuery, resource: &Value) -> bool {
    matches_with(table, query, resource, &MatchContext { now_ms: now_ms(), lookup: &NoLookup })
}

/// Whether `resource` satisfies every filter of `query`.
pub fn matches_with(table: &SearchParamTable, query: &SearchQuery, resource: &Value, context: &MatchContext) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some(query.resource_type.as_str())
        && query.filters.iter().all(|f| filter_matches(table, &query.resource_type, f, resource, context))
}

/// Whether `resource` (of `resource_type`) satisfies one filter.
pub fn filter_matches(table: &SearchParamTable, resource_type: &str, filter: &Filter, resource: &Value, context: &MatchContext) -> bool {
    match filter.chain.as_deref() {
        Some(Chain::Forward { target_types, filter: inner }) => {
            let Some(param) = table.param(resource_type, &filter.param) else {
                return false;
            };
            let targets: BTreeSet<String> = references(table, resource, param)
                .into_iter()
                .filter(|t| reference_type(t).is_some_and(|ty| target_types.iter().any(|w| w == ty)))
                .collect();
            targets.iter().filter_map(|t| context.lookup.resolve(t)).any(|target| {
                let target_type = target.get("resourceType").and_then(Value::as_str).unwrap_or_default();
                filter_matches(table, target_type, inner, target, context)
            })
        }
        Some(Chain::Reverse { source_type, reference_param, filter: inner }) => {
            let Some(id) = resource.get("id").and_then(Value::as_str) else {
                return false;
            };
            let Some(link) = table.param(source_type, reference_param) else {
                return false;
            };
            let me = format!("{resource_type}/{id}");
            context.lookup.resources_of_type(source_type).into_iter().any(|candidate| {
                references(table, candidate, link).contains(&me) && filter_matches(table, source_type, inner, candidate, context)
            })
        }
        None => {
            let Some(param) = table.param(resource_type, &filter.param) else {
                return false;
            };
            let entries = extract_param(table, resource, param);
            direct_filter_matches(param, filter, &entries, context.now_ms)
        }
    }
}

/// Normalised references held by `resource` for a reference parameter.
fn references(table: &SearchParamTable, resource: &Value, param: &SearchParam) -> Vec<String> {
    extract_param(table, resource, param)
        .into_iter()
        .filter(|e| e.param == param.name)
        .filter_map(|e| match e.value {
            IndexValue::Reference { target } => Some(target),
            _ => None,
        })
        .collect()
}

fn direct_filter_matches(param: &SearchParam, filter: &Filter, entries: &[IndexEntry], now_ms: i64) -> bool {
    let composite_prefix = format!("{}$", param.name);
    let primary = || {
        entries
            .iter()
            .filter(|e| e.param == param.name || (param.param_type == ParamType::Composite && e.param.starts_with(&composite_prefix)))
    };
    let auxiliary = |suffix: &str| {
        let name = format!("{}{suffix}", param.name);
        entries.iter().filter(move |e| e.param == name)
    };
    let modifier = filter.modifier.as_ref();
    let any_value = |entry: &IndexEntry| filter.values.iter().any(|v| value_matches(modifier, &entry.value, v, now_ms));
    match modifier {
        Some(Modifier::Missing(missing)) => (primary().next().is_none() && auxiliary(PRESENT_SUFFIX).next().is_none()) == *missing,
        Some(Modifier::Not) => !primary().any(any_value),
        Some(Modifier::Text) => auxiliary(TEXT_SUFFIX).any(any_value),
        Some(Modifier::Identifier) => auxiliary(IDENTIFIER_SUFFIX).any(any_value),
        _ if param.param_type == ParamType::Composite => composite_matches(param, filter, entries, now_ms),
        _ => primary().any(any_value),
    }
}

/// Some group (composite root element) matches all components of some value.
fn composite_matches(param: &SearchParam, filter: &Filter, entries: &[IndexEntry], now_ms: i64) -> bool {
    let keys: Vec<String> = (0..param.components.len()).map(|i| composite_key(&param.name, i)).collect();
    let groups: BTreeSet<u32> = entries.iter().filter(|e| keys.contains(&e.param)).filter_map(|e| e.group).collect();
    groups.into_iter().any(|group| {
        filter.values.iter().any(|value| {
            let FilterValue::Composite(parts) = value else {
                return false;
            };
            parts.iter().zip(&keys).all(|(part, key)| {
                entries.iter().filter(|e| e.group == Some(group) && &e.param == key).any(|e| value_matches(None, &e.value, part, now_ms))
            })
        })
    })
}

/// Whether one indexed value matches one search value.
pub fn value_matches(modifier: Option<&Modifier>, indexed: &IndexValue, wanted: &FilterValue, now_ms: i64) -> bool {
    match (indexed, wanted) {
        (IndexValue::Token { system, code }, FilterValue::Token { system: wanted_system, code: wanted_code }) => {
            let system_ok = match wanted_system {
                TokenSystem::Any => true,
                TokenSystem::None => system.is_none(),
                TokenSystem::Some(s) => system.as_deref() == Some(s.as_str()),
            };
            system_ok && wanted_code.as_ref().is_none_or(|c| c == code)
        }
        (IndexValue::Text { normalized, exact }, FilterValue::String(text)) => match modifier {
            Some(Modifier::Exact) => exact == text,
            Some(Modifier::Contains) => normalized.contains(&normalize_text(text)),
            _ => normalized.starts_with(&normalize_text(text)),
        },
        (IndexValue::Token { code, .. }, FilterValue::Uri(uri)) => match modifier {
            Some(Modifier::Below) => code.starts_with(uri.as_str()),
            Some(Modifier::Above) => uri.starts_with(code.as_str()),
            _ => code == uri,
        },
        (IndexValue::Date { start_ms, end_ms }, FilterValue::Date { prefix, start_ms: s, end_ms: e }) => {
            let target = DateRange { start_ms: *start_ms, end_ms: *end_ms };
            date_matches(*prefix, DateRange { start_ms: *s, end_ms: *e }, target, now_ms)
        }
        (IndexValue::Reference { target }, FilterValue::Reference { target: wanted }) => {
            target == wanted
                || (!wanted.contains('/') && reference_type(target).is_some() && target.rsplit('/').next() == Some(wanted.as_str()))
        }
        (IndexValue::Number { value_f64, .. }, FilterValue::Number { prefix, value, value_text }) => {
            number_matches(*prefix, *value, value_text, *value_f64)
        }
        (
            IndexValue::Quantity { value_f64, system, code, unit, .. },
            FilterValue::Quantity { prefix, value, value_text, system: wanted_system, code: wanted_code },
        ) => {
            let system_ok = wanted_system.as_ref().is_none_or(|s| system.as_ref() == Some(s));
            let code_ok =
                wanted_code.as_ref().is_none_or(|c| code.as_ref() == Some(c) || (wanted_system.is_none() && unit.as_ref() == Some(c)));
            system_ok && code_ok && number_matches(*prefix, *value, value_text, *value_f64)
        }
        _ => false,
    }
}

/// FHIR date prefix semantics on ranges (see the module documentation).
pub fn date_matches(prefix: Prefix, search: DateRange, target: DateRange, now_ms: i64) -> bool {
    match prefix {
        Prefix::Eq => search.contains(&target),
        Prefix::Ne => !search.contains(&target),
        Prefix::Gt => target.end_ms > search.end_ms,
        Prefix::Lt => target.start_ms < search.start_ms,
        Prefix::Ge => target.end_ms > search.end_ms || search.contains(&target),
        Prefix::Le => target.start_ms < search.start_ms || search.contains(&target),
        Prefix::Sa => target.start_ms > search.end_ms,
        Prefix::Eb => target.end_ms < search.start_ms,
        Prefix::Ap => {
            let gap = |t: i64| (i128::from(now_ms) - i128::from(t)).abs();
            let margin = gap(search.start_ms).max(gap(search.end_ms)) / 10;
            let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
            let widened =
                DateRange { start_ms: clamp(i128::from(search.start_ms) - margin), end_ms: clamp(i128::from(search.end_ms) + margin) };
            widened.overlaps(&target)
        }
    }
}

/// Number prefix semantics (see the module documentation).
pub fn number_matches(prefix: Prefix, wanted: f64, wanted_text: &str, actual: f64) -> bool {
    let half = implicit_precision(wanted_text);
    let in_precision = wanted - half <= actual && actual < wanted + half;
    match prefix {
        Prefix::Eq => in_precision,
        Prefix::Ne => !in_precision,
        Prefix::Gt | Prefix::Sa => actual > wanted,
        Prefix::Lt | Prefix::Eb => actual < wanted,
        Prefix::Ge => actual >= wanted,
        Prefix::Le => actual <= wanted,
        Prefix::Ap => (actual - wanted).abs() <= (wanted.abs() * 0.1).max(half),
    }
}

/// Half a unit of the last significant digit of a decimal text:
/// `5.4` → 0.05, `100` → 0.5, `1e2` → 50.
fn implicit_precision(text: &str) -> f64 {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, fraction)| fraction.len());
    let decimals = i32::try_from(decimals).unwrap_or(i32::MAX);
    0.5 * 10f64.powi(exponent.saturating_sub(decimals))
}
