//! The record catalog: which versions each resource has and where their sealed bytes and ledger
//! entries are. Kept in memory, journalled to `<data>/records/catalog.log` (one
//! [`CatalogRecord`] per version, in leaf order), so a restart rebuilds it without unsealing.
//!
//! The catalog is local state, never published: it holds resource ids and wrapped data keys.
//! Identifiers (e.g. MRNs) appear only as keyed hashes, for conditional create.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
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
    identifier_hashes: Vec<KeyedHash>,
    /// Erased (`Patient/$purge`): no version is readable, the resource is in no list.
    erased: bool,
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

/// The in-memory catalog. Written only by the commit pipeline, after the versions are durable.
#[derive(Default)]
pub struct Catalog {
    resources: HashMap<ResourceKey, ResourceHistory>,
    /// Per type, every version in commit order: (leaf index, id, version id).
    type_history: HashMap<String, Vec<(u64, String, u64)>>,
    /// Identifier hash -> resources whose current version carries it.
    identifiers: HashMap<KeyedHash, Vec<ResourceKey>>,
    /// Patient keys destroyed by erasures.
    erased_holders: std::collections::HashSet<PatientSlot>,
}

impl Catalog {
    pub fn apply(&mut self, record: CatalogRecord) {
        let CatalogRecord { key, version, identifier_hashes, erasure, .. } = record;
        if let Some(erasure) = erasure {
            self.erased_holders.extend(erasure.patient_key);
            self.erase(&erasure.resources);
            return;
        }
        self.type_history.entry(key.resource_type.clone()).or_default().push((version.leaf_index, key.id.clone(), version.version_id));
        let history = self.resources.entry(key.clone()).or_default();
        for old_hash in std::mem::take(&mut history.identifier_hashes) {
            if let Some(keys) = self.identifiers.get_mut(&old_hash) {
                keys.retain(|other| other != &key);
                if keys.is_empty() {
                    self.identifiers.remove(&old_hash);
                }
            }
        }
        if !version.is_deletion() {
            for hash in &identifier_hashes {
                self.identifiers.entry(*hash).or_default().push(key.clone());
            }
            history.identifier_hashes = identifier_hashes;
        }
        history.versions.push(version);
    }

    /// Marks resources erased: they keep their version records (for `verify` and for the
    /// cleanup an interrupted erasure resumes), but no list, lookup or condition finds them.
    fn erase(&mut self, keys: &[ResourceKey]) {
        let erased: std::collections::HashSet<&ResourceKey> = keys.iter().collect();
        for key in keys {
            let history = self.resources.entry(key.clone()).or_default();
            history.erased = true;
            for hash in std::mem::take(&mut history.identifier_hashes) {
                if let Some(holders) = self.identifiers.get_mut(&hash) {
                    holders.retain(|other| other != key);
                    if holders.is_empty() {
                        self.identifiers.remove(&hash);
                    }
                }
            }
        }
        let types: std::collections::HashSet<&str> = keys.iter().map(|key| key.resource_type.as_str()).collect();
        for resource_type in types {
            if let Some(versions) = self.type_history.get_mut(resource_type) {
                versions.retain(|(_, id, _)| !erased.contains(&ResourceKey { resource_type: resource_type.to_string(), id: id.clone() }));
            }
        }
    }

    /// The resource's versions, unless it has none or was erased.
    pub fn get(&self, key: &ResourceKey) -> Option<&ResourceHistory> {
        self.resources.get(key).filter(|history| !history.erased)
    }

    /// Whether the patient key in `slot` was destroyed by an erasure.
    pub fn is_erased_holder(&self, slot: PatientSlot) -> bool {
        self.erased_holders.contains(&slot)
    }

    /// Whether the resource was erased (`Patient/$purge`).
    pub fn is_erased(&self, key: &ResourceKey) -> bool {
        self.resources.get(key).is_some_and(|history| history.erased)
    }

    /// Every version record of an erased resource (what its erasure's cleanup removes).
    pub fn erased_versions(&self, key: &ResourceKey) -> &[VersionRecord] {
        self.resources.get(key).filter(|history| history.erased).map_or(&[], |history| history.versions.as_slice())
    }

    /// Every resource with a version whose data key the patient key in `slot` holds.
    pub fn held_by(&self, slot: PatientSlot) -> Vec<ResourceKey> {
        let mut keys: Vec<ResourceKey> = self
            .resources
            .iter()
            .filter(|(_, history)| !history.erased)
            .filter(|(_, history)| {
                history
                    .versions
                    .iter()
                    .any(|version| version.sealed.as_ref().is_some_and(|sealed| sealed.wrapped_key.holder == KeyHolder::Patient(slot)))
            })
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// (current version id, deleted?) of a resource, if it has any version.
    pub fn current_state(&self, key: &ResourceKey) -> Option<(u64, bool)> {
        self.get(key).and_then(ResourceHistory::current).map(|version| (version.version_id, version.is_deletion()))
    }

    /// Current, not deleted resources whose identifiers include every one of `hashes`.
    pub fn matching_identifiers(&self, resource_type: &str, hashes: &[KeyedHash]) -> Vec<ResourceKey> {
        let Some((first, rest)) = hashes.split_first() else { return Vec::new() };
        let mut matches: Vec<ResourceKey> = self
            .identifiers
            .get(first)
            .into_iter()
            .flatten()
            .filter(|key| key.resource_type == resource_type)
            .filter(|key| rest.iter().all(|hash| self.identifiers.get(hash).is_some_and(|keys| keys.contains(key))))
            .cloned()
            .collect();
        matches.sort();
        matches.dedup();
        matches
    }

    /// Every version of a type, newest first, starting below `before_leaf` (exclusive).
    pub fn type_history(&self, resource_type: &str, before_leaf: Option<u64>) -> impl Iterator<Item = &(u64, String, u64)> {
        let all = self.type_history.get(resource_type).map(Vec::as_slice).unwrap_or_default();
        let end = before_leaf.map_or(all.len(), |bound| all.partition_point(|(leaf_index, _, _)| *leaf_index < bound));
        all[..end].iter().rev()
    }

    /// The current version of every resource of a type.
    pub fn all_current<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = (&'a ResourceKey, &'a VersionRecord)> + 'a {
        self.resources
            .iter()
            .filter(move |(key, history)| key.resource_type == resource_type && !history.erased)
            .filter_map(|(key, history)| history.current().map(|version| (key, version)))
    }

    /// The current version of every resource.
    pub fn current_versions(&self) -> impl Iterator<Item = (&ResourceKey, &VersionRecord)> {
        self.resources
            .iter()
            .filter(|(_, history)| !history.erased)
            .filter_map(|(key, history)| history.current().map(|version| (key, version)))
    }

    pub fn all_records(&self) -> impl Iterator<Item = (&ResourceKey, &VersionRecord)> {
        self.resources
            .iter()
            .filter(|(_, history)| !history.erased)
            .flat_map(|(key, history)| history.versions.iter().map(move |version| (key, version)))
    }
}
