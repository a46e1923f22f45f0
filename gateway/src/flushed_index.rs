//! A map on disk derived from an append-only file, filled off the writer's thread: the pack's
//! block locations (`blob::pack_index`) and the patient key slots (`seal::patient_keys`).
//!
//! The writer puts new entries into a small map of pending ones; a background thread moves those
//! the writer has synced (their [`IndexValue::position`] in the file is below what
//! [`FlushedIndex::synced_to`] said) into a [redb] B-tree store every [`FLUSH_EVERY`], durably at
//! most every [`DURABLE_EVERY`] and at close, with a marker: the position below which every entry
//! is in the store ([`FlushedIndex::covered`]). So the writer never waits for the index, memory
//! holds only what a few flushes cover plus a bounded cache, and a start reads only the file past
//! the marker ([`FlushedIndex::put_scanned`]). The file stays the truth: losing the index costs
//! one scan.

use std::collections::HashMap;
use std::hash::Hash;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// How often pending entries move into the store (each move is a redb commit, whose cost is
/// mostly per commit, not per entry).
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often the store is made durable (at most; also when the index is closed).
const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// `covered`: every entry whose position is below this is in the entries' table.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub trait IndexKey: Clone + Eq + Hash + Send + Sync + 'static {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
}

pub trait IndexValue: Copy + PartialEq + Send + Sync + 'static {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Option<Self>;
    /// Where the entry is in the file the index is derived from (an offset, a slot number).
    fn position(&self) -> u64;
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index store: {0}")]
    Store(#[from] redb::Error),
    #[error("an index entry is malformed")]
    Malformed,
    #[error("the index's flusher thread could not start: {0}")]
    Thread(std::io::Error),
}

macro_rules! store_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for IndexError {
            fn from(error: $error) -> Self {
                IndexError::Store(error.into())
            }
        }
    )*};
}
store_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Sizes of an index's caches.
#[derive(Clone, Copy, Debug)]
pub struct IndexCaches {
    /// The B-tree store's page cache.
    pub page_bytes: usize,
    /// Entries recently read, kept in memory.
    pub entries: usize,
}

struct Shared<K, V> {
    db: Database,
    /// The table of entries: encoded key → encoded value.
    entries: TableDefinition<'static, &'static [u8], &'static [u8]>,
    /// Put, not yet in `db`.
    pending: RwLock<HashMap<K, V>>,
    /// Every entry positioned below this is synced in the file (only such entries move into `db`).
    synced_end: AtomicU64,
    /// Held while pending entries move into `db`, and by removals, so that a flush never brings
    /// back an entry removed meanwhile.
    flushing: Mutex<Flushed>,
    stop: AtomicBool,
    /// Entries recently read from `db`. A removal bumps `removals` (under `cache_writes`); a
    /// reader keeps what it read only if none came between its read and its insert.
    cache: quick_cache::sync::Cache<K, V>,
    removals: AtomicU64,
    cache_writes: Mutex<()>,
}

/// What the flushes did so far.
struct Flushed {
    last_durable: Instant,
    /// A commit since then was not durable.
    dirty: bool,
    /// The marker in `db`.
    covered: u64,
}

pub struct FlushedIndex<K: IndexKey, V: IndexValue> {
    shared: Arc<Shared<K, V>>,
    flusher: Option<JoinHandle<()>>,
}

impl<K: IndexKey, V: IndexValue> FlushedIndex<K, V> {
    /// Opens (creating) the index at `path`, its entries in table `table`, with a flusher
    /// thread named `name`; `covered()` says how far it is.
    pub fn open(path: &Path, table: &'static str, name: &str, caches: IndexCaches) -> Result<Self, IndexError> {
        // Private like the files it is derived from (redb would create it with the umask's mode).
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(redb::Error::Io)?;
        let db = Database::builder().set_cache_size(caches.page_bytes).create(path)?;
        let entries = TableDefinition::new(table);
        // Tables are created once: opening an existing index writes nothing (a refused start
        // leaves every file as it was).
        let covered = match db.begin_read()?.open_table(META) {
            Ok(meta) => meta.get("covered")?.map_or(0, |value| value.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => {
                let write = db.begin_write()?;
                write.open_table(entries)?;
                write.open_table(META)?;
                write.commit()?;
                0
            }
            Err(error) => return Err(error.into()),
        };
        let shared = Arc::new(Shared {
            db,
            entries,
            pending: RwLock::default(),
            synced_end: AtomicU64::new(0),
            flushing: Mutex::new(Flushed { last_durable: Instant::now(), dirty: false, covered }),
            stop: AtomicBool::new(false),
            cache: quick_cache::sync::Cache::new(caches.entries.max(1)),
            removals: AtomicU64::new(0),
            cache_writes: Mutex::new(()),
        });
        let flusher = {
            let shared = shared.clone();
            let name = name.to_string();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    while !shared.stop.load(Ordering::SeqCst) {
                        std::thread::park_timeout(FLUSH_EVERY);
                        if let Err(error) = shared.flush(false) {
                            tracing::error!(%error, index = name.as_str(), "moving entries into the index failed; retrying");
                        }
                    }
                })
                .map_err(IndexError::Thread)?
        };
        Ok(FlushedIndex { shared, flusher: Some(flusher) })
    }

    /// The position below which every entry is in the store.
    pub fn covered(&self) -> u64 {
        self.shared.flushing.lock().expect("flush lock").covered
    }

    /// Puts entries found by scanning the file, durably, and marks the index complete up to
    /// `covered` (`None`: not yet, more follow).
    pub fn put_scanned(&self, entries: &[(K, V)], covered: Option<u64>) -> Result<(), IndexError> {
        let mut flushed = self.shared.flushing.lock().expect("flush lock");
        let mut write = self.shared.db.begin_write()?;
        write.set_quick_repair(true);
        {
            let mut table = write.open_table(self.shared.entries)?;
            for (key, value) in entries {
                table.insert(key.encode().as_slice(), value.encode().as_slice())?;
            }
            if let Some(covered) = covered {
                write.open_table(META)?.insert("covered", covered)?;
            }
        }
        write.commit()?;
        if let Some(covered) = covered {
            flushed.covered = covered;
            self.shared.synced_end.fetch_max(covered, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Entries the writer appended to its file (not yet synced).
    pub fn put_pending(&self, entries: impl IntoIterator<Item = (K, V)>) {
        self.shared.pending.write().expect("pending lock").extend(entries);
    }

    /// Every entry positioned below `end` is synced in the file.
    pub fn synced_to(&self, end: u64) {
        self.shared.synced_end.fetch_max(end, Ordering::SeqCst);
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, IndexError> {
        if let Some(value) = self.shared.pending.read().expect("pending lock").get(key) {
            return Ok(Some(*value));
        }
        if let Some(value) = self.shared.cache.get(key) {
            return Ok(Some(value));
        }
        let read_at = self.shared.removals.load(Ordering::SeqCst);
        let read = self.shared.db.begin_read()?;
        let table = read.open_table(self.shared.entries)?;
        let found = match table.get(key.encode().as_slice())? {
            Some(value) => Some(V::decode(value.value()).ok_or(IndexError::Malformed)?),
            None => None,
        };
        if let Some(value) = found {
            let _cache_writes = self.shared.cache_writes.lock().expect("cache lock");
            if self.shared.removals.load(Ordering::SeqCst) == read_at {
                self.shared.cache.insert(key.clone(), value);
            }
        }
        Ok(found)
    }

    /// Forgets entries (the file no longer holds them), durably.
    pub fn remove(&self, keys: &[K]) -> Result<(), IndexError> {
        let _flushing = self.shared.flushing.lock().expect("flush lock");
        {
            let mut pending = self.shared.pending.write().expect("pending lock");
            let _cache_writes = self.shared.cache_writes.lock().expect("cache lock");
            for key in keys {
                pending.remove(key);
                self.shared.cache.remove(key);
            }
            self.shared.removals.fetch_add(1, Ordering::SeqCst);
        }
        let mut write = self.shared.db.begin_write()?;
        write.set_quick_repair(true);
        {
            let mut table = write.open_table(self.shared.entries)?;
            for key in keys {
                table.remove(key.encode().as_slice())?;
            }
        }
        write.commit()?;
        Ok(())
    }

    /// Every key in the index.
    pub fn keys(&self) -> Result<Vec<K>, IndexError> {
        let mut keys: Vec<K> = self.shared.pending.read().expect("pending lock").keys().cloned().collect();
        let read = self.shared.db.begin_read()?;
        let table = read.open_table(self.shared.entries)?;
        for entry in table.iter()? {
            let (key, _) = entry?;
            keys.push(K::decode(key.value()).ok_or(IndexError::Malformed)?);
        }
        Ok(keys)
    }
}

impl<K: IndexKey, V: IndexValue> Shared<K, V> {
    /// Moves the pending entries that are synced in the file into the store.
    fn flush(&self, durable: bool) -> Result<(), IndexError> {
        let mut flushed = self.flushing.lock().expect("flush lock");
        let synced_end = self.synced_end.load(Ordering::SeqCst);
        let batch: Vec<(K, V)> = self
            .pending
            .read()
            .expect("pending lock")
            .iter()
            .filter(|(_, value)| value.position() < synced_end)
            .map(|(key, value)| (key.clone(), *value))
            .collect();
        let changes = !batch.is_empty() || synced_end > flushed.covered;
        let durable = (changes || flushed.dirty) && (durable || flushed.last_durable.elapsed() >= DURABLE_EVERY);
        if !changes && !durable {
            return Ok(());
        }
        let mut write = self.db.begin_write()?;
        if durable {
            write.set_quick_repair(true);
        } else {
            write.set_durability(Durability::None)?;
        }
        {
            let mut table = write.open_table(self.entries)?;
            for (key, value) in &batch {
                table.insert(key.encode().as_slice(), value.encode().as_slice())?;
            }
            // Every entry positioned below `synced_end` is now in the table: pending ones were
            // put before the sync that moved `synced_end` past them.
            flushed.covered = flushed.covered.max(synced_end);
            write.open_table(META)?.insert("covered", flushed.covered)?;
        }
        write.commit()?;
        flushed.dirty = !durable;
        if durable {
            flushed.last_durable = Instant::now();
        }
        let mut pending = self.pending.write().expect("pending lock");
        for (key, value) in batch {
            if pending.get(&key) == Some(&value) {
                pending.remove(&key);
            }
        }
        Ok(())
    }
}

impl<K: IndexKey, V: IndexValue> Drop for FlushedIndex<K, V> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(flusher) = self.flusher.take() {
            flusher.thread().unpark();
            let _ = flusher.join();
        }
        if let Err(error) = self.shared.flush(true) {
            tracing::error!(%error, "an index could not be made durable at close; the next start reads its file further");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl IndexKey for u32 {
        fn encode(&self) -> Vec<u8> {
            self.to_be_bytes().to_vec()
        }
        fn decode(bytes: &[u8]) -> Option<Self> {
            Some(u32::from_be_bytes(bytes.try_into().ok()?))
        }
    }

    impl IndexValue for u64 {
        fn encode(&self) -> Vec<u8> {
            self.to_le_bytes().to_vec()
        }
        fn decode(bytes: &[u8]) -> Option<Self> {
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        }
        fn position(&self) -> u64 {
            *self
        }
    }

    const CACHES: IndexCaches = IndexCaches { page_bytes: 1 << 20, entries: 16 };

    fn scratch(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("fg-flushed-index-{name}-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn entries_are_found_at_once_and_stored_only_once_synced() {
        let path = scratch("synced");
        {
            let index = FlushedIndex::<u32, u64>::open(&path, "entries", "test-index", CACHES).unwrap();
            index.put_pending([(1, 10), (2, 20)]);
            assert_eq!(index.get(&1).unwrap(), Some(10), "a pending entry is found before any flush");
            index.synced_to(15);
        }
        let index = FlushedIndex::<u32, u64>::open(&path, "entries", "test-index", CACHES).unwrap();
        assert_eq!(index.covered(), 15, "the close flushed what was synced and marked it");
        assert_eq!(index.get(&1).unwrap(), Some(10));
        assert_eq!(index.get(&2).unwrap(), None, "an entry past the synced end is not stored: a start scans for it");
    }

    #[test]
    fn a_removed_entry_stays_removed_across_flushes_and_reopens() {
        let path = scratch("removed");
        {
            let index = FlushedIndex::<u32, u64>::open(&path, "entries", "test-index", CACHES).unwrap();
            index.put_scanned(&[(1, 1), (2, 2)], Some(3)).unwrap();
            assert_eq!(index.get(&1).unwrap(), Some(1), "read once: now cached");
            index.put_pending([(3, 3)]);
            index.remove(&[1, 3]).unwrap();
            index.synced_to(4);
            assert_eq!(index.get(&1).unwrap(), None, "not from the cache either");
            assert_eq!(index.get(&3).unwrap(), None);
        }
        let index = FlushedIndex::<u32, u64>::open(&path, "entries", "test-index", CACHES).unwrap();
        let mut keys = index.keys().unwrap();
        keys.sort();
        assert_eq!(keys, vec![2]);
        assert_eq!(index.covered(), 4);
    }
}
