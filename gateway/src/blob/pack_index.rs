//! Where each block of the pack file is (CID → offset and length), on disk:
//! `<data>/blocks/index.redb` ([redb]), derived from the pack and rebuilt from it when missing.
//!
//! Appends go into a small map of pending locations first; a background thread moves those
//! whose bytes are synced into the B-tree store every [`FLUSH_EVERY`] (durably at most every
//! [`DURABLE_EVERY`]), with a marker: the pack offset below which every block is indexed. So
//! the commit thread never waits for the index, memory holds only what a few flushes cover,
//! and a start scans only the pack past the marker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{BlobError, Cid};

/// How often pending locations move into the store.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How often the store is made durable (at most; also when the store is closed).
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// The store's page cache.
const CACHE_BYTES: usize = 16 << 20;
/// Locations kept in memory (recently read or flushed), about 80 bytes each.
const CACHED_LOCATIONS: usize = 65_536;

/// binary CID → data offset (u64 LE) | data length (u32 LE).
const LOCATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("locations");
/// `covered`: every block whose record starts below this pack offset is in `locations`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlockLocation {
    pub data_offset: u64,
    pub data_len: u32,
}

impl BlockLocation {
    fn encode(self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&self.data_offset.to_le_bytes());
        bytes[8..].copy_from_slice(&self.data_len.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<BlockLocation, BlobError> {
        let bytes: [u8; 12] = bytes.try_into().map_err(|_| BlobError::Corrupt("a pack index entry is malformed".into()))?;
        Ok(BlockLocation {
            data_offset: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            data_len: u32::from_le_bytes(bytes[8..].try_into().expect("4 bytes")),
        })
    }
}

fn store_error(error: impl Into<redb::Error>) -> BlobError {
    BlobError::Corrupt(format!("pack index: {}", error.into()))
}

struct Shared {
    db: Database,
    /// Appended, not yet in `db`.
    pending: RwLock<HashMap<Cid, BlockLocation>>,
    /// Every pack byte below this offset is synced (only such blocks are moved into `db`).
    synced_end: AtomicU64,
    /// Held while pending locations move into `db`, and by removals, so that a flush never
    /// brings back a location removed meanwhile.
    flushing: Mutex<Instant>,
    stop: AtomicBool,
    /// Locations recently read from `db`. A removal bumps `removals` (under `cache_writes`); a
    /// reader keeps what it read only if none came between its read and its insert.
    cache: quick_cache::sync::Cache<Cid, BlockLocation>,
    removals: AtomicU64,
    cache_writes: Mutex<()>,
}

pub(super) struct PackIndex {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl PackIndex {
    /// Opens (creating) the index at `path`; `covered()` says how far it is.
    pub fn open(path: &Path) -> Result<PackIndex, BlobError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(store_error)?;
        let write = db.begin_write().map_err(store_error)?;
        write.open_table(LOCATIONS).map_err(store_error)?;
        write.open_table(META).map_err(store_error)?;
        write.commit().map_err(store_error)?;
        let shared = Arc::new(Shared {
            db,
            pending: RwLock::default(),
            synced_end: AtomicU64::new(0),
            flushing: Mutex::new(Instant::now()),
            stop: AtomicBool::new(false),
            cache: quick_cache::sync::Cache::new(CACHED_LOCATIONS),
            removals: AtomicU64::new(0),
            cache_writes: Mutex::new(()),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pack-index".into())
                .spawn(move || {
                    while !shared.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(FLUSH_EVERY);
                        if let Err(error) = shared.flush(false) {
                            tracing::error!(%error, "moving pack locations into the index failed; retrying");
                        }
                    }
                })
                .map_err(BlobError::Io)?
        };
        Ok(PackIndex { shared, flusher: Some(flusher) })
    }

    /// The pack offset below which every block is in the store.
    pub fn covered(&self) -> Result<u64, BlobError> {
        let read = self.shared.db.begin_read().map_err(store_error)?;
        let meta = read.open_table(META).map_err(store_error)?;
        Ok(meta.get("covered").map_err(store_error)?.map_or(0, |value| value.value()))
    }

    /// Puts locations found by scanning the pack, durably, and marks the pack indexed up to
    /// `covered` (`None`: not yet, more follow).
    pub fn put_scanned(&self, locations: &[(Cid, BlockLocation)], covered: Option<u64>) -> Result<(), BlobError> {
        let _flushing = self.shared.flushing.lock().expect("flush lock");
        let mut write = self.shared.db.begin_write().map_err(store_error)?;
        write.set_quick_repair(true);
        {
            let mut table = write.open_table(LOCATIONS).map_err(store_error)?;
            for (cid, location) in locations {
                table.insert(cid.to_bytes().as_slice(), location.encode().as_slice()).map_err(store_error)?;
            }
            if let Some(covered) = covered {
                write.open_table(META).map_err(store_error)?.insert("covered", covered).map_err(store_error)?;
            }
        }
        write.commit().map_err(store_error)?;
        if let Some(covered) = covered {
            self.shared.synced_end.store(covered, Ordering::SeqCst);
        }
        Ok(())
    }

    /// A block appended (not yet synced).
    pub fn put_pending(&self, locations: impl IntoIterator<Item = (Cid, BlockLocation)>) {
        self.shared.pending.write().expect("pending lock").extend(locations);
    }

    /// Every block below `end` of the pack is synced.
    pub fn synced_to(&self, end: u64) {
        self.shared.synced_end.fetch_max(end, Ordering::SeqCst);
    }

    pub fn get(&self, cid: &Cid) -> Result<Option<BlockLocation>, BlobError> {
        if let Some(location) = self.shared.pending.read().expect("pending lock").get(cid) {
            return Ok(Some(*location));
        }
        if let Some(location) = self.shared.cache.get(cid) {
            return Ok(Some(location));
        }
        let read_at = self.shared.removals.load(Ordering::SeqCst);
        let read = self.shared.db.begin_read().map_err(store_error)?;
        let table = read.open_table(LOCATIONS).map_err(store_error)?;
        let found =
            table.get(cid.to_bytes().as_slice()).map_err(store_error)?.map(|value| BlockLocation::decode(value.value())).transpose()?;
        if let Some(location) = found {
            let _cache_writes = self.shared.cache_writes.lock().expect("cache lock");
            if self.shared.removals.load(Ordering::SeqCst) == read_at {
                self.shared.cache.insert(*cid, location);
            }
        }
        Ok(found)
    }

    /// Forgets blocks (their records were zeroed), durably.
    pub fn remove(&self, cids: &[Cid]) -> Result<(), BlobError> {
        let _flushing = self.shared.flushing.lock().expect("flush lock");
        {
            let mut pending = self.shared.pending.write().expect("pending lock");
            let _cache_writes = self.shared.cache_writes.lock().expect("cache lock");
            for cid in cids {
                pending.remove(cid);
                self.shared.cache.remove(cid);
            }
            self.shared.removals.fetch_add(1, Ordering::SeqCst);
        }
        let mut write = self.shared.db.begin_write().map_err(store_error)?;
        write.set_quick_repair(true);
        {
            let mut table = write.open_table(LOCATIONS).map_err(store_error)?;
            for cid in cids {
                table.remove(cid.to_bytes().as_slice()).map_err(store_error)?;
            }
        }
        write.commit().map_err(store_error)?;
        Ok(())
    }

    /// Every indexed CID.
    pub fn cids(&self) -> Result<Vec<Cid>, BlobError> {
        let mut cids: Vec<Cid> = self.shared.pending.read().expect("pending lock").keys().copied().collect();
        let read = self.shared.db.begin_read().map_err(store_error)?;
        let table = read.open_table(LOCATIONS).map_err(store_error)?;
        for entry in table.iter().map_err(store_error)? {
            let (cid, _) = entry.map_err(store_error)?;
            cids.push(Cid::from_bytes(cid.value()).map_err(|_| BlobError::Corrupt("a pack index CID is malformed".into()))?);
        }
        Ok(cids)
    }
}

impl Shared {
    /// Moves the pending locations whose bytes are synced into the store.
    fn flush(&self, durable: bool) -> Result<(), BlobError> {
        let mut last_durable = self.flushing.lock().expect("flush lock");
        let synced_end = self.synced_end.load(Ordering::SeqCst);
        let batch: Vec<(Cid, BlockLocation)> = self
            .pending
            .read()
            .expect("pending lock")
            .iter()
            .filter(|(_, location)| location.data_offset < synced_end)
            .map(|(cid, location)| (*cid, *location))
            .collect();
        let durable = durable || last_durable.elapsed() >= DURABLE_EVERY;
        if batch.is_empty() && !durable {
            return Ok(());
        }
        let mut write = self.db.begin_write().map_err(store_error)?;
        if durable {
            write.set_quick_repair(true);
        } else {
            write.set_durability(Durability::None).map_err(store_error)?;
        }
        {
            let mut table = write.open_table(LOCATIONS).map_err(store_error)?;
            for (cid, location) in &batch {
                table.insert(cid.to_bytes().as_slice(), location.encode().as_slice()).map_err(store_error)?;
            }
            // Every record starting below `synced_end` is now in the table: pending ones were
            // put before the sync that moved `synced_end` past them.
            let mut meta = write.open_table(META).map_err(store_error)?;
            let covered = meta.get("covered").map_err(store_error)?.map_or(0, |value| value.value());
            meta.insert("covered", covered.max(synced_end)).map_err(store_error)?;
        }
        write.commit().map_err(store_error)?;
        if durable {
            *last_durable = Instant::now();
        }
        let mut pending = self.pending.write().expect("pending lock");
        for (cid, location) in batch {
            if pending.get(&cid) == Some(&location) {
                pending.remove(&cid);
            }
        }
        Ok(())
    }
}

impl Drop for PackIndex {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        if let Err(error) = self.shared.flush(true) {
            tracing::error!(%error, "the pack index could not be made durable at close; the next start scans the pack further");
        }
    }
}
