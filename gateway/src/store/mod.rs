//! The versioned resource store: the write path (validate, canonicalise, seal, store by CID,
//! anchor in the ledger, durable before the answer) and the verified read path.
//!
//! Writes are prepared in the caller's task (CPU work in parallel) and committed by one commit
//! thread ([`commit`]) in groups that share their fsyncs. Reads go straight to the catalog, the
//! blob store and the ledger, and check every link: bytes against CID, AEAD tag against the
//! binding, plaintext against the ledger entry's keyed hash.

pub mod catalog;
mod commit;
mod compact;
pub mod consents;
mod erasure;
pub mod events;
mod indexer;
mod open;
mod read;
use read::{history_of, load};
pub(crate) mod recovery;
mod rotate;
pub mod search;
mod secrets;
mod transaction;
mod write;
pub(crate) use write::{check_if_match, new_resource_id, single, validate};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::blob::{self, BlobStore, Cid, EmbeddedBlockstore};
use crate::consent::Interaction;
use crate::fhir::{self, Issue, Leniency};
use crate::journal::{Journal, JournalError};
use crate::ledger::{EntryKind, LedgerEntry, LedgerError, LedgerLog};
use crate::seal::{self, Keyring, SealContext};
use catalog::{Catalog, CatalogRecord, KeyedHash, ResourceKey, VersionRecord};
use commit::{CommitRequest, Expectation, PreparedWrite, Refusal, UnitOutcome};
pub use compact::{CompactError, CompactSummary, compact};
pub use erasure::PurgeOutcome;
pub(crate) use open::lock_data_directory;
pub use open::{DataLayout, OpenError, ReindexError, reindex};
pub use rotate::{RotateError, RotateSummary, rotate_keys};
pub use secrets::LedgerSecrets;
pub use transaction::{EntryOutcome, TransactionError};

/// How many times a plain update re-prepares after losing a race before answering 409.
const MAX_UPDATE_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The checkpoint origin line; defaults to `localhost/fhir-gateway/<key id>`.
    pub ledger_origin: Option<String>,
    pub checkpoint_every_entries: u64,
    pub checkpoint_interval: Duration,
    /// Most writes committed together by one group commit.
    pub max_group_commit: usize,
    /// Threads tantivy indexes with (see `TantivyIndex::open`).
    pub indexing_threads: usize,
    /// The catalog's memory (`--cache-mb`): its B-tree page cache and cache of current
    /// versions, however many records it holds.
    pub catalog_cache_bytes: usize,
}

/// The default of `--cache-mb`.
pub const DEFAULT_CACHE_MB: usize = 64;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ledger_origin: None,
            checkpoint_every_entries: 1000,
            checkpoint_interval: Duration::from_millis(1000),
            max_group_commit: 512,
            indexing_threads: 1,
            catalog_cache_bytes: DEFAULT_CACHE_MB << 20,
        }
    }
}

/// Who submits a write: recorded pseudonymously in the ledger (`name`), by organisation in the
/// catalog (`organization`, the author the consent rule "an organisation reads the records it
/// wrote, for treatment" compares with), and checked by `guard` on the final content of every
/// write, after transaction references are resolved and before anything is sealed.
#[derive(Clone)]
pub struct Principal {
    /// An authenticated identity (e.g. issuer and `sub`); recorded only as a keyed hash.
    pub name: Option<String>,
    /// The writer's organisation, e.g. `Organization/x`.
    pub organization: Option<String>,
    pub guard: Arc<dyn WriteGuard>,
}

impl Principal {
    /// The local operator (command line, tests): every write the store accepts is allowed.
    pub fn operator(name: &str, organization: Option<&str>) -> Principal {
        Principal { name: Some(name.to_string()), organization: organization.map(str::to_string), guard: Arc::new(Unrestricted) }
    }
}

/// Decides whether a principal may make one write. Implemented by `access::Access`.
pub trait WriteGuard: Send + Sync {
    /// Whether [`WriteGuard::check`] needs the content being replaced or deleted.
    fn wants_prior(&self) -> bool;
    /// `Err(reason)` refuses the write (`403`). `before`: the current content, if wanted and the
    /// resource exists; `after`: the new content (`None` for a delete).
    fn check(&self, kind: EntryKind, key: &ResourceKey, before: Option<&Value>, after: Option<&Value>) -> Result<(), String>;
    /// Whether the principal may see `version` (content `content`): conditional matches,
    /// conditional references and Bundle reads consider only what it may see, and a resource it
    /// may not see it may not update or delete.
    fn sees(&self, version: &StoredVersion, content: &Value) -> bool;
    /// How a write to a resource the principal may not see is refused: exactly as its read of
    /// that resource would be (by default as an unknown id).
    fn hidden(&self) -> StoreError {
        StoreError::NotFound
    }
}

/// Decides whether a principal may see one version. Search and history apply it before they
/// count and page, so totals and page sizes reveal nothing about what it hides.
pub trait ReadGuard: Sync {
    /// `resource` is the version's content; for a deletion, the content it deleted.
    fn admits(&self, interaction: Interaction, version: &StoredVersion, resource: &Value) -> bool;

    /// The same decision for a stored version (not a deletion) from what the guard already
    /// knows about it, without its content; `None` when it would need the content. A search
    /// counting many candidates asks this first.
    fn admits_known(&self, _interaction: Interaction, _key: &ResourceKey, _version_id: u64) -> Option<bool> {
        None
    }
}

/// The [`WriteGuard`] of the local operator.
pub struct Unrestricted;

impl WriteGuard for Unrestricted {
    fn wants_prior(&self) -> bool {
        false
    }

    fn check(&self, _: EntryKind, _: &ResourceKey, _: Option<&Value>, _: Option<&Value>) -> Result<(), String> {
        Ok(())
    }

    fn sees(&self, _: &StoredVersion, _: &Value) -> bool {
        true
    }
}

/// The resources a condition matches, as a principal sees them.
pub(crate) struct Matches {
    /// The current versions of the matches the principal may see.
    pub(crate) visible: Vec<StoredVersion>,
    /// Some matches are hidden from the principal: they are neither returned nor counted,
    /// and must not stop a create either (that would reveal them).
    pub(crate) hidden: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the resource is not valid")]
    Invalid(Vec<Issue>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("resource not found")]
    NotFound,
    #[error("resource deleted (version {0})")]
    Gone(u64),
    #[error("{}/{} was erased", .0.resource_type, .0.id)]
    Erased(ResourceKey),
    #[error("version conflict: the resource was changed concurrently")]
    VersionConflict,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("write refused: {0}")]
    Unavailable(String),
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<JournalError> for StoreError {
    fn from(error: JournalError) -> Self {
        StoreError::Internal(error.to_string())
    }
}

impl From<catalog::CatalogError> for StoreError {
    fn from(error: catalog::CatalogError) -> Self {
        StoreError::Internal(error.to_string())
    }
}

impl From<LedgerError> for StoreError {
    fn from(error: LedgerError) -> Self {
        StoreError::Internal(error.to_string())
    }
}

impl From<seal::SealError> for StoreError {
    fn from(error: seal::SealError) -> Self {
        StoreError::Internal(error.to_string())
    }
}

/// One version as read back and verified.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub key: ResourceKey,
    pub version_id: u64,
    pub last_updated: OffsetDateTime,
    /// The canonical resource bytes; `None` for a deletion.
    pub body: Option<Vec<u8>>,
    /// The organisation that wrote this version (see [`Principal::organization`]).
    pub author: Option<String>,
}

#[derive(Debug)]
pub struct WriteOutcome {
    pub version: StoredVersion,
    /// The write created the resource (or revived a deleted one).
    pub created: bool,
}

#[derive(Debug)]
pub enum CreateOutcome {
    Created(WriteOutcome),
    /// `If-None-Exist` matched exactly this resource; nothing was written.
    Existing(StoredVersion),
}

/// An `If-None-Exist` condition: all parts must match.
#[derive(Debug, Clone, Default)]
pub struct CreateCondition {
    pub id: Option<String>,
    pub identifiers: Vec<IdentifierQuery>,
}

impl CreateCondition {
    /// Parses `identifier=system|value&_id=...` (an optional `Type?` prefix is ignored). Only
    /// `identifier` and `_id` are supported; anything else is refused rather than ignored.
    pub fn parse(query: &str) -> Result<CreateCondition, String> {
        let query = query.split_once('?').map_or(query, |(_, query)| query);
        let mut condition = CreateCondition::default();
        for (name, value) in crate::fhir::query::pairs(query) {
            match name.as_str() {
                "_id" => condition.id = Some(value),
                "identifier" => condition.identifiers.push(match value.split_once('|') {
                    Some((_, "")) => {
                        return Err("identifier=system| (any value) is not supported".into());
                    }
                    Some((system, value)) => IdentifierQuery { system: Some(system.to_string()), value: value.to_string() },
                    None => IdentifierQuery { system: None, value },
                }),
                other => {
                    return Err(format!("parameter '{other}' is not supported (supported: identifier, _id)"));
                }
            }
        }
        if condition.id.is_none() && condition.identifiers.is_empty() {
            return Err("the condition is empty".into());
        }
        Ok(condition)
    }
}

/// `identifier=system|value` (`system: Some`), `|value` (`Some("")`), or `value` (`None`: any system).
#[derive(Debug, Clone)]
pub struct IdentifierQuery {
    pub system: Option<String>,
    pub value: String,
}

pub struct HistoryPage {
    pub versions: Vec<StoredVersion>,
    /// Pass back to get the next (older) page.
    pub next_cursor: Option<u64>,
}

pub(crate) struct Shared {
    blobs: Arc<dyn BlobStore>,
    ledger: LedgerLog,
    catalog: Catalog,
    catalog_journal: Journal,
    keyring: RwLock<Keyring>,
    secrets: LedgerSecrets,
    poisoned: AtomicBool,
    options: StoreOptions,
    search: indexer::SearchIndex,
    /// Current Consents by patient, for the consent decision.
    consents: Arc<consents::ConsentDirectory>,
    /// Where the index feed sends published versions for indexing, and the indexer thread.
    indexer: std::sync::Mutex<Option<indexer::Indexer>>,
    /// Who follows the commit event stream ([`events`]), called in this order.
    subscribers: RwLock<Vec<Arc<dyn events::Subscriber>>>,
    /// Writes started (validating, preparing) and not yet submitted to the commit thread, which
    /// waits a moment for them so that one sync serves more writes ([`InProgress`]).
    writes_in_progress: AtomicUsize,
    /// Held while the store is open: one process per data directory.
    _lock: std::fs::File,
}

impl Shared {
    fn subscribe(&self, subscriber: Arc<dyn events::Subscriber>) {
        self.subscribers.write().expect("subscribers lock").push(subscriber);
    }

    /// Tells every subscriber (the commit thread, in ledger order).
    fn publish(&self, event: &events::CommitEvent<'_>) {
        for subscriber in self.subscribers.read().expect("subscribers lock").iter() {
            subscriber.on_commit(event);
        }
    }
}

/// Held by a write from its start until it is submitted to the commit thread (or fails), counted
/// in [`Shared::writes_in_progress`].
pub(crate) struct InProgress<'s> {
    count: &'s AtomicUsize,
    held: AtomicBool,
}

impl<'s> InProgress<'s> {
    fn enter(count: &'s AtomicUsize) -> InProgress<'s> {
        count.fetch_add(1, Ordering::SeqCst);
        InProgress { count, held: AtomicBool::new(true) }
    }

    /// The write is submitted (a retry after a conflict no longer counts).
    fn release(&self) {
        if self.held.swap(false, Ordering::SeqCst) {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[derive(Clone)]
pub struct ResourceStore {
    shared: Arc<Shared>,
    commits: mpsc::Sender<CommitRequest>,
}

impl ResourceStore {
    /// Follows the commit event stream from now on (after the store's own subscribers).
    pub fn subscribe(&self, subscriber: Arc<dyn events::Subscriber>) {
        self.shared.subscribe(subscriber);
    }

    /// The current Consents by patient (updated before a Consent write is acknowledged).
    pub fn consent_directory(&self) -> Arc<consents::ConsentDirectory> {
        Arc::clone(&self.shared.consents)
    }

    /// Opens the audit trail beside the ledger (`<data>/audit/`), its checkpoints signed with the
    /// ledger key under the origin `<ledger origin>/audit`.
    pub fn open_audit_trail(
        &self,
        data_directory: &Path,
        durability: crate::audit::Durability,
    ) -> Result<crate::audit::AuditTrail, crate::audit::AuditError> {
        let origin = format!("{}/audit", self.shared.ledger.origin());
        crate::audit::AuditTrail::open(
            &DataLayout::new(data_directory).audit(),
            self.shared.secrets.signing_key.clone(),
            &origin,
            durability,
        )
    }

    pub fn ledger(&self) -> &LedgerLog {
        &self.shared.ledger
    }

    pub fn is_accepting_writes(&self) -> bool {
        !self.shared.poisoned.load(Ordering::SeqCst)
    }

    /// The health of each part of the store that can fail on its own: `(component, Err(why))`.
    pub fn health(&self) -> [(&'static str, Result<(), String>); 2] {
        let writes = if self.is_accepting_writes() { Ok(()) } else { Err("writes are refused after a storage failure".to_string()) };
        [("store", writes), ("search", self.shared.search.health())]
    }
}

/// A fresh, empty directory for one store test (`<tmp>/fg-store-<name>-<pid>`).
#[cfg(test)]
pub(crate) fn fresh_test_directory(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("fg-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::blob::{BlobError, Block, Cid};

    /// An embedded blockstore whose `sync` fails once `failing` is set, like a disk gone bad.
    struct FailingBlobStore {
        inner: EmbeddedBlockstore,
        failing: AtomicBool,
    }

    impl BlobStore for FailingBlobStore {
        fn put_blocks(&self, blocks: &[Block]) -> Result<(), BlobError> {
            self.inner.put_blocks(blocks)
        }
        fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, BlobError> {
            self.inner.get_block(cid)
        }
        fn sync(&self) -> Result<(), BlobError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(BlobError::Io(std::io::Error::other("simulated fsync failure (EIO)")));
            }
            self.inner.sync()
        }
        fn cids(&self) -> Result<Vec<Cid>, BlobError> {
            self.inner.cids()
        }
        fn remove_blocks(&self, cids: &[Cid]) -> Result<(), BlobError> {
            self.inner.remove_blocks(cids)
        }
    }

    /// A second process must not touch the files before it finds the directory locked: the
    /// first may be in the middle of an append, which looks like a crash tail.
    #[tokio::test]
    async fn a_locked_directory_is_left_untouched() {
        let directory = fresh_test_directory("locked");
        let store = ResourceStore::open(&directory, StoreOptions::default()).unwrap();
        let principal = Principal::operator("test", None);
        assert!(store.create(patient(), &principal, Leniency::Strict, None).await.is_ok());
        let pack = DataLayout::new(&directory).blocks().join("blocks.pack");
        let half_written = std::fs::metadata(&pack).unwrap().len() + 3;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .map(|mut file| std::io::Write::write_all(&mut file, b"\x07\0\0"))
            .unwrap()
            .unwrap();
        assert!(matches!(ResourceStore::open(&directory, StoreOptions::default()), Err(OpenError::Locked(_))));
        assert_eq!(std::fs::metadata(&pack).unwrap().len(), half_written);
        store.close().await;
        drop(store);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    fn patient() -> Value {
        serde_json::json!({ "resourceType": "Patient", "gender": "female" })
    }

    /// Records what it is told, as text.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl events::Subscriber for Recorder {
        fn on_commit(&self, event: &events::CommitEvent<'_>) {
            let line = match event {
                events::CommitEvent::Committed { versions, tree_size } => {
                    let versions: Vec<String> = versions
                        .iter()
                        .map(|version| format!("{}/{}@{}", version.key.resource_type, version.version_id, version.leaf_index))
                        .collect();
                    format!("committed {} -> {tree_size}", versions.join(" "))
                }
                events::CommitEvent::PatientErased { erasure, leaf_index } => format!("erased {} @{leaf_index}", erasure.resources.len()),
                events::CommitEvent::CheckpointSigned { tree_size } => format!("checkpoint {tree_size}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    /// Every commit reaches the subscribers in ledger order, before the writer is answered:
    /// versions, an erasure, checkpoints.
    #[tokio::test]
    async fn subscribers_see_every_commit_in_ledger_order_before_the_answer() {
        let directory = fresh_test_directory("events");
        let store = ResourceStore::open(&directory, StoreOptions::default()).unwrap();
        let recorder = Arc::new(Recorder::default());
        store.subscribe(recorder.clone());
        let principal = Principal::operator("test", None);
        let CreateOutcome::Created(created) = store.create(patient(), &principal, Leniency::Strict, None).await.unwrap() else {
            panic!("created")
        };
        assert_eq!(recorder.0.lock().unwrap().as_slice(), ["committed Patient/1@0 -> 1"], "told before the answer");
        let key = created.version.key;
        let mut updated = patient();
        updated["id"] = key.id.clone().into();
        store.update(&key, updated, &principal, Leniency::Strict, None).await.unwrap();
        store.purge(&key, &principal).await.unwrap();
        store.close().await;
        let lines = recorder.0.lock().unwrap().clone();
        assert_eq!(lines[1], "committed Patient/2@1 -> 2");
        assert_eq!(lines[2], "erased 1 @2");
        assert_eq!(lines.last().unwrap(), "checkpoint 3", "{lines:?}");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[tokio::test]
    async fn an_fsync_failure_acknowledges_nothing_and_stops_writes() {
        let directory = fresh_test_directory("fsync");
        let blobs = Arc::new(FailingBlobStore {
            inner: EmbeddedBlockstore::open(&DataLayout::new(&directory).blocks(), &[]).unwrap(),
            failing: AtomicBool::new(false),
        });
        let opened = blobs.clone();
        let store = ResourceStore::open_with_blob_store(&directory, StoreOptions::default(), |_, _| Ok(opened)).unwrap();
        let principal = Principal::operator("test", None);
        let CreateOutcome::Created(kept) = store.create(patient(), &principal, Leniency::Strict, None).await.unwrap() else {
            panic!("created")
        };

        blobs.failing.store(true, Ordering::SeqCst);
        let failed = store.create(patient(), &principal, Leniency::Strict, None).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        assert!(!store.is_accepting_writes());
        assert_eq!(store.ledger().tree_size(), 1, "the failed write never reached the ledger");

        // Even once the disk is back, the store refuses writes until restarted (and recovered).
        blobs.failing.store(false, Ordering::SeqCst);
        let refused = store.create(patient(), &principal, Leniency::Strict, None).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
        // Reads of acknowledged data still work.
        assert_eq!(store.read(&kept.version.key).unwrap().body, kept.version.body);
        store.close().await;
        drop(store);
        drop(blobs);

        let reopened = ResourceStore::open(&directory, StoreOptions::default()).unwrap();
        assert_eq!(reopened.ledger().tree_size(), 1);
        assert_eq!(reopened.read(&kept.version.key).unwrap().body, kept.version.body);
        assert!(reopened.is_accepting_writes());
        reopened.close().await;
        drop(reopened);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// A snapshot of a live data directory, as a crash could leave it. The indexer may replace
    /// index files meanwhile: one that vanishes mid-copy is simply not in the snapshot (the index
    /// is derived state, rebuilt at open if incomplete).
    fn copy_directory(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            let copied = match entry.file_type() {
                Ok(kind) if kind.is_dir() => {
                    copy_directory(&entry.path(), &target);
                    Ok(0)
                }
                Ok(_) => std::fs::copy(entry.path(), &target),
                Err(error) => Err(error),
            };
            match copied {
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                other => {
                    other.unwrap();
                }
            }
        }
    }

    /// A crash after some, not all, of a transaction's ledger entries reached the disk: at open the
    /// whole transaction is gone, and nothing of it can be read.
    #[tokio::test]
    async fn a_partially_durable_transaction_is_rolled_back_whole() {
        use crate::fhir::bundle::parse_bundle;
        let directory = fresh_test_directory("tx");
        let crashed = directory.with_extension("crashed");
        let _ = std::fs::remove_dir_all(&crashed);
        let options = StoreOptions { checkpoint_interval: Duration::from_secs(3600), ..StoreOptions::default() };
        let store = ResourceStore::open(&directory, options.clone()).unwrap();
        let principal = Principal::operator("test", None);
        let CreateOutcome::Created(before) = store.create(patient(), &principal, Leniency::Strict, None).await.unwrap() else {
            panic!("created")
        };
        let entries = (0..3)
            .map(|_| serde_json::json!({ "resource": patient(), "request": { "method": "POST", "url": "Patient" } }))
            .collect::<Vec<_>>();
        let bundle =
            parse_bundle(serde_json::json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries }), "", 10).unwrap();
        let outcomes = store.transaction(bundle.entries, &principal, Leniency::Strict).await.unwrap();
        assert_eq!(outcomes.len(), 3);
        assert_eq!(store.ledger().tree_size(), 4);

        // The files as a crash could leave them: the last ledger frame never reached the disk.
        copy_directory(&directory, &crashed);
        let entries_log = crashed.join("ledger/entries.log");
        let mut offsets = Vec::new();
        crate::journal::scan(&entries_log, |offset, _| offsets.push(offset)).unwrap();
        std::fs::OpenOptions::new().write(true).open(&entries_log).unwrap().set_len(offsets[3]).unwrap();
        std::fs::remove_file(crashed.join("LOCK")).unwrap();

        let recovered = ResourceStore::open(&crashed, options).unwrap();
        assert_eq!(recovered.ledger().tree_size(), 1, "the transaction's two durable entries were cut too");
        assert!(recovered.read(&before.version.key).is_ok());
        for (_, outcome) in outcomes {
            let EntryOutcome::Written { version, .. } = outcome else { panic!("written") };
            assert!(matches!(recovered.read(&version.key), Err(StoreError::NotFound)));
        }
        // And it keeps working.
        assert!(recovered.create(patient(), &principal, Leniency::Strict, None).await.is_ok());
        recovered.close().await;
        store.close().await;
        drop(recovered);
        drop(store);
        std::fs::remove_dir_all(&directory).unwrap();
        std::fs::remove_dir_all(&crashed).unwrap();
    }
}
