//! Index terms and the conditions on them: the small query language between FHIR search
//! semantics and tantivy. Pure; [`super::index`] turns a [`TermCondition`] into a tantivy query.
//!
//! **No readable PHI in the index.** Every token, string and reference value becomes a keyed
//! hash (HMAC-SHA-256 under a key derived from the ledger secret, truncated to 96 bits):
//! strings as their normalised prefixes (up to [`MAX_PREFIX`] characters; a longer search selects
//! by its first [`MAX_PREFIX`] and the matcher decides), their exact form and
//! their trigrams (for `:contains`). Only dates, quantities and numbers are stored as
//! order-preserving values, because range queries need the order.
//!
//! **Conditions are supersets.** A condition selects at least every resource the matcher would
//! accept (it may select more: prefixes beyond [`MAX_PREFIX`], `:not`, `ne`, `ap`, multi-valued
//! dates, composites); the search then confirms every candidate with the matcher on the sealed
//! resource. Term layout: `{param}|{kind}|{value}`, one field for all.

use std::collections::HashMap;
use std::ops::Bound;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::extract::{IndexEntry, IndexValue, PRESENT_SUFFIX};
use super::normalize::normalize_text;
use super::query::{Filter, FilterValue, Modifier, Prefix, TokenSystem};

/// Normalised string prefixes indexed (longer searches select by this prefix, then the matcher).
pub const MAX_PREFIX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermCondition {
    /// Every document (of the searched type).
    Everything,
    /// Documents holding this term.
    Term(String),
    /// Documents holding a term in this lexicographic range.
    Range {
        lower: Bound<String>,
        upper: Bound<String>,
    },
    All(Vec<TermCondition>),
    Any(Vec<TermCondition>),
    Not(Box<TermCondition>),
}

impl TermCondition {
    /// Terms starting with `prefix`.
    pub fn prefix(prefix: &str) -> TermCondition {
        TermCondition::Range { lower: Bound::Included(prefix.to_string()), upper: Bound::Excluded(format!("{prefix}\u{10ffff}")) }
    }
}

/// Appends `bytes` as lowercase hex (lexicographic order of the text = order of the bytes).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
}

fn sortable_u64(value: u64) -> String {
    let mut out = String::with_capacity(16);
    push_hex(&mut out, &value.to_be_bytes());
    out
}

/// Order-preserving text for an `i64` (dates in ms).
fn sortable_i64(value: i64) -> String {
    sortable_u64((value as u64) ^ (1 << 63))
}

/// Order-preserving text for an `f64` (IEEE 754 total order for finite values).
fn sortable_f64(value: f64) -> String {
    let bits = value.to_bits();
    sortable_u64(if bits >> 63 == 1 { !bits } else { bits | (1 << 63) })
}

/// The bytes a value's keyed hash covers: each part followed by a 0 byte.
fn value_bytes(parts: &[&str]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(parts.iter().map(|part| part.len() + 1).sum());
    for part in parts {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// `{param}|{kind}|{value}`: the layout of every term.
fn layout(param: &str, kind: &str, value: &str) -> String {
    let mut term = String::with_capacity(param.len() + kind.len() + value.len() + 2);
    term.push_str(param);
    term.push('|');
    term.push_str(kind);
    term.push('|');
    term.push_str(value);
    term
}

/// Turns index values into terms and filters into conditions, under one hashing key.
pub struct TermEncoder {
    /// HMAC keyed once; each term clones this state instead of re-keying (a document has
    /// hundreds of terms).
    keyed: Hmac<Sha256>,
}

impl TermEncoder {
    pub fn new(key: [u8; 32]) -> TermEncoder {
        TermEncoder { keyed: <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("any key length") }
    }

    /// The keyed hash of a value: its parts, each followed by a 0 byte. It does not depend on
    /// the parameter (the term names that in clear), so one document hashes each value once.
    fn hash(&self, value: &[u8]) -> [u8; 12] {
        let mut mac = self.keyed.clone();
        mac.update(value);
        let mut hash = [0; 12];
        hash.copy_from_slice(&mac.finalize().into_bytes()[..12]);
        hash
    }

    fn hashed_term(param: &str, kind: &str, hash: &[u8; 12]) -> String {
        let mut term = layout(param, kind, "");
        term.reserve(2 * hash.len());
        push_hex(&mut term, hash);
        term
    }

    fn term(&self, param: &str, kind: &str, parts: &[&str]) -> String {
        Self::hashed_term(param, kind, &self.hash(&value_bytes(parts)))
    }

    fn presence(param: &str) -> String {
        let mut term = String::with_capacity(param.len() + 2);
        term.push_str(param);
        term.push_str("|?");
        term
    }

    fn prefixes(normalized: &str) -> impl Iterator<Item = &str> {
        normalized.char_indices().skip(1).map(|(end, _)| &normalized[..end]).chain(std::iter::once(normalized)).take(MAX_PREFIX)
    }

    fn trigrams(normalized: &str) -> impl Iterator<Item = &str> {
        let starts: Vec<usize> = normalized.char_indices().map(|(start, _)| start).chain(std::iter::once(normalized.len())).collect();
        (0..starts.len().saturating_sub(3)).map(move |first| &normalized[starts[first]..starts[first + 3]])
    }

    /// Every term of a resource's index entries (a term may repeat; the index ignores repeats).
    pub fn document_terms(&self, entries: &[IndexEntry]) -> Vec<String> {
        let mut terms = Vec::with_capacity(8 * entries.len());
        // Names, phonetic, given, family… index the same strings: hash each value once.
        let mut hashes: HashMap<Vec<u8>, [u8; 12]> = HashMap::new();
        let mut term = |param: &str, kind: &str, parts: &[&str]| {
            let hash = hashes.entry(value_bytes(parts)).or_insert_with_key(|value| self.hash(value));
            Self::hashed_term(param, kind, hash)
        };
        for entry in entries {
            if let Some(base) = entry.param.strip_suffix(PRESENT_SUFFIX) {
                terms.push(Self::presence(base));
                continue;
            }
            let param = entry.param.as_str();
            terms.push(Self::presence(param));
            match &entry.value {
                IndexValue::Token { system, code } => {
                    let system = system.as_deref().unwrap_or("");
                    terms.push(term(param, "t", &[system, code]));
                    terms.push(term(param, "ta", &[code]));
                    terms.push(term(param, "ts", &[system]));
                }
                IndexValue::Text { normalized, exact } => {
                    terms.extend(Self::prefixes(normalized).map(|prefix| term(param, "sp", &[prefix])));
                    terms.push(term(param, "sx", &[exact]));
                    terms.extend(Self::trigrams(normalized).map(|trigram| term(param, "sg", &[trigram])));
                }
                IndexValue::Reference { target } => {
                    terms.push(term(param, "r", &[target]));
                    let id = target.rsplit('/').next().unwrap_or(target);
                    terms.push(term(param, "ri", &[id]));
                }
                IndexValue::Date { start_ms, end_ms } => {
                    terms.push(layout(param, "ds", &sortable_i64(*start_ms)));
                    terms.push(layout(param, "de", &sortable_i64(*end_ms)));
                }
                IndexValue::Quantity { value_f64, system, code, .. } => {
                    terms.push(layout(param, "q", &sortable_f64(*value_f64)));
                    if let Some(code) = code {
                        terms.push(term(param, "qc", &[code]));
                        terms.push(term(param, "qu", &[system.as_deref().unwrap_or(""), code]));
                    }
                }
                IndexValue::Number { value_f64, .. } => terms.push(layout(param, "n", &sortable_f64(*value_f64))),
            }
        }
        terms
    }

    fn range(param: &str, kind: &str, lower: Bound<String>, upper: Bound<String>) -> TermCondition {
        let prefix = format!("{param}|{kind}|");
        let with_prefix = |bound: Bound<String>| match bound {
            Bound::Included(value) => Bound::Included(format!("{prefix}{value}")),
            Bound::Excluded(value) => Bound::Excluded(format!("{prefix}{value}")),
            Bound::Unbounded => Bound::Unbounded,
        };
        let lower = match with_prefix(lower) {
            Bound::Unbounded => Bound::Included(prefix.clone()),
            bound => bound,
        };
        let upper = match with_prefix(upper) {
            Bound::Unbounded => Bound::Excluded(format!("{prefix}\u{10ffff}")),
            bound => bound,
        };
        TermCondition::Range { lower, upper }
    }

    fn date_condition(param: &str, prefix: Prefix, start_ms: i64, end_ms: i64) -> TermCondition {
        use Bound::{Excluded, Included, Unbounded};
        let (start, end) = (sortable_i64(start_ms), sortable_i64(end_ms));
        match prefix {
            Prefix::Eq => TermCondition::All(vec![
                Self::range(param, "ds", Included(start), Unbounded),
                Self::range(param, "de", Unbounded, Included(end)),
            ]),
            Prefix::Gt => Self::range(param, "de", Excluded(end), Unbounded),
            Prefix::Lt => Self::range(param, "ds", Unbounded, Excluded(start)),
            Prefix::Ge => Self::range(param, "de", Included(start), Unbounded),
            Prefix::Le => Self::range(param, "ds", Unbounded, Included(end)),
            Prefix::Sa => Self::range(param, "ds", Excluded(end), Unbounded),
            Prefix::Eb => Self::range(param, "de", Unbounded, Excluded(start)),
            Prefix::Ne | Prefix::Ap => TermCondition::Term(Self::presence(param)),
        }
    }

    fn number_condition(param: &str, kind: &str, prefix: Prefix, value: f64) -> TermCondition {
        use Bound::{Included, Unbounded};
        // Wide enough for any implicit precision or `ap` margin; the matcher decides exactly.
        let margin = (value.abs() * 0.1).max(1.0);
        match prefix {
            Prefix::Eq | Prefix::Ap => {
                Self::range(param, kind, Included(sortable_f64(value - margin)), Included(sortable_f64(value + margin)))
            }
            Prefix::Gt | Prefix::Ge | Prefix::Sa => Self::range(param, kind, Included(sortable_f64(value - margin)), Unbounded),
            Prefix::Lt | Prefix::Le | Prefix::Eb => Self::range(param, kind, Unbounded, Included(sortable_f64(value + margin))),
            Prefix::Ne => TermCondition::Term(Self::presence(param)),
        }
    }

    fn string_condition(&self, param: &str, value: &str, modifier: Option<&Modifier>) -> TermCondition {
        match modifier {
            Some(Modifier::Exact) => TermCondition::Term(self.term(param, "sx", &[value])),
            Some(Modifier::Contains) => {
                let normalized = normalize_text(value);
                let trigrams: Vec<TermCondition> =
                    Self::trigrams(&normalized).map(|trigram| TermCondition::Term(self.term(param, "sg", &[trigram]))).collect();
                if trigrams.is_empty() { TermCondition::Term(Self::presence(param)) } else { TermCondition::All(trigrams) }
            }
            _ => {
                let normalized = normalize_text(value);
                match normalized.char_indices().nth(MAX_PREFIX) {
                    None if normalized.is_empty() => TermCondition::Term(Self::presence(param)),
                    None => TermCondition::Term(self.term(param, "sp", &[&normalized])),
                    Some((end, _)) => TermCondition::Term(self.term(param, "sp", &[&normalized[..end]])),
                }
            }
        }
    }

    fn value_condition(&self, param: &str, modifier: Option<&Modifier>, value: &FilterValue) -> TermCondition {
        match value {
            FilterValue::Token { system, code } => match (system, code) {
                (TokenSystem::Any, Some(code)) => TermCondition::Term(self.term(param, "ta", &[code])),
                (TokenSystem::None, Some(code)) => TermCondition::Term(self.term(param, "t", &["", code])),
                (TokenSystem::Some(system), Some(code)) => TermCondition::Term(self.term(param, "t", &[system, code])),
                (TokenSystem::Some(system), None) => TermCondition::Term(self.term(param, "ts", &[system])),
                (_, None) => TermCondition::Term(Self::presence(param)),
            },
            FilterValue::String(text) => self.string_condition(param, text, modifier),
            FilterValue::Uri(uri) => TermCondition::Term(self.term(param, "ta", &[uri])),
            FilterValue::Date { prefix, start_ms, end_ms } => Self::date_condition(param, *prefix, *start_ms, *end_ms),
            FilterValue::Reference { target } if target.contains('/') => TermCondition::Term(self.term(param, "r", &[target])),
            FilterValue::Reference { target } => TermCondition::Term(self.term(param, "ri", &[target])),
            FilterValue::Quantity { prefix, value, system, code, .. } => {
                let mut conditions = vec![Self::number_condition(param, "q", *prefix, *value)];
                if let Some(code) = code {
                    conditions.push(match system {
                        Some(system) => TermCondition::Term(self.term(param, "qu", &[system, code])),
                        None => TermCondition::Term(self.term(param, "qc", &[code])),
                    });
                }
                TermCondition::All(conditions)
            }
            FilterValue::Number { prefix, value, .. } => Self::number_condition(param, "n", *prefix, *value),
            FilterValue::Composite(components) => TermCondition::All(
                components
                    .iter()
                    .enumerate()
                    .map(|(position, component)| self.value_condition(&format!("{param}${position}"), None, component))
                    .collect(),
            ),
        }
    }

    /// A superset condition for one filter (OR across its values).
    pub fn filter_condition(&self, filter: &Filter) -> TermCondition {
        if filter.chain.is_some() {
            return TermCondition::Everything;
        }
        let param = filter.param.as_str();
        match &filter.modifier {
            Some(Modifier::Missing(true)) => TermCondition::Not(Box::new(TermCondition::Term(Self::presence(param)))),
            Some(Modifier::Missing(false)) => TermCondition::Term(Self::presence(param)),
            Some(Modifier::Not) => TermCondition::Everything,
            Some(Modifier::Text) => TermCondition::Any(
                filter
                    .values
                    .iter()
                    .map(|value| match value {
                        FilterValue::String(text) | FilterValue::Uri(text) => self.string_condition(&format!("{param}:text"), text, None),
                        _ => TermCondition::Everything,
                    })
                    .collect(),
            ),
            Some(Modifier::Identifier) => TermCondition::Any(
                filter.values.iter().map(|value| self.value_condition(&format!("{param}:identifier"), None, value)).collect(),
            ),
            modifier => {
                TermCondition::Any(filter.values.iter().map(|value| self.value_condition(param, modifier.as_ref(), value)).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_encodings_keep_order() {
        let numbers = [-1e300, -2.5, -0.0, 0.0, 1e-9, 37.5, 120.0, 1e300];
        for pair in numbers.windows(2) {
            assert!(sortable_f64(pair[0]) <= sortable_f64(pair[1]), "{pair:?}");
        }
        let dates = [i64::MIN, -2_208_988_800_000, 0, 1_700_000_000_000, i64::MAX];
        for pair in dates.windows(2) {
            assert!(sortable_i64(pair[0]) < sortable_i64(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn strings_become_keyed_hashes_of_prefixes() {
        let encoder = TermEncoder::new([1u8; 32]);
        let entries = [IndexEntry {
            param: "family".into(),
            value: IndexValue::Text { normalized: "chalmers".into(), exact: "Chalmers".into() },
            group: None,
        }];
        let terms = encoder.document_terms(&entries);
        assert!(terms.iter().all(|term| !term.to_lowercase().contains("chalm")), "no readable text: {terms:?}");
        assert!(terms.contains(&encoder.term("family", "sp", &["cha"])));
        assert!(terms.contains(&encoder.term("family", "sp", &["chalmers"])), "8 characters: the longest prefix indexed");
        assert!(terms.contains(&encoder.term("family", "sx", &["Chalmers"])));
        assert!(terms.contains(&"family|?".to_string()));
        // Another key gives other terms.
        assert_ne!(TermEncoder::new([2u8; 32]).document_terms(&entries), terms);
    }
}
