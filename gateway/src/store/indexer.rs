//! The search index's lifecycle: the indexer thread (a subscriber of the commit event stream,
//! fed off the commit thread through a bounded queue), its catch-up at open and whenever it
//! fell behind, its rebuild when damaged, and `reindex`. The queries are in `search.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;

use super::catalog::{ResourceKey, VersionRecord};
use super::events::{CommitEvent, Subscriber};
use super::{ResourceStore, Shared, StoreError};
use crate::search::index::{IndexDocument, IndexError, TantivyIndex};
use crate::search::terms::TermEncoder;
use crate::search::{IndexEntry, IndexValue, SearchParamTable, extract_indexed};

/// How long a search waits for the index to catch up before answering 503.
const FRESHNESS_WAIT: Duration = Duration::from_secs(10);

/// A version the indexer must apply: its search values, extracted where the resource was
/// parsed anyway (`None`: the resource is deleted).
pub(crate) struct IndexJob {
    pub key: ResourceKey,
    pub leaf_index: u64,
    pub last_updated_ms: i64,
    pub entries: Option<Arc<[IndexEntry]>>,
    /// Leaves of the resource's earlier versions whose documents the index may hold.
    pub replaced_leaves: Vec<u64>,
}

/// The index and how far it has got.
pub(crate) struct SearchIndex {
    pub index: TantivyIndex,
    pub encoder: TermEncoder,
    /// Number of ledger leaves covered by the last index commit (all versions below this leaf
    /// are searchable).
    covered: Mutex<u64>,
    covered_changed: Condvar,
    /// The largest tree size a waiting search needs: while it exceeds `covered`, the indexer
    /// publishes after every batch instead of every [`PUBLISH_INTERVAL`].
    wanted: AtomicU64,
    /// Set by `close`: the indexer publishes what it has applied and stops without draining
    /// its queue (the next open catches up from the last commit).
    stopping: AtomicBool,
    /// Cleared when the indexer thread ends (by `close`, or after a failure).
    running: AtomicBool,
    pub failures: AtomicU64,
    /// A rebuild has been asked for and not finished.
    rebuilding: AtomicBool,
    /// What the commit thread has handed the indexer and it has not applied yet.
    queue: QueueBudget,
    /// Set while the indexer is behind: events from this leaf on were let go (the queue was
    /// full), and whether the catch-up request reached the indexer.
    behind: Mutex<Option<(u64, bool)>>,
}

impl SearchIndex {
    pub fn new(index: TantivyIndex, encoder: TermEncoder) -> SearchIndex {
        let covered = index.indexed_leaf().map_or(0, |leaf| leaf + 1);
        SearchIndex {
            index,
            encoder,
            covered: Mutex::new(covered),
            covered_changed: Condvar::new(),
            wanted: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            running: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            rebuilding: AtomicBool::new(false),
            queue: QueueBudget::new(),
            behind: Mutex::new(None),
        }
    }

    /// Hands the indexer a published group without ever waiting: if the queue's budget has no
    /// room (the indexer is slow), the group is let go and the indexer is asked to catch up from
    /// the store from its first leaf instead; until it has, later groups are let go too.
    /// `bytes` are the group's stored bytes; the indexer gives them back once it has applied
    /// the group (or here, if it is gone).
    fn hand_over(&self, indexer: &std::sync::mpsc::SyncSender<IndexMessage>, jobs: Vec<IndexJob>, tree_size: u64, bytes: usize) {
        let first_leaf = jobs.iter().map(|job| job.leaf_index).min().unwrap_or(tree_size);
        let mut behind = self.behind.lock().expect("behind lock");
        if behind.is_none() && self.queue.try_take(bytes) {
            if let Err(
                std::sync::mpsc::TrySendError::Full(IndexMessage::Jobs(_, _, bytes))
                | std::sync::mpsc::TrySendError::Disconnected(IndexMessage::Jobs(_, _, bytes)),
            ) = indexer.try_send(IndexMessage::Jobs(jobs, tree_size, bytes))
            {
                self.queue.give(bytes);
                *behind = Some((first_leaf, false));
            }
        } else if behind.is_none() {
            *behind = Some((first_leaf, false));
        }
        Self::ask_to_catch_up(&mut behind, indexer);
    }

    /// Sends the pending catch-up request, if one is pending and the queue takes it.
    fn ask_to_catch_up(behind: &mut Option<(u64, bool)>, indexer: &std::sync::mpsc::SyncSender<IndexMessage>) {
        if let Some((from, sent @ false)) = behind
            && indexer.try_send(IndexMessage::CatchUp(*from)).is_ok()
        {
            *sent = true;
        }
    }

    /// `Err` naming the failure while the index is not being kept up to date.
    pub fn health(&self) -> Result<(), String> {
        if !(self.running.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst)) {
            Err("the search indexer stopped; searches answer 503 until restart".into())
        } else if self.rebuilding.load(Ordering::SeqCst) {
            Err("the search index is being rebuilt from the store (after damage or a failure); searches answer 503 until it is done".into())
        } else {
            Ok(())
        }
    }

    pub fn covered(&self) -> u64 {
        *self.covered.lock().expect("covered lock")
    }

    fn set_covered(&self, tree_size: u64) {
        let mut covered = self.covered.lock().expect("covered lock");
        if tree_size > *covered {
            *covered = tree_size;
        }
        self.covered_changed.notify_all();
    }

    fn publish_wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst) > self.covered()
    }

    /// Waits (bounded) until the index covers `tree_size` leaves; `wake` nudges the indexer.
    fn wait_for(&self, tree_size: u64, wake: impl Fn()) -> bool {
        let covered = self.covered.lock().expect("covered lock");
        if *covered >= tree_size {
            return true;
        }
        self.wanted.fetch_max(tree_size, Ordering::SeqCst);
        drop(covered);
        wake();
        let covered = self.covered.lock().expect("covered lock");
        let (covered, _) =
            self.covered_changed.wait_timeout_while(covered, FRESHNESS_WAIT, |covered| *covered < tree_size).expect("covered lock");
        *covered >= tree_size
    }

    /// The index document of one resource version, from its search values ([`extract`]).
    pub fn document(&self, key: &ResourceKey, leaf_index: u64, last_updated_ms: i64, entries: &[IndexEntry]) -> IndexDocument {
        let sort_date_ms = entries
            .iter()
            .filter(|entry| entry.param == "birthdate" || entry.param == "date")
            .filter_map(|entry| match entry.value {
                IndexValue::Date { start_ms, .. } => Some(start_ms),
                _ => None,
            })
            .min();
        let terms = self.encoder.document_terms(&key.resource_type, entries);
        IndexDocument {
            key: format!("{}/{}", key.resource_type, key.id),
            resource_type: key.resource_type.clone(),
            leaf_index,
            last_updated_ms,
            sort_date_ms,
            terms,
        }
    }

    /// Hands a batch of jobs to the index writer (searchable after the next [`Self::publish`]).
    fn add(&self, jobs: &[IndexJob]) -> Result<(), IndexError> {
        for job in jobs {
            let document = job.entries.as_deref().map(|entries| self.document(&job.key, job.leaf_index, job.last_updated_ms, entries));
            self.index.replace(&job.replaced_leaves, document.as_ref())?;
        }
        Ok(())
    }

    /// Commits what was added; `tree_size` is the ledger size it brings the index to.
    fn publish(&self, tree_size: u64) -> Result<(), IndexError> {
        self.index.commit(tree_size.saturating_sub(1))?;
        self.set_covered(tree_size);
        Ok(())
    }

    fn failed(&self, error: &IndexError) {
        // The index is derived state: a failure here costs freshness, never data.
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "search index update failed; searches will wait, then answer 503");
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Adds a batch of jobs and publishes at once (catch-up and reindex).
    pub fn apply(&self, jobs: &[IndexJob], tree_size: u64) {
        if let Err(error) = self.add(jobs).and_then(|()| self.publish(tree_size)) {
            self.failed(&error);
        }
    }
}

/// The search values of a stored resource's bytes.
fn index_entries(body: &[u8]) -> Option<Arc<[IndexEntry]>> {
    serde_json::from_slice::<Value>(body).ok().map(|resource| Arc::from(extract_indexed(SearchParamTable::r4(), &resource)))
}

/// The search index's subscription to the commit event stream: every event becomes index jobs
/// handed to the indexer thread without waiting ([`SearchIndex::hand_over`]).
pub(crate) struct IndexFeed(pub(crate) Weak<Shared>);

impl Subscriber for IndexFeed {
    fn on_commit(&self, event: &CommitEvent<'_>) {
        let Some(shared) = self.0.upgrade() else { return };
        let (jobs, tree_size, bytes): (Vec<IndexJob>, u64, usize) = match event {
            CommitEvent::Committed { versions, tree_size } => (
                versions
                    .iter()
                    .map(|version| IndexJob {
                        key: version.key.clone(),
                        leaf_index: version.leaf_index,
                        last_updated_ms: (version.last_updated.unix_timestamp_nanos() / 1_000_000) as i64,
                        entries: version.search_values.clone(),
                        replaced_leaves: version.replaced_leaf.into_iter().collect(),
                    })
                    .collect(),
                *tree_size,
                versions.iter().map(|version| version.body.map_or(0, <[u8]>::len)).sum(),
            ),
            CommitEvent::PatientErased { erasure, leaf_index } => match super::erasure::index_jobs(&shared, erasure, *leaf_index) {
                Ok(jobs) => (jobs, leaf_index + 1, 0),
                Err(error) => {
                    // Reads refuse the erased resources whatever the index holds; the next start
                    // deletes their documents (`erasure::resume`).
                    tracing::error!(%error, "the erasure's index documents could not be listed");
                    return;
                }
            },
            CommitEvent::CheckpointSigned { .. } => return,
        };
        // Cloned so that the indexer lock is not held while handing over.
        let sender = shared.indexer.lock().expect("indexer lock").as_ref().map(|(sender, _)| sender.clone());
        if let Some(sender) = sender {
            shared.search.hand_over(&sender, jobs, tree_size, bytes);
        }
    }
}

/// What the commit thread (and a waiting search) sends the indexer.
pub(crate) enum IndexMessage {
    /// Published versions, the ledger size after them, and their stored bytes (taken from
    /// [`SearchIndex::queue`]).
    Jobs(Vec<IndexJob>, u64, usize),
    /// A search is waiting: publish what has been added.
    Publish,
    /// A query found the index damaged: rebuild it from the store ([`rebuild`]).
    Rebuild,
    /// Events from this leaf on were let go: index what changed since from the store.
    CatchUp(u64),
}

/// The commit thread's handle on the indexer: where to send published versions, and the thread.
pub(crate) type Indexer = (std::sync::mpsc::SyncSender<IndexMessage>, std::thread::JoinHandle<()>);

/// Published groups the index queue may hold.
const INDEX_QUEUE: usize = 1024;

/// Stored bytes of the versions the index queue may hold (their search values take a few times
/// that). Past it the commit thread lets groups go and the indexer catches up from the store
/// (the commit event stream never waits for a subscriber): bounded memory, yet
/// deep enough for the ~100 ms a tantivy commit keeps the indexer busy under small writes (a
/// queue of 4 groups stalled every writer meanwhile: 8-9 % idle CPU under 32 clients; about
/// 1 MB of creates arrive in 100 ms). 16 MiB took 20 concurrent 4 MB Bundles to 306-312 MB.
const INDEX_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// What the index queue holds, in stored bytes of its versions.
pub(crate) struct QueueBudget {
    /// Bytes queued; `None` once the indexer has stopped (nothing waits for it then).
    used: Mutex<Option<usize>>,
    freed: Condvar,
}

impl QueueBudget {
    fn new() -> QueueBudget {
        QueueBudget { used: Mutex::new(Some(0)), freed: Condvar::new() }
    }

    /// Takes `bytes` if they fit now (a group larger than the whole budget fits an empty
    /// queue); never waits.
    fn try_take(&self, bytes: usize) -> bool {
        let mut used = self.used.lock().expect("index queue lock");
        match used.as_mut() {
            Some(used) if *used > 0 && *used + bytes > INDEX_QUEUE_BYTES => false,
            Some(used) => {
                *used += bytes;
                true
            }
            None => false,
        }
    }

    fn give(&self, bytes: usize) {
        if let Some(used) = self.used.lock().expect("index queue lock").as_mut() {
            *used = used.saturating_sub(bytes);
        }
        self.freed.notify_all();
    }

    fn close(&self) {
        *self.used.lock().expect("index queue lock") = None;
        self.freed.notify_all();
    }
}

/// Closes the index queue's budget when the indexer thread ends, also by a panic: the commit
/// thread must never wait for room from an indexer that is gone.
struct CloseQueueOnExit(Weak<Shared>);

impl Drop for CloseQueueOnExit {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.search.running.store(false, Ordering::SeqCst);
            shared.search.queue.close();
        }
    }
}

/// How often the indexer commits while nobody searches. A tantivy commit writes and syncs a
/// segment (and later merges it): committing per write group cost more than the writes.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the indexer thread; the commit thread sends `(jobs, tree_size)` after each publish.
/// The thread holds the store only weakly (the store holds the sender): it ends with the store.
pub(crate) fn start_indexer(shared: Weak<Shared>) -> Indexer {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<IndexMessage>(INDEX_QUEUE);
    let thread = std::thread::Builder::new()
        .name("indexer".into())
        .spawn(move || {
            let _close = CloseQueueOnExit(shared.clone());
            // Tree size reached by the jobs added but not yet published.
            let mut added: Option<u64> = None;
            // Leaves below this are in the index since a rebuild (0: none).
            let mut rebuilt_below = 0u64;
            let mut last_publish = std::time::Instant::now();
            loop {
                let timeout = PUBLISH_INTERVAL.saturating_sub(last_publish.elapsed());
                let message = match receiver.recv_timeout(timeout) {
                    Ok(message) => Some(message),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let search = &shared.search;
                if search.stopping.load(Ordering::SeqCst) {
                    break;
                }
                // After a failure the index is rebuilt from the store (the failed batch is lost to
                // it, and a later commit must not claim it), retrying until it works.
                let mut failure = None;
                if let Some(IndexMessage::Rebuild) = message {
                    match rebuild(&shared) {
                        Ok(through) => {
                            rebuilt_below = through;
                            added = None;
                            last_publish = std::time::Instant::now();
                        }
                        Err(error) => failure = Some(error),
                    }
                }
                if let Some(IndexMessage::CatchUp(from)) = message {
                    match catch_up(&shared, from) {
                        Ok(through) => {
                            rebuilt_below = rebuilt_below.max(through);
                            added = Some(added.map_or(through, |added| added.max(through)));
                        }
                        Err(error) => failure = Some(error),
                    }
                }
                if let Some(IndexMessage::Jobs(mut jobs, tree_size, bytes)) = message {
                    // Versions the rebuild read from the catalog (or newer ones) are indexed.
                    jobs.retain(|job| job.leaf_index >= rebuilt_below);
                    let added_jobs = search.add(&jobs);
                    drop(jobs);
                    search.queue.give(bytes);
                    match added_jobs {
                        Ok(()) => added = Some(tree_size),
                        Err(error) => failure = Some(error),
                    }
                }
                let due = last_publish.elapsed() >= PUBLISH_INTERVAL || search.publish_wanted();
                if let (true, Some(tree_size), None) = (due, added, &failure) {
                    added = None;
                    if let Err(error) = search.publish(tree_size) {
                        failure = Some(error);
                    }
                    last_publish = std::time::Instant::now();
                } else if due {
                    last_publish = std::time::Instant::now();
                }
                if let Some(error) = failure {
                    search.failed(&error);
                    match recover(&shared, &receiver) {
                        Some(through) => {
                            rebuilt_below = through;
                            added = None;
                            last_publish = std::time::Instant::now();
                        }
                        None => break,
                    }
                }
            }
            // Stopping: publish what was added (cheap), leave the queue to the next catch-up
            // (`_close` then releases the commit thread).
            if let (Some(tree_size), Some(shared)) = (added, shared.upgrade())
                && let Err(error) = shared.search.publish(tree_size)
            {
                shared.search.failed(&error);
            }
        })
        .expect("the indexer thread starts");
    (sender, thread)
}

/// After the index failed (a full disk, no file descriptors left, damage): rebuilds it from the
/// store, waiting longer after each failed attempt (0.1 s doubling up to 30 s). Meanwhile the
/// published groups that arrive are let go (the rebuild reads their versions from the catalog),
/// so writers never wait for the index; searches answer 503 and `/healthz` names the index until
/// it is back. `Some(leaf)`: rebuilt, every version below `leaf` is in it; `None`: stopping.
fn recover(shared: &Shared, receiver: &std::sync::mpsc::Receiver<IndexMessage>) -> Option<u64> {
    let search = &shared.search;
    search.rebuilding.store(true, Ordering::SeqCst);
    let mut backoff = Duration::from_millis(100);
    loop {
        let until = std::time::Instant::now() + backoff;
        loop {
            match receiver.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                Ok(IndexMessage::Jobs(_, _, bytes)) => search.queue.give(bytes),
                // The rebuild reads everything a catch-up would.
                Ok(IndexMessage::CatchUp(_)) => *search.behind.lock().expect("behind lock") = None,
                Ok(IndexMessage::Publish | IndexMessage::Rebuild) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        if search.stopping.load(Ordering::SeqCst) {
            return None;
        }
        match rebuild(shared) {
            Ok(through) => return Some(through),
            Err(error) => {
                search.failed(&error);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Indexes again every resource with a version at or after leaf `from` (events of them were let
/// go while the indexer was behind), as the catalog has them now. Clears the behind mark first,
/// so that groups committed meanwhile are handed over again. Returns the leaf below which every
/// version is covered: queued jobs of those versions are skipped.
fn catch_up(shared: &Shared, from: u64) -> Result<u64, IndexError> {
    *shared.search.behind.lock().expect("behind lock") = None;
    let through = shared.catalog.marker().map_err(|error| IndexError::Store(error.to_string()))?.0.max(from);
    let keys = shared.catalog.touched_since(from).map_err(|error| IndexError::Store(error.to_string()))?;
    tracing::info!(from, through, resources = keys.len(), "the search indexer fell behind; catching up from the store");
    for chunk in keys.chunks(5_000) {
        let jobs: Vec<IndexJob> = chunk.iter().filter_map(|key| job_from_store(shared, key)).collect();
        shared.search.add(&jobs)?;
    }
    Ok(through)
}

/// The job that brings a resource's index document to its current version, read from the store
/// (`None`: it cannot be read now; a read of it fails too, and is logged there).
fn job_from_store(shared: &Shared, key: &ResourceKey) -> Option<IndexJob> {
    let versions: Vec<VersionRecord> = shared.catalog.get(key).ok()??.versions;
    let current = versions.last()?;
    let replaced_leaves = versions.iter().filter(|version| !version.is_deletion()).map(|version| version.leaf_index).collect();
    let entries = match current.is_deletion() {
        true => None,
        false => super::load(shared, key, current).ok()?.body.as_deref().and_then(index_entries),
    };
    Some(IndexJob {
        key: key.clone(),
        leaf_index: current.leaf_index,
        last_updated_ms: (current.last_updated.unix_timestamp_nanos() / 1_000_000) as i64,
        entries,
        replaced_leaves,
    })
}

/// Rebuilds a damaged index from the store, on the indexer thread, so that no job is applied
/// meanwhile: clears it, then indexes the current version of every resource as the catalog has
/// it now. Returns the leaf below which every version is covered: jobs of those versions (queued
/// before the catalog was read) are then skipped, later ones apply as usual. Searches wait, then
/// answer 503, until it is done.
fn rebuild(shared: &Shared) -> Result<u64, IndexError> {
    let search = &shared.search;
    tracing::warn!("rebuilding the search index from the store");
    *search.covered.lock().expect("covered lock") = 0;
    search.index.clear()?;
    let current = shared.catalog.current_versions(None).map_err(|error| IndexError::Store(error.to_string()))?;
    // The newest version of all is the current one of its resource.
    let through = current.iter().map(|(_, version)| version.leaf_index + 1).max().unwrap_or(0);
    let mut indexed = 0u64;
    for chunk in current.chunks(5_000) {
        let jobs: Vec<IndexJob> = chunk
            .iter()
            .filter(|(_, version)| !version.is_deletion())
            .filter_map(|(key, version)| match super::load(shared, key, version) {
                Ok(stored) => Some(IndexJob {
                    key: key.clone(),
                    leaf_index: version.leaf_index,
                    last_updated_ms: (version.last_updated.unix_timestamp_nanos() / 1_000_000) as i64,
                    entries: stored.body.as_deref().and_then(index_entries),
                    replaced_leaves: Vec::new(),
                }),
                // Logged by `load`; a version that cannot be read cannot be served either.
                Err(_) => None,
            })
            .collect();
        indexed += jobs.len() as u64;
        search.add(&jobs)?;
    }
    search.publish(through)?;
    search.rebuilding.store(false, Ordering::SeqCst);
    tracing::warn!(resources = indexed, "search index rebuilt from the store");
    Ok(through)
}

impl ResourceStore {
    /// Brings the index up to the ledger: re-indexes every resource touched by a version the
    /// index does not cover yet (all of them after `reindex` or a lost index).
    pub fn catch_up_index(&self) -> Result<u64, StoreError> {
        let covered = self.shared.search.covered();
        let tree_size = self.shared.ledger.tree_size();
        if covered >= tree_size {
            return Ok(0);
        }
        let keys = self.shared.catalog.touched_since(covered)?;
        let mut jobs = Vec::with_capacity(keys.len());
        for key in keys {
            // Any of its versions may be indexed already (the index lags by up to a commit).
            jobs.extend(job_from_store(&self.shared, &key));
            if jobs.len() >= 5_000 {
                self.shared.search.apply(&jobs, covered);
                jobs.clear();
            }
        }
        let count = jobs.len() as u64;
        self.shared.search.apply(&jobs, tree_size);
        Ok(count)
    }

    /// Drops the index and rebuilds it from the store (`fhir-gateway reindex`).
    pub fn reindex(&self) -> Result<u64, StoreError> {
        self.shared.search.index.clear().map_err(|error| StoreError::Internal(error.to_string()))?;
        *self.shared.search.covered.lock().expect("covered lock") = 0;
        self.catch_up_index()
    }

    /// A query the index could not answer: its files are damaged. The index is derived state:
    /// the indexer rebuilds it from the store, and searches answer 503 until it is done.
    pub(super) fn index_damaged(&self, error: &IndexError) -> StoreError {
        tracing::error!(%error, "a search index query failed");
        let search = &self.shared.search;
        if !search.rebuilding.swap(true, Ordering::SeqCst) {
            let asked = self
                .shared
                .indexer
                .lock()
                .expect("indexer lock")
                .as_ref()
                .is_some_and(|(sender, _)| sender.try_send(IndexMessage::Rebuild).is_ok());
            if !asked {
                // The queue is full or the indexer is gone: the next failing query asks again.
                search.rebuilding.store(false, Ordering::SeqCst);
            }
        }
        StoreError::Unavailable("the search index is damaged and is being rebuilt from the store; try again shortly".into())
    }

    pub(super) fn wait_for_index(&self) -> Result<(), StoreError> {
        let tree_size = self.shared.ledger.tree_size();
        let wake = || {
            if let Some((sender, _)) = self.shared.indexer.lock().expect("indexer lock").as_ref() {
                // Full: the indexer is busy and checks `wanted` after its batch.
                let _ = sender.try_send(IndexMessage::Publish);
                SearchIndex::ask_to_catch_up(&mut self.shared.search.behind.lock().expect("behind lock"), sender);
            }
        };
        if self.shared.search.wait_for(tree_size, wake) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the search index is behind; try again shortly".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::search::terms::TermCondition;
    use crate::store::{CreateOutcome, Leniency, Principal, StoreOptions};

    fn job(leaf_index: u64) -> IndexJob {
        let key = ResourceKey { resource_type: "Patient".into(), id: format!("p{leaf_index}") };
        IndexJob { key, leaf_index, last_updated_ms: 0, entries: None, replaced_leaves: Vec::new() }
    }

    /// A slow indexer never holds up a commit: when the queue is full (by its budget in bytes or
    /// by its count), the group is let go and the indexer is asked, once, to catch up from the
    /// store from the first leaf it missed; later groups are let go until it has.
    #[test]
    fn handing_over_never_waits_and_asks_a_slow_indexer_to_catch_up() {
        let search = SearchIndex::new(TantivyIndex::in_memory().unwrap(), TermEncoder::new([0; 32]));
        let (sender, receiver) = std::sync::mpsc::sync_channel::<IndexMessage>(1);
        search.hand_over(&sender, vec![job(0)], 1, INDEX_QUEUE_BYTES * 2); // fits an empty queue
        search.hand_over(&sender, vec![job(1)], 2, 10); // over the byte budget: let go
        search.hand_over(&sender, vec![job(2)], 3, 10); // behind: let go too
        assert!(matches!(receiver.try_recv(), Ok(IndexMessage::Jobs(jobs, 1, _)) if jobs[0].leaf_index == 0));
        search.queue.give(INDEX_QUEUE_BYTES * 2);
        // The channel was full when the catch-up was first asked for: the next group asks again.
        search.hand_over(&sender, vec![job(3)], 4, 10);
        assert!(matches!(receiver.try_recv(), Ok(IndexMessage::CatchUp(1))));
        assert!(receiver.try_recv().is_err(), "asked once, nothing else handed over while behind");
        // The indexer clears the mark when it starts catching up; then groups flow again.
        *search.behind.lock().unwrap() = None;
        search.hand_over(&sender, vec![job(4)], 5, 10);
        assert!(matches!(receiver.try_recv(), Ok(IndexMessage::Jobs(jobs, 5, _)) if jobs[0].leaf_index == 4));
    }

    /// A store whose indexer fell behind catches up from the store: every write is found.
    #[tokio::test]
    async fn an_indexer_that_let_events_go_catches_up_from_the_store() {
        let directory = crate::store::fresh_test_directory("catch-up");
        let store = ResourceStore::open(&directory, StoreOptions::default()).unwrap();
        let principal = Principal::operator("test", None);
        // As if the queue had been full for the next writes: they are let go.
        *store.shared.search.behind.lock().unwrap() = Some((store.shared.ledger.tree_size(), true));
        for family in ["Behind", "Behind", "Caught"] {
            store
                .create(json!({"resourceType": "Patient", "name": [{"family": family}]}), &principal, Leniency::Strict, None)
                .await
                .unwrap();
        }
        let from = store.shared.search.behind.lock().unwrap().unwrap().0;
        let sender = store.shared.indexer.lock().unwrap().as_ref().unwrap().0.clone();
        sender.send(IndexMessage::CatchUp(from)).unwrap();
        store.wait_for_index().unwrap();
        assert_eq!(store.shared.search.index.count(Some("Patient"), &TermCondition::Everything).unwrap(), 3);
        assert!(store.shared.search.behind.lock().unwrap().is_none());
        store.close().await;
        std::fs::remove_dir_all(&directory).unwrap();
    }

    /// Updates and deletions take the documents of the versions they replace out of the index:
    /// search would drop them anyway (a hit must be the current version), but they would pile up.
    #[tokio::test]
    async fn the_index_holds_one_document_per_current_resource() {
        let directory = crate::store::fresh_test_directory("index");
        let store = ResourceStore::open(&directory, StoreOptions::default()).unwrap();
        let principal = Principal::operator("test", None);
        let mut keys = Vec::new();
        for _ in 0..3 {
            let created = store.create(json!({"resourceType": "Patient"}), &principal, Leniency::Strict, None).await.unwrap();
            let CreateOutcome::Created(created) = created else { panic!("created") };
            keys.push(created.version.key);
        }
        store.wait_for_index().unwrap();
        for gender in ["female", "male"] {
            let patient = json!({"resourceType": "Patient", "id": keys[0].id, "gender": gender});
            store.update(&keys[0], patient, &principal, Leniency::Strict, None).await.unwrap();
        }
        store.delete(&keys[1], &principal).await.unwrap();
        store.wait_for_index().unwrap();
        assert_eq!(store.shared.search.index.count(None, &TermCondition::Everything).unwrap(), 2);
        store.close().await;
        drop(store);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
