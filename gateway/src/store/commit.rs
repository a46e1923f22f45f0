//! The commit pipeline: one thread takes prepared writes in groups, checks each against the
//! state it was prepared on, makes the whole group durable with shared fsyncs, and only then
//! publishes it to readers and answers.
//!
//! Order per group (the commit point is the ledger's fsync):
//! 1. blocks → blob store, new patient keys → key store, catalog records → catalog journal;
//!    fsync them;
//! 2. ledger entries → ledger; fsync;
//! 3. apply to the in-memory catalog (now readers see it); publish the group on the commit
//!    event stream (`events.rs`: Consents, search index, facts cache); answer every writer.
//!
//! A crash before 2 completes leaves catalog records past the ledger's end; `open` drops them.
//! If any step fails the store is poisoned: it answers the group with an error and refuses all
//! later writes, so nothing that might not be durable is ever acknowledged.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::catalog::{Catalog, CatalogError, CatalogRecord, KeyedHash, Lookup, ResourceKey, SealedLocation, VersionRecord};
use super::events::{CommitEvent, Committed};
use super::{Principal, Shared, StoreError, StoredVersion};
use crate::blob::{self, Block};
use crate::fhir::{self, canonical::to_canonical_bytes};
use crate::ledger::{EntryKind, LedgerEntry};
use crate::seal::{self, KeyHolder, SealContext};
use crate::search::{self, IndexEntry, SearchParamTable};

pub(crate) enum CommitRequest {
    /// Writes committed all together or not at all: one write, or a transaction's.
    Unit {
        writes: Vec<(PreparedWrite, Expectation)>,
        reply: Reply,
    },
    /// A patient's erasure (`Patient/$purge`), committed on its own after the group.
    Erase(super::erasure::ErasureRequest),
    Tick,
    Shutdown(oneshot::Sender<()>),
}

pub(crate) type Reply = oneshot::Sender<Result<UnitOutcome, StoreError>>;

/// What a write was prepared on; checked again at commit time.
#[derive(Clone)]
pub(crate) enum Expectation {
    /// A new server-assigned id (`new_resource_id`: 122 random bits, so never stored before and
    /// not looked up); for a conditional create also: still nothing matches (`_id`, identifier
    /// hashes).
    Absent { condition: Option<(Option<String>, Vec<KeyedHash>)> },
    /// The resource's current version is still `base` (`None`: it has no version).
    Current { base: Option<u64> },
}

pub(crate) enum UnitOutcome {
    /// Every write is durable and visible; versions in the unit's order.
    Committed(Vec<StoredVersion>),
    /// Nothing was written: the write at `index` found the store changed, or its condition matched.
    Refused { index: usize, refusal: Refusal },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The resource changed between preparation and commit.
    Conflict,
    /// A conditional create's condition matches now.
    ConditionMatched,
}

pub(crate) struct PreparedWrite {
    pub(crate) key: ResourceKey,
    version_id: u64,
    last_updated: OffsetDateTime,
    body: Option<Vec<u8>>,
    blocks: Vec<Block>,
    sealed: Option<SealedLocation>,
    identifier_hashes: Vec<KeyedHash>,
    leaf: Vec<u8>,
    author: Option<String>,
    /// The search values of the content, for the indexer (extracted here from the parsed
    /// resource, so that the indexer need not parse the stored bytes again).
    index_entries: Option<Vec<IndexEntry>>,
}

/// Everything CPU-bound about a write, done in the caller's task: meta, canonical bytes, seal,
/// CID, keyed hashes, search values, the signed ledger entry.
pub(crate) fn prepare(
    shared: &Shared,
    key: &ResourceKey,
    resource: Option<Value>,
    version_id: u64,
    kind: EntryKind,
    principal: &Principal,
) -> Result<PreparedWrite, StoreError> {
    let before = match version_id.checked_sub(1).filter(|_| principal.guard.wants_prior()) {
        Some(prior) if prior > 0 => prior_content(shared, key, prior)?,
        _ => None,
    };
    // What the principal may not read, it may not change either; refused as its read would be,
    // so that the refusal does not reveal the resource.
    if let Some((version, content)) = &before
        && !principal.guard.sees(version, content)
    {
        return Err(principal.guard.hidden());
    }
    if let Some(found) = resource.as_ref().and_then(|resource| resource.get("resourceType")).and_then(Value::as_str)
        && found != key.resource_type
    {
        return Err(StoreError::BadRequest(format!("the resource is a {found}, but the request is for a {}", key.resource_type)));
    }
    let before = before.map(|(_, content)| content);
    // The id first: the guard judges the resource as it will be stored (a new Patient is in its
    // own compartment, not in none).
    let mut resource = resource;
    if let Some(object) = resource.as_mut().and_then(Value::as_object_mut) {
        object.insert("id".into(), Value::String(key.id.clone()));
    }
    principal.guard.check(kind, key, before.as_ref(), resource.as_ref()).map_err(StoreError::Forbidden)?;
    let last_updated = fhir::now_instant();
    let recorded = fhir::format_instant(last_updated);
    let mut prepared = PreparedWrite {
        key: key.clone(),
        version_id,
        last_updated,
        body: None,
        blocks: Vec::new(),
        sealed: None,
        identifier_hashes: Vec::new(),
        leaf: Vec::new(),
        author: principal.organization.clone(),
        index_entries: None,
    };
    let mut content_hash = None;
    if let Some(mut resource) = resource {
        let object = resource.as_object_mut().ok_or_else(|| StoreError::BadRequest("not a JSON object".into()))?;
        object.insert("id".into(), Value::String(key.id.clone()));
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        let meta = meta.as_object_mut().ok_or_else(|| StoreError::BadRequest("meta must be an object".into()))?;
        meta.insert("versionId".into(), Value::String(version_id.to_string()));
        meta.insert("lastUpdated".into(), Value::String(recorded.clone()));
        prepared.identifier_hashes = identifier_hashes(shared, &key.resource_type, &resource);

        let canonical = to_canonical_bytes(&resource);
        let context = SealContext { resource_type: &key.resource_type, id: &key.id, version_id };
        let (sealed_bytes, data_key) = seal::seal(&canonical, context)?;
        let holder = key_holder(&resource);
        if let Some(patient_id) = &holder {
            let patient = ResourceKey { resource_type: "Patient".into(), id: patient_id.clone() };
            if shared.catalog.is_erased(&patient)? {
                return Err(StoreError::Erased(patient));
            }
        }
        let patient = holder.map(|patient_id| shared.secrets.patient_hash(&patient_id));
        let wrapped_key = shared.keyring.read().expect("keyring lock").wrap(&data_key, patient.as_ref(), context)?;
        let (cid, blocks) = blob::file_blocks(&sealed_bytes);
        content_hash = Some(shared.secrets.content_hash(&canonical));
        prepared.blocks = blocks;
        prepared.sealed = Some(SealedLocation { cid, wrapped_key });
        prepared.body = Some(canonical);
        prepared.index_entries = Some(search::extract_indexed(SearchParamTable::r4(), &resource));
    }
    let entry = LedgerEntry {
        author: Some(shared.secrets.author_hash(principal.organization.as_deref())),
        kind,
        resource_type: key.resource_type.clone(),
        pseudonym: shared.secrets.pseudonym(key),
        version_id,
        content_hash,
        cid: prepared.sealed.as_ref().map(|sealed| sealed.cid.to_string()),
        erased: None,
        principal: shared.secrets.principal(principal),
        recorded,
    };
    prepared.leaf = entry.sign(&shared.secrets.signing_key);
    Ok(prepared)
}

/// The patient whose key holds a version's data key: the one patient whose compartment holds it.
/// A version in several patients' compartments (a Group, say) or in none is held by the KEK.
fn key_holder(resource: &Value) -> Option<String> {
    let mut patients = crate::access::facts::compartment_patients(resource);
    (patients.len() == 1).then(|| patients.remove(0))
}

/// Version `version_id` and its content (`None` if it is a deletion or does not exist).
fn prior_content(shared: &Shared, key: &ResourceKey, version_id: u64) -> Result<Option<(StoredVersion, Value)>, StoreError> {
    let record = shared.catalog.version(key, Some(version_id))?;
    let Some(record) = record.filter(|record| !record.is_deletion()) else {
        return Ok(None);
    };
    let version = super::load(shared, key, &record)?;
    let content = version.body.as_deref().and_then(|body| serde_json::from_slice(body).ok());
    Ok(content.map(|content| (version, content)))
}

fn identifier_hashes(shared: &Shared, resource_type: &str, resource: &Value) -> Vec<KeyedHash> {
    let mut hashes = Vec::new();
    for identifier in resource.get("identifier").and_then(Value::as_array).into_iter().flatten() {
        let Some(value) = identifier.get("value").and_then(Value::as_str) else {
            continue;
        };
        let system = identifier.get("system").and_then(Value::as_str).unwrap_or("");
        hashes.push(shared.secrets.identifier_hash(resource_type, Some(system), value));
        hashes.push(shared.secrets.identifier_hash(resource_type, None, value));
    }
    hashes.sort();
    hashes.dedup();
    hashes
}

/// Current resources of `resource_type` matching an `If-None-Exist` condition.
pub(crate) fn condition_matches(
    catalog: &Catalog,
    resource_type: &str,
    id: Option<&str>,
    hashes: &[KeyedHash],
) -> Result<Vec<ResourceKey>, CatalogError> {
    let mut matches = if hashes.is_empty() { Vec::new() } else { catalog.matching_identifiers(resource_type, hashes)? };
    if let Some(id) = id {
        let key = ResourceKey { resource_type: resource_type.to_string(), id: id.to_string() };
        let exists = catalog.current_state(&key)?.is_some_and(|(_, deleted)| !deleted);
        if hashes.is_empty() {
            matches = if exists { vec![key] } else { Vec::new() };
        } else {
            matches.retain(|candidate| *candidate == key);
        }
    }
    Ok(matches)
}

pub(crate) fn start(shared: Arc<Shared>) -> mpsc::Sender<CommitRequest> {
    let (sender, receiver) = mpsc::channel(4 * shared.options.max_group_commit);
    let ticks = sender.downgrade();
    let interval = shared.options.checkpoint_interval;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(sender) = ticks.upgrade() else { break };
            if sender.send(CommitRequest::Tick).await.is_err() {
                break;
            }
        }
    });
    std::thread::Builder::new().name("commit".into()).spawn(move || run(shared, receiver)).expect("the commit thread starts");
    sender
}

struct PendingUnit {
    writes: Vec<(PreparedWrite, Expectation)>,
    reply: Reply,
}

/// How long the commit thread waits for writes still being prepared before it syncs a group
/// without them: one sync (three fdatasyncs) then serves several writes instead of one.
const GROUP_WAIT: Duration = Duration::from_millis(1);
/// How often it looks for them meanwhile.
const GROUP_POLL: Duration = Duration::from_micros(200);

/// What the commit thread has taken from its queue for one group.
#[derive(Default)]
struct Collected {
    units: Vec<PendingUnit>,
    write_count: usize,
    erasures: Vec<super::erasure::ErasureRequest>,
    tick: bool,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Collected {
    fn add(&mut self, request: CommitRequest) {
        match request {
            CommitRequest::Unit { writes, reply } => {
                self.write_count += writes.len();
                self.units.push(PendingUnit { writes, reply });
            }
            CommitRequest::Erase(request) => self.erasures.push(request),
            CommitRequest::Tick => self.tick = true,
            CommitRequest::Shutdown(reply) => self.shutdown = Some(reply),
        }
    }

    fn open(&self, max_group: usize) -> bool {
        self.shutdown.is_none() && self.write_count < max_group
    }
}

fn run(shared: Arc<Shared>, mut receiver: mpsc::Receiver<CommitRequest>) {
    let max_group = shared.options.max_group_commit;
    while let Some(first) = receiver.blocking_recv() {
        let mut collected = Collected::default();
        collected.add(first);
        while collected.open(max_group)
            && let Ok(request) = receiver.try_recv()
        {
            collected.add(request);
        }
        // Writes started but not yet submitted will be ready within a moment: under load, wait
        // for them (never when nothing else is on its way, so a lone write is not delayed).
        let deadline = Instant::now() + GROUP_WAIT;
        while !collected.units.is_empty()
            && collected.open(max_group)
            && shared.writes_in_progress.load(Ordering::SeqCst) > 0
            && Instant::now() < deadline
        {
            match receiver.try_recv() {
                Ok(request) => collected.add(request),
                Err(mpsc::error::TryRecvError::Empty) => std::thread::sleep(GROUP_POLL),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let Collected { units, erasures, tick, shutdown, .. } = collected;
        if !units.is_empty() {
            commit_group(&shared, units);
        }
        for request in erasures {
            super::erasure::commit(&shared, request);
        }
        let checkpointed = shared.ledger.latest_checkpoint().map_or(0, |(tree_size, _)| tree_size);
        let uncovered = shared.ledger.tree_size() - checkpointed;
        let due = uncovered >= shared.options.checkpoint_every_entries || (uncovered > 0 && (tick || shutdown.is_some()));
        if due {
            match shared.ledger.checkpoint() {
                Ok(_) => shared.publish(&CommitEvent::CheckpointSigned { tree_size: shared.ledger.tree_size() }),
                Err(error) => {
                    tracing::error!(%error, "checkpoint failed; refusing further writes");
                    shared.poisoned.store(true, Ordering::SeqCst);
                }
            }
        }
        if (tick || shutdown.is_some())
            && let Err(error) = shared.catalog.sync(shutdown.is_none())
        {
            tracing::error!(%error, "making the catalog store durable failed; refusing further writes");
            shared.poisoned.store(true, Ordering::SeqCst);
        }
        if let Some(reply) = shutdown {
            // Let go of the store before saying so, so `close` can release the data directory.
            drop(shared);
            let _ = reply.send(());
            return;
        }
    }
}

/// A write accepted into this group, as later writes' conditions see it.
struct GroupWrite {
    key: ResourceKey,
    version_id: u64,
    deleted: bool,
    identifier_hashes: Vec<KeyedHash>,
}

/// Checks one write against the catalog and the writes before it (earlier units of the group,
/// earlier writes of its own unit).
fn check(
    catalog: &Catalog,
    earlier: &[GroupWrite],
    prepared: &PreparedWrite,
    expectation: &Expectation,
) -> Result<Option<Refusal>, CatalogError> {
    // Erased since it was prepared: its id, or the patient key it was sealed for.
    let erased_holder = match prepared.sealed.as_ref().map(|sealed| sealed.wrapped_key.holder) {
        Some(KeyHolder::Patient(slot)) => catalog.is_erased_holder(slot)?,
        _ => false,
    };
    let stored = match expectation {
        Expectation::Absent { .. } => Lookup::Absent,
        Expectation::Current { .. } => catalog.lookup(&prepared.key)?,
    };
    if erased_holder || stored == Lookup::Erased {
        return Ok(Some(Refusal::Conflict));
    }
    let in_group = earlier.iter().rev().find(|write| write.key == prepared.key).map(|write| (write.version_id, write.deleted));
    let current = in_group.or(match stored {
        Lookup::Current { version_id, deleted } => Some((version_id, deleted)),
        Lookup::Absent | Lookup::Erased => None,
    });
    Ok(match expectation {
        Expectation::Absent { .. } if current.is_some() => Some(Refusal::Conflict),
        Expectation::Absent { condition: Some((id, hashes)) } => {
            let in_catalog = !condition_matches(catalog, &prepared.key.resource_type, id.as_deref(), hashes)?.is_empty();
            let in_group = earlier.iter().any(|write| {
                write.key.resource_type == prepared.key.resource_type
                    && !write.deleted
                    && id.as_ref().is_none_or(|id| *id == write.key.id)
                    && hashes.iter().all(|hash| write.identifier_hashes.contains(hash))
            });
            (in_catalog || in_group).then_some(Refusal::ConditionMatched)
        }
        Expectation::Absent { condition: None } => None,
        Expectation::Current { base } => (current.map(|(version_id, _)| version_id) != *base).then_some(Refusal::Conflict),
    })
}

fn commit_group(shared: &Shared, units: Vec<PendingUnit>) {
    if shared.poisoned.load(Ordering::SeqCst) {
        for unit in units {
            let _ = unit.reply.send(Err(StoreError::Unavailable("the store stopped accepting writes after a storage failure".into())));
        }
        return;
    }
    let first_leaf_index = shared.ledger.tree_size();
    let mut accepted: Vec<(Vec<PreparedWrite>, Reply)> = Vec::new();
    // Refusals are answered only after the group is published: a conditional create that
    // matched a write of this same group must find that write when it looks it up.
    let mut refused: Vec<(Reply, Result<UnitOutcome, StoreError>)> = Vec::new();
    {
        let mut group: Vec<GroupWrite> = Vec::new();
        for unit in units {
            let group_len = group.len();
            let mut refusal = None;
            for (index, (prepared, expectation)) in unit.writes.iter().enumerate() {
                match check(&shared.catalog, &group, prepared, expectation) {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        refusal = Some(Ok(UnitOutcome::Refused { index, refusal: reason }));
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, "the catalog store could not be read");
                        refusal = Some(Err(StoreError::from(error)));
                        break;
                    }
                }
                group.push(GroupWrite {
                    key: prepared.key.clone(),
                    version_id: prepared.version_id,
                    deleted: prepared.body.is_none(),
                    identifier_hashes: prepared.identifier_hashes.clone(),
                });
            }
            match refusal {
                Some(outcome) => {
                    group.truncate(group_len);
                    refused.push((unit.reply, outcome));
                }
                None => accepted.push((unit.writes.into_iter().map(|(prepared, _)| prepared).collect(), unit.reply)),
            }
        }
    }
    let answer_refused = |refused: Vec<(Reply, Result<UnitOutcome, StoreError>)>| {
        for (reply, outcome) in refused {
            let _ = reply.send(outcome);
        }
    };
    if accepted.is_empty() {
        answer_refused(refused);
        return;
    }
    let mut records: Vec<CatalogRecord> = Vec::new();
    for (writes, _) in &accepted {
        let unit_first_leaf = first_leaf_index + records.len() as u64;
        // A unit of several writes is a transaction: recovery must see all of it or none.
        let transaction_end_leaf = (writes.len() > 1).then_some(unit_first_leaf + writes.len() as u64);
        for prepared in writes {
            records.push(CatalogRecord {
                key: prepared.key.clone(),
                version: VersionRecord {
                    version_id: prepared.version_id,
                    leaf_index: first_leaf_index + records.len() as u64,
                    last_updated: prepared.last_updated,
                    sealed: prepared.sealed.clone(),
                    author: prepared.author.clone(),
                },
                identifier_hashes: prepared.identifier_hashes.clone(),
                transaction_end_leaf,
                erasure: None,
            });
        }
    }
    // Moved, not copied: nothing needs a write's sealed blocks once they are stored.
    let blocks: Vec<Block> =
        accepted.iter_mut().flat_map(|(writes, _)| writes.iter_mut()).flat_map(|prepared| std::mem::take(&mut prepared.blocks)).collect();
    let writes: Vec<&PreparedWrite> = accepted.iter().flat_map(|(writes, _)| writes.iter()).collect();
    let durable =
        append(shared, &blocks, &records).and_then(|catalog_end| make_durable(shared, &writes, first_leaf_index).map(|()| catalog_end));
    drop(writes);
    let catalog_end = match durable {
        Ok(catalog_end) => catalog_end,
        Err(error) => {
            tracing::error!(%error, "storage failure during group commit; refusing further writes");
            shared.poisoned.store(true, Ordering::SeqCst);
            for (_, reply) in accepted {
                let _ = reply.send(Err(StoreError::Unavailable("storage failure: the write was not stored".into())));
            }
            answer_refused(refused);
            return;
        }
    };
    // Visible from here on (only after the ledger fsync), with the version each write replaces
    // in the search index: the current one before it.
    let replaced_leaves = match shared.catalog.apply(&records, catalog_end, false) {
        Ok(replaced) => replaced,
        Err(error) => {
            // Durable in the ledger and the journal: the next start applies them.
            tracing::error!(%error, "the catalog store could not be written; refusing further writes");
            shared.poisoned.store(true, Ordering::SeqCst);
            for (_, reply) in accepted {
                let _ = reply.send(Err(StoreError::Unavailable("storage failure: the write may be visible only after a restart".into())));
            }
            answer_refused(refused);
            return;
        }
    };
    let tree_size = shared.ledger.tree_size();
    {
        let committed: Vec<Committed<'_>> = accepted
            .iter_mut()
            .flat_map(|(writes, _)| writes.iter_mut())
            .zip(replaced_leaves)
            .enumerate()
            .map(|(position, (prepared, replaced_leaf))| Committed {
                key: prepared.key.clone(),
                version_id: prepared.version_id,
                leaf_index: first_leaf_index + position as u64,
                last_updated: prepared.last_updated,
                search_values: prepared.index_entries.take().map(Arc::from),
                body: prepared.body.as_deref(),
                replaced_leaf,
            })
            .collect();
        shared.publish(&CommitEvent::Committed { versions: &committed, tree_size });
    }
    for (writes, reply) in accepted {
        let versions = writes
            .into_iter()
            .map(|prepared| StoredVersion {
                key: prepared.key,
                version_id: prepared.version_id,
                last_updated: prepared.last_updated,
                body: prepared.body,
                author: prepared.author,
            })
            .collect();
        let _ = reply.send(Ok(UnitOutcome::Committed(versions)));
    }
    answer_refused(refused);
}

/// Why a group could not be made durable: the store stops accepting writes.
#[derive(Debug, thiserror::Error)]
enum StorageFailure {
    #[error(transparent)]
    Blob(#[from] blob::BlobError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("patient keys: {0}")]
    PatientKeys(std::io::Error),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("the ledger appended at leaf {appended}, expected {expected}")]
    LedgerOutOfStep { appended: u64, expected: u64 },
}

/// Writes a group's blocks and catalog records (not yet durable); returns where the catalog
/// journal now ends.
fn append(shared: &Shared, blocks: &[Block], records: &[CatalogRecord]) -> Result<u64, StorageFailure> {
    shared.blobs.put_blocks(blocks)?;
    let encoded: Vec<Vec<u8>> = records.iter().map(CatalogRecord::encode).collect();
    shared.catalog_journal.append(&encoded)?;
    Ok(shared.catalog_journal.end())
}

/// Syncs what [`append`] wrote (and new patient keys), then appends the group's ledger leaves
/// and syncs them: the commit point.
fn make_durable(shared: &Shared, writes: &[&PreparedWrite], first_leaf_index: u64) -> Result<(), StorageFailure> {
    shared.blobs.sync()?;
    shared.keyring.read().expect("keyring lock").patients().sync().map_err(StorageFailure::PatientKeys)?;
    shared.catalog_journal.sync()?;
    let leaves: Vec<&[u8]> = writes.iter().map(|prepared| prepared.leaf.as_slice()).collect();
    let appended = shared.ledger.append_durably(&leaves)?;
    if appended != first_leaf_index {
        return Err(StorageFailure::LedgerOutOfStep { appended, expected: first_leaf_index });
    }
    Ok(())
}
