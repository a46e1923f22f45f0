//! Opening a data directory: its layout and lock, and what a start recovers (the crash tails
//! of the ledger and the catalog journal, the catalog store's uncovered records, the search
//! index's catch-up, interrupted erasures); closing it.

use super::*;

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

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("the runtime could not start: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `fhir-gateway reindex`: opens the store (gateway stopped) and rebuilds the search index.
pub fn reindex(data_directory: &Path) -> Result<u64, ReindexError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(ReindexError::Runtime)?;
    runtime.block_on(async {
        let store = ResourceStore::open(data_directory, StoreOptions::default())?;
        let result = store.reindex();
        store.close().await;
        Ok(result?)
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
        let search = indexer::SearchIndex::new(index, crate::search::terms::TermEncoder::new(secrets.search_key()));
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
        *shared.indexer.lock().expect("indexer lock") = Some(indexer::start_indexer(Arc::downgrade(&shared)));
        shared.subscribe(shared.consents.clone());
        shared.subscribe(Arc::new(indexer::IndexFeed(Arc::downgrade(&shared))));
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
}
