//! Parsing of FHIR search requests into a typed [`SearchQuery`].
//!
//! Input is the decoded list of `name=value` pairs of a search (URL query or
//! form body). Semantics follow FHIR R4 `search.html`:
//!
//! * repeated parameters are ANDed ([`SearchQuery::filters`]), comma-separated
//!   values of one parameter are ORed ([`Filter::values`]);
//! * `\,` `\$` `\|` `\\` escape the separators inside a value;
//! * a parameter with an empty value is ignored;
//! * result parameters: `_count`, `_sort`, `_summary`, `_elements`, `_total`,
//!   `_include`/`_revinclude` (with `:iterate`, and the R3 alias `:recurse`);
//!   `_format` and `_pretty` are ignored. When a result parameter is repeated
//!   the last occurrence wins (`_include`, `_revinclude` and `_elements` accumulate);
//! * chains (`subject:Patient.name=peter`, `patient.organization.name=x`) and
//!   reverse chains (`_has:Observation:patient:code=1234-5`) are parsed into
//!   [`Filter::chain`] (nesting limited to [`MAX_CHAIN_DEPTH`]).
//!
//! Unknown parameters, parameters the table marks unsupported and unsupported
//! modifiers give [`QueryError::Unsupported`], or are collected in
//! [`SearchQuery::unknown`] when `lenient` (FHIR's `Prefer: handling=lenient`).
//! Malformed values always give [`QueryError::Invalid`].

use std::fmt;

use crate::search::datetime::parse_date_range;
use crate::search::reference::normalize_reference;
use crate::search::search_params::{ParamType, SearchParam, SearchParamTable};

/// Maximum number of chain / `_has` links in one parameter name.
pub const MAX_CHAIN_DEPTH: usize = 3;

/// A parsed search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub resource_type: String,
    /// All must match (AND).
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    /// `_count` as requested; the caller applies its own cap.
    pub count: Option<usize>,
    pub summary: Option<Summary>,
    pub elements: Vec<String>,
    pub total: Option<TotalMode>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// Parameters ignored because `lenient` was set (names as received, e.g. `foo`, `code:below`).
    pub unknown: Vec<String>,
}

/// One search criterion: a parameter, an optional modifier, and OR-ed values.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Parameter code (`code`, `birthdate`), or `_has` for a reverse chain.
    pub param: String,
    pub param_type: ParamType,
    pub modifier: Option<Modifier>,
    /// Any may match (OR). Empty for `:missing` and for chains (the values
    /// are on the innermost filter of the chain).
    pub values: Vec<FilterValue>,
    pub chain: Option<Box<Chain>>,
}

impl Filter {
    /// `_id` is one of `ids`; with none, the filter matches nothing.
    pub fn ids(ids: Vec<String>) -> Filter {
        let values = ids.into_iter().map(|id| FilterValue::Token { system: TokenSystem::Any, code: Some(id) }).collect();
        Filter { param: "_id".into(), param_type: ParamType::Token, modifier: None, values, chain: None }
    }

    /// Reference parameter `param` points at one of `targets` (`Type/id`); with none, the
    /// filter matches nothing.
    pub fn references(param: &str, targets: Vec<String>) -> Filter {
        let values = targets.into_iter().map(|target| FilterValue::Reference { target }).collect();
        Filter { param: param.into(), param_type: ParamType::Reference, modifier: None, values, chain: None }
    }
}

/// A chained (`subject:Patient.name`) or reverse-chained (`_has:…`) criterion.
#[derive(Debug, Clone, PartialEq)]
pub enum Chain {
    /// The resources referenced through [`Filter::param`] (limited to
    /// `target_types`) must match `filter`.
    Forward { target_types: Vec<String>, filter: Filter },
    /// Some `source_type` resource must reference this one through
    /// `reference_param` and match `filter`.
    Reverse { source_type: String, reference_param: String, filter: Filter },
}

/// Search modifiers supported per parameter type:
/// string `:exact` `:contains`; token `:not` `:text`; uri `:above` `:below`;
/// reference `:[Type]` `:identifier`; all types `:missing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Exact,
    Contains,
    Not,
    Missing(bool),
    Text,
    Above,
    Below,
    Identifier,
    Type(String),
}

/// The system part of a token search value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSystem {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    None,
    /// `system|code` or `system|`.
    Some(String),
}

/// A single (OR-ed) search value, typed by the parameter type.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    /// `code`, `system|code`, `|code`, `system|` (then `code` is `None`).
    Token {
        system: TokenSystem,
        code: Option<String>,
    },
    /// string parameters, and token `:text`.
    String(String),
    /// uri parameters.
    Uri(String),
    /// The inclusive range the (possibly partial) date covers, UTC.
    Date {
        prefix: Prefix,
        start_ms: i64,
        end_ms: i64,
    },
    /// `Type/id`, an id alone (when the parameter has several target types),
    /// or an absolute URL that does not end in `Type/id`.
    Reference {
        target: String,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        value_text: String,
        system: Option<String>,
        code: Option<String>,
    },
    Number {
        prefix: Prefix,
        value: f64,
        value_text: String,
    },
    /// `$`-separated component values, in component order.
    Composite(Vec<FilterValue>),
}

/// Comparison prefix of date, number and quantity values (default `Eq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Sa,
    Eb,
    Ap,
}

/// `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub param: String,
    pub param_type: ParamType,
    pub descending: bool,
}

/// `_summary` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    Count,
    True,
    Data,
    Text,
    False,
}

/// `_total` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    None,
    Estimate,
    Accurate,
}

/// `_include` / `_revinclude` value: `Type:param[:targetType]`, `Type:*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The resource type holding the reference; `None` for `*`.
    pub source_type: Option<String>,
    /// The reference parameter; `None` for a wildcard.
    pub param: Option<String>,
    pub target_type: Option<String>,
    /// `:iterate` (or `:recurse`).
    pub iterate: bool,
}

/// Why a search request cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// Unknown / unsupported parameter or modifier (the name as received).
    Unsupported(String),
    /// A value that does not parse.
    Invalid { param: String, reason: String },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Unsupported(name) => write!(f, "unsupported search parameter: {name}"),
            QueryError::Invalid { param, reason } => {
                write!(f, "invalid value for {param}: {reason}")
            }
        }
    }
}

impl std::error::Error for QueryError {}

fn invalid(param: &str, reason: impl Into<String>) -> QueryError {
    QueryError::Invalid { param: param.to_string(), reason: reason.into() }
}

/// Parses a search on `resource_type` (see the module documentation).
///
/// # Errors
///
/// [`QueryError::Unsupported`] for an unknown resource type, or (unless
/// `lenient`) an unknown / unsupported parameter or modifier;
/// [`QueryError::Invalid`] for a malformed value.
pub fn parse_query(
    table: &SearchParamTable,
    resource_type: &str,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<SearchQuery, QueryError> {
    if !table.is_resource_type(resource_type) {
        return Err(QueryError::Unsupported(resource_type.to_string()));
    }
    let mut query = SearchQuery {
        resource_type: resource_type.to_string(),
        filters: Vec::new(),
        sort: Vec::new(),
        count: None,
        summary: None,
        elements: Vec::new(),
        total: None,
        includes: Vec::new(),
        revincludes: Vec::new(),
        unknown: Vec::new(),
    };
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        let outcome = parse_pair(table, &mut query, name, value);
        match outcome {
            Err(QueryError::Unsupported(what)) if lenient => query.unknown.push(what),
            other => other?,
        }
    }
    Ok(query)
}

fn parse_pair(table: &SearchParamTable, query: &mut SearchQuery, name: &str, value: &str) -> Result<(), QueryError> {
    let (base, modifier) = match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    };
    match (base, modifier) {
        ("_format" | "_pretty", None) => {}
        ("_count", None) => {
            let count = value.trim().parse().map_err(|_| invalid(name, "expected a non-negative integer"))?;
            query.count = Some(count);
        }
        ("_sort", None) => query.sort = parse_sort(table, &query.resource_type, value)?,
        ("_summary", None) => {
            query.summary = Some(match value {
                "true" => Summary::True,
                "false" => Summary::False,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "count" => Summary::Count,
                _ => return Err(invalid(name, "expected true, false, text, data or count")),
            });
        }
        ("_elements", None) => {
            query.elements.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string));
        }
        ("_total", None) => {
            query.total = Some(match value {
                "none" => TotalMode::None,
                "estimate" => TotalMode::Estimate,
                "accurate" => TotalMode::Accurate,
                _ => return Err(invalid(name, "expected none, estimate or accurate")),
            });
        }
        ("_include" | "_revinclude", modifier) => {
            let iterate = match modifier {
                None => false,
                Some("iterate" | "recurse") => true,
                Some(_) => return Err(QueryError::Unsupported(name.to_string())),
            };
            let include = parse_include(table, name, value, iterate)?;
            if base == "_include" {
                query.includes.push(include);
            } else {
                query.revincludes.push(include);
            }
        }
        _ => {
            let filter = parse_filter(table, &query.resource_type, name, value, 0)?;
            query.filters.push(filter);
        }
    }
    Ok(())
}

fn parse_sort(table: &SearchParamTable, resource_type: &str, value: &str) -> Result<Vec<SortKey>, QueryError> {
    let mut keys = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (descending, name) = match item.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let param = table
            .param(resource_type, name)
            .filter(|p| p.is_supported())
            .ok_or_else(|| QueryError::Unsupported(format!("_sort={name}")))?;
        match param.param_type {
            ParamType::Date | ParamType::String | ParamType::Token | ParamType::Number | ParamType::Quantity | ParamType::Uri => {}
            _ => return Err(QueryError::Unsupported(format!("_sort={name}"))),
        }
        keys.push(SortKey { param: param.name.clone(), param_type: param.param_type, descending });
    }
    Ok(keys)
}

fn parse_include(table: &SearchParamTable, name: &str, value: &str, iterate: bool) -> Result<Include, QueryError> {
    if value == "*" {
        return Ok(Include { source_type: None, param: None, target_type: None, iterate });
    }
    let parts: Vec<&str> = value.split(':').collect();
    let (source_type, param_name, target_type) = match parts.as_slice() {
        [source, param] => (*source, *param, None),
        [source, param, target] => (*source, *param, Some(*target)),
        _ => return Err(invalid(name, "expected Type:param[:targetType] or *")),
    };
    if !table.is_resource_type(source_type) {
        return Err(invalid(name, format!("unknown resource type {source_type}")));
    }
    let param = if param_name == "*" {
        None
    } else {
        let param = table
            .param(source_type, param_name)
            .filter(|p| p.param_type == ParamType::Reference && p.is_supported())
            .ok_or_else(|| QueryError::Unsupported(format!("{name}={value}")))?;
        if let Some(target) = target_type
            && !param.targets.iter().any(|t| t == target)
        {
            return Err(invalid(name, format!("{target} is not a target of {source_type}:{param_name}")));
        }
        Some(param.name.clone())
    };
    Ok(Include { source_type: Some(source_type.to_string()), param, target_type: target_type.map(str::to_string), iterate })
}

/// Parses one search criterion `name=value` on `resource_type`; `name` may
/// carry a modifier, a chain or a `_has` prefix.
///
/// # Errors
///
/// As [`parse_query`] (strict): unknown parameters are errors here.
pub fn parse_filter(table: &SearchParamTable, resource_type: &str, name: &str, value: &str, depth: usize) -> Result<Filter, QueryError> {
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_reverse_chain(table, resource_type, name, rest, value, depth);
    }
    if let Some((head, tail)) = name.split_once('.') {
        return parse_forward_chain(table, resource_type, name, head, tail, value, depth);
    }
    let (code, modifier_text) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let param = supported_param(table, resource_type, code, name)?;
    let modifier = modifier_text.map(|m| parse_modifier(table, param, name, m, value)).transpose()?;
    let values = match modifier {
        Some(Modifier::Missing(_)) => Vec::new(),
        _ => parse_values(table, param, modifier.as_ref(), name, value)?,
    };
    Ok(Filter { param: param.name.clone(), param_type: param.param_type, modifier, values, chain: None })
}

fn supported_param<'t>(table: &'t SearchParamTable, resource_type: &str, code: &str, name: &str) -> Result<&'t SearchParam, QueryError> {
    table.param(resource_type, code).filter(|p| p.is_supported()).ok_or_else(|| QueryError::Unsupported(name.to_string()))
}

/// `_has:Type:refParam:rest` where `rest` is a parameter name (possibly chained again).
fn parse_reverse_chain(
    table: &SearchParamTable,
    resource_type: &str,
    name: &str,
    rest: &str,
    value: &str,
    depth: usize,
) -> Result<Filter, QueryError> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(invalid(name, format!("chained and _has parameters have at most {MAX_CHAIN_DEPTH} links")));
    }
    let mut parts = rest.splitn(3, ':');
    let (Some(source_type), Some(reference_param), Some(inner_name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(name, "expected _has:Type:reference:parameter"));
    };
    if !table.is_resource_type(source_type) {
        return Err(invalid(name, format!("unknown resource type {source_type}")));
    }
    let link = supported_param(table, source_type, reference_param, name)?;
    if link.param_type != ParamType::Reference || !link.targets.iter().any(|t| t == resource_type) {
        return Err(invalid(name, format!("{source_type}:{reference_param} does not reference {resource_type}")));
    }
    let filter = parse_filter(table, source_type, inner_name, value, depth + 1)?;
    Ok(Filter {
        param: "_has".to_string(),
        param_type: ParamType::Reference,
        modifier: None,
        values: Vec::new(),
        chain: Some(Box::new(Chain::Reverse { source_type: source_type.to_string(), reference_param: link.name.clone(), filter })),
    })
}

/// `param[:Type].rest`: the referenced resources must match `rest=value`.
fn parse_forward_chain(
    table: &SearchParamTable,
    resource_type: &str,
    name: &str,
    head: &str,
    tail: &str,
    value: &str,
    depth: usize,
) -> Result<Filter, QueryError> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(invalid(name, format!("chained and _has parameters have at most {MAX_CHAIN_DEPTH} links")));
    }
    let (code, explicit_type) = match head.split_once(':') {
        Some((code, target)) => (code, Some(target)),
        None => (head, None),
    };
    let param = supported_param(table, resource_type, code, name)?;
    if param.param_type != ParamType::Reference {
        return Err(invalid(name, format!("{code} is not a reference parameter and cannot be chained")));
    }
    // The first parameter code of the rest of the chain, to pick target types.
    let inner_code = tail.split(['.', ':']).next().unwrap_or(tail);
    let target_types: Vec<String> = match explicit_type {
        Some(target) if param.targets.iter().any(|t| t == target) => vec![target.to_string()],
        Some(target) => return Err(invalid(name, format!("{target} is not a target of {code}"))),
        None => param.targets.iter().filter(|t| table.param(t, inner_code).is_some_and(SearchParam::is_supported)).cloned().collect(),
    };
    let Some(first) = target_types.first() else {
        return Err(QueryError::Unsupported(name.to_string()));
    };
    // Parsed against the first candidate type; same-named parameters of the
    // other candidates are evaluated with the same (typed) values.
    let filter = parse_filter(table, first, tail, value, depth + 1)?;
    Ok(Filter {
        param: param.name.clone(),
        param_type: ParamType::Reference,
        modifier: explicit_type.map(|t| Modifier::Type(t.to_string())),
        values: Vec::new(),
        chain: Some(Box::new(Chain::Forward { target_types, filter })),
    })
}

fn parse_modifier(table: &SearchParamTable, param: &SearchParam, name: &str, modifier: &str, value: &str) -> Result<Modifier, QueryError> {
    use ParamType as T;
    let parsed = match (param.param_type, modifier) {
        (_, "missing") => match value {
            "true" => Modifier::Missing(true),
            "false" => Modifier::Missing(false),
            _ => return Err(invalid(name, "expected true or false")),
        },
        (T::String, "exact") => Modifier::Exact,
        (T::String, "contains") => Modifier::Contains,
        (T::Token, "not") => Modifier::Not,
        (T::Token, "text") => Modifier::Text,
        (T::Uri, "above") => Modifier::Above,
        (T::Uri, "below") => Modifier::Below,
        (T::Reference, "identifier") => Modifier::Identifier,
        (T::Reference, target) if table.is_resource_type(target) => {
            if !param.targets.iter().any(|t| t == target) {
                return Err(invalid(name, format!("{target} is not a target of {}", param.name)));
            }
            Modifier::Type(target.to_string())
        }
        _ => return Err(QueryError::Unsupported(name.to_string())),
    };
    Ok(parsed)
}

fn parse_values(
    table: &SearchParamTable,
    param: &SearchParam,
    modifier: Option<&Modifier>,
    name: &str,
    value: &str,
) -> Result<Vec<FilterValue>, QueryError> {
    let mut values = Vec::new();
    for item in split_escaped(value, ',') {
        if item.is_empty() {
            continue;
        }
        let parsed = if param.param_type == ParamType::Composite {
            let parts = split_escaped(item, '$');
            if parts.len() != param.components.len() {
                return Err(invalid(name, format!("expected {} `$`-separated components", param.components.len())));
            }
            let components = param
                .components
                .iter()
                .zip(parts)
                .map(|(component, part)| parse_value(table, component.param_type, &[], None, name, part))
                .collect::<Result<_, _>>()?;
            FilterValue::Composite(components)
        } else {
            parse_value(table, param.param_type, &param.targets, modifier, name, item)?
        };
        values.push(parsed);
    }
    if values.is_empty() {
        return Err(invalid(name, "no value"));
    }
    Ok(values)
}

/// Parses one value (still escaped) of a parameter of type `param_type`.
fn parse_value(
    table: &SearchParamTable,
    param_type: ParamType,
    targets: &[String],
    modifier: Option<&Modifier>,
    name: &str,
    raw: &str,
) -> Result<FilterValue, QueryError> {
    Ok(match (param_type, modifier) {
        (ParamType::String, _) | (ParamType::Token, Some(Modifier::Text)) => FilterValue::String(unescape(raw)),
        (ParamType::Token, _) | (ParamType::Reference, Some(Modifier::Identifier)) => parse_token(name, raw)?,
        (ParamType::Uri, _) => FilterValue::Uri(unescape(raw)),
        (ParamType::Date, _) => {
            let (prefix, rest) = split_prefix(raw);
            let text = unescape(rest);
            // An unencoded `+` of a time-zone offset arrives as a space.
            let range = parse_date_range(&text)
                .or_else(|| parse_date_range(&text.replacen(' ', "+", 1)))
                .ok_or_else(|| invalid(name, format!("bad date {text:?}")))?;
            FilterValue::Date { prefix, start_ms: range.start_ms, end_ms: range.end_ms }
        }
        (ParamType::Number, _) => {
            let (prefix, rest) = split_prefix(raw);
            let text = unescape(rest);
            let value = parse_decimal(&text).ok_or_else(|| invalid(name, format!("bad number {text:?}")))?;
            FilterValue::Number { prefix, value, value_text: text }
        }
        (ParamType::Quantity, _) => parse_quantity(name, raw)?,
        (ParamType::Reference, modifier) => {
            let text = unescape(raw);
            let target = match modifier {
                Some(Modifier::Type(target_type)) if !text.contains('/') => {
                    format!("{target_type}/{text}")
                }
                _ if !text.contains('/') && targets.len() == 1 => format!("{}/{text}", targets[0]),
                _ => normalize_reference(table, &text).ok_or_else(|| invalid(name, "bad reference"))?,
            };
            FilterValue::Reference { target }
        }
        (ParamType::Composite | ParamType::Special, _) => {
            return Err(QueryError::Unsupported(name.to_string()));
        }
    })
}

fn parse_token(name: &str, raw: &str) -> Result<FilterValue, QueryError> {
    let mut parts = split_escaped(raw, '|').into_iter();
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        return Ok(FilterValue::Token { system: TokenSystem::Any, code: Some(unescape(first)) });
    }
    // Only the first unescaped `|` separates; further ones belong to the code.
    let code = unescape(&rest.join("|"));
    let system = if first.is_empty() { TokenSystem::None } else { TokenSystem::Some(unescape(first)) };
    let code = (!code.is_empty()).then_some(code);
    if system == TokenSystem::None && code.is_none() {
        return Err(invalid(name, "`|` without system or code"));
    }
    Ok(FilterValue::Token { system, code })
}

/// `[prefix]number[|system[|code]]`; `number||code` matches code or unit.
fn parse_quantity(name: &str, raw: &str) -> Result<FilterValue, QueryError> {
    let parts = split_escaped(raw, '|');
    if parts.len() > 3 {
        return Err(invalid(name, "expected [prefix]number|system|code"));
    }
    let (prefix, number) = split_prefix(parts[0]);
    let value_text = unescape(number);
    let value = parse_decimal(&value_text).ok_or_else(|| invalid(name, format!("bad number {value_text:?}")))?;
    let optional = |index: usize| parts.get(index).map(|p| unescape(p)).filter(|p| !p.is_empty());
    Ok(FilterValue::Quantity { prefix, value, value_text, system: optional(1), code: optional(2) })
}

/// Splits a leading comparison prefix (`ge2013`, `lt5.4`); defaults to `Eq`.
fn split_prefix(raw: &str) -> (Prefix, &str) {
    let prefix = match raw.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("lt") => Prefix::Lt,
        Some("gt") => Prefix::Gt,
        Some("le") => Prefix::Le,
        Some("ge") => Prefix::Ge,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, raw),
    };
    (prefix, &raw[2..])
}

/// A FHIR decimal: `-?digits[.digits][e[+-]digits]`, finite.
pub fn parse_decimal(text: &str) -> Option<f64> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| all_digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    if !all_digits(integer) || !fraction.is_none_or(all_digits) || !exponent_ok {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Splits at `separator` not preceded by a backslash; escapes are kept.
fn split_escaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            parts.push(&text[start..index]);
            start = index + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Removes search escapes: `\x` becomes `x`; a trailing lone `\` is kept.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next().unwrap_or('\\'));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(split_escaped(r"a\,b,c", ','), vec![r"a\,b", "c"]);
        assert_eq!(unescape(r"a\,b\$c\|d\\e\"), r"a,b$c|d\e\");
        assert_eq!(split_escaped("", ','), vec![""]);
    }

    #[test]
    fn filters_built_as_values_equal_the_parsed_ones() {
        let parsed = |resource_type: &str, name: &str, value: &str| {
            parse_query(SearchParamTable::r4(), resource_type, &[(name.into(), value.into())], false).unwrap().filters.remove(0)
        };
        assert_eq!(Filter::ids(vec!["a".into(), "b-1".into()]), parsed("Patient", "_id", "a,b-1"));
        assert_eq!(
            Filter::references("subject", vec!["Patient/1".into(), "Group/g".into()]),
            parsed("Observation", "subject", "Patient/1,Group/g")
        );
        assert_eq!(Filter::references("patient", vec!["Patient/p".into()]), parsed("Consent", "patient", "Patient/p"));
        assert!(Filter::ids(Vec::new()).values.is_empty(), "no id: nothing can match");
        // Every parameter that puts a resource in a patient's compartment, as the store builds
        // its compartment condition.
        let table = SearchParamTable::r4();
        for resource_type in table.resource_types() {
            for param in table.patient_compartment_params(resource_type) {
                assert_eq!(
                    Filter::references(param, vec!["Patient/p".into()]),
                    parsed(resource_type, param, "Patient/p"),
                    "{resource_type}.{param}"
                );
            }
        }
    }

    #[test]
    fn decimals() {
        for good in ["0", "5.4", "-1", "1e2", "1.5E-3", "+2"] {
            assert!(parse_decimal(good).is_some(), "{good}");
        }
        for bad in ["", ".5", "5.", "1e", "inf", "NaN", "1e999", "0x10", "1,5", "--1"] {
            assert!(parse_decimal(bad).is_none(), "{bad}");
        }
    }
}
