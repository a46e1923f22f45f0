//! The pure search core (parameter table, extraction, query parsing, matcher) through its
//! public API, on the official examples.

mod common;
mod extract;
mod fuzz;
mod matcher;
mod query;
mod table;
