//! Erasure of a patient's records (`POST Patient/[id]/$purge`).
//!
//! What is erased: the Patient and every resource with a version whose data key the patient's
//! key holds (the versions in that one patient's compartment), every version of each. Versions
//! written before patient keys existed, and resources in several patients' compartments, are
//! held by the KEK: they are erased with the patient only if one of their versions is held by
//! its key.
//!
//! Order, so that a crash at any point either completes at the next open or can be run again,
//! and nothing is readable once the erasure was acknowledged:
//! 1. the commit thread appends one catalog record listing what is erased and one ledger entry
//!    of kind `erase` (pseudonym and counts), synced like any write: the commit point. Readers
//!    see the resources as erased (410) from then on; the commit event stream tells the
//!    subscribers (the Consent directory forgets the patient's Consents, the indexer deletes
//!    their documents, the facts cache forgets);
//! 2. [`finish`]: the patient key is destroyed (crypto-shredding every version it holds,
//!    wherever copies of the sealed blocks went); the index documents are deleted and the
//!    segments that held them merged away; the sealed blocks are removed from the blob store.
//!
//! At open, an erasure whose blocks or key are still there is finished again ([`resume`]).
//! AuditEvents about the patient are kept: they hold references and codes, no clinical content.

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::catalog::{CatalogRecord, Erasure, ResourceKey, VersionRecord};
use super::events::CommitEvent;
use super::indexer::IndexJob;
use super::{Shared, StoreError, history_of};
use crate::blob::{self, Cid};
use crate::fhir;
use crate::ledger::{EntryKind, LedgerEntry};

/// What an erasure removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeOutcome {
    pub resources: usize,
    pub versions: usize,
}

/// An erasure for the commit thread; `principal` and `author` as the ledger records them.
pub(crate) struct ErasureRequest {
    pub(crate) patient: ResourceKey,
    pub(crate) principal: String,
    pub(crate) author: Option<String>,
    pub(crate) reply: oneshot::Sender<Result<(Erasure, PurgeOutcome), StoreError>>,
}

/// Step 1, on the commit thread: records the erasure durably and publishes it.
pub(super) fn commit(shared: &Shared, request: ErasureRequest) {
    let ErasureRequest { patient, principal, author, reply } = request;
    let _ = reply.send(record(shared, &patient, principal, author));
}

fn record(
    shared: &Shared,
    patient: &ResourceKey,
    principal: String,
    author: Option<String>,
) -> Result<(Erasure, PurgeOutcome), StoreError> {
    if shared.poisoned.load(Ordering::SeqCst) {
        return Err(StoreError::Unavailable("the store stopped accepting writes after a storage failure".into()));
    }
    let patient_key = shared.keyring.read().expect("keyring lock").patients().slot_of(&shared.secrets.patient_hash(&patient.id))?;
    let (erasure, last_version, outcome) = {
        let catalog = &shared.catalog;
        let last_version = history_of(catalog, patient)?.current().map_or(0, |version| version.version_id);
        let mut resources = vec![patient.clone()];
        if let Some(slot) = patient_key {
            resources.extend(catalog.held_by(slot)?.into_iter().filter(|key| key != patient));
        }
        let mut versions = 0;
        for key in &resources {
            versions += catalog.current_state(key)?.map_or(0, |(version_id, _)| version_id as usize);
        }
        let outcome = PurgeOutcome { resources: resources.len(), versions };
        (Erasure { patient_key, resources }, last_version, outcome)
    };
    let leaf_index = shared.ledger.tree_size();
    let now = fhir::now_instant();
    let entry = LedgerEntry {
        author: Some(shared.secrets.author_hash(author.as_deref())),
        kind: EntryKind::Erase,
        resource_type: patient.resource_type.clone(),
        pseudonym: shared.secrets.pseudonym(patient),
        version_id: last_version,
        content_hash: None,
        cid: None,
        erased: Some(format!("{}/{}", outcome.versions, outcome.resources)),
        principal,
        recorded: fhir::format_instant(now),
    };
    let leaf = entry.sign(&shared.secrets.signing_key);
    let record = CatalogRecord {
        key: patient.clone(),
        version: VersionRecord { version_id: last_version, leaf_index, last_updated: now, sealed: None, author },
        identifier_hashes: Vec::new(),
        transaction_end_leaf: None,
        erasure: Some(erasure.clone()),
    };
    let durable = (|| -> Result<(), String> {
        shared.catalog_journal.append(&[record.encode()]).map_err(|error| error.to_string())?;
        shared.catalog_journal.sync().map_err(|error| error.to_string())?;
        let appended = shared.ledger.append_durably(&[leaf.as_slice()]).map_err(|error| error.to_string())?;
        if appended != leaf_index {
            return Err(format!("ledger appended at {appended}, expected {leaf_index}"));
        }
        Ok(())
    })();
    if let Err(error) = durable {
        tracing::error!(%error, "storage failure while recording an erasure; refusing further writes");
        shared.poisoned.store(true, Ordering::SeqCst);
        return Err(StoreError::Unavailable("storage failure: the erasure was not recorded".into()));
    }
    if let Err(error) = shared.catalog.apply(std::slice::from_ref(&record), shared.catalog_journal.end(), true) {
        // Durable in the ledger and the journal: the next start applies it and finishes it.
        tracing::error!(%error, "the catalog store could not be written; refusing further writes");
        shared.poisoned.store(true, Ordering::SeqCst);
        return Err(StoreError::Unavailable("storage failure: the erasure is recorded and finishes at the next start".into()));
    }
    shared.publish(&CommitEvent::PatientErased { erasure: &erasure, leaf_index });
    Ok((erasure, outcome))
}

/// The search-index jobs that delete every document of the erased resources.
pub(super) fn index_jobs(shared: &Shared, erasure: &Erasure, leaf_index: u64) -> Result<Vec<IndexJob>, StoreError> {
    let mut jobs = Vec::with_capacity(erasure.resources.len());
    for key in &erasure.resources {
        let versions = shared.catalog.erased_versions(key)?;
        let replaced_leaves = versions.iter().filter(|version| !version.is_deletion()).map(|version| version.leaf_index).collect();
        jobs.push(IndexJob { key: key.clone(), leaf_index, last_updated_ms: 0, entries: None, replaced_leaves });
    }
    Ok(jobs)
}

/// The sealed blobs (roots) of every version an erasure names.
fn sealed_roots(shared: &Shared, erasure: &Erasure) -> Result<Vec<Cid>, StoreError> {
    let mut roots = Vec::new();
    for key in &erasure.resources {
        roots.extend(shared.catalog.erased_versions(key)?.iter().filter_map(|version| version.sealed.as_ref().map(|sealed| sealed.cid)));
    }
    Ok(roots)
}

/// Step 2: destroys the patient key, purges the index, removes the sealed blocks. Idempotent.
/// The index must already hold the erasure's deletions (the indexer applied them, or the
/// caller applied them itself at open).
pub(super) fn finish(shared: &Shared, erasure: &Erasure) -> Result<(), StoreError> {
    let storage = |what: &str, error: &dyn std::fmt::Display| StoreError::Internal(format!("erasure: {what}: {error}"));
    if let Some(slot) = erasure.patient_key {
        shared
            .keyring
            .read()
            .expect("keyring lock")
            .patients()
            .destroy(slot)
            .map_err(|error| storage("destroying the patient key", &error))?;
    }
    shared.search.index.purge_deleted().map_err(|error| storage("merging the index", &error))?;
    let mut cids = Vec::new();
    for root in sealed_roots(shared, erasure)? {
        cids.extend(blob::dag_cids(shared.blobs.as_ref(), &root).map_err(|error| storage("finding blocks", &error))?);
    }
    shared.blobs.remove_blocks(&cids).map_err(|error| storage("removing blocks", &error))?;
    Ok(())
}

/// Whether an erasure's cleanup is done: its key destroyed and no sealed block left.
fn finished(shared: &Shared, erasure: &Erasure) -> Result<bool, StoreError> {
    let key_destroyed = erasure.patient_key.is_none_or(|slot| shared.keyring.read().expect("keyring lock").patients().is_destroyed(slot));
    let blocks_left = sealed_roots(shared, erasure)?
        .iter()
        .map(|root| shared.blobs.get_block(root))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| StoreError::Internal(format!("erasure: reading blocks: {error}")))?
        .iter()
        .any(Option::is_some);
    Ok(key_destroyed && !blocks_left)
}

/// At open: finishes every erasure a crash interrupted (deleting its index documents first).
pub(super) fn resume(shared: &Shared, erasures: &[Erasure]) -> Result<usize, StoreError> {
    let mut resumed = 0;
    for erasure in erasures {
        if finished(shared, erasure)? {
            continue;
        }
        let jobs = index_jobs(shared, erasure, 0)?;
        shared.search.apply(&jobs, shared.ledger.tree_size());
        finish(shared, erasure)?;
        resumed += 1;
    }
    Ok(resumed)
}
