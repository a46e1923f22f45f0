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
pub(crate) mod recovery;
mod rotate;
pub mod search;
mod secrets;
mod transaction;

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
pub use rotate::rotate_keys;
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
    search: search::SearchIndex,
    /// Current Consents by patient, for the consent decision.
    consents: Arc<consents::ConsentDirectory>,
    /// Where the index feed sends published versions for indexing, and the indexer thread.
    indexer: std::sync::Mutex<Option<search::Indexer>>,
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

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Keyring(#[from] seal::KeyringError),
    #[error(transparent)]
    Blob(#[from] blob::BlobError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Catalog(#[from] recovery::CatalogDamage),
    #[error(transparent)]
    CatalogStore(#[from] catalog::CatalogError),
    #[error("{0}")]
    Format(String),
    #[error("search index: {0}")]
    Index(String),
    #[error("finishing an interrupted erasure: {0}")]
    Erasure(String),
    #[error("the data directory {0} is in use by another fhir-gateway process")]
    Locked(PathBuf),
}

/// The files of a data directory.
pub struct DataLayout {
    pub root: PathBuf,
}

impl DataLayout {
    pub fn new(root: &Path) -> Self {
        DataLayout { root: root.to_path_buf() }
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn blocks(&self) -> PathBuf {
        self.root.join("blocks")
    }
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger")
    }
    pub fn catalog(&self) -> PathBuf {
        self.root.join("records").join("catalog.log")
    }
    /// The catalog's lookup store, derived from `catalog.log` (see [`catalog`]).
    pub fn catalog_store(&self) -> PathBuf {
        self.root.join("records").join("catalog.redb")
    }
    pub fn audit(&self) -> PathBuf {
        self.root.join("audit")
    }

    pub fn search_index(&self) -> PathBuf {
        self.root.join("index")
    }
}

/// `fhir-gateway reindex`: opens the store (gateway stopped) and rebuilds the search index.
pub fn reindex(data_directory: &Path) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let store = ResourceStore::open(data_directory, StoreOptions::default()).map_err(|error| error.to_string())?;
        let result = store.reindex().map_err(|error| error.to_string());
        store.close().await;
        result
    })
}

/// Refuses a ledger written before entries bound the author (`author`, see `ledger::entry`):
/// its versions' authors, which the consent decision relies on, cannot be checked.
fn check_entry_format(layout: &DataLayout, first_leaf: &[u8]) -> Result<(), OpenError> {
    match LedgerEntry::parse(first_leaf) {
        Ok(entry) if entry.author.is_none() => Err(OpenError::Format(format!(
            "{}: the ledger was written by an older fhir-gateway (entries without an author binding); \
             this version cannot check who wrote its versions and does not open it",
            layout.ledger().join("entries.log").display()
        ))),
        _ => Ok(()),
    }
}

/// Takes the exclusive lock on `<data>/LOCK` (released when the file is dropped or the process dies).
pub(crate) fn lock_data_directory(layout: &DataLayout) -> Result<std::fs::File, OpenError> {
    std::fs::create_dir_all(&layout.root).map_err(|source| OpenError::Journal(JournalError::Io { path: layout.root.clone(), source }))?;
    let path = layout.root.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Journal(JournalError::Io { path: path.clone(), source }))?;
    file.try_lock().map_err(|_| OpenError::Locked(layout.root.clone()))?;
    Ok(file)
}

impl ResourceStore {
    /// Opens the data directory (creating it on first start) and starts the commit thread.
    /// Must be called inside a Tokio runtime.
    pub fn open(data_directory: &Path, options: StoreOptions) -> Result<ResourceStore, OpenError> {
        ResourceStore::open_with_blob_store(data_directory, options, |layout, acknowledged_roots| {
            Ok(Arc::new(EmbeddedBlockstore::open(&layout.blocks(), acknowledged_roots)?) as Arc<dyn BlobStore>)
        })
    }

    /// Opens with another blob store (Kubo, or a failing one in tests), which `open_blobs` opens
    /// once the directory is locked, given the root CIDs of every acknowledged write (opening
    /// the pack may cut a crash tail that none of them needs: never under a running gateway).
    ///
    /// Every file is checked before anything is cut, so a refusal leaves the directory as it was.
    pub fn open_with_blob_store(
        data_directory: &Path,
        options: StoreOptions,
        open_blobs: impl FnOnce(&DataLayout, &[Cid]) -> Result<Arc<dyn BlobStore>, OpenError>,
    ) -> Result<ResourceStore, OpenError> {
        let layout = DataLayout::new(data_directory);
        let lock = lock_data_directory(&layout)?;
        let keyring = Keyring::open_or_create(&layout.keys())?;
        let secrets = LedgerSecrets::open_or_create(&layout.keys())?;
        let origin = options.ledger_origin.clone().unwrap_or_else(|| secrets.default_origin());
        let ledger = LedgerLog::recover(&layout.ledger(), secrets.signing_key.clone(), &origin)?;
        if let Some(first_leaf) = ledger.first_leaf() {
            check_entry_format(&layout, first_leaf)?;
        }
        let catalog_path = layout.catalog();
        // Read without changing the store (a refused start changes no file), unless a crash
        // left it needing repair.
        let (repaired, (first_leaf, catalog_start)) = match Catalog::peek_marker(&layout.catalog_store())? {
            Some(marker) => (None, marker),
            None => {
                let catalog = Catalog::open(&layout.catalog_store(), options.catalog_cache_bytes)?;
                let marker = catalog.marker()?;
                (Some(catalog), marker)
            }
        };
        let journal_len = std::fs::metadata(&catalog_path).map_or(0, |metadata| metadata.len());
        if journal_len < catalog_start {
            let reason = format!("it ends before offset {catalog_start}, where the records its store holds end");
            return Err(recovery::CatalogDamage { path: catalog_path, offset: journal_len, reason }.into());
        }
        let mut records: Vec<(u64, CatalogRecord)> = Vec::new();
        let mut undecodable = None;
        let catalog_journal = Journal::recover_from(&catalog_path, catalog_start, |offset, bytes| match CatalogRecord::decode(bytes) {
            Ok(record) => records.push((offset, record)),
            Err(reason) => {
                undecodable.get_or_insert(recovery::CatalogDamage { path: catalog_path.clone(), offset, reason });
            }
        })?;
        if let Some(damage) = undecodable {
            return Err(damage.into());
        }
        let readable_end =
            catalog_journal.crash_tail().unwrap_or_else(|| std::fs::metadata(&catalog_path).map_or(0, |metadata| metadata.len()));
        let plan = recovery::plan(&recovery::Scanned {
            catalog_path: &catalog_path,
            first_leaf,
            records: &records,
            readable_end,
            tree_size: ledger.tree_size(),
            checkpointed: ledger.checkpointed(),
        })?;
        records.truncate(plan.kept_records);
        // The blocks of versions the catalog store covers were synced before its marker; those of
        // the tail are checked. Erased blobs are removed (or about to be, if a crash interrupted
        // the erasure; an erased resource gets no later record).
        let erased: std::collections::HashSet<&ResourceKey> =
            records.iter().filter_map(|(_, record)| record.erasure.as_ref()).flat_map(|erasure| &erasure.resources).collect();
        let acknowledged_roots: Vec<Cid> = records
            .iter()
            .filter(|(_, record)| !erased.contains(&record.key))
            .filter_map(|(_, record)| record.version.sealed.as_ref().map(|sealed| sealed.cid))
            .collect();
        drop(erased);
        let blobs = open_blobs(&layout, &acknowledged_roots)?;
        drop(acknowledged_roots);

        // Checked: now cut what was never acknowledged.
        std::fs::create_dir_all(layout.root.join("records"))
            .map_err(|source| OpenError::Journal(JournalError::Io { path: layout.root.join("records"), source }))?;
        let catalog = match repaired {
            Some(catalog) => catalog,
            None => Catalog::open(&layout.catalog_store(), options.catalog_cache_bytes)?,
        };
        let ledger = ledger.open()?;
        let catalog_journal = catalog_journal.open()?;
        if let Some(cut_leaf) = plan.ledger_cut {
            tracing::warn!(cut_leaf, "dropping a transaction only partly in the ledger: it was never acknowledged");
            ledger.truncate(cut_leaf)?;
        }
        if let Some(offset) = plan.catalog_cut {
            tracing::warn!(offset, "dropping catalog records of writes the ledger never acknowledged");
            catalog_journal.truncate(offset)?;
        }
        if first_leaf == 0 && !records.is_empty() {
            tracing::info!(records = records.len(), "filling the catalog store from the catalog journal");
        }
        // Applied in chunks, each marked with the offset of the record after it.
        let journal_end = catalog_journal.end();
        let mut chunk = Vec::new();
        let mut records = records.into_iter().peekable();
        while let Some((_, record)) = records.next() {
            chunk.push(record);
            let next_offset = records.peek().map(|(offset, _)| *offset);
            if chunk.len() == 10_000 || next_offset.is_none() {
                catalog.apply(&chunk, next_offset.unwrap_or(journal_end), false)?;
                chunk.clear();
            }
        }
        catalog.apply(&[], journal_end, true)?;
        let erasures = catalog.erasures()?;

        let index = crate::search::index::TantivyIndex::open(&layout.search_index(), options.indexing_threads)
            .map_err(|error| OpenError::Index(error.to_string()))?;
        let search = search::SearchIndex::new(index, crate::search::terms::TermEncoder::new(secrets.search_key()));
        let shared = Arc::new(Shared {
            blobs,
            ledger,
            catalog,
            catalog_journal,
            keyring: RwLock::new(keyring),
            secrets,
            poisoned: AtomicBool::new(false),
            options,
            search,
            consents: Arc::default(),
            indexer: std::sync::Mutex::new(None),
            subscribers: RwLock::new(Vec::new()),
            writes_in_progress: AtomicUsize::new(0),
            _lock: lock,
        });
        let consent_source: std::sync::Weak<dyn consents::ConsentSource> = Arc::downgrade(&shared) as std::sync::Weak<Shared>;
        shared.consents.read_from(consent_source);
        shared.ledger.checkpoint()?;
        *shared.indexer.lock().expect("indexer lock") = Some(search::start_indexer(Arc::downgrade(&shared)));
        shared.subscribe(shared.consents.clone());
        shared.subscribe(Arc::new(search::IndexFeed(Arc::downgrade(&shared))));
        let commits = commit::start(shared.clone());
        let store = ResourceStore { shared, commits };
        let caught_up = store.catch_up_index().map_err(|error| OpenError::Index(error.to_string()))?;
        if caught_up > 0 {
            tracing::info!(resources = caught_up, "search index caught up with the ledger");
        }
        let resumed = erasure::resume(&store.shared, &erasures).map_err(|error| OpenError::Erasure(error.to_string()))?;
        if resumed > 0 {
            tracing::warn!(erasures = resumed, "finished erasures a crash had interrupted");
        }
        Ok(store)
    }

    /// Commits everything submitted so far, issues a final checkpoint, stops the commit thread,
    /// then stops the indexer: it publishes what it has applied and leaves the rest of its queue
    /// to the catch-up at the next open (shutdown does not wait for a search-index backlog).
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commits.send(CommitRequest::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
        let indexer = self.shared.indexer.lock().expect("indexer lock").take();
        if let Some((sender, thread)) = indexer {
            self.shared.search.stop();
            drop(sender);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

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

    // ---- writes ----

    /// Creates a resource under a new server-assigned id (an `id` in the body is ignored, as
    /// FHIR requires), unless `condition` matches an existing one.
    pub async fn create(
        &self,
        mut resource: Value,
        principal: &Principal,
        leniency: Leniency,
        condition: Option<&CreateCondition>,
    ) -> Result<CreateOutcome, StoreError> {
        let in_progress = self.in_progress();
        validate(&resource, leniency)?;
        let resource_type = resource_type_of(&resource)?;
        let condition_hashes = match condition {
            Some(condition) => {
                let hashes = self.condition_hashes(&resource_type, condition);
                let matches = self.matching(&resource_type, condition.id.as_deref(), &hashes, principal)?;
                if let Some(existing) = single("If-None-Exist", matches.visible)? {
                    return Ok(CreateOutcome::Existing(existing));
                }
                // A hidden match must not turn the create into a conflict (that would reveal it).
                (!matches.hidden).then(|| (condition.id.clone(), hashes))
            }
            None => None,
        };
        if let Some(object) = resource.as_object_mut() {
            object.remove("id");
        }
        let key = ResourceKey { resource_type, id: new_resource_id()? };
        let prepared = commit::prepare(&self.shared, &key, Some(resource), 1, EntryKind::Create, principal)?;
        let expectation = Expectation::Absent { condition: condition_hashes.clone() };
        match self.submit(prepared, expectation, &in_progress).await? {
            Ok(version) => Ok(CreateOutcome::Created(WriteOutcome { version, created: true })),
            Err(Refusal::ConditionMatched) => {
                let (id, hashes) = condition_hashes.unwrap_or_default();
                let matches = self.matching(&key.resource_type, id.as_deref(), &hashes, principal)?;
                match single("If-None-Exist", matches.visible)? {
                    Some(existing) => Ok(CreateOutcome::Existing(existing)),
                    None => Err(StoreError::VersionConflict),
                }
            }
            Err(Refusal::Conflict) => Err(StoreError::VersionConflict),
        }
    }

    /// Updates (or creates, with the client's id) a resource. `if_match` is the version the
    /// client last saw (`If-Match: W/"n"`).
    pub async fn update(
        &self,
        key: &ResourceKey,
        resource: Value,
        principal: &Principal,
        leniency: Leniency,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, StoreError> {
        let in_progress = self.in_progress();
        validate(&resource, leniency)?;
        if resource_type_of(&resource)? != key.resource_type {
            return Err(StoreError::BadRequest(format!("the resource's resourceType does not match the URL's type {}", key.resource_type)));
        }
        match resource.get("id").and_then(Value::as_str) {
            Some(id) if id == key.id => {}
            Some(_) => {
                return Err(StoreError::BadRequest("the resource's id does not match the id in the URL".into()));
            }
            None => {
                return Err(StoreError::BadRequest("an update must carry the resource's id in the body".into()));
            }
        }
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            self.refuse_erased(key)?;
            let current = self.current_state(key)?;
            check_if_match(if_match, current)?;
            let version_id = current.map_or(1, |(version_id, _)| version_id + 1);
            let kind = if current.is_some_and(|(_, deleted)| !deleted) { EntryKind::Update } else { EntryKind::Create };
            let prepared = commit::prepare(&self.shared, key, Some(resource.clone()), version_id, kind, principal)?;
            let expectation = Expectation::Current { base: current.map(|(version_id, _)| version_id) };
            match self.submit(prepared, expectation, &in_progress).await? {
                Ok(version) => {
                    return Ok(WriteOutcome { version, created: kind == EntryKind::Create });
                }
                Err(Refusal::Conflict) if if_match.is_some() => {
                    return Err(StoreError::PreconditionFailed("the resource was changed since the version named in If-Match".into()));
                }
                Err(_) => continue,
            }
        }
        Err(StoreError::VersionConflict)
    }

    /// Deletes a resource (a new version marks it deleted). Returns the deletion's version id,
    /// or `None` if it was already deleted.
    pub async fn delete(&self, key: &ResourceKey, principal: &Principal) -> Result<Option<u64>, StoreError> {
        let in_progress = self.in_progress();
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            self.refuse_erased(key)?;
            let Some((version_id, deleted)) = self.current_state(key)? else {
                return Err(StoreError::NotFound);
            };
            if deleted {
                return Ok(None);
            }
            let prepared = commit::prepare(&self.shared, key, None, version_id + 1, EntryKind::Delete, principal)?;
            let expectation = Expectation::Current { base: Some(version_id) };
            if let Ok(version) = self.submit(prepared, expectation, &in_progress).await? {
                return Ok(Some(version.version_id));
            }
        }
        Err(StoreError::VersionConflict)
    }

    /// Erases a patient's records (`Patient/$purge`, see [`erasure`]): every version of the
    /// Patient and of every resource its key holds. Returns once nothing of them is readable
    /// and their key, index documents and sealed blocks are gone.
    pub async fn purge(&self, patient: &ResourceKey, principal: &Principal) -> Result<PurgeOutcome, StoreError> {
        if patient.resource_type != "Patient" {
            return Err(StoreError::BadRequest("$purge erases a Patient's records".into()));
        }
        let (reply, answer) = oneshot::channel();
        let request = erasure::ErasureRequest {
            patient: patient.clone(),
            principal: self.shared.secrets.principal(principal),
            author: principal.organization.clone(),
            reply,
        };
        let shutting_down = || StoreError::Unavailable("the gateway is shutting down".into());
        self.commits.send(CommitRequest::Erase(request)).await.map_err(|_| shutting_down())?;
        let (recorded, outcome) = answer.await.map_err(|_| shutting_down())??;
        // The indexer applies the erasure's deletions before the segments holding them are merged.
        self.wait_for_index()?;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || erasure::finish(&shared, &recorded))
            .await
            .map_err(|error| StoreError::Internal(error.to_string()))??;
        Ok(outcome)
    }

    /// Counts a write as started until it is submitted (see [`Shared::writes_in_progress`]).
    pub(crate) fn in_progress(&self) -> InProgress<'_> {
        InProgress::enter(&self.shared.writes_in_progress)
    }

    /// Commits writes all together or not at all.
    pub(crate) async fn submit_unit(
        &self,
        writes: Vec<(PreparedWrite, Expectation)>,
        in_progress: &InProgress<'_>,
    ) -> Result<UnitOutcome, StoreError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the store stopped accepting writes after a storage failure".into()));
        }
        let (reply, answer) = oneshot::channel();
        let sent = self.commits.send(CommitRequest::Unit { writes, reply }).await;
        in_progress.release();
        sent.map_err(|_| StoreError::Unavailable("the gateway is shutting down".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the gateway is shutting down".into()))?
    }

    /// Commits one write: its version, or why it was refused.
    async fn submit(
        &self,
        prepared: PreparedWrite,
        expectation: Expectation,
        in_progress: &InProgress<'_>,
    ) -> Result<Result<StoredVersion, Refusal>, StoreError> {
        match self.submit_unit(vec![(prepared, expectation)], in_progress).await? {
            UnitOutcome::Committed(mut versions) => Ok(Ok(versions.pop().expect("one version per write"))),
            UnitOutcome::Refused { refusal, .. } => Ok(Err(refusal)),
        }
    }

    /// `Erased` for an erased resource: its id is never used again.
    pub(crate) fn refuse_erased(&self, key: &ResourceKey) -> Result<(), StoreError> {
        match self.shared.catalog.is_erased(key)? {
            true => Err(StoreError::Erased(key.clone())),
            false => Ok(()),
        }
    }

    /// (current version id, deleted?) of a resource, if it has any version.
    pub(crate) fn current_state(&self, key: &ResourceKey) -> Result<Option<(u64, bool)>, StoreError> {
        Ok(self.shared.catalog.current_state(key)?)
    }

    pub(crate) fn condition_hashes(&self, resource_type: &str, condition: &CreateCondition) -> Vec<KeyedHash> {
        condition
            .identifiers
            .iter()
            .map(|query| self.shared.secrets.identifier_hash(resource_type, query.system.as_deref(), &query.value))
            .collect()
    }

    /// The current resources of `resource_type` with id `id` (if given) and every identifier
    /// hash, split by what `principal` may see.
    pub(crate) fn matching(
        &self,
        resource_type: &str,
        id: Option<&str>,
        hashes: &[KeyedHash],
        principal: &Principal,
    ) -> Result<Matches, StoreError> {
        let keys = commit::condition_matches(&self.shared.catalog, resource_type, id, hashes)?;
        let mut matches = Matches { visible: Vec::new(), hidden: false };
        for key in keys {
            let version = self.read(&key)?;
            let content = version.body.as_deref().and_then(|body| serde_json::from_slice::<Value>(body).ok());
            if content.is_some_and(|content| principal.guard.sees(&version, &content)) {
                matches.visible.push(version);
            } else {
                matches.hidden = true;
            }
        }
        Ok(matches)
    }

    // ---- reads ----

    /// The current version; `Gone` if the newest version is a deletion.
    pub fn read(&self, key: &ResourceKey) -> Result<StoredVersion, StoreError> {
        let version = version_of(&self.shared.catalog, key, None)?;
        if version.is_deletion() {
            return Err(StoreError::Gone(version.version_id));
        }
        self.load(key, &version)
    }

    /// One version; `Gone` if that version is a deletion.
    pub fn vread(&self, key: &ResourceKey, version_id: u64) -> Result<StoredVersion, StoreError> {
        let version = version_of(&self.shared.catalog, key, Some(version_id))?;
        if version.is_deletion() {
            return Err(StoreError::Gone(version.version_id));
        }
        self.load(key, &version)
    }

    /// Versions of one resource that `guard` admits, newest first, below version `before_version`.
    pub fn instance_history(
        &self,
        key: &ResourceKey,
        before_version: Option<u64>,
        since: Option<OffsetDateTime>,
        count: usize,
        guard: &dyn ReadGuard,
    ) -> Result<HistoryPage, StoreError> {
        let candidates: Vec<(ResourceKey, VersionRecord)> = history_of(&self.shared.catalog, key)?
            .versions
            .into_iter()
            .rev()
            .filter(|version| before_version.is_none_or(|bound| version.version_id < bound))
            .filter(|version| since.is_none_or(|since| version.last_updated >= since))
            .map(|version| (key.clone(), version))
            .collect();
        let (versions, more) = self.admitted(candidates, count, Interaction::History, guard)?;
        let next_cursor = more.then(|| versions.last().map(|version| version.version_id)).flatten();
        Ok(HistoryPage { versions, next_cursor })
    }

    /// Versions of every resource of a type that `guard` admits, newest first, committed
    /// before ledger leaf `before_leaf`.
    pub fn type_history(
        &self,
        resource_type: &str,
        before_leaf: Option<u64>,
        since: Option<OffsetDateTime>,
        count: usize,
        guard: &dyn ReadGuard,
    ) -> Result<HistoryPage, StoreError> {
        const BATCH: usize = 256;
        let mut page: Vec<(u64, StoredVersion)> = Vec::with_capacity(count + 1);
        let mut bound = before_leaf;
        while page.len() <= count && count > 0 {
            let mut reached_since = false;
            let mut entries = Vec::with_capacity(BATCH);
            self.shared.catalog.type_history(resource_type, bound, |leaf, id, version_id| {
                entries.push((leaf, ResourceKey { resource_type: resource_type.to_string(), id: id.to_string() }, version_id));
                entries.len() < BATCH
            })?;
            let exhausted = entries.len() < BATCH;
            let next_bound = entries.last().map(|(leaf, _, _)| *leaf).or(bound);
            let mut batch: Vec<(ResourceKey, VersionRecord)> = Vec::with_capacity(entries.len());
            for (_, key, version_id) in entries {
                let Some(version) = self.shared.catalog.version(&key, Some(version_id))? else { continue };
                if since.is_some_and(|since| version.last_updated < since) {
                    reached_since = true;
                    break;
                }
                batch.push((key, version));
            }
            let exhausted = reached_since || exhausted;
            bound = next_bound;
            for (key, record) in batch {
                let leaf_index = record.leaf_index;
                if let Some(version) = self.admit(&key, &record, Interaction::History, guard)? {
                    page.push((leaf_index, version));
                    if page.len() > count {
                        break;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        let more = page.len() > count;
        page.truncate(count);
        let next_cursor = more.then(|| page.last().map(|(leaf_index, _)| *leaf_index)).flatten();
        Ok(HistoryPage { versions: page.into_iter().map(|(_, version)| version).collect(), next_cursor })
    }

    /// The first `count` of `candidates` that `guard` admits, and whether more were admitted.
    fn admitted(
        &self,
        candidates: Vec<(ResourceKey, VersionRecord)>,
        count: usize,
        interaction: Interaction,
        guard: &dyn ReadGuard,
    ) -> Result<(Vec<StoredVersion>, bool), StoreError> {
        let mut page = Vec::with_capacity(count.min(candidates.len()));
        for (key, record) in candidates {
            if let Some(version) = self.admit(&key, &record, interaction, guard)? {
                if page.len() == count {
                    return Ok((page, true));
                }
                page.push(version);
            }
        }
        Ok((page, false))
    }

    /// Loads one version if `guard` admits it; a deletion is judged by the content it deleted.
    fn admit(
        &self,
        key: &ResourceKey,
        record: &VersionRecord,
        interaction: Interaction,
        guard: &dyn ReadGuard,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let version = self.load(key, record)?;
        let admitted = match &version.body {
            Some(body) => serde_json::from_slice::<Value>(body).is_ok_and(|content| guard.admits(interaction, &version, &content)),
            None => self
                .deleted_content(key, record.version_id)?
                .is_some_and(|(deleted, content)| guard.admits(interaction, &deleted, &content)),
        };
        Ok(admitted.then_some(version))
    }

    /// What the deletion `version_id` deleted: the newest earlier version with content, and
    /// that content.
    pub fn deleted_content(&self, key: &ResourceKey, version_id: u64) -> Result<Option<(StoredVersion, Value)>, StoreError> {
        let mut prior = None;
        for earlier in (1..version_id).rev() {
            match self.shared.catalog.version(key, Some(earlier))? {
                Some(version) if !version.is_deletion() => {
                    prior = Some(version);
                    break;
                }
                Some(_) => continue,
                None => break,
            }
        }
        let Some(prior) = prior else { return Ok(None) };
        let version = self.load(key, &prior)?;
        let content = version.body.as_deref().and_then(|body| serde_json::from_slice(body).ok());
        Ok(content.map(|content| (version, content)))
    }

    fn load(&self, key: &ResourceKey, version: &VersionRecord) -> Result<StoredVersion, StoreError> {
        load(&self.shared, key, version)
    }
}

/// Fills the consent directory from the current version of every Consent.
impl consents::ConsentSource for Shared {
    fn consents_in_compartment(&self, patient: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let hash = self.secrets.patient_hash(patient);
        let Some(slot) = self.keyring.read().expect("keyring lock").patients().slot_of(&hash)? else {
            return Ok(Vec::new());
        };
        let mut bodies = Vec::new();
        for key in self.catalog.held_of_type(slot, "Consent")? {
            if let Some(version) = self.catalog.current(&key)?.filter(|version| !version.is_deletion()) {
                bodies.extend(load(self, &key, &version)?.body);
            }
        }
        Ok(bodies)
    }
}

/// Fetches, checks and unseals one version. Any broken link is an integrity error, logged with
/// pseudonymous names only.
fn load(shared: &Shared, key: &ResourceKey, version: &VersionRecord) -> Result<StoredVersion, StoreError> {
    let pseudonym = shared.secrets.pseudonym(key);
    let integrity = |what: &str| {
        tracing::error!(pseudonym = %pseudonym, version_id = version.version_id, leaf_index = version.leaf_index, problem = what, "integrity check failed on read");
        StoreError::Integrity(what.to_string())
    };
    let leaf = shared.ledger.read_leaf(version.leaf_index).map_err(|_| integrity("ledger entry unreadable"))?;
    let entry = LedgerEntry::parse(&leaf).map_err(|_| integrity("ledger entry malformed"))?;
    if entry.pseudonym != pseudonym || entry.version_id != version.version_id || entry.resource_type != key.resource_type {
        return Err(integrity("ledger entry names another record"));
    }
    if entry.author.as_deref() != Some(shared.secrets.author_hash(version.author.as_deref()).as_str()) {
        return Err(integrity("ledger entry names another author"));
    }
    let body = match &version.sealed {
        None => {
            if entry.kind != EntryKind::Delete {
                return Err(integrity("ledger entry is not a deletion"));
            }
            None
        }
        Some(sealed) => {
            if entry.cid.as_deref() != Some(sealed.cid.to_string().as_str()) {
                return Err(integrity("ledger entry names another CID"));
            }
            let sealed_bytes = blob::read_file(shared.blobs.as_ref(), &sealed.cid)
                .map_err(|_| integrity("sealed blob missing or does not match its CID"))?;
            let context = SealContext { resource_type: &key.resource_type, id: &key.id, version_id: version.version_id };
            let data_key = shared
                .keyring
                .read()
                .expect("keyring lock")
                .unwrap(&sealed.wrapped_key, context)
                .map_err(|_| integrity("data key does not unwrap"))?;
            let plaintext = seal::unseal(&sealed_bytes, &data_key, context).map_err(|_| integrity("sealed blob does not open"))?;
            if entry.content_hash.as_deref() != Some(shared.secrets.content_hash(&plaintext).as_str()) {
                return Err(integrity("plaintext does not match the ledger entry"));
            }
            Some(plaintext)
        }
    };
    Ok(StoredVersion {
        key: key.clone(),
        version_id: version.version_id,
        last_updated: version.last_updated,
        body,
        author: version.author.clone(),
    })
}

/// A resource's versions: `NotFound` if it has none, `Erased` if it was erased.
fn history_of(catalog: &Catalog, key: &ResourceKey) -> Result<catalog::ResourceHistory, StoreError> {
    match catalog.get(key)? {
        Some(history) => Ok(history),
        None if catalog.is_erased(key)? => Err(StoreError::Erased(key.clone())),
        None => Err(StoreError::NotFound),
    }
}

/// One version (`None`: the current one): `NotFound` if there is no such version, `Erased` if
/// the resource was erased.
fn version_of(catalog: &Catalog, key: &ResourceKey, version_id: Option<u64>) -> Result<VersionRecord, StoreError> {
    match catalog.version(key, version_id)? {
        Some(version) => Ok(version),
        None if catalog.is_erased(key)? => Err(StoreError::Erased(key.clone())),
        None => Err(StoreError::NotFound),
    }
}

/// At most one match: `None`, the one, or `412` naming how many the caller can see.
pub(crate) fn single(condition: &str, mut visible: Vec<StoredVersion>) -> Result<Option<StoredVersion>, StoreError> {
    match visible.len() {
        0 | 1 => Ok(visible.pop()),
        count => Err(StoreError::PreconditionFailed(format!("{condition} matches {count} resources; at most one may match"))),
    }
}

pub(crate) fn validate(resource: &Value, leniency: Leniency) -> Result<(), StoreError> {
    let issues = fhir::validate_resource(resource, leniency);
    if issues.iter().any(Issue::is_error) {
        return Err(StoreError::Invalid(issues));
    }
    Ok(())
}

fn resource_type_of(resource: &Value) -> Result<String, StoreError> {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| StoreError::BadRequest("resourceType is missing".into()))
}

pub(crate) fn check_if_match(if_match: Option<u64>, current: Option<(u64, bool)>) -> Result<(), StoreError> {
    match (if_match, current) {
        (None, _) => Ok(()),
        (Some(expected), Some((version_id, _))) if expected == version_id => Ok(()),
        (Some(expected), Some((version_id, _))) => {
            Err(StoreError::PreconditionFailed(format!("If-Match names version {expected} but the current version is {version_id}")))
        }
        (Some(_), None) => Err(StoreError::PreconditionFailed("If-Match given but the resource does not exist".into())),
    }
}

/// A server-assigned id: a random (version 4) UUID, so ids reveal nothing and cannot be guessed.
pub(crate) fn new_resource_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| StoreError::Internal("random source failed".into()))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = secrets::hex(&bytes);
    Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
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
