//! Index terms and the conditions on them: the small query language between FHIR search
//! semantics and tantivy. Pure; [`super::index`] turns a [`TermCondition`] into a tantivy query.
//!
//! **No readable PHI in the index.** Every token, string and reference value becomes a keyed
//! hash (SipHash-2-4, a pseudorandom function for short inputs, under 128 bits of a key derived
//! from the ledger secret; 64-bit output):
//! strings as their normalised prefixes (up to [`MAX_PREFIX`] characters; a longer search selects
//! by its first [`MAX_PREFIX`] and the matcher decides), their exact form and
//! their trigrams (for `:contains`; none for addresses, [`SearchParam::trigrams`]); code display
//! texts (`code:text`) only as prefixes of [`TEXT_PREFIXES`] characters; a code without a system
//! only as its code (`|code` selects by that too). Only dates, quantities and numbers are stored as
//! order-preserving values, because range queries need the order.
//!
//! **Conditions are supersets.** A condition selects at least every resource the matcher would
//! accept (it may select more: prefixes beyond [`MAX_PREFIX`], `:not`, `ne`, `eq` and `ap` on
//! dates, composites, a 64-bit hash collision, a parameter served by another's terms); the search
//! confirms the candidates it returns with the matcher on the sealed resource. Most common
//! filters select exactly ([`TermEncoder::selects_exactly`]): then the index alone may count.
//!
//! **Layout** (bytes): `{param} 0x00 {kind}` and then 8 bytes: the keyed hash, or the
//! order-preserving big-endian value of a date or number; a presence term (`kind` `?`) ends after
//! the kind; a date value also gets coarse terms (`D`/`E`, a level byte, its leading bytes: see
//! [`DATE_LEVELS`]). Parameter names hold no 0 byte, so no term of one parameter is a prefix of
//! another's. Fewer, shorter terms are most of the indexing cost (docs/BENCHMARKS.md), so:
//! a parameter with the same element paths as another shares its terms
//! ([`SearchParam::index_as`]: `phonetic` is `name`); one whose paths are the union of others'
//! uses theirs ([`SearchParam::union_of`]: `combo-code` is `code` ∪ `component-code`); a string
//! parameter on parts of another's elements (`family` of `name`) keeps its prefixes but leaves
//! exact and trigram terms to that one ([`SearchParam::covered_by`]), and that one leaves the
//! prefixes of those values to it: a `name` prefix search is the union of `name`'s, `family`'s
//! and `given`'s prefix terms ([`SearchParam::covers`]; Patient-example 173 → 138 terms); code
//! display texts (`code:text`) only get prefixes, all that `:text` searches, and no presence term.

use std::ops::Bound;

use std::hash::Hasher;

use rustc_hash::FxHashSet;
use siphasher::sip::SipHasher24;

use super::extract::{IDENTIFIER_SUFFIX, IndexEntry, IndexValue, PRESENT_SUFFIX, TEXT_SUFFIX, composite_key};
use super::normalize::normalize_text;
use super::query::{Filter, FilterValue, Modifier, Prefix, TokenSystem};
use super::search_params::{ParamType, SearchParam, SearchParamTable};

/// Normalised string prefixes indexed (longer searches select by this prefix, then the matcher).
pub const MAX_PREFIX: usize = 8;

/// Lengths of the normalised prefixes of a code's display text (`code:text`): a `:text` search
/// selects by the longest that fits its value (a shorter one by nothing: every resource of the
/// type) and the matcher decides. Such searches are rare and the texts many (a display per
/// coding): all [`MAX_PREFIX`] prefixes were a quarter of the terms of a Synthea import.
const TEXT_PREFIXES: [usize; 3] = [3, 5, MAX_PREFIX];

/// Bytes of a keyed hash kept in a term: a collision only adds a candidate the matcher drops.
const HASH_BYTES: usize = 8;

/// Values longer than this (in characters) get no trigram terms, only a [`kind::STRING_LONG`]
/// term: a value's trigrams would cost the index writer about 16 bytes per character (a 12 MiB
/// narrative took 190 MiB to index), while a `:contains` search reads and checks the few
/// resources with such long values anyway.
pub const MAX_TRIGRAM_CHARS: usize = 1024;

/// Version of the term layout, recorded with every index commit: an index written with another
/// layout is rebuilt at open. Raise it whenever the terms of a resource change.
pub const LAYOUT_VERSION: u32 = 6;

/// Coarser levels of date terms, as low bytes of the 8-byte value dropped: buckets of 2^24 ms
/// (4.7 hours) and 2^32 ms (50 days). A date range selects whole buckets at the coarsest level
/// that fits and only its ragged ends at finer ones, so a range over years visits hundreds of
/// terms instead of one per distinct instant (the trie ranges of Lucene's numeric fields).
const DATE_LEVELS: [usize; 2] = [3, 4];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermCondition {
    /// Every document (of the searched type).
    Everything,
    /// Documents holding this term.
    Term(Vec<u8>),
    /// Documents holding a term in this byte-wise range.
    Range {
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
    },
    All(Vec<TermCondition>),
    Any(Vec<TermCondition>),
    Not(Box<TermCondition>),
}

/// The byte after the parameter name: what a term says about the parameter.
mod kind {
    pub const PRESENT: u8 = b'?';
    /// Token `system|code`.
    pub const TOKEN: u8 = b't';
    /// Token code in any system.
    pub const TOKEN_CODE: u8 = b'a';
    /// Token system, any code.
    pub const TOKEN_SYSTEM: u8 = b's';
    pub const STRING_PREFIX: u8 = b'p';
    pub const STRING_EXACT: u8 = b'x';
    pub const STRING_TRIGRAM: u8 = b'g';
    /// A value too long for trigram terms ([`super::MAX_TRIGRAM_CHARS`]): `:contains` considers
    /// every resource with one.
    pub const STRING_LONG: u8 = b'l';
    /// Reference `Type/id` or absolute URL.
    pub const REFERENCE: u8 = b'r';
    /// Reference id alone.
    pub const REFERENCE_ID: u8 = b'i';
    pub const DATE_START: u8 = b'd';
    pub const DATE_END: u8 = b'e';
    /// Coarse date terms ([`super::DATE_LEVELS`]): a level byte, then the leading bytes.
    pub const DATE_START_COARSE: u8 = b'D';
    pub const DATE_END_COARSE: u8 = b'E';
    pub const QUANTITY: u8 = b'q';
    /// Quantity unit code in any system.
    pub const QUANTITY_CODE: u8 = b'c';
    /// Quantity `system|code`.
    pub const QUANTITY_UNIT: u8 = b'u';
    pub const NUMBER: u8 = b'n';

    /// The kind of the coarse terms of a date kind.
    pub fn coarse(kind: u8) -> u8 {
        if kind == DATE_START { DATE_START_COARSE } else { DATE_END_COARSE }
    }
}

/// A coarse date term's payload: its level (1, 2, …) and the value's leading bytes.
fn coarse_payload(level: usize, leading: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + leading.len());
    payload.push(level as u8 + 1);
    payload.extend_from_slice(leading);
    payload
}

/// `{param} 0x00 {kind} {payload}`.
fn term(param: &str, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut term = Vec::with_capacity(param.len() + 2 + payload.len());
    term.extend_from_slice(param.as_bytes());
    term.push(0);
    term.push(kind);
    term.extend_from_slice(payload);
    term
}

/// Order-preserving bytes for an `i64` (dates in ms).
fn sortable_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// Order-preserving bytes for an `f64` (IEEE 754 total order for finite values).
fn sortable_f64(value: f64) -> [u8; 8] {
    let bits = value.to_bits();
    (if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }).to_be_bytes()
}

/// The terms of one resource in one buffer (a resource has hundreds: no allocation each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentTerms {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl DocumentTerms {
    fn push(&mut self, param: &str, kind: u8, payload: &[u8]) {
        self.bytes.extend_from_slice(param.as_bytes());
        self.bytes.push(0);
        self.bytes.push(kind);
        self.bytes.extend_from_slice(payload);
        self.ends.push(self.bytes.len());
    }

    /// A date term at every level ([`DATE_LEVELS`]).
    fn push_date(&mut self, param: &str, kind: u8, value: [u8; 8]) {
        self.push(param, kind, &value);
        for (level, dropped) in DATE_LEVELS.iter().enumerate() {
            self.push(param, kind::coarse(kind), &coarse_payload(level, &value[..8 - dropped]));
        }
    }

    /// Terms given whole (tests of the index).
    pub fn from_terms<'a>(terms: impl IntoIterator<Item = &'a [u8]>) -> DocumentTerms {
        let mut document = DocumentTerms::default();
        for term in terms {
            document.bytes.extend_from_slice(term);
            document.ends.push(document.bytes.len());
        }
        document
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(start, end)| &self.bytes[start..end])
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Turns index values into terms and filters into conditions, under one hashing key.
pub struct TermEncoder {
    /// The SipHash key: the first 128 bits of the search key.
    key: [u8; 16],
    table: &'static SearchParamTable,
}

impl TermEncoder {
    pub fn new(search_key: [u8; 32]) -> TermEncoder {
        let mut key = [0; 16];
        key.copy_from_slice(&search_key[..16]);
        TermEncoder { key, table: SearchParamTable::r4() }
    }

    /// The keyed hash of a value: its parts, each followed by a 0 byte. It does not depend on
    /// the parameter (the term names that in clear).
    fn hash(&self, parts: &[&str]) -> [u8; HASH_BYTES] {
        let mut hasher = SipHasher24::new_with_key(&self.key);
        for part in parts {
            hasher.write(part.as_bytes());
            hasher.write_u8(0);
        }
        hasher.finish().to_be_bytes()
    }

    fn hashed(&self, param: &str, kind: u8, parts: &[&str]) -> Vec<u8> {
        term(param, kind, &self.hash(parts))
    }

    fn presence(param: &str) -> Vec<u8> {
        term(param, kind::PRESENT, &[])
    }

    fn prefixes(normalized: &str) -> impl Iterator<Item = &str> {
        normalized.char_indices().skip(1).map(|(end, _)| &normalized[..end]).chain(std::iter::once(normalized)).take(MAX_PREFIX)
    }

    fn trigrams(normalized: &str) -> impl Iterator<Item = &str> {
        let starts: Vec<usize> = normalized.char_indices().map(|(start, _)| start).chain(std::iter::once(normalized.len())).collect();
        (0..starts.len().saturating_sub(3)).map(move |first| &normalized[starts[first]..starts[first + 3]])
    }

    /// The declared parameter behind an index entry or filter name (`code:text`, `code$0` and
    /// `subject:present` name `code`, `code` and `subject`).
    fn declared(&self, resource_type: &str, name: &str) -> Option<&'static SearchParam> {
        self.table.param(resource_type, name.split([':', '$']).next().unwrap_or(name))
    }

    /// For a composite's component entry (`code-value-quantity$0`): the parameters whose terms
    /// serve it ([`super::search_params::Component::index_as`]; empty: its own terms do).
    fn component_index_as<'p>(declared: Option<&'p SearchParam>, name: &str) -> &'p [String] {
        let component = name
            .split_once('$')
            .and_then(|(_, position)| position.parse::<usize>().ok())
            .and_then(|position| declared?.components.get(position));
        component.map(|component| component.index_as.as_slice()).unwrap_or_default()
    }

    /// Every term of a resource's index entries, each keyed-hash term once (the prefixes and
    /// trigrams of a name's text repeat those of its parts, codings repeat systems: a quarter
    /// of a Patient's terms, each costing the index writer as much as a new one).
    /// Order-preserving date and number terms may repeat; the index ignores repeats.
    pub fn document_terms(&self, resource_type: &str, entries: &[IndexEntry]) -> DocumentTerms {
        let mut terms = DocumentTerms { bytes: Vec::with_capacity(256 * entries.len()), ends: Vec::with_capacity(8 * entries.len()) };
        let mut present: Vec<&str> = Vec::new();
        // Hashed terms so far, by parameter (its position in `params`), kind and hash.
        let mut params: Vec<&str> = Vec::new();
        let mut seen: FxHashSet<(usize, u8, [u8; HASH_BYTES])> = FxHashSet::with_capacity_and_hasher(8 * entries.len(), Default::default());
        // Each entry's declared parameter and number, looked up once per run of entries of one
        // parameter (consecutive entries mostly share it); and the values of parameters on parts
        // of another's elements (`family`, `given` of `name`) by the covering parameter, which
        // leaves their prefix terms to them ([`SearchParam::covers`]).
        let mut resolved: Vec<(Option<&SearchParam>, usize)> = Vec::with_capacity(entries.len());
        let mut covered: Vec<(&str, &str)> = Vec::new();
        let mut last: Option<(&str, Option<&SearchParam>, usize)> = None;
        for entry in entries {
            let param = entry.param.as_str();
            let (declared, param_number) = match last {
                Some((name, declared, number)) if name == param => (declared, number),
                _ => {
                    let declared = self.declared(resource_type, param);
                    let number = params.iter().position(|known| *known == param).unwrap_or_else(|| {
                        params.push(param);
                        params.len() - 1
                    });
                    last = Some((param, declared, number));
                    (declared, number)
                }
            };
            resolved.push((declared, param_number));
            if let (IndexValue::Text { normalized, .. }, Some(declared)) = (&entry.value, declared)
                && declared.name == param
                && let Some(owner) = declared.covered_by.as_deref()
            {
                covered.push((owner, normalized));
            }
        }
        for (entry, &(declared, param_number)) in entries.iter().zip(&resolved) {
            let param = entry.param.as_str();
            if declared.is_some_and(|declared| declared.index_as.is_some() || !declared.union_of.is_empty())
                || !Self::component_index_as(declared, param).is_empty()
            {
                continue;
            }
            let base = param.strip_suffix(PRESENT_SUFFIX).unwrap_or(param);
            let text = param.ends_with(TEXT_SUFFIX);
            if !text && !present.contains(&base) {
                present.push(base);
                terms.push(base, kind::PRESENT, &[]);
            }
            if base.len() != param.len() {
                continue;
            }
            let mut hashed = |kind: u8, parts: &[&str]| {
                let hash = self.hash(parts);
                if seen.insert((param_number, kind, hash)) {
                    terms.push(param, kind, &hash);
                }
            };
            match &entry.value {
                IndexValue::Token { system, code } => {
                    hashed(kind::TOKEN_CODE, &[code]);
                    // A code without a system (`status`, `gender`, `_id`) has its code term
                    // only: `|code` selects by that too, and `system|` needs a system.
                    if let Some(system) = system.as_deref().filter(|system| !system.is_empty()) {
                        hashed(kind::TOKEN, &[system, code]);
                        hashed(kind::TOKEN_SYSTEM, &[system]);
                    }
                }
                IndexValue::Text { normalized, .. } if text => {
                    for (length, prefix) in Self::prefixes(normalized).enumerate().map(|(position, prefix)| (position + 1, prefix)) {
                        if TEXT_PREFIXES.contains(&length) {
                            hashed(kind::STRING_PREFIX, &[prefix]);
                        }
                    }
                }
                IndexValue::Text { normalized, exact } => {
                    let prefixes_elsewhere =
                        declared.is_some_and(|declared| !declared.covers.is_empty()) && covered.contains(&(param, normalized.as_str()));
                    if !prefixes_elsewhere {
                        for prefix in Self::prefixes(normalized) {
                            hashed(kind::STRING_PREFIX, &[prefix]);
                        }
                    }
                    if declared.is_none_or(|declared| declared.covered_by.is_none()) {
                        hashed(kind::STRING_EXACT, &[exact]);
                        if declared.is_none_or(|declared| declared.trigrams) {
                            if normalized.len() > MAX_TRIGRAM_CHARS && normalized.chars().count() > MAX_TRIGRAM_CHARS {
                                hashed(kind::STRING_LONG, &[]);
                            } else {
                                for trigram in Self::trigrams(normalized) {
                                    hashed(kind::STRING_TRIGRAM, &[trigram]);
                                }
                            }
                        }
                    }
                }
                IndexValue::Reference { target } => {
                    hashed(kind::REFERENCE, &[target]);
                    let id = target.rsplit('/').next().unwrap_or(target);
                    hashed(kind::REFERENCE_ID, &[id]);
                }
                IndexValue::Date { start_ms, end_ms } => {
                    terms.push_date(param, kind::DATE_START, sortable_i64(*start_ms));
                    terms.push_date(param, kind::DATE_END, sortable_i64(*end_ms));
                }
                IndexValue::Quantity { value_f64, system, code, .. } => {
                    if let Some(code) = code {
                        hashed(kind::QUANTITY_CODE, &[code]);
                        hashed(kind::QUANTITY_UNIT, &[system.as_deref().unwrap_or(""), code]);
                    }
                    terms.push(param, kind::QUANTITY, &sortable_f64(*value_f64));
                }
                IndexValue::Number { value_f64, .. } => terms.push(param, kind::NUMBER, &sortable_f64(*value_f64)),
            }
        }
        terms
    }

    /// Terms of `param` and `kind` whose 8-byte value lies within the bounds.
    fn range(param: &str, kind: u8, lower: Bound<[u8; 8]>, upper: Bound<[u8; 8]>) -> TermCondition {
        let with_head = |bound: Bound<[u8; 8]>, unbounded: [u8; 8]| match bound {
            Bound::Included(value) => Bound::Included(term(param, kind, &value)),
            Bound::Excluded(value) => Bound::Excluded(term(param, kind, &value)),
            Bound::Unbounded => Bound::Included(term(param, kind, &unbounded)),
        };
        TermCondition::Range { lower: with_head(lower, [0; 8]), upper: with_head(upper, [0xff; 8]) }
    }

    /// Date terms of `param` and `kind` whose value lies within the bounds: whole buckets of
    /// the coarsest level that fits, finer levels for the ends. Selects exactly what one range
    /// over the finest terms would.
    fn date_range(param: &str, kind: u8, lower: Bound<[u8; 8]>, upper: Bound<[u8; 8]>) -> TermCondition {
        let nothing = TermCondition::Any(Vec::new());
        let lower = match lower {
            Bound::Included(value) => Some(u64::from_be_bytes(value)),
            Bound::Excluded(value) => u64::from_be_bytes(value).checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let upper = match upper {
            Bound::Included(value) => Some(u64::from_be_bytes(value)),
            Bound::Excluded(value) => u64::from_be_bytes(value).checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        let (Some(mut low), Some(mut high)) = (lower, upper) else {
            return nothing;
        };
        if low > high {
            return nothing;
        }
        // Level 0 is the finest; `dropped` low bytes are cut off at the current level.
        let at_level = |level: usize, dropped: usize, value: u64| {
            let bytes = value.to_be_bytes();
            if level == 0 {
                term(param, kind, &bytes)
            } else {
                term(param, kind::coarse(kind), &coarse_payload(level - 1, &bytes[..8 - dropped]))
            }
        };
        let span = |level: usize, dropped: usize, from: u64, to: u64| TermCondition::Range {
            lower: Bound::Included(at_level(level, dropped, from)),
            upper: Bound::Included(at_level(level, dropped, to)),
        };
        let mut parts = Vec::new();
        let mut dropped = 0;
        for level in 0..=DATE_LEVELS.len() {
            let Some(&next) = DATE_LEVELS.get(level) else {
                parts.push(span(level, dropped, low, high));
                break;
            };
            // The whole buckets of the next level within [low, high]: [first, last].
            let mask = (1u64 << (8 * next)) - 1;
            let first = if low & mask == 0 { Some(low) } else { (low | mask).checked_add(1) };
            let last = if high & mask == mask { Some(high) } else { (high & !mask).checked_sub(1) };
            match (first, last) {
                (Some(first), Some(last)) if first <= last => {
                    if low < first {
                        parts.push(span(level, dropped, low, first - 1));
                    }
                    if last < high {
                        parts.push(span(level, dropped, last + 1, high));
                    }
                    (low, high, dropped) = (first, last, next);
                }
                _ => {
                    parts.push(span(level, dropped, low, high));
                    break;
                }
            }
        }
        if parts.len() == 1 { parts.remove(0) } else { TermCondition::Any(parts) }
    }

    fn date_condition(param: &str, prefix: Prefix, start_ms: i64, end_ms: i64) -> TermCondition {
        use Bound::{Excluded, Included, Unbounded};
        use kind::{DATE_END, DATE_START};
        let (start, end) = (sortable_i64(start_ms), sortable_i64(end_ms));
        match prefix {
            Prefix::Eq => TermCondition::All(vec![
                Self::date_range(param, DATE_START, Included(start), Unbounded),
                Self::date_range(param, DATE_END, Unbounded, Included(end)),
            ]),
            Prefix::Gt => Self::date_range(param, DATE_END, Excluded(end), Unbounded),
            Prefix::Lt => Self::date_range(param, DATE_START, Unbounded, Excluded(start)),
            // `ge` is `gt` or contained: `end > S.end || (start >= S.start && end <= S.end)`,
            // which is `end > S.end || start >= S.start`, one value at a time: exact.
            Prefix::Ge => TermCondition::Any(vec![
                Self::date_range(param, DATE_END, Excluded(end), Unbounded),
                Self::date_range(param, DATE_START, Included(start), Unbounded),
            ]),
            // `le`, likewise: `start < S.start || end <= S.end`.
            Prefix::Le => TermCondition::Any(vec![
                Self::date_range(param, DATE_START, Unbounded, Excluded(start)),
                Self::date_range(param, DATE_END, Unbounded, Included(end)),
            ]),
            Prefix::Sa => Self::date_range(param, DATE_START, Excluded(end), Unbounded),
            Prefix::Eb => Self::date_range(param, DATE_END, Unbounded, Excluded(start)),
            Prefix::Ne | Prefix::Ap => TermCondition::Term(Self::presence(param)),
        }
    }

    fn number_condition(param: &str, kind: u8, prefix: Prefix, value: f64) -> TermCondition {
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

    /// `param` names the terms; `whole_values` the parameter holding the exact and trigram
    /// terms of its values (itself, or the one covering it); `declared` says whether its values
    /// have trigrams and which parameters hold prefix terms of its values too
    /// ([`SearchParam::covers`]).
    fn string_condition(
        &self,
        param: &str,
        whole_values: &str,
        value: &str,
        modifier: Option<&Modifier>,
        declared: Option<&SearchParam>,
    ) -> TermCondition {
        let trigrams = declared.is_none_or(|declared| declared.trigrams);
        match modifier {
            Some(Modifier::Exact) => TermCondition::Term(self.hashed(whole_values, kind::STRING_EXACT, &[value])),
            Some(Modifier::Contains) if !trigrams => TermCondition::Term(Self::presence(param)),
            Some(Modifier::Contains) => {
                let normalized = normalize_text(value);
                let trigrams: Vec<TermCondition> = Self::trigrams(&normalized)
                    .map(|trigram| TermCondition::Term(self.hashed(whole_values, kind::STRING_TRIGRAM, &[trigram])))
                    .collect();
                if trigrams.is_empty() {
                    TermCondition::Term(Self::presence(param))
                } else {
                    let long = TermCondition::Term(self.hashed(whole_values, kind::STRING_LONG, &[]));
                    TermCondition::Any(vec![TermCondition::All(trigrams), long])
                }
            }
            _ => {
                let normalized = normalize_text(value);
                if normalized.is_empty() {
                    return TermCondition::Term(Self::presence(param));
                }
                let prefix = normalized.char_indices().nth(MAX_PREFIX).map_or(normalized.as_str(), |(end, _)| &normalized[..end]);
                let covers = declared.map(|declared| declared.covers.as_slice()).unwrap_or_default();
                if covers.is_empty() {
                    return TermCondition::Term(self.hashed(param, kind::STRING_PREFIX, &[prefix]));
                }
                let holders = std::iter::once(param).chain(covers.iter().map(String::as_str));
                TermCondition::Any(holders.map(|holder| TermCondition::Term(self.hashed(holder, kind::STRING_PREFIX, &[prefix]))).collect())
            }
        }
    }

    /// Token `:text` on `param`: the longest of [`TEXT_PREFIXES`] that fits the value.
    fn text_condition(&self, param: &str, value: &str) -> TermCondition {
        let normalized = normalize_text(value);
        let length = normalized.chars().count();
        match TEXT_PREFIXES.iter().rev().find(|prefix| **prefix <= length) {
            Some(prefix) => {
                let end = normalized.char_indices().nth(*prefix).map_or(normalized.len(), |(end, _)| end);
                TermCondition::Term(self.hashed(&format!("{param}{TEXT_SUFFIX}"), kind::STRING_PREFIX, &[&normalized[..end]]))
            }
            None => TermCondition::Everything,
        }
    }

    fn value_condition(
        &self,
        param: &str,
        whole_values: &str,
        modifier: Option<&Modifier>,
        value: &FilterValue,
        declared: Option<&SearchParam>,
    ) -> TermCondition {
        let hashed = |kind: u8, parts: &[&str]| TermCondition::Term(self.hashed(param, kind, parts));
        match value {
            FilterValue::Token { system, code } => match (system, code) {
                (TokenSystem::Any, Some(code)) => hashed(kind::TOKEN_CODE, &[code]),
                (TokenSystem::None, Some(code)) => hashed(kind::TOKEN_CODE, &[code]),
                (TokenSystem::Some(system), Some(code)) => hashed(kind::TOKEN, &[system, code]),
                (TokenSystem::Some(system), None) => hashed(kind::TOKEN_SYSTEM, &[system]),
                (_, None) => TermCondition::Term(Self::presence(param)),
            },
            FilterValue::String(text) => self.string_condition(param, whole_values, text, modifier, declared),
            FilterValue::Uri(uri) => hashed(kind::TOKEN_CODE, &[uri]),
            FilterValue::Date { prefix, start_ms, end_ms } => Self::date_condition(param, *prefix, *start_ms, *end_ms),
            FilterValue::Reference { target } if target.contains('/') => hashed(kind::REFERENCE, &[target]),
            FilterValue::Reference { target } => hashed(kind::REFERENCE_ID, &[target]),
            FilterValue::Quantity { prefix, value, system, code, .. } => {
                let mut conditions = vec![Self::number_condition(param, kind::QUANTITY, *prefix, *value)];
                if let Some(code) = code {
                    conditions.push(match system {
                        Some(system) => hashed(kind::QUANTITY_UNIT, &[system, code]),
                        None => hashed(kind::QUANTITY_CODE, &[code]),
                    });
                }
                TermCondition::All(conditions)
            }
            FilterValue::Number { prefix, value, .. } => Self::number_condition(param, kind::NUMBER, *prefix, *value),
            FilterValue::Composite(components) => TermCondition::All(
                components
                    .iter()
                    .enumerate()
                    .map(|(position, component)| {
                        let key = composite_key(param, position);
                        match Self::component_index_as(declared, &key) {
                            [] => self.value_condition(&key, &key, None, component, None),
                            holders => TermCondition::Any(
                                holders.iter().map(|holder| self.value_condition(holder, holder, None, component, None)).collect(),
                            ),
                        }
                    })
                    .collect(),
            ),
        }
    }

    /// A superset condition for one filter on `resource_type` (OR across its values).
    pub fn filter_condition(&self, resource_type: &str, filter: &Filter) -> TermCondition {
        if filter.chain.is_some() {
            return TermCondition::Everything;
        }
        let declared = self.declared(resource_type, &filter.param);
        if let Some(parts) = declared.map(|declared| &declared.union_of).filter(|parts| !parts.is_empty()) {
            let conditions = parts.iter().map(|part| self.filter_condition(resource_type, &Self::on_part(filter, part))).collect();
            return match filter.modifier {
                Some(Modifier::Missing(true)) => TermCondition::All(conditions),
                _ => TermCondition::Any(conditions),
            };
        }
        let param = declared.and_then(|declared| declared.index_as.as_deref()).unwrap_or(&filter.param);
        let whole_values = declared.and_then(|declared| declared.covered_by.as_deref()).unwrap_or(param);
        let composite = declared.filter(|declared| declared.param_type == ParamType::Composite);
        match &filter.modifier {
            // A composite is present when some root has every component: the first component's
            // presence is a superset; its absence is not (the matcher decides).
            Some(Modifier::Missing(true)) if composite.is_some() => TermCondition::Everything,
            Some(Modifier::Missing(false)) if composite.is_some() => {
                let first = composite_key(param, 0);
                match Self::component_index_as(composite, &first) {
                    [] => TermCondition::Term(Self::presence(&first)),
                    holders => TermCondition::Any(holders.iter().map(|holder| TermCondition::Term(Self::presence(holder))).collect()),
                }
            }
            Some(Modifier::Missing(true)) => TermCondition::Not(Box::new(TermCondition::Term(Self::presence(param)))),
            Some(Modifier::Missing(false)) => TermCondition::Term(Self::presence(param)),
            Some(Modifier::Not) => TermCondition::Everything,
            Some(Modifier::Text) => TermCondition::Any(
                filter
                    .values
                    .iter()
                    .map(|value| match value {
                        FilterValue::String(text) | FilterValue::Uri(text) => self.text_condition(param, text),
                        _ => TermCondition::Everything,
                    })
                    .collect(),
            ),
            Some(Modifier::Identifier) => TermCondition::Any(
                filter
                    .values
                    .iter()
                    .map(|value| {
                        let identifier_param = format!("{param}{IDENTIFIER_SUFFIX}");
                        self.value_condition(&identifier_param, &identifier_param, None, value, None)
                    })
                    .collect(),
            ),
            modifier => TermCondition::Any(
                filter.values.iter().map(|value| self.value_condition(param, whole_values, modifier.as_ref(), value, declared)).collect(),
            ),
        }
    }

    /// The same filter on one of the parameters a union parameter is made of
    /// ([`SearchParam::union_of`]).
    fn on_part(filter: &Filter, part: &str) -> Filter {
        Filter { param: part.to_string(), ..filter.clone() }
    }

    /// Whether [`Self::filter_condition`] selects exactly the resources the matcher accepts for
    /// this filter, not only a superset (up to a 64-bit hash collision): a search whose filters
    /// are all exact can count its matches from the index and read only its page. Exact:
    /// tokens with a code or a system (not `|code`, which also finds an empty system), URIs,
    /// string prefixes of at most [`MAX_PREFIX`] characters, `:exact` on a parameter holding its
    /// own exact terms, typed references, dates with `gt lt ge le sa eb`, and `:missing` on all
    /// but composites. The corpus test below holds this against the matcher.
    pub fn selects_exactly(&self, resource_type: &str, filter: &Filter) -> bool {
        let Some(declared) = self.declared(resource_type, &filter.param) else {
            return false;
        };
        if !declared.union_of.is_empty() {
            return declared.union_of.iter().all(|part| self.selects_exactly(resource_type, &Self::on_part(filter, part)));
        }
        if filter.chain.is_some() || declared.param_type == ParamType::Composite || declared.name != filter.param {
            return false;
        }
        let modifier = filter.modifier.as_ref();
        let value_exact = |value: &FilterValue| match value {
            FilterValue::Token { system: TokenSystem::None, .. } | FilterValue::Token { system: TokenSystem::Any, code: None } => false,
            FilterValue::Token { .. } | FilterValue::Uri(_) => modifier.is_none(),
            FilterValue::String(text) => match modifier {
                Some(Modifier::Exact) => declared.covered_by.is_none(),
                None => {
                    let normalized = normalize_text(text);
                    !normalized.is_empty() && normalized.chars().nth(MAX_PREFIX).is_none()
                }
                _ => false,
            },
            FilterValue::Reference { target } => modifier.is_none() && target.contains('/'),
            FilterValue::Date { prefix, .. } => {
                modifier.is_none() && matches!(prefix, Prefix::Gt | Prefix::Lt | Prefix::Ge | Prefix::Le | Prefix::Sa | Prefix::Eb)
            }
            FilterValue::Quantity { .. } | FilterValue::Number { .. } | FilterValue::Composite(_) => false,
        };
        match modifier {
            Some(Modifier::Missing(_)) => true,
            None | Some(Modifier::Exact) => filter.values.iter().all(value_exact),
            _ => false,
        }
    }
}

/// What tantivy answers for a document with `terms`, without tantivy.
#[cfg(test)]
fn holds(condition: &TermCondition, terms: &DocumentTerms) -> bool {
    let above = |term: &[u8], bound: &Bound<Vec<u8>>| match bound {
        Bound::Included(lower) => term >= lower.as_slice(),
        Bound::Excluded(lower) => term > lower.as_slice(),
        Bound::Unbounded => true,
    };
    let below = |term: &[u8], bound: &Bound<Vec<u8>>| match bound {
        Bound::Included(upper) => term <= upper.as_slice(),
        Bound::Excluded(upper) => term < upper.as_slice(),
        Bound::Unbounded => true,
    };
    match condition {
        TermCondition::Everything => true,
        TermCondition::Term(wanted) => terms.iter().any(|term| term == wanted.as_slice()),
        TermCondition::Range { lower, upper } => terms.iter().any(|term| above(term, lower) && below(term, upper)),
        TermCondition::All(conditions) => conditions.iter().all(|condition| holds(condition, terms)),
        TermCondition::Any(conditions) => conditions.iter().any(|condition| holds(condition, terms)),
        TermCondition::Not(inner) => !holds(inner, terms),
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

    fn text(param: &str, value: &str) -> IndexEntry {
        IndexEntry { param: param.into(), value: IndexValue::Text { normalized: normalize_text(value), exact: value.into() }, group: None }
    }

    fn contains(terms: &DocumentTerms, wanted: &[u8]) -> bool {
        terms.iter().any(|term| term == wanted)
    }

    #[test]
    fn strings_become_keyed_hashes_of_prefixes() {
        let encoder = TermEncoder::new([1u8; 32]);
        let entries = [text("family", "Chalmers"), text("name", "Chalmers")];
        let terms = encoder.document_terms("Patient", &entries);
        assert!(terms.iter().all(|term| !String::from_utf8_lossy(term).to_lowercase().contains("chalm")), "no readable text");
        assert!(contains(&terms, &encoder.hashed("family", kind::STRING_PREFIX, &["cha"])));
        assert!(contains(&terms, &encoder.hashed("family", kind::STRING_PREFIX, &["chalmers"])), "8 characters: the longest prefix");
        assert!(contains(&terms, &TermEncoder::presence("family")));
        assert_eq!(terms.iter().filter(|term| *term == TermEncoder::presence("family").as_slice()).count(), 1, "presence once");
        // `name` holds the parts `family` selects: its exact and trigram terms serve both.
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_EXACT, &["Chalmers"])));
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_TRIGRAM, &["alm"])));
        assert!(!contains(&terms, &encoder.hashed("family", kind::STRING_EXACT, &["Chalmers"])));
        assert!(!contains(&terms, &encoder.hashed("family", kind::STRING_TRIGRAM, &["alm"])));
        // Another key gives other terms.
        assert_ne!(TermEncoder::new([2u8; 32]).document_terms("Patient", &entries), terms);
    }

    #[test]
    fn a_parameter_repeating_a_value_gets_its_terms_once() {
        let encoder = TermEncoder::new([1u8; 32]);
        // A name's text repeats its parts, a given name may appear in two names, and entries
        // of one parameter need not be consecutive (a code's codings and its text alternate).
        let entries = [
            text("name", "Peter James Chalmers"),
            text("name", "Peter"),
            text("address", "Chalmers Street"),
            text("name", "Chalmers"),
            text("name", "Peter"),
        ];
        let terms = encoder.document_terms("Patient", &entries);
        let mut all: Vec<&[u8]> = terms.iter().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "no term twice");
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_PREFIX, &["pet"])));
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_EXACT, &["Peter"])));
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_TRIGRAM, &["ers"])));
        // The same value under another parameter keeps its own terms.
        let both = encoder.document_terms("Patient", &[text("name", "Peter"), text("address", "Peter")]);
        assert!(contains(&both, &encoder.hashed("address", kind::STRING_PREFIX, &["pet"])));
    }

    #[test]
    fn shared_terms_are_what_the_shared_filters_ask_for() {
        let encoder = TermEncoder::new([1u8; 32]);
        let table = SearchParamTable::r4();
        let entries = [text("family", "Chalmers"), text("name", "Chalmers"), text("phonetic", "Chalmers")];
        let terms = encoder.document_terms("Patient", &entries);
        assert!(!terms.iter().any(|term| term.starts_with(b"phonetic\0")), "phonetic is indexed as name");
        let condition = |query: &str| {
            let (param, value) = query.split_once('=').unwrap();
            let query = crate::search::parse_query(table, "Patient", &[(param.into(), value.into())], false).unwrap();
            encoder.filter_condition("Patient", &query.filters[0])
        };
        for query in ["phonetic=chal", "family:exact=Chalmers", "family:contains=alme", "given:missing=false", "name:contains=lmer"] {
            let condition = condition(query);
            if query.contains(":missing") {
                assert_eq!(condition, TermCondition::Term(TermEncoder::presence("given")));
            } else {
                assert!(holds(&condition, &terms), "{query}: {condition:?}");
            }
        }
        assert!(!holds(&condition("phonetic=chalk"), &terms) && !holds(&condition("family:exact=Chalmer"), &terms));
    }

    #[test]
    fn a_covering_parameter_leaves_the_prefixes_of_its_parts_values_to_them() {
        let encoder = TermEncoder::new([1u8; 32]);
        let table = SearchParamTable::r4();
        // Patient-example's official name: `name` holds every part, `family` and `given` theirs.
        let entries =
            [text("family", "Chalmers"), text("given", "Peter"), text("name", "Chalmers"), text("name", "Peter"), text("name", "Dr")];
        let terms = encoder.document_terms("Patient", &entries);
        for prefix in ["c", "chalmers", "p", "pete"] {
            assert!(!contains(&terms, &encoder.hashed("name", kind::STRING_PREFIX, &[prefix])), "{prefix}: family's or given's");
        }
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_PREFIX, &["dr"])), "a prefix part has no parameter of its own");
        assert!(contains(&terms, &encoder.hashed("name", kind::STRING_EXACT, &["Peter"])), "exact terms stay with name");
        let selects = |query: &str| {
            let (param, value) = query.split_once('=').unwrap();
            let query = crate::search::parse_query(table, "Patient", &[(param.into(), value.into())], false).unwrap();
            holds(&encoder.filter_condition("Patient", &query.filters[0]), &terms)
        };
        for query in ["name=chal", "name=Peter", "name=d", "phonetic=pe", "given=pet", "family=chalmers", "name:exact=Chalmers"] {
            assert!(selects(query), "{query}");
        }
        for query in ["name=chalk", "name=petra", "phonetic=x", "given=chal", "family=dr"] {
            assert!(!selects(query), "{query}");
        }
        // The same value only in `name` (a `text`, say) keeps its prefixes there.
        let alone = encoder.document_terms("Patient", &[text("name", "Chalmers")]);
        assert!(contains(&alone, &encoder.hashed("name", kind::STRING_PREFIX, &["chal"])));
        assert_eq!(terms.iter().filter(|term| term.starts_with(b"name\0p")).count(), 2, "only \"d\" and \"dr\"");
    }

    #[test]
    fn coarse_date_ranges_select_what_one_fine_range_selects() {
        let bucket = |dropped: u32| 1i64 << (8 * dropped);
        let mut values = vec![i64::MIN, i64::MIN + 1, -1, 0, 1, 1_700_000_000_000, i64::MAX - 1, i64::MAX];
        for dropped in [3, 4] {
            for base in [0, 7 * bucket(dropped), -3 * bucket(dropped), 1_700_000_000_000 / bucket(dropped) * bucket(dropped)] {
                values.extend([base - 1, base, base + 1, base + bucket(dropped) - 1]);
            }
        }
        let documents: Vec<(i64, DocumentTerms)> = values
            .iter()
            .map(|value| {
                let mut terms = DocumentTerms::default();
                terms.push_date("date", kind::DATE_START, sortable_i64(*value));
                (*value, terms)
            })
            .collect();
        let mut bounds = vec![Bound::Unbounded];
        bounds.extend(values.iter().flat_map(|value| [Bound::Included(*value), Bound::Excluded(*value)]));
        let within = |value: i64, lower: &Bound<i64>, upper: &Bound<i64>| {
            (match lower {
                Bound::Included(low) => value >= *low,
                Bound::Excluded(low) => value > *low,
                Bound::Unbounded => true,
            }) && (match upper {
                Bound::Included(high) => value <= *high,
                Bound::Excluded(high) => value < *high,
                Bound::Unbounded => true,
            })
        };
        let mut coarse = 0;
        for lower in &bounds {
            for upper in &bounds {
                let condition = TermEncoder::date_range("date", kind::DATE_START, lower.map(sortable_i64), upper.map(sortable_i64));
                coarse += usize::from(matches!(&condition, TermCondition::Any(parts) if parts.len() > 1));
                for (value, terms) in &documents {
                    assert_eq!(holds(&condition, terms), within(*value, lower, upper), "{value} in {lower:?}..{upper:?}: {condition:?}");
                }
            }
        }
        assert!(coarse > 1_000, "only {coarse} ranges used coarse terms");
        // A range over 70 years of birth dates visits a few hundred terms, not one per day.
        let since_1950 =
            TermEncoder::date_range("birthdate", kind::DATE_START, Bound::Included(sortable_i64(-631_152_000_000)), Bound::Unbounded);
        let TermCondition::Any(parts) = since_1950 else { panic!("{since_1950:?}") };
        assert!(parts.len() <= 4, "{parts:?}");
    }

    #[test]
    fn code_texts_get_prefixes_only() {
        let encoder = TermEncoder::new([1u8; 32]);
        let terms = encoder.document_terms("Observation", &[text("code:text", "Body weight")]);
        for prefix in ["bod", "body ", "body wei"] {
            assert!(contains(&terms, &encoder.hashed("code:text", kind::STRING_PREFIX, &[prefix])), "{prefix}");
        }
        assert_eq!(terms.len(), TEXT_PREFIXES.len(), "those prefixes only, no presence: {terms:?}");
        // A search selects by the longest indexed prefix its value has, or by nothing.
        let condition = |value: &str| encoder.text_condition("code", value);
        assert_eq!(condition("Body"), TermCondition::Term(encoder.hashed("code:text", kind::STRING_PREFIX, &["bod"])));
        assert_eq!(condition("body weight"), TermCondition::Term(encoder.hashed("code:text", kind::STRING_PREFIX, &["body wei"])));
        assert_eq!(condition("bo"), TermCondition::Everything);
    }

    #[test]
    fn a_code_without_a_system_gets_its_code_term_only() {
        let encoder = TermEncoder::new([1u8; 32]);
        let token = |param: &str, system: Option<&str>, code: &str| IndexEntry {
            param: param.into(),
            value: IndexValue::Token { system: system.map(Into::into), code: code.into() },
            group: None,
        };
        let terms = encoder.document_terms("Patient", &[token("gender", None, "male")]);
        assert_eq!(terms.len(), 2, "presence and code: {terms:?}");
        assert!(contains(&terms, &encoder.hashed("gender", kind::TOKEN_CODE, &["male"])));
        let terms = encoder.document_terms("Patient", &[token("identifier", Some("urn:oid:1.2.36"), "12345")]);
        assert!(contains(&terms, &encoder.hashed("identifier", kind::TOKEN, &["urn:oid:1.2.36", "12345"])));
        assert!(contains(&terms, &encoder.hashed("identifier", kind::TOKEN_SYSTEM, &["urn:oid:1.2.36"])));
        assert_eq!(terms.len(), 4, "presence, code, system|code, system: {terms:?}");
    }

    #[test]
    fn addresses_have_no_trigrams() {
        let encoder = TermEncoder::new([1u8; 32]);
        let terms = encoder.document_terms("Patient", &[text("address", "Erewhon"), text("address-city", "Erewhon")]);
        assert!(contains(&terms, &encoder.hashed("address-city", kind::STRING_PREFIX, &["erew"])));
        assert!(contains(&terms, &encoder.hashed("address", kind::STRING_EXACT, &["Erewhon"])));
        let kind_of = |term: &[u8]| term[term.iter().position(|byte| *byte == 0).expect("a separator") + 1];
        assert!(!terms.iter().any(|term| kind_of(term) == kind::STRING_TRIGRAM), "{terms:?}");
        let pairs = [("address-city:contains".to_string(), "rewh".to_string())];
        let query = crate::search::parse_query(SearchParamTable::r4(), "Patient", &pairs, false).unwrap();
        let presence = TermCondition::Term(TermEncoder::presence("address-city"));
        assert_eq!(encoder.filter_condition("Patient", &query.filters[0]), TermCondition::Any(vec![presence]));
    }

    #[test]
    fn values_too_long_for_trigrams_are_still_candidates_of_contains() {
        let encoder = TermEncoder::new([1u8; 32]);
        let long = format!("{}needle", "x".repeat(MAX_TRIGRAM_CHARS));
        let terms = encoder.document_terms("Patient", &[text("name", &long), text("family", &long)]);
        let kind_of = |term: &[u8]| term[term.iter().position(|byte| *byte == 0).expect("a separator") + 1];
        assert!(!terms.iter().any(|term| kind_of(term) == kind::STRING_TRIGRAM), "no trigrams for a long value");
        let pairs = [("family:contains".to_string(), "needle".to_string())];
        let query = crate::search::parse_query(SearchParamTable::r4(), "Patient", &pairs, false).unwrap();
        let condition = encoder.filter_condition("Patient", &query.filters[0]);
        assert!(super::holds(&condition, &terms), "{condition:?}");
        let short = encoder.document_terms("Patient", &[text("name", "haystack"), text("family", "haystack")]);
        assert!(!super::holds(&condition, &short), "a short value without the trigrams is no candidate");
    }
}

/// Whether a condition holds exactly where [`TermEncoder::selects_exactly`] says it does, and is
/// a superset elsewhere: every filter the corpora suggest, on every resource of six types.
#[cfg(test)]
mod corpus_tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::{DocumentTerms, TermEncoder, holds};
    use crate::search::extract::{IndexValue, extract_indexed, extract_param};
    use crate::search::search_params::{ParamType, SearchParamTable};
    use crate::search::{matches, parse_query};

    const CORPORA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpora");
    const TYPES: [&str; 6] = ["Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "Immunization"];
    /// Resources per type and values per parameter (the test must stay fast unoptimised).
    const RESOURCES: usize = 120;
    const VALUES: usize = 2;

    fn resources() -> BTreeMap<&'static str, Vec<Value>> {
        let mut by_type: BTreeMap<&str, Vec<Value>> = TYPES.iter().map(|name| (*name, Vec::new())).collect();
        let mut keep = |resource: Value| {
            let name = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
            if let Some(list) = by_type.get_mut(name.as_str())
                && list.len() < RESOURCES
            {
                list.push(resource);
            }
        };
        for name in TYPES {
            let directory = format!("{CORPORA}/fhir-r4-examples/{name}");
            for entry in std::fs::read_dir(&directory).into_iter().flatten().flatten() {
                if let Ok(resource) = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()) {
                    keep(resource);
                }
            }
            let ndjson = format!("{CORPORA}/synthea/bulk-ndjson-10-patients/{name}.000.ndjson");
            for line in std::fs::read_to_string(&ndjson).unwrap_or_default().lines() {
                keep(serde_json::from_str(line).unwrap());
            }
        }
        by_type
    }

    fn date_texts(start_ms: i64) -> Vec<String> {
        let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ms) * 1_000_000) else {
            return Vec::new();
        };
        let (year, month, day) = (time.year(), u8::from(time.month()), time.day());
        let (hour, minute, second) = (time.hour(), time.minute(), time.second());
        vec![
            format!("{year:04}"),
            format!("{year:04}-{month:02}"),
            format!("{year:04}-{month:02}-{day:02}"),
            format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
        ]
    }

    /// Search values built from one indexed value.
    fn values_from(value: &IndexValue) -> Vec<String> {
        match value {
            IndexValue::Token { system, code } => {
                let mut values = vec![code.clone(), format!("|{code}")];
                if let Some(system) = system {
                    values.extend([format!("{system}|{code}"), format!("{system}|")]);
                }
                values
            }
            IndexValue::Text { normalized, exact } => {
                let mut values: Vec<String> = [1, 3, 8, 9].iter().map(|length| normalized.chars().take(*length).collect()).collect();
                values.push(format!(":exact={exact}"));
                values.push(format!(":exact={}", exact.to_uppercase()));
                values.push(format!(":contains={}", normalized.chars().skip(1).take(3).collect::<String>()));
                values
            }
            IndexValue::Reference { target } => vec![target.clone(), target.rsplit('/').next().unwrap_or(target).to_string()],
            IndexValue::Date { start_ms, end_ms } => {
                let mut texts = date_texts(*start_ms);
                texts.extend(date_texts(*end_ms));
                texts.extend(date_texts(start_ms.saturating_sub(86_400_000)));
                ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
                    .iter()
                    .flat_map(|prefix| texts.iter().map(move |text| format!("{prefix}{text}")))
                    .collect()
            }
            IndexValue::Quantity { value, system, code, .. } => {
                let mut values = vec![value.clone(), format!("gt{value}"), format!("le{value}")];
                if let Some(code) = code {
                    values.push(format!("{value}||{code}"));
                    values.extend(system.iter().map(|system| format!("{value}|{system}|{code}")));
                }
                values
            }
            IndexValue::Number { .. } => Vec::new(),
        }
    }

    /// Composite searches (`code$value-quantity`) built from every Observation's own codes and
    /// quantities, at the root and in components: the index selects whatever the matcher accepts.
    #[test]
    fn composite_conditions_select_what_the_matcher_accepts() {
        let table = SearchParamTable::r4();
        let encoder = TermEncoder::new([7u8; 32]);
        let observations = resources().remove("Observation").unwrap();
        let documents: Vec<DocumentTerms> =
            observations.iter().map(|resource| encoder.document_terms("Observation", &extract_indexed(table, resource))).collect();
        let pairs = |element: &Value| -> Vec<String> {
            let quantity = element.get("valueQuantity");
            let value = quantity.and_then(|quantity| quantity.get("value")).map(Value::to_string);
            let codings = element.pointer("/code/coding").and_then(Value::as_array).into_iter().flatten();
            codings
                .filter_map(|coding| {
                    let (system, code) = (coding.get("system")?.as_str()?, coding.get("code")?.as_str()?);
                    let unit = quantity.and_then(|quantity| quantity.get("code")).and_then(Value::as_str).unwrap_or_default();
                    Some(format!("{system}|{code}${}|{}|{unit}", value.clone()?, quantity?.get("system")?.as_str()?))
                })
                .collect()
        };
        let (mut searches, mut accepted_total) = (0, 0);
        for resource in &observations {
            let components = resource.get("component").and_then(Value::as_array).into_iter().flatten();
            let searched: Vec<(&str, String)> = pairs(resource)
                .into_iter()
                .flat_map(|pair| [("code-value-quantity", pair.clone()), ("combo-code-value-quantity", pair)])
                .chain(
                    components
                        .flat_map(pairs)
                        .flat_map(|pair| [("component-code-value-quantity", pair.clone()), ("combo-code-value-quantity", pair)]),
                )
                .collect();
            for (name, value) in searched {
                let query = parse_query(table, "Observation", &[(name.to_string(), value.clone())], false).unwrap();
                let condition = encoder.filter_condition("Observation", &query.filters[0]);
                searches += 1;
                for (candidate, terms) in observations.iter().zip(&documents) {
                    let accepted = matches(table, &query, candidate);
                    accepted_total += usize::from(accepted);
                    assert!(!accepted || holds(&condition, terms), "Observation?{name}={value}: the index misses a match");
                }
            }
        }
        assert!(searches > 50 && accepted_total >= searches, "{searches} searches, {accepted_total} matches");
    }

    /// The index extracts only the parameters with terms of their own: the others' entries
    /// never became terms.
    #[test]
    fn extracting_only_indexed_parameters_loses_no_term() {
        let table = SearchParamTable::r4();
        let encoder = TermEncoder::new([7u8; 32]);
        let mut skipped = 0;
        for (resource_type, resources) in resources() {
            for resource in &resources {
                let (all, indexed) = (crate::search::extract(table, resource), extract_indexed(table, resource));
                skipped += all.len() - indexed.len();
                assert_eq!(encoder.document_terms(resource_type, &all), encoder.document_terms(resource_type, &indexed));
            }
        }
        assert!(skipped > 1_000, "only {skipped} entries skipped");
    }

    #[test]
    fn exact_conditions_select_what_the_matcher_accepts() {
        let table = SearchParamTable::r4();
        let encoder = TermEncoder::new([7u8; 32]);
        let (mut exact, mut superset) = (0, 0);
        for (resource_type, resources) in resources() {
            assert!(!resources.is_empty(), "no {resource_type} in the corpora");
            let documents: Vec<DocumentTerms> =
                resources.iter().map(|resource| encoder.document_terms(resource_type, &extract_indexed(table, resource))).collect();
            for param in table.params(resource_type) {
                if matches!(param.param_type, ParamType::Composite | ParamType::Number) {
                    continue;
                }
                let mut searches = vec![":missing=true".to_string(), ":missing=false".to_string()];
                let mut seen = Vec::new();
                for entry in resources.iter().flat_map(|resource| extract_param(table, resource, param)) {
                    if entry.param == param.name && !seen.contains(&entry.value) && seen.len() < VALUES {
                        searches.extend(values_from(&entry.value).into_iter().map(|value| match value.strip_prefix(':') {
                            Some(modified) => format!(":{modified}"),
                            None => format!("={value}"),
                        }));
                        seen.push(entry.value);
                    }
                }
                for search in searches {
                    let (name, value) = search.split_once('=').map_or((param.name.clone(), String::new()), |(modifier, value)| {
                        (format!("{}{modifier}", param.name), value.to_string())
                    });
                    let Ok(query) = parse_query(table, resource_type, &[(name.clone(), value.clone())], false) else {
                        continue;
                    };
                    let filter = &query.filters[0];
                    let condition = encoder.filter_condition(resource_type, filter);
                    let is_exact = encoder.selects_exactly(resource_type, filter);
                    if is_exact {
                        exact += 1
                    } else {
                        superset += 1
                    }
                    for (resource, terms) in resources.iter().zip(&documents) {
                        let (selected, accepted) = (holds(&condition, terms), matches(table, &query, resource));
                        let id = resource.get("id").and_then(Value::as_str).unwrap_or_default();
                        assert!(selected || !accepted, "{resource_type}?{name}={value}: the index misses {id}");
                        assert!(!is_exact || selected == accepted, "{resource_type}?{name}={value}: exact, yet selects {id}");
                    }
                }
            }
        }
        assert!(exact > 1_000 && superset > 100, "{exact} exact and {superset} superset searches checked");
    }
}
