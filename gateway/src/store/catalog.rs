//! The record catalog: which versions each resource has and where their sealed bytes and ledger
//! entries are. Journalled to `<data>/records/catalog.log` (one [`CatalogRecord`] per version,
//! in leaf order: the write-ahead log, synced before the ledger), and kept, for lookups, in an
//! embedded B-tree store, `<data>/records/catalog.redb` ([redb]). Its page cache and a cache of
//! current versions are the only memory it takes (`--cache-mb`): nothing grows in memory with
//! the records.
//!
//! The commit thread applies each group to the B-tree store after the ledger's fsync without
//! syncing it (redb `Durability::None`), and makes it durable at most every
//! [`DURABLE_EVERY`] together with a marker (how many ledger leaves and which catalog offset it
//! covers). A start therefore reads only the catalog records past the marker — a crash tail —
//! and applies them again; a store without the file (an older data directory, a lost file) is
//! filled from the whole journal once.
//!
//! The catalog is local state, never published: it holds resource ids and wrapped data keys.
//! Identifiers (e.g. MRNs) appear only as keyed hashes, for conditional create.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::blob::Cid;
use crate::seal::{KeyHolder, PatientSlot, WRAPPED_KEY_LEN, WrappedKey};

pub type KeyedHash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub resource_type: String,
    pub id: String,
}

impl ResourceKey {
    /// The key a local `Type/id` reference names.
    pub fn from_reference(reference: &str) -> Option<ResourceKey> {
        let (resource_type, id) = reference.split_once('/')?;
        Some(ResourceKey { resource_type: resource_type.to_string(), id: id.to_string() })
    }
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub version_id: u64,
    pub leaf_index: u64,
    pub last_updated: OffsetDateTime,
    /// `None` for a deletion.
    pub sealed: Option<SealedLocation>,
    /// The organisation that wrote the version (`Organization/x`), if known.
    pub author: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SealedLocation {
    pub cid: Cid,
    pub wrapped_key: WrappedKey,
}

impl VersionRecord {
    pub fn is_deletion(&self) -> bool {
        self.sealed.is_none()
    }
}

#[derive(Debug, Default)]
pub struct ResourceHistory {
    /// Oldest first; version ids are 1, 2, 3, ... in order.
    pub versions: Vec<VersionRecord>,
}

impl ResourceHistory {
    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions.last()
    }
}

/// One journal record: a version and the identifier hashes of its content, or an erasure.
#[derive(Debug, Clone)]
pub struct CatalogRecord {
    pub key: ResourceKey,
    /// For an erasure, the patient's last version, `leaf_index` the erasure's leaf.
    pub version: VersionRecord,
    pub identifier_hashes: Vec<KeyedHash>,
    /// For a write of a transaction: the leaf index just past the transaction's last entry.
    pub transaction_end_leaf: Option<u64>,
    /// Set for the record of a `Patient/$purge` (`key` is the patient): adds no version.
    pub erasure: Option<Erasure>,
}

/// What the catalog holds of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Absent,
    Erased,
    Current { version_id: u64, deleted: bool },
}

/// What a patient's erasure removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// The patient's key, destroyed by the erasure (`None`: the patient had none).
    pub patient_key: Option<PatientSlot>,
    /// Every resource erased (the patient first), all versions of each.
    pub resources: Vec<ResourceKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CatalogRecordJson {
    resource_type: String,
    id: String,
    version_id: u64,
    leaf_index: u64,
    last_updated_unix_nanos: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kek_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patient_key: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    identifier_hashes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transaction_end_leaf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
    /// An erasure: `Type/id` of every resource erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erases: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased_patient_key: Option<u64>,
}

impl CatalogRecord {
    pub fn encode(&self) -> Vec<u8> {
        let sealed = self.version.sealed.as_ref();
        let json = CatalogRecordJson {
            resource_type: self.key.resource_type.clone(),
            id: self.key.id.clone(),
            version_id: self.version.version_id,
            leaf_index: self.version.leaf_index,
            last_updated_unix_nanos: self.version.last_updated.unix_timestamp_nanos().to_string(),
            cid: sealed.map(|sealed| sealed.cid.to_string()),
            kek_id: sealed.and_then(|sealed| match sealed.wrapped_key.holder {
                KeyHolder::Kek(kek_id) => Some(kek_id),
                KeyHolder::Patient(_) => None,
            }),
            patient_key: sealed.and_then(|sealed| match sealed.wrapped_key.holder {
                KeyHolder::Kek(_) => None,
                KeyHolder::Patient(slot) => Some(slot.0),
            }),
            wrapped_key: sealed.map(|sealed| BASE64.encode(sealed.wrapped_key.bytes)),
            identifier_hashes: self.identifier_hashes.iter().map(|hash| BASE64.encode(hash)).collect(),
            transaction_end_leaf: self.transaction_end_leaf,
            author: self.version.author.clone(),
            erases: self
                .erasure
                .as_ref()
                .map(|erasure| erasure.resources.iter().map(|key| format!("{}/{}", key.resource_type, key.id)).collect()),
            erased_patient_key: self.erasure.as_ref().and_then(|erasure| erasure.patient_key).map(|slot| slot.0),
        };
        serde_json::to_vec(&json).expect("catalog record serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<CatalogRecord, String> {
        let json: CatalogRecordJson = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        let nanos: i128 = json.last_updated_unix_nanos.parse().map_err(|_| "bad lastUpdated".to_string())?;
        let last_updated = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|error| error.to_string())?;
        let holder = match (json.kek_id, json.patient_key) {
            (Some(kek_id), None) => Some(KeyHolder::Kek(kek_id)),
            (None, Some(slot)) => Some(KeyHolder::Patient(PatientSlot(slot))),
            (None, None) => None,
            (Some(_), Some(_)) => return Err("a data key has two holders".into()),
        };
        let sealed = match (json.cid, holder, json.wrapped_key) {
            (Some(cid), Some(holder), Some(wrapped)) => {
                let bytes: [u8; WRAPPED_KEY_LEN] = BASE64
                    .decode(wrapped)
                    .map_err(|error| error.to_string())?
                    .try_into()
                    .map_err(|_| "bad wrapped key length".to_string())?;
                Some(SealedLocation { cid: cid.parse().map_err(|_| "bad cid".to_string())?, wrapped_key: WrappedKey { holder, bytes } })
            }
            (None, None, None) => None,
            _ => return Err("partial sealed location".into()),
        };
        let identifier_hashes = json
            .identifier_hashes
            .iter()
            .map(|text| BASE64.decode(text).ok().and_then(|bytes| bytes.try_into().ok()).ok_or("bad identifier hash"))
            .collect::<Result<_, _>>()?;
        let erasure = match (json.erases, json.erased_patient_key) {
            (Some(erases), patient_key) => Some(Erasure {
                patient_key: patient_key.map(PatientSlot),
                resources: erases
                    .iter()
                    .map(|reference| ResourceKey::from_reference(reference).ok_or("bad erased reference"))
                    .collect::<Result<_, _>>()?,
            }),
            (None, None) => None,
            (None, Some(_)) => return Err("an erased patient key without an erasure".into()),
        };
        Ok(CatalogRecord {
            key: ResourceKey { resource_type: json.resource_type, id: json.id },
            version: VersionRecord { version_id: json.version_id, leaf_index: json.leaf_index, last_updated, sealed, author: json.author },
            identifier_hashes,
            transaction_end_leaf: json.transaction_end_leaf,
            erasure,
        })
    }
}

/// How often the B-tree store is made durable (at most; also at every clean stop).
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// `type \0 id \0 version (u64 BE)` → [`VersionRecord`] (binary, [`encode_version`]).
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
/// `type \0 id` → current version (u64 LE) | flags (u8) | identifier hashes of the current version.
const RESOURCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resources");
/// identifier hash (32) | `type \0 id` → (), for the current versions that carry it.
const IDENTIFIERS: TableDefinition<&[u8], ()> = TableDefinition::new("identifiers");
/// `type \0` | leaf (u64 BE) → `id \0` | version (u64 BE): every version of a type in commit order.
const TYPE_HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("type-history");
/// patient key slot (u64 BE) | `type \0 id` → (): resources with a version that key holds.
const HOLDERS: TableDefinition<&[u8], ()> = TableDefinition::new("holders");
/// leaf of the erasure → the erased patient key slot (u64 LE, or empty) | `type \0 id` list.
const ERASURES: TableDefinition<u64, &[u8]> = TableDefinition::new("erasures");
/// `leaves`: ledger leaves covered; `catalog-end`: catalog offset after the last record applied.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const ERASED: u8 = 1;
const DELETED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog store: {0}")]
    Store(#[from] redb::Error),
    #[error("catalog store: a stored value is malformed ({0})")]
    Malformed(&'static str),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(impl From<$error> for CatalogError {
        fn from(error: $error) -> Self {
            CatalogError::Store(error.into())
        }
    })*};
}
from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::SetDurabilityError);

fn resource_bytes(key: &ResourceKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.resource_type.len() + key.id.len() + 1);
    bytes.extend_from_slice(key.resource_type.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.id.as_bytes());
    bytes
}

fn resource_key(bytes: &[u8]) -> Result<ResourceKey, CatalogError> {
    let text = std::str::from_utf8(bytes).map_err(|_| CatalogError::Malformed("resource key"))?;
    let (resource_type, id) = text.split_once('\0').ok_or(CatalogError::Malformed("resource key"))?;
    Ok(ResourceKey { resource_type: resource_type.to_string(), id: id.to_string() })
}

fn version_bytes(key: &ResourceKey, version_id: u64) -> Vec<u8> {
    let mut bytes = resource_bytes(key);
    bytes.push(0);
    bytes.extend_from_slice(&version_id.to_be_bytes());
    bytes
}

fn type_prefix(resource_type: &str) -> Vec<u8> {
    let mut bytes = resource_type.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// The smallest key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

fn encode_version(version: &VersionRecord) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(160);
    bytes.extend_from_slice(&version.version_id.to_le_bytes());
    bytes.extend_from_slice(&version.leaf_index.to_le_bytes());
    bytes.extend_from_slice(&version.last_updated.unix_timestamp_nanos().to_le_bytes());
    match &version.sealed {
        None => bytes.push(0),
        Some(sealed) => {
            let (tag, holder) = match sealed.wrapped_key.holder {
                KeyHolder::Kek(kek_id) => (1, u64::from(kek_id)),
                KeyHolder::Patient(slot) => (2, slot.0),
            };
            bytes.push(tag);
            bytes.extend_from_slice(&holder.to_le_bytes());
            bytes.extend_from_slice(&sealed.wrapped_key.bytes);
            let cid = sealed.cid.to_bytes();
            bytes.push(cid.len() as u8);
            bytes.extend_from_slice(&cid);
        }
    }
    if let Some(author) = &version.author {
        bytes.extend_from_slice(author.as_bytes());
    }
    bytes
}

fn decode_version(bytes: &[u8]) -> Result<VersionRecord, CatalogError> {
    let malformed = || CatalogError::Malformed("version record");
    let take = |at: usize, len: usize| bytes.get(at..at + len).ok_or_else(malformed);
    let version_id = u64::from_le_bytes(take(0, 8)?.try_into().map_err(|_| malformed())?);
    let leaf_index = u64::from_le_bytes(take(8, 8)?.try_into().map_err(|_| malformed())?);
    let nanos = i128::from_le_bytes(take(16, 16)?.try_into().map_err(|_| malformed())?);
    let last_updated = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| malformed())?;
    let mut at = 33;
    let sealed = match *take(32, 1)?.first().ok_or_else(malformed)? {
        0 => None,
        tag @ (1 | 2) => {
            let holder = u64::from_le_bytes(take(at, 8)?.try_into().map_err(|_| malformed())?);
            let holder = if tag == 1 {
                KeyHolder::Kek(u32::try_from(holder).map_err(|_| malformed())?)
            } else {
                KeyHolder::Patient(PatientSlot(holder))
            };
            let wrapped: [u8; WRAPPED_KEY_LEN] = take(at + 8, WRAPPED_KEY_LEN)?.try_into().map_err(|_| malformed())?;
            at += 8 + WRAPPED_KEY_LEN;
            let cid_len = *take(at, 1)?.first().ok_or_else(malformed)? as usize;
            let cid = Cid::from_bytes(take(at + 1, cid_len)?).map_err(|_| malformed())?;
            at += 1 + cid_len;
            Some(SealedLocation { cid, wrapped_key: WrappedKey { holder, bytes: wrapped } })
        }
        _ => return Err(malformed()),
    };
    let author = match bytes.get(at..) {
        Some([]) | None => None,
        Some(rest) => Some(String::from_utf8(rest.to_vec()).map_err(|_| malformed())?),
    };
    Ok(VersionRecord { version_id, leaf_index, last_updated, sealed, author })
}

/// What the resources table says of one resource.
struct ResourceState {
    current: u64,
    flags: u8,
    identifier_hashes: Vec<KeyedHash>,
}

impl ResourceState {
    fn decode(bytes: &[u8]) -> Result<ResourceState, CatalogError> {
        let malformed = || CatalogError::Malformed("resource state");
        let current = u64::from_le_bytes(bytes.get(..8).ok_or_else(malformed)?.try_into().map_err(|_| malformed())?);
        let flags = *bytes.get(8).ok_or_else(malformed)?;
        let identifier_hashes = bytes[9..].chunks_exact(32).map(|chunk| chunk.try_into().expect("32 bytes")).collect();
        Ok(ResourceState { current, flags, identifier_hashes })
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(9 + 32 * self.identifier_hashes.len());
        bytes.extend_from_slice(&self.current.to_le_bytes());
        bytes.push(self.flags);
        for hash in &self.identifier_hashes {
            bytes.extend_from_slice(hash);
        }
        bytes
    }
}

fn encode_erasure(erasure: &Erasure) -> Vec<u8> {
    let mut bytes = erasure.patient_key.map(|slot| slot.0.to_le_bytes().to_vec()).unwrap_or_default();
    bytes.push(b'|');
    for key in &erasure.resources {
        bytes.extend_from_slice(&resource_bytes(key));
        bytes.push(b'\n');
    }
    bytes
}

fn decode_erasure(bytes: &[u8]) -> Result<Erasure, CatalogError> {
    let malformed = || CatalogError::Malformed("erasure");
    let (patient_key, rest) = match bytes.first() {
        Some(b'|') => (None, &bytes[1..]),
        _ => (
            Some(PatientSlot(u64::from_le_bytes(bytes.get(..8).ok_or_else(malformed)?.try_into().map_err(|_| malformed())?))),
            bytes.get(9..).ok_or_else(malformed)?,
        ),
    };
    let resources = rest.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()).map(resource_key).collect::<Result<_, _>>()?;
    Ok(Erasure { patient_key, resources })
}

fn read_marker(db: &impl ReadableDatabase) -> Result<(u64, u64), CatalogError> {
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    let leaves = meta.get("leaves")?.map_or(0, |value| value.value());
    let end = meta.get("catalog-end")?.map_or(0, |value| value.value());
    Ok((leaves, end))
}

/// Records written into the store, not yet visible: [`Staged::commit`] makes them visible (and
/// durable, when due) and updates the cache of current versions.
struct Staged<'c> {
    write: redb::WriteTransaction,
    state: std::sync::MutexGuard<'c, DurableState>,
    durable: bool,
    cache: &'c CurrentCache,
    /// What the commit changes in the cache: a new current version, or (`None`) an erasure.
    updates: Vec<(ResourceKey, Option<VersionRecord>)>,
    erased_holders: Vec<PatientSlot>,
    replaced_leaves: Vec<Option<u64>>,
}

impl Staged<'_> {
    fn commit(self) -> Result<Vec<Option<u64>>, CatalogError> {
        let Staged { write, mut state, durable, cache, updates, erased_holders, replaced_leaves } = self;
        let _writing = cache.writing.lock().expect("catalog cache lock");
        write.commit()?;
        for (key, current) in updates {
            match current {
                Some(version) => cache.entries.insert(key, version),
                None => {
                    cache.entries.remove(&key);
                }
            }
        }
        cache.erased_holders.write().expect("erased holders lock").extend(erased_holders);
        cache.generation.fetch_add(1, Ordering::SeqCst);
        if durable {
            *state = DurableState { last_durable: Instant::now(), pending: false };
        } else {
            state.pending = true;
        }
        Ok(replaced_leaves)
    }
}

/// The catalog: lookups in the B-tree store. Written only by the commit pipeline (and at
/// open), after the versions are durable in the ledger.
pub struct Catalog {
    db: Database,
    durability: Mutex<DurableState>,
    cache: CurrentCache,
}

/// The current version of resources recently read or written (never of an erased one), and the
/// patient keys erasures destroyed: most reads by id and most checks of the commit thread are
/// answered without the B-tree store. Bounded by `--cache-mb`.
struct CurrentCache {
    entries: quick_cache::sync::Cache<ResourceKey, VersionRecord>,
    /// Bumped by every commit (under `writing`, after it updated `entries`): a reader that
    /// missed keeps what it read only if no commit came between its read and its insert.
    generation: AtomicU64,
    writing: Mutex<()>,
    erased_holders: RwLock<HashSet<PatientSlot>>,
}

impl CurrentCache {
    fn keep(&self, key: &ResourceKey, version: &VersionRecord, read_at: u64) {
        let _writing = self.writing.lock().expect("catalog cache lock");
        if self.generation.load(Ordering::SeqCst) == read_at {
            self.entries.insert(key.clone(), version.clone());
        }
    }
}

/// Of `--cache-mb`, the share of the current-version cache (the rest is the B-tree store's page
/// cache), and the bytes one entry is reckoned at.
const CURRENT_CACHE_SHARE: usize = 4;
const CURRENT_ENTRY_BYTES: usize = 512;

struct DurableState {
    last_durable: Instant,
    /// Whether a commit since then was not durable.
    pending: bool,
}

impl Catalog {
    /// Opens (creating) the store at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Catalog, CatalogError> {
        let db = Database::builder().set_cache_size(cache_bytes - cache_bytes / CURRENT_CACHE_SHARE).create(path)?;
        // Tables are created once: opening an existing store writes nothing (a refused start
        // leaves every file as it was).
        let created = match db.begin_read()?.open_table(META) {
            Ok(_) => true,
            Err(redb::TableError::TableDoesNotExist(_)) => false,
            Err(error) => return Err(error.into()),
        };
        if !created {
            let write = db.begin_write()?;
            for table in [VERSIONS, RESOURCES, TYPE_HISTORY] {
                write.open_table(table)?;
            }
            write.open_table(IDENTIFIERS)?;
            write.open_table(HOLDERS)?;
            write.open_table(ERASURES)?;
            write.open_table(META)?;
            write.commit()?;
        }
        let mut erased_holders = HashSet::new();
        {
            let read = db.begin_read()?;
            for entry in read.open_table(ERASURES)?.iter()? {
                erased_holders.extend(decode_erasure(entry?.1.value())?.patient_key);
            }
        }
        let cache = CurrentCache {
            entries: quick_cache::sync::Cache::new((cache_bytes / CURRENT_CACHE_SHARE / CURRENT_ENTRY_BYTES).max(1024)),
            generation: AtomicU64::new(0),
            writing: Mutex::new(()),
            erased_holders: RwLock::new(erased_holders),
        };
        Ok(Catalog { db, durability: Mutex::new(DurableState { last_durable: Instant::now(), pending: false }), cache })
    }

    /// How many ledger leaves the store covers, and the catalog offset after them.
    pub fn marker(&self) -> Result<(u64, u64), CatalogError> {
        read_marker(&self.db)
    }

    /// [`Catalog::marker`] of the store at `path` without changing the file (opening a store
    /// for writing does): `(0, 0)` if there is none, `None` if it needs the repair that opening
    /// it for writing does (after a crash).
    pub fn peek_marker(path: &Path) -> Result<Option<(u64, u64)>, CatalogError> {
        if !path.exists() {
            return Ok(Some((0, 0)));
        }
        match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => match read_marker(&db) {
                Err(CatalogError::Store(redb::Error::TableDoesNotExist(_))) => Ok(Some((0, 0))),
                marker => marker.map(Some),
            },
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Applies records (in leaf order) that end at `catalog_end` in the journal, and says for
    /// each the leaf of the version it replaced as current (`None` after a deletion, for a new
    /// resource and for an erasure). Durable if `durable`, or if the last durable commit is
    /// [`DURABLE_EVERY`] ago.
    pub fn apply(&self, records: &[CatalogRecord], catalog_end: u64, durable: bool) -> Result<Vec<Option<u64>>, CatalogError> {
        self.stage(records, catalog_end, durable)?.commit()
    }

    fn stage(&self, records: &[CatalogRecord], catalog_end: u64, durable: bool) -> Result<Staged<'_>, CatalogError> {
        let mut write = self.db.begin_write()?;
        let state = self.durability.lock().expect("catalog durability lock");
        let mut replaced_leaves = Vec::with_capacity(records.len());
        let mut updates = Vec::with_capacity(records.len());
        let mut erased_holders = Vec::new();
        let durable = durable || state.last_durable.elapsed() >= DURABLE_EVERY;
        if durable {
            write.set_quick_repair(true);
        } else {
            write.set_durability(Durability::None)?;
        }
        {
            let mut versions = write.open_table(VERSIONS)?;
            let mut resources = write.open_table(RESOURCES)?;
            let mut identifiers = write.open_table(IDENTIFIERS)?;
            let mut type_history = write.open_table(TYPE_HISTORY)?;
            let mut holders = write.open_table(HOLDERS)?;
            let mut erasures = write.open_table(ERASURES)?;
            let mut meta = write.open_table(META)?;
            let mut leaves = meta.get("leaves")?.map_or(0, |value| value.value());
            for record in records {
                leaves = leaves.max(record.version.leaf_index + 1);
                if let Some(erasure) = &record.erasure {
                    replaced_leaves.push(None);
                    updates.extend(erasure.resources.iter().map(|key| (key.clone(), None)));
                    erased_holders.extend(erasure.patient_key);
                    erasures.insert(record.version.leaf_index, encode_erasure(erasure).as_slice())?;
                    for key in &erasure.resources {
                        let name = resource_bytes(key);
                        let Some(state) = resources.get(name.as_slice())?.map(|value| ResourceState::decode(value.value())).transpose()?
                        else {
                            continue;
                        };
                        for hash in &state.identifier_hashes {
                            identifiers.remove([hash.as_slice(), &name].concat().as_slice())?;
                        }
                        for version_id in 1..=state.current {
                            if let Some(version) = versions
                                .get(version_bytes(key, version_id).as_slice())?
                                .map(|value| decode_version(value.value()))
                                .transpose()?
                            {
                                type_history.remove(
                                    [type_prefix(&key.resource_type), version.leaf_index.to_be_bytes().to_vec()].concat().as_slice(),
                                )?;
                            }
                        }
                        let erased = ResourceState { current: state.current, flags: state.flags | ERASED, identifier_hashes: Vec::new() };
                        resources.insert(name.as_slice(), erased.encode().as_slice())?;
                    }
                    continue;
                }
                let key = &record.key;
                let name = resource_bytes(key);
                let previous = resources.get(name.as_slice())?.map(|value| ResourceState::decode(value.value())).transpose()?;
                let replaced = match &previous {
                    Some(state) if state.flags & DELETED == 0 => versions
                        .get(version_bytes(key, state.current).as_slice())?
                        .map(|value| decode_version(value.value()))
                        .transpose()?,
                    _ => None,
                };
                replaced_leaves.push(replaced.map(|version| version.leaf_index));
                updates.push((key.clone(), Some(record.version.clone())));
                for hash in previous.iter().flat_map(|state| &state.identifier_hashes) {
                    identifiers.remove([hash.as_slice(), &name].concat().as_slice())?;
                }
                let version = &record.version;
                versions.insert(version_bytes(key, version.version_id).as_slice(), encode_version(version).as_slice())?;
                let mut history_value = key.id.as_bytes().to_vec();
                history_value.push(0);
                history_value.extend_from_slice(&version.version_id.to_be_bytes());
                type_history.insert(
                    [type_prefix(&key.resource_type), version.leaf_index.to_be_bytes().to_vec()].concat().as_slice(),
                    history_value.as_slice(),
                )?;
                if let Some(KeyHolder::Patient(slot)) = version.sealed.as_ref().map(|sealed| sealed.wrapped_key.holder) {
                    holders.insert([slot.0.to_be_bytes().as_slice(), &name].concat().as_slice(), ())?;
                }
                let identifier_hashes = if version.is_deletion() { Vec::new() } else { record.identifier_hashes.clone() };
                for hash in &identifier_hashes {
                    identifiers.insert([hash.as_slice(), &name].concat().as_slice(), ())?;
                }
                let flags = if version.is_deletion() { DELETED } else { 0 };
                resources
                    .insert(name.as_slice(), ResourceState { current: version.version_id, flags, identifier_hashes }.encode().as_slice())?;
            }
            meta.insert("leaves", leaves)?;
            meta.insert("catalog-end", catalog_end)?;
        }
        Ok(Staged { write, state, durable, cache: &self.cache, updates, erased_holders, replaced_leaves })
    }

    /// Makes everything applied durable (a clean stop; and, when idle, [`DURABLE_EVERY`]).
    pub fn sync(&self, only_if_stale: bool) -> Result<(), CatalogError> {
        let mut state = self.durability.lock().expect("catalog durability lock");
        if !state.pending || (only_if_stale && state.last_durable.elapsed() < DURABLE_EVERY) {
            return Ok(());
        }
        let mut write = self.db.begin_write()?;
        write.set_quick_repair(true);
        write.commit()?;
        *state = DurableState { last_durable: Instant::now(), pending: false };
        Ok(())
    }

    fn state(&self, key: &ResourceKey) -> Result<Option<ResourceState>, CatalogError> {
        let read = self.db.begin_read()?;
        let resources = read.open_table(RESOURCES)?;
        let state = resources.get(resource_bytes(key).as_slice())?.map(|value| ResourceState::decode(value.value())).transpose()?;
        Ok(state)
    }

    fn versions_of(&self, key: &ResourceKey) -> Result<Vec<VersionRecord>, CatalogError> {
        let read = self.db.begin_read()?;
        let versions = read.open_table(VERSIONS)?;
        let mut prefix = resource_bytes(key);
        prefix.push(0);
        let end = prefix_end(&prefix);
        let mut found = Vec::new();
        for entry in versions.range(prefix.as_slice()..end.as_slice())? {
            found.push(decode_version(entry?.1.value())?);
        }
        Ok(found)
    }

    /// The resource's versions, unless it has none or was erased.
    pub fn get(&self, key: &ResourceKey) -> Result<Option<ResourceHistory>, CatalogError> {
        match self.state(key)? {
            Some(state) if state.flags & ERASED == 0 => Ok(Some(ResourceHistory { versions: self.versions_of(key)? })),
            _ => Ok(None),
        }
    }

    /// The resource's current version, unless it has none or was erased.
    pub fn current(&self, key: &ResourceKey) -> Result<Option<VersionRecord>, CatalogError> {
        self.version(key, None)
    }

    /// Version `version_id` (`None`: the current one), unless the resource was erased.
    pub fn version(&self, key: &ResourceKey, version_id: Option<u64>) -> Result<Option<VersionRecord>, CatalogError> {
        if let Some(current) = self.cache.entries.get(key)
            && version_id.is_none_or(|version_id| version_id == current.version_id)
        {
            return Ok(Some(current));
        }
        let read_at = self.cache.generation.load(Ordering::SeqCst);
        let read = self.db.begin_read()?;
        let resources = read.open_table(RESOURCES)?;
        let Some(state) = resources.get(resource_bytes(key).as_slice())?.map(|value| ResourceState::decode(value.value())).transpose()?
        else {
            return Ok(None);
        };
        if state.flags & ERASED != 0 {
            return Ok(None);
        }
        let versions = read.open_table(VERSIONS)?;
        let wanted = version_id.unwrap_or(state.current);
        let found = versions.get(version_bytes(key, wanted).as_slice())?.map(|value| decode_version(value.value())).transpose()?;
        if let Some(current) = found.as_ref().filter(|found| found.version_id == state.current) {
            self.cache.keep(key, current, read_at);
        }
        Ok(found)
    }

    /// What the catalog holds of a resource, in one lookup.
    pub fn lookup(&self, key: &ResourceKey) -> Result<Lookup, CatalogError> {
        if let Some(current) = self.cache.entries.get(key) {
            return Ok(Lookup::Current { version_id: current.version_id, deleted: current.is_deletion() });
        }
        Ok(match self.state(key)? {
            None => Lookup::Absent,
            Some(state) if state.flags & ERASED != 0 => Lookup::Erased,
            Some(state) => Lookup::Current { version_id: state.current, deleted: state.flags & DELETED != 0 },
        })
    }

    /// Whether the resource was erased (`Patient/$purge`).
    pub fn is_erased(&self, key: &ResourceKey) -> Result<bool, CatalogError> {
        Ok(self.lookup(key)? == Lookup::Erased)
    }

    /// Whether the patient key in `slot` was destroyed by an erasure.
    pub fn is_erased_holder(&self, slot: PatientSlot) -> Result<bool, CatalogError> {
        Ok(self.cache.erased_holders.read().expect("erased holders lock").contains(&slot))
    }

    /// Every erasure recorded, oldest first.
    pub fn erasures(&self) -> Result<Vec<Erasure>, CatalogError> {
        let read = self.db.begin_read()?;
        let erasures = read.open_table(ERASURES)?;
        let mut found = Vec::new();
        for entry in erasures.iter()? {
            found.push(decode_erasure(entry?.1.value())?);
        }
        Ok(found)
    }

    /// Every version record of an erased resource (what its erasure's cleanup removes).
    pub fn erased_versions(&self, key: &ResourceKey) -> Result<Vec<VersionRecord>, CatalogError> {
        match self.state(key)? {
            Some(state) if state.flags & ERASED != 0 => self.versions_of(key),
            _ => Ok(Vec::new()),
        }
    }

    /// Every resource not erased with a version whose data key the patient key in `slot` holds.
    pub fn held_by(&self, slot: PatientSlot) -> Result<Vec<ResourceKey>, CatalogError> {
        self.held(slot.0.to_be_bytes().to_vec())
    }

    /// [`Catalog::held_by`], of one resource type.
    pub fn held_of_type(&self, slot: PatientSlot, resource_type: &str) -> Result<Vec<ResourceKey>, CatalogError> {
        self.held([slot.0.to_be_bytes().as_slice(), &type_prefix(resource_type)].concat())
    }

    fn held(&self, prefix: Vec<u8>) -> Result<Vec<ResourceKey>, CatalogError> {
        let read = self.db.begin_read()?;
        let holders = read.open_table(HOLDERS)?;
        let end = prefix_end(&prefix);
        let mut keys = Vec::new();
        for entry in holders.range(prefix.as_slice()..end.as_slice())? {
            let key = resource_key(&entry?.0.value()[8..])?;
            if !self.is_erased(&key)? {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// (current version id, deleted?) of a resource, if it has any version and is not erased.
    pub fn current_state(&self, key: &ResourceKey) -> Result<Option<(u64, bool)>, CatalogError> {
        Ok(match self.lookup(key)? {
            Lookup::Current { version_id, deleted } => Some((version_id, deleted)),
            Lookup::Absent | Lookup::Erased => None,
        })
    }

    /// Current, not deleted resources whose identifiers include every one of `hashes`.
    pub fn matching_identifiers(&self, resource_type: &str, hashes: &[KeyedHash]) -> Result<Vec<ResourceKey>, CatalogError> {
        let Some((first, rest)) = hashes.split_first() else { return Ok(Vec::new()) };
        let read = self.db.begin_read()?;
        let identifiers = read.open_table(IDENTIFIERS)?;
        let prefix = [first.as_slice(), &type_prefix(resource_type)].concat();
        let end = prefix_end(&prefix);
        let mut matches = Vec::new();
        for entry in identifiers.range(prefix.as_slice()..end.as_slice())? {
            let name = entry?.0.value()[32..].to_vec();
            let mut all = true;
            for hash in rest {
                all &= identifiers.get([hash.as_slice(), &name].concat().as_slice())?.is_some();
            }
            if all {
                matches.push(resource_key(&name)?);
            }
        }
        matches.sort();
        matches.dedup();
        Ok(matches)
    }

    /// Every version of a type, newest first, starting below `before_leaf` (exclusive): calls
    /// `visit(leaf, id, version)` until it returns false.
    pub fn type_history(
        &self,
        resource_type: &str,
        before_leaf: Option<u64>,
        mut visit: impl FnMut(u64, &str, u64) -> bool,
    ) -> Result<(), CatalogError> {
        let read = self.db.begin_read()?;
        let type_history = read.open_table(TYPE_HISTORY)?;
        let prefix = type_prefix(resource_type);
        let end = match before_leaf {
            Some(bound) => [prefix.clone(), bound.to_be_bytes().to_vec()].concat(),
            None => prefix_end(&prefix),
        };
        for entry in type_history.range(prefix.as_slice()..end.as_slice())?.rev() {
            let (key, value) = entry?;
            let leaf = u64::from_be_bytes(key.value()[prefix.len()..].try_into().map_err(|_| CatalogError::Malformed("type history"))?);
            let value = value.value();
            let split = value.len().checked_sub(9).ok_or(CatalogError::Malformed("type history"))?;
            let id = std::str::from_utf8(&value[..split]).map_err(|_| CatalogError::Malformed("type history"))?;
            let version_id = u64::from_be_bytes(value[split + 1..].try_into().map_err(|_| CatalogError::Malformed("type history"))?);
            if !visit(leaf, id, version_id) {
                break;
            }
        }
        Ok(())
    }

    /// The current version of every resource of a type (all types: `None`), not erased.
    pub fn current_versions(&self, resource_type: Option<&str>) -> Result<Vec<(ResourceKey, VersionRecord)>, CatalogError> {
        let read = self.db.begin_read()?;
        let resources = read.open_table(RESOURCES)?;
        let versions = read.open_table(VERSIONS)?;
        let prefix = resource_type.map(type_prefix).unwrap_or_default();
        let end = prefix_end(&prefix);
        let mut found = Vec::new();
        let range = if prefix.is_empty() { resources.iter()? } else { resources.range(prefix.as_slice()..end.as_slice())? };
        for entry in range {
            let (name, state) = entry?;
            let state = ResourceState::decode(state.value())?;
            if state.flags & ERASED != 0 {
                continue;
            }
            let key = resource_key(name.value())?;
            if let Some(version) = versions.get(version_bytes(&key, state.current).as_slice())? {
                let version = decode_version(version.value())?;
                found.push((key, version));
            }
        }
        Ok(found)
    }

    /// Every resource, not erased, with a version at or after `from_leaf`: for each type, the
    /// type history from that leaf on (a seek per type, not a scan of the catalog).
    pub fn touched_since(&self, from_leaf: u64) -> Result<Vec<ResourceKey>, CatalogError> {
        let read = self.db.begin_read()?;
        let type_history = read.open_table(TYPE_HISTORY)?;
        let malformed = || CatalogError::Malformed("type history");
        let mut keys = std::collections::BTreeSet::new();
        let mut next_type: Vec<u8> = Vec::new();
        loop {
            let Some(first) = type_history.range(next_type.as_slice()..)?.next() else { break };
            let first = first?.0.value().to_vec();
            let type_end = first.iter().position(|byte| *byte == 0).ok_or_else(malformed)?;
            let resource_type = std::str::from_utf8(&first[..type_end]).map_err(|_| malformed())?.to_string();
            let prefix = type_prefix(&resource_type);
            let start = [prefix.clone(), from_leaf.to_be_bytes().to_vec()].concat();
            let end = prefix_end(&prefix);
            for entry in type_history.range(start.as_slice()..end.as_slice())? {
                let value = entry?.1.value().to_vec();
                let split = value.len().checked_sub(9).ok_or_else(malformed)?;
                let id = std::str::from_utf8(&value[..split]).map_err(|_| malformed())?;
                keys.insert(ResourceKey { resource_type: resource_type.clone(), id: id.to_string() });
            }
            next_type = end;
        }
        Ok(keys.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(name: &str) -> Catalog {
        let path = std::env::temp_dir().join(format!("fg-catalog-{name}-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Catalog::open(&path, 1 << 20).unwrap()
    }

    fn key(resource_type: &str, id: &str) -> ResourceKey {
        ResourceKey { resource_type: resource_type.into(), id: id.into() }
    }

    fn record(key: ResourceKey, version_id: u64, leaf_index: u64, holder: Option<KeyHolder>, hashes: &[KeyedHash]) -> CatalogRecord {
        let cid: Cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".parse().unwrap();
        let sealed =
            holder.map(|holder| SealedLocation { cid, wrapped_key: WrappedKey { holder, bytes: [leaf_index as u8; WRAPPED_KEY_LEN] } });
        let last_updated = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789 + i128::from(leaf_index)).unwrap();
        let version = VersionRecord { version_id, leaf_index, last_updated, sealed, author: Some("Organization/a".into()) };
        CatalogRecord { key, version, identifier_hashes: hashes.to_vec(), transaction_end_leaf: None, erasure: None }
    }

    #[test]
    fn versions_read_back_as_written_and_the_marker_says_how_far_the_store_is() {
        let catalog = open("versions");
        let patient = key("Patient", "p");
        let slot = PatientSlot(7);
        let records = [
            record(patient.clone(), 1, 0, Some(KeyHolder::Patient(slot)), &[]),
            record(key("Observation", "o"), 1, 1, Some(KeyHolder::Kek(3)), &[]),
            record(patient.clone(), 2, 2, None, &[]),
        ];
        catalog.apply(&records, 300, false).unwrap();
        assert_eq!(catalog.marker().unwrap(), (3, 300));
        let history = catalog.get(&patient).unwrap().unwrap();
        assert_eq!(history.versions.len(), 2);
        let first = &history.versions[0];
        assert_eq!((first.version_id, first.leaf_index, first.last_updated), (1, 0, records[0].version.last_updated));
        assert_eq!(first.sealed.as_ref().unwrap().wrapped_key, records[0].version.sealed.as_ref().unwrap().wrapped_key);
        assert_eq!(first.sealed.as_ref().unwrap().cid, records[0].version.sealed.as_ref().unwrap().cid);
        assert_eq!(first.author.as_deref(), Some("Organization/a"));
        assert_eq!(catalog.current_state(&patient).unwrap(), Some((2, true)), "the current version is a deletion");
        assert_eq!(catalog.held_by(slot).unwrap(), vec![patient.clone()]);
        let mut seen = Vec::new();
        catalog
            .type_history("Patient", None, |leaf, id, version| {
                seen.push((leaf, id.to_string(), version));
                true
            })
            .unwrap();
        assert_eq!(seen, vec![(2, "p".to_string(), 2), (0, "p".to_string(), 1)], "newest first");
        assert_eq!(catalog.touched_since(1).unwrap(), vec![key("Observation", "o"), patient.clone()]);
        assert_eq!(catalog.touched_since(3).unwrap(), Vec::<ResourceKey>::new());
    }

    #[test]
    fn identifier_conditions_follow_the_current_version_only() {
        let catalog = open("identifiers");
        let (mrn, other) = ([1u8; 32], [2u8; 32]);
        let patient = key("Patient", "p");
        catalog.apply(&[record(patient.clone(), 1, 0, Some(KeyHolder::Kek(1)), &[mrn, other])], 100, false).unwrap();
        assert_eq!(catalog.matching_identifiers("Patient", &[mrn, other]).unwrap(), vec![patient.clone()]);
        assert!(catalog.matching_identifiers("Observation", &[mrn]).unwrap().is_empty(), "another type");
        assert_eq!(catalog.current(&patient).unwrap().unwrap().version_id, 1);
        catalog.apply(&[record(patient.clone(), 2, 1, Some(KeyHolder::Kek(1)), &[other])], 200, false).unwrap();
        assert_eq!(catalog.current(&patient).unwrap().unwrap().version_id, 2, "the cached current version follows a commit");
        assert_eq!(catalog.version(&patient, Some(1)).unwrap().unwrap().version_id, 1);
        assert!(catalog.matching_identifiers("Patient", &[mrn]).unwrap().is_empty(), "the update dropped the MRN");
        catalog.apply(&[record(patient.clone(), 3, 2, None, &[])], 300, true).unwrap();
        assert!(catalog.matching_identifiers("Patient", &[other]).unwrap().is_empty(), "a deletion matches nothing");
    }

    #[test]
    fn an_erasure_hides_every_version_but_keeps_them_for_its_cleanup() {
        let catalog = open("erasure");
        let (patient, observation) = (key("Patient", "p"), key("Observation", "o"));
        let slot = PatientSlot(1);
        let holder = Some(KeyHolder::Patient(slot));
        catalog
            .apply(&[record(patient.clone(), 1, 0, holder, &[[9; 32]]), record(observation.clone(), 1, 1, holder, &[])], 200, false)
            .unwrap();
        assert!(catalog.current(&observation).unwrap().is_some(), "read once: now in the cache of current versions");
        let mut erasure = record(patient.clone(), 1, 2, None, &[]);
        erasure.erasure = Some(Erasure { patient_key: Some(slot), resources: vec![patient.clone(), observation.clone()] });
        catalog.apply(&[erasure], 300, true).unwrap();
        for key in [&patient, &observation] {
            assert!(catalog.get(key).unwrap().is_none() && catalog.current(key).unwrap().is_none());
            assert!(catalog.is_erased(key).unwrap());
            assert_eq!(catalog.erased_versions(key).unwrap().len(), 1);
        }
        assert!(catalog.is_erased_holder(slot).unwrap() && !catalog.is_erased_holder(PatientSlot(2)).unwrap());
        assert!(catalog.held_by(slot).unwrap().is_empty());
        assert!(catalog.matching_identifiers("Patient", &[[9; 32]]).unwrap().is_empty());
        assert!(catalog.current_versions(None).unwrap().is_empty());
        assert!(catalog.touched_since(0).unwrap().is_empty());
        assert_eq!(catalog.erasures().unwrap().len(), 1);
        assert_eq!(catalog.marker().unwrap(), (3, 300));
    }
}
