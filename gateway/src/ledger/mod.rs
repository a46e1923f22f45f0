//! The tamper-evident log: every record version is a signed [`LedgerEntry`] appended to an
//! RFC 9162 Merkle tree ([`merkle`]), with C2SP tlog-checkpoints ([`note`]) signed by the
//! gateway's Ed25519 key. [`LedgerLog`] keeps it on disk. No PHI is ever written here.

pub mod entry;
mod log;
pub mod merkle;
pub mod note;
pub mod tiles;

pub use entry::{EntryKind, LedgerEntry};
pub use log::{LedgerError, LedgerLog, RecoveredLedger};
