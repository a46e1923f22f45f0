//! The commit event stream: what the commit thread publishes once a commit is durable, in ledger
//! order, to every [`Subscriber`]. Derived state hangs on it instead of being called from the
//! commit path by name: the current Consents (`consents.rs`), the search index (`search.rs`),
//! the facts cache of the access decisions (`api`); witness submission, chain anchoring and blob
//! replication will subscribe the same way.
//!
//! Subscribers are called on the commit thread, after the commit is durable and visible and
//! before any writer of it is answered, so state a decision reads (a revoked Consent) is current
//! for the very next request. A subscriber must therefore never block: one with slow work queues
//! it, bounded, and when it falls behind it lets events go and catches up from the store (the
//! catalog and the ledger are durable; `search.rs` shows how), so a slow subscriber never holds
//! up a commit.

use std::sync::Arc;

use time::OffsetDateTime;

use super::catalog::{Erasure, ResourceKey};
use crate::search::IndexEntry;

/// One version a commit made durable and visible.
#[derive(Debug)]
pub struct Committed<'a> {
    pub key: ResourceKey,
    pub version_id: u64,
    pub leaf_index: u64,
    pub last_updated: OffsetDateTime,
    /// The canonical content; `None` for a deletion.
    pub body: Option<&'a [u8]>,
    /// The search values of the content, extracted when the write was prepared.
    pub search_values: Option<Arc<[IndexEntry]>>,
    /// The leaf of the version this one replaced, if that one had content.
    pub replaced_leaf: Option<u64>,
}

#[derive(Debug)]
pub enum CommitEvent<'a> {
    /// Versions of one group commit, in leaf order; the ledger holds `tree_size` leaves after them.
    Committed { versions: &'a [Committed<'a>], tree_size: u64 },
    /// A patient's records were erased (`Patient/$purge`); its record is ledger leaf `leaf_index`.
    PatientErased { erasure: &'a Erasure, leaf_index: u64 },
    /// A checkpoint of the first `tree_size` leaves was signed and made durable.
    CheckpointSigned { tree_size: u64 },
}

/// Follows the commit event stream (see the module doc: called on the commit thread, must not
/// block).
pub trait Subscriber: Send + Sync {
    fn on_commit(&self, event: &CommitEvent<'_>);
}
