//! Conditions on index terms: the small query language between search semantics and tantivy.
//! Pure; [`super::index`] turns a [`TermCondition`] into a tantivy query.

use std::ops::Bound;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermCondition {
    /// Every document (of the searched type).
    Everything,
    /// Documents holding this term.
    Term(String),
    /// Documents holding a term in this lexicographic range.
    Range { lower: Bound<String>, upper: Bound<String> },
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
